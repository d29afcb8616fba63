"""The signed-entry envelope of afrt/busauth.py: what is signed, and every way to tamper with it.

The reference is `cryptography`'s Ed25519 verify over the encoding written out here by hand, from
the format docs/swarm.md states (not through `afrt.busauth.signed_bytes`).
"""

from __future__ import annotations

import base64
import logging
import struct

import pytest

from afcore.errors import UsageError
from afcore.signing import generate_key, load_public_keys
from afrt.busauth import (AUTH_FIELD, BAD_SIGNATURE, FOREIGN_TASK, MALFORMED, NOT_ADMITTED, REPLAY_WINDOW, REPLAYED,
                          UNSIGNED, Signer, Verifier)

CHANNEL = "af:s:results:0123456789abcdef"


def as_read(fields: dict) -> dict[bytes, bytes]:
    """Return the fields as redis-py reads them back (bytes names and values)."""
    out = {}
    for name, value in fields.items():
        out[name.encode()] = value if isinstance(value, bytes) else str(value).encode()
    return out


@pytest.fixture
def key():
    return generate_key()


@pytest.fixture
def signer(key):
    return Signer(key)


@pytest.fixture
def verifier(key):
    return Verifier([key.public_key])


def signed(signer: Signer, n: int = 0, data: bytes = b'{"id":"a","output":[0.5]}\n', channel: str = CHANNEL):
    return as_read(signer.sign(channel, {"n": n, "d": data}))


class TestEnvelope:
    def test_format_and_signature_match_the_documented_encoding(self, key, signer):
        fields = signed(signer, 7)
        version, key_id, session, seq, sig = fields[b"a"].split(b".")
        assert (version, key_id.decode(), session.decode(), seq) == (b"1", key.key_id, signer.session, b"1")
        # the documented encoding, written out independently
        items = sorted([(b"d", fields[b"d"]), (b"n", b"7")])
        data = (b"af-bus-entry-v1\n" + struct.pack(">I", len(CHANNEL)) + CHANNEL.encode() + key_id + session
                + struct.pack(">Q", 1) + struct.pack(">I", 2)
                + b"".join(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v for n, v in items))
        key.private_key.public_key().verify(base64.urlsafe_b64decode(sig + b"=="), data)  # raises if wrong

    def test_a_genuine_entry_is_accepted_once(self, signer, verifier):
        fields = signed(signer)
        assert verifier.check(CHANNEL, fields) is None
        assert verifier.check(CHANNEL, dict(fields)) == REPLAYED
        assert verifier.accepted == 1 and verifier.dropped[REPLAYED] == 1

    def test_sequence_numbers_grow_across_channels(self, signer):
        seqs = [int(signed(signer, channel=c)[b"a"].split(b".")[3]) for c in ("x", "y", "x")]
        assert seqs == [1, 2, 3]

    def test_the_auth_field_name_is_reserved(self, signer):
        with pytest.raises(ValueError):
            signer.sign(CHANNEL, {AUTH_FIELD: b"x"})


def _tamper_cases():
    def field(name, value):
        def apply(f):
            f[name] = value
        return apply

    def auth_part(index, value):
        def apply(f):
            parts = f[b"a"].split(b".")
            parts[index] = value(parts[index])
            f[b"a"] = b".".join(parts)
        return apply

    def flip_signature(f):
        parts = f[b"a"].split(b".")
        raw = bytearray(base64.urlsafe_b64decode(parts[4] + b"=="))
        raw[10] ^= 1
        parts[4] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")
        f[b"a"] = b".".join(parts)

    return {
        "payload": field(b"d", b'{"id":"a","output":[0.75]}\n'),
        "index": field(b"n", b"1"),
        "added field": field(b"x", b"1"),
        "removed field": lambda f: f.pop(b"n"),
        "renamed field": lambda f: f.update({b"N": f.pop(b"n")}),
        "session": auth_part(2, lambda s: b"0" * 16),
        "seq": auth_part(3, lambda s: b"2"),
        "seq with a leading zero": auth_part(3, lambda s: b"0" + s),
        "version": auth_part(0, lambda s: b"2"),
        "key id in upper case": auth_part(1, lambda s: s.upper()),
        "signature bit": flip_signature,
        "signature truncated": auth_part(4, lambda s: s[:-2]),
        "signature not canonical base64": auth_part(4, lambda s: s[:-1] + (b"B" if s[-1:] == b"A" else b"A")),
        "signature not base64": auth_part(4, lambda s: b"!" * len(s)),
        "envelope cut": lambda f: f.update({b"a": f[b"a"].rsplit(b".", 1)[0]}),
        "envelope empty": field(b"a", b""),
    }


TAMPER = _tamper_cases()


class TestTampering:
    @pytest.mark.parametrize("case", sorted(TAMPER))
    def test_any_change_is_refused(self, signer, verifier, case):
        fields = signed(signer)
        TAMPER[case](fields)
        assert verifier.check(CHANNEL, fields) == BAD_SIGNATURE
        assert verifier.accepted == 0

    def test_another_channel_is_refused(self, signer, verifier):
        assert verifier.check(CHANNEL + "x", signed(signer)) == BAD_SIGNATURE

    def test_unsigned_and_not_admitted(self, signer, verifier):
        assert verifier.check(CHANNEL, {b"n": b"0", b"d": b"x"}) == UNSIGNED
        assert verifier.check(CHANNEL, signed(Signer(generate_key()))) == NOT_ADMITTED
        assert verifier.dropped == {UNSIGNED: 1, NOT_ADMITTED: 1, BAD_SIGNATURE: 0, REPLAYED: 0, FOREIGN_TASK: 0,
                                    MALFORMED: 0}

    def test_a_forgery_under_an_admitted_key_id_is_a_bad_signature(self, key, verifier):
        forger = Signer(generate_key())
        forger.key_id = key.key_id  # claims the admitted key's id
        forger._ids = (key.key_id.encode(), forger._ids[1])
        assert verifier.check(CHANNEL, signed(forger)) == BAD_SIGNATURE


class TestReplayWindow:
    def test_out_of_order_within_the_window_is_taken_once(self, signer, verifier):
        entries = [signed(signer, i) for i in range(10)]
        order = [3, 0, 9, 1, 2, 8, 4, 7, 5, 6]
        assert [verifier.check(CHANNEL, entries[i]) for i in order] == [None] * 10
        assert [verifier.check(CHANNEL, entries[i]) for i in order] == [REPLAYED] * 10

    def test_older_than_the_window_is_a_replay(self, key, signer):
        verifier = Verifier([key.public_key], window=8)
        old = signed(signer)
        for i in range(8):
            signed(signer)
        assert verifier.check(CHANNEL, signed(signer)) is None  # seq 10
        assert verifier.check(CHANNEL, old) == REPLAYED  # seq 1: 9 behind, window 8

    def test_a_restarted_signer_is_a_new_session(self, key, verifier):
        first, second = Signer(key), Signer(key)
        assert first.session != second.session
        assert verifier.check(CHANNEL, signed(first)) is None
        assert verifier.check(CHANNEL, signed(second)) is None  # seq 1 again, another session

    def test_the_default_window(self):
        assert REPLAY_WINDOW == 4096


class TestWarnings:
    def test_one_warning_per_reason_then_counted(self, signer, verifier, caplog):
        caplog.set_level(logging.WARNING, logger="afrt.busauth")
        for _ in range(5):
            verifier.check(CHANNEL, {b"n": b"0"})
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1 and "AF5400" in messages[0] and "not signed" in messages[0]
        assert verifier.dropped[UNSIGNED] == 5


class TestAdmittedKeys:
    def test_a_file_of_several_public_keys(self, tmp_path):
        a, b = generate_key(), generate_key()
        keys = load_public_keys(a.public_key.to_pem() + b"\n" + b.public_key.to_pem() + a.public_key.to_pem())
        assert [k.key_id for k in keys] == [a.key_id, b.key_id]

    @pytest.mark.parametrize("data", [b"", b"not a key", "private", "trailing"])
    def test_anything_else_is_af0963(self, data):
        key = generate_key()
        data = {"private": key.to_pem(), "trailing": key.public_key.to_pem() + b"junk"}.get(data, data)
        with pytest.raises(UsageError) as info:
            load_public_keys(data)
        assert info.value.code == "AF0963"

    def test_a_verifier_needs_a_key(self):
        with pytest.raises(UsageError) as info:
            Verifier([])
        assert info.value.code == "AF0963"


class TestMetric:
    def test_drops_reach_af_bus_dropped_total_once_each(self, signer, verifier):
        from afrt.metrics import WorkerMetrics

        metrics = WorkerMetrics("s", "a")
        fields = signed(signer)
        verifier.check(CHANNEL, fields)
        verifier.check(CHANNEL, fields)
        verifier.check(CHANNEL, {b"n": b"0"})
        metrics.set_dropped(verifier.dropped)
        metrics.set_dropped(verifier.dropped)  # synced again at the next heartbeat: nothing counted twice
        text = metrics.text().decode()
        assert 'af_bus_dropped_total{agent="a",reason="replayed",swarm="s"} 1.0' in text
        assert 'af_bus_dropped_total{agent="a",reason="unsigned",swarm="s"} 1.0' in text
