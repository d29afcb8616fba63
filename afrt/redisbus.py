"""The Redis transport of a swarm: connections that come back, the key layout, and `RedisBus`.

Three things live here, each once:

- `connect` opens a client for a ``redis://`` or ``rediss://`` URL (user and password for Redis
  ACL users) and checks it with a PING, retrying a bounded number of times; `retrying` runs one
  Redis operation and, when the connection drops or Redis restarts, reconnects with capped
  exponential backoff and full jitter (redis-py's `FullJitterBackoff`) until `RECONNECT_SECONDS`
  have passed. Both raise `afcore.errors.BusError` with a code of AF5110-AF5114, never a redis-py
  exception.
- `Keys` names every key of a swarm (``af:{swarm}:...``): the task streams, results streams,
  dead-letter streams, members and heartbeats that `afrt.worker` and `afrt.submit` share.
- `RedisBus` implements `afrt.bus.Bus` on Redis and passes tests/afrt/test_bus.py. A topic
  subscriber owns a stream that publishers fill through one Lua script, which refuses (and the
  publisher waits) while a subscriber holds ``max_buffer_size`` unread messages: the same lossless
  backpressure as the in-process bus, across processes. A work queue is a stream read through one
  consumer group, bounded by the summed weight of its items.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections import deque
from typing import Any, Awaitable, Callable, NamedTuple, Sequence
from urllib.parse import urlsplit

import numpy as np
import orjson
import redis
import redis.asyncio as aredis
from redis.asyncio.connection import parse_url
from redis.backoff import FullJitterBackoff
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

from afcore.errors import BusError, ChannelClosedError, MailboxFullError, UsageError

from .bus import Bus, ChannelStatistics, Message, open_memory_channel
from .busauth import AUTH_FIELD, Signer, Verifier, topic_channel
from .records import RecordBlock

__all__ = [
    "CONNECT_ATTEMPTS",
    "GROUP",
    "Keys",
    "PRIORITIES",
    "RECONNECT_SECONDS",
    "RESULTS_TTL",
    "RedisBus",
    "TASK_RECORDS",
    "Task",
    "connect",
    "decode_task",
    "retrying",
    "stream_after",
]

#: attempts at the first connection before a URL counts as unreachable (AF5110)
CONNECT_ATTEMPTS = 5
#: how long an established client keeps reconnecting before it gives up (AF5113)
RECONNECT_SECONDS = 60.0
#: the first and the longest pause between two reconnection attempts, in seconds
BACKOFF_BASE, BACKOFF_CAP = 0.05, 2.0
#: seconds a subscription lives without its subscriber renewing it (a dead one stops holding publishers back)
SUBSCRIPTION_TTL = 60
#: how long one blocking read waits before it looks again (ms): bounds how late a stop is noticed
POLL_MS = 200
#: the consumer group every queue and task stream is read through
GROUP = "workers"
#: the priorities of a task stream, highest first (workers read them in this order)
PRIORITIES = ("high", "normal", "low")
#: the most records one task entry carries (one XADD and one XREADGROUP entry per this many records)
TASK_RECORDS = 64
#: seconds a results stream lives after its last write (what expires a submission nobody reads)
RESULTS_TTL = 24 * 3600


class Task(NamedTuple):
    """One task entry: consecutive lines of a submission's input.

    Args:
        submission: the submission id.
        index: the index (0-based) of its first record among the submission's records.
        line: the 1-based line number of its first record (the id of a bare-array record).
        count: how many records (non-blank lines) it holds.
        data: the lines, blank ones included, joined by newlines.
    """

    submission: str
    index: int
    line: int
    count: int
    data: bytes

    def digest(self) -> str:
        """Return the task's digest: the first 32 hex digits of the sha256 of its lines. A worker
        puts it in the signed result entry (``t``), so that a submit can tell the results of its own
        tasks from those of a task someone else wrote under its submission id."""
        return hashlib.sha256(self.data).hexdigest()[:32]

    def fields(self) -> dict[str, Any]:
        """Return the stream fields of the task (what XADD sends)."""
        return {"s": self.submission, "n": self.index, "l": self.line, "c": self.count, "d": self.data}

    def singles(self) -> list[Task]:
        """Return one task per record (a task redelivered is split, so that a poison record is
        dead-lettered alone, not with its neighbours)."""
        out, r = [], 0
        for k, text in enumerate(self.data.split(b"\n")):
            if text.strip():
                out.append(Task(self.submission, self.index + r, self.line + k, 1, text))
                r += 1
        return out

    def record_ids(self) -> list[Any]:
        """Return the ids of the task's records, in order, as `af run` gives them: a record's
        ``id`` (string or integer), the line number of a bare array, else None (``null``)."""
        ids = []
        for k, text in enumerate(self.data.split(b"\n")):
            if not text.strip():
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                value = None
            rid = value.get("id") if isinstance(value, dict) else self.line + k if isinstance(value, list) else None
            ids.append(rid if isinstance(rid, (str, int)) and not isinstance(rid, bool) else None)
        return ids


def decode_task(fields: dict[bytes, bytes]) -> Task:
    """Return the task of a stream entry's fields.

    Raises:
        ValueError: when the fields are not those of a task.
    """
    try:
        return Task(fields[b"s"].decode(), int(fields[b"n"]), int(fields[b"l"]), int(fields[b"c"]), fields[b"d"])
    except (KeyError, UnicodeDecodeError, TypeError) as exc:
        raise ValueError(f"not a task entry: {exc}") from None


def check_url(url: str) -> str:
    """Return ``url`` if it names a Redis server.

    Raises:
        UsageError: AF5112 for anything but ``redis://`` and ``rediss://`` (and ``unix://``) URLs.
    """
    hint = "use redis://[USER:PASSWORD@]HOST:PORT/DB, or rediss:// for TLS"
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"`{url}` is not a Redis URL", code="AF5112", hint=hint)
    try:
        urlsplit(url).port  # noqa: B018 - raises for a port that is not a number
        parse_url(url)
    except ValueError as exc:
        raise UsageError(f"`{_where(url)}` is not a usable Redis URL: {exc}", code="AF5112", hint=hint) from None
    return url


def _where(url: str) -> str:
    """Return the URL without its user, password and options, for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def _client(url: str, *, decode: bool = False) -> aredis.Redis:
    # redis-py's own retries are off: `retrying` is the one place that decides how long to try.
    return aredis.Redis.from_url(check_url(url), socket_connect_timeout=2.0, socket_timeout=10.0,
                                 retry=None, retry_on_error=[], decode_responses=decode,
                                 health_check_interval=0)


async def connect(url: str, *, attempts: int = CONNECT_ATTEMPTS) -> aredis.Redis:
    """Open a client for ``url`` and check it with PING, trying ``attempts`` times with backoff.

    Args:
        url: ``redis://[USER:PASSWORD@]HOST:PORT/DB`` or ``rediss://...`` (TLS).
        attempts: connection attempts before giving up.

    Returns:
        The connected client (redis-py asyncio, binary replies).

    Raises:
        UsageError: AF5112 for a URL that is not a Redis URL.
        BusError: AF5110 when no server answers after ``attempts`` tries; AF5111 when the server
            refuses the user or password.
    """
    client = _client(url)
    backoff = FullJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE * 4)
    for attempt in range(attempts):
        try:
            await client.ping()
            return client
        except (AuthenticationError, ResponseError) as exc:
            await client.aclose()
            raise BusError(f"the Redis server at {_where(url)} refused the login: {exc}", code="AF5111",
                           hint="check the user and password in the URL (Redis ACL users)") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                await asyncio.sleep(backoff.compute(attempt))
    await client.aclose()
    raise BusError(f"no Redis server answers at {_where(url)} ({attempts} attempts): {last}", code="AF5110",
                   hint="start redis-server there, or pass the right --bus URL")


class Reconnects:
    """Counts the reconnections of one process (what the ``af_reconnects_total`` metric shows)."""

    count = 0


async def retrying(operation: Callable[[], Awaitable[Any]], *, what: str, deadline: float | None = None) -> Any:
    """Run ``operation``; when the connection drops, retry with capped, jittered exponential backoff.

    Every retry counts in `Reconnects.count`. An operation that is retried must be safe to run
    twice (the callers' writes are: results carry their task's index, and tasks are acknowledged
    only after their results).

    Args:
        operation: makes and awaits the Redis call(s) afresh each time.
        what: what the operation does, for the error message.
        deadline: seconds to keep trying after the first failure (default `RECONNECT_SECONDS`).

    Raises:
        BusError: AF5113 when Redis stays unreachable for ``deadline`` seconds; AF5111 when it
            refuses the login after a restart; AF5115 when it answers with an error (other than
            NOGROUP and BUSYGROUP, which the caller handles as `redis.exceptions.ResponseError`).
    """
    backoff = FullJitterBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE)
    failures, give_up = 0, None
    deadline = RECONNECT_SECONDS if deadline is None else deadline
    while True:
        try:
            return await operation()
        except AuthenticationError as exc:
            raise BusError(f"Redis refused the login while trying to {what}: {exc}", code="AF5111") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # a cancellation that redis-py turned into an error
            now = time.monotonic()
            give_up = give_up or now + deadline
            if now >= give_up:
                raise BusError(f"lost the connection to Redis and could not {what} for {deadline:.0f} s: {exc}",
                               code="AF5113", hint="check that redis-server runs and is reachable") from None
            Reconnects.count += 1
            await asyncio.sleep(backoff.compute(failures))
            failures += 1
        except ResponseError as exc:
            text = str(exc)
            if text.startswith("LOADING"):  # Redis restarted and is reading its append-only file
                await asyncio.sleep(BACKOFF_BASE)
                continue
            if text.startswith(("NOGROUP", "BUSYGROUP")):
                raise  # the caller creates the consumer group (again)
            raise BusError(f"Redis answered an error while trying to {what}: {text}", code="AF5115",
                           hint="check the server's version (7.0 or later) and the user's ACL permissions",
                           ) from None


def stream_after(entry_id: bytes | str) -> str:
    """Return the stream id just after ``entry_id`` (what MINID takes to keep nothing up to it)."""
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


class Keys:
    """The names of a swarm's keys, all under ``af:{swarm}:`` (docs/swarm.md lists them)."""

    def __init__(self, swarm: str) -> None:
        self.swarm = swarm
        self.prefix = f"af:{swarm}:"

    def tasks(self, agent: str, priority: str) -> str:
        """Return the task stream of ``agent`` at ``priority``."""
        return f"{self.prefix}tasks:{agent}:{priority}"

    def dead(self, agent: str, priority: str) -> str:
        """Return the dead-letter stream of ``agent`` at ``priority``."""
        return f"{self.prefix}dead:{agent}:{priority}"

    def results(self, submission: str) -> str:
        """Return the results stream of a submission."""
        return f"{self.prefix}results:{submission}"

    def submission(self, submission: str) -> str:
        """Return the hash that describes a submission (agent, priority, sent, total, written)."""
        return f"{self.prefix}submission:{submission}"

    def heartbeat(self, agent_id: str) -> str:
        """Return the heartbeat key of a worker (it expires when the worker stops heartbeating)."""
        return f"{self.prefix}heartbeat:{agent_id}"

    @property
    def members(self) -> str:
        """The hash of members: agent id -> JSON description."""
        return f"{self.prefix}members"

    @property
    def agents(self) -> str:
        """The set of agent names that have task streams."""
        return f"{self.prefix}agents"


# Publishes messages to every live subscriber of their topics, or to none while one is full.
# ARGV: key prefix, then (topic, sender, payload, signature envelope or "") per message.
# Returns 1 when published, 0 when full.
_PUBLISH = """
local prefix = ARGV[1]
local n = (#ARGV - 1) / 4
local subs_of, load = {}, {}
for i = 0, n - 1 do
  local topic = ARGV[2 + 4 * i]
  if subs_of[topic] == nil then
    local flat = redis.call('HGETALL', prefix .. 'subs:' .. topic)
    local list = {}
    for j = 1, #flat, 2 do
      local sid, cap = flat[j], tonumber(flat[j + 1])
      if redis.call('EXISTS', prefix .. 'alive:' .. sid) == 0 then
        redis.call('HDEL', prefix .. 'subs:' .. topic, sid)
        redis.call('DEL', prefix .. 'sub:' .. sid)
      else
        table.insert(list, {sid, cap})
        if load[sid] == nil then load[sid] = redis.call('XLEN', prefix .. 'sub:' .. sid) end
      end
    end
    subs_of[topic] = list
  end
  for _, s in ipairs(subs_of[topic]) do
    load[s[1]] = load[s[1]] + 1
    if load[s[1]] > s[2] and load[s[1]] > 1 then return 0 end
  end
end
for i = 0, n - 1 do
  local topic, sender, payload, auth = ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  for _, s in ipairs(subs_of[topic]) do
    if auth == '' then
      redis.call('XADD', prefix .. 'sub:' .. s[1], '*', 's', sender, 'p', payload)
    else
      redis.call('XADD', prefix .. 'sub:' .. s[1], '*', 's', sender, 'p', payload, 'a', auth)
    end
  end
  redis.call('HINCRBY', prefix .. 'published', topic, 1)
  redis.call('HINCRBY', prefix .. 'bytes', topic, #payload)
end
return 1
"""

# Adds an item to a queue unless its weight would pass the bound (an empty queue takes any item).
# KEYS: stream, load counter, closed flag. ARGV: weight, bound, payload. Returns 1, 0 (full) or -1 (closed).
_ENQUEUE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local load = tonumber(redis.call('GET', KEYS[2]) or '0')
local w = tonumber(ARGV[1])
if load > 0 and load + w > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[2], w)
redis.call('XADD', KEYS[1], '*', 'w', ARGV[1], 'd', ARGV[3])
return 1
"""


def encode_item(item: Any) -> bytes:
    """Return the bytes of a queue item: a `RecordBlock`, or anything orjson encodes."""
    if isinstance(item, RecordBlock):
        array = np.ascontiguousarray(item.array, dtype="<f4")
        fields = [item.seqs, item.ids, item.lines, array.shape[1] if array.ndim == 2 else 0]
        if item.targets is not None:  # the records' targets (update_weights), only when some record has one
            fields.append(item.targets)
        head = orjson.dumps(fields)
        return b"B" + head + b"\n" + array.tobytes()
    return b"J" + orjson.dumps(item)


def decode_item(data: bytes) -> Any:
    """Return the item `encode_item` encoded."""
    if data[:1] == b"B":
        head, _, body = data[1:].partition(b"\n")
        seqs, ids, lines, width, *targets = orjson.loads(head)
        array = np.frombuffer(body, dtype="<f4").reshape(len(seqs), width).astype(np.float32)
        return RecordBlock(seqs, ids, lines, array, targets[0] if targets else None)
    return orjson.loads(data[1:])


class RedisBus(Bus):
    """A swarm bus on Redis: topics and work queues shared by every process of swarm ``swarm``.

    Args:
        url: the Redis URL (``redis://`` or ``rediss://``, with a user and password if needed).
        swarm: the swarm name; every key lives under ``af:{swarm}:``.
        local_queues: keep `open_queue` in this process. A worker (`afrt.worker`) does: its
            replicas share an in-process queue that its task streams feed, so records cross
            Redis once.
        signer: signs every message this bus publishes (`afrt.busauth.Signer`; a worker's
            identity), or None to publish unsigned messages.
        verifier: drops every message a subscription of this bus receives that it does not
            accept (`afrt.busauth.Verifier`: ``--admit``), or None to take every message.

    Sync methods (`subscribe`, `open_queue`, `statistics`) use a short blocking call on a second,
    synchronous client; the others are coroutines.
    """

    local = False

    def __init__(self, url: str, swarm: str = "default", *, local_queues: bool = False, signer: Signer | None = None,
                 verifier: Verifier | None = None) -> None:
        self.url = check_url(url)
        self.signer, self.verifier = signer, verifier
        self.name = swarm
        self.keys = Keys(swarm)
        self.local_queues = local_queues
        self.id = uuid.uuid4().hex[:12]
        self._client: aredis.Redis | None = None
        self._sync = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self._publish_script: Any = None
        self._subscriptions: list[RedisSubscription] = []
        self._queues: dict[str, tuple[Any, Any]] = {}
        self._closed = False
        #: how long a publish keeps reconnecting (None: `RECONNECT_SECONDS`); a worker whose Redis
        #: is gone for good shortens it, so that its shutdown workflow does not wait that long again
        self.reconnect_seconds: float | None = None

    @property
    def client(self) -> aredis.Redis:
        """The asyncio client (created on first use, in the running loop)."""
        if self._client is None:
            self._client = _client(self.url)
        return self._client

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosedError(f"the bus of swarm `{self.name}` is closed", code="AF5105")

    def _sync_call(self, what: str, function: Callable[[], Any]) -> Any:
        try:
            return function()
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise BusError(f"cannot {what} on Redis at {_where(self.url)}: {exc}", code="AF5114") from None

    async def publish(self, message: Message) -> None:
        """Deliver ``message`` to every live subscriber of its topic, waiting while one is full."""
        await self.publish_many([message])

    async def publish_many(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` in order with one script call (one at a time when a subscriber is full)."""
        self._check_open()
        if not messages:
            return
        if self._publish_script is None:
            self._publish_script = self.client.register_script(_PUBLISH)
        args: list[Any] = [self.keys.prefix]
        signer = self.signer
        for m in messages:  # signed once: a retry sends the same entries (a receiver drops the second copy)
            auth = (signer.sign(topic_channel(self.keys.prefix, m.topic), {"s": m.sender, "p": m.payload})[AUTH_FIELD]
                    if signer is not None else b"")
            args += [m.topic, m.sender, m.payload, auth]
        pause = 0.001
        while True:
            done = await retrying(lambda: self._publish_script(keys=[], args=args), what="publish",
                                  deadline=self.reconnect_seconds)
            if done:
                return
            if len(messages) > 1:  # some subscriber has room for fewer: one at a time, each waiting
                for message in messages:
                    await self.publish_many([message])
                return
            await asyncio.sleep(pause)  # a subscriber is full: lossless backpressure
            pause = min(pause * 2, 0.05)
            self._check_open()

    def subscribe(self, topic: str, *, max_buffer_size: int = 1024) -> RedisSubscription:
        """Return a channel that gets every message published on ``topic`` (in any process) from now on."""
        self._check_open()
        subscription = RedisSubscription(self, topic, max_buffer_size)
        self._sync_call("subscribe", subscription.register)
        self._subscriptions.append(subscription)
        return subscription

    def open_queue(self, name: str, *, max_buffer_size: int = 1024, weight: Callable[[Any], int] | None = None,
                   ) -> tuple[Any, Any]:
        """Return the (send, receive) ends of work queue ``name``; each item goes to one receiver
        in any process (a consumer group). With ``local_queues`` it is an in-process channel."""
        self._check_open()
        if name not in self._queues:
            if self.local_queues:
                self._queues[name] = open_memory_channel(max_buffer_size, weight=weight)
            else:
                queue = _RedisQueue(self, name, max_buffer_size, weight)
                self._sync_call("open a queue", queue.create)
                self._queues[name] = (RedisQueueSend(queue), RedisQueueReceive(queue))
        return self._queues[name]

    def statistics(self) -> dict[str, Any]:
        """Return the swarm's counters from Redis: messages and bytes per topic, subscribers, queues."""
        prefix, sync = self.keys.prefix, self._sync

        def read() -> dict[str, Any]:
            published = {k.decode(): int(v) for k, v in sync.hgetall(prefix + "published").items()}
            sizes = {k.decode(): int(v) for k, v in sync.hgetall(prefix + "bytes").items()}
            subscribers = {t: sync.hlen(prefix + "subs:" + t) for t in published}
            return {"published": published, "bytes": sizes, "subscribers": subscribers,
                    "queues": {n: pair[0].statistics() for n, pair in self._queues.items()}}

        return self._sync_call("read statistics", read)

    async def aclose(self) -> None:
        """Close every subscription and queue of this bus object, and its connections."""
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        for send, receive in self._queues.values():
            send.close()
        if self._client is not None:
            await self._client.aclose()
        self._sync.close()


class _Receiving:
    """``async for`` over a receiving end: `receive` until the end of the channel."""

    async def receive(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except ChannelClosedError:
            raise StopAsyncIteration from None


class RedisSubscription(_Receiving):
    """The receiving end of `RedisBus.subscribe`: a stream only this subscriber reads.

    It has the methods of `afrt.bus.MemoryReceiveChannel` that subscribers use.
    """

    def __init__(self, bus: RedisBus, topic: str, max_buffer_size: int) -> None:
        self.bus, self.topic, self.max_buffer_size = bus, topic, max_buffer_size
        self.sid = f"{bus.id}.{len(bus._subscriptions)}"
        self.stream = f"{bus.keys.prefix}sub:{self.sid}"
        self._channel = topic_channel(bus.keys.prefix, topic)  # what publishers sign for
        self._alive = f"{bus.keys.prefix}alive:{self.sid}"
        self._last = b"0-0"
        self._renewed = 0.0
        self._closed = False
        self.received = 0

    def register(self) -> None:
        """Record the subscription in Redis (sync: `Bus.subscribe` is a plain call)."""
        pipe = self.bus._sync.pipeline()
        pipe.set(self._alive, 1, ex=SUBSCRIPTION_TTL)
        pipe.hset(f"{self.bus.keys.prefix}subs:{self.topic}", self.sid, self.max_buffer_size)
        pipe.execute()
        self._renewed = time.monotonic()

    async def receive(self) -> Message:
        """Take the next message, waiting for one.

        Raises:
            ChannelClosedError: AF5101 once this subscription or its bus is closed.
        """
        client = self.bus.client
        while True:
            if self._closed or self.bus._closed:
                raise ChannelClosedError("receive on a closed subscription")
            if time.monotonic() - self._renewed > SUBSCRIPTION_TTL / 3:
                await retrying(lambda: client.set(self._alive, 1, ex=SUBSCRIPTION_TTL), what="renew a subscription")
                self._renewed = time.monotonic()
            reply = await retrying(lambda: client.xread({self.stream: self._last}, count=1, block=POLL_MS),
                                   what="receive a message")
            if reply:
                entry_id, fields = reply[0][1][0]
                self._last = entry_id
                await retrying(lambda: client.xdel(self.stream, entry_id), what="receive a message")
                verifier = self.bus.verifier
                if verifier is not None and verifier.check(self._channel, fields) is not None:
                    continue  # counted and warned about by the verifier
                self.received += 1
                return Message(self.topic, fields[b"s"].decode(), fields[b"p"])

    async def receive_batch(self, max_items: int, *, wait: float = 0.0) -> list[Message]:
        """Take up to ``max_items`` messages: wait for the first, then take what is waiting."""
        batch = [await self.receive()]
        while len(batch) < max_items and self.statistics().current_buffer_used:
            batch.append(await self.receive())
        return batch

    def statistics(self) -> ChannelStatistics:
        """Return the unread messages of this subscription (from Redis)."""
        used = self.bus._sync_call("read statistics", lambda: self.bus._sync.xlen(self.stream))
        return ChannelStatistics(used, self.max_buffer_size, 1, 0 if self._closed else 1, 0, 0, 0, self.received)

    def close(self) -> None:
        """Unsubscribe: publishers stop writing to (and waiting for) this subscription."""
        if self._closed:
            return
        self._closed = True
        try:
            pipe = self.bus._sync.pipeline()
            pipe.hdel(f"{self.bus.keys.prefix}subs:{self.topic}", self.sid)
            pipe.delete(self.stream, self._alive)
            pipe.execute()
        except (ConnectionError, TimeoutError, OSError):
            pass  # the subscription expires on its own (SUBSCRIPTION_TTL)


class _RedisQueue:
    """The shared state of a queue's two ends: a stream, its load counter, its senders, its end flag."""

    def __init__(self, bus: RedisBus, name: str, bound: int, weight: Callable[[Any], int] | None) -> None:
        prefix = bus.keys.prefix
        self.bus, self.name, self.bound, self.weight = bus, name, bound, weight or (lambda item: 1)
        self.stream, self.load, self.ended = f"{prefix}queue:{name}", f"{prefix}load:{name}", f"{prefix}ended:{name}"
        self.senders = f"{prefix}senders:{name}"
        self.consumer = f"{bus.id}.{os.getpid()}"
        self.script: Any = None
        self.sync_script = bus._sync.register_script(_ENQUEUE)

    def create(self) -> None:
        sync = self.bus._sync
        try:
            sync.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        sync.incr(self.senders)


class RedisQueueSend:
    """The sending end of a `RedisBus` queue (the methods of `afrt.bus.MemorySendChannel`)."""

    def __init__(self, queue: _RedisQueue) -> None:
        self._queue = queue
        self._closed = False

    def _args(self, item: Any) -> tuple[list[str], list[Any]]:
        q = self._queue
        if self._closed or q.bus._closed:
            raise ChannelClosedError("send on a closed channel", hint="do not send after close()")
        return [q.stream, q.load, q.ended], [q.weight(item), q.bound, encode_item(item)]

    def send_nowait(self, item: Any) -> None:
        """Add ``item`` without waiting.

        Raises:
            MailboxFullError: AF5102 when its weight does not fit.
            ChannelClosedError: AF5101 when this end is closed, AF5103 when the queue has ended.
        """
        keys, args = self._args(item)
        result = self._queue.bus._sync_call("send", lambda: self._queue.sync_script(keys=keys, args=args))
        self._check(result)

    @staticmethod
    def _check(result: int) -> None:
        if result == 0:
            raise MailboxFullError("mailbox full")
        if result < 0:
            raise ChannelClosedError("the queue has ended: every sender closed", code="AF5103")

    async def send(self, item: Any) -> None:
        """Add ``item``, waiting while the queue's load leaves no room for its weight (backpressure)."""
        q = self._queue
        if q.script is None:
            q.script = q.bus.client.register_script(_ENQUEUE)
        keys, args = self._args(item)
        pause = 0.001
        while True:
            result = await retrying(lambda: q.script(keys=keys, args=args), what="send to a queue")
            if result != 0:
                return self._check(result)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            keys, args = self._args(item)  # raises once the channel closed while waiting

    async def send_many(self, items: Any) -> None:
        """Send each item in order, waiting for room as needed."""
        for item in items:
            await self.send(item)

    def statistics(self) -> ChannelStatistics:
        """Return the queue's load (summed weights of the items not yet taken)."""
        q = self._queue
        load = q.bus._sync_call("read statistics", lambda: int(q.bus._sync.get(q.load) or 0))
        return ChannelStatistics(load, q.bound, 1, 1, 0, 0, 0, 0)

    def close(self) -> None:
        """Close this end; when the last sender of the queue closes, receivers get the rest, then the end."""
        if self._closed:
            return
        self._closed = True
        q, sync = self._queue, self._queue.bus._sync
        try:
            if sync.decr(q.senders) <= 0:
                sync.set(q.ended, 1)
        except (ConnectionError, TimeoutError, OSError):
            pass


class RedisQueueReceive(_Receiving):
    """The receiving end of a `RedisBus` queue; tasks of one process share it, and each item is
    taken once in the whole swarm (XREADGROUP; XACK and XDEL once taken)."""

    def __init__(self, queue: _RedisQueue) -> None:
        self._queue = queue
        self._buffer: deque = deque()  # (entry id, weight, item) read but not yet taken
        self._closed = False
        self.received = 0

    async def _fetch(self, count: int, block_ms: int | None) -> bool:
        q = self._queue
        client = q.bus.client
        reply = await retrying(lambda: client.xreadgroup(GROUP, q.consumer, {q.stream: ">"}, count=count,
                                                         block=block_ms), what="receive from a queue")
        for entry_id, fields in (reply[0][1] if reply else []):
            self._buffer.append((entry_id, int(fields[b"w"]), decode_item(fields[b"d"])))
        return bool(reply and reply[0][1])

    async def _take(self, max_items: int) -> list[Any]:
        """Take buffered items while their weights stay within ``max_items`` (the first always)."""
        taken, ids, total = [], [], 0
        while self._buffer and (not taken or total + self._buffer[0][1] <= max_items):
            entry_id, weight, item = self._buffer.popleft()
            taken.append(item)
            ids.append(entry_id)
            total += weight
        if ids:
            q = self._queue

            def acknowledge() -> Any:  # a pipeline is emptied by a failed execute: build it afresh
                pipe = q.bus.client.pipeline(transaction=True)
                return pipe.xack(q.stream, GROUP, *ids).xdel(q.stream, *ids).decrby(q.load, total).execute()

            await retrying(acknowledge, what="acknowledge queue items")
            self.received += len(taken)
        return taken

    async def receive_batch(self, max_items: int, *, wait: float = 0.0) -> list[Any]:
        """Take up to ``max_items`` of weight: wait for the first, then at most ``wait`` s for more.

        Raises:
            ChannelClosedError: AF5104 at the end of the queue, AF5101 when this end is closed.
        """
        q = self._queue
        while not self._buffer:
            if self._closed or q.bus._closed:
                raise ChannelClosedError("receive on a closed channel")
            if not await self._fetch(max_items, POLL_MS):
                if await q.bus.client.exists(q.ended) and not await self._fetch(max_items, None):
                    raise ChannelClosedError("end of channel: every sender closed", code="AF5104")
        deadline = time.monotonic() + wait
        while sum([w for _, w, _ in self._buffer]) < max_items and time.monotonic() < deadline:
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining < 1 or not await self._fetch(max_items, remaining):
                break
        return await self._take(max_items)

    async def receive(self) -> Any:
        """Take one item, waiting for one."""
        return (await self.receive_batch(1))[0]

    def statistics(self) -> ChannelStatistics:
        """Return the queue's load (summed weights of the items not yet taken)."""
        q = self._queue
        load = q.bus._sync_call("read statistics", lambda: int(q.bus._sync.get(q.load) or 0))
        return ChannelStatistics(load, q.bound, 1, 1, 0, 0, 0, self.received)

    def close(self) -> None:
        """Close this end (items it read but did not hand out stay pending for the group)."""
        self._closed = True
