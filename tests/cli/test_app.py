"""The command frame: help, version, completion, lazy loading, and the one way errors are reported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from af.cli import COMMAND_MODULES, app
from af.cli._app import EXIT_INTERNAL, command
from afcore.diagnostics import Diagnostic
from afcore.errors import CheckError, UsageError
from afcore.spans import Span

runner = CliRunner()
AF = str(Path(sys.executable).parent / "af")


@pytest.fixture
def temporary_command():
    """Register commands for one test and remove them afterwards."""
    before = dict(app.commands)

    def register(name):
        def decorate(fn):
            app.add_command(command(name)(fn))
            return fn

        return decorate

    yield register
    app.commands.clear()
    app.commands.update(before)


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMAND_MODULES:
        assert name in result.output
    assert result.output.startswith("Usage: af [OPTIONS] COMMAND [ARGS]...")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("af ")


def test_unknown_command_is_a_usage_error():
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


class TestHelpText:
    @pytest.mark.parametrize("name, shown", [
        ("validate", "--format [full|concise|json]"),
        ("run", "--backend [onnx|wasm]"),
        ("profile", "--backend [onnx|wasm]"),
        ("debug", "--backend [onnx|wasm]"),
        ("compile", "--emit [spec|onnx|wat|bundle]"),
        ("init", "--activation [relu|leaky_relu|sigmoid|tanh|linear|elu|gelu|softplus]"),
    ])
    def test_choices_show_as_click_shows_them(self, name, shown):
        result = runner.invoke(app, [name, "--help"], prog_name="af")
        assert result.exit_code == 0 and shown in result.output

    @pytest.mark.parametrize("name", COMMAND_MODULES)
    def test_usage_lines_look_like_clicks(self, name):
        result = runner.invoke(app, [name, "-h"], prog_name="af")
        assert result.exit_code == 0
        usage = result.output.splitlines()[0]
        assert usage == f"Usage: af {name} [OPTIONS]" or usage.startswith(f"Usage: af {name} [OPTIONS] ")  # keygen takes no argument
        assert "{" not in usage and "<str>" not in result.output


class TestLazyLoading:
    def test_help_imports_no_heavy_module(self):
        code = ("import sys; from af.cli import app\n"
                "try:\n    app.main(['--help'], prog_name='af')\nexcept SystemExit:\n    pass\n"
                "heavy = [m for m in ('onnx', 'onnxruntime', 'wasmtime', 'numpy', 'afc', 'afrt', 'rich', 'typer')"
                " if m in sys.modules]\nprint('heavy', heavy)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[-1] == "heavy []"

    def test_a_command_module_is_imported_when_used(self):
        code = ("import sys; from af.cli import app\n"
                "try:\n    app.main(['validate', '--help'], prog_name='af')\nexcept SystemExit:\n    pass\n"
                "print(sorted(m for m in sys.modules if m.startswith('af.cli.') and not m.startswith('af.cli._')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[-1] == "['af.cli.validate']"


class TestCompletion:
    def test_bash_script_is_produced(self):
        result = subprocess.run([AF], env={**os.environ, "_AF_COMPLETE": "bash_source"}, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0
        assert "_af_completion()" in result.stdout and "complete -o nosort -F _af_completion af" in result.stdout

    def test_af_ru_completes_to_run(self):
        env = {"_AF_COMPLETE": "bash_complete", "COMP_WORDS": "af ru", "COMP_CWORD": "1"}
        result = runner.invoke(app, [], env=env, prog_name="af")
        assert result.exit_code == 0
        assert result.output.splitlines() == ["plain,run"]

    def test_options_complete_with_their_choices(self):
        env = {"_AF_COMPLETE": "bash_complete", "COMP_WORDS": "af run x.afb --backend ", "COMP_CWORD": "4"}
        result = runner.invoke(app, [], env=env, prog_name="af")
        assert result.output.splitlines() == ["plain,onnx", "plain,wasm"]


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


def test_ctrl_c_exits_130(temporary_command):
    @temporary_command("boom-interrupt")
    def boom() -> None:
        raise KeyboardInterrupt

    result = runner.invoke(app, ["boom-interrupt"])
    assert result.exit_code == 130 and "Traceback" not in result.output


def test_emit_forms_of_the_command_are_the_compilers():
    import afc
    from af.cli.compile import EMIT_FORMS

    assert EMIT_FORMS == afc.EMIT_FORMS
