"""Instrument hooks: optional no-ops, dispatch only to overriders, broken instruments removed."""

from __future__ import annotations

import logging

import pytest

from afcore.steps import Step
from afrt.instrument import HOOKS, Instrument, Instruments


class Recorder(Instrument):
    def __init__(self):
        self.events = []

    def before_step(self, agent, workflow, step, context):
        self.events.append(("before", agent, workflow, step.name))

    def trap(self, agent, error):
        self.events.append(("trap", agent, error))


class Broken(Instrument):
    def message_sent(self, agent, topic, message):
        raise RuntimeError("boom")


class TestInstrument:
    def test_every_hook_is_a_no_op(self):
        base = Instrument()
        step = Step("receive_input")
        assert base.before_step("a", "execution", step, {}) is None
        assert base.after_step("a", "execution", step, {}, None) is None
        assert base.message_sent("a", "task.completion", {}) is None
        assert base.trap("a", None) is None
        assert HOOKS == ("before_step", "after_step", "message_sent", "trap")


class TestInstruments:
    def test_dispatches_only_to_overriders(self):
        recorder = Recorder()
        instruments = Instruments([recorder])
        assert instruments.wants("before_step") and instruments.wants("trap")
        assert not instruments.wants("after_step") and not instruments.wants("message_sent")
        instruments.call("before_step", "a", "execution", Step("send_output"), {})
        instruments.call("after_step", "a", "execution", Step("send_output"), {}, None)
        assert recorder.events == [("before", "a", "execution", "send_output")]

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
            instruments.call("message_sent", "a", "t", {})
        assert not instruments.wants("message_sent")
        assert "removed" in caplog.text
        instruments.call("trap", "a", "err")
        assert recorder.events == [("trap", "a", "err")]
