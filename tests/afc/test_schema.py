"""afc.validate: the header schema and its AF1xxx diagnostics."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from afc.validate import load_schema, validate_header
from afc.yamlload import load_yaml
from afcore.spans import SourceFile

REFERENCE = (Path(__file__).resolve().parents[1] / "data" / "reference-header.yaml").read_text(encoding="utf-8")


def check(text: str):
    return validate_header(load_yaml(SourceFile("a.af", text)))


def only(text: str):
    (diag,) = check(text)
    return diag


class TestSchemaFile:
    def test_is_a_valid_2020_12_schema(self):
        schema = load_schema()
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)

    def test_is_shipped_as_package_data(self):
        text = resources.files("afcore.schemas").joinpath("af-1.0.schema.json").read_text()
        assert json.loads(text) == load_schema()

    def test_reference_example_is_valid(self):
        assert check(REFERENCE) == []

    def test_minimal_header(self):
        text = ('version: "1.0"\nname: a\nneural_config:\n  input_size: 2\n  output_size: 1\n  hidden_layers: []\n'
                "  activation_function: tanh\n  output_activation: sigmoid\nworkflows:\n  execution: []\n")
        assert check(text) == []


class TestCodes:
    def test_missing_key_points_at_parent_key(self):
        diag = only(REFERENCE.replace('  activation_function: "relu"\n', ""))
        assert diag.code == "AF1001" and "`activation_function`" in diag.message
        assert (diag.span.line, diag.span.column) == (17, 1)
        assert "relu" in diag.help

    def test_missing_top_level_key(self):
        diag = only(REFERENCE.replace('name: "classification-agent"\n', ""))
        assert diag.code == "AF1001" and "the header" in diag.message

    def test_wrong_type_points_at_value(self):
        diag = only(REFERENCE.replace("[128, 64, 32]", "[128, two, 32]"))
        assert diag.code == "AF1002" and diag.message == "`neural_config.hidden_layers[1]` must be an integer"
        assert (diag.span.line, diag.span.column, diag.span.end_column) == (21, 24, 27)
        assert diag.label == "found a string"

    def test_unquoted_version_reports_only_the_type(self):
        diag = only(REFERENCE.replace('version: "1.0"', "version: 1.0"))
        assert diag.code == "AF1002" and "quotes" in diag.help

    def test_unknown_key_suggests(self):
        diag = only(REFERENCE.replace("  learning_rate:", "  learnin_rate:"))
        assert diag.code == "AF1003" and diag.help == "did you mean `learning_rate`?"
        assert (diag.span.line, diag.span.column, diag.span.end_column) == (23, 3, 15)

    def test_unknown_key_without_close_match_lists_keys(self):
        diag = only(REFERENCE.replace("author:", "zzz:"))
        assert diag.code == "AF1003" and "allowed keys here" in diag.help and "author" in diag.help

    def test_bad_enum_suggests(self):
        diag = only(REFERENCE.replace('activation_function: "relu"', 'activation_function: "rleu"'))
        assert diag.code == "AF1004" and diag.help == "did you mean `relu`?"

    def test_network_type(self):
        assert only(REFERENCE.replace('"feedforward"', '"recurrent"')).code == "AF1004"

    @pytest.mark.parametrize(("old", "new"), [("input_size: 784", "input_size: 0"),
                                              ("learning_rate: 0.001", "learning_rate: -1"),
                                              ("memory_mb: 512", "memory_mb: 0")])
    def test_range(self, old, new):
        assert only(REFERENCE.replace(old, new)).code == "AF1005"

    @pytest.mark.parametrize("stamp", ["2025-13-13T19:24:55Z", "2025-07-13", "yesterday", "2025-07-13T25:00:00Z"])
    def test_date_time_format(self, stamp):
        diags = check(REFERENCE.replace("2025-07-13T19:24:55.000Z", stamp))
        assert [d.code for d in diags] == ["AF1006", "AF1006"]

    @pytest.mark.parametrize("stamp", ["2025-07-13T19:24:55+02:00", "2025-07-13t19:24:55z", "2025-07-13T19:24:55.123456Z"])
    def test_valid_date_times(self, stamp):
        assert check(REFERENCE.replace("2025-07-13T19:24:55.000Z", stamp)) == []

    def test_name_pattern(self):
        assert only(REFERENCE.replace('"classification-agent"', '"has space"')).code == "AF1007"

    def test_lengths(self):
        assert only(REFERENCE.replace('name: "classification-agent"', f'name: "{"a" * 65}"')).code == "AF1008"

    def test_runtime_is_informational(self):
        assert check(REFERENCE.replace('  features: ["neural", "async"]', "  features: []\n  anything: 1")) == []

    def test_all_errors_reported_in_one_run(self):
        text = (REFERENCE.replace("[128, 64, 32]", "[128, -1, x]").replace('"relu"', '"rlu"')
                .replace("  execution:", "  executon:"))
        found = sorted((d.span.line, d.code) for d in check(text))
        assert found == [(21, "AF1002"), (21, "AF1005"), (22, "AF1004"), (35, "AF1001"), (41, "AF1003")]


class TestNumbersTheBundleCanHold:
    """Issue 9, points 5 and 7: what validation accepted here crashed `af compile` or the runtime."""

    @pytest.mark.parametrize(("old", "new", "where"), [
        ("learning_rate: 0.001", "learning_rate: .nan", "neural_config.learning_rate"),
        ("memory_mb: 512", "memory_mb: .inf", "resources.limits.memory_mb"),
        ("cpu_cores: 1.0", "cpu_cores: .NaN", "resources.limits.cpu_cores"),
        ("cpu_cores: 1.0", "cpu_cores: 1e999", "resources.limits.cpu_cores"),
        ("minimum_memory_mb: 128", "minimum_memory_mb: -.inf", "resources.requirements.minimum_memory_mb"),
        ("minimum_cpu_cores: 0.5", "minimum_cpu_cores: .nan", "resources.requirements.minimum_cpu_cores"),
        ('rust_version: "1.70.0"', "rust_version: .nan", "runtime.rust_version"),
    ])
    def test_non_finite_number_is_one_diagnostic(self, old, new, where):
        diag = only(REFERENCE.replace(old, new))
        assert diag.code == "AF1010" and diag.message == f"`{where}` must be a finite number"
        assert diag.label.startswith("found ") and ".nan" in diag.help
        line = next(i for i, text in enumerate(REFERENCE.replace(old, new).splitlines(), 1) if new in text)
        assert diag.span.line == line

    def test_non_finite_node_is_not_valid_for_the_checks(self):
        from afc.validate import report_header

        report = report_header(load_yaml(SourceFile("a.af", REFERENCE.replace("cpu_cores: 1.0", "cpu_cores: .nan"))))
        assert not report.is_valid(("resources", "limits", "cpu_cores"))
        assert report.is_valid(("resources", "limits", "memory_mb"))

    @pytest.mark.parametrize("value", ["2147483648", "1e300", "5000", "1025"])
    def test_cpu_cores_has_a_maximum(self, value):
        diag = only(REFERENCE.replace("cpu_cores: 1.0", f"cpu_cores: {value}").replace(
            "minimum_cpu_cores: 0.5", "minimum_cpu_cores: 0.5"))
        assert diag.code == "AF1005" and diag.message == "`resources.limits.cpu_cores` must be at most 1024"
        assert diag.help == "the runtime starts one inference thread per core: change it to a value at most 1024"

    def test_1024_cores_are_accepted(self):
        assert check(REFERENCE.replace("cpu_cores: 1.0", "cpu_cores: 1024")) == []

    @pytest.mark.parametrize(("old", "new"), [
        ("memory_mb: 512", "memory_mb: 1" + "0" * 400),
        ("memory_mb: 512", "memory_mb: 1048577"),
        ("minimum_memory_mb: 128", "minimum_memory_mb: 1" + "0" * 30),
        ("minimum_cpu_cores: 0.5", "minimum_cpu_cores: 4294967296"),
    ])
    def test_other_resources_have_a_maximum(self, old, new):
        assert only(REFERENCE.replace(old, new)).code == "AF1005"
