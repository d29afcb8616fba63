"""`af run` without typer, for plain command lines.

typer 0.29 coerces every parameter of the invoked command through a pydantic ``TypeAdapter``:
importing pydantic and building the adapters costs more than everything else `af` adds to
start-up (see benchmarks/startup.py). A command line such as::

    af run agent.afb --input in.jsonl --output out.jsonl --replicas 2

is therefore parsed here and handed to the body of the command (`_run.run_records`), with the
error handling of every other command (`_output.handle_error`), without importing typer, pydantic
or rich. Only command lines whose every token is unambiguous are taken: the options of
`af run` written out whole (``--input x``, ``--input=x``, ``-i x``), each at most once, values
in their plain form (decimal digits within the declared range, a path that is not empty).
Anything else (``--help``, an unknown or repeated option, a missing or extra argument, a value
typer might read differently or refuse, ``--``, shell completion) makes `parse_run_args` return
None, and typer parses the command line as before, with its own messages and exit codes. (So does
every command line on Windows, where typer expands wildcards.)
``tests/cli/test_fastpath.py`` checks that `RUN_OPTIONS` matches run.py and that every command
line taken here gives the body the same values typer gives it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from ._load import MAX_REPLICAS

#: the options of `af run` as run.py declares them: flag -> (parameter, kind, lowest, highest)
RUN_OPTIONS: dict[str, tuple[str, str, Optional[float], Optional[float]]] = {
    "--input": ("input_path", "str", None, None),
    "-i": ("input_path", "str", None, None),
    "--output": ("output_path", "str", None, None),
    "-o": ("output_path", "str", None, None),
    "--replicas": ("replicas", "int", 1, MAX_REPLICAS),
    "--backend": ("backend", "str", None, None),
    "--swarm": ("swarm", "str", None, None),
    "--state-dir": ("state_dir", "path", None, None),
    "--max-batch": ("max_batch", "int", 1, None),
    "--batch-wait-ms": ("batch_wait_ms", "float", 0.0, None),
    "--fuel": ("fuel", "int", 1, None),
    "--fail-on-error": ("fail_on_error", "flag", None, None),
    "--json": ("json_summary", "flag", None, None),
    "--quiet": ("quiet", "flag", None, None),
    "-q": ("quiet", "flag", None, None),
}
#: the value of each option the command line leaves out (run.py's defaults)
RUN_DEFAULTS: dict[str, Any] = {
    "input_path": "-", "output_path": "-", "replicas": 1, "backend": "onnx", "swarm": "default",
    "state_dir": None, "max_batch": 64, "batch_wait_ms": 2.0, "fuel": None,
    "fail_on_error": False, "json_summary": False, "quiet": False,
}
#: the environment variable that asks for shell completion (typer's ``_<PROG>_COMPLETE``)
COMPLETE_VAR = "_AF_COMPLETE"

#: plain decimal numbers, the only spelling taken here (typer also takes "+5", " 5", "5_0", "1e3", ...)
_NUMBER = {
    "int": (re.compile(r"(?:0|[1-9][0-9]{0,17})\Z"), int),
    "float": (re.compile(r"(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,17})?\Z"), float),
}


class _Unsure(Exception):
    """A token typer might read otherwise or refuse: typer parses the command line instead."""


def _path(text: str) -> Path:
    if not text or "\0" in text:
        raise _Unsure
    try:
        os.stat(text)
    except OSError:
        return Path(text)
    # typer refuses an existing path that cannot be read ("... is not readable."): let it say so
    if not os.access(text, os.R_OK):
        raise _Unsure
    return Path(text)


def _convert(kind: str, text: str, lowest: Optional[float], highest: Optional[float]) -> Any:
    if kind == "str":
        return text
    if kind == "path":
        return _path(text)
    pattern, number = _NUMBER[kind]
    if not pattern.match(text):
        raise _Unsure
    value = number(text)
    if (lowest is not None and value < lowest) or (highest is not None and value > highest):
        raise _Unsure
    return value


def _parse(args: Sequence[str]) -> dict[str, Any]:
    options = dict(RUN_DEFAULTS)
    bundle: Optional[Path] = None
    seen: set[str] = set()
    tokens = iter(args)
    for token in tokens:
        if not token.startswith("-"):
            if bundle is not None:
                raise _Unsure  # an extra argument
            bundle = _path(token)
            continue
        flag, inline = token.split("=", 1) if token.startswith("--") and "=" in token else (token, None)
        if flag not in RUN_OPTIONS:
            raise _Unsure  # "-", "--", help, an unknown option, a short option with its value attached
        name, kind, lowest, highest = RUN_OPTIONS[flag]
        if name in seen:
            raise _Unsure
        seen.add(name)
        if kind == "flag":
            if inline is not None:
                raise _Unsure
            options[name] = True
            continue
        text = inline if inline is not None else next(tokens, None)
        if text is None or (text.startswith("-") and text != "-"):
            raise _Unsure
        options[name] = _convert(kind, text, lowest, highest)
    if bundle is None:
        raise _Unsure
    return {"bundle": bundle, **options}


def parse_run_args(args: Sequence[str]) -> Optional[dict[str, Any]]:
    """Parse the arguments of `af run` (after ``run``) when they are plain.

    Args:
        args: the command line after ``af run``.

    Returns:
        The keyword arguments of `_run.run_records`, the same values typer would pass; None when
        the command line is not plain and typer must parse it.
    """
    try:
        return _parse(args)
    except _Unsure:
        return None


def run_main(argv: Sequence[str]) -> Optional[int]:
    """Run ``af <argv>`` here when it is a plain `af run` command line.

    Args:
        argv: the command line without the program name.

    Returns:
        The exit code, as typer would have exited; None when typer must handle the command line.
    """
    # typer also completes words for the shell and, on Windows, expands wildcards itself
    if not argv or argv[0] != "run" or COMPLETE_VAR in os.environ or os.name == "nt":
        return None
    options = parse_run_args(argv[1:])
    if options is None:
        return None
    import gc

    from ._output import handle_error
    from ._run import run_records

    if options["bundle"].suffix != ".af":
        # Importing and loading a bundle make ~50k objects that live until exit and hardly any
        # garbage: the collections their allocations set off free nothing (~10 ms). `run_records`
        # turns collection back on before the run. (Compiling an .af in memory makes garbage.)
        gc.disable()
    try:
        return run_records(**options)
    except KeyboardInterrupt:
        return 130  # what typer exits with on KeyboardInterrupt
    except Exception as exc:  # noqa: BLE001 - as `_app.command` does for every command
        return handle_error(exc)
    finally:
        gc.enable()  # already on after a run; on after a failure too, for a caller in the same process
