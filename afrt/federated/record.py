"""The federation record in Redis: its keys, its config, its scripts, and reading its history.

Every key of agent AGENT's federation in swarm NAME is under ``af:NAME:fed:AGENT:``; the updates
go on the swarm's ``af:NAME:neural.updates`` stream (`afrt.bus.TOPIC_UPDATES`). docs/federated.md
lists them:

- ``config`` (string, JSON): the federation `FedConfig`, written by `af federate start`;
- ``lease`` (string, PX): the aggregator's lease, ``SET NX PX``; ``fence`` (integer): INCR'd by
  each new lease holder, its fencing token;
- ``log`` (stream): the rounds' events ``k`` = round | propose | adopt | reject | fail with JSON ``d``;
- ``votes`` (stream): one entry per participant's vote on a proposal;
- ``adopted`` (hash): version -> digest, written only by `ADOPT` (HSETNX: one digest per version);
- ``models`` (hash): digest -> the model's flat float32 bytes (the checkpoints of every proposal);
- ``members`` (hash): participant id -> JSON, and ``alive:ID`` (PX) while it heartbeats;
- ``source`` (string): the agent's .af file, when a worker was started from one (`af federate pull`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import orjson

from afcore.errors import UsageError

from ..bus import TOPIC_UPDATES
from ..redisbus import Keys
from .aggregate import STRATEGIES, check_strategy

__all__ = ["ADOPT", "FENCED_XADD", "FedConfig", "FedKeys", "RENEW", "decode_entry", "quorum_need", "read_history"]

#: the default quorum: a proposal is adopted when this share of the live members votes for it
DEFAULT_QUORUM = "2/3"


@dataclass(frozen=True)
class FedConfig:
    """A federation's settings (what `af federate start` takes), stored as JSON in ``config``."""

    agent: str
    rounds: int
    strategy: str = "fedavg"
    byzantine: int = 0
    min_clients: int = 2
    local_epochs: int = 1
    round_timeout: float = 60.0
    quorum: str = DEFAULT_QUORUM
    dp_clip: float | None = None
    dp_noise: float | None = None
    learning_rate: float = 0.05
    mu: float = 0.0
    lease_seconds: float = 5.0
    vote_tolerance: float = 0.05
    max_attempts: int = 3
    #: the last round this federation runs (the adopted version before it started + rounds)
    target_round: int = 0

    def to_json(self) -> bytes:
        """Return the stored form."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "FedConfig":
        """Read the stored form (unknown keys ignored: a newer writer's additions)."""
        data = orjson.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def check(self) -> "FedConfig":
        """Refuse settings no round can run with (AF6156-AF6158; the strategy's own: AF6150, AF6155).

        Raises:
            UsageError: for the first fault found.
        """
        check_strategy(self.strategy, clients=self.min_clients, byzantine=self.byzantine)
        quorum_fraction(self.quorum)
        if (self.dp_clip is None) != (self.dp_noise is None) or (self.dp_clip is not None and (
                self.dp_clip <= 0 or self.dp_noise < 0)):
            raise UsageError("--dp-clip and --dp-noise go together: a clip norm C > 0 and a noise multiplier "
                             "SIGMA >= 0", code="AF6157", hint="give both, e.g. --dp-clip 1.0 --dp-noise 0.5")
        if self.rounds < 1 or self.min_clients < 1 or self.local_epochs < 1 or self.round_timeout <= 0 \
                or self.lease_seconds <= 0 or self.learning_rate <= 0 or self.mu < 0:
            raise UsageError("rounds, --min-clients and --local-epochs must be at least 1; timeouts, the lease "
                             "and the learning rate positive; mu not negative", code="AF6158")
        return self


def quorum_fraction(text: str) -> float:
    """Return the fraction a quorum like ``2/3`` (or ``0.5``) stands for, in (0, 1].

    Raises:
        UsageError: AF6156 for anything else.
    """
    try:
        num, _, den = str(text).partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not 0 < value <= 1:
        raise UsageError(f"`{text}` is not a quorum", code="AF6156", hint="give a fraction in (0, 1], like 2/3 or 0.5")
    return value


def quorum_need(quorum: str, members: int) -> int:
    """Return how many votes for a digest adopt it among ``members`` live members (at least 1)."""
    return max(1, math.ceil(quorum_fraction(quorum) * members - 1e-9))


class FedKeys:
    """The names of a federation's keys (all under ``af:SWARM:fed:AGENT:``)."""

    def __init__(self, swarm: str, agent: str) -> None:
        self.swarm, self.agent = swarm, agent
        self.prefix = f"{Keys(swarm).prefix}fed:{agent}:"
        self.updates = f"{Keys(swarm).prefix}{TOPIC_UPDATES}"
        for name in ("config", "lease", "fence", "log", "votes", "adopted", "models", "members", "source"):
            setattr(self, name, self.prefix + name)

    def alive(self, member: str) -> str:
        """Return the key that exists while ``member`` heartbeats."""
        return f"{self.prefix}alive:{member}"


# KEYS: fence, stream; ARGV: token, then field/value pairs. XADD only while the token is the newest.
FENCED_XADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local args = {}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], '*', unpack(args))
"""

# KEYS: fence, adopted, log; ARGV: token, version, digest, event JSON, the log entry's signature envelope or "".
# Returns 1 adopted, 0 already adopted with this digest, -1 stale token, -2 the version has another digest.
ADOPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then
  if held == ARGV[3] then return 0 end
  return -2
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[5] and ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'k', 'adopt', 'd', ARGV[4], 'a', ARGV[5])
else
  redis.call('XADD', KEYS[3], '*', 'k', 'adopt', 'd', ARGV[4])
end
return 1
"""

# KEYS: lease; ARGV: holder, ms. Extends the lease only for its holder.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


def decode_entry(fields_: dict) -> tuple[str, dict[str, Any]]:
    """Return a log entry's kind and data."""
    return fields_[b"k"].decode(), orjson.loads(fields_[b"d"])


async def read_history(client: Any, keys: FedKeys) -> dict[str, Any]:
    """Return the federation as `af federate status --json` prints it.

    One row per round that got a proposal: its last proposal (the adopted one when there is one),
    the votes for and against that proposal, and the mean validation accuracy its voters measured.
    """
    raw = await client.get(keys.config)
    config = FedConfig.from_json(raw) if raw else None
    proposals: dict[int, dict] = {}
    adopted: dict[int, dict] = {}
    failed: set[int] = set()
    for _, entry in await client.xrange(keys.log):
        kind, data = decode_entry(entry)
        if kind == "propose":
            proposals[data["round"]] = data
        elif kind == "adopt":
            adopted[data["round"]] = data
        elif kind == "fail":
            failed.add(data["round"])
    tally: dict[tuple, list] = {}
    for _, entry in await client.xrange(keys.votes):
        vote = orjson.loads(entry[b"d"])
        tally.setdefault((vote["round"], vote["token"], vote["digest"]), []).append(vote)
    rounds = []
    for number in sorted(proposals):
        p = adopted.get(number) or proposals[number]
        votes = tally.get((number, p["token"], p["digest"]), [])
        measured = [v["accuracy"] for v in votes if v.get("accuracy") is not None]
        rounds.append({
            "round": number, "version": p["version"], "digest": p["digest"], "participants": p["participants"],
            "votes_for": sum(1 for v in votes if v["vote"]), "votes_against": sum(1 for v in votes if not v["vote"]),
            "adopted": number in adopted, "validation_accuracy": round(sum(measured) / len(measured), 4)
            if measured else None, "strategy": p["strategy"], "mean_loss": p["mean_loss"], "token": p["token"],
            "attackers": p.get("attackers", []), "failed": number in failed and number not in adopted})
    members = {k.decode(): orjson.loads(v) for k, v in (await client.hgetall(keys.members)).items()}
    for member, info in members.items():
        info["alive"] = bool(await client.exists(keys.alive(member)))
    return {"swarm": keys.swarm, "agent": keys.agent, "config": asdict(config) if config else None,
            "rounds": rounds, "members": members}


def strategies() -> tuple[str, ...]:
    """The strategy names (for option choices)."""
    return STRATEGIES
