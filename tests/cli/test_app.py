"""The command frame: help, version, and the one way errors are reported."""

import pytest
from typer.testing import CliRunner

from af.cli import app
from af.cli._app import EXIT_INTERNAL, command
from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, UsageError
from afcore.spans import Span

runner = CliRunner()


@pytest.fixture
def temporary_command():
    """Register commands for one test and remove them afterwards."""
    before = list(app.registered_commands)
    yield command
    app.registered_commands[:] = before


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("validate", "init", "pack", "unpack", "compile", "inspect", "export", "run", "profile", "debug"):
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("af ")


def test_unknown_command_is_a_usage_error():
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_af_error_becomes_diagnostics_and_exit_1(temporary_command):
    @temporary_command("boom-check")
    def boom() -> None:
        raise CheckError([Diagnostic("AF2001", "error", "weights are missing", span=Span("x.af", 3, 1))])

    result = runner.invoke(app, ["boom-check"])
    assert result.exit_code == 1
    assert "error[AF2001]: weights are missing" in result.output
    assert "Traceback" not in result.output


def test_usage_error_exits_2(temporary_command):
    @temporary_command("boom-usage")
    def boom() -> None:
        raise UsageError("--replicas must be at least 1")

    result = runner.invoke(app, ["boom-usage"])
    assert result.exit_code == 2
    assert "--replicas must be at least 1" in result.output


def test_a_bug_is_reported_as_one(temporary_command):
    @temporary_command("boom-bug")
    def boom() -> None:
        raise RuntimeError("unexpected")

    result = runner.invoke(app, ["boom-bug"])
    assert result.exit_code == EXIT_INTERNAL
    assert "this is a bug in af" in result.output
