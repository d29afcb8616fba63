"""`af` start-up times: `af run` on one record against a bare script doing the same work (issues 4 and 8).

Each round runs, back to back, (a) `af run bundle.afb --input one.jsonl --output /dev/null`
through the installed `af` entry point and (b) a bare script that imports numpy, onnxruntime
and orjson, creates an `InferenceSession` from the bundle's model.onnx (same thread count),
parses the record, runs it and writes the output line. It also times `af --help`, and
`af validate` and `af compile` of examples/classification-agent.af, and prints each against its
target (issue 8): `af --help` at most 150 ms, `af run` at most 1.5x the bare script, `af validate`
at most 0.3 s and `af compile` at most 1.0 s (medians). The machine
is shared, so the rounds alternate and the medians are reported, with the CPU time (user +
sys) of the child processes, which scheduling noise disturbs less than wall time.

The first run of each command is a warm-up (it may compile bytecode; it is not counted). An
editable install ships no .pyc files, and where PYTHONDONTWRITEBYTECODE is set (as on this
project's machines) Python never writes them: every `af run` then compiles af's own modules
again (~55 ms on a 2-vCPU machine). The script says so when it finds them missing; ``--compile``
byte-compiles them first (`python -m compileall`), as a regular install does.

Usage: python benchmarks/startup.py [--rounds 20] [--compile]   (issue 8 quotes medians of 5 rounds)
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "classification-agent.af"
INPUTS = ROOT / "examples" / "classification-inputs.jsonl"

BARE = '''
import sys, numpy as np, onnxruntime as ort, orjson
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
with open(sys.argv[1], "rb") as fh:
    sess = ort.InferenceSession(fh.read(), opts, providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
with open(sys.argv[2], "rb") as src, open(sys.argv[3], "wb") as dst:
    recs = [orjson.loads(line) for line in src if line.strip()]
    out = sess.run(None, {name: np.array([r["input"] for r in recs], dtype=np.float32)})[0]
    dst.write(b"".join(orjson.dumps({"id": r["id"], "output": o}, option=orjson.OPT_SERIALIZE_NUMPY
                                    | orjson.OPT_APPEND_NEWLINE) for r, o in zip(recs, out)))
'''


def build(workdir: Path) -> tuple[Path, Path, Path]:
    """Compile the example bundle, extract its ONNX model and write a one-record input file."""
    from afc import load_agent_file
    from afc.compile import compile_agent
    from afrt import load_bundle

    bundle = workdir / "classification-agent.afb"
    bundle.write_bytes(compile_agent(load_agent_file(EXAMPLE).spec()))
    model = workdir / "model.onnx"
    model.write_bytes(load_bundle(bundle).member("onnx"))
    one = workdir / "one.jsonl"
    one.write_bytes(next(line for line in INPUTS.read_bytes().splitlines(keepends=True) if line.strip()))
    return bundle, model, one


#: the packages whose modules `af run` imports
RUN_PACKAGES = ("af", "afcore", "afrt")


def stale_bytecode() -> list[Path]:
    """Return the source files of `RUN_PACKAGES` whose .pyc is missing or older than the source."""
    stale = []
    for package in RUN_PACKAGES:
        for source in sorted((ROOT / package).rglob("*.py")):
            cached = Path(importlib.util.cache_from_source(str(source)))
            try:
                header = cached.read_bytes()[:16]
            except OSError:
                stale.append(source)
                continue
            stat = source.stat()
            fresh = header[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(header[4:8], "little") == 0
            fresh = fresh and int.from_bytes(header[8:12], "little") == int(stat.st_mtime) & 0xFFFFFFFF
            if not (fresh and int.from_bytes(header[12:16], "little") == stat.st_size & 0xFFFFFFFF):
                stale.append(source)
    return stale


def _timed(argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` to completion; return (wall seconds, child CPU seconds). A failure is an error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr.decode(errors='replace')}")
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(*, rounds: int = 20) -> dict[str, dict[str, float]]:
    """Time `af run` on one record, the bare script and `af --help` in ``rounds`` alternating rounds.

    Returns:
        command label -> ``{"wall": median seconds, "cpu": median seconds, "min": fastest wall}``.
    """
    af = str(Path(sys.executable).parent / "af")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, model, one = build(work)
        bare_py = work / "bare.py"
        bare_py.write_text(BARE)
        commands = {
            "af run": [af, "run", str(bundle), "--input", str(one), "--output", os.devnull],
            "bare script": [sys.executable, str(bare_py), str(model), str(one), os.devnull],
            "af --help": [af, "--help"],
            "af validate": [af, "validate", str(EXAMPLE)],
            "af compile": [af, "compile", str(EXAMPLE), "-o", str(work / "out.afb")],
        }
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
        for label, argv in commands.items():
            _timed(argv)  # warm-up
        for _ in range(rounds):
            for label, argv in commands.items():
                samples[label].append(_timed(argv))
    return {
        label: {
            "wall": statistics.median(wall for wall, _ in runs),
            "cpu": statistics.median(cpu for _, cpu in runs),
            "min": min(wall for wall, _ in runs),
        }
        for label, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="byte-compile af's modules first")
    args = parser.parse_args()
    if args.compile:
        for package in RUN_PACKAGES:
            compileall.compile_dir(ROOT / package, quiet=1)
    stale = stale_bytecode()
    if stale and sys.dont_write_bytecode:
        print(f"note: {len(stale)} modules of {', '.join(RUN_PACKAGES)} have no up-to-date .pyc and "
              "PYTHONDONTWRITEBYTECODE is set: each af run compiles them (use --compile)")
    r = measure(rounds=args.rounds)
    print(f"start-up, one record of examples/classification-agent, medians of {args.rounds} alternating rounds")
    for label in r:
        print(f"  {label:<12} wall {r[label]['wall'] * 1e3:6.1f} ms (min {r[label]['min'] * 1e3:6.1f})"
              f"   cpu {r[label]['cpu'] * 1e3:6.1f} ms")
    wall = r["af run"]["wall"] - r["bare script"]["wall"]
    cpu = r["af run"]["cpu"] - r["bare script"]["cpu"]
    print(f"  af run - bare: wall {wall * 1e3:+6.1f} ms   cpu {cpu * 1e3:+6.1f} ms")
    print("targets (issue 8), medians of wall time:")
    ratio = r["af run"]["wall"] / r["bare script"]["wall"]
    for label, value, target, unit in (("af --help", r["af --help"]["wall"], 0.150, "s"),
                                       ("af run / bare script", ratio, 1.5, "x"),
                                       ("af validate", r["af validate"]["wall"], 0.3, "s"),
                                       ("af compile", r["af compile"]["wall"], 1.0, "s")):
        verdict = "met" if value <= target else "MISSED"
        print(f"  {label:<21} {value:6.3f} {unit}  (target <= {target} {unit}: {verdict})")


if __name__ == "__main__":
    main()
