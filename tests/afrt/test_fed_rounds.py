"""Federated rounds across worker processes on a private Redis: the whole path, and its faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import numpy as np
import orjson
import pytest
from federated_kit import (AF, AGENT, _env, af_json, check_history, finish, log_events, make_federation_files,
                           redis_client, start_federation, start_member, start_worker, stop_members, wait_for)
from redis_server import RedisServer

from afcore import learning


def _forward(flat: np.ndarray, x: np.ndarray) -> np.ndarray:
    sizes, layers, start = (64, 32, 10), [], 0
    for n_in, n_out in zip(sizes, sizes[1:]):
        w = flat[start:start + n_in * n_out].reshape(n_out, n_in).astype(np.float64)
        start += n_in * n_out
        layers.append((w, flat[start:start + n_out].astype(np.float64)))
        start += n_out
    z, _, _ = learning.forward(layers, "relu", x.astype(np.float64), keep=False)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _model(server, swarm: str, digest: str) -> np.ndarray:
    client = redis_client(server)
    try:
        return np.frombuffer(client.hget(f"af:{swarm}:fed:{AGENT}:models", digest), "<f4")
    finally:
        client.close()


class TestFederation:
    def test_rounds_adopted_status_pull_and_hot_swap(self, tmp_path):
        agent, shards, test = make_federation_files(tmp_path / "data", 3)
        with RedisServer(tmp_path / "redis") as server:
            members = [start_member(server.url, agent, "fa", s, test, state_dir=tmp_path / f"st{i}")
                       for i, s in enumerate(shards)]
            # serves without taking part: it must still run each adopted version
            plain = start_worker(server.url, agent, "fa", state_dir=tmp_path / "plain")
            members.append(plain)
            try:
                federation = start_federation(server.url, "fa", "--rounds", "3", "--min-clients", "3",
                                              "--local-epochs", "2", "--round-timeout", "20", "--lease-seconds", "1")
                # records keep coming while models are adopted and swapped in: each submit gets every
                # record answered once, in order (the swap happens between blocks)
                from safetensors.numpy import load_file

                probe = load_file(str(test))["inputs"][:300]
                stream = b"".join(orjson.dumps({"id": i, "input": row.tolist()}) + b"\n" for i, row in enumerate(probe))
                answers = []
                while federation.poll() is None:
                    result = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", "fa", "--agent", AGENT],
                                            input=stream, capture_output=True, env=_env(), timeout=60)
                    assert result.returncode == 0, result.stderr.decode()
                    records = [orjson.loads(line) for line in result.stdout.splitlines()]
                    assert [r["id"] for r in records] == list(range(300)) and all("output" in r for r in records)
                    answers.append(np.array([r["output"] for r in records]))
                assert len(answers) >= 2  # submits ran across the rounds
                code, out, err = finish(federation)
                assert code == 0, err
                rows = [json.loads(line) for line in out.splitlines()]
                assert [r["round"] for r in rows] == [1, 2, 3] and all(r["adopted"] for r in rows)
                assert all(len(r["participants"]) == 3 and r["votes_for"] >= 2 for r in rows)
                assert rows[-1]["validation_accuracy"] > rows[0]["validation_accuracy"]
                status = af_json("federate", "status", "--bus", server.url, "--swarm", "fa")
                assert {"swarm", "agent", "rounds"} <= set(status) and status["agent"] == AGENT
                keys = {"round", "version", "digest", "participants", "votes_for", "votes_against", "adopted",
                        "validation_accuracy"}
                assert all(keys <= set(r) for r in status["rounds"])
                adopted = check_history(server, "fa")
                assert sorted(adopted) == [0, 1, 2, 3]
                final = _model(server, "fa", adopted[3])
                # the workers now answer with version 3 (hot-swapped): submit records, compare with numpy
                from safetensors.numpy import load_file

                plain_checkpoint = tmp_path / "plain" / "federated" / AGENT / "v3.f32"
                wait_for(plain_checkpoint.exists, timeout=30, what="the plain worker to adopt version 3")

                held = load_file(str(test))["inputs"][:40]
                lines = b"".join(orjson.dumps({"id": i, "input": row.tolist()}) + b"\n" for i, row in enumerate(held))
                result = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", "fa", "--agent", AGENT],
                                        input=lines, capture_output=True, env=_env(), timeout=60)
                assert result.returncode == 0, result.stderr.decode()
                outputs = np.array([orjson.loads(line)["output"] for line in result.stdout.splitlines()])
                np.testing.assert_allclose(outputs, _forward(final, held), atol=1e-5)
                checkpoint = tmp_path / "st0" / "federated" / AGENT / "v3.f32"
                np.testing.assert_array_equal(np.fromfile(checkpoint, "<f4"), final)
                pulled = tmp_path / "pulled.af"
                result = subprocess.run([AF, "federate", "pull", "--bus", server.url, "--swarm", "fa", "--agent",
                                         AGENT, "-o", str(pulled)], capture_output=True, env=_env(), timeout=60)
                assert result.returncode == 0, result.stderr.decode()
                result = subprocess.run([AF, "run", str(pulled)], input=lines, capture_output=True, env=_env(),
                                        timeout=60)
                pulled_out = np.array([orjson.loads(line)["output"] for line in result.stdout.splitlines()])
                np.testing.assert_allclose(pulled_out, _forward(final, held), atol=1e-5)
                # only the plain worker left: it answers with the adopted model too
                stop_members(*members[:-1])
                result = subprocess.run([AF, "submit", "--bus", server.url, "--swarm", "fa", "--agent", AGENT],
                                        input=lines, capture_output=True, env=_env(), timeout=60)
                assert result.returncode == 0, result.stderr.decode()
                outputs = np.array([orjson.loads(line)["output"] for line in result.stdout.splitlines()])
                np.testing.assert_allclose(outputs, _forward(final, held), atol=1e-5)
                np.testing.assert_array_equal(np.fromfile(plain_checkpoint, "<f4"), final)
            finally:
                stop_members(*members)
            assert all(m.returncode == 0 for m in members), [m.stderr.read().decode() for m in members]

    def test_krum_refuses_too_few_clients(self, tmp_path):
        result = subprocess.run([AF, "federate", "start", "--bus", "redis://127.0.0.1:1/0", "--swarm", "x",
                                 "--agent", AGENT, "--rounds", "1", "--strategy", "krum", "--byzantine", "1",
                                 "--min-clients", "4"], capture_output=True, env=_env(), timeout=60)
        assert result.returncode == 2 and b"AF6150" in result.stderr and b"Krum needs" in result.stderr
