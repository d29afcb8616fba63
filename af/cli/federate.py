"""`af federate start|status|pull`: federated learning across a swarm's workers (docs/federated.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click

from ._app import CONTEXT_SETTINGS, AfCommand
from ._output import emit, print_table, say

#: the strategies --strategy takes (afrt.federated.aggregate.STRATEGIES; listed here so `--help` needs no numpy)
STRATEGY_CHOICES = ("fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum")
#: the columns of `af federate status`
ROUND_COLUMNS = ("round", "version", "participants", "votes_for", "votes_against", "adopted",
                 "validation_accuracy", "digest")


@click.group("federate", context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
def federate_command() -> None:
    """Federated learning: workers started with --local-data train together without sharing their data."""


_bus = click.option("--bus", "url", required=True, metavar="URL",
                    help="The swarm's Redis: redis://[USER:PASSWORD@]HOST:PORT/DB (rediss:// for TLS).")
_swarm = click.option("--swarm", "swarm", required=True, help="The swarm's name.")
_agent = click.option("--agent", "agent", required=True, help="The agent (name) the workers run.")


@federate_command.command("start", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_bus
@_swarm
@_agent
@click.option("--rounds", required=True, type=click.IntRange(min=1), help="Rounds to run.")
@click.option("--strategy", default="fedavg", show_default=True, type=click.Choice(STRATEGY_CHOICES),
              help="How the updates are aggregated.")
@click.option("--byzantine", default=0, show_default=True, type=click.IntRange(min=0),
              help="f, the attackers tolerated (Krum, Multi-Krum; the trimmed mean cuts f per side).")
@click.option("--min-clients", default=2, show_default=True, type=click.IntRange(min=1),
              help="Aggregate as soon as this many updates arrived.")
@click.option("--local-epochs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Epochs each participant trains per round.")
@click.option("--round-timeout", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for updates (then aggregate what came) and for votes.")
@click.option("--quorum", default="2/3", show_default=True,
              help="Share of the live members whose votes adopt a proposal.")
@click.option("--dp-clip", type=click.FloatRange(min=0, min_open=True),
              help="Clip each client's update to this L2 norm (with --dp-noise).")
@click.option("--dp-noise", type=click.FloatRange(min=0),
              help="Add Gaussian noise of std SIGMA * C to each clipped update (with --dp-clip).")
@click.option("--learning-rate", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The participants' SGD step.")
@click.option("--mu", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="FedProx's proximal coefficient (with --strategy fedprox).")
@click.option("--lease-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="The aggregator's lease: a dead aggregator is replaced within this time.")
@click.option("--detach", is_flag=True, help="Return once the federation is written; do not wait for the rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per adopted round.")
def start_command(url: str, *, swarm: str, agent: str, rounds: int, strategy: str, byzantine: int, min_clients: int,
                  local_epochs: int, round_timeout: float, quorum: str, dp_clip: Optional[float],
                  dp_noise: Optional[float], learning_rate: float, mu: float, lease_seconds: float, detach: bool,
                  as_json: bool) -> None:
    """Start ROUNDS federated rounds of AGENT and wait until the last one is adopted.

    The workers of the swarm that run AGENT with --local-data take part: one of them, elected with a
    lease on Redis, aggregates; all train, validate and vote. A line per adopted round.

    Exit codes: 0 the last round was adopted (or --detach); 1 a round was given up, or Redis cannot be
    reached; 2 usage error (a strategy that cannot run with these settings, e.g. Krum with n <= 2f + 2).
    """
    import asyncio

    import afrt

    config = afrt.FedConfig(agent=agent, rounds=rounds, strategy=strategy, byzantine=byzantine,
                            min_clients=min_clients, local_epochs=local_epochs, round_timeout=round_timeout,
                            quorum=quorum, dp_clip=dp_clip, dp_noise=dp_noise, learning_rate=learning_rate,
                            mu=mu, lease_seconds=lease_seconds)
    stored = asyncio.run(afrt.start_federation(config, url=url, swarm=swarm))
    first = stored.target_round - rounds + 1
    if not as_json:
        say(f"federation of {agent} in swarm {swarm}: rounds {first}-{stored.target_round}, strategy {strategy}")
    if detach:
        return

    async def follow() -> Optional[dict]:
        async for row in afrt.follow_federation(url=url, swarm=swarm, agent=agent, after=first - 1):
            _print_round(row, as_json)
            if row["failed"]:
                return row
        return None

    failed = asyncio.run(follow())
    if failed is not None:
        from afcore.errors import ExecutionError

        raise ExecutionError(f"round {failed['round']} was given up: no proposal got a quorum", code="AF6161",
                             hint="see the votes with `af federate status`; honest members reject a model worse "
                                  "than the last adopted one")


def _print_round(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(json.dumps(row, sort_keys=True))
        return
    accuracy = "-" if row["validation_accuracy"] is None else f"{row['validation_accuracy']:.4f}"
    loss = "-" if row["mean_loss"] is None else f"{row['mean_loss']:.4f}"
    state = "given up" if row["failed"] else f"adopted {row['digest'][:16]}"
    attackers = f" ({len(row['attackers'])} simulated attackers)" if row["attackers"] else ""
    emit(f"round {row['round']} version {row['version']}: {len(row['participants'])} participants{attackers}, "
         f"{row['strategy']}, mean local loss {loss}, validation accuracy {accuracy}, {state}")


@federate_command.command("status", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_bus
@_swarm
@click.option("--agent", "agent", help="The agent whose federation to show (default: the only one).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"swarm", "agent", "rounds": [...], "members", "config"} as JSON on stdout.')
def status_command(url: str, *, swarm: str, agent: Optional[str], as_json: bool) -> None:
    """Print the rounds (participants, votes, adopted digests, accuracy) and the members.

    Members started with --simulate-attack are marked as attackers. Exit codes: 0; 1 when Redis
    cannot be reached or no federation exists; 2 usage error.
    """
    import asyncio

    import afrt

    history = asyncio.run(afrt.federation_status(url=url, swarm=swarm, agent=agent))
    if as_json:
        emit(json.dumps(history, sort_keys=True))
        return
    config = history["config"]
    say(f"federation of {history['agent']} in swarm {swarm}: strategy {config['strategy']}, "
        f"target round {config['target_round']}, quorum {config['quorum']}")
    rows = [[str(r["round"]), str(r["version"]), str(len(r["participants"])), str(r["votes_for"]),
             str(r["votes_against"]), "yes" if r["adopted"] else ("given up" if r["failed"] else "no"),
             "-" if r["validation_accuracy"] is None else f"{r['validation_accuracy']:.4f}", r["digest"][:16]]
            for r in history["rounds"]]
    print_table("rounds", ROUND_COLUMNS, rows)
    members = [[m, "yes" if info["alive"] else "gone", str(info["examples"]), info["attack"] or "-"]
               for m, info in sorted(history["members"].items())]
    print_table("members", ("agent_id", "alive", "examples", "simulated_attack"), members)


@federate_command.command("pull", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_bus
@_swarm
@_agent
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .af file to write.")
@click.option("--source", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The agent's .af file whose header and sections to keep (default: the one a worker "
                   "started from an .af stored in the federation).")
def pull_command(url: str, *, swarm: str, agent: str, output: Path, source: Optional[Path]) -> None:
    """Write the newest adopted global model as an .af file: the agent's .af with the adopted weights.

    Exit codes: 0 written; 1 no federation, or Redis cannot be reached; 2 usage error (no .af source).
    """
    import asyncio
    import tempfile

    import afc
    import afrt
    from afcore.errors import UsageError

    model = asyncio.run(afrt.pull_federated_model(url=url, swarm=swarm, agent=agent))
    text = source.read_bytes() if source is not None else model.source
    if text is None:
        raise UsageError(f"no .af source of `{agent}` is stored in the federation (its workers ran bundles)",
                         code="AF0971", hint="give the agent's .af file with --source")
    with tempfile.TemporaryDirectory(prefix="af-pull-") as tmp:
        af_path, weights = Path(tmp) / "agent.af", Path(tmp) / "weights.safetensors"
        af_path.write_bytes(text)
        weights.write_bytes(_weights_file(af_path, model.flat))
        afc.pack(af_path, weights=weights, output=output)
    say(f"wrote {output}: {agent} version {model.version} (digest {model.digest[:16]})")


def _weights_file(af_path: Path, flat: Any) -> bytes:
    """Return the safetensors bytes of ``layers.<i>.weight``/``.bias`` for the flat model, in the .af's shapes."""
    import afc
    from afcore.errors import UsageError

    config = afc.load_agent_file(af_path).header["neural_config"]
    sizes = [config["input_size"], *config.get("hidden_layers", []), config["output_size"]]
    tensors, start = {}, 0
    for index, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{index}.weight"] = flat[start:start + n_in * n_out].reshape(n_out, n_in)
        start += n_in * n_out
        tensors[f"layers.{index}.bias"] = flat[start:start + n_out]
        start += n_out
    if start != len(flat):
        raise UsageError(f"the .af source's network has {start} parameters, the adopted model {len(flat)}",
                         code="AF0972", hint="give the .af file of the agent the workers run with --source")
    return afc.encode_tensors(tensors)
