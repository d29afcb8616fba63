"""Submitting records to a swarm on Redis, and reading its status: `af submit`, `af swarm status`.

`submit` sends every record of a JSON Lines stream as tasks (one entry per `TASK_RECORDS` records,
pipelined XADD), reads the submission's results stream, drops duplicate results (delivery is
at-least-once) and writes exactly one line per input record, in input order, in the record format
of `af run` (the workers encode them with `afrt.jsonl`'s encoders; nothing is encoded again here).
It records in Redis how far it has written, so that a submit that was killed can be attached again
(``attach=ID``): that one writes every remaining result once, from where the killed one stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any, Sequence

import orjson
from redis.exceptions import ResponseError

from afcore.errors import BusError, ExecutionError, UsageError
from afcore.signing import PublicKey, SigningKey, generate_key

from .busauth import FOREIGN_TASK, MALFORMED, REASONS, Signer, Verifier

from .jsonl import encode_error
from .records import MAX_LINE_BYTES
from .redisbus import (GROUP, PRIORITIES, RESULTS_TTL, TASK_RECORDS, Keys, Task, connect, retrying,
                       stream_after)

__all__ = ["SubmitSummary", "new_submission_id", "status", "submit"]

_log = logging.getLogger(__name__)

#: records sent ahead of those written (bounds what a submission holds in Redis at once)
WINDOW_RECORDS = 16_384
#: task entries sent in one pipeline (fewer go out as soon as a read of the input is cut into tasks)
SEND_BATCH = 16
#: bytes read from the input at a time
READ_CHUNK = 1 << 20
#: seconds between two records of progress in Redis (what ``attach`` resumes from)
PROGRESS_SECONDS = 0.2


@dataclass
class SubmitSummary:
    """What one `submit` wrote (the CLI prints it on stderr; ``--json`` prints `to_json`)."""

    submission: str
    records: int = 0
    results: int = 0
    errors: int = 0
    filtered: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    #: result entries dropped by ``admit``'s verification, by reason (`afrt.busauth.REASONS`)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    timed_out: int = 0
    incomplete: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        rate = self.records / self.seconds if self.seconds > 0 else None
        return {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()},
                "records_per_second": round(rate, 1) if rate else None}


def new_submission_id() -> str:
    """Return a fresh submission id (`af submit` prints it on stderr before sending anything)."""
    return uuid.uuid4().hex[:16]


async def submit(*, url: str, swarm: str, agent: str | None = None, source: IO[bytes] | None = None,
                 sink: IO[bytes], priority: str = "normal", timeout: float | None = None,
                 attach: str | None = None, submission: str | None = None,
                 written: int | None = None, admit: Sequence[PublicKey] | None = None,
                 identity: SigningKey | None = None) -> SubmitSummary:
    """Send every record of ``source`` to swarm ``swarm`` and write one line per record to ``sink``.

    Args:
        url: the Redis URL (``--bus``).
        swarm: the swarm name (``--swarm``).
        agent: the agent that runs the records (``--agent``); taken from the submission when attaching.
        source: binary JSON Lines input (``--input``, or stdin); unused when attaching.
        sink: binary output (``--output``, or stdout): one output, error or filtered record per
            input record, in input order, as `af run` writes them.
        priority: ``high``, ``normal`` or ``low`` (``--priority``).
        timeout: seconds to wait for all results (``--timeout``); then each missing record gets an
            AF5261 error line. None waits as long as results come.
        attach: the id of a submission whose submit was killed (``--attach``): write its remaining
            results, each once.
        submission: the id to use (from `new_submission_id`, which the CLI prints first).
        written: with ``attach``, how many lines the killed submit's output holds (complete
            lines of an output file that the attached submit appends to): writing resumes
            there, so that across the kill every line is written exactly once. None resumes
            from what the killed submit last recorded, which may repeat its last 0.2 s of lines.
        admit: take only result entries signed by one of these keys (``--admit``; the workers'
            keys, `afrt.busauth`) and drop the rest: unsigned, signed by another key, altered, or
            replayed. The entries this submit writes itself (AF5237 answers) are signed with
            ``identity``, which it admits too. None takes every entry, signed or not.
        identity: the key that signs this submit's own answers (``--identity``); None: a fresh
            key of this process. Give the same key to a submit and to the one that attaches to it
            after a kill, so that the attached one takes the answers the first one wrote.

    Returns:
        The counts; ``summary.submission`` is the id.

    Raises:
        UsageError: AF5264 for an unknown priority or a missing agent/source; AF5112 for a bad URL;
            AF0963 when ``admit`` is given but empty.
        BusError: AF5110/AF5111/AF5113 for Redis that cannot be reached; AF5262 when ``attach``
            names no submission; AF5263 when ``written`` is below what the submission recorded
            (the results before that are gone from Redis).
        ExecutionError: AF5236 when ``source`` cannot be read.
        OSError: when ``sink`` cannot be written (BrokenPipeError when its reader went away).
    """
    if priority not in PRIORITIES:
        raise UsageError(f"unknown priority `{priority}`", code="AF5264", hint="use high, normal or low")
    started = time.perf_counter()
    signer = Signer(identity or generate_key())
    verifier = None
    if admit is not None:
        verifier = Verifier(admit)
        verifier.admit(signer.public_key)
    client = await connect(url)
    keys = Keys(swarm)
    try:
        if attach is not None:
            receiver = await _Receiver.attached(client, keys, attach, sink, written)
            receiver.signer, receiver.verifier = signer, verifier
            await receiver.run(timeout)
        else:
            if agent is None or source is None:
                raise UsageError("submit needs an agent and a source (or attach=ID)", code="AF5264")
            sid = submission or new_submission_id()
            receiver = _Receiver(client, keys, sid, sink, 0)
            receiver.signer, receiver.verifier = signer, verifier
            await receiver.open(agent, priority)
            sending = asyncio.ensure_future(_Sender(client, keys.tasks(agent, priority), receiver).run(source))
            try:
                await receiver.run(timeout, sending)
            finally:
                sending.cancel()
        summary = receiver.summary
        if verifier is not None:
            summary.dropped = dict(verifier.dropped)
    finally:
        await client.aclose()
    summary.seconds = time.perf_counter() - started
    return summary


def _result_of(fields: dict) -> tuple[int, list[bytes]] | None:
    """Return a result entry's first record index and its output lines, or None when it is not one."""
    index, data = fields.get(b"n"), fields.get(b"d")
    if index is None or data is None or not index.isdigit() or len(index) > 18:
        return None
    return int(index), data.split(b"\n")[:-1]


class _Receiver:
    """Reads a submission's results stream and writes the lines in order, each once."""

    def __init__(self, client: Any, keys: Keys, sid: str, sink: IO[bytes], first: int) -> None:
        self.client, self.keys, self.sid, self.sink = client, keys, sid, sink
        self.results, self.hash = keys.results(sid), keys.submission(sid)
        self.next = first  # the index of the next record to write
        self.held: dict[int, bytes] = {}
        self.total: int | None = None  # known once every record is sent
        self.tasks: dict[int, Task] = {}  # tasks sent and not yet written (for the ids of timeouts)
        self.entries: list[tuple[bytes, int]] = []  # (results entry id, its last index) not yet written
        self.last = b"0-0"
        self.progress = asyncio.Event()
        self.summary = SubmitSummary(sid)
        self.signer: Signer | None = None  # signs what this submit writes to the results stream itself
        self.verifier: Verifier | None = None

    @classmethod
    async def attached(cls, client: Any, keys: Keys, sid: str, sink: IO[bytes], written: int | None) -> _Receiver:
        info = await retrying(lambda: client.hgetall(keys.submission(sid)), what="find the submission")
        if not info:
            raise BusError(f"no submission `{sid}` in swarm `{keys.swarm}`", code="AF5262",
                           hint="it finished (results are kept only until written) or expired")
        recorded = int(info[b"written"])
        if written is not None and written < recorded:
            raise BusError(f"the output holds {written} lines, but submission `{sid}` recorded {recorded} as "
                           f"written: the results in between are no longer in Redis", code="AF5263",
                           hint="attach with the output the killed submit wrote")
        receiver = cls(client, keys, sid, sink, recorded if written is None else written)
        if int(info[b"total"]) >= 0:
            receiver.total = int(info[b"total"])
        else:  # the killed submit had not sent everything: the rest of its input is gone
            receiver.total = int(info[b"sent"])
            receiver.summary.incomplete = True
        return receiver

    async def open(self, agent: str, priority: str) -> None:
        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.hash, mapping={"agent": agent, "priority": priority, "sent": 0, "total": -1, "written": 0,
                                          "created": time.time()})
            pipe.expire(self.hash, RESULTS_TTL).sadd(self.keys.agents, agent)
            await pipe.execute()

        await retrying(write, what="open the submission")

    async def run(self, timeout: float | None, sending: asyncio.Future | None = None) -> None:
        deadline = time.monotonic() + timeout if timeout is not None else None
        saved = time.monotonic()
        while self.total is None or self.next < self.total:
            if sending is not None and sending.done() and sending.exception() is not None:
                raise sending.exception()
            if deadline is not None and time.monotonic() >= deadline:
                self._time_out()
                break
            block = 100 if self.total is None else 500
            reply = await retrying(lambda: self.client.xread({self.results: self.last}, count=256, block=block),
                                   what="read results")
            for _, entries in reply or []:
                self._take(entries)
            self._write()
            if time.monotonic() - saved > PROGRESS_SECONDS:
                await retrying(self._save, what="record progress")
                saved = time.monotonic()
        await retrying(self._finish, what="close the submission")

    def _take(self, entries: list) -> None:
        held, summary, verifier = self.held, self.summary, self.verifier
        for entry_id, fields in entries:
            self.last = entry_id
            if verifier is not None and verifier.check(self.results, fields) is not None:
                continue  # counted in summary.dropped and warned about by the verifier
            parsed = _result_of(fields)
            if parsed is None:
                self._drop_malformed(fields)
                continue
            n, lines = parsed
            if verifier is not None and not self._ours(n, len(lines), fields.get(b"t")):
                verifier.drop(FOREIGN_TASK, self.results, fields)
                continue
            for i, line in enumerate(lines, n):
                if i < self.next or i in held:
                    summary.duplicates += 1  # delivery is at-least-once: a task may have run twice
                else:
                    held[i] = line + b"\n"
            self.entries.append((entry_id, n + len(lines) - 1))

    def _drop_malformed(self, fields: dict) -> None:
        """Count (and warn once of) a result entry that is not one: written by hand or by a broken writer."""
        if self.verifier is not None:
            self.verifier.drop(MALFORMED, self.results, fields)
            return
        self.summary.dropped[MALFORMED] += 1
        if self.summary.dropped[MALFORMED] == 1:
            _log.warning("warning[AF5405]: dropped an entry of %s: it is not a result (no record index `n` "
                         "or data `d`); find who writes to the swarm's streams", self.results)

    def _ours(self, n: int, count: int, digest: bytes | None) -> bool:
        """Return False when a signed result answers a task other than the one this submit sent for
        index ``n`` (its task digest differs: someone wrote a task under this submission's id).
        True when it matches, or cannot be checked (no digest: this submit's own answers; the task
        is already written, or unknown after an attach)."""
        if digest is None:
            return True
        task = self.tasks.get(n) or next((t for t in self.tasks.values() if t.index <= n < t.index + t.count), None)
        if task is None:  # written already (the index decides), or sent by the submit this one attached to
            return True
        if task.index == n and task.count == count:
            return task.digest().encode() == digest
        # a worker splits a task delivered twice into one task per record: a result of one record
        return count == 1 and task.singles()[n - task.index].digest().encode() == digest

    def _write(self) -> None:
        held, parts = self.held, []
        while self.next in held:
            parts.append(held.pop(self.next))
            self.next += 1
        if not parts:
            return
        data = b"".join(parts)
        self.sink.write(data)
        self.sink.flush()
        self._count(parts)
        for index in [i for i, task in self.tasks.items() if i + task.count <= self.next]:
            del self.tasks[index]  # fully written: its results are duplicates now
        self.progress.set()

    def _count(self, lines: list[bytes]) -> None:
        s = self.summary
        s.records += len(lines)
        for line in lines:
            at = line.find(b',"error":{"code":"')
            if at >= 0:
                code = line[at + 18: line.index(b'"', at + 18)].decode()
                s.errors += 1
                s.error_codes[code] = s.error_codes.get(code, 0) + 1
            elif b',"filtered":{"step":' in line:
                s.filtered += 1
            else:
                s.results += 1

    async def _save(self) -> None:
        """Record how far the output is written, then trim the results that are written."""
        while self.entries and self.entries[0][1] < self.next:
            self.entries.pop(0)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.hash, "written", self.next)
        # Entries up to the first one not fully written are written: attach never needs them again.
        minid = self.entries[0][0] if self.entries else stream_after(self.last)
        pipe.xtrim(self.results, minid=minid, approximate=False)
        await pipe.execute()

    async def _finish(self) -> None:
        if self.total is not None and self.next >= self.total:
            await self.client.delete(self.results, self.hash)  # finished: nothing to attach to
        else:
            await self._save()

    def _time_out(self) -> None:
        """Answer every record still missing with an AF5261 error line."""
        ids: dict[int, Any] = {}
        for task in self.tasks.values():
            ids.update(zip(range(task.index, task.index + task.count), task.record_ids()))
        end = self.total if self.total is not None else max([self.next, *self.held, *ids], default=self.next)
        for i in range(self.next, end):
            if i not in self.held:
                self.held[i] = encode_error(ids.get(i, i + 1), "AF5261", "no result within the timeout")
                self.summary.timed_out += 1
        self._write()


class _Sender:
    """Reads the input, cuts it into tasks and sends them, at most `WINDOW_RECORDS` ahead of the output."""

    def __init__(self, client: Any, stream: str, receiver: _Receiver) -> None:
        self.client, self.stream, self.receiver = client, stream, receiver
        self.index = 0  # records so far
        self.line_no = 0
        self.batch: list[Any] = []  # tasks, and (index, line) of records answered here
        self.covered = 0  # records up to here are in `batch` or sent
        self.lines: list[bytes] = []
        self.first: tuple[int, int] | None = None  # (index, line) of the current task's first record
        self.count = 0

    async def run(self, source: IO[bytes]) -> None:
        loop = asyncio.get_running_loop()
        read = getattr(source, "read1", source.read)
        tail = b""
        while True:
            try:
                data = await loop.run_in_executor(None, read, READ_CHUNK)  # a pipe may block: not in the loop
            except OSError as exc:
                raise ExecutionError(f"cannot read the input: {exc}", code="AF5236") from None
            lines = (tail + data).split(b"\n")
            tail = lines.pop() if data else b""
            for line in lines:
                self._add(line)
            if self.batch or not data:  # send what is cut at once: workers wait for it
                if not data:
                    self._cut()
                await self._flush(final=not data)
            if not data:
                return
            while self.index - self.receiver.next > WINDOW_RECORDS:
                self.receiver.progress.clear()
                await self.receiver.progress.wait()

    def _add(self, line: bytes) -> None:
        self.line_no += 1
        if not line.strip():
            if self.count:
                self.lines.append(line)
            return
        if len(line) > MAX_LINE_BYTES:  # answered here, through the results stream (attach sees it)
            self._cut()
            self.batch.append((self.index, encode_error(
                None, "AF5237", f"line {self.line_no}: longer than {MAX_LINE_BYTES} bytes, skipped",
                line=self.line_no)))
            self.index += 1
            self.covered = self.index
            return
        if not self.count:
            self.first = (self.index, self.line_no)
        self.lines.append(line)
        self.count += 1
        self.index += 1
        if self.count == TASK_RECORDS:
            self._cut()

    def _cut(self) -> None:
        if self.count:
            index, line = self.first
            self.batch.append(Task(self.receiver.sid, index, line, self.count, b"\n".join(self.lines)))
            self.covered = index + self.count
        self.lines, self.count = [], 0

    async def _flush(self, *, final: bool) -> None:
        # `sent` counts only records whose tasks (or answers) are in Redis: what an attach waits for
        batch, self.batch, sent = self.batch, [], self.covered
        receiver = self.receiver
        for i, task in enumerate(batch):
            if isinstance(task, Task):
                receiver.tasks[task.index] = task
            else:  # an answer of this submit's own: signed once, like a worker's results
                fields = {"n": task[0], "d": task[1]}
                batch[i] = receiver.signer.sign(receiver.results, fields) if receiver.signer else fields

        async def write(tasks: list[Any], last: bool) -> None:
            pipe = self.client.pipeline(transaction=False)
            for task in tasks:
                if isinstance(task, Task):
                    pipe.xadd(self.stream, task.fields())
                else:
                    pipe.xadd(receiver.results, task)
            if last:
                pipe.hset(receiver.hash, mapping={"sent": sent, **({"total": sent} if final else {})})
            await pipe.execute()

        for start in range(0, max(len(batch), 1), SEND_BATCH):
            tasks = batch[start:start + SEND_BATCH]
            await retrying(lambda: write(tasks, start + SEND_BATCH >= len(batch)), what="send tasks")
        if final:
            receiver.total = sent
            receiver.progress.set()


async def status(url: str, swarm: str) -> dict[str, Any]:
    """Return the members and queues of swarm ``swarm`` (what `af swarm status --json` prints).

    ``{"swarm", "members": [{"agent_id", "agent", "host", "pid", "replicas", "state",
    "last_heartbeat_s", "processed", "errors", "key_id", "dropped"}], "queues": [{"agent", "priority", "length",
    "pending", "lag", "dead_letters"}]}``; a member whose heartbeat expired is ``"gone"`` until
    it is forgotten.

    Raises:
        BusError: AF5110/AF5111 when Redis cannot be reached.
    """
    client = await connect(url)
    keys = Keys(swarm)
    try:
        return {"swarm": swarm, "members": await _members(client, keys), "queues": await _queues(client, keys)}
    finally:
        await client.aclose()


async def _members(client: Any, keys: Keys) -> list[dict[str, Any]]:
    now, members = time.time(), []
    for agent_id, raw in sorted((await client.hgetall(keys.members)).items()):
        info = orjson.loads(raw)
        alive = await client.exists(keys.heartbeat(agent_id.decode()))
        members.append({
            "agent_id": info["agent_id"], "agent": info["agent"], "host": info["host"], "pid": info["pid"],
            "replicas": info["replicas"], "state": info["state"] if alive else "gone",
            "last_heartbeat_s": round(now - info["last_heartbeat"], 3), "processed": info["processed"],
            "errors": info["errors"], "key_id": info.get("key_id", ""), "dropped": info.get("dropped", 0),
        })
    return members


async def _queues(client: Any, keys: Keys) -> list[dict[str, Any]]:
    queues = []
    for agent in sorted(a.decode() for a in await client.smembers(keys.agents)):
        for priority in PRIORITIES:
            stream = keys.tasks(agent, priority)
            pending, lag = 0, await client.xlen(stream)
            try:
                info = {g["name"]: g for g in await client.xinfo_groups(stream)}.get(GROUP.encode())
                if info is not None:
                    pending = info["pending"]
                    lag = info.get("lag") if info.get("lag") is not None else lag
            except ResponseError:
                pass  # no such stream yet
            queues.append({"agent": agent, "priority": priority, "length": await client.xlen(stream),
                           "pending": pending, "lag": lag,
                           "dead_letters": await client.xlen(keys.dead(agent, priority))})
    return queues

