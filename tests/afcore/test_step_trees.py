import pytest
from hypothesis import given
from hypothesis import strategies as st

from afcore.errors import ExecutionError
from afcore.steps import Binary, Const, Field, Step, Unary, evaluate, expr_from_json

ENV = {"output": {"max": 0.95, "values": [0.1, 0.9]}, "memory": {"count": 200}, "input": {}}


def resolve(root, path):
    value = ENV[root]
    for part in path:
        value = value[part]
    return value


class TestEvaluate:
    def test_comparison_on_output(self):
        assert evaluate(Binary(">", Field("output", ("max",)), Const(0.9)), resolve) is True

    def test_modulo_on_memory(self):
        expr = Binary("==", Binary("%", Field("memory", ("count",)), Const(100)), Const(0))
        assert evaluate(expr, resolve) is True

    def test_index_in_path(self):
        assert evaluate(Field("output", ("values", 1)), resolve) == 0.9

    def test_and_short_circuits(self):
        missing = Field("memory", ("nope",))
        assert evaluate(Binary("and", Const(False), missing), resolve) is False

    def test_not_and_neg(self):
        assert evaluate(Unary("not", Const(0)), resolve) is True
        assert evaluate(Unary("neg", Const(2)), resolve) == -2

    def test_missing_field_is_an_execution_error(self):
        with pytest.raises(ExecutionError) as info:
            evaluate(Field("memory", ("nope",)), resolve)
        assert info.value.code == "AF5201"
        assert "memory.nope" in info.value.message

    def test_division_by_zero_is_an_execution_error(self):
        with pytest.raises(ExecutionError) as info:
            evaluate(Binary("%", Const(1), Const(0)), resolve)
        assert info.value.code == "AF5202"

    @pytest.mark.parametrize("left, op, right", [(1.5, "*", 10**400), (10**400, "+", 0.5), (10**400, "/", 3),
                                                 (2.0, "%", 10**400)])
    def test_overflowing_arithmetic_is_a_guard_error_not_a_crash(self, left, op, right):
        with pytest.raises(ExecutionError) as info:
            evaluate(Binary(op, Const(left), Const(right)), resolve)
        assert info.value.code == "AF5202" and "cannot apply" in info.value.message

    @pytest.mark.parametrize("expr", [Binary("*", Const(1e300), Const(1e300)), Binary("-", Const(-1e308), Const(1e308)),
                                      Binary("*", Const("ab"), Const(9007199254740992)),
                                      Binary("*", Const(10**6), Const("xyz"))])
    def test_results_that_overflow_are_errors_not_verdicts(self, expr):
        with pytest.raises(ExecutionError) as info:
            evaluate(expr, resolve)
        assert info.value.code == "AF5202"

    def test_an_infinite_operand_is_compared_as_it_is(self):
        assert evaluate(Binary(">", Binary("+", Const(float("inf")), Const(1.0)), Const(0)), resolve) is True

    def test_type_mismatch_is_an_execution_error(self):
        with pytest.raises(ExecutionError):
            evaluate(Binary("<", Const("a"), Const(1)), resolve)


leaves = st.one_of(
    st.builds(Const, st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.booleans(), st.none())),
    st.builds(
        Field,
        st.sampled_from(["input", "output", "memory"]),
        st.lists(st.one_of(st.text(min_size=1, max_size=5), st.integers(0, 9)), max_size=3).map(tuple),
    ),
)
exprs = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(Unary, st.sampled_from(["not", "neg"]), children),
        st.builds(Binary, st.sampled_from(["and", "or", "==", "<", "+", "%"]), children, children),
    ),
    max_leaves=12,
)


class TestJson:
    @given(exprs)
    def test_expression_round_trip(self, expr):
        assert expr_from_json(expr.to_json()) == expr

    def test_step_round_trip(self):
        step = Step(
            "send_output",
            {"topic": "task.completion"},
            Binary(">", Field("output", ("max",)), Const(0.9)),
            source='send_output(topic="task.completion") when output.max > 0.9',
            span={"path": "a.af", "line": 3, "column": 7, "end_line": 3, "end_column": 60},
        )
        assert Step.from_json(step.to_json()) == step

    @pytest.mark.parametrize(
        "bad",
        [None, {"const": [1]}, {"field": ["disk"]}, {"op": "pow", "args": [{"const": 1}, {"const": 2}]}, {"op": "not"}],
    )
    def test_malformed_json_is_refused(self, bad):
        with pytest.raises(ValueError):
            expr_from_json(bad)
