"""Federated rounds with signed entries: members with `--identity` and `--admit` drop forged updates
and log events that someone with write access to the swarm's streams injects (tests/afrt/federated_kit.py)."""

from __future__ import annotations

import json
import threading

import numpy as np
import orjson
from federated_kit import (AGENT, finish, log_events, make_federation_files, redis_client, start_federation,
                           start_member, stop_members)
from redis_server import RedisServer

from afcore.signing import generate_key
from afrt.busauth import Signer

SWARM = "fs"
UPDATES = f"af:{SWARM}:neural.updates"
LOG = f"af:{SWARM}:fed:{AGENT}:log"
#: parameters of the 64-32-10 digits network
SIZE = 64 * 32 + 32 + 32 * 10 + 10


def forge(server, stop: threading.Event) -> None:
    """Until ``stop``: updates of a member that does not exist, unsigned and signed by a stranger,
    for the first round under the first tokens (each weighing 10^6 examples), and a forged adoption."""
    client, stranger = redis_client(server), Signer(generate_key())
    poison = (np.full(SIZE, 1e3, dtype="<f4")).tobytes()
    try:
        while not stop.wait(0.02):
            for token in (1, 2, 3):
                entry = {"agent": AGENT, "round": 1, "token": token, "member": "ghost", "n": 10**6, "loss": 0.0,
                         "attack": "", "w": poison}
                client.xadd(UPDATES, entry)
                client.xadd(UPDATES, stranger.sign(UPDATES, {**entry, "member": "ghost2"}))
            client.xadd(LOG, {"k": "adopt", "d": orjson.dumps({"round": 9, "version": 9, "digest": "0" * 64,
                                                                "token": 99})})
    finally:
        client.close()


class TestSignedFederation:
    def test_forged_updates_and_log_events_are_dropped(self, tmp_path):
        agent, shards, test = make_federation_files(tmp_path / "data", 2)
        keys = [generate_key() for _ in shards]
        for i, key in enumerate(keys):
            (tmp_path / f"m{i}.key").write_bytes(key.to_pem())
        admitted = tmp_path / "members.pub"
        admitted.write_bytes(b"".join(key.public_key.to_pem() for key in keys))
        with RedisServer(tmp_path / "redis") as server:
            stop = threading.Event()
            forger = threading.Thread(target=forge, args=(server, stop), daemon=True)
            forger.start()
            members = [start_member(server.url, agent, SWARM, shard, test,
                                    extra=("--identity", str(tmp_path / f"m{i}.key"), "--admit", str(admitted)))
                       for i, shard in enumerate(shards)]
            try:
                code, out, err = finish(start_federation(server.url, SWARM, "--rounds", "1", "--min-clients", "2",
                                                         "--round-timeout", "20", "--lease-seconds", "1"))
                assert code == 0, err
                rows = [json.loads(line) for line in out.splitlines()]
                assert [r["round"] for r in rows] == [1] and rows[0]["adopted"]
                proposals = [data for kind, data in log_events(server, SWARM) if kind == "propose"]
                assert proposals and all(len(p["participants"]) == 2 and not {"ghost", "ghost2"} & set(p["participants"])
                                         for p in proposals)
            finally:
                stop.set()
                forger.join()
                stop_members(*members)
            summaries = [json.loads(m.stderr.read().decode().strip().splitlines()[-1]) for m in members]
            assert all(m.returncode == 0 for m in members)
        assert {s["key_id"] for s in summaries} == {key.key_id for key in keys}
        dropped = [s["dropped"] for s in summaries]
        # every member drops the forged adoptions it reads; the aggregator the forged updates too
        assert all(d["unsigned"] >= 1 for d in dropped), dropped
        assert sum(d["not_admitted"] for d in dropped) >= 1, dropped
