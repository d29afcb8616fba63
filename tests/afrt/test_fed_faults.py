"""Faults during federated rounds: kill -9 of the aggregator and of a participant, a Redis restart.

Each ends with a consistent adopted history: versions strictly increasing, one digest each (the
`adopted` hash and the log's adopt events agree), and every round adopted.
"""

from __future__ import annotations

import json
import os
import signal

import orjson
from federated_kit import (AGENT, check_history, finish, log_events, make_federation_files, redis_client,
                           start_federation, start_member, stop_members, wait_for)
from redis_server import RedisServer


def _alive(server, swarm: str) -> int:
    client = redis_client(server)
    try:
        return len(client.keys(f"af:{swarm}:fed:{AGENT}:alive:*"))
    finally:
        client.close()


def _round_opened(server, swarm: str, number: int) -> bool:
    return any(kind == "round" and data["round"] == number for kind, data in log_events(server, swarm))


def _holder_pid(server, swarm: str) -> tuple[str, int]:
    client = redis_client(server)
    try:
        holder = client.get(f"af:{swarm}:fed:{AGENT}:lease").decode()
        return holder, orjson.loads(client.hget(f"af:{swarm}:fed:{AGENT}:members", holder))["pid"]
    finally:
        client.close()


class TestFaults:
    def test_kill_the_aggregator_then_a_participant(self, tmp_path):
        agent, shards, test = make_federation_files(tmp_path / "data", 5)
        with RedisServer(tmp_path / "redis") as server:
            members = [start_member(server.url, agent, "ff", s, test) for s in shards]
            try:
                wait_for(lambda: _alive(server, "ff") == 5, what="5 members")
                start = start_federation(server.url, "ff", "--rounds", "3", "--min-clients", "5",
                                         "--round-timeout", "3", "--lease-seconds", "1")
                wait_for(lambda: _round_opened(server, "ff", 1), what="round 1")
                holder, pid = _holder_pid(server, "ff")
                os.kill(pid, signal.SIGKILL)  # the aggregator, mid-round
                wait_for(lambda: _round_opened(server, "ff", 2), what="round 2")
                victim = next(m for m in members if m.poll() is None and m.pid != _holder_pid(server, "ff")[1])
                victim.send_signal(signal.SIGKILL)  # a participant, mid-round
                code, out, err = finish(start)
                assert code == 0, err
                rows = [json.loads(line) for line in out.splitlines()]
                assert [r["round"] for r in rows] == [1, 2, 3] and all(r["adopted"] for r in rows)
                assert holder not in rows[0]["participants"]  # its round ran again under the new token
                assert len(rows[2]["participants"]) == 3
                tokens = [r["token"] for r in rows]
                assert tokens[0] >= 2 and tokens == sorted(tokens)
                assert sorted(check_history(server, "ff")) == [0, 1, 2, 3]
            finally:
                stop_members(*members)

    def test_redis_restart_with_appendonly_mid_round(self, tmp_path):
        agent, shards, test = make_federation_files(tmp_path / "data", 3)
        with RedisServer(tmp_path / "redis", appendonly=True) as server:
            members = [start_member(server.url, agent, "fr", s, test) for s in shards]
            try:
                wait_for(lambda: _alive(server, "fr") == 3, what="3 members")
                start = start_federation(server.url, "fr", "--rounds", "2", "--min-clients", "3",
                                         "--round-timeout", "10", "--lease-seconds", "2")
                wait_for(lambda: _round_opened(server, "fr", 1), what="round 1")
                server.restart(down_seconds=0.5)
                code, out, err = finish(start)
                assert code == 0, err
                rows = [json.loads(line) for line in out.splitlines()]
                assert [r["round"] for r in rows] == [1, 2] and all(r["adopted"] for r in rows)
                assert sorted(check_history(server, "fr")) == [0, 1, 2]
            finally:
                stop_members(*members)
            assert all(m.returncode == 0 for m in members), [m.stderr.read().decode()[-2000:] for m in members]
