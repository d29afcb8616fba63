"""`af run` throughput as a ratio of a bare script doing the same work (issue 4, benchmark 1).

Both sides read the same JSONL file, parse it with orjson, run onnxruntime (the bundle's own
model.onnx, same thread count) in batches of the same size and write JSONL. Measured side by
side in one run, twice: in-process (the function `af run` calls, `afrt.stream.run_jsonl`, against
the bare loop in this process) and as subprocesses (`af run` against `python bare.py`, both paying
interpreter start-up and imports). Target: ratio >= 0.8.

Usage: python benchmarks/run_throughput.py [--records 50000] [--replicas 1] [--max-batch 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
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
def bare(model, src, dst, batch, threads):
    opts = ort.SessionOptions(); opts.intra_op_num_threads = threads; opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    ids, rows = [], []
    def run():
        out = sess.run(None, {name: np.array(rows, dtype=np.float32)})[0]
        dst.write(b"".join(orjson.dumps({"id": i, "output": o}, option=orjson.OPT_SERIALIZE_NUMPY
                                        | orjson.OPT_APPEND_NEWLINE) for i, o in zip(ids, out)))
        ids.clear(); rows.clear()
    for line in src:
        rec = orjson.loads(line); ids.append(rec["id"]); rows.append(rec["input"])
        if len(rows) == batch: run()
    if rows: run()
if __name__ == "__main__":
    with open(sys.argv[2], "rb") as src, open(sys.argv[3], "wb") as dst:
        bare(open(sys.argv[1], "rb").read(), src, dst, int(sys.argv[4]), int(sys.argv[5]))
'''


def make_inputs(path: Path, records: int) -> None:
    """Write ``records`` input lines by cycling the example's held-out records."""
    lines = [line for line in INPUTS.read_bytes().splitlines() if line.strip()]
    import orjson

    with open(path, "wb") as fh:
        for i in range(records):
            rec = orjson.loads(lines[i % len(lines)])
            rec["id"] = i
            fh.write(orjson.dumps(rec) + b"\n")


def build(workdir: Path) -> tuple[Path, Path]:
    """Compile the example bundle and extract its ONNX model."""
    from afc import load_agent_file
    from afc.compile import compile_agent

    bundle = workdir / "classification-agent.afb"
    bundle.write_bytes(compile_agent(load_agent_file(EXAMPLE).spec()))
    from afrt import load_bundle

    model = workdir / "model.onnx"
    model.write_bytes(load_bundle(bundle).member("onnx"))
    return bundle, model


def measure(*, records: int = 50000, replicas: int = 1, max_batch: int = 64, rounds: int = 3) -> dict[str, float]:
    """Measure both sides, in-process and as subprocesses, in alternating rounds.

    The machine is shared, so each round runs the bare script and `af run` back to back. Other
    processes can only slow a run down, so each side's best round is its speed (as `timeit`
    advises) and the ratio of the best rounds is the figure for the target; the median over rounds
    of the paired ratios is reported beside it, to show the spread.

    Returns:
        ``bare_inproc``, ``af_inproc`` (best records/s), ``ratio_inproc`` (of those),
        ``median_ratio_inproc``, and the same for ``subprocess``.
    """
    import statistics

    import afrt
    from afrt.stream import RunOptions, run_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle, model = build(work)
        data = work / "in.jsonl"
        make_inputs(data, records)
        bare_py = work / "bare.py"
        bare_py.write_text(BARE)
        namespace: dict = {}
        exec(compile(BARE, "bare", "exec"), namespace)
        bare = namespace["bare"]
        model_bytes, raw = model.read_bytes(), data.read_bytes()
        af = str(Path(sys.executable).parent / "af")
        times: dict[str, list[float]] = {k: [] for k in ("bare_inproc", "af_inproc", "bare_subprocess", "af_subprocess")}

        def timed(name: str, fn) -> None:
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)

        def af_inproc() -> None:
            # Loading is part of what `af run` does; the bare side creates its session too.
            summary = asyncio.run(run_jsonl(afrt.load(bundle), io.BytesIO(raw), io.BytesIO(),
                                            RunOptions(replicas=replicas, max_batch=max_batch)))
            assert summary.results == records, summary.to_json()

        for _ in range(rounds):
            timed("bare_inproc", lambda: bare(model_bytes, io.BytesIO(raw), io.BytesIO(), max_batch, 1))
            timed("af_inproc", af_inproc)
            timed("bare_subprocess", lambda: subprocess.run(
                [sys.executable, str(bare_py), str(model), str(data), str(work / "b.jsonl"), str(max_batch), "1"],
                check=True))
            timed("af_subprocess", lambda: subprocess.run(
                [af, "run", str(bundle), "--input", str(data), "--output", str(work / "a.jsonl"),
                 "--replicas", str(replicas), "--max-batch", str(max_batch)], check=True, stderr=subprocess.DEVNULL))
    out = {name: records / min(values) for name, values in times.items()}
    for kind in ("inproc", "subprocess"):
        out[f"ratio_{kind}"] = out[f"af_{kind}"] / out[f"bare_{kind}"]
        pairs = [b / a for b, a in zip(times[f"bare_{kind}"], times[f"af_{kind}"])]
        out[f"median_ratio_{kind}"] = statistics.median(pairs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    r = measure(records=args.records, replicas=args.replicas, max_batch=args.max_batch, rounds=args.rounds)
    print(f"af run throughput, {args.records} records of examples/classification-agent, batch {args.max_batch}, "
          f"{args.replicas} replica(s), best of {args.rounds} alternating rounds")
    for kind, label in (("inproc", "in-process"), ("subprocess", "subprocess")):
        print(f"  {label:10s} : bare {r[f'bare_{kind}']:>9.0f} rec/s   af run {r[f'af_{kind}']:>9.0f} rec/s   "
              f"ratio {r[f'ratio_{kind}']:.2f}x (target >= 0.8x; median of paired rounds "
              f"{r[f'median_ratio_{kind}']:.2f}x)")


if __name__ == "__main__":
    main()
