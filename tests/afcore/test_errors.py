import inspect

import afcore.errors as errors
from afcore.diagnostics import Diagnostic
from afcore.spans import Span


def test_every_class_is_documented_and_exported():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if issubclass(obj, errors.AfError)]
    assert sorted(c.__name__ for c in classes) == sorted(errors.__all__)
    for cls in classes:
        assert cls.__doc__, cls.__name__


def test_source_error_keeps_every_diagnostic_sorted():
    late = Diagnostic("AF1001", "error", "late", span=Span("a.af", 9, 1))
    early = Diagnostic("AF1002", "error", "early", span=Span("a.af", 2, 1))
    error = errors.SchemaError([late, early])
    assert [d.code for d in error.to_diagnostics()] == ["AF1002", "AF1001"]
    assert error.code == "AF1002"
    assert "1 more" in error.message


def test_execution_error_carries_its_span():
    span = Span("a.af", 3, 4)
    error = errors.ResourceLimitError("out of fuel", agent="a-1", span=span)
    (diagnostic,) = error.to_diagnostics()
    assert diagnostic.span == span and diagnostic.code == "AF5002"


def test_usage_error_exits_2_and_is_a_value_error():
    assert errors.UsageError("x").exit_code == 2
    assert isinstance(errors.UsageError("x"), ValueError)
