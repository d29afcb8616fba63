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
