"""afc.check: meaning of a file (AF2001-AF2099), through the public loader, also beside schema errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from afc.agentfile import load_agent_bytes, validate_bytes
from afc.check import STEP_SIGNATURES, expected_weight_shapes
from afc.tensors import encode_tensors
from afc.validate import SchemaReport, report_header, validate_header
from afc.writer import write_container
from afc.yamlload import load_yaml
from afcore.errors import CheckError, ParseError, SchemaError, SourceError
from afcore.spans import SourceFile

HEADER = """\
version: "1.0"
name: small
neural_config:
  input_size: 3
  output_size: 2
  hidden_layers: [4]
  activation_function: tanh
resources:
  limits:
    memory_mb: 64
    cpu_cores: 1
  requirements:
    minimum_memory_mb: 32
    minimum_cpu_cores: 0.5
workflows:
  execution:
    - receive_input
    - process_neural_network
    - send_output
"""


def weights(sizes=(3, 4, 2)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        out[f"layers.{i}.weight"] = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
        out[f"layers.{i}.bias"] = rng.standard_normal(fan_out).astype(np.float32)
    return out


def build(header=HEADER, tensors=None, training=None) -> bytes:
    sections = [] if tensors is False else [("neural_weights", encode_tensors(weights() if tensors is None else tensors))]
    if training is not None:
        sections.append(("training_data", encode_tensors(training)))
    return write_container(header, sections)


def diags(data: bytes):
    return [d for d in validate_bytes(data, path="c.af") if d.is_error]


class TestWeights:
    def test_expected_shapes(self):
        config = {"input_size": 784, "output_size": 10, "hidden_layers": [128, 64, 32]}
        shapes = expected_weight_shapes(config)
        assert shapes["layers.0.weight"] == (128, 784) and shapes["layers.3.weight"] == (10, 32)
        assert shapes["layers.3.bias"] == (10,) and len(shapes) == 8

    def test_valid(self):
        assert load_agent_bytes(build(), path="c.af").diagnostics == []

    def test_missing_section_points_at_neural_config(self):
        (diag,) = diags(build(tensors=False))
        assert diag.code == "AF2001" and diag.span.line == 3

    def test_missing_extra_and_wrong_shape_each_reported(self):
        tensors = weights()
        del tensors["layers.1.bias"]
        tensors["layers.0.weight"] = np.zeros((3, 4), np.float32)
        tensors["layers.2.weight"] = np.zeros((1, 1), np.float32)
        found = {(d.code, d.message) for d in diags(build(tensors=tensors))}
        assert found == {
            ("AF2002", "`neural_weights` has no tensor `layers.1.bias`"),
            ("AF2004", "tensor `layers.0.weight` in `neural_weights` has shape [3, 4], expected [4, 3]"),
            ("AF2003", "unexpected tensor `layers.2.weight` in `neural_weights`"),
        }

    def test_shape_errors_point_at_the_section_marker(self):
        tensors = weights()
        tensors["layers.1.bias"] = np.zeros(3, np.float32)
        (diag,) = diags(build(tensors=tensors))
        assert diag.span.line == HEADER.count("\n") + 1 and diag.span.column == 1


class TestTrainingData:
    def test_valid(self):
        data = {"inputs": np.zeros((5, 3), np.float32), "targets": np.zeros((5, 2), np.float32)}
        assert diags(build(training=data)) == []

    def test_wrong_width_and_rows(self):
        data = {"inputs": np.zeros((5, 4), np.float32), "targets": np.zeros((6, 2), np.float32)}
        found = sorted(d.message for d in diags(build(training=data)))
        assert found == ["tensor `inputs` in `training_data` has shape [5, 4], expected [5, 3]",
                         "tensor `targets` in `training_data` has shape [6, 2], expected [5, 2]"]

    def test_missing_and_extra(self):
        data = {"inputs": np.zeros((5, 3), np.float32), "labels": np.zeros(5, np.float32)}
        assert sorted(d.code for d in diags(build(training=data))) == ["AF2005", "AF2007"]


class TestResources:
    def test_requirement_above_limit(self):
        (diag,) = diags(build(HEADER.replace("minimum_memory_mb: 32", "minimum_memory_mb: 128")))
        assert diag.code == "AF2010" and diag.span.line == 13 and "line 10" in diag.help

    def test_requirement_without_limit_is_fine(self):
        assert diags(build(HEADER.replace("    cpu_cores: 1\n", ""))) == []


class TestSteps:
    def test_the_reference_steps_are_known(self):
        assert set(STEP_SIGNATURES) == {
            "load_neural_network", "initialize_memory", "connect_to_swarm", "register_capabilities",
            "receive_input", "process_neural_network", "update_memory", "send_output", "save_state",
            "disconnect_from_swarm", "cleanup_resources", "update_weights"}

    def test_update_weights_arguments(self):
        # a whole number is a number; the optimizer is one of three; the rate is above 0
        assert STEP_SIGNATURES["update_weights"] == {"learning_rate": float, "every": int, "optimizer": str}

    def test_unknown_step_did_you_mean(self):
        (diag,) = diags(build(HEADER.replace("- send_output", "- send_outptu")))
        assert diag.code == "AF2020" and diag.help == "did you mean `send_output`?"
        assert (diag.span.line, diag.span.column, diag.span.end_column) == (19, 7, 18)

    def test_unknown_step_in_quotes_points_at_the_name(self):
        (diag,) = diags(build(HEADER.replace("- send_output", "- 'frobnicate when output.x > 1'")))
        assert (diag.span.column, diag.span.end_column) == (8, 18)

    def test_unknown_argument(self):
        (diag,) = diags(build(HEADER.replace("- send_output", "- send_output(topik=\"x\")")))
        assert diag.code == "AF2021" and diag.help == "did you mean `topic`?"

    @pytest.mark.parametrize("step", ['save_state(every="10")', "send_output(topic=1)", "update_memory(window=1.5)",
                                      "save_state(every=true)"])
    def test_argument_type(self, step):
        (diag,) = diags(build(HEADER.replace("- send_output", f"- {step}")))
        assert diag.code == "AF2022"

    def test_good_arguments(self):
        text = HEADER.replace("- send_output", '- send_output(topic="r") when output.max > 0.5\n    - save_state(every=10)')
        assert diags(build(text)) == []

    def test_all_meaning_errors_in_one_run(self):
        text = HEADER.replace("- send_output", "- send_outptu").replace("minimum_memory_mb: 32", "minimum_memory_mb: 99")
        with pytest.raises(CheckError) as info:
            load_agent_bytes(build(text, tensors=False), path="c.af")
        assert [d.code for d in info.value.diagnostics] == ["AF2001", "AF2010", "AF2020"]


class TestStepPlacesAndGuards:
    """What `afcore.steps.STEP_DEFS` knows is reported at validate, not as a failure of every record."""

    def with_execution(self, *lines, extra=""):
        steps = "".join(f"    - {line}\n" for line in lines)
        return build(HEADER.replace("    - receive_input\n    - process_neural_network\n    - send_output\n",
                                    steps) + extra)

    def test_record_step_in_initialization(self):
        text = HEADER + "  initialization:\n    - send_output\n"
        (diag,) = diags(build(text))
        assert diag.code == "AF2023" and "`initialization`" in diag.message and "`execution`" in diag.help
        assert (diag.span.line, diag.span.column, diag.span.end_column) == (21, 7, 18)

    @pytest.mark.parametrize("step", ["cleanup_resources", "initialize_memory", "connect_to_swarm"])
    def test_lifecycle_step_in_execution(self, step):
        (diag,) = diags(self.with_execution("receive_input", "process_neural_network", step, "send_output"))
        assert diag.code == "AF2023"

    def test_save_state_may_stand_anywhere(self):
        text = HEADER + "  initialization:\n    - save_state\n  shutdown:\n    - save_state\n"
        assert diags(build(text.replace("- send_output", "- send_output\n    - save_state(every=5)"))) == []

    def test_misspelt_field_did_you_mean(self):
        (diag,) = diags(self.with_execution("receive_input", "process_neural_network",
                                            "send_output when output.mx > 0.9"))
        assert diag.code == "AF2024" and diag.help == "did you mean `output.max`?"
        assert (diag.span.column, diag.span.end_column) == (24, 33)

    @pytest.mark.parametrize("guard", ["memory.nope > 1", "input.what == 1", "output.max.x > 1", "memory.count.x > 1"])
    def test_fields_that_do_not_exist(self, guard):
        (diag,) = diags(self.with_execution("receive_input", "process_neural_network", f"send_output when {guard}"))
        assert diag.code == "AF2024"

    def test_output_before_process(self):
        (diag,) = diags(self.with_execution("receive_input", "update_memory when output.max > 0.5",
                                            "process_neural_network", "send_output"))
        assert diag.code == "AF2025" and "before `process_neural_network`" in diag.message

    def test_input_in_a_lifecycle_workflow(self):
        text = HEADER + "  shutdown:\n    - save_state when input.size > 1\n"
        (diag,) = diags(build(text))
        assert diag.code == "AF2025" and "`shutdown`" in diag.message

    @pytest.mark.parametrize("guard", ['memory.count > "a"', 'output.max + "x" > 1', '-"a" == 1',
                                       "memory.class_counts > 3", "output.max >= null"])
    def test_incompatible_types(self, guard):
        (diag,) = diags(self.with_execution("receive_input", "process_neural_network", f"send_output when {guard}"))
        assert diag.code == "AF2026"

    @pytest.mark.parametrize("guard", ['input.id == "a1"', "input.id > 3", 'memory.last_id == 7',
                                       "memory.count % 100 == 0 and not output.argmax == 3",
                                       "memory.class_counts.seven > 10", "memory.last_output[2] > 0.5",
                                       "(output.max > 0.5) + 1 > 1", "input[3] * -2 < output[0]"])
    def test_compatible_types(self, guard):
        assert diags(self.with_execution("receive_input", "process_neural_network", f"send_output when {guard}")) == []

    @pytest.mark.parametrize("step", ["update_memory(window=0)", "save_state(every=-1)", 'send_output(topic="")'])
    def test_arguments_out_of_range(self, step):
        found = diags(self.with_execution("receive_input", "process_neural_network", step))
        assert [d.code for d in found] == ["AF2027"]

    def test_every_step_name_agrees_with_the_runtime(self):
        from afcore.steps import STEP_DEFS
        from afrt.steps import STEPS

        assert set(STEP_DEFS) == set(STEPS)


def load_error(data: bytes):
    with pytest.raises(SourceError) as info:
        load_agent_bytes(data, path="c.af")
    return info.value


def report(text: str) -> SchemaReport:
    return report_header(load_yaml(SourceFile("r.af", text)))


class TestSchemaReport:
    """`SchemaReport.is_valid`: which nodes a meaning check may read when the schema failed elsewhere."""

    def test_valid_header_has_every_node_valid(self):
        found = report(HEADER)
        assert found.diagnostics == [] and found.is_valid(()) and found.is_valid(("neural_config", "input_size"))

    def test_error_inside_a_node_invalidates_it_and_its_ancestors_only(self):
        found = report(HEADER.replace("[4]", "[4, two]"))
        assert not found.is_valid(("neural_config", "hidden_layers"))
        assert not found.is_valid(("neural_config",)) and not found.is_valid(())
        assert found.is_valid(("neural_config", "input_size")) and found.is_valid(("resources",))

    def test_wrong_type_of_an_ancestor_invalidates_its_descendants(self):
        found = report(HEADER.replace("  limits:\n    memory_mb: 64\n    cpu_cores: 1\n", "  limits: 64\n"))
        assert not found.is_valid(("resources", "limits", "memory_mb"))
        assert found.is_valid(("resources", "requirements", "minimum_memory_mb"))

    def test_missing_or_unknown_sibling_leaves_a_node_valid(self):
        found = report(HEADER.replace("  input_size: 3\n", "  dropout: 0.5\n"))
        assert {d.code for d in found.diagnostics} == {"AF1001", "AF1003"}
        assert not found.is_valid(("neural_config",))
        assert found.is_valid(("neural_config", "hidden_layers")) and found.is_valid(("neural_config", "output_size"))

    def test_validate_header_returns_the_same_diagnostics(self):
        text = HEADER.replace("tanh", "tahn")
        assert validate_header(load_yaml(SourceFile("r.af", text))) == report(text).diagnostics


class TestMeaningAlongsideSchemaErrors:
    """Each meaning check runs when the header nodes it reads pass the schema, in the same run as the schema."""

    def test_the_issue_example_reports_all_three(self):
        text = (HEADER.replace("[4]", "[128, two, 32]").replace("minimum_memory_mb: 32", "minimum_memory_mb: 128")
                .replace("- send_output", "- update_memroy"))
        error = load_error(build(text))
        assert isinstance(error, SchemaError)
        assert [d.code for d in error.diagnostics] == ["AF1002", "AF2010", "AF2020"]

    def test_invalid_layer_sizes_silence_the_weight_shapes(self):
        # The weights fit no reading of `[4, two]`: comparing them would only mislead.
        found = [d.code for d in diags(build(HEADER.replace("[4]", "[4, two]")))]
        assert found == ["AF1002"]

    def test_missing_input_size_silences_weights_and_training_data(self):
        data = {"inputs": np.zeros((5, 9), np.float32), "targets": np.zeros((5, 2), np.float32)}
        found = [d.code for d in diags(build(HEADER.replace("  input_size: 3\n", ""), training=data))]
        assert found == ["AF1001"]

    def test_shapes_do_not_depend_on_the_activation(self):
        tensors = weights()
        tensors["layers.1.bias"] = np.zeros(3, np.float32)
        found = [d.code for d in diags(build(HEADER.replace("tanh", "tahn"), tensors=tensors))]
        assert found == ["AF1004", "AF2004"]

    def test_training_data_needs_only_input_and_output_sizes(self):
        data = {"inputs": np.zeros((5, 4), np.float32), "targets": np.zeros((5, 2), np.float32)}
        found = [d.code for d in diags(build(HEADER.replace("[4]", "[-4]"), training=data))]
        assert found == ["AF1005", "AF2006"]

    def test_no_weights_is_reported_beside_an_invalid_neural_config(self):
        found = [d.code for d in diags(build(HEADER.replace("output_size: 2", "output_size: 2.5"), tensors=False))]
        assert found == ["AF2001", "AF1002"]

    def test_no_weights_is_not_reported_without_neural_config(self):
        text = HEADER[: HEADER.index("neural_config")] + HEADER[HEADER.index("resources"):]
        assert [d.code for d in diags(build(text, tensors=False))] == ["AF1001"]

    def test_undecodable_weights_are_not_reported_as_missing(self):
        data = write_container(HEADER, [("neural_weights", b"not safetensors")])
        assert [d.code for d in diags(data)] == ["AF2101"]

    def test_each_requirement_is_compared_when_both_sides_are_valid(self):
        text = HEADER.replace("memory_mb: 64", 'memory_mb: "64"').replace("minimum_cpu_cores: 0.5",
                                                                          "minimum_cpu_cores: 2")
        found = [(d.code, d.span.line) for d in diags(build(text))]
        assert found == [("AF1002", 10), ("AF2010", 14)]

    @pytest.mark.parametrize("limits", ["  limits: 64\n", "  limits: [64]\n"])
    def test_limits_of_the_wrong_type_are_not_compared(self, limits):
        text = HEADER.replace("  limits:\n    memory_mb: 64\n    cpu_cores: 1\n", limits)
        assert [d.code for d in diags(build(text.replace("32", "999")))] == ["AF1002"]

    def test_steps_are_checked_beside_workflow_schema_errors(self):
        text = HEADER.replace("  execution:", "  executon:\n    - receive_input\n  execution:").replace(
            "- send_output", "- 42\n    - send_outptu")
        found = [d.code for d in diags(build(text))]
        assert found == ["AF1003", "AF1002", "AF2020"]

    def test_a_syntax_error_raises_parse_error_with_the_meaning_errors(self):
        text = HEADER.replace("- send_output", "- send_output when outptu.max > 1\n    - save_state(evry=3)")
        error = load_error(build(text, tensors=False))
        assert isinstance(error, ParseError)
        assert [d.code for d in error.diagnostics] == ["AF2001", "AF0072", "AF2021"]

    @pytest.mark.parametrize("value", ['"x"', "[[1]]", "{a: 1}", "-1", "true", "null"])
    @pytest.mark.parametrize("key", ["input_size", "output_size", "hidden_layers", "memory_mb", "minimum_memory_mb",
                                     "resources", "limits", "requirements", "neural_config", "execution"])
    def test_any_bad_value_gives_diagnostics_never_an_exception(self, key, value):
        text = re.sub(rf"^(\s*{key}:).*$", rf"\1 {value}", HEADER, count=1, flags=re.M)
        found = diags(build(text))
        assert found and all(d.span is not None for d in found)
        # Every value above is invalid wherever it stands; the weights fit the original network and are
        # never compared with a broken one.
        assert not any(d.code in ("AF2002", "AF2003", "AF2004") for d in found)
