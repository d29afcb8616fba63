"""Signed bus entries: what every publisher on Redis calls to sign, and every receiver to verify.

Every entry a worker writes to Redis for others to read (results, topic messages such as
lifecycle events and ``neural.updates``) carries one more field, ``a`` (docs/swarm.md, "Signed
entries")::

    a = "1.<key id>.<session>.<seq>.<signature>"

- ``key id``: 16 hex digits, `afcore.signing.key_id_of` the signer's Ed25519 public key (what
  `af keygen` prints); the receiver resolves it through the keys it admits (``--admit``).
- ``session``: 16 hex digits, random for each `Signer` (each start of a worker), so that a
  restarted worker, whose sequence starts again at 1, is not taken for a replay.
- ``seq``: the signer's sequence number, 1, 2, 3... across all its channels, in decimal.
- ``signature``: the Ed25519 signature (64 bytes, unpadded base64url) of `signed_bytes`: a
  length-prefixed encoding of the channel (the stream a result goes to, or
  ``af:{swarm}:topic:{topic}`` for a topic message), the key id, the session, the seq and every
  other field of the entry, sorted by name. Moving an entry to another stream, changing, adding or
  removing any field breaks the signature.

A `Verifier` drops an entry that is unsigned, signed by a key it does not admit, whose signature
does not verify (a malformed ``a`` included), or whose (key, session, seq) it has already
accepted or is older than its replay window (`REPLAY_WINDOW` sequence numbers behind the newest
it has seen of that session: entries of concurrent writes can land slightly out of order). It
counts each reason (`Verifier.dropped`) and logs a warning per reason at most every
`WARN_SECONDS`, with the number of drops in between. The reasons are `REASONS`; their codes,
AF5400-AF5404, are in docs/diagnostics.md (`FOREIGN_TASK` is `afrt.submit`'s own check, counted
through `Verifier.drop`: a result carries the digest of the task it answers, ``t``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import struct
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from afcore.signing import KEY_ID_LENGTH, PublicKey, SigningKey, trusted_keys

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "AUTH_FIELD",
    "BAD_SIGNATURE",
    "FOREIGN_TASK",
    "NOT_ADMITTED",
    "REASONS",
    "REPLAYED",
    "REPLAY_WINDOW",
    "UNSIGNED",
    "Signer",
    "Verifier",
    "signed_bytes",
    "topic_channel",
]

#: the field of an entry that holds its signature envelope
AUTH_FIELD = "a"
#: drop reasons (the ``reason`` label of ``af_bus_dropped_total`` and the keys of ``dropped``)
UNSIGNED, NOT_ADMITTED, BAD_SIGNATURE, REPLAYED = "unsigned", "not_admitted", "bad_signature", "replayed"
#: a genuine result of a task its submit did not send (`afrt.submit` checks the task digest ``t``)
FOREIGN_TASK = "foreign_task"
#: a result entry whose fields are not a result (no index ``n`` or data ``d``): `afrt.submit` drops it
MALFORMED = "malformed"
#: every drop reason, with the code its warning carries
REASONS = {UNSIGNED: "AF5400", NOT_ADMITTED: "AF5401", BAD_SIGNATURE: "AF5402", REPLAYED: "AF5403",
           FOREIGN_TASK: "AF5404", MALFORMED: "AF5405"}
#: how far (in sequence numbers) an entry may lag the newest of its session and still be taken once
REPLAY_WINDOW = 4096
#: sessions a verifier remembers (the oldest is forgotten past this: a bound on memory)
MAX_SESSIONS = 65_536
#: a warning per drop reason at most this often (seconds); the drops in between are counted in it
WARN_SECONDS = 10.0
#: what the signed encoding starts with (domain separation from every other signature of af)
MAGIC = b"af-bus-entry-v1\n"
#: the largest sequence number (an unsigned 64-bit integer in the signed encoding)
MAX_SEQ = (1 << 63) - 1

_AUTH = AUTH_FIELD.encode()
_HEX = re.compile(rb"[0-9a-f]{%d}" % KEY_ID_LENGTH)
_SEQ = re.compile(rb"[1-9][0-9]{0,18}")
_SIGNATURE_CHARS = 86  # 64 bytes in base64url without padding
_log = logging.getLogger("afrt.busauth")


def topic_channel(prefix: str, topic: str) -> str:
    """Return the channel a topic message of the swarm with key ``prefix`` is signed for."""
    return f"{prefix}topic:{topic}"


def _as_bytes(value: Any) -> bytes:
    """Return a field value as Redis stores it (redis-py's encoding: str as UTF-8, numbers as repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"a stream field value must be bytes, str, int or float, not {type(value).__name__}")


def signed_bytes(channel: bytes, key_id: bytes, session: bytes, seq: int, fields: Iterable[tuple[bytes, bytes]],
                 ) -> bytes:
    """Return what is signed for an entry: a length-prefixed, unambiguous encoding.

    Args:
        channel: the stream (or topic channel) the entry is for.
        key_id: the signer's key id (16 hex digits).
        session: the signer's session (16 hex digits).
        seq: the sequence number.
        fields: the entry's other fields as (name, value) bytes, in any order (sorted here).
    """
    items = sorted(fields)
    parts = [MAGIC, struct.pack(">I", len(channel)), channel, key_id, session, struct.pack(">QI", seq, len(items))]
    for name, value in items:
        parts += [struct.pack(">I", len(name)), name, struct.pack(">I", len(value)), value]
    return b"".join(parts)


class Signer:
    """Signs the entries one publisher writes: a key, a random session, a growing sequence.

    One `Signer` per process and key: its sequence numbers must never repeat within its session.

    Args:
        key: the signing key (`af run --identity`, or the replica's `afrt.state.Identity`).
    """

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.key_id = key.key_id
        self.session = os.urandom(KEY_ID_LENGTH // 2).hex()
        self.seq = 0
        self._sign = key.private_key.sign
        self._ids = (self.key_id.encode(), self.session.encode())

    @property
    def public_key(self) -> PublicKey:
        """The public half (what a receiver admits)."""
        return self.key.public_key

    def sign(self, channel: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``fields`` with the envelope field `AUTH_FIELD` added (the next sequence number).

        Args:
            channel: the stream the entry goes to (`topic_channel` for a topic message).
            fields: the entry's fields (bytes, str, int or float values, as redis-py takes them).

        Raises:
            ValueError: when ``fields`` already has a field named `AUTH_FIELD`.
        """
        if AUTH_FIELD in fields:
            raise ValueError(f"the field name {AUTH_FIELD!r} is reserved for the signature")
        self.seq += 1
        key_id, session = self._ids
        data = signed_bytes(channel.encode(), key_id, session, self.seq,
                            [(name.encode(), _as_bytes(value)) for name, value in fields.items()])
        signature = base64.urlsafe_b64encode(self._sign(data)).rstrip(b"=")
        return {**fields, AUTH_FIELD: b"1.%s.%s.%d.%s" % (key_id, session, self.seq, signature)}


class Verifier:
    """Verifies entries against the admitted keys and drops the rest, counting why.

    Args:
        admitted: the public keys whose entries are accepted (`afcore.signing.PublicKey` or
            `cryptography` Ed25519 public keys; at least one).
        window: `REPLAY_WINDOW`.

    Raises:
        UsageError: AF0963 when ``admitted`` is empty or holds something else.
    """

    def __init__(self, admitted: Iterable[Any], *, window: int = REPLAY_WINDOW) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.admitted = trusted_keys(admitted)
        self.window = window
        self._keys: dict[bytes, list[Ed25519PublicKey]] = {}
        for key in self.admitted:
            self._keys.setdefault(key.key_id.encode(), []).append(Ed25519PublicKey.from_public_bytes(key.raw))
        self._sessions: OrderedDict[tuple[bytes, bytes], list[int]] = OrderedDict()
        #: entries dropped, by reason (`REASONS`)
        self.dropped: dict[str, int] = dict.fromkeys(REASONS, 0)
        #: entries accepted
        self.accepted = 0
        self._warned: dict[str, tuple[float, int]] = {}

    def admit(self, key: PublicKey) -> None:
        """Admit one more key (e.g. a submit's own, for the entries it writes itself)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self.admitted = (*self.admitted, key)
        self._keys.setdefault(key.key_id.encode(), []).append(Ed25519PublicKey.from_public_bytes(key.raw))

    def check(self, channel: str, fields: Mapping[bytes, bytes]) -> str | None:
        """Return None when the entry is authentic and new (it counts as accepted), else why it is dropped.

        Args:
            channel: the stream it was read from (`topic_channel` for a topic message).
            fields: the entry's fields as redis-py returns them (bytes names and values).

        Returns:
            None, or one of `UNSIGNED`, `NOT_ADMITTED`, `BAD_SIGNATURE`, `REPLAYED` (counted in
            `dropped` and warned about, rate-limited).
        """
        reason, key_id = self._check(channel, fields)
        if reason is None:
            self.accepted += 1
            return None
        self.drop(reason, channel, fields)
        return reason

    def drop(self, reason: str, channel: str, fields: Mapping[bytes, bytes]) -> None:
        """Count an entry dropped for ``reason`` and warn (rate-limited): for the checks of a receiver
        after `check` (`FOREIGN_TASK`), and `check`'s own."""
        parsed = _parse(fields.get(_AUTH) or b"")
        self.dropped[reason] += 1
        self._warn(reason, channel, parsed[0] if parsed else None)

    def _check(self, channel: str, fields: Mapping[bytes, bytes]) -> tuple[str | None, bytes | None]:
        from cryptography.exceptions import InvalidSignature

        auth = fields.get(_AUTH)
        if auth is None:
            return UNSIGNED, None
        parsed = _parse(auth)
        if parsed is None:
            return BAD_SIGNATURE, None
        key_id, session, seq, signature = parsed
        keys = self._keys.get(key_id)
        if keys is None:
            return NOT_ADMITTED, key_id
        data = signed_bytes(channel.encode(), key_id, session, seq,
                            [(name, value) for name, value in fields.items() if name != _AUTH])
        for key in keys:
            try:
                key.verify(signature, data)
                break
            except InvalidSignature:
                continue
        else:
            return BAD_SIGNATURE, key_id
        return (None if self._fresh((key_id, session), seq) else REPLAYED), key_id

    def _fresh(self, session: tuple[bytes, bytes], seq: int) -> bool:
        """Record ``seq`` of ``session``; False when it was seen or is older than the window.

        The newest seq and a bit mask of the `window` before it, per session (RFC 4303's
        anti-replay window), so that entries written concurrently may arrive out of order.
        """
        state = self._sessions.get(session)
        if state is None:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)
            self._sessions[session] = [seq, 1]
            return True
        top, mask = state
        if seq > top:
            shift = seq - top
            state[0], state[1] = seq, ((mask << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            return True
        bit = 1 << (top - seq)
        if top - seq >= self.window or mask & bit:
            return False
        state[1] = mask | bit
        return True

    def _warn(self, reason: str, channel: str, key_id: bytes | None) -> None:
        now = time.monotonic()
        last, count = self._warned.get(reason, (float("-inf"), 0))
        if now - last < WARN_SECONDS:
            self._warned[reason] = (last, count + 1)
            return
        self._warned[reason] = (now, 0)
        what = {UNSIGNED: "it is not signed",
                NOT_ADMITTED: f"it is signed by key {(key_id or b'?').decode()}, which is not admitted",
                BAD_SIGNATURE: "its signature does not verify" + (f" with key {key_id.decode()}" if key_id else ""),
                REPLAYED: f"it replays an entry of key {(key_id or b'?').decode()} already taken",
                FOREIGN_TASK: "it answers a task under this submission's id that this submit did not send "
                              "(another input)",
                MALFORMED: "it is not a result (no record index `n` or data `d`)"}[reason]
        since = f" ({count} more dropped for this reason in the last {WARN_SECONDS:.0f} s)" if count else ""
        _log.warning("warning[%s]: dropped an entry of %s: %s%s", REASONS[reason], channel, what, since)


def _parse(auth: bytes) -> tuple[bytes, bytes, int, bytes] | None:
    """Return (key id, session, seq, signature) of an envelope, None when it is malformed."""
    parts = auth.split(b".")
    if len(parts) != 5 or parts[0] != b"1":
        return None
    _, key_id, session, seq, signature = parts
    if not (_HEX.fullmatch(key_id) and _HEX.fullmatch(session) and _SEQ.fullmatch(seq)):
        return None
    if len(signature) != _SIGNATURE_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(signature + b"==")
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != signature:  # one text per signature
        return None
    number = int(seq)
    return (key_id, session, number, raw) if number <= MAX_SEQ else None
