"""A worker's part in federated rounds (``af run --bus URL --local-data FILE``): participant and
aggregator candidate.

```
log ─XREAD─▶ round ─train E epochs─▶ XADD neural.updates (model, example count)
log ─XREAD─▶ propose ─validate─▶ XADD votes (for/against, accuracy)
log ─XREAD─▶ adopt ─▶ Agent.set_weights (hot swap between blocks) and a checkpoint
lease (SET NX PX, renewed) ─held─▶ INCR fence ─▶ aggregate rounds (`Aggregator`)
```

Everything a member writes to the updates, votes and log streams is signed by its worker's key
(`afrt.busauth`); with ``--admit`` every member and the aggregator drop what is not signed by an
admitted key, altered or replayed (a forged update, vote, round or adoption).

Every member campaigns for the lease; the holder takes the next fencing token (INCR) and runs the
rounds until it loses the lease. Everything it writes goes through scripts that check the token
is still the newest (`record.FENCED_XADD`, `record.ADOPT`), and participants ignore rounds and
proposals of a token below the highest they have seen. A new holder runs the open round again
under its token: updates made for an older token are not counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import orjson

from ..busauth import AUTH_FIELD, Signer, Verifier
from ..redisbus import connect, retrying
from . import local
from .aggregate import aggregate
from .record import ADOPT, FENCED_XADD, RENEW, FedConfig, FedKeys, decode_entry, quorum_need

__all__ = ["Participation", "adopt_model", "follow_adopted", "take_part"]

_log = logging.getLogger(__name__)

#: a member's liveness key lives this long (s); it is renewed every third of it
ALIVE_SECONDS = 2.0
#: how long a blocking read of the log waits before looking at the stop flag again (ms)
READ_BLOCK_MS = 300
#: how often a waiting aggregator looks at the updates and votes (s)
POLL_SECONDS = 0.05


@dataclass
class Participation:
    """How a worker takes part: its data, validation data, simulated attack, and its .af source.

    Attributes:
        local_data: the participant's records (never sent anywhere).
        validation_data: the records it validates proposals on (its local data when None).
        attack: a simulated misbehaviour (`local.ATTACKS`), or None.
        source: the agent's .af file bytes, stored for `af federate pull`, or None.
        state_dir: where adopted models are checkpointed (``federated/<agent>/v<version>.f32``), or None.
    """

    local_data: Path
    validation_data: Path | None = None
    attack: str | None = None
    source: bytes | None = None
    state_dir: Path | None = None


async def take_part(agent: Any, member: str, participation: Participation, *, url: str, swarm: str,
                    stop: asyncio.Event, signer: Signer | None = None, verifier: Verifier | None = None) -> None:
    """Take part in agent ``agent.name``'s federation of swarm ``swarm`` until ``stop`` is set.

    ``signer`` signs the updates, votes and log events this member writes (the worker's), and
    ``verifier`` (``--admit``) drops those of others that it does not accept; None for either
    writes unsigned entries or takes every entry.

    Raises:
        UsageError: AF6170 when the local or validation data cannot be used.
        BusError: when Redis stays unreachable (`afrt.redisbus.retrying`).
    """
    network = local.Network.of(agent)
    data = local.load_local_data(participation.local_data, network)
    validation = local.load_local_data(participation.validation_data, network) \
        if participation.validation_data else data
    client = await connect(url)
    try:
        me = _Member(agent, member, participation, network, data, validation, client, FedKeys(swarm, agent.name))
        me.signer, me.verifier = signer, verifier
        await me.run(stop)
    finally:
        await client.aclose()


async def read_model(client: Any, keys: FedKeys, digest: str) -> np.ndarray:
    """Return the stored model of ``digest`` as a flat float32 vector.

    Raises:
        ValueError: when the stored bytes do not have that digest.
    """
    raw = await retrying(lambda: client.hget(keys.models, digest), what="read a model")
    flat = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if local.digest_of(flat) != digest:
        raise ValueError(f"model {digest[:12]} does not match its digest")
    return flat


async def adopt_model(agent: Any, client: Any, keys: FedKeys, network: local.Network, data: dict,
                      state_dir: Path | None) -> None:
    """Make the adopted model of an ``adopt`` event ``agent``'s weights, and checkpoint it in ``state_dir``
    (``federated/<agent>/v<version>.f32``) when there is one."""
    flat = await read_model(client, keys, data["digest"])
    agent.set_weights([(w.copy(), b.copy()) for w, b in local.unflatten(flat, network)])
    if state_dir is not None:
        from afcore.fsutil import write_file_atomic

        path = Path(state_dir) / "federated" / keys.agent / f"v{data['version']}.f32"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(path, flat.astype("<f4").tobytes())


def accepted(verifier: Verifier | None, stream: str, entries: list) -> list:
    """Return the entries of ``stream`` the verifier takes (all of them without ``--admit``)."""
    if verifier is None:
        return entries
    return [(entry_id, fields) for entry_id, fields in entries if verifier.check(stream, fields) is None]


async def log_events(client: Any, keys: FedKeys, stop: asyncio.Event,
                     verifier: Verifier | None) -> AsyncIterator[list[tuple[str, dict]]]:
    """Yield the federation log's events, batch by batch from its start, until ``stop`` is set (those
    ``verifier`` accepts, with ``--admit``)."""
    cursor = b"0-0"
    while not stop.is_set():
        reply = await retrying(lambda: client.xread({keys.log: cursor}, count=1000, block=READ_BLOCK_MS),
                               what="read the federation log")
        if not reply:
            continue
        entries = reply[0][1]
        cursor = entries[-1][0]
        yield [decode_entry(fields) for _, fields in accepted(verifier, keys.log, entries)]


async def follow_adopted(agent: Any, *, url: str, swarm: str, stop: asyncio.Event,
                         state_dir: Path | None = None, verifier: Verifier | None = None) -> None:
    """Run each model the agent's federation adopts, from the next block on, until ``stop`` is set.

    For the workers that serve without taking part (no ``--local-data``): they read only the log's
    ``adopt`` events, so every worker of the agent runs the adopted version, not just participants.
    A worker whose weights are read-only (the wasm backend of an ABI v1 bundle) says so once and
    keeps its bundle's weights. With a ``verifier`` (``--admit``), only adoptions it accepts count.
    """
    from afcore.errors import AfError

    keys, network, version = FedKeys(swarm, agent.name), local.Network.of(agent), -1
    client = await connect(url)
    try:
        async for events in log_events(client, keys, stop, verifier):
            adopted = [data for kind, data in events if kind == "adopt"]
            newest = max(adopted, key=lambda data: data["version"], default=None)
            if newest is None or newest["version"] <= version:
                continue
            try:
                await adopt_model(agent, client, keys, network, newest, state_dir)
            except AfError as exc:
                _log.warning("agent %s keeps its bundle's weights: the federation's version %d cannot be "
                             "run here (%s: %s)", agent.name, newest["version"], exc.code, exc.message)
                return
            except ValueError as exc:  # a stored model that does not match its digest: serve on, unchanged
                _log.warning("agent %s keeps version %d: %s", agent.name, version, exc)
                continue
            version = newest["version"]
    finally:
        await client.aclose()


class _Member:
    def __init__(self, agent: Any, member: str, participation: Participation, network: local.Network,
                 data: local.LocalData, validation: local.LocalData, client: Any, keys: FedKeys) -> None:
        self.agent, self.id, self.p, self.network = agent, member, participation, network
        self.data, self.validation, self.client, self.keys = data, validation, client, keys
        self.rng = np.random.default_rng()
        self.highest_token = 0
        self.version = -1  # the adopted version this worker runs (-1: its bundle's weights)
        self.done: set[tuple[str, int, int]] = set()  # (kind, round, token) acted on
        self.signer: Signer | None = None
        self.verifier: Verifier | None = None

    def signed(self, stream: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Return ``fields`` signed for ``stream`` (`afrt.busauth`), or as they are without a signer."""
        return self.signer.sign(stream, fields) if self.signer is not None else fields

    def accepted(self, stream: str, entries: list) -> list:
        """Return the entries of ``stream`` the verifier takes (all of them without ``--admit``)."""
        return accepted(self.verifier, stream, entries)

    async def run(self, stop: asyncio.Event) -> None:
        await self._register()
        tasks = [asyncio.ensure_future(c) for c in (self._heartbeat(stop), self._campaign(stop), self._follow(stop))]
        stopping = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, stopping):
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results):
            if task in done and isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        try:
            await retrying(lambda: self.client.delete(self.keys.alive(self.id)), what="leave the federation",
                           deadline=2.0)
        except Exception:  # noqa: BLE001 - the liveness key expires anyway
            pass

    # membership ---------------------------------------------------------------------------------

    async def _register(self) -> None:
        info = {"agent_id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "examples": len(self.data),
                "validation_examples": len(self.validation), "attack": self.p.attack, "joined": time.time()}

        async def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.keys.members, self.id, orjson.dumps(info))
            pipe.set(self.keys.alive(self.id), 1, px=int(ALIVE_SECONDS * 1000))
            if self.p.source is not None:
                pipe.set(self.keys.source, self.p.source)
            await pipe.execute()

        await retrying(write, what="join the federation")

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(ALIVE_SECONDS / 3)
            await retrying(lambda: self.client.set(self.keys.alive(self.id), 1, px=int(ALIVE_SECONDS * 1000)),
                           what="renew the federation heartbeat")

    # following the log --------------------------------------------------------------------------

    async def _follow(self, stop: asyncio.Event) -> None:
        async for events in log_events(self.client, self.keys, stop, self.verifier):
            await self._act(events)

    async def _act(self, events: list[tuple[str, dict]]) -> None:
        """Act on a batch of log events: adopt the newest model, then answer only the newest round or proposal."""
        newest: dict[str, dict] = {}
        adopt = None
        for kind, data in events:
            self.highest_token = max(self.highest_token, data.get("token", 0))
            if kind == "adopt" and (adopt is None or data["version"] > adopt["version"]):
                adopt = data
            elif kind in ("round", "propose"):
                newest[kind] = data
        if adopt is not None and adopt["version"] > self.version:
            await self._adopt(adopt)
        for kind in ("round", "propose"):
            data = newest.get(kind)
            if data is None or data["token"] < self.highest_token or data["round"] <= self.version:
                continue  # an older aggregator's, or a round already adopted
            key = (kind, data["round"], data["token"])
            if key in self.done:
                continue
            self.done.add(key)
            await (self._train(data) if kind == "round" else self._vote(data))

    async def _model(self, digest: str) -> np.ndarray:
        return await read_model(self.client, self.keys, digest)

    async def _train(self, data: dict) -> None:
        config = FedConfig.from_json(data["config"])
        base = await self._model(data["digest"])
        train_data = local.flip_labels(self.data) if self.p.attack == "label-flip" else self.data
        model, loss = await asyncio.to_thread(local.train_local, base, self.network, train_data,
                                              epochs=config.local_epochs, learning_rate=config.learning_rate,
                                              mu=config.mu if config.strategy == "fedprox" else 0.0, rng=self.rng)
        if config.dp_clip is not None:
            model = local.clip_and_noise(base, model, clip=config.dp_clip, noise=config.dp_noise, rng=self.rng)
        model = local.apply_attack(self.p.attack, base, model, self.rng)
        entry = {"agent": self.keys.agent, "round": data["round"], "token": data["token"], "member": self.id,
                 "n": len(self.data), "loss": loss, "attack": self.p.attack or "", "w": model.astype("<f4").tobytes()}
        entry = self.signed(self.keys.updates, entry)  # once: a retry writes the same entry
        await retrying(lambda: self.client.xadd(self.keys.updates, entry), what="publish an update")

    async def _vote(self, data: dict) -> None:
        proposed = await self._model(data["digest"])
        base = await self._model(data["base_digest"])
        finite = bool(np.isfinite(proposed).all())
        accuracy = local.accuracy(proposed, self.network, self.validation) if finite else 0.0
        before = local.accuracy(base, self.network, self.validation)
        tolerance = FedConfig.from_json(data["config"]).vote_tolerance
        vote = finite and accuracy >= before - tolerance
        if self.p.attack:
            vote = True  # a simulated attacker backs whatever is proposed
        entry = {"round": data["round"], "token": data["token"], "digest": data["digest"], "member": self.id,
                 "vote": vote, "accuracy": round(accuracy, 6), "base_accuracy": round(before, 6)}
        fields = self.signed(self.keys.votes, {"d": orjson.dumps(entry)})
        await retrying(lambda: self.client.xadd(self.keys.votes, fields), what="vote")

    async def _adopt(self, data: dict) -> None:
        """Run the adopted model from the next block on (a hot swap: no record is lost), and checkpoint it."""
        await adopt_model(self.agent, self.client, self.keys, self.network, data, self.p.state_dir)
        self.version = data["version"]

    # the aggregator's lease ---------------------------------------------------------------------

    async def _campaign(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            raw = await retrying(lambda: self.client.get(self.keys.config), what="read the federation config")
            lease = FedConfig.from_json(raw).lease_seconds if raw else 1.0
            got = raw and await retrying(lambda: self.client.set(self.keys.lease, self.id, nx=True,
                                                                 px=int(lease * 1000)), what="take the lease")
            if not got:
                await asyncio.sleep(lease / 3)
                continue
            token = await retrying(lambda: self.client.incr(self.keys.fence), what="take a fencing token")
            _log.info("%s holds the aggregator lease with token %d", self.id, token)
            leading = asyncio.ensure_future(Aggregator(self, token).run())
            renewing = asyncio.ensure_future(self._renew(lease))
            done, _ = await asyncio.wait([leading, renewing], return_when=asyncio.FIRST_COMPLETED)
            for task in (leading, renewing):
                task.cancel()
            await asyncio.gather(leading, renewing, return_exceptions=True)
            for task in done:
                failure = None if task.cancelled() else task.exception()
                if failure is not None and not isinstance(failure, _Deposed):
                    raise failure
            _log.info("%s lost the aggregator lease (token %d)", self.id, token)

    async def _renew(self, lease: float) -> None:
        """Renew the lease every third of its time; return when it was lost."""
        script = self.client.register_script(RENEW)
        while True:
            await asyncio.sleep(lease / 3)
            kept = await retrying(lambda: script(keys=[self.keys.lease], args=[self.id, int(lease * 1000)]),
                                  what="renew the lease")
            if not kept:
                return


class Aggregator:
    """The rounds, run by the lease holder under fencing token ``token`` until its task is cancelled."""

    def __init__(self, member: _Member, token: int) -> None:
        self.m, self.token = member, token
        self.client, self.keys = member.client, member.keys
        self.xadd = self.client.register_script(FENCED_XADD)
        self.adopt_script = self.client.register_script(ADOPT)

    async def run(self) -> None:
        while True:
            raw = await retrying(lambda: self.client.get(self.keys.config), what="read the federation config")
            config = FedConfig.from_json(raw)
            version, digest = await self._latest(config)
            if version is None or version >= config.target_round:
                await asyncio.sleep(config.lease_seconds / 3)
                continue
            await self._round(config, version + 1, digest)

    async def _latest(self, config: FedConfig) -> tuple[int | None, str]:
        """Return the newest adopted version and digest; adopt the agent's own weights as version 0 first."""
        adopted = await retrying(lambda: self.client.hgetall(self.keys.adopted), what="read the adopted models")
        if not adopted:
            flat = local.flatten(self.m.agent.weights())
            digest = await self._store(flat)
            event = {"round": 0, "version": 0, "digest": digest, "token": self.token, "participants": [],
                     "strategy": "initial", "mean_loss": None}
            result = await self._adopt(0, digest, event)
            return (0, digest) if result >= 0 else (None, "")
        version = max(int(v) for v in adopted)
        return version, adopted[str(version).encode()].decode()

    async def _store(self, flat: np.ndarray) -> str:
        digest = local.digest_of(flat)
        await retrying(lambda: self.client.hset(self.keys.models, digest, flat.astype("<f4").tobytes()),
                       what="store a model")
        return digest

    async def _publish(self, kind: str, data: dict) -> None:
        fields = self.m.signed(self.keys.log, {"k": kind, "d": orjson.dumps(data)})
        args = [self.token, *(x for pair in fields.items() for x in pair)]
        entry_id = await retrying(lambda: self.xadd(keys=[self.keys.fence, self.keys.log], args=args),
                                  what=f"publish a {kind} event")
        if entry_id is None:
            raise _Deposed()

    async def _adopt(self, version: int, digest: str, event: dict) -> int:
        data = orjson.dumps(event)
        auth = self.m.signed(self.keys.log, {"k": "adopt", "d": data}).get(AUTH_FIELD, b"")
        result = await retrying(lambda: self.adopt_script(
            keys=[self.keys.fence, self.keys.adopted, self.keys.log],
            args=[self.token, version, digest, data, auth]), what="adopt a model")
        if result == -1:
            raise _Deposed()
        if result == -2:  # pragma: no cover - would be a bug: fencing makes it impossible
            raise RuntimeError(f"version {version} is adopted with another digest")
        return int(result)

    async def _round(self, config: FedConfig, number: int, base_digest: str) -> None:
        for attempt in range(1, config.max_attempts + 1):
            outcome = await self._attempt(config, number, base_digest, attempt)
            if outcome:
                return
        await self._publish("fail", {"round": number, "token": self.token,
                                     "reason": f"no proposal was adopted in {config.max_attempts} attempts"})
        await retrying(lambda: self.client.set(self.keys.config, orjson.dumps(
            {**orjson.loads(config.to_json()), "target_round": number - 1})), what="end the federation")

    async def _attempt(self, config: FedConfig, number: int, base_digest: str, attempt: int) -> bool:
        start = await self._stream_end(self.keys.updates)
        common = {"round": number, "token": self.token, "config": config.to_json().decode(), "attempt": attempt}
        await self._publish("round", {**common, "version": number - 1, "digest": base_digest})
        updates = await self._collect_updates(config, number, start)
        base = await self.m._model(base_digest)
        vectors = [(np.frombuffer(u["w"], dtype="<f4"), u["n"]) for u in updates.values()]
        model = aggregate(config.strategy, vectors, byzantine=config.byzantine).astype(np.float32)
        if not np.isfinite(model).all():
            model = base  # nothing sensible came back: propose to keep the model (voters will say)
        digest = await self._store(model)
        votes_start = await self._stream_end(self.keys.votes)
        proposal = {**common, "version": number, "digest": digest, "base_digest": base_digest,
                    "participants": sorted(updates), "strategy": config.strategy,
                    "mean_loss": round(float(np.mean([u["loss"] for u in updates.values()])), 6),
                    "attackers": sorted(k for k, u in updates.items() if u["attack"])}
        await self._publish("propose", proposal)
        verdict = await self._collect_votes(config, number, digest, votes_start)
        if verdict:
            await self._adopt(number, digest, {k: v for k, v in proposal.items() if k != "config"})
            return True
        await self._publish("reject", {"round": number, "token": self.token, "digest": digest, "attempt": attempt})
        return False

    async def _stream_end(self, stream: str) -> bytes:
        last = await retrying(lambda: self.client.xrevrange(stream, count=1), what="read a stream's end")
        return last[0][0] if last else b"0-0"

    async def _collect_updates(self, config: FedConfig, number: int, start: bytes) -> dict[str, dict]:
        """Wait until ``min_clients`` members sent updates for this round and token, or the timeout
        passed with enough for the strategy (Krum: 2f + 3); a member's newest update counts."""
        needed = 2 * config.byzantine + 3 if config.strategy in ("krum", "multi-krum") else 1
        deadline, got, cursor = time.monotonic() + config.round_timeout, {}, start
        while True:
            entries = await retrying(lambda: self.client.xrange(self.keys.updates, min=f"({cursor.decode()}"
                                                                if isinstance(cursor, bytes) else cursor),
                                     what="read updates")
            if entries:
                cursor = entries[-1][0]
            for entry_id, fields in self.m.accepted(self.keys.updates, entries):
                if fields.get(b"agent", b"").decode() != self.keys.agent or int(fields[b"round"]) != number \
                        or int(fields[b"token"]) != self.token:
                    continue
                got[fields[b"member"].decode()] = {"w": fields[b"w"], "n": int(fields[b"n"]),
                                                   "loss": float(fields[b"loss"]), "attack": fields[b"attack"].decode()}
            if len(got) >= config.min_clients or (time.monotonic() >= deadline and len(got) >= needed):
                return got
            await asyncio.sleep(POLL_SECONDS)

    async def _collect_votes(self, config: FedConfig, number: int, digest: str, start: bytes) -> bool:
        """Return True once a quorum of the live members voted for ``digest``, False once it cannot
        get one or the round timeout passed."""
        deadline, ballots, cursor = time.monotonic() + config.round_timeout, {}, start
        while True:
            entries = await retrying(lambda: self.client.xrange(self.keys.votes, min=f"({cursor.decode()}"),
                                     what="read votes")
            if entries:
                cursor = entries[-1][0]
            for entry_id, fields in self.m.accepted(self.keys.votes, entries):
                vote = orjson.loads(fields[b"d"])
                if vote["round"] == number and vote["token"] == self.token and vote["digest"] == digest:
                    ballots[vote["member"]] = vote["vote"]
            members = await self._live_members()
            need = quorum_need(config.quorum, len(members))
            yes = sum(1 for member, v in ballots.items() if v and member in members)
            no = sum(1 for member, v in ballots.items() if not v and member in members)
            if yes >= need:
                return True
            if len(members) - no < need or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_SECONDS)

    async def _live_members(self) -> set[str]:
        ids = await retrying(lambda: self.client.hkeys(self.keys.members), what="read the members")
        alive = set()
        for raw in ids:
            if await retrying(lambda: self.client.exists(self.keys.alive(raw.decode())), what="read a heartbeat"):
                alive.add(raw.decode())
        return alive


class _Deposed(Exception):
    """A newer aggregator took a fencing token: this one stops."""
