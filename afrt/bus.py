"""The swarm message bus: bounded channels with backpressure, topics, and work queues.

Two layers, after trio's `open_memory_channel`:

- `open_memory_channel(max_buffer_size)` returns a (`MemorySendChannel`, `MemoryReceiveChannel`)
  pair over one bounded buffer. ``send`` waits while the buffer is full (backpressure),
  ``send_nowait`` raises `MailboxFullError`, closing the send side ends the stream once the buffer
  is drained, and ``statistics()`` reports the buffer and the waiting tasks.
- `Bus` is the interface a swarm talks to: ``publish``/``subscribe`` fan a message out to every
  subscriber of a topic (pub/sub), and ``open_queue`` gives competing consumers: every item goes
  to exactly one receiver (what replicas sharing work need; Redis Streams consumer groups do the
  same). `MemoryBus` is the embedded in-process implementation; a Redis Streams transport plugs in
  by implementing the same methods and passing ``tests/afrt/test_bus.py``.

Topics of a swarm: `TOPIC_LIFECYCLE`, `TOPIC_COMPLETION`, `TOPIC_UPDATES`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, NamedTuple, Sequence, TypeVar

from afcore.errors import BusError, ChannelClosedError, MailboxFullError
from afcore.steps import MAX_TOPIC_CHARS

__all__ = [
    "Bus",
    "ChannelStatistics",
    "MemoryBus",
    "MemoryReceiveChannel",
    "MemorySendChannel",
    "Message",
    "TOPIC_COMPLETION",
    "TOPIC_LIFECYCLE",
    "TOPIC_UPDATES",
    "TOPICS",
    "TokenBucket",
    "ensure_topic",
    "open_memory_channel",
]

#: agents joining, leaving and sending heartbeats, with their capabilities
TOPIC_LIFECYCLE = "agent.lifecycle"
#: results of executed records
TOPIC_COMPLETION = "task.completion"
#: weight updates shared between agents
TOPIC_UPDATES = "neural.updates"
#: the topics every swarm has
TOPICS = (TOPIC_LIFECYCLE, TOPIC_COMPLETION, TOPIC_UPDATES)

T = TypeVar("T")


class Message(NamedTuple):
    """One message on a topic (a named tuple: cheap to create, immutable).

    Args:
        topic: e.g. ``task.completion``.
        sender: the agent id of the publisher.
        payload: the encoded body; its length is what bandwidth limits count.
    """

    topic: str
    sender: str
    payload: bytes

    @property
    def size(self) -> int:
        """Return the number of payload bytes, what bandwidth limits count."""
        return len(self.payload)


@dataclass(frozen=True)
class ChannelStatistics:
    """A snapshot of one channel, like trio's `MemoryChannelStatistics`."""

    current_buffer_used: int
    max_buffer_size: int | float
    open_send_channels: int
    open_receive_channels: int
    tasks_waiting_send: int
    tasks_waiting_receive: int
    items_sent: int
    items_received: int


@dataclass
class _ChannelState(Generic[T]):
    max_buffer_size: int | float
    weight: Callable[[Any], int] | None = None  # an item's share of the buffer (default 1)
    load: int = 0  # the weights of the items in the buffer
    data: deque = field(default_factory=deque)
    open_send: int = 0
    open_receive: int = 0
    send_waiters: deque = field(default_factory=deque)  # futures woken when space frees up
    receive_waiters: deque = field(default_factory=deque)  # futures woken when data arrives or ends
    sent: int = 0
    received: int = 0

    def has_room(self, item: Any) -> bool:
        """Return whether ``item`` fits (an empty buffer takes any item, so a heavy one cannot wedge)."""
        return self.load + (self.weight(item) if self.weight else 1) <= self.max_buffer_size or not self.data

    def put(self, item: Any) -> None:
        self.data.append(item)
        self.load += self.weight(item) if self.weight else 1
        self.sent += 1

    def take(self) -> Any:
        item = self.data.popleft()
        self.load -= self.weight(item) if self.weight else 1
        self.received += 1
        return item

    def wake(self, waiters: deque) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        for waiters in (self.send_waiters, self.receive_waiters):
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(None)


def open_memory_channel(max_buffer_size: int | float, *, weight: Callable[[Any], int] | None = None,
                        ) -> tuple[MemorySendChannel, MemoryReceiveChannel]:
    """Open a bounded in-memory channel.

    Args:
        max_buffer_size: how many items may wait in the buffer (``math.inf`` for unbounded);
            at least 1 (the bus never needs trio's rendezvous channels).
        weight: what an item counts for, in the buffer bound and in `receive_batch` (e.g. the
            records of a block); 1 when None. An empty buffer always takes an item.

    Returns:
        The (send, receive) pair. Several tasks may share one end; each item is received once.

    Raises:
        ValueError: when ``max_buffer_size`` is below 1.
    """
    if not (max_buffer_size == math.inf or (isinstance(max_buffer_size, int) and max_buffer_size >= 1)):
        raise ValueError("max_buffer_size must be a positive int or math.inf")
    state: _ChannelState = _ChannelState(max_buffer_size, weight)
    return MemorySendChannel(state), MemoryReceiveChannel(state)


class _End:
    def __init__(self, state: _ChannelState) -> None:
        self._state = state
        self._closed = False

    def statistics(self) -> ChannelStatistics:
        """Return a snapshot of the channel's buffer and waiting tasks."""
        s = self._state
        return ChannelStatistics(
            s.load, s.max_buffer_size, s.open_send, s.open_receive,
            len(s.send_waiters), len(s.receive_waiters), s.sent, s.received,
        )

    async def aclose(self) -> None:
        """Close this end (same as `close`)."""
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class MemorySendChannel(_End, Generic[T]):
    """The sending end of `open_memory_channel`."""

    def __init__(self, state: _ChannelState) -> None:
        super().__init__(state)
        state.open_send += 1

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError("send on a closed channel", hint="do not send after close()")
        if self._state.open_receive == 0:
            raise ChannelClosedError("every receiver of this channel is closed", code="AF5103")

    def send_nowait(self, item: T) -> None:
        """Put ``item`` in the buffer without waiting.

        Raises:
            MailboxFullError: AF5102 when the buffer is full.
            ChannelClosedError: AF5101 when this end is closed, AF5103 when no receiver is left.
        """
        self._check_open()
        s = self._state
        if not s.has_room(item):
            raise MailboxFullError(f"mailbox full ({s.load} of {s.max_buffer_size} waiting)")
        s.put(item)
        s.wake(s.receive_waiters)

    async def send(self, item: T) -> None:
        """Put ``item`` in the buffer, waiting while it is full (backpressure).

        Raises:
            ChannelClosedError: when this end is closed or no receiver is left.
        """
        s = self._state
        while True:
            self._check_open()
            if s.has_room(item):
                self.send_nowait(item)
                return
            fut = asyncio.get_running_loop().create_future()
            s.send_waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                s.wake(s.send_waiters)  # pass the wake-up on to another sender
                raise

    async def send_many(self, items: Iterable[T]) -> None:
        """Send each item in order, waiting for space as needed (a batched `send`)."""
        s = self._state
        for item in items:
            if not self._closed and s.open_receive and s.has_room(item):
                s.put(item)
            else:
                if s.data and s.receive_waiters:
                    s.wake(s.receive_waiters)
                await self.send(item)
        # One wake-up for the lot: the receiver takes a batch and passes the rest on.
        if s.data and s.receive_waiters:
            s.wake(s.receive_waiters)

    def close(self) -> None:
        """Close this end; when the last sender closes, receivers get the rest, then the end."""
        if self._closed:
            return
        self._closed = True
        self._state.open_send -= 1
        if self._state.open_send == 0:
            self._state.wake_all()


class MemoryReceiveChannel(_End, Generic[T]):
    """The receiving end of `open_memory_channel`; ``async for`` iterates until the end."""

    def __init__(self, state: _ChannelState) -> None:
        super().__init__(state)
        state.open_receive += 1

    def _take(self) -> T:
        s = self._state
        item = s.take()
        if s.send_waiters:
            s.wake(s.send_waiters)
        return item

    def receive_nowait(self) -> T:
        """Take one item without waiting.

        Raises:
            asyncio.QueueEmpty: when nothing is waiting but senders are still open.
            ChannelClosedError: AF5101 when this end is closed, AF5104 at the end of the stream.
        """
        if self._closed:
            raise ChannelClosedError("receive on a closed channel")
        s = self._state
        if s.data:
            return self._take()
        if s.open_send == 0:
            raise ChannelClosedError("end of channel: every sender closed", code="AF5104")
        raise asyncio.QueueEmpty

    async def receive(self) -> T:
        """Take one item, waiting for one to arrive.

        Raises:
            ChannelClosedError: AF5104 once every sender has closed and the buffer is empty.
        """
        while True:
            try:
                return self.receive_nowait()
            except asyncio.QueueEmpty:
                await self._wait_data()

    async def _wait_data(self, timeout: float | None = None) -> None:
        s = self._state
        fut = asyncio.get_running_loop().create_future()
        s.receive_waiters.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            s.wake(s.receive_waiters)
            raise
        finally:
            if fut in s.receive_waiters:
                s.receive_waiters.remove(fut)
        if s.data and s.receive_waiters:
            s.wake(s.receive_waiters)  # more than we will take: let another receiver in

    async def receive_batch(self, max_items: int, *, wait: float = 0.0) -> list[T]:
        """Take up to ``max_items``: wait for the first, then at most ``wait`` seconds for more.

        This is the dynamic batcher's primitive (Triton's ``max_queue_delay``). Items count as
        their channel weight (e.g. the records of a block): the first is always taken, then items
        while the total stays within ``max_items``.

        Returns:
            One or more items, in the order sent.

        Raises:
            ChannelClosedError: AF5104 at the end of the stream (nothing left to take).
        """
        batch = [await self.receive()]
        s = self._state
        weight = s.weight
        total = weight(batch[0]) if weight else 1
        deadline = time.monotonic() + wait if wait > 0 else None
        while total < max_items:
            if s.data:
                if weight is None:
                    n = min(max_items - total, len(s.data))
                    take = s.take
                    batch.extend([take() for _ in range(n)])
                    total += n
                else:
                    size = weight(s.data[0])
                    if total + size > max_items:
                        break
                    batch.append(s.take())
                    total += size
                if s.send_waiters:
                    s.wake(s.send_waiters)
                continue
            if deadline is None or s.open_send == 0:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._wait_data(remaining)
        if s.data and s.receive_waiters:
            s.wake(s.receive_waiters)  # more than this batch: let another receiver have it
        return batch

    def close(self) -> None:
        """Close this end; senders fail with AF5103 once every receiver is closed."""
        if self._closed:
            return
        self._closed = True
        self._state.open_receive -= 1
        if self._state.open_receive == 0:
            self._state.wake_all()

    def __aiter__(self):
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except ChannelClosedError:
            raise StopAsyncIteration from None


class TokenBucket:
    """A token bucket in bytes: ``rate`` bytes per second, bursts up to ``capacity`` bytes.

    Args:
        rate: bytes per second (``network_bandwidth_mbps * 125_000``).
        capacity: the burst size in bytes (default: one second of traffic).
    """

    def __init__(self, rate: float, capacity: float | None = None, *, clock=time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else rate)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        #: seconds spent waiting for tokens so far
        self.waited = 0.0

    def delay_for(self, nbytes: int) -> float:
        """Take ``nbytes`` tokens (going into debt if needed) and return how long to wait first."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def consume(self, nbytes: int) -> None:
        """Wait until ``nbytes`` may be sent."""
        delay = self.delay_for(nbytes)
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)


class Bus:
    """The interface of a swarm's message bus. Implementations: `MemoryBus` (in-process).

    Every method is a coroutine or a plain call as documented; all raise `BusError` subclasses.
    """

    #: True when messages stay inside this process
    local = True

    async def publish(self, message: Message) -> None:
        """Deliver ``message`` to every current subscriber of its topic, waiting while one is full."""
        raise NotImplementedError

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order (a batched `publish`; transports may pipeline it)."""
        for message in messages:
            await self.publish(message)

    def subscribe(self, topic: str, *, max_buffer_size: int = 1024) -> MemoryReceiveChannel:
        """Return a receive channel that gets every message published on ``topic`` from now on."""
        raise NotImplementedError

    def open_queue(self, name: str, *, max_buffer_size: int = 1024, weight: Callable[[Any], int] | None = None,
                   ) -> tuple[MemorySendChannel, MemoryReceiveChannel]:
        """Return the (send, receive) ends of the work queue ``name``: each item to one receiver.

        ``weight`` is what an item counts for in ``max_buffer_size`` and in ``receive_batch``
        (see `open_memory_channel`).
        """
        raise NotImplementedError

    def statistics(self) -> dict[str, Any]:
        """Return counters: messages and bytes published per topic, subscribers, queues."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close every subscription and queue; later calls raise `ChannelClosedError`."""
        raise NotImplementedError


class MemoryBus(Bus):
    """The embedded in-process bus: asyncio, bounded queues, backpressure.

    A subscriber whose buffer is full makes ``publish`` wait (lossless backpressure), as a slow
    consumer of a bounded queue should; a subscriber that closed its channel is dropped.
    """

    local = True

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self._subscribers: dict[str, list[tuple[MemorySendChannel, MemoryReceiveChannel]]] = {}
        self._queues: dict[str, tuple[MemorySendChannel, MemoryReceiveChannel]] = {}
        self._published: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError(f"the bus of swarm `{self.name}` is closed", code="AF5105")

    async def publish(self, message: Message) -> None:
        self._check_open()
        topic = message.topic
        self._published[topic] = self._published.get(topic, 0) + 1
        self._bytes[topic] = self._bytes.get(topic, 0) + message.size
        subs = self._subscribers.get(topic)
        if not subs:
            return
        for pair in list(subs):
            send, receive = pair
            if receive._closed:
                subs.remove(pair)
                continue
            try:
                await send.send(message)
            except ChannelClosedError:
                if pair in subs:
                    subs.remove(pair)

    async def publish_many(self, messages: Sequence[Message]) -> None:
        self._check_open()
        subscribers = self._subscribers
        if any(subscribers.get(topic) for topic in {m.topic for m in messages}):
            for message in messages:
                await self.publish(message)
            return
        # Nobody listens: count them and move on (results that no one subscribed to).
        published, sizes = self._published, self._bytes
        topic = messages[0].topic if messages else None
        if all([m.topic == topic for m in messages]):  # the usual batch: one topic, counted at once
            if messages:
                published[topic] = published.get(topic, 0) + len(messages)
                sizes[topic] = sizes.get(topic, 0) + sum([len(m.payload) for m in messages])
            return
        for message in messages:
            topic = message.topic
            published[topic] = published.get(topic, 0) + 1
            sizes[topic] = sizes.get(topic, 0) + len(message.payload)

    def subscribe(self, topic: str, *, max_buffer_size: int = 1024) -> MemoryReceiveChannel:
        self._check_open()
        send, receive = open_memory_channel(max_buffer_size)
        self._subscribers.setdefault(topic, []).append((send, receive))
        return receive

    def open_queue(self, name: str, *, max_buffer_size: int = 1024, weight: Callable[[Any], int] | None = None,
                   ) -> tuple[MemorySendChannel, MemoryReceiveChannel]:
        self._check_open()
        if name not in self._queues:
            self._queues[name] = open_memory_channel(max_buffer_size, weight=weight)
        return self._queues[name]

    def statistics(self) -> dict[str, Any]:
        return {
            "published": dict(self._published),
            "bytes": dict(self._bytes),
            "subscribers": {t: len(s) for t, s in self._subscribers.items()},
            "queues": {n: pair[0].statistics() for n, pair in self._queues.items()},
        }

    async def aclose(self) -> None:
        self._closed = True
        for subs in self._subscribers.values():
            for send, _ in subs:
                send.close()
        for send, receive in self._queues.values():
            send.close()
        self._subscribers.clear()


def ensure_topic(topic: object) -> str:
    """Return ``topic`` if it is a usable topic name.

    Raises:
        BusError: AF5106 for an empty or non-string topic.
    """
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_CHARS:
        raise BusError(f"bad topic {topic!r}", code="AF5106", hint="topics are non-empty strings such as `task.completion`")
    return topic
