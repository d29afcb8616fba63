"""`make fuzz`: run each fuzz target for a set time, with atheris (libFuzzer) or else hypothesis.

    python tests/fuzz/run.py [--seconds N] [--engine auto|atheris|hypothesis] [TARGET ...]

``--seconds`` (default: ``AF_FUZZ_SECONDS``, else 600) is per target. With atheris (``pip install
atheris``; `make fuzz` tries), each target runs in a child process under libFuzzer with af's modules
instrumented for coverage, the seeds of fuzz_targets.py as its starting corpus; an input that fails
(an exception other than af's own errors, or more than `fuzz_targets.TIME_LIMIT` seconds; libFuzzer's
own ``-timeout`` catches a hang) is written to tests/corpus/fuzz/<target>/ and the target starts
again for the time left. Without atheris, hypothesis draws mutated seeds (mutations.py) until the
time is spent, and the smallest failing input goes to the same place. Each target's line says how
many inputs ran, the CPU seconds they took and what was found; the exit code is 1 when anything
was found.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_targets  # noqa: E402

#: how often one target may be restarted after a failure within its time
MAX_RESTARTS = 20
#: af's packages, instrumented for coverage under atheris
PACKAGES = ("afcore", "afc", "afrt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=sorted(fuzz_targets.TARGETS))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("AF_FUZZ_SECONDS", 600)))
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.child:
        return _atheris_child(args.child, rest)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _has_atheris() else "hypothesis"
        if engine == "hypothesis":
            print("atheris is not installed (or does not build here): hypothesis drives the targets", flush=True)
    found = 0
    for name in args.targets:
        if name not in fuzz_targets.TARGETS:
            parser.error(f"unknown target {name!r} (targets: {', '.join(sorted(fuzz_targets.TARGETS))})")
        run = _run_atheris if engine == "atheris" else _run_hypothesis
        runs, cpu, saved = run(name, args.seconds)
        found += len(saved)
        what = "nothing found" if not saved else f"FOUND {len(saved)}: " + ", ".join(str(p) for p in saved)
        print(f"{name:<10} {engine:<10} {runs:>12,} inputs  {cpu:>9.1f} CPU s  {what}", flush=True)
    return 1 if found else 0


def _has_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _save(name: str, data: bytes, kind: str = "crash") -> Path:
    directory = fuzz_targets.CORPUS / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- hypothesis


def _run_hypothesis(name: str, seconds: float) -> tuple[int, float, list[Path]]:
    from hypothesis import given

    from mutations import fuzz_inputs
    from test_fuzz import fuzz_settings

    target, seeds = fuzz_targets.TARGETS[name], fuzz_targets.seeds(name)
    runs, saved, failing = 0, [], []
    cpu, deadline = time.process_time(), time.monotonic() + seconds

    @fuzz_settings(2000)
    @given(fuzz_inputs(seeds))
    def fuzz(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            target(data)
        except BaseException:
            failing[:] = [data]  # hypothesis replays the smallest failing input last
            raise

    while time.monotonic() < deadline and len(saved) < MAX_RESTARTS:
        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - what the target found
            saved.append(_save(name, failing[0]))
            print(f"{name}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    return runs, time.process_time() - cpu, saved


# --------------------------------------------------------------------------- atheris


def _run_atheris(name: str, seconds: float) -> tuple[int, float, list[Path]]:
    deadline = time.monotonic() + seconds
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs, saved = 0, []
    with tempfile.TemporaryDirectory(prefix=f"af-fuzz-{name}-") as work:
        corpus, artifacts = Path(work) / "corpus", Path(work) / "artifacts"
        corpus.mkdir()
        artifacts.mkdir()
        for i, seed in enumerate([*fuzz_targets.seeds(name), *(p.read_bytes() for p in fuzz_targets.corpus(name))]):
            (corpus / f"seed-{i}").write_bytes(seed)
        for _ in range(MAX_RESTARTS):
            left = int(deadline - time.monotonic())
            if left < 1:
                break
            command = [sys.executable, __file__, "--child", name, str(corpus), f"-max_total_time={left}",
                       f"-timeout={max(int(fuzz_targets.TIME_LIMIT * 5), 10)}", "-rss_limit_mb=3072",
                       "-max_len=131072", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
            result = subprocess.run(command, capture_output=True, text=True, errors="replace")
            runs += _count_runs(result.stderr)
            new = [path for path in sorted(artifacts.iterdir())]
            for path in new:
                kind = path.name.split("-")[0]
                saved.append(_save(name, path.read_bytes(), kind))
                path.unlink()
            if result.returncode == 0:
                break
            if not new:  # failed without an artifact: show why and stop
                print(result.stderr[-3000:], flush=True)
                break
            print(f"{name}: {_failure_line(result.stderr)}", flush=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return runs, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), saved


def _count_runs(log: str) -> int:
    done = re.findall(r"Done (\d+) runs", log)
    if done:
        return int(done[-1])
    status = re.findall(r"^#(\d+)\s", log, re.MULTILINE)
    return int(status[-1]) if status else 0


def _failure_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "Error" in line or "Exception" in line or "timeout" in line]
    return lines[-1][:300] if lines else "failed"


def _atheris_child(name: str, argv: list[str]) -> int:
    import importlib

    import atheris

    with atheris.instrument_imports(include=list(PACKAGES)):
        for module in ("afcore.bundle", "afcore.manifest", "afcore.signing", "afc.reader", "afc.agentfile",
                       "afc.expr", "afc.validate", "afrt.records"):
            importlib.import_module(module)
    target = fuzz_targets.TARGETS[name]
    fuzz_targets.seeds(name)  # built before the clock starts

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
