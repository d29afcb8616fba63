"""The progress line of `af run` on a terminal: records, records/s, how much of the input is read, ETA.

Drawn on stderr only when stderr is a terminal (and not ``--quiet``), redrawn in place a few times
a second, and erased when the run ends, so that the summary lines stay as they are.
"""

from __future__ import annotations

import asyncio
import time
from typing import IO, Any

#: seconds between redraws
REDRAW_SECONDS = 0.25


def format_progress(progress: Any, now: float | None = None) -> str:
    """Return the progress line for an `afrt.RunProgress`.

    Args:
        progress: the run's counters.
        now: the current `time.perf_counter` (default: now).

    Returns:
        e.g. ``af run: 120,000 records, 40,000 records/s, 60% of the input read, ETA 0:00:02``.
    """
    elapsed = max((time.perf_counter() if now is None else now) - progress.started, 1e-9)
    rate = progress.records / elapsed
    parts = [f"af run: {progress.records:,} records", f"{rate:,.0f} records/s"]
    total = progress.bytes_total
    if total:
        share = min(progress.bytes_read / total, 1.0)
        parts.append(f"{share:.0%} of the input read")
        if 0 < share < 1:
            left = elapsed * (1 - share) / share
            parts.append(f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}")
    return ", ".join(parts)


async def show_progress(progress: Any, stream: IO[str]) -> None:
    """Redraw the progress line on ``stream`` until cancelled, then erase it."""
    try:
        while True:
            await asyncio.sleep(REDRAW_SECONDS)
            stream.write("\r\x1b[K" + format_progress(progress))
            stream.flush()
    finally:
        stream.write("\r\x1b[K")
        stream.flush()
