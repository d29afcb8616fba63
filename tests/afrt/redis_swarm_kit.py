"""Workers and submits as separate processes, for the Redis swarm tests and benchmarks/swarm.py.

The CLI does not wire `afrt.worker.serve` and `afrt.submit.submit` yet, so each process is a
``python -c`` script calling the API: a worker drains and exits 0 on SIGTERM/SIGINT and prints its
summary as JSON; a submit prints its summary as JSON.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import asyncio, os, signal, sys, time
import orjson
import afrt
import afrt.redisbus
from afcore.errors import AfError
from afrt.worker import serve

url, bundle, swarm, idle_ms, max_deliveries, metrics_port, slow_ms, poison, replicas, reconnect = sys.argv[1:11]
identity, admit, unsigned = sys.argv[11:14]
afrt.redisbus.RECONNECT_SECONDS = float(reconnect)
if unsigned == "1":  # benchmarks/swarm.py's baseline: a worker that signs nothing (an empty envelope)
    import afrt.busauth
    afrt.busauth.Signer.sign = lambda self, channel, fields: {**fields, "a": b""}
from afcore.signing import load_private_key, load_public_keys
key = load_private_key(open(identity, "rb").read()) if identity != "-" else None
admitted = load_public_keys(open(admit, "rb").read()) if admit != "-" else None
agent = afrt.load(bundle)
infer = agent.infer
def slow_infer(x):
    if poison == "1" and (x[:, 0] == 666).any():
        os._exit(3)  # a record that kills whatever runs it
    if float(slow_ms):
        time.sleep(float(slow_ms) / 1000)
    return infer(x)
agent.infer = slow_infer

async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGUSR1 shows where every task waits (what a test prints when a worker does not exit)
    loop.add_signal_handler(signal.SIGUSR1, lambda: [t.print_stack(file=sys.stderr) for t in asyncio.all_tasks()])
    summary = await serve(agent, url=url, swarm=swarm, replicas=int(replicas), stop=stop, idle_ms=int(idle_ms),
                          max_deliveries=int(max_deliveries),
                          metrics_port=int(metrics_port) if metrics_port != "-" else None,
                          identity=key, admit=admitted)
    sys.stdout.write(orjson.dumps(summary.to_json()).decode() + "\n")

try:
    asyncio.run(main())
except AfError as exc:  # what the CLI does with an af error: say it, exit 1
    sys.stderr.write(f"error[{exc.code}]: {exc.message}\n")
    sys.exit(1)
"""

SUBMIT = r"""
import asyncio, signal, sys
import orjson
from afcore.errors import AfError
from afrt.submit import submit

url, swarm, agent, source, output, attach, submission, priority, written, admit = sys.argv[1:11]
from afcore.signing import load_public_keys
admitted = load_public_keys(open(admit, "rb").read()) if admit != "-" else None
async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: [t.print_stack(file=sys.stderr) for t in asyncio.all_tasks()])
    with open(output, "ab" if attach != "-" else "wb") as sink:
        if attach != "-":
            summary = await submit(url=url, swarm=swarm, sink=sink, attach=attach, timeout=120,
                                   written=int(written) if written != "-" else None, admit=admitted)
        else:
            with open(source, "rb") as src:
                summary = await submit(url=url, swarm=swarm, agent=agent, source=src, sink=sink, timeout=120,
                                       submission=submission, priority=priority, admit=admitted)
    sys.stdout.write(orjson.dumps(summary.to_json()).decode() + "\n")

try:
    asyncio.run(main())
except AfError as exc:
    sys.stderr.write(f"error[{exc.code}]: {exc.message}\n")
    sys.exit(1)
"""


#: every process started here; those still running when the tests end are killed (a failed test
#: must not leave workers behind)
_STARTED: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_worker(url: str, bundle: Path | str, swarm: str, *, idle_ms: int = 1000, max_deliveries: int = 3,
                 metrics_port: int | None = None, slow_ms: float = 0.0, poison: bool = False,
                 replicas: int = 1, reconnect_seconds: float = 60.0, identity: Path | None = None,
                 admit: Path | None = None, unsigned: bool = False) -> subprocess.Popen:
    """Start a worker process (its stdout is a pipe that gets its summary).

    ``identity`` (a .key) signs what it writes, ``admit`` (a file of .pub keys) is its
    ``--admit``; ``unsigned`` makes it sign nothing (a baseline for benchmarks/swarm.py)."""
    args = [url, str(bundle), swarm, str(idle_ms), str(max_deliveries),
            str(metrics_port) if metrics_port else "-", str(slow_ms), "1" if poison else "0", str(replicas),
            str(reconnect_seconds), str(identity or "-"), str(admit or "-"), "1" if unsigned else "0"]
    process = subprocess.Popen([sys.executable, "-c", WORKER, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    _STARTED.append(process)
    return process


def start_submit(url: str, swarm: str, agent: str, source: Path, output: Path, *, attach: str | None = None,
                 submission: str = "-", priority: str = "normal", written: int | None = None,
                 admit: Path | None = None) -> subprocess.Popen:
    """Start a submit process writing to ``output`` (appending when attaching; ``admit``: its ``--admit``)."""
    args = [url, swarm, agent, str(source), str(output), attach or "-", submission, priority,
            "-" if written is None else str(written), str(admit or "-")]
    process = subprocess.Popen([sys.executable, "-c", SUBMIT, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    _STARTED.append(process)
    return process


def finish(process: subprocess.Popen, timeout: float = 120) -> dict:
    """Wait for a process to exit 0 and return the JSON summary it printed."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # a worker prints its tasks' stacks
        time.sleep(1)
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"pid {process.pid} did not exit in {timeout} s:\n{err.decode()[-6000:]}") from None
    assert process.returncode == 0, err.decode()[-3000:]
    return orjson.loads(out.splitlines()[-1])


def stop_workers(*workers: subprocess.Popen) -> list[dict]:
    """SIGTERM the workers still running (they drain) and return every worker's summary."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    return [finish(worker, 60) for worker in workers]


def write_inputs(path: Path, n: int, width: int, *, seed: int = 0, poison_at: int | None = None) -> np.ndarray:
    """Write ``n`` records ``{"id": "r<i>", "input": [...]}`` and return their float32 inputs."""
    x = np.random.default_rng(seed).random((n, width), dtype=np.float32)
    if poison_at is not None:
        x[poison_at, 0] = 666
    with open(path, "wb") as f:
        for i, row in enumerate(x):
            f.write(orjson.dumps({"id": f"r{i}", "input": row.tolist()}) + b"\n")
    return x


def lines_of(path: Path) -> int:
    """Return how many lines ``path`` holds now."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(path: Path, n: int, timeout: float = 60) -> None:
    """Wait until ``path`` holds at least ``n`` lines."""
    deadline = time.monotonic() + timeout
    while lines_of(path) < n:
        assert time.monotonic() < deadline, f"{path} did not reach {n} lines"
        time.sleep(0.02)
