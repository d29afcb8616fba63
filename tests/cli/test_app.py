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


class TestPlainCoercion:
    """Plain parameters are coerced without pydantic; everything else, and every error, stays typer's."""

    @pytest.fixture
    def probe(self, temporary_command):
        from pathlib import Path
        from typing import Optional

        import typer

        seen = {}

        @temporary_command("probe-coercion")
        def probe(where: Path = typer.Argument(...), n: int = typer.Option(1, "--n", min=1, max=50),
                  wait: float = typer.Option(2.0, "--wait", min=0.0), name: str = typer.Option("x", "--name"),
                  cap: Optional[int] = typer.Option(None, "--cap", min=1), flag: bool = typer.Option(False, "--flag")):
            seen.update(where=where, n=n, wait=wait, name=name, cap=cap, flag=flag)

        return seen

    def test_plain_values(self, probe, tmp_path):
        result = runner.invoke(app, ["probe-coercion", str(tmp_path), "--n", "12", "--name", "y", "--flag"])
        assert result.exit_code == 0, result.output
        assert probe == {"where": tmp_path, "n": 12, "wait": 2.0, "name": "y", "cap": None, "flag": True}

    @pytest.mark.parametrize("args, value", [
        (["--n", "007"], ("n", 7)), (["--n", " 3"], ("n", 3)), (["--wait", "2.5"], ("wait", 2.5)),
        (["--cap", "+4"], ("cap", 4)),
    ])
    def test_unusual_values_go_to_typer(self, probe, tmp_path, args, value):
        result = runner.invoke(app, ["probe-coercion", str(tmp_path), *args])
        assert result.exit_code == 0, result.output
        assert probe[value[0]] == value[1] and type(probe[value[0]]) is type(value[1])

    @pytest.mark.parametrize("args, message", [
        (["--n", "0"], "greater than or equal to 1"), (["--n", "51"], "less than or equal to 50"),
        (["--n", "x"], "valid integer"), (["--wait", "-1"], "greater than or equal to 0"),
        (["--cap", "0"], "greater than or equal to 1"),
    ])
    def test_errors_are_typers(self, probe, tmp_path, args, message):
        result = runner.invoke(app, ["probe-coercion", str(tmp_path), *args])
        text = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and message in text and not probe

    def test_af_run_starts_without_pydantic(self, tmp_path):
        import subprocess
        import sys

        script = ("import sys; sys.argv = ['af', 'run', 'missing.afb', '--replicas', '2', '--max-batch', '8']\n"
                  "import af.cli\ntry:\n    af.cli.main()\nexcept SystemExit as e:\n    code = e.code\n"
                  "assert 'pydantic' not in sys.modules, 'pydantic was imported'\nprint(code)\n")
        done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"  # the bundle does not exist: exit 1 after parsing the options
