"""`af swarm acl`: each role's Redis ACL rules, checked against a real redis-server with one user per
role (an allowed and a forbidden operation each), and a whole run by a worker and a submitter
logged in as those users (issue 12, least privilege)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from redis_server import RedisServer

from af.cli import app

AF = str(Path(sys.executable).parent / "af")
XOR = Path(__file__).resolve().parents[2] / "examples" / "xor.af"
ROLES = ("worker", "submitter", "observer", "admin")


def rules(swarm: str, role: str) -> list[str]:
    result = CliRunner().invoke(app, ["swarm", "acl", "--swarm", swarm, "--role", role])
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        for role in ROLES:
            assert server.cli("ACL", "SETUSER", role, "on", f">{role}-pw", *rules("A", role)).strip() == "OK"
        server.cli("XADD", "af:A:tasks:xor-agent:normal", "*", "k", "v")
        server.cli("XADD", "af:B:tasks:xor-agent:normal", "*", "k", "v")
        yield server


def as_user(server: RedisServer, role: str, *command: str) -> str:
    found = subprocess.run(["redis-cli", "-p", str(server.port), "--user", role, "--pass", f"{role}-pw",
                            "--no-auth-warning", *command], capture_output=True, text=True, timeout=10)
    return (found.stdout + found.stderr).strip()


@pytest.mark.parametrize("role, allowed, forbidden", [
    ("worker", ("XADD", "af:A:results:s1", "*", "id", "1"), ("XADD", "af:B:results:s1", "*", "id", "1")),
    ("worker", ("XLEN", "af:A:tasks:xor-agent:normal"), ("CONFIG", "GET", "maxmemory")),
    ("submitter", ("XADD", "af:A:tasks:xor-agent:normal", "*", "r", "1"), ("XLEN", "af:B:tasks:xor-agent:normal")),
    ("observer", ("XLEN", "af:A:tasks:xor-agent:normal"), ("XADD", "af:A:tasks:xor-agent:normal", "*", "r", "1")),
    ("admin", ("DEL", "af:A:results:s1"), ("FLUSHALL",)),
])
def test_each_role_may_do_its_work_and_nothing_else(server, role, allowed, forbidden):
    assert "NOPERM" not in as_user(server, role, *allowed)
    assert "NOPERM" in as_user(server, role, *forbidden)


def test_a_whole_run_by_least_privileged_users(server, tmp_path):
    records = tmp_path / "in.jsonl"
    records.write_bytes(b"".join(orjson.dumps({"id": f"r{i}", "input": [i % 2, (i // 2) % 2]}) + b"\n"
                                 for i in range(40)))
    worker = subprocess.Popen([AF, "run", str(XOR), "--bus", server.url_for("worker", "worker-pw"), "--swarm", "A",
                               "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = tmp_path / "out.jsonl"
        submit = subprocess.run([AF, "submit", "--bus", server.url_for("submitter", "submitter-pw"), "--swarm", "A",
                                 "--agent", "xor-agent", "--input", str(records), "--output", str(out),
                                 "--timeout", "60"], capture_output=True, timeout=120)
        assert submit.returncode == 0, submit.stderr.decode()
        lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        assert [r["id"] for r in lines] == [f"r{i}" for i in range(40)] and all("output" in r for r in lines)
        status = subprocess.run([AF, "swarm", "status", "--bus", server.url_for("observer", "observer-pw"),
                                 "--swarm", "A", "--json"], capture_output=True, timeout=60)
        assert status.returncode == 0, status.stderr.decode()
        # the worker's credentials are refused in another swarm
        other = subprocess.run([AF, "submit", "--bus", server.url_for("worker", "worker-pw"), "--swarm", "B",
                                "--agent", "xor-agent", "--input", str(records), "-o", str(tmp_path / "b.jsonl"),
                                "--timeout", "5"], capture_output=True, timeout=60)
        assert other.returncode == 1 and b"AF5115" in other.stderr and b"permission" in other.stderr
        assert b"Traceback" not in other.stderr
    finally:
        worker.terminate()
        worker.communicate(timeout=60)
    assert worker.returncode == 0


def test_a_swarm_name_that_would_widen_the_pattern_is_refused():
    result = CliRunner().invoke(app, ["swarm", "acl", "--swarm", "a*", "--role", "worker"])
    assert result.exit_code == 2 and "AF0938" in result.stderr
