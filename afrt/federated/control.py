"""What `af federate start|status|pull` do: write a federation's config, follow its rounds, read its
history and its adopted model (docs/federated.md)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, AsyncIterator

import numpy as np

from afcore.errors import UsageError

from ..redisbus import connect, retrying
from .record import FedConfig, FedKeys, decode_entry, read_history

__all__ = ["AdoptedModel", "federation_status", "find_agents", "follow_rounds", "history_is_consistent", "pull_model",
           "start_federation"]


async def start_federation(config: FedConfig, *, url: str, swarm: str) -> FedConfig:
    """Write the federation's config: ``config.rounds`` more rounds after the newest adopted version.

    Returns:
        The stored config (``target_round`` set).

    Raises:
        UsageError: AF6150-AF6158 for settings no round can run with; AF6159 while another
            federation of the agent has rounds to run.
        BusError: when Redis cannot be reached.
    """
    config.check()
    keys = FedKeys(swarm, config.agent)
    client = await connect(url)
    try:
        adopted = await retrying(lambda: client.hkeys(keys.adopted), what="read the adopted models")
        latest = max((int(v) for v in adopted), default=0)
        raw = await retrying(lambda: client.get(keys.config), what="read the federation config")
        if raw and FedConfig.from_json(raw).target_round > latest:
            raise UsageError(f"agent `{config.agent}` of swarm `{swarm}` has a federation with rounds to run "
                             f"(round {latest + 1} of {FedConfig.from_json(raw).target_round})", code="AF6159",
                             hint="wait for it (`af federate status`), or use another --swarm")
        stored = replace(config, target_round=latest + config.rounds)
        await retrying(lambda: client.set(keys.config, stored.to_json()), what="write the federation config")
        return stored
    finally:
        await client.aclose()


async def follow_rounds(*, url: str, swarm: str, agent: str, after: int = 0,
                        wait_ms: int = 1000) -> AsyncIterator[dict[str, Any]]:
    """Yield each round past ``after`` as it is adopted (a `federation_status` row), and a row with
    ``failed`` set when the aggregator gave a round up; end after the config's last round.

    It waits on the federation log (a blocking XREAD of ``wait_ms``) and reads the whole history
    only when an adoption or a failure arrived: polling the history took most of a round's bytes.
    """
    keys = FedKeys(swarm, agent)
    client = await connect(url)
    try:
        seen, cursor, changed = after, b"0-0", True
        while True:
            if changed:
                history = await retrying(lambda: read_history(client, keys), what="read the federation")
                target = (history["config"] or {}).get("target_round", 0)
                for row in history["rounds"]:
                    if row["round"] > seen and (row["adopted"] or row["failed"]):
                        seen = row["round"]
                        yield row
                if seen >= target:
                    return
            reply = await retrying(lambda: client.xread({keys.log: cursor}, count=1000, block=wait_ms),
                                   what="read the federation log")
            entries = reply[0][1] if reply else []
            if entries:
                cursor = entries[-1][0]
            changed = any(decode_entry(fields)[0] in ("adopt", "fail") for _, fields in entries)
    finally:
        await client.aclose()


async def federation_status(*, url: str, swarm: str, agent: str | None = None) -> dict[str, Any]:
    """Return agent ``agent``'s federation in swarm ``swarm`` (`record.read_history`).

    Args:
        url: the Redis URL; swarm: the swarm's name.
        agent: the agent; None picks the swarm's only federation.

    Raises:
        UsageError: AF6160 when the agent has no federation there; AF0970 when ``agent`` is None
            and the swarm has no federation or several.
    """
    if agent is None:
        found = await find_agents(url=url, swarm=swarm)
        if len(found) != 1:
            raise UsageError(f"swarm `{swarm}` has {len(found)} federations ({', '.join(found) or 'none'})",
                             code="AF0970", hint="name one with --agent")
        agent = found[0]
    client = await connect(url)
    try:
        history = await retrying(lambda: read_history(client, FedKeys(swarm, agent)), what="read the federation")
    finally:
        await client.aclose()
    if history["config"] is None:
        raise _no_federation(swarm, agent)
    return history


async def find_agents(*, url: str, swarm: str) -> list[str]:
    """Return the agents with a federation in swarm ``swarm``."""
    client = await connect(url)
    try:
        prefix = FedKeys(swarm, "").prefix[:-1]  # af:SWARM:fed:
        found = [key.decode()[len(prefix):-len(":config")]
                 async for key in client.scan_iter(match=f"{prefix}*:config")]
    finally:
        await client.aclose()
    return sorted(found)


class AdoptedModel:
    """The newest adopted model: ``version``, ``digest``, ``flat`` (float32) and the stored .af source."""

    def __init__(self, version: int, digest: str, flat: np.ndarray, source: bytes | None) -> None:
        self.version, self.digest, self.flat, self.source = version, digest, flat, source


async def pull_model(*, url: str, swarm: str, agent: str) -> AdoptedModel:
    """Return the newest adopted model of agent ``agent``'s federation.

    Raises:
        UsageError: AF6160 when there is none.
    """
    keys = FedKeys(swarm, agent)
    client = await connect(url)
    try:
        adopted = await retrying(lambda: client.hgetall(keys.adopted), what="read the adopted models")
        if not adopted:
            raise _no_federation(swarm, agent)
        version = max(int(v) for v in adopted)
        digest = adopted[str(version).encode()].decode()
        raw = await retrying(lambda: client.hget(keys.models, digest), what="read a model")
        source = await retrying(lambda: client.get(keys.source), what="read the agent's source")
    finally:
        await client.aclose()
    return AdoptedModel(version, digest, np.frombuffer(raw, dtype="<f4").astype(np.float32), source)


def _no_federation(swarm: str, agent: str) -> UsageError:
    return UsageError(f"agent `{agent}` has no federation in swarm `{swarm}`", code="AF6160",
                      hint="start one with `af federate start --agent AGENT`, and workers with "
                           "`af run --bus URL --local-data FILE`")


def history_is_consistent(history: dict[str, Any]) -> bool:
    """True when the adopted versions strictly increase with the rounds, one digest each."""
    versions = [row["version"] for row in history["rounds"] if row["adopted"]]
    return versions == sorted(set(versions))

