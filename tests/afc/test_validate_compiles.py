"""The rule of issue 9: whatever `af validate` accepts, `af compile` compiles and `af run` starts.

Headers are generated as YAML text with hostile values where they hurt: numbers (NaN, infinity,
beyond float64, huge integers, negatives), strings (surrogate escapes, any Unicode), and step
strings whose guards nest deep, overflow, divide by constants or hold odd literals. For each one,
either validation reports an error, or the in-memory compile succeeds; and nothing but af's own
errors is ever raised.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from afc.agentfile import load_agent_bytes, validate_bytes
from afc.compile import compile_agent
from afc.tensors import encode_tensors
from afc.writer import write_container
from afcore.errors import AfError

#: YAML texts of numbers, the hostile ones first
HOSTILE_NUMBERS = [".nan", ".NaN", ".inf", "-.inf", "1e999", "-1e999", "1" + "0" * 400, "1" + "0" * 5000,
                   "2147483648", "4294967296", "1e300", "0", "-1", "-0.0", "0x7fffffff", "0o777", "5e-324"]


def yaml_float(value: float) -> str:
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return "-.inf" if value < 0 else ".inf"
    return repr(value)


benign_numbers = st.one_of(st.integers(1, 64).map(str), st.floats(0.125, 512).map(repr))
hostile_numbers = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True).map(yaml_float),
    st.integers(-(2**70), 2**70).map(str),
)
# one number in seven is hostile, so that about half the files pass validation and reach compile
numbers = st.integers(0, 6).flatmap(lambda roll: hostile_numbers if roll == 0 else benign_numbers)
#: strings as YAML double-quoted scalars; JSON's escapes include lone surrogates (`\ud800`)
printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)
strings = st.integers(0, 3).flatmap(lambda roll: st.text(max_size=10) if roll == 0 else printable).map(
    lambda s: json.dumps(s, ensure_ascii=False))
escaped_strings = st.text(max_size=10).map(lambda s: json.dumps(s, ensure_ascii=True))  # `\ud800` and the like

FIELDS = ["output.max", "output.min", "output[0]", "input.size", "input[0]", "memory.count", "memory.mean_max"]
GUARD_NUMBERS = ["0", "1", "0.5", "1e308", "1.7976931348623157e308", "1e999", "9007199254740992",
                 "9007199254740993", "1" + "0" * 30, "2.5e-308", "100"]
STRING_LITERALS = ['"a"', r'"\ud800"', r'"\ud83d\ude00"', r'"\udfff x"', "'q'", r'"\u00e9"']


def _binary(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.sampled_from(["+", "-", "*", "/", "%", ">", "<", "==", "!=", ">=", "and", "or"])
    return st.one_of(
        st.tuples(children, ops, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"not {c}"),
    )


atoms = st.one_of(st.sampled_from(FIELDS), st.sampled_from(GUARD_NUMBERS), st.sampled_from(STRING_LITERALS))
guards = st.one_of(
    st.recursive(atoms, _binary, max_leaves=8),
    st.recursive(atoms, _binary, max_leaves=8),
    st.integers(0, 600).map(lambda n: "output.max > " + "-" * n + "1"),  # unary chains, past the limit
    st.integers(56, 72).map(lambda n: "output.max > " + "-" * n + "1"),  # ... and around it
    st.integers(1, 400).map(lambda n: "output.max > " + "+".join(["1"] * n)),  # sums
    st.integers(56, 72).map(lambda n: "output.max > " + "+".join(["1"] * n)),
    st.integers(1, 300).map(lambda n: "(" * n + "output.max" + ")" * n + " > 0"),
    st.tuples(st.sampled_from(GUARD_NUMBERS), st.sampled_from(GUARD_NUMBERS)).map(
        lambda t: f"output.max * {t[0]} * {t[1]} > {t[1]}"),
)
#: arguments each step takes, and hostile values for them
ARGUMENTS = {"send_output": "topic", "update_memory": "window", "save_state": "every"}
argument_values = st.sampled_from(GUARD_NUMBERS + STRING_LITERALS + ["-1e999", "true", "null", '"t"', "100"])
step_names = st.sampled_from(["receive_input", "process_neural_network", "send_output", "update_memory",
                              "save_state", "load_neural_network", "cleanup_resources"])


@st.composite
def steps(draw) -> str:
    name = draw(step_names)
    text = name
    if name in ARGUMENTS and draw(st.booleans()):
        text += f"({ARGUMENTS[name]}={draw(argument_values)})"
    if draw(st.booleans()):
        text += f" when {draw(guards)}"
    return text


@st.composite
def agent_files(draw) -> bytes:
    sizes = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(2, 4)))]
    shown = [str(size) for size in sizes]
    if draw(st.integers(0, 9)) == 0:  # a size that breaks the schema: every check must stay quiet about it
        shown[draw(st.integers(0, len(sizes) - 1))] = draw(st.sampled_from(["two", "0", "-1", "2.5", "1e999", ".nan",
                                                                           "[]", "1048577", '"3"', "null"]))
    lines = ['version: "1.0"', f"name: {draw(st.one_of(st.just('prop'), st.just('prop'), strings))}"]
    for key in ("description", "author"):
        if draw(st.booleans()):
            lines.append(f"{key}: {draw(st.one_of(strings, escaped_strings))}")
    output_activation = draw(st.sampled_from(["softmax", "sigmoid", "linear"]))
    activation = draw(st.sampled_from(["relu", "tanh"] * 4 + ["rleu", "[]", "null"]))
    lines += ["neural_config:", f"  input_size: {shown[0]}", f"  output_size: {shown[-1]}",
              f"  hidden_layers: [{', '.join(shown[1:-1])}]", f"  activation_function: {activation}"]
    if draw(st.integers(0, 5)):
        lines.append(f"  output_activation: {output_activation}")
    if draw(st.booleans()):
        lines.append(f"  learning_rate: {draw(st.one_of(st.floats(0.001, 1).map(repr), numbers))}")
    for group, keys in (("limits", ["memory_mb", "cpu_cores", "disk_mb", "network_bandwidth_mbps"]),
                        ("requirements", ["minimum_memory_mb", "minimum_cpu_cores", "minimum_disk_mb"])):
        chosen = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        if chosen:
            lines += ["resources:"] if "resources:" not in lines else []
            lines.append(f"  {group}:")
            lines += [f"    {key}: {draw(numbers)}" for key in chosen]
    if draw(st.booleans()):
        lines += ["runtime:", f"  note: {draw(st.one_of(numbers, strings))}"]
    lines += ["workflows:", "  execution:"]
    lines += [f"    - {json.dumps(step)}" for step in draw(st.lists(steps(), min_size=1, max_size=4))]
    tensors = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{i}.weight"] = np.full((fan_out, fan_in), 0.25, np.float32)
        tensors[f"layers.{i}.bias"] = np.zeros(fan_out, np.float32)
    return write_container("\n".join(lines) + "\n", [("neural_weights", encode_tensors(tensors))])


def compile_if_valid(data: bytes) -> bytes | None:
    """Validate, then compile in memory; return the bundle, or None when validation found an error."""
    accepted = not any(d.is_error for d in validate_bytes(data, path="prop.af"))
    try:
        bundle = compile_agent(load_agent_bytes(data, path="prop.af").spec())
    except AfError:
        assert not accepted, "validation accepted a file that compile refuses"
        return None
    assert accepted, "compile accepted a file that validation refuses"
    return bundle


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(agent_files())
def test_what_validates_compiles(data):
    bundle = compile_if_valid(data)  # any exception other than af's own fails the test
    event("accepted" if bundle is not None else "refused")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(agent_files())
def test_what_validates_starts(data):
    import afrt  # the compiler never imports the runtime; this test checks the two agree

    bundle = compile_if_valid(data)
    if bundle is not None:
        # threads=1: the cap on cpu_cores' threads belongs to the runtime (one inference thread per core)
        agent = afrt.load(bundle, threads=1)
        assert agent.infer(np.zeros((1, agent.input_size), np.float32)).shape[0] == 1


class TestRegressions:
    """The examples of issue 9 that crashed compile after passing validation."""

    def test_each_is_refused_or_compiles(self):
        from pathlib import Path

        bad = Path(__file__).resolve().parents[1] / "corpus" / "bad"
        for case in sorted(bad.glob("*.af")):
            compile_if_valid(case.read_bytes())
