"""Federations for the tests: a digits agent, data shards, workers (`af run --bus --local-data`) and
`af federate start` as processes on a private redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from redis_swarm_kit import _STARTED, _env  # one list of started processes, killed at exit

ROOT = Path(__file__).resolve().parents[2]
AF = str(Path(sys.executable).parent / "af")
AGENT = "fdigits"


def make_federation_files(directory: Path, shards: int, *, seed: int = 0) -> tuple[Path, list[Path], Path]:
    """Write the 64-32-10 digits agent, ``shards`` IID shards of the digits data and a held-out set."""
    from safetensors.numpy import save_file
    from sklearn.datasets import load_digits

    directory.mkdir(parents=True, exist_ok=True)
    agent = directory / f"{AGENT}.af"
    subprocess.run([AF, "init", str(directory / AGENT), "--input-size", "64", "--hidden", "32", "--output-size",
                    "10", "--force"], check=True, capture_output=True, env=_env())
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    held, rest = order[:300], order[300:]
    test = directory / "test.safetensors"
    save_file({"inputs": x[held], "targets": y[held]}, str(test))
    paths = []
    for k, part in enumerate(np.array_split(rest, shards)):
        paths.append(directory / f"shard{k}.safetensors")
        save_file({"inputs": x[part], "targets": y[part]}, str(paths[-1]))
    return agent, paths, test


def start_member(url: str, agent: Path, swarm: str, shard: Path, validation: Path | None = None,
                 *, attack: str | None = None, state_dir: Path | None = None, extra: tuple[str, ...] = (),
                 ) -> subprocess.Popen:
    """Start `af run --bus URL --local-data SHARD` (a worker taking part in the federation; ``extra``:
    more flags, e.g. ``--identity``/``--admit``)."""
    args = [AF, "run", str(agent), "--bus", url, "--swarm", swarm, "--local-data", str(shard), "--json", *extra]
    if validation is not None:
        args += ["--validation-data", str(validation)]
    if attack:
        args += ["--simulate-attack", attack]
    if state_dir is not None:
        args += ["--state-dir", str(state_dir)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    _STARTED.append(process)
    return process


def start_worker(url: str, agent: Path, swarm: str, *, state_dir: Path) -> subprocess.Popen:
    """Start `af run --bus URL` without --local-data (a worker that serves but does not take part)."""
    process = subprocess.Popen([AF, "run", str(agent), "--bus", url, "--swarm", swarm, "--json", "--state-dir",
                                str(state_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    _STARTED.append(process)
    return process


def start_federation(url: str, swarm: str, *options: str) -> subprocess.Popen:
    """Start `af federate start --json` (its stdout gets one JSON line per adopted round)."""
    process = subprocess.Popen([AF, "federate", "start", "--bus", url, "--swarm", swarm, "--agent", AGENT,
                                "--json", *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                               cwd=ROOT)
    _STARTED.append(process)
    return process


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out.decode(), err.decode()


def stop_members(*members: subprocess.Popen) -> None:
    for member in members:
        if member.poll() is None:
            member.terminate()
    for member in members:
        try:
            member.wait(30)
        except subprocess.TimeoutExpired:
            member.kill()
            member.wait()


def af_json(*args: str) -> dict:
    result = subprocess.run([AF, *args, "--json"], capture_output=True, env=_env(), timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def log_events(server, swarm: str) -> list[tuple[str, dict]]:
    """The federation's log stream, read with redis-cli."""
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return [(f[b"k"].decode(), orjson.loads(f[b"d"])) for _, f in client.xrange(f"af:{swarm}:fed:{AGENT}:log")]
    finally:
        client.close()


def redis_client(server):
    import redis

    return redis.Redis.from_url(server.url)


def wait_for(predicate, timeout: float = 60, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_history(server, swarm: str) -> dict[int, str]:
    """Every adopted version once with one digest, strictly increasing; return version -> digest."""
    adopted = [data for kind, data in log_events(server, swarm) if kind == "adopt"]
    versions = [a["version"] for a in adopted]
    assert versions == sorted(set(versions)), versions
    client = redis_client(server)
    try:
        stored = {int(k): v.decode() for k, v in client.hgetall(f"af:{swarm}:fed:{AGENT}:adopted").items()}
    finally:
        client.close()
    assert stored == {a["version"]: a["digest"] for a in adopted}
    return stored
