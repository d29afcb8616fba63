"""Signed bus entries on a real Redis: `submit(admit=...)`, signing workers, and `RedisBus` topics.

Every test starts its own redis-server on a free 127.0.0.1 port (tests/redis_server.py). Forged
entries are written the way an attacker with write access to the streams would: XADD of entries
signed by another key, of a genuine entry with a field changed, of an unsigned entry, and of an
exact copy of a genuine entry.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from redis_server import RedisServer
from redis_swarm_kit import finish, start_submit, start_worker, stop_workers, write_inputs

from afcore.signing import generate_key
from afrt.bus import Message
from afrt.busauth import BAD_SIGNATURE, FOREIGN_TASK, MALFORMED, NOT_ADMITTED, REPLAYED, UNSIGNED, Signer, Verifier
from afrt.redisbus import RedisBus
from afrt.submit import status, submit
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
AGENT = "xor-agent"
SWARM = "signed"
SOURCE = b'{"id": "a", "input": [0, 1]}\n{"id": "b", "input": [1, 1]}\n'
GENUINE = b'{"id":"a","output":[0.25],"agent":"w"}\n{"id":"b","output":[0.5],"agent":"w"}\n'
FORGED = b'{"id":"a","output":[9.0],"agent":"w"}\n{"id":"b","output":[9.0],"agent":"w"}\n'


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture(scope="module")
def xor(tmp_path_factory):
    """The xor example without its bandwidth limit (these tests are about the entries, not the limit)."""
    import re

    import afc

    source = tmp_path_factory.mktemp("xor") / "xor.af"
    source.write_text(re.sub(r"network_bandwidth_mbps: [0-9.]+", "network_bandwidth_mbps: 10000",
                             (ROOT / "examples" / "xor.af").read_text()))
    return afc.compile_file(source, output=source.with_suffix(".afb")), afc.load_agent_file(source).spec().network


def keyfiles(tmp_path: Path, name: str):
    key = generate_key()
    (tmp_path / f"{name}.key").write_bytes(key.to_pem())
    (tmp_path / f"{name}.pub").write_bytes(key.public_key.to_pem())
    return key, tmp_path / f"{name}.key", tmp_path / f"{name}.pub"


def seed_forgeries(url: str, results: str, worker: Signer) -> None:
    """Write, before any genuine result: a forgery by another key, a genuine entry with its payload
    altered, an unsigned entry; then the genuine entry and an exact copy of it."""
    r = redis.Redis.from_url(url)
    r.xadd(results, Signer(generate_key()).sign(results, {"n": 0, "d": FORGED}))
    altered = worker.sign(results, {"n": 0, "d": GENUINE})
    r.xadd(results, {**altered, "d": FORGED})
    r.xadd(results, {"n": 0, "d": FORGED})
    genuine = worker.sign(results, {"n": 0, "d": GENUINE})
    r.xadd(results, genuine)
    r.xadd(results, genuine)
    r.close()


class TestSubmitAdmit:
    def test_forged_altered_unsigned_and_replayed_results_are_dropped(self, server):
        key = generate_key()
        sid = "0123456789abcdef"
        seed_forgeries(server.url, f"af:{SWARM}:results:{sid}", Signer(key))
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(SOURCE), sink=out,
                                     submission=sid, timeout=30, admit=[key.public_key]))
        assert out.getvalue() == GENUINE  # every record once, from the genuine entry
        assert summary.dropped == {UNSIGNED: 1, NOT_ADMITTED: 1, BAD_SIGNATURE: 1, REPLAYED: 1, FOREIGN_TASK: 0,
                                   MALFORMED: 0}
        assert (summary.records, summary.results, summary.duplicates, summary.timed_out) == (2, 2, 0, 0)
        assert summary.to_json()["dropped"] == summary.dropped

    def test_without_admit_the_first_forgery_wins(self, server):
        # what --admit is for: the same stream read as before signing existed
        sid = "0123456789abcdee"
        seed_forgeries(server.url, f"af:{SWARM}:results:{sid}", Signer(generate_key()))
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(SOURCE), sink=out,
                                     submission=sid, timeout=30))
        assert out.getvalue() == FORGED and sum(summary.dropped.values()) == 0

    @pytest.mark.parametrize("admitted", [False, True], ids=["no-admit", "admit"])
    def test_entries_that_are_not_results_are_dropped_and_counted(self, server, admitted):
        # no index, a non-integer index, a negative one, no data: once a traceback of af submit
        key = generate_key()
        sid = "0123456789abcdea" if admitted else "0123456789abcdeb"
        results = f"af:{SWARM}:results:{sid}"
        worker = Signer(key)
        r = redis.Redis.from_url(server.url)
        for bad in ({"d": FORGED}, {"n": "zero", "d": FORGED}, {"n": "-1", "d": FORGED}, {"n": 0}):
            r.xadd(results, worker.sign(results, bad))
        r.xadd(results, worker.sign(results, {"n": 0, "d": GENUINE}))
        r.close()
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(SOURCE), sink=out,
                                     submission=sid, timeout=30, admit=[key.public_key] if admitted else None))
        assert out.getvalue() == GENUINE
        assert summary.dropped[MALFORMED] == 4 and sum(summary.dropped.values()) == 4

    def test_a_submits_own_answers_are_signed_and_taken(self, server, monkeypatch):
        import afrt.submit

        monkeypatch.setattr(afrt.submit, "MAX_LINE_BYTES", 40)
        out = io.BytesIO()
        source = b'{"id": "a", "input": [0, 1], "note": "longer than forty bytes"}\n'
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(source), sink=out,
                                     timeout=10, admit=[generate_key().public_key]))
        assert orjson.loads(out.getvalue())["error"]["code"] == "AF5237"
        assert summary.timed_out == 0 and sum(summary.dropped.values()) == 0


class TestSigningWorkers:
    def test_an_admitted_worker_answers_every_record(self, server, xor, tmp_path):
        bundle, network = xor
        key, key_path, pub = keyfiles(tmp_path, "worker")
        x = write_inputs(tmp_path / "in.jsonl", 300, 2)
        worker = start_worker(server.url, bundle, SWARM, identity=key_path, admit=pub)
        summary = finish(start_submit(server.url, SWARM, AGENT, tmp_path / "in.jsonl", tmp_path / "out.jsonl",
                                      admit=pub))
        assert sum(summary["dropped"].values()) == 0 and summary["results"] == 300
        records = [orjson.loads(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines()]
        assert [r["id"] for r in records] == [f"r{i}" for i in range(300)]
        np.testing.assert_allclose([r["output"] for r in records], forward64(network, x), rtol=1e-5, atol=1e-6)
        member = asyncio.run(status(server.url, SWARM))["members"][0]
        assert (member["key_id"], member["dropped"]) == (key.key_id, 0)
        done = stop_workers(worker)[0]
        assert done["key_id"] == key.key_id and done["records"] == 300

    def test_a_worker_whose_key_is_not_admitted_gets_nothing_accepted(self, server, xor, tmp_path):
        bundle, _ = xor
        _, key_path, _ = keyfiles(tmp_path, "stranger")
        _, _, admitted = keyfiles(tmp_path, "operator")
        write_inputs(tmp_path / "in.jsonl", 100, 2)
        worker = start_worker(server.url, bundle, SWARM, identity=key_path)
        out = io.BytesIO()
        with open(tmp_path / "in.jsonl", "rb") as source:
            from afcore.signing import load_public_keys

            summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=source, sink=out,
                                         timeout=4, admit=load_public_keys(admitted.read_bytes())))
        assert stop_workers(worker)[0]["records"] == 100  # it ran them: its results were refused
        lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
        assert [r["error"]["code"] for r in lines] == ["AF5261"] * 100
        assert summary.results == 0 and summary.dropped[NOT_ADMITTED] >= 1
        assert sum(summary.dropped.values()) == summary.dropped[NOT_ADMITTED]


class TestForgedTasks:
    def test_a_result_of_a_task_the_submit_did_not_send_is_dropped(self, server, xor, tmp_path):
        """Someone writes a task under the submission's id before the submit does: a genuine worker
        runs it and signs its result, which carries the forged task's digest."""
        bundle, network = xor
        key, key_path, _ = keyfiles(tmp_path, "worker")
        sid = "00000000deadbeef"
        forged = b'{"id": "a", "input": [0.5, 0.5]}\n{"id": "b", "input": [0.5, 0.5]}'
        r = redis.Redis.from_url(server.url)
        r.xadd(f"af:{SWARM}:tasks:{AGENT}:normal", {"s": sid, "n": 0, "l": 1, "c": 2, "d": forged})
        r.close()
        worker = start_worker(server.url, bundle, SWARM, identity=key_path)
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(SOURCE), sink=out,
                                     submission=sid, timeout=60, admit=[key.public_key]))
        assert stop_workers(worker)[0]["records"] == 4  # it ran both tasks
        records = [orjson.loads(line) for line in out.getvalue().splitlines()]
        x = np.array([[0, 1], [1, 1]], dtype=np.float32)
        np.testing.assert_allclose([r["output"] for r in records], forward64(network, x), rtol=1e-5, atol=1e-6)
        assert summary.dropped[FOREIGN_TASK] == 1 and summary.results == 2

    def test_a_split_task_is_still_recognised(self, server):
        """A task delivered twice is split into one task per record: each result is checked
        against its own record's digest."""
        from afrt.redisbus import Task

        key = generate_key()
        sid = "00000000feedbeef"
        results = f"af:{SWARM}:results:{sid}"
        task = Task(sid, 0, 1, 2, SOURCE.rstrip(b"\n"))
        worker = Signer(key)
        r = redis.Redis.from_url(server.url)
        for single, line in zip(task.singles(), GENUINE.splitlines(keepends=True)):
            r.xadd(results, worker.sign(results, {"n": single.index, "d": line, "t": single.digest()}))
        r.close()
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(SOURCE), sink=out,
                                     submission=sid, timeout=30, admit=[key.public_key]))
        assert out.getvalue() == GENUINE and sum(summary.dropped.values()) == 0


class TestRedisBusTopics:
    def test_a_subscriber_takes_only_admitted_fresh_messages(self, server):
        key, stranger = generate_key(), generate_key()

        async def main():
            listener = RedisBus(server.url, SWARM, verifier=Verifier([key.public_key]))
            updates = listener.subscribe("neural.updates", max_buffer_size=100)
            good = RedisBus(server.url, SWARM, signer=Signer(key))
            other = RedisBus(server.url, SWARM, signer=Signer(stranger))
            plain = RedisBus(server.url, SWARM)
            await other.publish(Message("neural.updates", "x", b"stranger"))
            await plain.publish(Message("neural.updates", "x", b"unsigned"))
            await good.publish(Message("neural.updates", "w", b"good 1"))
            sync = redis.Redis.from_url(server.url)
            _, genuine = sync.xrange(updates.stream)[-1]
            sync.xadd(updates.stream, {**genuine, b"p": b"altered"})
            sync.xadd(updates.stream, genuine)  # replayed
            await good.publish(Message("neural.updates", "w", b"good 2"))
            got = [(await asyncio.wait_for(updates.receive(), 10)).payload for _ in range(2)]
            left = sync.xlen(updates.stream)
            sync.close()
            for bus in (listener, good, other, plain):
                await bus.aclose()
            return got, left, listener.verifier

        got, left, verifier = asyncio.run(main())
        assert got == [b"good 1", b"good 2"] and left == 0
        assert verifier.dropped == {UNSIGNED: 1, NOT_ADMITTED: 1, BAD_SIGNATURE: 1, REPLAYED: 1, FOREIGN_TASK: 0,
                                    MALFORMED: 0}

    def test_a_message_is_signed_for_its_swarm_and_topic(self, server):
        key = generate_key()

        async def main():
            listener = RedisBus(server.url, SWARM, verifier=Verifier([key.public_key]))
            events = listener.subscribe("agent.lifecycle", max_buffer_size=100)
            updates = listener.subscribe("neural.updates", max_buffer_size=100)
            good = RedisBus(server.url, SWARM, signer=Signer(key))
            await good.publish(Message("neural.updates", "w", b"update"))
            sync = redis.Redis.from_url(server.url)
            _, entry = sync.xrange(updates.stream)[-1]
            sync.xadd(events.stream, entry)  # moved to another topic's subscriber
            await good.publish(Message("agent.lifecycle", "w", b"event"))
            got = (await asyncio.wait_for(events.receive(), 10)).payload
            sync.close()
            for bus in (listener, good):
                await bus.aclose()
            return got, listener.verifier

        got, verifier = asyncio.run(main())
        assert got == b"event" and verifier.dropped[BAD_SIGNATURE] == 1


class TestAttachAdmit:
    @pytest.mark.parametrize("same_identity", [True, False])
    def test_an_attached_submit_takes_the_answers_of_the_one_it_replaces(self, server, monkeypatch, same_identity):
        """A submit answers an over-long line itself (AF5237, through the results stream) and is
        killed; the attached submit takes that answer only if it signs with the same identity."""
        import afrt.submit

        monkeypatch.setattr(afrt.submit, "MAX_LINE_BYTES", 40)
        first, admitted = generate_key(), generate_key()
        source = b'{"id": "a", "input": [0, 1]}\n{"id": "b", "input": [0, 1], "note": "longer than forty bytes"}\n'
        sid = "00000000aaaabbbb"

        async def killed():
            task = asyncio.ensure_future(submit(url=server.url, swarm=SWARM, agent=AGENT, source=io.BytesIO(source),
                                                sink=io.BytesIO(), submission=sid, identity=first,
                                                admit=[admitted.public_key]))
            r = redis.Redis.from_url(server.url)
            while r.xlen(f"af:{SWARM}:results:{sid}") < 1:  # its answer is written; no worker: "a" waits
                await asyncio.sleep(0.02)
            r.close()
            task.cancel()  # as a kill: nothing more is written
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(killed())
        out = io.BytesIO()
        summary = asyncio.run(submit(url=server.url, swarm=SWARM, sink=out, attach=sid, timeout=2,
                                     identity=first if same_identity else None, admit=[admitted.public_key]))
        codes = [orjson.loads(line)["error"]["code"] for line in out.getvalue().splitlines()]
        assert codes == ["AF5261", "AF5237" if same_identity else "AF5261"]
        assert summary.dropped[NOT_ADMITTED] == (0 if same_identity else 1)
