"""`af init`: a valid scaffold with He-initialised weights."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import afc
from af.cli import app


@pytest.fixture
def runner():
    return CliRunner()


class TestInit:
    def test_scaffold_validates(self, runner, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        result = runner.invoke(app, ["init", "my-agent"])
        assert result.exit_code == 0, result.output
        assert afc.validate(tmp_path / "my-agent.af") == []
        agent = afc.load_agent_file(tmp_path / "my-agent.af")
        assert agent.header["name"] == "my-agent"
        assert list(agent.workflows["execution"])[1].name == "process_neural_network"

    def test_options_shape_the_network(self, runner, tmp_path):
        target = tmp_path / "sub" / "net"
        target.parent.mkdir()
        result = runner.invoke(app, ["init", str(target), "--input-size", "300", "--hidden", "200,100",
                                     "--output-size", "3", "--activation", "tanh", "--output-activation", "linear",
                                     "--raw"])
        assert result.exit_code == 0, result.output
        spec = afc.load_agent_file(tmp_path / "sub" / "net.af").spec()
        assert [(layer.in_size, layer.out_size) for layer in spec.network.layers] == [(300, 200), (200, 100), (100, 3)]
        assert spec.network.hidden_activation == "tanh" and spec.network.output_activation == "linear"

    def test_he_initialisation(self, runner, tmp_path):
        runner.invoke(app, ["init", str(tmp_path / "he"), "--input-size", "400", "--hidden", "300",
                            "--output-size", "200", "--seed", "7"])
        weights = afc.load_agent_file(tmp_path / "he.af").weights
        for i, fan_in in ((0, 400), (1, 300)):
            w = weights[f"layers.{i}.weight"].astype(np.float64)
            assert abs(w.mean()) < 0.01
            assert w.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.03)
            assert not weights[f"layers.{i}.bias"].any()

    def test_seed_is_reproducible_and_matters(self, runner, tmp_path):
        for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
            runner.invoke(app, ["init", str(tmp_path / name), "--seed", seed])
        load = lambda n: afc.load_agent_file(tmp_path / f"{n}.af").weights["layers.0.weight"]  # noqa: E731
        np.testing.assert_array_equal(load("a"), load("b"))
        assert not np.array_equal(load("a"), load("c"))

    def test_refuses_to_overwrite_without_force(self, runner, tmp_path):
        target = tmp_path / "x.af"
        target.write_text("keep me")
        result = runner.invoke(app, ["init", str(tmp_path / "x")])
        assert result.exit_code == 2 and "AF0902" in result.output and target.read_text() == "keep me"
        assert runner.invoke(app, ["init", str(tmp_path / "x"), "--force"]).exit_code == 0
        assert afc.validate(target) == []

    @pytest.mark.parametrize("args", [["bad name"], ["ok", "--hidden", "3,x"], ["ok", "--activation", "rleu"],
                                      ["ok", "--output-activation", "tanh"], ["ok", "--input-size", "0"]])
    def test_bad_arguments_are_usage_errors(self, runner, tmp_path, args):
        args = [str(tmp_path / args[0]), *args[1:]]
        result = runner.invoke(app, ["init", *args])
        assert result.exit_code == 2 and "Traceback" not in result.output


class TestInitPlaces:
    def test_missing_parent_directories_are_created(self, runner, tmp_path):
        result = runner.invoke(app, ["init", str(tmp_path / "sub" / "dir" / "x")])
        assert result.exit_code == 0, result.output
        assert afc.validate(tmp_path / "sub" / "dir" / "x.af") == []

    def test_a_place_that_cannot_be_written_is_a_clear_error(self, runner):
        result = runner.invoke(app, ["init", "/proc/x"])
        assert result.exit_code == 2 and "AF0906" in result.stderr and "= help: " in result.stderr
        assert "Traceback" not in result.output

    def test_a_file_in_the_way_of_a_directory_is_a_clear_error(self, runner, tmp_path):
        (tmp_path / "file").write_text("")
        result = runner.invoke(app, ["init", str(tmp_path / "file" / "x")])
        assert result.exit_code == 2 and "AF0906" in result.stderr and "Traceback" not in result.output


class TestInitActivations:
    def test_one_output_gets_sigmoid(self, runner, tmp_path):
        result = runner.invoke(app, ["init", str(tmp_path / "one"), "--output-size", "1"])
        assert result.exit_code == 0, result.output
        assert afc.load_agent_file(tmp_path / "one.af").spec().network.output_activation == "sigmoid"
        assert "relu/sigmoid" in result.stderr and "warning" not in result.stderr

    def test_softmax_over_one_output_is_warned(self, runner, tmp_path):
        result = runner.invoke(app, ["init", str(tmp_path / "one"), "--output-size", "1",
                                     "--output-activation", "softmax"])
        assert result.exit_code == 0 and "warning: softmax over one output is always 1.0" in result.stderr

    def test_several_outputs_keep_softmax(self, runner, tmp_path):
        result = runner.invoke(app, ["init", str(tmp_path / "many")])
        assert result.exit_code == 0 and "16-32-16-4 relu/softmax" in result.stderr

    def test_no_hidden_layer_is_reported_as_such(self, runner, tmp_path):
        result = runner.invoke(app, ["init", str(tmp_path / "lin"), "--hidden", ""])
        assert result.exit_code == 0, result.output
        assert "16-4 softmax (no hidden layer)" in result.stderr and "relu" not in result.stderr
        assert len(afc.load_agent_file(tmp_path / "lin.af").spec().network.layers) == 1
