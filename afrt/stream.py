"""Runs a JSON Lines stream through a swarm: what `af run` does once the agent is loaded.

The event loop reads the input in chunks (a file directly, a pipe through the loop's own watcher,
anything else such as a terminal through a reader thread) and parses them (orjson) into blocks of
records, feeds those to the replicas (bounded queue: backpressure up to the reader), and a reorder
buffer writes one output record per input record, in input order. A stop request (SIGINT/SIGTERM in
`af run`) stops reading; what was already read is finished and written, then the shutdown
workflows run.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from afcore.errors import ExecutionError

from .records import ErrorRecord, LineParser, RecordBlock
from .swarm import Swarm
from .workflow import Results

__all__ = ["RunOptions", "RunSummary", "run_jsonl"]

#: bytes read at a time (a pipe returns what it has, up to this); the lines of a chunk are held
#: at once, so a larger chunk falls out of the CPU caches (1 MiB was ~5% slower in `af run`)
READ_CHUNK = 1 << 17
#: chunks read ahead of the replicas (bounds memory when the input is faster than the agents)
READ_AHEAD = 8


@dataclass
class RunOptions:
    """Options of one run; the defaults are those of `af run`."""

    replicas: int = 1
    swarm: str = "default"
    state_dir: Any = None
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    instrument: Any = None


@dataclass
class RunSummary:
    """Counts of one run, printed on stderr by `af run` (``--json`` prints `to_json`)."""

    records: int = 0
    results: int = 0
    errors: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: str | None = None
    agents: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    shutdown_errors: list[str] = field(default_factory=list)
    ephemeral: bool = True

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        rate = self.records / self.seconds if self.seconds > 0 else None
        return {
            "records": self.records, "results": self.results, "errors": self.errors,
            "error_codes": self.error_codes, "seconds": round(self.seconds, 4),
            "records_per_second": round(rate, 1) if rate else None, "interrupted": self.interrupted,
            "agents": self.agents, "published": self.stats.get("published", 0),
            "checkpoints": self.stats.get("checkpoints", 0), "restored": self.restored,
            "bandwidth_wait_seconds": round(self.stats.get("bandwidth_wait", 0.0), 3),
            "notices": self.notices, "shutdown_errors": self.shutdown_errors, "ephemeral_identity": self.ephemeral,
        }


class _Reorder:
    """Writes results in input order: holds those that arrive early until their turn.

    Entries are keyed by their first seq and hold (records, bytes): a batch of consecutive records
    is one entry, so the hot path does no work per record here.
    """

    def __init__(self, out: IO[bytes], summary: RunSummary, stop: asyncio.Event) -> None:
        self.out = out
        self.summary = summary
        self.stop = stop
        self.next = 0
        self.held: dict[int, tuple[int, bytes]] = {}
        #: why the output could not be written (then reading stops and nothing more is written)
        self.write_error: OSError | None = None

    def add(self, seq: int, line: bytes, error_code: str | None) -> None:
        s = self.summary
        if error_code is None:
            s.results += 1
        else:
            s.errors += 1
            s.error_codes[error_code] = s.error_codes.get(error_code, 0) + 1
        self.held[seq] = (1, line)

    def add_results(self, results: Results) -> None:
        seqs, summary, n = results.seqs, self.summary, len(results)
        if not n:
            return
        if seqs[-1] - seqs[0] == n - 1:  # consecutive (seqs increase): one entry
            self.held[seqs[0]] = (n, b"".join(results.lines))
        else:
            for seq, line in zip(seqs, results.lines):
                self.held[seq] = (1, line)
        summary.results += n - len(results.errors)
        for code, _ in results.errors.values():
            summary.errors += 1
            summary.error_codes[code] = summary.error_codes.get(code, 0) + 1

    def flush(self) -> None:
        held, seq, parts = self.held, self.next, []
        while seq in held:
            count, data = held.pop(seq)
            parts.append(data)
            seq += count
        self.next = seq
        if parts and self.write_error is None:
            try:
                self.out.write(b"".join(parts))
                self.out.flush()
            except OSError as exc:  # e.g. `af run ... | head`: the reader went away
                self.write_error = exc
                self.stop.set()


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


async def run_jsonl(agent: Any, source: IO[bytes], sink: IO[bytes], options: RunOptions, *, stop: asyncio.Event | None = None) -> RunSummary:
    """Run every record of ``source`` through a swarm of ``agent`` replicas; write to ``sink``.

    Args:
        agent: a loaded agent (`afrt.load`).
        source: binary JSON Lines input (a pipe is watched by the event loop, which sets it
            non-blocking and closes it when the run ends).
        sink: binary output; one record per input record, in input order.
        options: replicas, batching, swarm name, state directory.
        stop: when set, reading stops; what was read is finished, then shutdown runs.

    Returns:
        The counts of the run.

    Raises:
        StateError, ExecutionError: when initialization fails (nothing is read then).
        BrokenPipeError: when the reader of ``sink`` went away; reading stopped and the shutdown
            workflows ran (`af run` then exits 0 quietly, as after ``| head``).
        ExecutionError: AF5238 when ``sink`` could not be written otherwise (e.g. disk full);
            reading stopped and the shutdown workflows ran.
    """
    summary = RunSummary(ephemeral=options.state_dir is None)
    started = time.perf_counter()
    swarm = Swarm(options.swarm, max_batch=options.max_batch, batch_wait_ms=options.batch_wait_ms,
                  instrument=options.instrument)
    try:
        group = await swarm.start(agent, replicas=options.replicas, state_dir=options.state_dir)
    except BaseException:
        await swarm.stop()
        raise
    stop = stop or asyncio.Event()
    reorder = _Reorder(sink, summary, stop)
    group.sink = reorder.add_results
    group.after_deliver = reorder.flush
    try:
        await _pump(swarm, group, source, reorder, summary, agent.input_size, stop)
    finally:
        errors = await swarm.stop()
        reorder.flush()
        summary.shutdown_errors = [f"{e.code}: {e.message}" for e in errors]
        summary.seconds = time.perf_counter() - started
        summary.agents = group.agent_ids
        summary.stats = group.stats()
        summary.notices = group.notices()
        summary.restored = {c.agent_id: c.restored for c in group.contexts if c.restored}
    failed = reorder.write_error
    if isinstance(failed, BrokenPipeError):
        raise failed
    if failed is not None:
        raise ExecutionError(f"cannot write the output: {failed.strerror or failed}", code="AF5238",
                             hint="check the output path and the free space; the shutdown workflows ran") from failed
    return summary


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


async def _pump(swarm: Swarm, group: Any, source: IO[bytes], reorder: _Reorder, summary: RunSummary,
                input_size: int, stop: asyncio.Event) -> None:
    parser = LineParser(input_size, swarm.max_batch)
    kind = _input_kind(source)
    if kind == "file":
        # A file never blocks: read it here, sparing the GIL handoffs of a reader thread.
        await _pump_file(group, source, parser, reorder, summary, stop)
    elif kind == "pipe":
        # The event loop watches a pipe itself: no thread, no GIL handoff per chunk.
        await _pump_pipe(group, source, parser, reorder, summary, stop)
    else:  # a terminal, or a stream without a file descriptor: a reader thread
        await _pump_stream(group, source, parser, reorder, summary, stop)


async def _pump_file(group: Any, source: IO[bytes], parser: LineParser, reorder: _Reorder, summary: RunSummary,
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
        await _dispatch(group, parser.feed(chunk, hold=True), reorder, summary)
        if not chunk:
            return
        reorder.flush()
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


async def _pump_pipe(group: Any, source: IO[bytes], parser: LineParser, reorder: _Reorder, summary: RunSummary,
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
            await _dispatch(group, parser.feed(chunk), reorder, summary)
            if not chunk:
                return
            reorder.flush()
    finally:
        stopping.cancel()
        transport.close()


async def _pump_stream(group: Any, source: IO[bytes], parser: LineParser, reorder: _Reorder, summary: RunSummary,
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
            await _dispatch(group, parser.feed(item, hold=not queue.empty()), reorder, summary)
            if not item:
                return
            reorder.flush()
    finally:
        stopping.cancel()
        reader.stopped = True


async def _dispatch(group: Any, parsed: tuple[list[RecordBlock], list[ErrorRecord]],
                    reorder: _Reorder, summary: RunSummary) -> None:
    blocks, errors = parsed
    for error in errors:
        reorder.add(error.seq, error.encode(), error.code)
    summary.records += len(errors) + sum([len(b) for b in blocks])
    if blocks:
        await group.send.send_many(blocks)
