"""The progress line of `af run`: on a terminal only, off with --quiet, erased before the summary."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import orjson

from af.cli._progress import format_progress

ROOT = Path(__file__).resolve().parents[2]
AF = str(Path(sys.executable).parent / "af")


class TestFormat:
    def test_records_rate_share_and_eta(self):
        progress = SimpleNamespace(records=30_000, written=29_000, bytes_read=250, bytes_total=1000, started=10.0)
        assert format_progress(progress, now=13.0) == (
            "af run: 30,000 records, 10,000 records/s, 25% of the input read, ETA 0:00:09")

    def test_a_pipe_has_no_share_and_no_eta(self):
        progress = SimpleNamespace(records=5, written=5, bytes_read=99, bytes_total=None, started=0.0)
        assert format_progress(progress, now=1.0) == "af run: 5 records, 5 records/s"


def _run_on_a_terminal(args: list[str]) -> bytes:
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen([AF, *args], stdout=subprocess.DEVNULL, stderr=secondary, stdin=subprocess.DEVNULL)
        os.close(secondary)
        out = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO once the process has closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=120) == 0, out
        return out
    finally:
        os.close(primary)


class TestOnATerminal:
    def test_progress_then_the_summary(self, example_bundles, tmp_path):
        row = orjson.loads((ROOT / "examples" / "classification-inputs.jsonl").read_bytes().splitlines()[0])["input"]
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"".join(orjson.dumps({"id": i, "input": row}) + b"\n" for i in range(40_000)))
        seen = _run_on_a_terminal(["run", str(example_bundles["classification-agent"]), "--input", str(source)])
        assert b"records/s" in seen and b"of the input read" in seen and b"\r\x1b[K" in seen
        assert b"40000 records: 40000 results, 0 errors" in seen.split(b"\r\x1b[K")[-1]

    def test_quiet_shows_nothing(self, example_bundles, tmp_path):
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"[" + b"0," * 783 + b"0]\n")
        assert _run_on_a_terminal(["run", str(example_bundles["classification-agent"]), "--input", str(source),
                                   "--quiet"]) == b""
