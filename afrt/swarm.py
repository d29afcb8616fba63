"""The swarm: named groups of agent replicas on a message bus, with dynamic micro-batching.

```python
async with afrt.Swarm("demo") as swarm:
    await swarm.start(agent, replicas=4)
    output = await swarm.submit([0.0] * 784)
```

Replicas of one agent compete for the records of one work queue, so each record is handled by
exactly one replica. A replica takes up to ``max_batch`` waiting records, waiting at most
``batch_wait_ms`` for more once it has one (Triton's dynamic batcher), and runs them with one
backend call. What the records came to travels back as values: `Swarm.submit` returns a record's
output; records sent with `Swarm.feed` come out of `Swarm.results`, an async iterator of
`afrt.outcomes.Outcomes` (a bounded channel: a consumer that falls behind holds the replicas back,
and they hold back the feeder). Nothing here encodes or writes outcomes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import numpy as np

from afcore.errors import ChannelClosedError, ExecutionError, UsageError

from .bus import TOPIC_LIFECYCLE, Bus, MemoryBus, TokenBucket, open_memory_channel
from .instrument import Instruments
from .outcomes import Outcome, Outcomes, RecordError
from .records import InputRecord, RecordBlock
from .state import Identity, commit_checkpoint, load_or_create_identity, lock_state_dir, replica_dir
from .workflow import AgentContext, WorkflowRunner

__all__ = ["AgentGroup", "Swarm", "resource_limits"]

#: default number of records a replica runs in one backend call
DEFAULT_MAX_BATCH = 64
#: default time a replica waits for more records once it has one
DEFAULT_BATCH_WAIT_MS = 2.0
#: seconds between heartbeats on agent.lifecycle
HEARTBEAT_SECONDS = 5.0


@dataclass
class AgentGroup:
    """The replicas of one agent in a swarm, sharing one work queue and one outcome channel."""

    name: str
    contexts: list[AgentContext]
    runners: list[WorkflowRunner]
    send: Any
    receive: Any
    outcomes_send: Any
    outcomes_receive: Any
    serving: list[asyncio.Task] = field(default_factory=list)
    heartbeats: list[asyncio.Task] = field(default_factory=list)
    #: checkpoints waiting for the outcomes they count to be written, per replica (in order)
    commits: dict[int, asyncio.Task] = field(default_factory=dict)
    waiters: dict[int, asyncio.Future] = field(default_factory=dict)
    seq: Any = field(default_factory=itertools.count)
    drained: bool = False
    stopped: bool = False

    @property
    def agent_ids(self) -> list[str]:
        """Return the agent ids of the replicas."""
        return [c.agent_id for c in self.contexts]

    async def deliver(self, outcomes: Outcomes) -> None:
        """Hand a block's outcomes to the tasks waiting in `Swarm.submit`, the rest to `Swarm.results`."""
        if self.waiters:
            rest = []
            for i, outcome in enumerate(outcomes):
                future = self.waiters.pop(outcome.seq, None)
                if future is None:
                    rest.append(i)
                elif not future.done():
                    future.set_result(outcome)
            if not rest:
                if outcomes.written is not None:
                    outcomes.written.set_result(None)  # submit() took them all: nothing else to write
                return
            if len(rest) < len(outcomes):
                outcomes, written = outcomes.take(rest), outcomes.written
                outcomes.written = written
        await self.outcomes_send.send(outcomes)

    def notices(self) -> list[str]:
        """Return every replica's notices, each once."""
        seen: dict[str, None] = {}
        for ctx in self.contexts:
            seen.update(dict.fromkeys(ctx.notices))
        return list(seen)

    def stats(self) -> dict[str, float]:
        """Return the replicas' counters summed, with ``bandwidth_wait`` (seconds held back by
        ``network_bandwidth_mbps``, summed over replicas)."""
        total: dict[str, float] = {"bandwidth_wait": 0.0}
        for ctx in self.contexts:
            for key, value in ctx.stats.items():
                total[key] = total.get(key, 0) + value
            if ctx.bucket is not None:
                total["bandwidth_wait"] += ctx.bucket.waited
        return total


class Swarm:
    """A named group of agents on a message bus.

    Args:
        name: the swarm's name (``--swarm``).
        bus: the bus to use; by default a fresh in-process `MemoryBus`.
        max_batch: the most records a replica runs in one backend call.
        batch_wait_ms: how long a replica waits for more records once it has one.
        queue_size: the records each work queue (and each outcome channel) holds at most:
            backpressure on `submit`, `feed` and the replicas.
        instrument: hooks passed to every workflow runner (see `afrt.instrument`).
        heartbeat_seconds: the heartbeat period on agent.lifecycle (None: no heartbeats).
        defer_checkpoints: write the checkpoints that ``save_state`` makes while records run only
            once the consumer of `results` has written those records' outcomes (it sets
            ``Outcomes.written``); `afrt.run_jsonl` does.
    """

    def __init__(
        self,
        name: str = "default",
        *,
        bus: Bus | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        queue_size: int | None = None,
        instrument: Any = None,
        heartbeat_seconds: float | None = HEARTBEAT_SECONDS,
        defer_checkpoints: bool = False,
    ) -> None:
        if max_batch < 1:
            raise UsageError(f"max_batch must be at least 1, found {max_batch}", code="AF0930")
        if batch_wait_ms < 0:
            raise UsageError(f"batch_wait_ms must not be negative, found {batch_wait_ms}", code="AF0930")
        self.name = name
        self.bus = bus if bus is not None else MemoryBus(name)
        self._own_bus = bus is None
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000.0
        self.queue_size = queue_size or max(4 * max_batch, 256)
        # Always behind `Instruments`, which drops an observer that raises instead of failing records.
        if instrument is not None and not isinstance(instrument, Instruments):
            instrument = Instruments([instrument])
        self.instrument = instrument
        self.heartbeat_seconds = heartbeat_seconds
        self.defer_checkpoints = defer_checkpoints
        self.groups: dict[str, AgentGroup] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._locks: list[int] = []  # state-directory locks held until stop()

    async def __aenter__(self) -> Swarm:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, agent: Any, *, replicas: int = 1, state_dir: Any = None) -> AgentGroup:
        """Start ``replicas`` replicas of ``agent`` and run their initialization workflows.

        Args:
            agent: a loaded agent (`afrt.load`); replicas come from ``agent.replica()``.
            replicas: how many replicas share the work.
            state_dir: where identities and checkpoints live; None for ephemeral identities.

        Returns:
            The group; `submit` and `feed` send it records.

        Raises:
            UsageError: for replicas < 1 or an agent started twice.
            StateError: when an identity or checkpoint cannot be used.
            ExecutionError: when a workflow holds a step where it cannot run (AF5208), or an
                initialization step fails.
        """
        if replicas < 1:
            raise UsageError(f"replicas must be at least 1, found {replicas}", code="AF0930")
        if agent.name in self.groups:
            raise UsageError(f"agent `{agent.name}` is already started in swarm `{self.name}`", code="AF0931")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(2, replicas), thread_name_prefix="af-infer")
        # Blocks of records travel the queues; each counts for its records, in the bounds and in batches.
        send, receive = self.bus.open_queue(f"work.{agent.name}", max_buffer_size=self.queue_size, weight=len)
        outcomes_send, outcomes_receive = open_memory_channel(self.queue_size, weight=len)
        group = AgentGroup(agent.name, [], [], send, receive, outcomes_send, outcomes_receive)
        self.groups[agent.name] = group
        for i in range(replicas):
            ctx = self._context(agent if i == 0 else agent.replica(), i, state_dir)
            runner = WorkflowRunner(ctx, getattr(agent, "workflows", {}) or {}, executor=self._executor)
            group.contexts.append(ctx)
            group.runners.append(runner)
            await runner.run_lifecycle("initialization")
            ctx.initialized = True
        for runner in group.runners:
            group.serving.append(asyncio.create_task(self._serve(group, runner)))
            if self.heartbeat_seconds:
                group.heartbeats.append(asyncio.create_task(self._heartbeat(runner)))
        return group

    def _context(self, agent: Any, replica: int, state_dir: Any) -> AgentContext:
        limits = resource_limits(getattr(agent, "resources", None) or {})
        if state_dir is not None:
            directory = replica_dir(state_dir, agent.name, replica)
            self._locks.append(lock_state_dir(directory))
            identity, _ = load_or_create_identity(directory, agent.name)
        else:
            directory, identity = None, Identity.generate(agent.name)
        disk = limits.get("disk_mb")
        bandwidth = limits.get("network_bandwidth_mbps")
        return AgentContext(
            agent=agent,
            identity=identity,
            state_dir=directory,
            bus=self.bus,
            swarm=self.name,
            replica=replica,
            disk_bytes=int(disk * 1024 * 1024) if disk else None,
            bucket=TokenBucket(bandwidth * 125_000) if bandwidth else None,
            instrument=self.instrument,
            defer_checkpoints=self.defer_checkpoints,
        )

    async def _serve(self, group: AgentGroup, runner: WorkflowRunner) -> None:
        receive, max_batch, wait = group.receive, self.max_batch, self.batch_wait
        while True:
            try:
                blocks = await receive.receive_batch(max_batch, wait=wait)
            except ChannelClosedError:
                return
            block = RecordBlock.concat(blocks)
            try:
                outcomes = await runner.run_block(block)
            except Exception as exc:  # noqa: BLE001 - a bug must not lose records: each gets an error
                message = f"internal error (a bug in af, please report it): {type(exc).__name__}: {exc}"
                outcomes = Outcomes.failed(block.seqs, block.ids, RecordError("AF9999", message), runner.ctx.agent_id)
            checkpoints = runner.ctx.checkpoints
            if checkpoints:
                runner.ctx.checkpoints = []
                outcomes.written = asyncio.get_running_loop().create_future()
                self._commit_later(group, runner.ctx, checkpoints[-1], outcomes.written)
            await group.deliver(outcomes)

    @staticmethod
    def _commit_later(group: AgentGroup, ctx: AgentContext, data: bytes, written: asyncio.Future) -> None:
        """Write a checkpoint once the outcomes it counts are written; never if they never are."""
        before = group.commits.get(ctx.replica)

        async def commit() -> None:
            if before is not None:
                await before  # checkpoints of one replica are written in the order they were made
            try:
                await written
            except asyncio.CancelledError:
                return  # the outcomes were not written: neither is the checkpoint that counts them
            try:
                commit_checkpoint(ctx.state_dir, data)
            except Exception as exc:  # noqa: BLE001 - the records are written; say why memory was not
                ctx.notice(f"save_state: a checkpoint could not be written ({exc})")

        group.commits[ctx.replica] = asyncio.ensure_future(commit())

    async def _heartbeat(self, runner: WorkflowRunner) -> None:
        from .steps import capabilities, lifecycle_event

        ctx = runner.ctx
        while not ctx.closed:
            await asyncio.sleep(self.heartbeat_seconds)
            if ctx.connected:
                ctx.publish(TOPIC_LIFECYCLE, lifecycle_event(ctx, "heartbeat", records=ctx.stats["records"],
                                                             capabilities=capabilities(ctx)))
                await runner.flush()

    def group(self, name: str | None = None) -> AgentGroup:
        """Return the group of agent ``name`` (or the only one).

        Raises:
            UsageError: when no such agent runs, or ``name`` is None and several do.
        """
        if name is None and len(self.groups) == 1:
            return next(iter(self.groups.values()))
        if name in self.groups:
            return self.groups[name]
        raise UsageError(
            f"no agent {name!r} in swarm `{self.name}`" if name else "several agents run: name one",
            code="AF0932",
        )

    async def feed(self, records: Sequence[InputRecord] | RecordBlock, *, agent: str | None = None) -> list[Outcome]:
        """Queue records for the replicas, waiting while the queue is full (backpressure).

        Their outcomes come out of `results`.

        Args:
            records: input records, or a `RecordBlock` of checked ones.
            agent: which agent, when several run.

        Returns:
            The error outcomes of the records whose values are not finite numbers (they are not
            queued).
        """
        group = self.group(agent)
        if isinstance(records, RecordBlock):
            block, bad = records, []
        else:
            block, bad = RecordBlock.from_records(records, group.contexts[0].agent.input_size)
        pieces = []
        while len(block) > self.max_batch:
            head, block = block.split(self.max_batch)
            pieces.append(head)
        if len(block):
            pieces.append(block)
        await group.send.send_many(pieces)
        return [Outcome(e.seq, e.id, error=RecordError(e.code, e.message)) for e in bad]

    async def results(self, agent: str | None = None) -> AsyncIterator[Outcomes]:
        """Yield the outcomes of the records sent with `feed`, a block at a time, as replicas finish
        them (not in input order: each carries its records' seqs). Ends once `drain` has run.

        Args:
            agent: which agent, when several run.
        """
        async for outcomes in self.group(agent).outcomes_receive:
            yield outcomes

    async def submit(self, values: Any, *, id: Any = None, agent: str | None = None) -> np.ndarray:
        """Run one input through the swarm and return its output.

        Args:
            values: the input vector (a sequence of numbers or a 1-D array).
            id: the record id (default: its sequence number).
            agent: which agent, when several run.

        Returns:
            The output vector (float32).

        Raises:
            ExecutionError: with the record's error code when it failed (e.g. AF5232 wrong length,
                AF5233 not a number), or AF5212 when a guard filtered it.
        """
        group = self.group(agent)
        seq = next(group.seq)
        values = values.tolist() if isinstance(values, np.ndarray) else list(values)
        size = group.contexts[0].agent.input_size
        if len(values) != size:
            raise ExecutionError(f"input has {len(values)} values, the agent takes {size}", code="AF5232")
        block, bad = RecordBlock.from_records([InputRecord(seq, seq if id is None else id, values, 0)], size)
        if bad:
            raise ExecutionError(bad[0].message, code=bad[0].code, agent=agent)
        future = asyncio.get_running_loop().create_future()
        group.waiters[seq] = future
        await group.send.send(block)
        outcome: Outcome = await future
        if outcome.error is not None:
            raise ExecutionError(outcome.error.message, code=outcome.error.code, agent=agent)
        if outcome.filtered is not None:
            raise ExecutionError(f"the record was filtered by `{outcome.filtered}`", code="AF5212", agent=agent)
        return outcome.output

    def next_seq(self, agent: str | None = None) -> int:
        """Reserve a record sequence number (for callers that build `InputRecord`s themselves)."""
        return next(self.group(agent).seq)

    async def drain(self) -> None:
        """Take no more records, let the replicas finish what is queued, then end `results`."""
        for group in self.groups.values():
            if group.drained:
                continue
            group.drained = True
            group.send.close()
            await asyncio.gather(*group.serving, return_exceptions=True)
            group.outcomes_send.close()

    async def stop(self) -> list[Exception]:
        """Drain, write the checkpoints still waiting, run every shutdown workflow, leave the bus.

        Returns:
            The errors of shutdown workflows (each replica's shutdown runs even if another fails).
        """
        await self.drain()
        errors: list[Exception] = []
        for group in self.groups.values():
            if group.stopped:
                continue
            group.stopped = True
            group.outcomes_receive.close()  # a consumer that left: what is still queued is not written
            await asyncio.gather(*group.commits.values(), return_exceptions=True)
            for task in group.heartbeats:
                task.cancel()
            for runner in group.runners:
                if not runner.ctx.initialized:
                    # Its initialization failed (e.g. a corrupt checkpoint): a shutdown save_state
                    # would overwrite the evidence with a fresh memory.
                    continue
                try:
                    await runner.run_lifecycle("shutdown")
                except ExecutionError as exc:
                    errors.append(exc)
                runner.ctx.closed = True
        if self._own_bus:
            await self.bus.aclose()
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        return errors


def resource_limits(resources: Any) -> dict[str, float]:
    """Return the numeric ``resources.limits`` of a manifest (``disk_mb``, ``network_bandwidth_mbps`` ...)."""
    limits = resources.get("limits", resources) if isinstance(resources, dict) else {}
    return {k: float(v) for k, v in limits.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
