"""Benchmark of the .af container (`make bench`).

Prints:
1. the header parse time of the reference example (examples/classification-agent.af) with the
   header layer's loader (`afc.yamlload.load_yaml`), target <= 2 ms;
2. the read throughput of a 200 MB weights section, raw and base64, as a ratio of plain
   `zstandard` decompression of the same frame, measured side by side (interleaved) in one run;
   target for raw >= 0.7x;
3. the peak memory `read_container` allocates beyond the file's bytes (tracemalloc, separate run).

Usage: .venv/bin/python benchmarks/format.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
import zstandard

from afc.reader import read_container
from afc.tensors import encode_tensors
from afc.writer import compress_payload, encode_base64_lines

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "examples" / "classification-agent.af"
HEADER_TARGET_MS = 2.0
RAW_TARGET_RATIO = 0.7


def time_call(fn, repeat: int) -> list[float]:
    """Return the wall times in seconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_header() -> None:
    """Time parsing the reference header with the header layer's YAML loader."""
    from afc.yamlload import load_yaml

    container = read_container(REFERENCE.read_bytes(), path=str(REFERENCE))
    source = container.header_source
    load_yaml(source)  # warm up imports and caches
    times = time_call(lambda: load_yaml(source), 300)
    median_ms = statistics.median(times) * 1000
    verdict = "ok" if median_ms <= HEADER_TARGET_MS else "OVER TARGET"
    print(f"header parse (afc.yamlload.load_yaml, {source.line_count} lines): median {median_ms:.3f} ms, "
          f"best {min(times) * 1000:.3f} ms over {len(times)} runs (target <= {HEADER_TARGET_MS} ms: {verdict})")


def make_files(megabytes: int) -> tuple[bytes, bytes, bytes, int]:
    """Return (frame, raw file, base64 file, payload size) for one float32 weights section."""
    rng = np.random.default_rng(0)
    floats = megabytes * 1_000_000 // 4
    weights = (rng.standard_normal(floats, dtype=np.float32) * 0.05).reshape(-1, 1000)
    payload = encode_tensors({"layers.0.weight": weights})
    del weights
    frame = compress_payload(payload)
    size = len(payload)
    del payload
    head = REFERENCE.read_bytes().split(b"---BINARY_SECTION:")[0] + b"---BINARY_SECTION:neural_weights---\n"
    return frame, head + frame + b"\n", head + encode_base64_lines(frame), size


def bench_sections(megabytes: int, rounds: int) -> None:
    """Time bare zstd, our raw read and our base64 read of the same frame, interleaved."""
    frame, raw_file, b64_file, size = make_files(megabytes)
    print(f"section: {size / 1e6:.0f} MB safetensors float32, frame {len(frame) / 1e6:.0f} MB "
          f"(zstd level 3, ratio {len(frame) / size:.3f}), base64 file {len(b64_file) / 1e6:.0f} MB")
    bare = zstandard.ZstdDecompressor()
    runs: dict[str, list[float]] = {"bare zstd": [], "raw": [], "base64": []}
    for _ in range(rounds):
        runs["bare zstd"] += time_call(lambda: bare.decompress(frame), 1)
        runs["raw"] += time_call(lambda: read_container(raw_file, path="bench.af"), 1)
        runs["base64"] += time_call(lambda: read_container(b64_file, path="bench.af"), 1)
    baseline = min(runs["bare zstd"])
    for name, times in runs.items():
        ratios = [b / t for b, t in zip(runs["bare zstd"], times)]
        print(f"  {name:9s}: best {min(times) * 1000:6.0f} ms = {size / min(times) / 1e6:5.0f} MB/s, "
              f"{baseline / min(times):.2f}x bare (per-round ratios {', '.join(f'{r:.2f}' for r in ratios)})")
    verdict = "ok" if baseline / min(runs["raw"]) >= RAW_TARGET_RATIO else "UNDER TARGET"
    print(f"  raw target >= {RAW_TARGET_RATIO}x bare zstd: {verdict}")
    bench_memory(raw_file, b64_file, size)


def bench_memory(raw_file: bytes, b64_file: bytes, size: int) -> None:
    """Report the peak allocation of one read beyond the file itself (the payload is ``size``)."""
    for name, data in (("raw", raw_file), ("base64", b64_file)):
        tracemalloc.start()
        container = read_container(data, path="bench.af")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del container
        print(f"  {name:9s}: peak allocation {peak / 1e6:.0f} MB beyond the {len(data) / 1e6:.0f} MB file "
              f"(payload {size / 1e6:.0f} MB)")


def main() -> None:
    """Run the benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the weights section in MB")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of each measurement")
    args = parser.parse_args()
    bench_header()
    bench_sections(args.mb, args.rounds)


if __name__ == "__main__":
    main()
