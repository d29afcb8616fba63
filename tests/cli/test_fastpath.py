"""`af run` without typer (af/cli/_fastpath.py): the same values, messages and exit codes as through typer."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import typing
from pathlib import Path

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from af.cli import app
from af.cli import run as run_module
from af.cli._fastpath import COMPLETE_VAR, RUN_DEFAULTS, RUN_OPTIONS, parse_run_args, run_main
from af.cli._output import EXIT_INTERNAL, say

ROOT = Path(__file__).resolve().parents[2]
AF = str(Path(sys.executable).parent / "af")
ROW = "[" + ",".join(["0.5"] * 784) + "]"

#: command lines (after `af run`) that the fast path takes; {b} is an existing bundle path
PLAIN = [
    ["{b}"],
    ["{b}", "--input", "in.jsonl", "--output", "out.jsonl"],
    ["--input=in.jsonl", "{b}", "-o", "-"],
    ["-i", "-", "{b}", "--replicas", "10000", "--max-batch", "1", "--batch-wait-ms", "0"],
    ["{b}", "--batch-wait-ms", "2.5", "--fuel", "123456", "--backend", "wasm", "--swarm", "s=1"],
    ["{b}", "--state-dir", "state", "--fail-on-error", "--json", "--output=", "--replicas=3"],
    ["{b}", "--backend", "gpu", "--input", "missing.jsonl"],  # the body refuses these, as before
    ["{b}", "--state-dir", "{b}"],
    ["missing.afb"],
]
#: command lines the fast path leaves to typer (help, odd spellings, errors typer reports itself)
NOT_PLAIN = [
    [],
    ["--help"],
    ["{b}", "-h"],
    ["{b}", "--replicas", "0"],
    ["{b}", "--replicas", "10001"],
    ["{b}", "--replicas", "+2"],
    ["{b}", "--replicas", "02"],
    ["{b}", "--replicas", " 2"],
    ["{b}", "--max-batch", "1_000"],
    ["{b}", "--batch-wait-ms", "1e3"],
    ["{b}", "--batch-wait-ms", "-1"],
    ["{b}", "--batch-wait-ms", "nan"],
    ["{b}", "--fuel", "0"],
    ["{b}", "--input"],
    ["{b}", "--input", "a", "-i", "b"],
    ["{b}", "--input", "--json"],
    ["{b}", "-iin.jsonl"],
    ["{b}", "--json=1"],
    ["{b}", "--no-json"],
    ["{b}", "--inp", "x"],
    ["{b}", "{b}"],
    ["--", "{b}"],
    ["-"],
    [""],
    ["{b}", "--state-dir", ""],
]


def _fill(args: list[str], bundle: Path) -> list[str]:
    return [arg.replace("{b}", str(bundle)) for arg in args]


@pytest.fixture
def bundle(example_bundles) -> Path:
    return example_bundles["classification-agent"]


@pytest.fixture
def typer_values(monkeypatch):
    """Invoke `af run` through typer with a body that records the values typer passes it."""

    def invoke(args: list[str]) -> tuple[int, dict | None]:
        seen: list[dict] = []

        def record(bundle, **options):
            seen.append({"bundle": bundle, **options})
            return 0

        monkeypatch.setattr(run_module, "run_records", record)
        result = CliRunner().invoke(app, ["run", *args])
        return result.exit_code, (seen[0] if seen else None)

    return invoke


class TestOptionTable:
    def test_matches_the_declared_options(self):
        hints = typing.get_type_hints(run_module.run_command)
        kinds = {str: "str", int: "int", float: "float", bool: "flag", typing.Optional[Path]: "path",
                 typing.Optional[int]: "int"}
        declared = {}
        for name, parameter in inspect.signature(run_module.run_command).parameters.items():
            if name == "bundle":
                continue
            info = parameter.default
            assert RUN_DEFAULTS[name] == info.default and type(RUN_DEFAULTS[name]) is type(info.default), name
            for flag in info.param_decls:
                declared[flag] = (name, kinds[hints[name]], info.min, info.max)
        assert declared == RUN_OPTIONS
        assert set(RUN_DEFAULTS) == {name for name, *_ in RUN_OPTIONS.values()}

    def test_the_body_takes_every_option(self):
        from af.cli._run import run_records

        assert list(inspect.signature(run_records).parameters) == ["bundle", *RUN_DEFAULTS]


class TestSameValuesAsTyper:
    @pytest.mark.parametrize("args", PLAIN, ids=" ".join)
    def test_plain_command_lines(self, args, bundle, typer_values, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        args = _fill(args, bundle)
        code, through_typer = typer_values(args)
        assert code == 0
        fast = parse_run_args(args)
        assert fast == through_typer
        assert {k: type(v) for k, v in fast.items()} == {k: type(v) for k, v in through_typer.items()}

    @pytest.mark.parametrize("args", NOT_PLAIN, ids=" ".join)
    def test_the_rest_is_left_to_typer(self, args, bundle):
        assert parse_run_args(_fill(args, bundle)) is None

    def test_an_unreadable_path_is_left_to_typer(self, tmp_path, monkeypatch):
        monkeypatch.setattr(os, "access", lambda *a, **k: False)
        assert parse_run_args([str(tmp_path)]) is None
        assert parse_run_args([str(tmp_path / "missing.afb")]) is not None


class TestRunMain:
    def test_runs_a_plain_command_line(self, bundle, tmp_path, capsys):
        src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        src.write_text(f'{{"id": "a", "input": {ROW}}}\n')
        assert run_main(["run", str(bundle), "--input", str(src), "--output", str(out)]) == 0
        assert [r["id"] for r in map(orjson.loads, out.read_bytes().splitlines())] == ["a"]
        assert "1 records: 1 results, 0 errors" in capsys.readouterr().err

    def test_garbage_collection_is_on_afterwards(self, bundle, tmp_path):
        import gc

        src = tmp_path / "in.jsonl"
        src.write_text(f'{{"id": "a", "input": {ROW}}}\n')
        assert run_main(["run", str(bundle), "-i", str(src), "-o", os.devnull]) == 0
        assert gc.isenabled()
        assert run_main(["run", str(tmp_path / "missing.afb")]) == 1
        assert gc.isenabled()

    def test_other_commands_completion_and_windows_go_to_typer(self, bundle, monkeypatch):
        assert run_main(["validate", "x.af"]) is None
        assert run_main(["run", str(bundle), "--help"]) is None
        with monkeypatch.context() as patch:
            patch.setattr(os, "name", "nt")
            assert run_main(["run", str(bundle)]) is None
        monkeypatch.setenv(COMPLETE_VAR, "complete_bash")
        assert run_main(["run", str(bundle)]) is None

    def test_fail_on_error_exits_1(self, bundle, tmp_path):
        src = tmp_path / "in.jsonl"
        src.write_text("[1, 2]\n")
        assert run_main(["run", str(bundle), "-i", str(src), "-o", os.devnull, "--fail-on-error"]) == 1

    def test_af_error_is_diagnostics_and_exit_1(self, tmp_path, capsys):
        assert run_main(["run", str(tmp_path / "nope.afb"), "--input", os.devnull]) == 1
        err = capsys.readouterr().err
        assert "AF4015" in err and "Traceback" not in err

    def test_usage_error_exits_2(self, bundle):
        assert run_main(["run", str(bundle), "--backend", "gpu"]) == 2

    def test_a_bug_is_reported_as_one(self, bundle, monkeypatch, capsys):
        def boom(bundle, **options):
            raise RuntimeError("unexpected")

        monkeypatch.setattr("af.cli._run.run_records", boom)
        assert run_main(["run", str(bundle)]) == EXIT_INTERNAL
        err = capsys.readouterr().err
        assert "RuntimeError" in err and "this is a bug in af" in err

    def test_keyboard_interrupt_exits_130(self, bundle, monkeypatch):
        def interrupted(bundle, **options):
            raise KeyboardInterrupt

        monkeypatch.setattr("af.cli._run.run_records", interrupted)
        assert run_main(["run", str(bundle)]) == 130


class TestEntryPoint:
    def test_af_run_imports_neither_typer_pydantic_nor_rich(self, bundle, tmp_path):
        src = tmp_path / "in.jsonl"
        src.write_text(f'{{"id": 1, "input": {ROW}}}\n')
        code = (
            "import sys\nfrom af.cli import main\nsys.argv = ['af', 'run', sys.argv[1], '--input', sys.argv[2],"
            " '--output', sys.argv[3]]\ntry:\n    main()\nfinally:\n"
            "    print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'pydantic', 'rich', 'onnx'}),"
            " file=sys.stderr)"
        )
        done = subprocess.run([sys.executable, "-c", code, str(bundle), str(src), os.devnull],
                              capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines()[-1] == "[]"

    def test_same_output_as_typer(self, bundle, tmp_path):
        src = tmp_path / "in.jsonl"
        src.write_text(f'{{"id": 1, "input": {ROW}}}\n[1, 2]\n')
        fast = subprocess.run([AF, "run", str(bundle), "--input", str(src), "--json"], capture_output=True)
        typed = CliRunner().invoke(app, ["run", str(bundle), "--input", str(src), "--json"])
        assert fast.returncode == typed.exit_code == 0

        def records(data: bytes) -> list[dict]:  # without the agent ids, which are ephemeral
            return [{k: v for k, v in orjson.loads(line).items() if k != "agent"} for line in data.splitlines()]

        assert records(fast.stdout) == records(typed.stdout_bytes)
        varying = ("agents", "records_per_second", "seconds")
        fast_summary, typed_summary = (
            {k: v for k, v in orjson.loads(err.strip().splitlines()[-1]).items() if k not in varying}
            for err in (fast.stderr, typed.stderr_bytes)
        )
        assert fast_summary == typed_summary and fast_summary["errors"] == 1

    def test_help_is_typers(self):
        done = subprocess.run([AF, "run", "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "--batch-wait-ms" in done.stdout


class TestSay:
    @pytest.mark.parametrize("text", [
        "1 records: 1 results, 0 errors in 0.00s, 222 records/s",
        "note: save_state: no --state-dir, nothing is written (the identity is ephemeral)",
        '{"agents": ["a-1"], "error_codes": {"AF5232": 1}, "records": 2}',
        "shutdown error: boom :smile: and :thumbs_up:",
        "tab\there", "carriage\rreturn", "bell\x07", "ünïcødé ✓", "[bold]not markup[/]", "",
        "a:b:c", "12:30:45", "multi\nline", "::", "\x1b[31mred\x1b[0m", "nul\x00", "trailing space ",
    ])
    def test_prints_what_rich_prints(self, text, capsys):
        Console(stderr=True, highlight=False, soft_wrap=True).print(text, markup=False, highlight=False)
        expected = capsys.readouterr().err
        say(text)
        assert capsys.readouterr().err == expected


class TestReadAhead:
    def test_gives_what_read_bundle_gives(self, bundle):
        from af.cli._load import _read_ahead
        from afcore.bundle import read_bundle

        assert _read_ahead(bundle)() == read_bundle(bundle)

    def test_raises_what_read_bundle_raises(self, tmp_path):
        from af.cli._load import _read_ahead
        from afcore.errors import BundleError

        bad = tmp_path / "bad.afb"
        bad.write_bytes(b"not a bundle")
        wait = _read_ahead(bad)
        with pytest.raises(BundleError) as info:
            wait()
        assert info.value.code == "AF4001"
