"""A swarm worker on Redis Streams: the edge that `af run --bus redis://... --swarm NAME` runs.

```
task streams (high, normal, low) ─XREADGROUP─▶ parse_block ─▶ Swarm.feed ─▶ replicas
Swarm.results ─▶ encode_outcomes (once) ─▶ MULTI: XADD results, XACK + XDEL the task ─▶ EXEC
```

A worker joins swarm NAME (a heartbeat key with a TTL, an entry in the members hash, a ``join``
event on ``agent.lifecycle``), reads tasks in blocks, strictly by priority, and acknowledges a task
only in the transaction that writes its results (at-least-once: a task whose worker died is
delivered again, and `afrt.submit` drops the duplicate results). Every ``idle_ms / 2`` it claims
the tasks that have sat unacknowledged past ``idle_ms`` (XAUTOCLAIM): a task seen for the second
time is split into one task per record, and a task delivered more than ``max_deliveries`` times
goes to the dead-letter stream, its records answered with AF5260 errors. It trims each task stream
below its oldest pending entry (XTRIM MINID; a MAXLEN trim would delete unacknowledged tasks).
Once ``stop`` is set it drains: it stops reading, finishes and acknowledges what it holds, runs
the shutdown workflow, leaves.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import orjson
from redis.exceptions import ResponseError

from afcore.signing import PublicKey, SigningKey

from .bus import TOPIC_LIFECYCLE, Message
from .busauth import REASONS, Signer, Verifier
from .jsonl import encode_error, encode_outcomes
from .messages import encode_event
from .metrics import WorkerMetrics
from .records import parse_block
from .redisbus import (GROUP, PRIORITIES, RESULTS_TTL, TASK_RECORDS, Keys, Reconnects, RedisBus, Task, connect,
                       decode_task, retrying, stream_after)
from .bus import TokenBucket
from .state import Identity, load_or_create_identity, replica_dir, write_public_key
from .swarm import Swarm, resource_limits

__all__ = ["DEFAULT_IDLE_MS", "WorkerSummary", "serve"]

#: a task unacknowledged this long (ms) is taken from its worker: above the slowest block
DEFAULT_IDLE_MS = 30_000
#: seconds between heartbeats; the heartbeat key lives three times as long
HEARTBEAT_SECONDS = 1.0
#: a member whose heartbeat expired this long ago (s) is dropped from the members hash
FORGET_SECONDS = 300.0
#: the dead-letter streams keep about this many entries (MAXLEN ~)
DEAD_LETTER_MAXLEN = 10_000
#: how long the last steps of leaving (trim, leave event) try to reach Redis (s)
GIVE_UP_SECONDS = 2.0
#: how long a blocking read waits before the worker looks at ``stop`` again (ms)
READ_BLOCK_MS = 500

# Reads up to ARGV[3] entries from the task streams KEYS in order (highest priority first).
_READ_BY_PRIORITY = """
local want = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if want <= 0 then break end
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
  if r then
    table.insert(out, {i, r[1][2]})
    want = want - #r[1][2]
  end
end
return out
"""


@dataclass
class WorkerSummary:
    """What a worker did, returned by `serve` once it has left the swarm."""

    agent_id: str = ""
    tasks: int = 0
    records: int = 0
    errors: int = 0
    filtered: int = 0
    dead_letters: int = 0
    redeliveries: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    #: how long `network_bandwidth_mbps` held the results back
    bandwidth_wait_seconds: float = 0.0
    #: the id of the key that signed what this worker wrote (`afrt.busauth`)
    key_id: str = ""
    #: bus messages dropped by ``--admit``'s verification, by reason (`afrt.busauth.REASONS`)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    shutdown_errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain JSON data."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(eq=False)
class _Held:
    """A task read from a stream and not yet acknowledged."""

    priority: str
    entry_id: bytes
    task: Task
    base: int  # the local seq of its first record
    lines: list
    left: int
    started: float


async def serve(agent: Any, *, url: str, swarm: str, replicas: int = 1, max_batch: int = 64,
                batch_wait_ms: float = 0.0, state_dir: Any = None, metrics_port: int | None = None,
                stop: asyncio.Event | None = None, max_deliveries: int = 3, idle_ms: int = DEFAULT_IDLE_MS,
                heartbeat_seconds: float = HEARTBEAT_SECONDS, federation: Any = None,
                identity: SigningKey | None = None, admit: Sequence[PublicKey] | None = None) -> WorkerSummary:
    """Serve swarm ``swarm``'s tasks for ``agent`` until ``stop`` is set, then drain and leave.

    Args:
        agent: a loaded agent (`afrt.load`); its name picks the task streams.
        url: the Redis URL (``--bus``), ``redis://`` or ``rediss://``, with user and password if needed.
        swarm: the swarm name (``--swarm``).
        replicas: replicas of the agent in this worker (``--replicas``).
        max_batch: the most records a replica runs in one backend call.
        batch_wait_ms: how long a replica waits for more records once it has one; 0 by default,
            since records come from Redis in blocks already and waiting would only add latency.
        state_dir: identities and checkpoints (``--state-dir``), or None.
        metrics_port: serve Prometheus metrics on this port (``--metrics-port``), or None.
        stop: set it (on SIGTERM/SIGINT) to drain and leave; None serves until cancelled.
        max_deliveries: a task delivered more often goes to the dead-letter stream (``--max-deliveries``).
        idle_ms: a task unacknowledged this long is claimed from its worker (above the slowest block).
        heartbeat_seconds: the heartbeat period; the heartbeat key expires after three periods.
        federation: an `afrt.federated.Participation` (``--local-data``): the worker also takes part in
            its agent's federated rounds (docs/federated.md), or None.
        identity: the key that signs every entry this worker writes (``--identity``); None signs
            with replica 0's identity (from ``state_dir``, whose public key is then written beside
            it as ``identity.pub``; an ephemeral key without one).
        admit: drop every bus message this worker receives that is not signed by one of these
            keys (``--admit``; `afrt.busauth.Verifier`); None takes every message.

    Returns:
        The counts of what this worker did.

    Raises:
        UsageError: AF5112 for a URL that is not a Redis URL.
        BusError: AF5110 when no Redis answers at ``url``, AF5111 when it refuses the login, AF5113
            when the connection stays lost for `afrt.redisbus.RECONNECT_SECONDS`.
        ExecutionError, StateError: when the agent's initialization fails.
        UsageError: AF0963 when ``admit`` is given but empty.
    """
    worker = _Worker(agent, url, swarm, replicas=replicas, max_batch=max_batch, max_deliveries=max_deliveries,
                     idle_ms=idle_ms, heartbeat_seconds=heartbeat_seconds, identity=identity,
                     verifier=Verifier(admit) if admit is not None else None)
    worker.federation = federation
    return await worker.run(stop or asyncio.Event(), batch_wait_ms, state_dir, metrics_port)


class _Worker:
    def __init__(self, agent: Any, url: str, swarm: str, *, replicas: int, max_batch: int, max_deliveries: int,
                 idle_ms: int, heartbeat_seconds: float, identity: SigningKey | None, verifier: Verifier | None,
                 ) -> None:
        self.agent, self.url, self.name = agent, url, swarm
        self.replicas, self.max_batch, self.max_deliveries = replicas, max_batch, max_deliveries
        self.idle_ms, self.heartbeat_seconds = idle_ms, heartbeat_seconds
        self.keys = Keys(swarm)
        self.streams = [self.keys.tasks(agent.name, p) for p in PRIORITIES]
        # network_bandwidth_mbps bounds each replica's bytes on the wire (as in process): the worker
        # writes the results of all its replicas, so it gets their limits together
        bandwidth = resource_limits(getattr(agent, "resources", None) or {}).get("network_bandwidth_mbps")
        self.bucket = TokenBucket(bandwidth * 125_000 * replicas) if bandwidth else None
        self.summary = WorkerSummary()
        self.metrics = WorkerMetrics(swarm, agent.name)
        # Records held at once: enough for every replica to have a block queued behind the one it runs.
        self.max_held = max(4 * max_batch * replicas, 4 * TASK_RECORDS)
        self.held_records = 0
        self.room = asyncio.Event()
        self.owner: dict[int, _Held] = {}
        self.seq = 0
        self.stopping = False
        self.leaving = False
        self.alone = False  # a redelivered record runs: nothing else may share its fate
        self.settled = asyncio.Event()  # set whenever this worker holds nothing
        self.state = "serving"
        self.client: Any = None
        self.swarm: Swarm | None = None
        self.replica_of: dict[str, str] = {}
        self.labels = _labels(agent)
        self.identity, self.verifier = identity, verifier
        self.signer: Signer | None = None  # made in `run`: replica 0's key may come from the state directory
        self.federation: Any = None
        self.federation_stop = asyncio.Event()

    # lifecycle ----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, batch_wait_ms: float, state_dir: Any, metrics_port: int | None,
                  ) -> WorkerSummary:
        started = time.perf_counter()
        self.signer = Signer(self.identity or _replica_key(self.agent.name, state_dir))
        self.summary.key_id = self.signer.key_id
        if self.verifier is not None and self.signer.public_key not in self.verifier.admitted:
            self.verifier.admit(self.signer.public_key)  # what it wrote itself (e.g. as the aggregator)
        self.client = await connect(self.url)
        bus = RedisBus(self.url, self.name, local_queues=True, signer=self.signer, verifier=self.verifier)
        self.swarm = Swarm(self.name, bus=bus, max_batch=self.max_batch, batch_wait_ms=batch_wait_ms,
                           defer_checkpoints=True)
        try:
            group = await self.swarm.start(self.agent, replicas=self.replicas, state_dir=state_dir)
        except BaseException:
            await self.swarm.stop()
            await self._close(bus)
            raise
        self.summary.agent_id = self.consumer = group.agent_ids[0]
        if self.identity is None and state_dir is not None:  # what the operator admits (``--admit``)
            write_public_key(group.contexts[0].state_dir, group.contexts[0].identity)
        self.replica_of = {agent_id: str(i) for i, agent_id in enumerate(group.agent_ids)}
        if metrics_port is not None:
            self.metrics.serve(metrics_port)
        await self._join(bus)
        loops = [asyncio.ensure_future(c) for c in (self._read_loop(), self._consume(), self._heartbeat_loop(),
                                                    self._reclaim_loop())]
        federating = self._federate(state_dir)
        try:
            failure = await self._wait(stop, loops + federating)
        except asyncio.CancelledError:
            for loop in loops + federating:
                loop.cancel()
            raise
        self.federation_stop.set()
        fed_results = await asyncio.gather(*federating, return_exceptions=True)
        if failure is None and fed_results and isinstance(fed_results[0], Exception):
            failure = fed_results[0]
        if failure is not None:
            bus.reconnect_seconds = GIVE_UP_SECONDS
        await self._drain(loops, failed=failure is not None)
        errors = await self.swarm.stop()
        self.summary.shutdown_errors = [f"{e.code}: {e.message}" for e in errors]
        await self._leave(bus, failed=failure is not None)
        await self._close(bus)
        self._count_dropped()
        self.summary.reconnects = Reconnects.count
        self.summary.seconds = time.perf_counter() - started
        if failure is not None:
            raise failure
        return self.summary

    def _federate(self, state_dir: Any) -> list[asyncio.Future]:
        """Take part in the agent's federated rounds (``--local-data``), or else follow the models they
        adopt: every worker of the agent runs the adopted version."""
        self.federation_stop = asyncio.Event()
        if self.federation is None:
            from .federated.member import follow_adopted

            return [asyncio.ensure_future(follow_adopted(self.agent, url=self.url, swarm=self.name,
                                                         stop=self.federation_stop, state_dir=state_dir,
                                                         verifier=self.verifier))]
        from .federated.member import take_part

        return [asyncio.ensure_future(take_part(self.agent, self.consumer, self.federation, url=self.url,
                                                swarm=self.name, stop=self.federation_stop, signer=self.signer,
                                                verifier=self.verifier))]

    async def _wait(self, stop: asyncio.Event, loops: list[asyncio.Future]) -> BaseException | None:
        """Wait for ``stop`` or for a loop to fail (e.g. Redis gone for good); return the failure."""
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for loop in done:
            if loop is not stopping and not loop.cancelled() and loop.exception() is not None:
                return loop.exception()
        return None

    async def _drain(self, loops: list[asyncio.Future], *, failed: bool) -> None:
        """Stop reading, let the replicas finish what this worker holds, acknowledge it.

        After a failure (Redis gone for good) the reader may wait on a full queue that nobody
        empties: it is cancelled, and what this worker holds stays pending for another worker.
        """
        self.stopping, self.state = True, "draining"
        self.room.set()
        reading, consuming, beating, reclaiming = loops
        reclaiming.cancel()
        if failed:
            reading.cancel()
        await asyncio.gather(reading, reclaiming, return_exceptions=True)
        draining = asyncio.ensure_future(self.swarm.drain())
        await asyncio.wait([draining, consuming], return_when=asyncio.FIRST_COMPLETED)
        if not draining.done():  # the consumer failed: let the replicas finish into a closed channel
            self.swarm.group().outcomes_receive.close()
        await asyncio.gather(draining, consuming, return_exceptions=True)
        for priority, stream in zip(PRIORITIES, self.streams) if not failed else ():
            try:  # what this worker acknowledged last goes too
                await retrying(lambda: self._trim(priority, stream), what="trim a task stream",
                               deadline=GIVE_UP_SECONDS)
            except Exception:  # noqa: BLE001 - the next worker's trim removes it
                pass
        self.leaving = True
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)

    async def _join(self, bus: RedisBus) -> None:
        client = self.client
        for stream in self.streams:
            await self._create_group(stream)
        await retrying(lambda: client.sadd(self.keys.agents, self.agent.name), what="join the swarm")
        await self._beat()
        await bus.publish(Message(TOPIC_LIFECYCLE, self.consumer, encode_event(self._event("join"))))

    async def _leave(self, bus: RedisBus, *, failed: bool) -> None:
        if failed:
            return  # Redis is gone: the heartbeat expires and the member shows as gone
        bus.reconnect_seconds = GIVE_UP_SECONDS
        try:
            await bus.publish(Message(TOPIC_LIFECYCLE, self.consumer, encode_event(self._event("leave"))))
            def forget() -> Any:
                pipe = self.client.pipeline(transaction=True)
                return pipe.hdel(self.keys.members, self.consumer).delete(self.keys.heartbeat(self.consumer)).execute()

            await retrying(forget, what="leave the swarm", deadline=GIVE_UP_SECONDS)
        except Exception:  # noqa: BLE001 - leaving is best effort: the heartbeat expires anyway
            pass

    async def _close(self, bus: RedisBus) -> None:
        await bus.aclose()
        await self.client.aclose()
        self.metrics.close()

    def _count_dropped(self) -> None:
        """Bring the summary and ``af_bus_dropped_total`` up to the verifier's counts."""
        if self.verifier is not None:
            self.summary.dropped = dict(self.verifier.dropped)
            self.metrics.set_dropped(self.summary.dropped)

    def _event(self, event: str) -> dict[str, Any]:
        return {"event": event, "agent": self.consumer, "name": self.agent.name, "swarm": self.name,
                "host": socket.gethostname(), "pid": os.getpid(), "replicas": self.replicas, "time": time.time()}

    async def _create_group(self, stream: str) -> None:
        try:  # from id 0: tasks submitted before any worker existed are read too
            await retrying(lambda: self.client.xgroup_create(stream, GROUP, id="0", mkstream=True),
                           what="create a consumer group")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # reading ------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        script = self.client.register_script(_READ_BY_PRIORITY)
        while not self.stopping:
            room = self.max_held - self.held_records
            if room < TASK_RECORDS or self.alone:
                self.room.clear()
                await self.room.wait()
                continue
            count = max(1, room // TASK_RECORDS)
            try:
                entries = await retrying(lambda: self._read(script, count), what="read tasks")
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                for stream in self.streams:  # Redis restarted without its data: start over
                    await self._create_group(stream)
                continue
            for priority, entry_id, fields in entries:
                await self._dispatch(priority, entry_id, fields, 1)

    async def _read(self, script: Any, count: int) -> list[tuple[str, bytes, dict]]:
        """Read up to ``count`` task entries, higher priorities first; block a while when there are none."""
        reply = await script(keys=self.streams, args=[GROUP, self.consumer, count])
        out = [(PRIORITIES[i - 1], entry_id, _pairs(flat)) for i, entries in reply for entry_id, flat in entries]
        if out or self.stopping:
            return out
        reply = await self.client.xreadgroup(GROUP, self.consumer, dict.fromkeys(self.streams, ">"), count=count,
                                             block=READ_BLOCK_MS)
        streams = {s.encode(): p for s, p in zip(self.streams, PRIORITIES)}
        return [(streams[stream], entry_id, fields) for stream, entries in (reply or []) for entry_id, fields in entries]

    async def _dispatch(self, priority: str, entry_id: bytes, fields: dict, deliveries: int) -> None:
        """Feed one task's records to the replicas (or split, or dead-letter it)."""
        try:
            task = decode_task(fields)
        except ValueError as exc:
            await self._dead_letter(priority, entry_id, None, deliveries, str(exc))
            return
        if deliveries > self.max_deliveries:
            await self._dead_letter(priority, entry_id, task, deliveries - 1,
                                    f"delivered {deliveries - 1} times without a result (max_deliveries "
                                    f"{self.max_deliveries})")
            return
        if deliveries > 1 and task.count > 1:
            await self._split(priority, entry_id, task)
            return
        base = self.seq
        block, errors, self.seq = parse_block(task.data.split(b"\n"), seq=base, line_no=task.line,
                                              input_size=self.agent.input_size)
        held = _Held(priority, entry_id, task, base, [None] * (self.seq - base), self.seq - base, time.perf_counter())
        self.held_records += held.left
        for error in errors:
            held.lines[error.seq - base] = encode_error(error.id, error.code, error.message, line=error.line)
            held.left -= 1
            self.summary.errors += 1
        if not held.left:
            await self._finish([held])
            return
        for seq in block.seqs:
            self.owner[seq] = held
        await self.swarm.feed(block)

    # results ------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        metrics, summary, owner = self.metrics, self.summary, self.owner
        async for outcomes in self.swarm.results():
            done = []
            for seq, line in zip(outcomes.seqs, encode_outcomes(outcomes, self.labels)):
                held = owner.pop(seq)
                held.lines[seq - held.base] = line
                held.left -= 1
                if not held.left:
                    done.append(held)
            replica = self.replica_of.get(outcomes.agent or "", "?")
            n_errors, n_filtered = len(outcomes.errors), len(outcomes.filtered)
            summary.errors += n_errors
            summary.filtered += n_filtered
            metrics.count(replica, "output", len(outcomes) - n_errors - n_filtered)
            metrics.count(replica, "error", n_errors)
            metrics.count(replica, "filtered", n_filtered)
            metrics.batch.labels(self.name, self.agent.name, replica).observe(len(outcomes))
            if done:
                await self._finish(done)
            if outcomes.written is not None and not outcomes.written.done():
                outcomes.written.set_result(None)

    async def _finish(self, done: list[_Held]) -> None:
        """Write the results of finished tasks and acknowledge the tasks, in one transaction."""
        if self.bucket is not None:  # the bytes of the results are what goes on the wire
            await self.bucket.consume(sum(len(line) for held in done for line in held.lines))
            self.summary.bandwidth_wait_seconds = round(self.bucket.waited, 4)

        # signed once: a retried write sends the same entries (the submit drops a second copy)
        entries = [(results, self.signer.sign(results, {"n": held.task.index, "d": b"".join(held.lines),
                                                         "t": held.task.digest()}))
                   for held in done for results in [self.keys.results(held.task.submission)]]

        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            acks: dict[str, list[bytes]] = {}
            for held, (results, fields) in zip(done, entries):
                pipe.xadd(results, fields)
                pipe.expire(results, RESULTS_TTL)
                acks.setdefault(self.keys.tasks(self.agent.name, held.priority), []).append(held.entry_id)
            for stream, ids in acks.items():
                pipe.xack(stream, GROUP, *ids).xdel(stream, *ids)
            await pipe.execute()

        await retrying(write, what="write results")
        now = time.perf_counter()
        for held in done:
            self.metrics.latency.labels(self.name, self.agent.name).observe(now - held.started)
            self.held_records -= len(held.lines)
            self.summary.records += len(held.lines)
        self.summary.tasks += len(done)
        self.room.set()
        if not self.held_records:
            self.settled.set()

    async def _split(self, priority: str, entry_id: bytes, task: Task) -> None:
        """Replace a redelivered task by one task per record (so a poison record goes alone)."""
        stream = self.keys.tasks(self.agent.name, priority)

        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            for single in task.singles():
                pipe.xadd(stream, single.fields())
            pipe.xack(stream, GROUP, entry_id).xdel(stream, entry_id)
            await pipe.execute()

        await retrying(write, what="split a task")

    async def _dead_letter(self, priority: str, entry_id: bytes, task: Task | None, deliveries: int,
                           reason: str) -> None:
        """Move a task to the dead-letter stream and answer each of its records with an AF5260 error."""
        stream = self.keys.tasks(self.agent.name, priority)
        message = f"dead letter: the task was {reason}"
        answer = None
        if task is not None:
            results = self.keys.results(task.submission)
            lines = [encode_error(rid, "AF5260", message) for rid in task.record_ids()]
            answer = (results, self.signer.sign(results, {"n": task.index, "d": b"".join(lines), "t": task.digest()}))

        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            entry = {"reason": reason, "deliveries": deliveries, "stream": stream, "id": entry_id}
            if task is not None and answer is not None:
                entry.update(task.fields())
                pipe.xadd(*answer)
                pipe.expire(answer[0], RESULTS_TTL)
            pipe.xadd(self.keys.dead(self.agent.name, priority), entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            pipe.xack(stream, GROUP, entry_id).xdel(stream, entry_id)
            await pipe.execute()

        await retrying(write, what="dead-letter a task")
        self.summary.dead_letters += 1
        self.metrics.dead_letters.labels(self.name, self.agent.name).inc()
        if task is not None:
            self.metrics.count("?", "dead_letter", task.count)

    # membership, reclaiming, trimming -----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while not self.leaving:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                await self._beat()
                await self._observe()
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next one
                continue

    async def _beat(self) -> None:
        s = self.summary
        self._count_dropped()
        member = {"agent_id": self.consumer, "agent": self.agent.name, "host": socket.gethostname(),
                  "pid": os.getpid(), "replicas": self.replicas, "state": self.state, "last_heartbeat": time.time(),
                  "processed": s.records, "errors": s.errors + s.dead_letters, "key_id": s.key_id,
                  "dropped": sum(s.dropped.values())}
        ttl = max(1, round(3 * self.heartbeat_seconds))

        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.heartbeat(self.consumer), 1, ex=ttl)
            pipe.hset(self.keys.members, self.consumer, orjson.dumps(member))
            await pipe.execute()

        await retrying(write, what="send a heartbeat")

    async def _observe(self) -> None:
        """Update the gauges (members, queue lag) and forget members long gone."""
        members = await self.client.hgetall(self.keys.members)
        alive, now = 0, time.time()
        for agent_id, raw in members.items():
            if await self.client.exists(self.keys.heartbeat(agent_id.decode())):
                alive += 1
            elif now - orjson.loads(raw).get("last_heartbeat", 0) > FORGET_SECONDS:
                await self.client.hdel(self.keys.members, agent_id)
        self.metrics.members.labels(self.name).set(alive)
        for stream in self.streams:  # consumers of workers long gone, holding nothing, are dropped
            for consumer in await self.client.xinfo_consumers(stream, GROUP):
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                if not consumer["pending"] and consumer["idle"] > FORGET_SECONDS * 1000 and name != self.consumer:
                    await self.client.xgroup_delconsumer(stream, GROUP, name)
        self.metrics.set_reconnects(Reconnects.count)

    async def _reclaim_loop(self) -> None:
        period, trimmed = max(self.idle_ms / 2000, 0.1), 0.0
        # `stopping` ends the loop even if a cancellation is swallowed below (redis-py can turn one
        # into a connection error while a command is on the wire)
        while not self.stopping:
            await asyncio.sleep(period)
            try:
                for priority, stream in zip(PRIORITIES, self.streams):
                    await retrying(lambda: self._reclaim(priority, stream), what="claim idle tasks")
                if time.monotonic() - trimmed > 1.0:
                    trimmed = time.monotonic()
                    for priority, stream in zip(PRIORITIES, self.streams):
                        await retrying(lambda: self._trim(priority, stream), what="trim a task stream")
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # Redis came back without its data: the read loop creates the groups again.

    async def _reclaim(self, priority: str, stream: str) -> None:
        """Claim tasks idle past ``idle_ms`` from workers that went quiet, one at a time, and run them.

        XPENDING finds them and XCLAIM takes each just before it runs: claiming counts as a
        delivery, so a batch claim (XAUTOCLAIM) would count one for tasks that this worker then
        never runs if a poison record among them kills it.
        """
        client = self.client
        stale = await client.xpending_range(stream, GROUP, min="-", max="+", count=16, idle=self.idle_ms)
        for entry in stale:
            if self.stopping:
                return
            claimed = await client.xclaim(stream, GROUP, self.consumer, self.idle_ms, [entry["message_id"]])
            if not claimed or not claimed[0][1]:
                continue  # another worker took it first, or its task was acknowledged and deleted
            entry_id, fields = claimed[0]
            deliveries = entry["times_delivered"] + 1
            self.summary.redeliveries += 1
            self.metrics.redeliveries.labels(self.name, self.agent.name).inc()
            if fields.get(b"c") == b"1" and 1 < deliveries <= self.max_deliveries:
                await self._run_alone(priority, entry_id, fields, deliveries)
            else:
                await self._dispatch(priority, entry_id, fields, deliveries)

    async def _run_alone(self, priority: str, entry_id: bytes, fields: dict, deliveries: int) -> None:
        """Run a redelivered record with nothing else in flight: if it kills the worker, it alone
        is delivered again, and the records that happened to share its batch never reach
        ``max_deliveries``."""
        self.alone = True
        try:
            while self.held_records:
                self.settled.clear()
                await self.settled.wait()
            await self._dispatch(priority, entry_id, fields, deliveries)
            while self.held_records:
                self.settled.clear()
                await self.settled.wait()
        finally:
            self.alone = False
            self.room.set()

    async def _trim(self, priority: str, stream: str) -> None:
        """Trim below the oldest pending entry (MINID): never an unacknowledged task."""
        groups = {g["name"]: g for g in await self.client.xinfo_groups(stream)}
        info = groups.get(GROUP.encode()) or groups.get(GROUP)
        if info is None:
            return
        self.metrics.lag.labels(self.name, self.agent.name, priority).set(info.get("lag") or 0)
        pending = await self.client.xpending(stream, GROUP)
        minid = pending["min"] if pending["pending"] else stream_after(info["last-delivered-id"])
        await self.client.xtrim(stream, minid=minid, approximate=False)


def _replica_key(name: str, state_dir: Any) -> SigningKey:
    """Return replica 0's identity key (from ``state_dir``; ephemeral without one), read before the
    swarm starts: its initialization workflow already publishes signed lifecycle events."""
    if state_dir is None:
        identity = Identity.generate(name)
    else:
        identity, _ = load_or_create_identity(replica_dir(state_dir, name, 0), name)
    return SigningKey(identity.private_key)


def _labels(agent: Any) -> Any:
    """Return the network's ``neural_config.labels`` (output lines carry a ``label``, as in `af run`)."""
    try:
        return agent.bundle.info.network.labels
    except AttributeError:
        return None


def _pairs(flat: list) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))
