"""Signed bundles (afcore.signing): a good signature verifies; every way of breaking one is refused
with its own code, before the manifest is parsed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from afcore import signing
from afcore.bundle import SIGNATURE_NAME, assemble_bundle, read_bundle, write_bundle
from afcore.errors import BundleError, UsageError

KEY = signing.generate_key()
OTHER = signing.generate_key()


@pytest.fixture(scope="module")
def plain(example_bundles: dict[str, Path]) -> bytes:
    """The xor example's bundle, unsigned."""
    return example_bundles["xor"].read_bytes()


@pytest.fixture(scope="module")
def signed(plain: bytes) -> bytes:
    return signing.sign_bundle(plain, KEY, version=7)


@pytest.fixture(scope="module")
def sibling(plain: bytes) -> bytes:
    """Another bundle of the same agent (its agent.yaml differs), signed by the same key."""
    bundle = read_bundle(plain)
    manifest = {k: v for k, v in bundle.manifest.items() if k != "members"}
    members = {**bundle.members, "agent.yaml": bundle.members["agent.yaml"] + b"# the other build\n"}
    return signing.sign_bundle(write_bundle(manifest, members), KEY, version=8)


def canonical(envelope: dict) -> bytes:
    """An envelope in the one form `af sign` writes (any other is refused as AF4054)."""
    return (json.dumps(envelope, sort_keys=True, indent=2) + "\n").encode()


def refused(data: bytes, keys=(KEY.public_key,)) -> BundleError:
    with pytest.raises(BundleError) as caught:
        signing.read_signed_bundle(data, keys)
    return caught.value


class TestKeys:
    def test_key_id_is_the_sha256_of_the_raw_public_key(self):
        assert KEY.key_id == hashlib.sha256(KEY.public_key.raw).hexdigest()[:16]
        assert KEY.key_id != OTHER.key_id

    def test_pem_round_trip(self):
        assert signing.load_private_key(KEY.to_pem()).key_id == KEY.key_id
        assert signing.load_public_key(KEY.public_key.to_pem()) == KEY.public_key

    def test_encrypted_private_key(self):
        pem = KEY.to_pem(b"secret")
        assert b"ENCRYPTED" in pem
        assert signing.load_private_key(pem, passphrase=b"secret").key_id == KEY.key_id
        for passphrase in (None, b"wrong"):
            with pytest.raises(UsageError) as caught:
                signing.load_private_key(pem, passphrase=passphrase)
            assert caught.value.code == "AF0962"

    @pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"])
    def test_not_a_private_key(self, data: bytes):
        with pytest.raises(UsageError) as caught:
            signing.load_private_key(data)
        assert caught.value.code == "AF0962"

    def test_a_public_key_is_not_a_private_key(self):
        with pytest.raises(UsageError) as caught:
            signing.load_private_key(KEY.public_key.to_pem())
        assert caught.value.code == "AF0962"

    def test_a_private_key_is_refused_as_a_trust_anchor(self):
        with pytest.raises(UsageError) as caught:
            signing.load_public_key(KEY.to_pem())
        assert caught.value.code == "AF0963" and "private key" in caught.value.message

    def test_other_key_types_are_refused(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        with pytest.raises(UsageError) as caught:
            signing.load_public_key(pem)
        assert caught.value.code == "AF0963"


class TestGoodSignature:
    def test_verifies_with_signer_and_version(self, signed: bytes):
        bundle = signing.read_signed_bundle(signed, [OTHER.public_key, KEY.public_key])
        assert bundle.verified.key_id == KEY.key_id
        assert bundle.verified.version == 7
        assert bundle.verified.manifest_sha256 == hashlib.sha256(bundle.manifest_bytes).hexdigest()

    def test_signing_keeps_manifest_and_members_byte_for_byte(self, plain: bytes, signed: bytes):
        before, after = read_bundle(plain), read_bundle(signed)
        assert after.manifest_bytes == before.manifest_bytes
        assert after.members == before.members
        assert before.signature is None and after.signature is not None

    def test_signature_is_the_second_member_and_not_listed(self, signed: bytes):
        tar = tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(signed)))
        assert tar.getnames()[:2] == ["manifest.json", SIGNATURE_NAME]
        assert SIGNATURE_NAME not in {m["name"] for m in read_bundle(signed).manifest["members"]}

    def test_resigning_replaces_the_signature(self, signed: bytes):
        again = signing.sign_bundle(signed, OTHER, version=9)
        assert signing.read_signed_bundle(again, [OTHER.public_key]).verified.version == 9
        assert refused(again).code == "AF4051"

    def test_signing_is_deterministic(self, plain: bytes):
        assert signing.sign_bundle(plain, KEY, version=3) == signing.sign_bundle(plain, KEY, version=3)

    def test_unsigned_bundles_still_read_without_trust(self, plain: bytes, signed: bytes):
        assert read_bundle(signed).members == read_bundle(plain).members

    def test_verify_loaded_bundle_rehashes_members(self, signed: bytes):
        bundle = read_bundle(signed)
        assert signing.verify_loaded_bundle(bundle, [KEY.public_key]).version == 7
        from dataclasses import replace

        swapped = replace(bundle, members={**bundle.members, "agent.yaml": b"name: evil\n"})
        with pytest.raises(BundleError) as caught:
            signing.verify_loaded_bundle(swapped, [KEY.public_key])
        assert caught.value.code == "AF4055"


class TestRefusals:
    """Each way a signed bundle can be wrong has its own code."""

    def test_unsigned(self, plain: bytes):
        error = refused(plain)
        assert error.code == "AF4050" and "not signed" in error.message

    def test_unknown_key(self, signed: bytes):
        error = refused(signed, keys=(OTHER.public_key,))
        assert error.code == "AF4051"
        assert KEY.key_id in error.message and OTHER.key_id in error.hint

    def test_forged_under_a_trusted_key_id(self, plain: bytes):
        # an attacker signs with their own key but names the trusted key's id
        bundle = read_bundle(plain)
        envelope = json.loads(signing.sign_manifest(bundle.manifest_bytes, OTHER, version=99))
        envelope["signatures"][0]["keyid"] = KEY.key_id
        forged = assemble_bundle(bundle.manifest_bytes, bundle.members, signature=canonical(envelope))
        error = refused(forged)
        assert error.code == "AF4052" and "does not verify" in error.message

    def test_raised_version_breaks_the_signature(self, signed: bytes):
        bundle = read_bundle(signed)
        envelope = json.loads(bundle.signature)
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["version"] = 10**6
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        forged = assemble_bundle(bundle.manifest_bytes, bundle.members, signature=canonical(envelope))
        assert refused(forged).code == "AF4052"

    def test_signature_from_another_bundle(self, signed: bytes, sibling: bytes):
        mine, theirs = read_bundle(signed), read_bundle(sibling)
        mixed = assemble_bundle(mine.manifest_bytes, mine.members, signature=theirs.signature)
        error = refused(mixed)
        assert error.code == "AF4053" and "another manifest" in error.message

    def test_member_swapped_in_from_another_signed_bundle(self, signed: bytes, sibling: bytes):
        mine, theirs = read_bundle(signed), read_bundle(sibling)
        mixed = assemble_bundle(mine.manifest_bytes, {**mine.members, "agent.yaml": theirs.members["agent.yaml"]},
                                signature=mine.signature)
        error = refused(mixed)
        assert error.code == "AF4055" and "agent.yaml" in error.message and "swapped" in error.hint

    def test_member_added(self, signed: bytes):
        mine = read_bundle(signed)
        mixed = assemble_bundle(mine.manifest_bytes, {**mine.members, "sections/extra": b"x"}, signature=mine.signature)
        assert refused(mixed).code == "AF4055"

    def test_member_removed(self, signed: bytes):
        mine = read_bundle(signed)
        members = {name: data for name, data in mine.members.items() if name != "model.wasm"}
        assert refused(assemble_bundle(mine.manifest_bytes, members, signature=mine.signature)).code == "AF4055"

    def test_signature_moved_out_of_second_place_is_an_unlisted_member(self, signed: bytes):
        mine = read_bundle(signed)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in [("manifest.json", mine.manifest_bytes), *mine.members.items(), (SIGNATURE_NAME, mine.signature)]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        moved = zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue())
        assert refused(moved).code == "AF4050"  # no signature where signatures are: unsigned
        with pytest.raises(BundleError) as caught:
            read_bundle(moved)
        assert caught.value.code == "AF4011"

    @pytest.mark.parametrize("envelope, why", [
        (b"not json", "not JSON"),
        (b"[]", "DSSE envelope"),
        (json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": "", "signatures": []}).encode(),
         "payload type"),
        (json.dumps({"payloadType": signing.PAYLOAD_TYPE, "payload": "!!", "signatures": []}).encode(), "base64"),
        (json.dumps({"payloadType": signing.PAYLOAD_TYPE, "payload": "", "signatures": []}).encode(), "exactly one"),
        (json.dumps({"payloadType": signing.PAYLOAD_TYPE, "payload": "", "signatures": [{"keyid": "x", "sig": ""}]}).encode(),
         "key id"),
        (json.dumps({"payloadType": signing.PAYLOAD_TYPE, "payload": "", "signatures": [{"keyid": "0" * 16, "sig": "AAAA"}]}).encode(),
         "64"),
        (json.dumps({"payloadType": signing.PAYLOAD_TYPE, "payload": "", "signatures": [], "extra": 1}).encode(),
         "DSSE envelope"),
    ])
    def test_malformed_or_unsupported_envelope(self, plain: bytes, envelope: bytes, why: str):
        bundle = read_bundle(plain)
        error = refused(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=envelope))
        assert error.code == "AF4054" and why in error.message

    def test_a_signed_statement_of_another_shape_is_unsupported(self, plain: bytes):
        bundle = read_bundle(plain)
        payload = json.dumps({"manifest_sha256": hashlib.sha256(bundle.manifest_bytes).hexdigest(), "version": 1,
                              "expires": "never"}, sort_keys=True, separators=(",", ":")).encode()
        sig = KEY.sign(signing._pae(signing.PAYLOAD_TYPE, payload))
        envelope = {"payloadType": signing.PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                    "signatures": [{"keyid": KEY.key_id, "sig": base64.b64encode(sig).decode()}]}
        error = refused(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=canonical(envelope)))
        assert error.code == "AF4054" and "statement" in error.message

    def test_only_the_canonical_envelope_is_accepted(self, signed: bytes):
        # the envelope's bytes are not signed: re-indenting it, or setting the unused low bits of the
        # last base64 digit, would otherwise change a byte of the bundle without its being refused
        bundle = read_bundle(signed)
        envelope = json.loads(bundle.signature)
        reindented = json.dumps(envelope, sort_keys=True).encode()
        error = refused(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=reindented))
        assert error.code == "AF4054" and "canonical" in error.message
        payload = envelope["payload"]
        last = payload.rstrip("=")[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        twin = alphabet[alphabet.index(last) ^ 1]
        envelope["payload"] = payload.rstrip("=")[:-1] + twin + "=" * (len(payload) - len(payload.rstrip("=")))
        assert base64.b64decode(envelope["payload"]) == base64.b64decode(payload)
        error = refused(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=canonical(envelope)))
        assert error.code == "AF4054" and "canonical base64" in error.message

    def test_huge_signature_member(self, plain: bytes):
        bundle = read_bundle(plain)
        error = refused(assemble_bundle(bundle.manifest_bytes, bundle.members, signature=b" " * (65 << 10)))
        assert error.code == "AF4054"

    @pytest.mark.parametrize("version", [0, -1, signing.MAX_VERSION + 1, True, 1.5])
    def test_version_out_of_range_is_not_signed(self, plain: bytes, version):
        with pytest.raises(UsageError) as caught:
            signing.sign_manifest(read_bundle(plain).manifest_bytes, KEY, version=version)
        assert caught.value.code == "AF0964"

    def test_no_trusted_key(self, signed: bytes):
        with pytest.raises(UsageError) as caught:
            signing.read_signed_bundle(signed, [])
        assert caught.value.code == "AF0963"


class TestVerifiedBeforeParsed:
    def test_the_manifest_is_not_parsed_before_the_signature_verifies(self, plain: bytes, monkeypatch):
        # a manifest that is not even JSON: without a trusted signature the reader never gets to say so
        bundle = read_bundle(plain)
        broken = assemble_bundle(b"{not json", bundle.members, signature=signing.sign_manifest(b"{not json", OTHER, version=1))
        assert refused(broken).code == "AF4051"
        calls = []
        monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(a) or {})
        with pytest.raises(BundleError) as caught:
            signing.read_signed_bundle(plain, [KEY.public_key])
        assert caught.value.code == "AF4050" and calls == []


# --------------------------------------------------------------------------- tampering with any byte


def _flip(data: bytes, position: int, mask: int) -> bytes:
    changed = bytearray(data)
    changed[position] ^= mask
    return bytes(changed)


#: what refuses a byte changed in the compressed file: zstd's checksum or framing (AF4001-AF4003),
#: and, past them, the tar checks, the signature or the digests
FILE_CODES = {"AF4001", "AF4002", "AF4003", "AF4004", "AF4008", "AF4013", "AF4050", "AF4052", "AF4053", "AF4054",
              "AF4055"}


def _octal(field: bytes) -> int:
    """A tar number field's value, read as tar readers read it (spaces and NULs around the digits)."""
    return int(field.strip(b" \0") or b"0", 8)


def outcome(changed: bytes, original: bytes) -> str:
    """The code that refused ``changed``, or "same" when it decodes to exactly what was signed.

    zstd's encoding is malleable: a few bits of a compressed stream (unused bits of entropy tables,
    for instance) can change without changing what it decodes to, and zstd's checksum is over the
    decoded bytes. The signature pins those bytes, everything af reads; such a file runs exactly
    what the signer signed.
    """
    try:
        bundle = signing.read_signed_bundle(changed, [KEY.public_key])
    except BundleError as error:
        return error.code
    before = read_bundle(original)
    assert (bundle.manifest_bytes, bundle.signature, dict(bundle.members)) == (
        before.manifest_bytes, before.signature, dict(before.members))
    return "same"


class TestTamperingWithAnyByte:
    def test_every_byte_of_the_file(self, signed: bytes):
        """Each position of the .afb, with three xor masks each: refused, or decoding to the same bytes."""
        codes: dict[str, int] = {}
        for position in range(len(signed)):
            for mask in (0x01, 0x80, 1 + (position * 37) % 255):
                code = outcome(_flip(signed, position, mask), signed)
                codes[code] = codes.get(code, 0) + 1
        assert set(codes) <= FILE_CODES | {"same"}, codes
        assert codes.get("same", 0) < len(signed) * 3 // 100, codes  # the rare malleable bit

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_any_byte_any_value(self, signed: bytes, data):
        position = data.draw(st.integers(0, len(signed) - 1), label="position")
        mask = data.draw(st.integers(1, 255), label="xor")
        assert outcome(_flip(signed, position, mask), signed) in FILE_CODES | {"same"}

    def test_every_byte_of_the_archive_recompressed(self, signed: bytes):
        """An attacker who changes one byte of the tar and compresses it again (zstd's checksum then holds):
        the tar header checksums, the zero padding, the signature or the members' digests refuse it.

        The one exception changes nothing af reads: a tar header's checksum field written another way
        with the same value (its terminator, NUL or space; a leading zero turned into a space by the
        0x10 mask), which the tar reader parses to the same number."""
        tar = zstandard.ZstdDecompressor().decompress(signed)
        compressor = zstandard.ZstdCompressor(write_checksum=True)
        by_code: dict[str, int] = {}
        manifest_start = 512
        manifest_end = manifest_start + len(read_bundle(signed).manifest_bytes)
        masks = (0x01, 0x20, 0x80, 0x04, 0x40, 0xFF, 0x10)
        for position in range(0, len(tar)):
            code = outcome(compressor.compress(_flip(tar, position, masks[position % len(masks)])), signed)
            by_code[code] = by_code.get(code, 0) + 1
            if code == "same":  # only the checksum field (offsets 148-155 of a header), to the same value
                field = position - position % 512 + 148
                flipped = _flip(tar, position, masks[position % len(masks)])
                assert 148 <= position % 512 < 156, position
                assert _octal(tar[field : field + 8]) == _octal(flipped[field : field + 8]), position
            if manifest_start <= position < manifest_end:
                assert code == "AF4053", (position, code)  # the signature names another manifest
        assert by_code.get("AF4055", 0) > 500  # members' bytes: not as signed
        assert {"AF4001", "AF4052", "AF4053", "AF4054", "AF4055"} <= set(by_code), by_code


class TestTrustedKeys:
    def test_cryptography_keys_are_accepted(self, signed: bytes):
        key = KEY.private_key.public_key()
        assert signing.read_signed_bundle(signed, [key]).verified.key_id == KEY.key_id

    @pytest.mark.parametrize("key", [b"raw bytes", "team.pub", None])
    def test_anything_else_is_a_usage_error(self, signed: bytes, key):
        with pytest.raises(UsageError) as caught:
            signing.read_signed_bundle(signed, [key])
        assert caught.value.code == "AF0963"
