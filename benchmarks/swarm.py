"""Swarm benchmarks of issue 10, measured in one run on the same input, each next to its target.

(1) in-process `afrt.run_jsonl` (what `af run` does), records/s                     the baseline
(2) `afrt.submit.submit` through a swarm of 1 worker, then 2 workers (processes)     target (2 workers) >= 0.5x (1)
(3) the raw ceiling of redis-py: pipelined XADD of the same lines, 100 at a time     the transport's limit
(4) the round trip of one record through an idle swarm (1 worker), p50 and p90      target p50 <= 2 ms
(5) with ``--memory-records N`` (e.g. 1000000): Redis memory before and after N records of the
    xor example through 2 workers                                                  target: back within a small bound
(6) with ``--signing``: the cost of signed entries (afrt/busauth.py): sign and verify of one result
    entry (64 records) and of one topic message, in µs; then a worker that signs nothing with a
    submit that verifies nothing, against a worker with ``identity`` and a submit with ``admit``,
    in alternating rounds (records/s, ratio signed / unsigned)

The reference agent is examples/classification-agent.af (784 inputs), compiled into a temporary
directory; the input cycles through examples/classification-inputs.jsonl with fresh ids. Redis is
a private redis-server on a free 127.0.0.1 port (tests/redis_server.py), started and stopped here.
Run: ``.venv/bin/python benchmarks/swarm.py [--records N]``. This machine is shared: quote ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

import afrt

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]
sys.path += [str(ROOT / "tests"), str(ROOT / "tests" / "afrt")]

from redis_server import RedisServer  # noqa: E402
from redis_swarm_kit import start_worker, stop_workers  # noqa: E402

EXAMPLE = ROOT / "examples" / "classification-agent.af"
INPUTS = ROOT / "examples" / "classification-inputs.jsonl"
SWARM = "bench"


def compile_reference(out_dir: Path) -> Path:
    """Compile the reference example with the `af` command, as a user would."""
    bundle = out_dir / "classification-agent.afb"
    af = Path(sys.executable).parent / "af"
    subprocess.run([str(af), "compile", str(EXAMPLE), "-o", str(bundle)], check=True, capture_output=True)
    return bundle


def make_input(n: int) -> bytes:
    """Return ``n`` records cycling through the example inputs, with ids ``b<i>``."""
    rows = [orjson.loads(line)["input"] for line in INPUTS.read_bytes().splitlines() if line.strip()]
    return b"".join(orjson.dumps({"id": f"b{i}", "input": rows[i % len(rows)]}) + b"\n" for i in range(n))


def in_process(bundle: Path, data: bytes) -> float:
    agent = afrt.load(bundle)  # a run ends with cleanup_resources, which closes its agent
    started = time.perf_counter()
    summary = asyncio.run(afrt.run_jsonl(agent, io.BytesIO(data), io.BytesIO(), afrt.RunOptions()))
    assert summary.results == data.count(b"\n"), summary
    return time.perf_counter() - started


async def wait_members(url: str, n: int, swarm: str = SWARM) -> None:
    from afrt.submit import status

    while sum(m["state"] == "serving" for m in (await status(url, swarm))["members"]) < n:
        await asyncio.sleep(0.05)


def through_swarm(url: str, swarm: str, data: bytes, admit: list | None = None) -> float:
    from afrt.submit import submit

    started = time.perf_counter()
    summary = asyncio.run(submit(url=url, swarm=swarm, agent="classification-agent", source=io.BytesIO(data),
                                 sink=io.BytesIO(), admit=admit))
    seconds = time.perf_counter() - started
    assert summary.results == data.count(b"\n"), summary.to_json()
    assert not sum(summary.dropped.values()), summary.to_json()
    return seconds


def sign_verify_micro(bundle: Path, data: bytes, n: int = 2000) -> dict[str, tuple[float, float, int]]:
    """Return (sign µs, verify µs, bytes signed) of a result entry of 64 records and of a topic message."""
    from afcore.signing import generate_key
    from afrt.busauth import Signer, Verifier

    out = io.BytesIO()
    lines = b"\n".join(data.split(b"\n")[:64]) + b"\n"
    asyncio.run(afrt.run_jsonl(afrt.load(bundle), io.BytesIO(lines), out, afrt.RunOptions()))
    entries = {"result entry (64 records)": ("af:s:results:0123456789abcdef", {"n": 0, "d": out.getvalue()}),
               "topic message (an event)": ("af:s:topic:agent.lifecycle",
                                            {"s": "classification-agent-0123456789ab",
                                             "p": orjson.dumps({"event": "join", "agent": "x" * 40, "time": 1.0})})}
    key = generate_key()
    signer, costs = Signer(key), {}
    for name, (channel, fields) in entries.items():
        started = time.perf_counter()
        signed = [signer.sign(channel, fields) for _ in range(n)]
        sign = (time.perf_counter() - started) / n
        read = [{k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in f.items()} for f in signed]
        verifier = Verifier([key.public_key])
        started = time.perf_counter()
        assert all(verifier.check(channel, f) is None for f in read)
        verify = (time.perf_counter() - started) / n
        costs[name] = (sign * 1e6, verify * 1e6, sum(len(v) for v in read[0].values()))
    return costs


def signing(tmp: Path, records: int, rounds: int) -> None:
    """(6): sign/verify microseconds, then unsigned vs signed throughput side by side."""
    from afcore.signing import generate_key

    bundle = compile_reference(tmp)
    data = make_input(records)
    for name, (sign, verify, size) in sign_verify_micro(bundle, data).items():
        print(f"  {name:<26} {size:>7,} bytes: sign {sign:6.1f} µs, verify {verify:6.1f} µs")
    key = generate_key()
    (tmp / "w.key").write_bytes(key.to_pem())
    with RedisServer(tmp / "redis-signing") as server:
        pools = {"unsigned": start_worker(server.url, bundle, "plain", idle_ms=30_000, unsigned=True),
                 "signed": start_worker(server.url, bundle, "signed", idle_ms=30_000, identity=tmp / "w.key")}
        try:
            for swarm in ("plain", "signed"):
                asyncio.run(wait_members(server.url, 1, swarm))
            times: dict[str, list[float]] = {"unsigned": [], "signed": []}
            runs = {"unsigned": lambda: through_swarm(server.url, "plain", data),
                    "signed": lambda: through_swarm(server.url, "signed", data, admit=[key.public_key])}
            for i in range(rounds):  # each goes first in every other round: no order bias
                for name in (("unsigned", "signed") if i % 2 == 0 else ("signed", "unsigned")):
                    times[name].append(runs[name]())
        finally:
            stop_workers(*pools.values())
    rate = {name: records / statistics.median(seconds) for name, seconds in times.items()}
    print(f"{records} records of {EXAMPLE.name} through 1 worker, median of {rounds} alternating rounds")
    for name, value in rate.items():
        print(f"  {name:<9} {value:>10,.0f} records/s")
    extra = (1 / rate["signed"] - 1 / rate["unsigned"]) * 1e6
    print(f"  signed / unsigned: {rate['signed'] / rate['unsigned']:.3f}x ({extra:+.2f} µs per record)")


async def xadd_ceiling(url: str, data: bytes) -> float:
    from afrt.redisbus import connect

    client = await connect(url)
    lines = data.splitlines()
    started = time.perf_counter()
    for start in range(0, len(lines), 100):
        pipe = client.pipeline(transaction=False)
        for line in lines[start:start + 100]:
            pipe.xadd("bench:ceiling", {"d": line})
        await pipe.execute()
    seconds = time.perf_counter() - started
    await client.delete("bench:ceiling")
    await client.aclose()
    return seconds


async def round_trips(url: str, swarm: str, line: bytes, n: int) -> list[float]:
    """Send one record at a time as a task and wait for its result (one connection, as a client would)."""
    from afrt.redisbus import Keys, Task, connect

    client, keys = await connect(url), Keys(swarm)
    times = []
    for i in range(n):
        results = keys.results(f"rt{i}")
        started = time.perf_counter()
        await client.xadd(keys.tasks("classification-agent", "normal"), Task(f"rt{i}", 0, 1, 1, line).fields())
        reply = await client.xread({results: "0-0"}, count=1, block=5000)
        times.append(time.perf_counter() - started)
        assert reply, "no result"
        await client.delete(results)
    await client.aclose()
    return times


def memory_check(tmp: Path, n: int) -> tuple[int, int, float]:
    """Run ``n`` xor records through 2 workers; return Redis memory before and after, and the seconds."""
    from afrt.submit import submit

    xor = tmp / "xor.afb"
    subprocess.run([str(Path(sys.executable).parent / "af"), "compile", str(ROOT / "examples" / "xor.af"), "-o",
                    str(xor)], check=True, capture_output=True)
    rows = b"".join(b'{"id":"m%d","input":[%d,%d]}\n' % (i, i & 1, (i >> 1) & 1) for i in range(n))
    with RedisServer(tmp / "redis-memory") as server:
        procs = [start_worker(server.url, xor, SWARM, idle_ms=30_000) for _ in range(2)]
        try:
            asyncio.run(wait_members(server.url, 2))
            run = lambda data: asyncio.run(submit(url=server.url, swarm=SWARM, agent="xor-agent",  # noqa: E731
                                                  source=io.BytesIO(data), sink=io.BytesIO()))
            run(rows[:rows.index(b"\n", 0) + 1])  # warm-up: both workers connected and serving
            time.sleep(1.5)
            before = used_memory(server)
            started = time.perf_counter()
            summary = run(rows)
            seconds = time.perf_counter() - started
            assert summary.results == n, summary.to_json()
            time.sleep(1.5)  # a trim runs every second
            return before, used_memory(server), seconds
        finally:
            stop_workers(*procs)


def used_memory(server: RedisServer) -> int:
    return int(server.cli("info", "memory").split("used_memory:")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--memory-records", type=int, default=0)
    parser.add_argument("--signing", action="store_true", help="measure only the cost of signed entries (6)")
    args = parser.parse_args()
    if args.signing:
        with tempfile.TemporaryDirectory(prefix="af-bench-swarm-") as tmp:
            signing(Path(tmp), args.records, args.rounds)
        return
    if args.memory_records:
        with tempfile.TemporaryDirectory(prefix="af-bench-swarm-") as tmp:
            before, after, seconds = memory_check(Path(tmp), args.memory_records)
        print(f"{args.memory_records} xor records through 2 workers in {seconds:.1f} s "
              f"({args.memory_records / seconds:,.0f} records/s): Redis used_memory {before:,} bytes before, "
              f"{after:,} after ({after - before:+,})")
        return
    with tempfile.TemporaryDirectory(prefix="af-bench-swarm-") as tmp:
        bundle = compile_reference(Path(tmp))
        data = make_input(args.records)
        n = args.records
        with RedisServer(Path(tmp) / "redis") as server:
            # Two swarms side by side, one of 1 worker and one of 2, measured in alternating rounds
            # with the in-process run, so that the load of this shared machine hits all three alike.
            pools = {1: [start_worker(server.url, bundle, "bench1", idle_ms=30_000)],
                     2: [start_worker(server.url, bundle, "bench2", idle_ms=30_000) for _ in range(2)]}
            try:
                for size, procs in pools.items():
                    asyncio.run(wait_members(server.url, size, f"bench{size}"))
                times: dict[str, list[float]] = {"in-process": [], "1 worker": [], "2 workers": []}
                for _ in range(args.rounds):
                    times["in-process"].append(in_process(bundle, data))
                    times["1 worker"].append(through_swarm(server.url, "bench1", data))
                    times["2 workers"].append(through_swarm(server.url, "bench2", data))
                times["XADD ceiling"] = [asyncio.run(xadd_ceiling(server.url, data)) for _ in range(args.rounds)]
                line = data.split(b"\n", 1)[0]
                trips = asyncio.run(round_trips(server.url, "bench1", line, args.round_trips))[10:]  # after warm-up
            finally:
                stop_workers(*pools[1], *pools[2])
    rate = {name: n / statistics.median(seconds) for name, seconds in times.items()}
    print(f"{n} records of {EXAMPLE.name} (784 inputs), {len(data) / 1e6:.1f} MB of JSON Lines, "
          f"median of {args.rounds} alternating rounds")
    for name, value in rate.items():
        print(f"  {name:<14} {value:>10,.0f} records/s   {value / rate['in-process']:.2f}x in-process")
    print(f"  2 workers / in-process: {rate['2 workers'] / rate['in-process']:.2f}x   (target >= 0.5x)")
    print(f"  2 workers / 1 worker:   {rate['2 workers'] / rate['1 worker']:.2f}x")
    print(f"  2 workers / XADD ceiling: {rate['2 workers'] / rate['XADD ceiling']:.2f}x")
    p50, p90 = statistics.median(trips), statistics.quantiles(trips, n=10)[-1]
    print(f"  round trip of one record, idle swarm: p50 {p50 * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms   (target p50 <= 2 ms)")


if __name__ == "__main__":
    main()
