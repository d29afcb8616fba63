"""Online learning (`update_weights`): an agent fed labelled records gets better on held-out data, the
same stream gives the same weights byte for byte (whatever the blocks, on either backend), updates go out on
``neural.updates``, checkpoints hold the weights and a restart (also after kill -9) resumes them."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from afrt_testkit import make_bundle, manifest
from learning_kit import digits, labelled_lines, learning_bundle

import afrt
from afcore.bundle import write_bundle
from afcore.errors import BundleError
from afcore.learning import Adam, backprop
from afrt.messages import decode_update
from afrt.records import InputRecord
from afrt.state import load_checkpoint, load_or_create_identity, replica_dir
from afrt.swarm import Swarm
from afrt.weights import decode_layers

SIZES = (64, 24, 10)
ADAM = 'update_weights(learning_rate=0.01, every=8, optimizer="adam")'


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def adam_bundle(tmp_path_factory):
    return learning_bundle(tmp_path_factory.mktemp("adam"), SIZES, learn=ADAM)


def run(agent, lines: bytes, **options):
    sink = io.BytesIO()
    summary = asyncio.run(afrt.run_jsonl(agent, io.BytesIO(lines), sink, afrt.RunOptions(**options)))
    return [orjson.loads(line) for line in sink.getvalue().splitlines()], summary


def accuracy(agent, x, y) -> float:
    return float((agent.infer(x).argmax(axis=1) == y).mean())


def flat(layers) -> bytes:
    return b"".join(w.tobytes() + b.tobytes() for w, b in layers)


class TestLearning:
    def test_a_labelled_stream_improves_held_out_accuracy(self, adam_bundle, data):
        x, y, x_held, y_held = data
        agent = afrt.load(adam_bundle)
        before = accuracy(agent, x_held, y_held)
        targets = [int(label) for label in y]
        targets[::5] = [None] * len(targets[::5])  # records without a target run as today
        outputs, summary = run(agent, labelled_lines(x, targets))
        assert summary.errors == 0 and len(outputs) == len(x)
        learnt = len(x) - len(targets[::5])
        assert summary.to_json()["updates"] == learnt // 8
        after = accuracy(agent, x_held, y_held)
        assert before < 0.3 and after > 0.85, (before, after)

    def test_it_learns_as_af_train_does(self, tmp_path, data):
        # the independent reference: afcore.learning's backprop and Adam applied by hand to the same batches
        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn=ADAM)
        agent = afrt.load(bundle)
        layers = agent.weights()
        run(agent, labelled_lines(x[:40], [int(v) for v in y[:40]]))
        flat_params = np.concatenate([a.reshape(-1) for pair in layers for a in pair])
        views, start = [], 0
        for w, b in layers:
            views.append((flat_params[start : start + w.size].reshape(w.shape), flat_params[start + w.size : start + w.size + b.size]))
            start += w.size + b.size
        grads_flat = np.zeros_like(flat_params)
        grads, start = [], 0
        for w, b in layers:
            grads.append((grads_flat[start : start + w.size].reshape(w.shape), grads_flat[start + w.size : start + w.size + b.size]))
            start += w.size + b.size
        adam = Adam(flat_params.size, 0.01, np.dtype(np.float32))
        for batch in range(5):
            xs, ts = x[batch * 8 : batch * 8 + 8], np.eye(10, dtype=np.float32)[y[batch * 8 : batch * 8 + 8]]
            backprop(views, grads, "relu", "softmax", xs, ts)
            adam.step(flat_params, grads_flat)
        assert flat(agent.weights()) == flat_params.tobytes()


    def test_a_normalised_network_learns_from_the_inputs_it_sees(self, tmp_path):
        # the network sees (x - mean) / scale; the gradient must be taken there too, on both backends
        mean, scale = [0.5, -1.0, 2.0], [2.0, 0.5, 4.0]
        bundle = learning_bundle(tmp_path, (3, 4, 2), learn="update_weights(learning_rate=0.3, every=4)",
                                 output="linear", activation="tanh", normalization=(mean, scale))
        x = np.random.default_rng(2).random((8, 3)).astype(np.float32) * 4
        t = np.random.default_rng(3).random((8, 2)).astype(np.float32)
        learnt = []
        for backend in ("onnx", "wasm"):
            agent = afrt.load(bundle, backend=backend, cache_dir=tmp_path)
            start = agent.weights()
            np.testing.assert_array_equal(agent.input_normalization()[0], np.float32(mean))
            run(agent, labelled_lines(x, [list(map(float, row)) for row in t]))
            learnt.append(flat(agent.weights()))
        params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in start]
        xn = (x.astype(np.float64) - mean) / scale
        for batch in range(2):  # plain float64 SGD on the normalised inputs: the independent reference
            xs, ts = xn[batch * 4 : batch * 4 + 4], t[batch * 4 : batch * 4 + 4].astype(np.float64)
            h = np.tanh(xs @ params[0][0].T + params[0][1])
            z = h @ params[1][0].T + params[1][1]
            delta = (z - ts) / len(xs)
            g1 = (delta.T @ h, delta.sum(0))
            dh = (delta @ params[1][0]) * (1 - h * h)
            g0 = (dh.T @ xs, dh.sum(0))
            params = [(w - 0.3 * gw, b - 0.3 * gb) for (w, b), (gw, gb) in zip(params, (g0, g1))]
        assert learnt[0] == learnt[1]
        got = np.frombuffer(learnt[0], np.float32)
        want = np.concatenate([a.reshape(-1) for pair in params for a in pair])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class TestDeterminism:
    def test_same_stream_twice_gives_the_same_weights_and_outputs_whatever_the_blocks(self, adam_bundle, data):
        x, y, _, _ = data
        lines = labelled_lines(x[:300], [int(v) for v in y[:300]])
        runs = []
        for max_batch in (64, 64, 5, 1):
            agent = afrt.load(adam_bundle)
            outputs, _ = run(agent, lines, max_batch=max_batch)
            runs.append((flat(agent.weights()), [o["output"] for o in outputs]))
        assert all(weights == runs[0][0] for weights, _ in runs[1:])  # byte for byte, whatever the blocks
        assert runs[1][1] == runs[0][1]  # the same blocks: the same outputs, bit for bit
        # other blocks: onnxruntime's kernels for the weights it is fed (not constants) sum in another
        # order for another batch size, so the last bits of an output may differ (docs/training.md)
        for _, outputs in runs[2:]:
            np.testing.assert_allclose(outputs, runs[0][1], rtol=0, atol=1e-6)

    def test_the_per_record_path_learns_what_the_batched_path_learns(self, adam_bundle, data):
        x, y, _, _ = data
        lines = labelled_lines(x[:100], [int(v) if i % 3 else None for i, v in enumerate(y[:100])])

        class PerStep(afrt.Instrument):  # a per-step hook sends every block down the instrumented path
            def before_step(self, ctx, workflow, step, state):
                pass

        found = []
        for instrument in (None, PerStep()):
            agent = afrt.load(adam_bundle)
            outputs, _ = run(agent, lines, instrument=instrument)
            found.append((flat(agent.weights()), [o["output"] for o in outputs]))
        assert found[0] == found[1]

    def test_both_backends_learn_the_same_weights(self, adam_bundle, data, tmp_path):
        x, y, _, _ = data
        lines = labelled_lines(x[:200], [int(v) for v in y[:200]])
        found = {}
        for backend in ("onnx", "wasm"):
            agent = afrt.load(adam_bundle, backend=backend, cache_dir=tmp_path)
            outputs, _ = run(agent, lines)
            found[backend] = (agent.weights(), np.array([o["output"] for o in outputs]))
        for (w1, b1), (w2, b2) in zip(found["onnx"][0], found["wasm"][0]):
            np.testing.assert_allclose(w1, w2, rtol=0, atol=1e-6)
            np.testing.assert_allclose(b1, b2, rtol=0, atol=1e-6)
        np.testing.assert_allclose(found["onnx"][1], found["wasm"][1], atol=1e-5)

    def test_a_record_is_predicted_with_the_weights_of_every_update_before_it(self, tmp_path):
        # every=1: record i's output is the numpy forward pass of the weights after i updates
        bundle = learning_bundle(tmp_path, (3, 4, 2), learn="update_weights(learning_rate=0.5, every=1)",
                                 output="linear", activation="tanh")
        agent = afrt.load(bundle)
        rng = np.random.default_rng(1)
        x = rng.random((6, 3)).astype(np.float32)

        weights = [agent.weights()]
        outputs = []
        for row in x:  # one record at a time: the reference
            reference = afrt.load(bundle)
            reference.set_weights(weights[-1])
            outputs.append(reference.infer(row[None])[0])
            run(reference, labelled_lines(row[None], [[0.5, -0.5]]))
            weights.append(reference.weights())
        got, _ = run(agent, labelled_lines(x, [[0.5, -0.5]] * 6))  # one block of 6
        np.testing.assert_array_equal(np.array([g["output"] for g in got], np.float32), np.array(outputs))
        assert flat(agent.weights()) == flat(weights[-1])


class TestArguments:
    def test_an_integer_learning_rate_validates_compiles_and_runs(self, tmp_path, data):
        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn='update_weights(learning_rate=1, every=2, optimizer="rprop")')
        agent = afrt.load(bundle)
        _, summary = run(agent, labelled_lines(x[:4], [int(v) for v in y[:4]]))
        assert summary.errors == 0 and summary.to_json()["updates"] == 2


class TestTargets:
    def test_bad_targets_fail_only_their_record(self, tmp_path, data):
        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn="update_weights(every=2)")
        agent = afrt.load(bundle)
        targets = [3, [0.0] * 9, 10, "seven", [0.5] * 10, True, {"k": 1}, 4]
        lines = labelled_lines(x[:8], targets)
        outputs, summary = run(agent, lines)
        codes = [o.get("error", {}).get("code") for o in outputs]
        assert codes == [None, "AF5300", "AF5301", "AF5301", "AF5302", "AF5300", "AF5300", None]
        assert summary.to_json()["updates"] == 1  # records 0 and 7

    def test_labels_and_one_hot_rows_are_targets(self, tmp_path, data):
        x, y, _, _ = data
        source = learning_bundle(tmp_path, SIZES, learn="update_weights(every=3)")
        # the same agent with labels in its manifest: label "d3" is class 3
        bundle = afrt.load_bundle(source)
        info = {**bundle.manifest, "network": {**bundle.manifest["network"], "labels": [f"d{k}" for k in range(10)]}}
        labelled = write_bundle(info, dict(bundle.members))
        runs = []
        for targets in ([3, 1, 4], ["d3", "d1", "d4"], [list(np.eye(10)[k]) for k in (3, 1, 4)]):
            agent = afrt.load(labelled)
            run(agent, labelled_lines(x[:3], targets))
            runs.append(flat(agent.weights()))
        assert runs[0] == runs[1] == runs[2]
        assert afrt.load(labelled).weights_generation == 0


    def test_targets_cross_the_redis_work_queue(self):
        from afrt.records import RecordBlock
        from afrt.redisbus import decode_item, encode_item

        array = np.arange(6, dtype=np.float32).reshape(3, 2)
        for targets in ([None, 2, [0.5, 0.5]], None):
            back = decode_item(encode_item(RecordBlock([0, 1, 2], ["a", 1, "c"], [1, 2, 3], array, targets)))
            assert back.targets == targets and back.ids == ["a", 1, "c"]
            np.testing.assert_array_equal(back.array, array)


class TestPublished:
    def test_each_update_is_published_on_neural_updates(self, tmp_path, data):
        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn="update_weights(every=4)")
        agent = afrt.load(bundle)

        async def main():
            swarm = Swarm("s")
            updates = swarm.bus.subscribe("neural.updates")
            group = await swarm.start(agent)
            records = [InputRecord(i, i, list(map(float, x[i])), i + 1, int(y[i])) for i in range(10)]
            await swarm.feed(records)
            await swarm.stop()
            out = []
            while updates.statistics().current_buffer_used:
                out.append(decode_update(updates.receive_nowait().payload))
            return out, group.agent_ids[0]

        events, agent_id = asyncio.run(main())
        assert [e["sequence"] for e in events] == [1, 2]
        assert all(e["event"] == "update" and e["agent"] == "learner" and e["agent_id"] == agent_id for e in events)
        assert [e["examples"] for e in events] == [4, 4] and events[1]["examples_total"] == 8
        assert events[0]["optimizer"] == "sgd" and events[0]["learning_rate"] == 0.1 and events[0]["loss"] > 0
        assert flat(events[-1]["weights"]) == flat(agent.weights())


class TestCheckpoints:
    def test_a_checkpoint_holds_the_weights_and_a_restart_resumes_exactly(self, tmp_path, data):
        # A then (checkpoint, restart) B learns exactly what A+B in one run learns: weights, Adam's
        # moments and the records buffered for the next step are all in the checkpoint
        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn=ADAM)
        targets = [int(v) for v in y[:101]]
        whole = afrt.load(bundle)
        run(whole, labelled_lines(x[:101], targets))
        state = tmp_path / "state"
        first = afrt.load(bundle)
        run(first, labelled_lines(x[:53], targets[:53]), state_dir=state)
        identity, _ = load_or_create_identity(replica_dir(state, "learner", 0), "learner")
        saved = load_checkpoint(replica_dir(state, "learner", 0), identity)
        assert flat(decode_layers(saved["weights"])) == flat(first.weights())
        assert saved["learner"]["updates"] == 6 and len(saved["learner"]["pending_inputs"]) == 5
        second = afrt.load(bundle)
        outputs, summary = run(second, labelled_lines(x[53:101], targets[53:], start=53), state_dir=state)
        assert summary.restored and summary.to_json()["updates"] == 6
        assert flat(second.weights()) == flat(whole.weights())

    def test_v1_bundle_that_learns_is_refused_at_load_on_wasm(self, tmp_path):
        steps = {"execution": [{"name": n, "args": {}, "when": None, "source": n, "span": None}
                               for n in ("receive_input", "process_neural_network", "update_weights", "send_output")]}
        data, _ = make_bundle((6, 5, 3), workflows=steps)
        with pytest.raises(BundleError) as info:
            afrt.load(data, backend="wasm", cache_dir=tmp_path)
        assert info.value.code == "AF6101"
        assert manifest((6, 5, 3))["wasm"]["abi"] == 1

    def test_after_kill_9_a_restart_resumes_the_last_checkpoints_weights(self, tmp_path, data):
        x, y, x_held, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn="update_weights(learning_rate=0.05, every=4)", save_every=20)
        state = tmp_path / "state"
        child = subprocess.Popen([sys.executable, "-m", "af", "run", str(bundle), "--state-dir", str(state),
                                  "--max-batch", "4"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        directory = replica_dir(state, "learner", 0)
        try:
            child.stdin.write(labelled_lines(x[:100], [int(v) for v in y[:100]]))
            child.stdin.flush()
            saved = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the checkpoint after the 100th record
                if (directory / "checkpoint.afs").exists():
                    identity, _ = load_or_create_identity(directory, "learner")
                    saved = load_checkpoint(directory, identity)
                    if saved["memory"]["count"] == 100:
                        break
                time.sleep(0.05)
            assert saved is not None and saved["memory"]["count"] == 100
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.communicate()
        assert child.returncode == -signal.SIGKILL
        weights = decode_layers(saved["weights"])
        assert saved["learner"]["updates"] == 25
        restarted = afrt.load(bundle)
        outputs, summary = run(restarted, labelled_lines(x_held[:5], [None] * 5), state_dir=state)
        assert summary.restored
        assert flat(restarted.weights()) == flat(weights)
        fresh = afrt.load(bundle)
        fresh.set_weights(weights)  # the restarted agent answers with the checkpoint's weights
        np.testing.assert_array_equal(np.array([o["output"] for o in outputs], np.float32), fresh.infer(x_held[:5]))


class TestOnARedisSwarm:
    def test_a_worker_learns_from_submitted_targets_and_publishes_each_update(self, tmp_path, data):
        """`af submit` of labelled records to an `af run --bus` worker: the targets cross the work queue,
        the worker learns, and every update reaches a subscriber of neural.updates; the last one's
        weights are those of the same stream run in one process (byte for byte)."""
        from redis_server import RedisServer
        from redis_swarm_kit import finish, start_submit, start_worker, stop_workers

        from afrt.redisbus import RedisBus

        x, y, _, _ = data
        bundle = learning_bundle(tmp_path, SIZES, learn="update_weights(every=4)")
        lines = labelled_lines(x[:40], [int(v) for v in y[:40]])
        (tmp_path / "in.jsonl").write_bytes(lines)
        reference = afrt.load(bundle)
        run(reference, lines)

        async def main(url: str):
            listener = RedisBus(url, "ol")
            updates = listener.subscribe("neural.updates", max_buffer_size=100)
            worker = start_worker(url, bundle, "ol")
            try:
                submitted = await asyncio.to_thread(
                    finish, start_submit(url, "ol", "learner", tmp_path / "in.jsonl", tmp_path / "out.jsonl"))
                events = [decode_update((await asyncio.wait_for(updates.receive(), 30)).payload) for _ in range(10)]
            finally:
                worked = await asyncio.to_thread(stop_workers, worker)
                await listener.aclose()
            return submitted, events, worked[0]

        with RedisServer(tmp_path / "redis") as server:
            submitted, events, worked = asyncio.run(main(server.url))
        assert submitted["results"] == 40 and submitted["errors"] == 0
        assert [e["sequence"] for e in events] == list(range(1, 11)) and events[-1]["examples_total"] == 40
        assert flat(events[-1]["weights"]) == flat(reference.weights())
        assert worked["records"] == 40
