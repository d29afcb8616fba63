"""`af swarm status|watch`: the members and queues of a swarm on Redis (docs/cli.md, docs/swarm.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from ._app import CONTEXT_SETTINGS, AfCommand
from ._output import emit, print_table, say

#: seconds between two refreshes of `af swarm watch`
WATCH_SECONDS = 1.0
#: the columns of the members and queues tables
MEMBER_COLUMNS = ("agent_id", "agent", "host", "pid", "replicas", "state", "last_heartbeat_s", "processed", "errors",
                  "key_id", "dropped")
QUEUE_COLUMNS = ("agent", "priority", "length", "pending", "lag", "dead_letters")


@click.group("swarm", context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
def swarm_command() -> None:
    """Look at a swarm on Redis: its members (workers) and its task queues."""


_bus = click.option("--bus", "url", required=True, metavar="URL",
                    help="The swarm's Redis: redis://[USER:PASSWORD@]HOST:PORT/DB (rediss:// for TLS).")
_name = click.option("--swarm", "name", required=True, help="The swarm's name.")


@swarm_command.command("status", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_bus
@_name
@click.option("--json", "as_json", is_flag=True, help="Print {swarm, members, queues} as JSON on stdout.")
def status_command(url: str, *, name: str, as_json: bool) -> None:
    """Print the members (a member whose heartbeat expired shows state `gone`) and the queues.

    Exit codes: 0; 1 when Redis cannot be reached (after a bounded number of retries); 2 usage error.
    """
    import asyncio

    import afrt

    found = asyncio.run(afrt.swarm_status(url, name))
    if as_json:
        emit(json.dumps(found, sort_keys=True))
    else:
        _print_status(found)


@swarm_command.command("watch", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_bus
@_name
def watch_command(url: str, *, name: str) -> None:
    """Show the status live, refreshed in place every second; Ctrl-C leaves (exit 0)."""
    import asyncio

    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table

    import afrt

    def render(found: dict[str, Any]) -> Any:
        members = Table(title=f"swarm {found['swarm']}: members", title_justify="left")
        for column in MEMBER_COLUMNS:
            members.add_column(column, justify="left" if column in ("agent_id", "agent", "host", "state", "key_id")
                               else "right")
        for member in found["members"]:
            members.add_row(*(_cell(member[c]) for c in MEMBER_COLUMNS))
        queues = Table(title="queues", title_justify="left")
        for column in QUEUE_COLUMNS:
            queues.add_column(column, justify="left" if column in ("agent", "priority") else "right")
        for queue in found["queues"]:
            queues.add_row(*(_cell(queue[c]) for c in QUEUE_COLUMNS))
        return Group(members, queues)

    async def watch(live: Any) -> None:
        while True:
            live.update(render(await afrt.swarm_status(url, name)))
            await asyncio.sleep(WATCH_SECONDS)

    try:
        with Live(console=Console(stderr=True), auto_refresh=False, transient=False) as live:
            asyncio.run(_refreshing(watch, live))
    except KeyboardInterrupt:
        say("")


@swarm_command.command("acl", cls=AfCommand, context_settings=CONTEXT_SETTINGS)
@_name
@click.option("--role", required=True, type=click.Choice(("worker", "submitter", "observer", "admin")),
              help="worker: af run --bus; submitter: af submit; observer: af swarm status|watch; admin: the swarm's keys.")
def acl_command(*, name: str, role: str) -> None:
    """Print the Redis ACL rules of a role in swarm NAME: use them as
    `redis-cli ACL SETUSER USER on >PASSWORD RULES`. A user of one swarm can touch no other swarm's
    keys and run no administrative command (docs/security.md)."""
    from afcore.errors import UsageError
    from afrt import acl_rules

    try:
        emit(acl_rules(name, role))
    except ValueError as exc:
        raise UsageError(str(exc), code="AF0938", hint="name the swarm with letters, digits, `.`, `_` and `-`") from None


async def _refreshing(watch: Any, live: Any) -> None:
    # Live's own refresh thread is off: every update is drawn at once
    original = live.update
    live.update = lambda renderable: original(renderable, refresh=True)
    await watch(live)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    return "-" if value is None else str(value)


def _print_status(found: dict[str, Any]) -> None:
    say(f"swarm {found['swarm']}: {len(found['members'])} members, {len(found['queues'])} queues")
    print_table("members", MEMBER_COLUMNS, [[_cell(m[c]) for c in MEMBER_COLUMNS] for m in found["members"]],
                left=("agent_id", "agent", "host", "state"), drop_order=("host", "pid", "last_heartbeat_s"))
    print_table("queues", QUEUE_COLUMNS, [[_cell(q[c]) for c in QUEUE_COLUMNS] for q in found["queues"]],
                left=("agent", "priority"))
