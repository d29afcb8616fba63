"""`afc.train.train_file`: what it writes, what it keeps, when it stops, and that it learns.

Learning is judged by an independent float64 forward pass (tests/float64_reference.py) of the weights
read back from the written file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from afc import load_agent_file
from afc.tensors import encode_tensors
from afc.train import EpochStats, TrainResult, train_file
from afc.writer import write_container
from afcore.errors import CheckError, ExecutionError, UsageError
from float64_reference import forward64

ROOT = Path(__file__).resolve().parents[2]
XOR_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_TARGETS = np.array([[0], [1], [1], [0]], dtype=np.float32)

#: the header `af init digits --input-size 784 --hidden 128,64,32 --output-size 10` writes
DIGITS_HEADER = """\
# Agent File Format v1.0 (written by `af init`; see docs/format.md)
version: "1.0"
name: "digits"
modified: "2026-01-01T00:00:00Z"
neural_config:
  network_type: "feedforward"
  input_size: 784
  output_size: 10
  hidden_layers: [128, 64, 32]
  activation_function: "relu"
  output_activation: "softmax"
  learning_rate: 0.001
workflows:
  initialization: [load_neural_network]
  execution: [receive_input, process_neural_network, send_output]
"""


def he_weights(sizes: list[int], seed: int) -> dict[str, np.ndarray]:
    """Fresh weights as `af init` draws them: N(0, 2/fan_in), bias 0, layer by layer from one generator."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        tensors[f"layers.{i}.weight"] = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        tensors[f"layers.{i}.bias"] = np.zeros(fan_out, dtype=np.float32)
    return tensors


@pytest.fixture
def fresh_xor(tmp_path: Path) -> Path:
    """examples/xor.af's header and training data, with freshly initialised weights."""
    agent = load_agent_file(ROOT / "examples" / "xor.af")
    data = write_container(agent.header_text, [("neural_weights", encode_tensors(he_weights([2, 4, 1], seed=3))),
                                               ("training_data", agent.sections["training_data"].payload)])
    path = tmp_path / "xor.af"
    path.write_bytes(data)
    return path


def outputs_of(path: Path, x: np.ndarray) -> np.ndarray:
    return forward64(load_agent_file(path).spec().network, x)


class TestLearns:
    @pytest.mark.parametrize("optimizer, epochs", [("sgd", 3000), ("adam", 1500), ("rprop", 300)])
    def test_xor_from_fresh_weights(self, fresh_xor, optimizer, epochs):
        rate = {"sgd": None, "adam": 0.05, "rprop": None}[optimizer]  # sgd: the header's 0.5
        before = outputs_of(fresh_xor, XOR_INPUTS)
        assert not np.array_equal(before > 0.5, XOR_TARGETS > 0.5)
        result = train_file(fresh_xor, epochs=epochs, optimizer=optimizer, learning_rate=rate, seed=0)
        after = outputs_of(fresh_xor, XOR_INPUTS)
        assert np.array_equal(after > 0.5, XOR_TARGETS > 0.5), after.ravel()
        assert result.loss < 0.2 * result.history[0].loss

    def test_digits_from_he_weights_reach_96_percent_held_out(self, tmp_path):
        from sklearn.model_selection import train_test_split

        from examples.build import load_digits_28x28

        x, y = load_digits_28x28()
        x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
        header = DIGITS_HEADER
        path = tmp_path / "digits.af"
        path.write_bytes(write_container(header, [("neural_weights", encode_tensors(he_weights([784, 128, 64, 32, 10], 0)))]))
        data = tmp_path / "train.safetensors"
        data.write_bytes(encode_tensors({"inputs": x_train, "targets": y_train.astype(np.float32)}))  # class indices
        result = train_file(path, data=data, epochs=30, batch_size=32, optimizer="adam", validation_split=0.1, seed=0)
        accuracy = float((outputs_of(path, x_test).argmax(axis=1) == y_test).mean())
        assert accuracy >= 0.96, accuracy
        assert result.val_accuracy is not None and result.val_accuracy > 0.9
        assert result.samples + result.validation_samples == len(x_train)


class TestWrites:
    def test_only_modified_and_the_weights_change(self, fresh_xor, tmp_path):
        source = fresh_xor.read_bytes()
        out = tmp_path / "out.af"
        result = train_file(fresh_xor, epochs=3, seed=1, output=out)
        assert fresh_xor.read_bytes() == source  # -o leaves the input alone
        before, after = load_agent_file(fresh_xor), load_agent_file(out)
        old_lines, new_lines = before.header_text.splitlines(), after.header_text.splitlines()
        # the old header stands as it was, but for `modified`; the provenance record follows it
        changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
        assert len(changed) == 1 and changed[0][1].startswith('modified: "') and changed[0][1].endswith('Z"')
        added = new_lines[len(old_lines):]
        assert added[0] == "training:" and all(line.startswith("  ") for line in added[1:])
        record = after.yaml["training"]
        assert (record["optimizer"], record["epochs"], record["seed"]) == ("sgd", 3, 1)
        assert record["data_sha256"] == result.header_record()["data_sha256"]
        assert after.sections["training_data"].payload == before.sections["training_data"].payload
        assert after.sections["neural_weights"].payload != before.sections["neural_weights"].payload
        assert list(after.sections) == list(before.sections)
        assert result.path == out and result.epochs == 3 and result.stopped == "epochs"

    def test_same_seed_same_weights_byte_for_byte(self, fresh_xor, tmp_path):
        payloads = []
        for name, seed in (("a.af", 7), ("b.af", 7), ("c.af", 8)):
            train_file(fresh_xor, epochs=20, batch_size=2, optimizer="adam", seed=seed, output=tmp_path / name)
            payloads.append(load_agent_file(tmp_path / name).sections["neural_weights"].payload)
        assert payloads[0] == payloads[1]
        assert payloads[0] != payloads[2]  # the seed drives the shuffling

    def test_a_drawn_seed_is_returned_and_reproduces_the_run(self, fresh_xor, tmp_path):
        first = train_file(fresh_xor, epochs=10, batch_size=1, output=tmp_path / "a.af")
        train_file(fresh_xor, epochs=10, batch_size=1, seed=first.seed, output=tmp_path / "b.af")
        weights = [load_agent_file(tmp_path / n).sections["neural_weights"].payload for n in ("a.af", "b.af")]
        assert weights[0] == weights[1]

    def test_keyboard_interrupt_leaves_the_file_untouched(self, fresh_xor):
        source = fresh_xor.read_bytes()

        def interrupt(stats: EpochStats) -> None:
            if stats.epoch == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train_file(fresh_xor, epochs=50, seed=0, progress=interrupt)
        assert fresh_xor.read_bytes() == source
        assert sorted(os.listdir(fresh_xor.parent)) == ["xor.af"]  # no temporary file left behind

    def test_crlf_file_keeps_its_line_endings_and_comments(self, tmp_path):
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        header = agent.header_text.replace("\n", "\r\n")
        path = tmp_path / "crlf.af"
        path.write_bytes(write_container(header, [("neural_weights", agent.sections["neural_weights"].payload),
                                                  ("training_data", agent.sections["training_data"].payload)],
                                         newline="\r\n"))
        train_file(path, epochs=2, seed=0)
        text = load_agent_file(path).header_text
        assert text.startswith("# Agent File Format v1.0\r\n") and "\n" not in text.replace("\r\n", "")

    def test_raw_sections_stay_raw(self, fresh_xor):
        agent = load_agent_file(fresh_xor)
        fresh_xor.write_bytes(write_container(agent.header_text, [(n, s.payload) for n, s in agent.sections.items()],
                                              raw=["neural_weights"]))
        train_file(fresh_xor, epochs=2, seed=0)
        sections = load_agent_file(fresh_xor).sections
        assert (sections["neural_weights"].encoding, sections["training_data"].encoding) == ("raw", "base64")

    def test_a_missing_modified_key_is_added_after_created(self, tmp_path):
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        header = "\n".join(line for line in agent.header_text.splitlines() if not line.startswith("modified:")) + "\n"
        path = tmp_path / "x.af"
        path.write_bytes(write_container(header, [("neural_weights", agent.sections["neural_weights"].payload),
                                                  ("training_data", agent.sections["training_data"].payload)]))
        train_file(path, epochs=1, seed=0)
        keys = list(load_agent_file(path).header)
        assert keys[keys.index("created") + 1] == "modified"


class TestStops:
    def test_target_loss_stops_early(self, fresh_xor):
        result = train_file(fresh_xor, epochs=5000, optimizer="rprop", target_loss=0.05, seed=0)
        assert result.stopped == "target_loss" and result.epochs < 5000 and result.loss <= 0.05

    def test_patience_keeps_the_best_epoch(self, tmp_path):
        # A linear 1-1 network on noisy data with a far too large learning rate: the loss bounces.
        rng = np.random.default_rng(0)
        x = rng.standard_normal((64, 1)).astype(np.float32)
        t = (2 * x + rng.standard_normal((64, 1))).astype(np.float32)
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        header = (agent.header_text.replace("input_size: 2", "input_size: 1").replace("hidden_layers: [4]", "hidden_layers: []")
                  .replace('output_activation: "sigmoid"', 'output_activation: "linear"'))
        path = tmp_path / "lin.af"
        weights = {"layers.0.weight": np.zeros((1, 1), np.float32), "layers.0.bias": np.zeros(1, np.float32)}
        path.write_bytes(write_container(header, [("neural_weights", encode_tensors(weights)),
                                                  ("training_data", encode_tensors({"inputs": x, "targets": t}))]))
        result = train_file(path, output=tmp_path / "patient.af", epochs=200, batch_size=4, learning_rate=0.3,
                            validation_split=0.25, patience=3, seed=0)
        assert result.stopped == "patience"
        best = min(result.history, key=lambda s: s.val_loss)
        assert result.best_epoch == best.epoch and result.val_loss == best.val_loss
        assert result.epochs == best.epoch + 3
        assert result.validation_samples == 16
        # the kept weights are the best epoch's: the same seed stopped there by `epochs` gives the same bytes
        train_file(path, output=tmp_path / "best.af", epochs=best.epoch, batch_size=4, learning_rate=0.3,
                   validation_split=0.25, seed=0)
        kept, again = (load_agent_file(p).sections["neural_weights"].payload for p in (result.path, tmp_path / "best.af"))
        assert kept == again

    def test_divergence_is_af6030_and_writes_nothing(self, tmp_path):
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((32, 2)) * 100).astype(np.float32)
        path = tmp_path / "d.af"
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        header = agent.header_text.replace('output_activation: "sigmoid"', 'output_activation: "linear"')
        path.write_bytes(write_container(header, [("neural_weights", agent.sections["neural_weights"].payload),
                                                  ("training_data", encode_tensors({"inputs": x, "targets": x[:, :1]}))]))
        source = path.read_bytes()
        with pytest.raises(ExecutionError) as info:
            train_file(path, epochs=200, learning_rate=5.0, seed=0)
        assert info.value.code == "AF6030"
        assert path.read_bytes() == source


class TestProgressAndResult:
    def test_progress_gets_every_epoch_with_validation_stats(self, fresh_xor):
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        # eight records (XOR twice) so that a split of 0.25 holds out two
        x, t = np.tile(XOR_INPUTS, (2, 1)), np.tile(XOR_TARGETS, (2, 1))
        fresh_xor.write_bytes(write_container(agent.header_text, [
            ("neural_weights", encode_tensors(he_weights([2, 4, 1], 3))),
            ("training_data", encode_tensors({"inputs": x, "targets": t}))]))
        seen: list[EpochStats] = []
        result = train_file(fresh_xor, epochs=4, validation_split=0.25, seed=0, progress=seen.append)
        assert [s.epoch for s in seen] == [1, 2, 3, 4] and all(s.epochs == 4 for s in seen)
        assert all(s.val_loss is not None and 0 <= s.val_accuracy <= 1 and s.samples_per_second > 0 for s in seen)
        assert (result.samples, result.validation_samples) == (6, 2)
        assert result.history == tuple(seen)

    def test_result_records_what_made_the_weights(self, fresh_xor):
        import hashlib

        result = train_file(fresh_xor, epochs=2, optimizer="adam", seed=5)
        assert isinstance(result, TrainResult)
        payload = load_agent_file(fresh_xor).sections["training_data"].payload
        record = result.header_record()
        assert record["data_sha256"] == hashlib.sha256(payload).hexdigest()
        assert record["optimizer"] == "adam" and record["seed"] == 5 and record["epochs"] == 2
        assert record["learning_rate"] == 0.5 and record["loss_function"] == "binary_cross_entropy"
        summary = result.to_json()
        assert summary["training"] == record and len(summary["history"]) == 2


class TestRefuses:
    @pytest.mark.parametrize("options", [
        {"epochs": 0}, {"batch_size": 0}, {"optimizer": "lbfgs"}, {"learning_rate": -1.0},
        {"validation_split": 1.0}, {"patience": 0}, {"target_loss": -1.0}, {"seed": -1},
    ])
    def test_bad_options_are_af6020(self, fresh_xor, options):
        with pytest.raises(UsageError) as info:
            train_file(fresh_xor, **options)
        assert info.value.code == "AF6020"

    def test_a_split_that_leaves_nothing_is_af6021(self, fresh_xor):
        with pytest.raises(UsageError) as info:
            train_file(fresh_xor, validation_split=0.1)  # 4 records: none held out
        assert info.value.code == "AF6021"

    def test_no_training_data_is_af6002(self, tmp_path):
        agent = load_agent_file(ROOT / "examples" / "xor.af")
        path = tmp_path / "bare.af"
        path.write_bytes(write_container(agent.header_text, [("neural_weights", agent.sections["neural_weights"].payload)]))
        with pytest.raises(UsageError) as info:
            train_file(path)
        assert info.value.code == "AF6002" and str(path) in info.value.message

    def test_targets_a_sigmoid_cannot_take_are_af6010(self, fresh_xor, tmp_path):
        data = tmp_path / "bad.jsonl"
        data.write_text('{"input": [0, 0], "target": [0]}\n{"input": [0, 1], "target": [2]}\n')
        with pytest.raises(CheckError) as info:
            train_file(fresh_xor, data=data)
        diagnostic = info.value.diagnostics[0]
        assert diagnostic.code == "AF6010" and diagnostic.span.path == str(data) and diagnostic.span.line == 2

    def test_an_unwritable_output_is_af6031(self, fresh_xor, tmp_path):
        with pytest.raises(UsageError) as info:
            train_file(fresh_xor, epochs=1, seed=0, output=tmp_path / "no" / "such" / "dir.af")
        assert info.value.code == "AF6031"


def test_the_header_record_fits_the_schema_proposed_in_docs_training_md(fresh_xor):
    import json
    import re

    import jsonschema

    text = (ROOT / "docs" / "training.md").read_text()
    proposal = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))["training"]
    jsonschema.Draft202012Validator.check_schema(proposal)
    result = train_file(fresh_xor, epochs=2, seed=3, optimizer="adam", validation_split=0.25)
    jsonschema.validate(result.header_record(), proposal)
