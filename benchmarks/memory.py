"""Peak memory of `af` on a big network, as a ratio to its weights (issue 9, point 13).

Writes an .af whose single 8192 x 8192 layer holds 256 MiB of zero float32 weights (a file of a
few KB: `tests/afc/test_large_networks.py`), then runs, each in a child process whose own peak
RSS (ru_maxrss from wait4) is read: `af validate`, `af compile`, `af run` of the .afb and `af run`
of the .af (one record each). Each line gives the peak, the peak over the weights, and
(peak - baseline) over the weights, the baseline being `af run` of examples/xor.afb (the
interpreter, numpy, onnxruntime). Targets (issue 9): `af run` within about 2x the weights plus
the baseline.

Usage: python benchmarks/memory.py [--side 8192] [--backend onnx|wasm]   (--side 16384: the issue's 1 GiB)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "afc"))

import test_large_networks as large  # noqa: E402  (the generator of the test, so both measure one file)


def peak_rss(args: list[str]) -> int:
    """Run ``args``; return that process's own peak RSS in bytes."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # validate exits 1 on nothing here; kept for notes
        sys.exit(f"{' '.join(args)} failed: {process.stderr.read().decode()}")
    process.stderr.close()
    return usage.ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=large.SIDE, help="the layer's width (8192: 256 MiB)")
    parser.add_argument("--backend", choices=("onnx", "wasm"), default="onnx")
    args = parser.parse_args()
    af = [sys.executable, "-m", "af"]
    with tempfile.TemporaryDirectory(prefix="af-bench-memory-") as tmp:
        tmp_path = Path(tmp)
        source, bundle, records = tmp_path / "big.af", tmp_path / "big.afb", tmp_path / "in.jsonl"
        large.SIDE = args.side
        header = large.RUNNABLE_HEADER.replace(str(8192), str(args.side))
        weights = large.write_zero_network(source, header)
        records.write_text(json.dumps([1.0] * args.side) + "\n")
        small = tmp_path / "xor.afb"
        subprocess.run([*af, "compile", str(ROOT / "examples" / "xor.af"), "-o", str(small)], check=True,
                       capture_output=True)
        xor_records = tmp_path / "xor.jsonl"
        xor_records.write_text("[0, 1]\n")
        base = peak_rss([*af, "run", str(small), "-i", str(xor_records), "-o", os.devnull, "-q"])
        run = ["-i", str(records), "-o", os.devnull, "-q", "--backend", args.backend, "--max-bundle-mb", "65536"]
        steps = {
            "validate": [*af, "validate", str(source)],
            "compile": [*af, "compile", str(source), "-o", str(bundle)],
            "run .afb": [*af, "run", str(bundle), *run],
            "run .af": [*af, "run", str(source), *run],
        }
        print(f"weights {weights / 2**20:,.0f} MiB; baseline (af run examples/xor.afb) {base / 2**20:,.0f} MiB; "
              f"backend {args.backend}")
        for name, command in steps.items():
            peak = peak_rss(command)
            print(f"{name:10s} peak {peak / 2**20:7,.0f} MiB  {peak / weights:5.2f}x weights  "
                  f"(peak - baseline) {(peak - base) / weights:5.2f}x")


if __name__ == "__main__":
    main()
