"""JSON Lines output at the edge: the one place output, error and filtered records are encoded.

Output, one record per input record, in input order (docs/runtime.md)::

    {"id": "a1", "output": [0.1, ...], "agent": "classification-agent-3f2a9c0d1b7e"}
    {"id": 7, "error": {"code": "AF5232", "message": "..."}}
    {"id": "a3", "filtered": {"step": "send_output when output.max > 0.9"}}

`JsonlWriter` restores input order (records arrive per replica block), encodes each outcome once
and writes it. A pipe is written through the event loop (`loop.connect_write_pipe`), so that a
reader that stops reading never blocks the loop: a stop request can then end the run in bounded
time (`JsonlWriter.abandon`). Anything else is written with plain ``os.write`` calls, which leave
nothing in a Python buffer that a later close could fail to flush (a full disk fails once).
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import IO, Any, Sequence, Union

import numpy as np
import orjson

from .outcomes import Outcomes

__all__ = ["JsonlWriter", "encode_error", "encode_filtered", "encode_outcomes", "encode_output"]

_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def encode_output(rid: Union[str, int], output: np.ndarray, agent: str | None,
                  labels: Sequence[Any] | None = None) -> bytes:
    """Return the output line ``{"id", "output", "agent"}`` (float32 values, shortest form).

    With the network's ``labels`` (``neural_config.labels``), the line also has ``"label"``: the
    label of the largest output, or for one sigmoid output (two labels) the second label when the
    output is at least 0.5, else the first.
    """
    record = {"id": rid, "output": output, "agent": agent}
    if labels:
        record["label"] = labels[int(output[0] >= 0.5)] if len(output) == 1 else labels[int(np.argmax(output))]
    return orjson.dumps(record, option=_DUMPS_OPTS)


def encode_error(rid: Union[str, int, None], code: str, message: str, *, line: int | None = None) -> bytes:
    """Return the error line ``{"id", "error": {"code", "message"[, "line"]}}``.

    Args:
        rid: the record's id; None (``null``) when its line has no readable id.
        code: the error code.
        message: what is wrong.
        line: the input line, for errors found while reading it.
    """
    error: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        error["line"] = line
    return orjson.dumps({"id": rid, "error": error}, option=_DUMPS_OPTS)


def encode_filtered(rid: Union[str, int], step: str) -> bytes:
    """Return the line of a record a guard held back on purpose: ``{"id", "filtered": {"step"}}``."""
    return orjson.dumps({"id": rid, "filtered": {"step": step}}, option=_DUMPS_OPTS)


def encode_outcomes(outcomes: Outcomes, labels: Sequence[Any] | None = None) -> list[bytes]:
    """Return the line of each record of ``outcomes``, in order (with ``labels``, see `encode_output`)."""
    ids, outputs, agent = outcomes.ids, outcomes.outputs, outcomes.agent
    if outcomes.all_outputs:
        return [encode_output(rid, row, agent, labels) for rid, row in zip(ids, outputs)]
    lines = []
    for outcome in outcomes:
        if outcome.error is not None:
            lines.append(encode_error(outcome.id, *outcome.error))
        elif outcome.filtered is not None:
            lines.append(encode_filtered(outcome.id, outcome.filtered))
        else:
            lines.append(encode_output(outcome.id, outcome.output, agent, labels))
    return lines


class _PipeProtocol(asyncio.Protocol):
    """Flow control for a pipe transport: `drained` waits until the kernel took every byte."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future | None = None
        self.lost: Exception | None = None
        self.closed = False
        self.paused_at: float | None = None  # loop time since which the kernel takes nothing more

    def pause_writing(self) -> None:
        if self._waiter is None or self._waiter.done():
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            self.paused_at = loop.time()

    def resume_writing(self) -> None:
        self.paused_at = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc or BrokenPipeError(32, "the reader of the output went away")
        self.resume_writing()

    async def drained(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            await self._waiter
        if self.lost is not None:
            raise self.lost


class JsonlWriter:
    """Writes outcomes as JSON Lines in input order and counts them.

    Args:
        sink: a binary stream (a file, a pipe, stdout, an in-memory buffer).
        first_seq: the seq of the first record to write.
        labels: the network's class labels; output lines then carry ``label`` (`encode_output`).

    After a write fails, nothing more is written (``write_error`` says why) and later outcomes are
    counted as not written; the run's reader sees it and stops reading.
    """

    def __init__(self, sink: IO[bytes], *, first_seq: int = 0, labels: Sequence[Any] | None = None) -> None:
        self.sink = sink
        self.labels = labels
        self.next = first_seq
        self.held: dict[int, tuple[int, bytes]] = {}  # first seq -> (records, bytes) of a run of records
        self.results = 0
        self.errors = 0
        self.filtered = 0
        self.error_codes: dict[str, int] = {}
        self.written = 0  # records whose lines the kernel took
        self.write_error: OSError | None = None
        self.abandoned = False  # `abandon` stopped the writing (a stop request met a stalled output)
        self._fd: int | None = None
        self._transport: Any = None
        self._protocol: _PipeProtocol | None = None
        self._acks: list[tuple[int, asyncio.Future]] = []  # (last seq, future) set once written

    async def open(self) -> None:
        """Pick how to write: through the event loop for a pipe or socket, else ``os.write``."""
        try:
            fd = self.sink.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError):
            return  # an in-memory buffer: sink.write
        self.sink.flush()
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            loop = asyncio.get_running_loop()
            pipe = os.fdopen(os.dup(fd), "wb", buffering=0)
            self._protocol = _PipeProtocol()
            self._transport, _ = await loop.connect_write_pipe(lambda: self._protocol, pipe)
            # drained() then means every byte is in the kernel: acknowledged outcomes are written
            self._transport.set_write_buffer_limits(high=0)
            self._fd = fd
        else:
            self._fd = fd

    def add(self, outcomes: Outcomes) -> None:
        """Take the outcomes of a block (written by `flush` once their turn comes)."""
        n = len(outcomes)
        if not n:
            return
        lines = encode_outcomes(outcomes, self.labels)
        seqs = outcomes.seqs
        if seqs[-1] - seqs[0] == n - 1:  # consecutive: one entry
            self.held[seqs[0]] = (n, b"".join(lines))
        else:
            for seq, line in zip(seqs, lines):
                self.held[seq] = (1, line)
        if outcomes.written is not None:  # set once the block's records are written (or cancelled)
            self._acks.append((seqs[-1], outcomes.written))
        self.filtered += len(outcomes.filtered)
        self.results += n - len(outcomes.errors) - len(outcomes.filtered)
        for code, _ in outcomes.errors.values():
            self._count_error(code)

    def add_error(self, error: Any) -> None:
        """Take the error of a record that never reached a replica (an `afrt.records.ErrorRecord`)."""
        self.held[error.seq] = (1, encode_error(error.id, error.code, error.message, line=error.line))
        self._count_error(error.code)

    def _count_error(self, code: str) -> None:
        self.errors += 1
        self.error_codes[code] = self.error_codes.get(code, 0) + 1


    async def flush(self) -> None:
        """Write the records whose turn has come."""
        held, seq, parts, count = self.held, self.next, [], 0
        while seq in held:
            n, data = held.pop(seq)
            parts.append(data)
            seq += n
            count += n
        self.next = seq
        if not parts:
            return
        if self.write_error is None:
            try:
                await self._write(b"".join(parts))
            except OSError as exc:  # e.g. `af run ... | head`, or a full disk
                self.write_error = self.write_error or exc
            else:
                self.written += count
        self._settle_acks()

    async def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)
            await self._protocol.drained()
        elif self._fd is not None:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        else:
            self.sink.write(data)
            self.sink.flush()

    def _settle_acks(self) -> None:
        keep = []
        for last, future in self._acks:
            if future.done():
                continue
            if self.write_error is not None:
                future.cancel()
            elif last < self.next:
                future.set_result(None)
            else:
                keep.append((last, future))
        self._acks = keep

    def stalled_for(self) -> float:
        """Return for how many seconds the output has taken nothing (0 when it is not stalled)."""
        paused_at = self._protocol.paused_at if self._protocol is not None else None
        return 0.0 if paused_at is None else asyncio.get_running_loop().time() - paused_at

    def abandon(self, why: str = "the output stalled") -> None:
        """Stop writing now (a stop request met a reader that does not read): nothing more is written."""
        self.abandoned = True
        if self.write_error is None:
            self.write_error = OSError(why)
        if self._transport is not None:
            self._transport.abort()
        self._settle_acks()

    @property
    def unwritten(self) -> int:
        """Records taken but not written (after a write failed or the writer was abandoned)."""
        return self.results + self.errors + self.filtered - self.written

    async def close(self) -> None:
        """Write what is still held in order, then release the pipe (the sink stays open)."""
        await self.flush()
        if self._transport is not None:
            if self.write_error is None:
                self._transport.close()
            if self._fd is not None:
                try:
                    os.set_blocking(self._fd, True)  # the pipe's file description is shared with stdout
                except OSError:
                    pass
        for _, future in self._acks:
            future.cancel()
        self._acks = []
