"""Instrument hooks: optional no-ops, dispatch only to overriders, broken instruments removed."""

from __future__ import annotations

import logging

import pytest

from afcore.errors import AgentTrap
from afcore.steps import Step
from afrt.instrument import HOOKS, Instrument, Instruments


class Recorder(Instrument):
    def __init__(self):
        self.events = []

    def before_step(self, ctx, workflow, step, record):
        self.events.append(("before", ctx, workflow, step.name, record))

    def trap(self, ctx, error):
        self.events.append(("trap", ctx, error.code))


class Broken(Instrument):
    def message_sent(self, ctx, message):
        raise RuntimeError("boom")


class TestInstrument:
    def test_every_hook_is_a_no_op(self):
        base = Instrument()
        step = Step("receive_input")
        assert base.before_step("ctx", "execution", step, None) is None
        assert base.after_step("ctx", "execution", step, None) is None
        assert base.message_sent("ctx", object()) is None
        assert base.trap("ctx", AgentTrap("x")) is None
        assert base.block_start("ctx", object()) is None and base.block_end("ctx", object(), object()) is None
        assert base.backend_call("ctx", 3, 0.1, None) is None
        assert base.step_timed("ctx", "execution", step, 1, 0, 0, 0.1) is None
        assert set(HOOKS) == {"block_start", "block_end", "backend_call", "step_timed", "before_step", "after_step",
                              "message_sent", "trap"}


class TestInstruments:
    def test_dispatches_only_to_overriders(self):
        recorder = Recorder()
        instruments = Instruments([recorder])
        assert instruments.wants("before_step") and instruments.wants("trap")
        assert not instruments.wants("after_step") and not instruments.wants("message_sent")
        instruments.before_step("ctx", "execution", Step("send_output"), None)
        instruments.after_step("ctx", "execution", Step("send_output"), None)
        instruments.trap("ctx", AgentTrap("t", code="AF5001"))
        assert recorder.events == [("before", "ctx", "execution", "send_output", None), ("trap", "ctx", "AF5001")]

    def test_is_itself_an_instrument_with_every_hook(self):
        instruments = Instruments()
        assert isinstance(instruments, Instrument)
        for hook in HOOKS:
            assert callable(getattr(instruments, hook))
        instruments.message_sent("ctx", object())  # no listener: nothing happens

    def test_empty_is_falsy(self):
        assert not Instruments()
        assert Instruments([Recorder()])

    def test_remove(self):
        recorder = Recorder()
        instruments = Instruments([recorder])
        instruments.remove(recorder)
        assert not instruments
        with pytest.raises(KeyError):
            instruments.remove(recorder)

    def test_a_raising_instrument_is_removed_and_logged(self, caplog):
        broken, recorder = Broken(), Recorder()
        instruments = Instruments([broken, recorder])
        with caplog.at_level(logging.ERROR, logger="afrt.instrument"):
            instruments.message_sent("ctx", object())
        assert not instruments.wants("message_sent")
        assert "removed" in caplog.text
        instruments.trap("ctx", AgentTrap("t", code="AF5002"))
        assert recorder.events == [("trap", "ctx", "AF5002")]
