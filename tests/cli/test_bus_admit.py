"""`af run --bus ... --identity/--admit` and `af submit --admit` as a user runs them, against a private
redis-server on a free loopback port (tests/redis_server.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from redis_server import RedisServer

from af.cli import app
from afcore.signing import load_public_key

ROOT = Path(__file__).resolve().parents[2]
AF = str(Path(sys.executable).parent / "af")
XOR = ROOT / "examples" / "xor.af"


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def records(tmp_path):
    x = np.random.default_rng(5).random((200, 2), dtype=np.float32)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n" for i, row in enumerate(x)))
    return path


def keygen(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = tmp_path / f"{name}.key"
    subprocess.run([AF, "keygen", "--out", str(key)], check=True, capture_output=True)
    return key, key.with_suffix(".pub")


def start_worker(server: RedisServer, swarm: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([AF, "run", str(XOR), "--bus", server.url, "--swarm", swarm, "--json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_member(server: RedisServer, swarm: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = CliRunner().invoke(app, ["swarm", "status", "--bus", server.url, "--swarm", swarm, "--json"])
        members = [m for m in json.loads(result.stdout)["members"] if m["state"] != "gone"]
        if members:
            return members[0]
        time.sleep(0.2)
    pytest.fail("the worker never joined the swarm")


def submit(server: RedisServer, swarm: str, source: Path, out: Path, *extra: str) -> tuple[dict, str]:
    done = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", swarm, "--agent", "xor-agent", "--input",
                           str(source), "--output", str(out), "--json", *extra], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    return json.loads(err.strip().splitlines()[-1]), err


def stop(worker: subprocess.Popen) -> dict:
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return json.loads(err.decode().strip().splitlines()[-1])


class TestAdmit:
    def test_a_state_dir_identity_is_admitted_through_its_identity_pub(self, server, records, tmp_path):
        _, stranger = keygen(tmp_path, "stranger")
        worker = start_worker(server, "adm", "--state-dir", str(tmp_path / "state"))
        try:
            member = wait_for_member(server, "adm")
            pub = tmp_path / "state" / "xor-agent" / "r0" / "identity.pub"
            assert member["key_id"] == load_public_key(pub.read_bytes()).key_id
            refused, err = submit(server, "adm", records, tmp_path / "refused.jsonl", "--admit", str(stranger),
                                  "--timeout", "3")
            assert refused["results"] == 0 and refused["dropped"]["not_admitted"] >= 1
            assert err.count("warning[AF5401]") == 1 and "not admitted" in err and "Traceback" not in err
            codes = {orjson.loads(line)["error"]["code"] for line in (tmp_path / "refused.jsonl").read_bytes().splitlines()}
            assert codes == {"AF5261"}
            both = tmp_path / "both.pub"  # one file may hold several keys
            both.write_bytes(stranger.read_bytes() + pub.read_bytes())
            taken, err = submit(server, "adm", records, tmp_path / "out.jsonl", "--admit", str(both))
            assert taken["results"] == 200 and sum(taken["dropped"].values()) == 0 and "warning" not in err
        finally:
            left = stop(worker)
        assert left["key_id"] == member["key_id"] and sum(left["dropped"].values()) == 0

    def test_identity_signs_and_the_worker_takes_admit(self, server, records, tmp_path):
        key, pub = keygen(tmp_path, "worker")
        worker = start_worker(server, "ident", "--identity", str(key), "--admit", str(pub))
        try:
            wait_for_member(server, "ident")
            taken, _ = submit(server, "ident", records, tmp_path / "out.jsonl", "--admit", str(pub))
            assert taken["results"] == 200 and sum(taken["dropped"].values()) == 0
        finally:
            left = stop(worker)
        assert left["key_id"] == load_public_key(pub.read_bytes()).key_id and left["records"] == 200

    def test_usage(self, records, tmp_path):
        key, pub = keygen(tmp_path, "k")
        local = CliRunner().invoke(app, ["run", str(XOR), "--admit", str(pub), "--input", str(records)])
        assert local.exit_code == 2 and "AF0980" in local.stderr
        local = CliRunner().invoke(app, ["run", str(XOR), "--identity", str(key), "--input", str(records)])
        assert local.exit_code == 2 and "AF0980" in local.stderr
        private = CliRunner().invoke(app, ["submit", "--bus", "redis://127.0.0.1:1/0", "--swarm", "s", "--agent", "a",
                                           "--admit", str(key)])
        assert private.exit_code == 2 and "AF0963" in private.stderr and "private key" in private.stderr
        bad_identity = CliRunner().invoke(app, ["run", str(XOR), "--bus", "redis://127.0.0.1:1/0",
                                                "--identity", str(pub)])
        assert bad_identity.exit_code == 2 and "AF0962" in bad_identity.stderr
        submit_identity = CliRunner().invoke(app, ["submit", "--bus", "redis://127.0.0.1:1/0", "--swarm", "s",
                                                   "--agent", "a", "--identity", str(pub)])
        assert submit_identity.exit_code == 2 and "AF0962" in submit_identity.stderr
