"""Runs a JSON Lines stream through a swarm: what `af run` does once the agent is loaded.

The event loop reads the input in chunks (a file directly, a pipe through the loop's own watcher,
anything else such as a terminal through a reader thread) and parses them (orjson) into blocks of
records, feeds those to the replicas (bounded queue: backpressure up to the reader); the replicas'
outcomes come back from `Swarm.results` and `afrt.jsonl.JsonlWriter` writes one output record per
input record, in input order. This module is the edge: the only place of `af run` that knows about
bytes, files and JSON. A stop request (SIGINT/SIGTERM in `af run`) stops reading; what was already
read is finished and written (or, when the output does not take it within `STOP_GRACE_SECONDS`,
counted as not written), then the shutdown workflows run.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from afcore.errors import ExecutionError

from .jsonl import JsonlWriter
from .records import ErrorRecord, LineParser, RecordBlock
from .swarm import Swarm

__all__ = ["RunOptions", "RunProgress", "RunSummary", "run_jsonl"]

#: bytes read at a time (a pipe returns what it has, up to this); the lines of a chunk are held
#: at once, so a larger chunk falls out of the CPU caches (1 MiB was ~5% slower in `af run`)
READ_CHUNK = 1 << 17
#: chunks read ahead of the replicas (bounds memory when the input is faster than the agents)
READ_AHEAD = 8
#: after a stop request, how long the output may take to accept what is finished before it is abandoned
STOP_GRACE_SECONDS = 2.0


@dataclass
class RunOptions:
    """Options of one run; the defaults are those of `af run`."""

    replicas: int = 1
    swarm: str = "default"
    state_dir: Any = None
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    instrument: Any = None
    #: counters the run keeps up to date, for a progress display (None: not kept)
    progress: RunProgress | None = None


@dataclass
class RunProgress:
    """How far a run has come, updated as it goes (read it from another task to show progress).

    ``bytes_total`` is the input's size when it is a file (None for a pipe or a terminal).
    """

    records: int = 0
    written: int = 0
    bytes_read: int = 0
    bytes_total: int | None = None
    started: float = field(default_factory=time.perf_counter)


@dataclass
class RunSummary:
    """Counts of one run, printed on stderr by `af run` (``--json`` prints `to_json`)."""

    records: int = 0
    results: int = 0
    errors: int = 0
    filtered: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    written: int = 0
    unwritten: int = 0
    seconds: float = 0.0
    interrupted: str | None = None
    agents: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    shutdown_errors: list[str] = field(default_factory=list)
    ephemeral: bool = True
    progress: RunProgress | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        rate = self.records / self.seconds if self.seconds > 0 else None
        return {
            "records": self.records, "results": self.results, "errors": self.errors, "filtered": self.filtered,
            "error_codes": self.error_codes, "written": self.written, "unwritten": self.unwritten,
            "seconds": round(self.seconds, 4),
            "records_per_second": round(rate, 1) if rate else None, "interrupted": self.interrupted,
            "agents": self.agents, "published": self.stats.get("published", 0),
            "checkpoints": self.stats.get("checkpoints", 0), "updates": self.stats.get("updates", 0),
            "restored": self.restored,
            "bandwidth_wait_seconds": round(self.stats.get("bandwidth_wait", 0.0), 3),
            "notices": self.notices, "shutdown_errors": self.shutdown_errors, "ephemeral_identity": self.ephemeral,
        }


class _Reader(threading.Thread):
    """Reads raw chunks in a daemon thread (a blocked read never holds up exit).

    Only the read happens here, which releases the GIL; parsing happens in the event loop, so
    that two threads never fight over the GIL for Python work (each handoff can cost up to the
    interpreter's 5 ms switch interval).
    """

    def __init__(self, stream: IO[bytes], loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        super().__init__(name="af-reader", daemon=True)
        self.stream, self.loop, self.queue = stream, loop, queue
        self.slots = threading.Semaphore(READ_AHEAD)
        self.stopped = False

    def _read(self) -> bytes:
        read1 = getattr(self.stream, "read1", None)
        if read1 is not None:
            return read1(READ_CHUNK)
        return os.read(self.stream.fileno(), READ_CHUNK)

    def run(self) -> None:
        try:
            while not self.stopped:
                chunk = self._read()
                self.slots.acquire()
                self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
                if not chunk:
                    return
        except (OSError, ValueError) as exc:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, exc)


async def run_jsonl(agent: Any, source: IO[bytes], sink: IO[bytes] | Callable[[], IO[bytes]], options: RunOptions,
                    *, stop: asyncio.Event | None = None) -> RunSummary:
    """Run every record of ``source`` through a swarm of ``agent`` replicas; write to ``sink``.

    Args:
        agent: a loaded agent (`afrt.load`).
        source: binary JSON Lines input (a pipe is watched by the event loop, which sets it
            non-blocking and closes it when the run ends).
        sink: binary output, or a function that opens it: called only once the agents have
            started, so that a run refused at start (a locked state directory, a corrupt
            checkpoint) truncates no output file. One record per input record, in input order.
        options: replicas, batching, swarm name, state directory.
        stop: when set, reading stops; what was read is finished, then shutdown runs.

    Returns:
        The counts of the run.

    Raises:
        StateError, ExecutionError: when initialization fails (nothing is read or opened then).
        BrokenPipeError: when the reader of ``sink`` went away; reading stopped and the shutdown
            workflows ran (`af run` then exits 0 quietly, as after ``| head``).
        ExecutionError: AF5238 when ``sink`` could not be written otherwise (e.g. disk full);
            reading stopped and the shutdown workflows ran.
    """
    summary = RunSummary(ephemeral=options.state_dir is None)
    started = time.perf_counter()
    swarm = Swarm(options.swarm, max_batch=options.max_batch, batch_wait_ms=options.batch_wait_ms,
                  instrument=options.instrument, defer_checkpoints=True)
    try:
        group = await swarm.start(agent, replicas=options.replicas, state_dir=options.state_dir)
        writer = JsonlWriter(sink() if callable(sink) else sink, labels=agent.bundle.info.network.labels)
        await writer.open()
    except BaseException:
        await swarm.stop()
        raise
    stop = stop or asyncio.Event()
    progress = options.progress
    if progress is not None:
        progress.bytes_total = _file_size(source)
        summary.progress = progress
    consuming = asyncio.ensure_future(_consume(swarm, writer, stop, progress))
    watchdog = asyncio.ensure_future(_abandon_when_stalled(writer, stop))
    try:
        await _pump(group, source, writer, summary, agent.input_size, stop, options.max_batch)
    finally:
        await swarm.drain()
        await consuming
        await writer.close()
        watchdog.cancel()
        # only now: the shutdown workflow's checkpoint counts records whose outputs are written
        errors = await swarm.stop()
        _summarize(summary, writer, group, errors, time.perf_counter() - started)
        summary.notices[:0] = [n for n in getattr(agent, "notices", ()) if n not in summary.notices]
    failed = writer.write_error
    if isinstance(failed, BrokenPipeError):
        raise failed
    if failed is not None and not writer.abandoned:
        raise ExecutionError(f"cannot write the output: {failed.strerror or failed}", code="AF5238",
                             hint="check the output path and the free space; the shutdown workflows ran") from failed
    return summary


async def _abandon_when_stalled(writer: JsonlWriter, stop: asyncio.Event) -> None:
    """After a stop request, give up an output that has taken nothing for `STOP_GRACE_SECONDS`:
    a reader that stopped reading must not keep the run (and its shutdown workflows) waiting."""
    await stop.wait()
    while writer.stalled_for() < STOP_GRACE_SECONDS:
        await asyncio.sleep(0.1)
    writer.abandon()


async def _consume(swarm: Swarm, writer: JsonlWriter, stop: asyncio.Event, progress: RunProgress | None) -> None:
    """Write the outcomes as they come; after a write failed, take the rest without writing it."""
    async for outcomes in swarm.results():
        writer.add(outcomes)
        await writer.flush()
        if progress is not None:
            progress.written = writer.written
        if writer.write_error is not None:
            stop.set()  # e.g. `af run ... | head`: stop reading


def _summarize(summary: RunSummary, writer: JsonlWriter, group: Any, errors: list, seconds: float) -> None:
    summary.results, summary.errors, summary.filtered = writer.results, writer.errors, writer.filtered
    summary.error_codes = dict(writer.error_codes)
    summary.written, summary.unwritten = writer.written, writer.unwritten
    summary.shutdown_errors = [f"{e.code}: {e.message}" for e in errors]
    summary.seconds = seconds
    summary.agents = group.agent_ids
    summary.stats = group.stats()
    summary.notices = group.notices()
    summary.restored = {c.agent_id: c.restored for c in group.contexts if c.restored}


def _file_size(stream: IO[bytes]) -> int | None:
    """Return the size of a regular file (what a progress display's ETA needs), else None."""
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else None


def _input_kind(stream: IO[bytes]) -> str:
    """Return ``file`` for streams whose reads never wait for a writer (files, in-memory buffers),
    ``pipe`` for a pipe or FIFO (`cat data | af run ...`), which the event loop can watch, else
    ``other`` (a terminal, a stream without a file descriptor)."""
    if isinstance(stream, io.BytesIO):
        return "file"
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return "other"
    return "file" if stat.S_ISREG(mode) else "pipe" if stat.S_ISFIFO(mode) else "other"


async def _pump(group: Any, source: IO[bytes], writer: JsonlWriter, summary: RunSummary,
                input_size: int, stop: asyncio.Event, max_batch: int) -> None:
    parser = LineParser(input_size, max_batch)
    kind = _input_kind(source)
    if kind == "file":
        # A file never blocks: read it here, sparing the GIL handoffs of a reader thread.
        await _pump_file(group, source, parser, writer, summary, stop)
    elif kind == "pipe":
        # The event loop watches a pipe itself: no thread, no GIL handoff per chunk.
        await _pump_pipe(group, source, parser, writer, summary, stop)
    else:  # a terminal, or a stream without a file descriptor: a reader thread
        await _pump_stream(group, source, parser, writer, summary, stop)


async def _pump_file(group: Any, source: IO[bytes], parser: LineParser, writer: JsonlWriter, summary: RunSummary,
                     stop: asyncio.Event) -> None:
    read = getattr(source, "read1", source.read)
    while True:
        if stop.is_set():
            summary.interrupted = "stopped"
            return
        try:
            chunk = read(READ_CHUNK)
        except OSError as exc:
            raise ExecutionError(f"cannot read the input: {exc}", code="AF5236") from None
        if summary.progress is not None:
            summary.progress.bytes_read += len(chunk)
        await _dispatch(group, parser.feed(chunk, hold=True), writer, summary)
        if not chunk:
            return
        await asyncio.sleep(0)  # let the replicas and the signal handlers run


class _PipeInput(asyncio.Protocol):
    """Collects what a pipe delivers, for `_pump_pipe`; pauses the pipe while much is waiting."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.ended = False
        self.error: Exception | None = None
        self.transport: Any = None
        self.paused = False
        self.waiter: asyncio.Future | None = None
        self.stop = stop

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= READ_CHUNK * READ_AHEAD and not self.paused:
            self.transport.pause_reading()  # backpressure up to the writer, as a full pipe does
            self.paused = True
        self.wake()

    def eof_received(self) -> bool:
        self.ended = True
        self.wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self) -> bytes:
        """Return all that has arrived, waiting for some; b"" at the end or once ``stop`` is set."""
        while not self.parts and not self.ended and not self.stop.is_set():
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        data = b"".join(self.parts)
        self.parts.clear()
        self.size = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        return data


async def _pump_pipe(group: Any, source: IO[bytes], parser: LineParser, writer: JsonlWriter, summary: RunSummary,
                     stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    pipe = _PipeInput(stop)
    transport, _ = await loop.connect_read_pipe(lambda: pipe, source)
    stopping = asyncio.ensure_future(stop.wait())
    stopping.add_done_callback(lambda _: pipe.wake())
    try:
        while True:
            chunk = await pipe.take()
            if stop.is_set():
                summary.interrupted = "stopped"
                return
            if pipe.error is not None:
                raise ExecutionError(f"cannot read the input: {pipe.error}", code="AF5236") from pipe.error
            # All that has arrived is parsed at once: every complete line goes out without waiting.
            if summary.progress is not None:
                summary.progress.bytes_read += len(chunk)
            await _dispatch(group, parser.feed(chunk), writer, summary)
            if not chunk:
                return
    finally:
        stopping.cancel()
        transport.close()


async def _pump_stream(group: Any, source: IO[bytes], parser: LineParser, writer: JsonlWriter, summary: RunSummary,
                       stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    reader = _Reader(source, loop, queue)
    reader.start()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                reader.stopped = True
                summary.interrupted = "stopped"
                return
            item = getting.result()
            reader.slots.release()
            if isinstance(item, Exception):
                raise ExecutionError(f"cannot read the input: {item}", code="AF5236") from item
            # Hold back a partial block only while more input is already read: when the input
            # trickles (an interactive producer), every complete line goes out at once.
            await _dispatch(group, parser.feed(item, hold=not queue.empty()), writer, summary)
            if not item:
                return
    finally:
        stopping.cancel()
        reader.stopped = True


async def _dispatch(group: Any, parsed: tuple[list[RecordBlock], list[ErrorRecord]],
                    writer: JsonlWriter, summary: RunSummary) -> None:
    blocks, errors = parsed
    summary.records += len(errors) + sum([len(b) for b in blocks])
    if summary.progress is not None:
        summary.progress.records = summary.records
    if errors:
        for error in errors:
            writer.add_error(error)
        await writer.flush()
    if blocks:
        await group.send.send_many(blocks)
