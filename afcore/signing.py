"""Signed bundles: one Ed25519 signature over the exact bytes of ``manifest.json`` (docs/security.md).

The manifest lists every other member with its size and sha256, so one signature over its bytes pins
the whole bundle, as OCI image signatures and OpenSSF model signing pin a manifest of digests. The
signature is the member ``signature.json``, written right after ``manifest.json`` and not listed in
it: a DSSE envelope (the format of in-toto, Sigstore and OpenSSF model signing)::

    {"payloadType": "application/vnd.af.bundle-signature.v1+json",
     "payload": "<base64 of the statement>",
     "signatures": [{"keyid": "<key id>", "sig": "<base64 Ed25519 signature>"}]}

The statement is JSON, ``{"manifest_sha256": "<hex>", "version": N}``, and the signature is made
over DSSE's pre-authentication encoding of it (``PAE``), so the version, which only grows, is
signed along with the manifest's digest. A key id is the first 16 hex digits of the sha256 of the
raw 32-byte public key.

Verification (`verify_signature`) reads nothing but the manifest's bytes and the envelope: the
envelope's shape, then the key id against the trusted keys, then the signature, then the
statement, then the manifest's digest; `read_signed_bundle` does it before `afcore.bundle` parses
the manifest, and then checks every member against the now authentic manifest. Each fault has
its own code: AF4050 unsigned, AF4051 unknown key, AF4052 bad signature, AF4053 another manifest,
AF4054 malformed or unsupported envelope, AF4055 a member that is not the one signed.

All cryptography is the `cryptography` package's; it is imported on first use, so that importing
`afcore` stays as light as the stdlib and zstandard (the signature's parser needs neither).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .bundle import MAX_TOTAL_BYTES, Bundle, assemble_bundle, read_bundle
from .errors import BundleError, UsageError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "KEY_ID_LENGTH",
    "MAX_VERSION",
    "PAYLOAD_TYPE",
    "Envelope",
    "PublicKey",
    "Signature",
    "SigningKey",
    "generate_key",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
    "parse_signature",
    "read_signed_bundle",
    "sign_bundle",
    "sign_manifest",
    "signed_version",
    "trusted_keys",
    "verify_loaded_bundle",
    "verify_signature",
]

#: the DSSE payload type of a bundle signature's statement
PAYLOAD_TYPE = "application/vnd.af.bundle-signature.v1+json"
#: hex digits of a key id (64 bits: a name for a key, not its proof; the signature is the proof)
KEY_ID_LENGTH = 16
#: the largest version a signature may carry (the largest integer JSON readers keep exactly)
MAX_VERSION = (1 << 53) - 1
#: the envelope's keys, all required
_ENVELOPE_KEYS = frozenset({"payloadType", "payload", "signatures"})
_KEY_ID_RE = re.compile(f"[0-9a-f]{{{KEY_ID_LENGTH}}}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: bytes of an Ed25519 signature and public key
_SIGNATURE_BYTES, _PUBLIC_BYTES = 64, 32


def key_id_of(raw_public_key: bytes) -> str:
    """Return the key id of a raw 32-byte Ed25519 public key: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw_public_key).hexdigest()[:KEY_ID_LENGTH]


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key.

    Attributes:
        raw: the raw 32-byte public key.
    """

    raw: bytes

    @property
    def key_id(self) -> str:
        """Return the key's id (`key_id_of`)."""
        return key_id_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return True when ``signature`` is this key's Ed25519 signature of ``data``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        """Return the key as PEM SubjectPublicKeyInfo (what `af keygen` writes to ``NAME.pub``)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key that signs bundles.

    Attributes:
        private_key: the `cryptography` key.
    """

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> PublicKey:
        """Return the public half."""
        return PublicKey(self.private_key.public_key().public_bytes_raw())

    @property
    def key_id(self) -> str:
        """Return the key's id (`key_id_of` of its public key)."""
        return self.public_key.key_id

    def sign(self, data: bytes) -> bytes:
        """Return the Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """Return the key as PEM PKCS#8, encrypted with ``passphrase`` when one is given."""
        from cryptography.hazmat.primitives import serialization

        encryption: Any = (serialization.BestAvailableEncryption(passphrase) if passphrase
                           else serialization.NoEncryption())
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def generate_key() -> SigningKey:
    """Return a fresh Ed25519 signing key (from the OS's random source, through `cryptography`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return SigningKey(Ed25519PrivateKey.generate())


def load_private_key(data: bytes, *, passphrase: bytes | None = None, name: str = "the key") -> SigningKey:
    """Read a PEM PKCS#8 Ed25519 private key (what `af keygen` writes).

    Raises:
        UsageError: AF0962 when ``data`` is not an Ed25519 private key, or the passphrase is
            missing or wrong.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        raise UsageError(f"{name} is encrypted and no passphrase was given" if not passphrase
                         else f"{name} is not encrypted, but a passphrase was given", code="AF0962",
                         hint="set AF_SIGNING_PASSPHRASE to the key's passphrase, or unset it") from None
    except (ValueError, binascii.Error):
        key = None
        if passphrase and b"ENCRYPTED" in data[:64]:
            raise UsageError(f"cannot decrypt {name}: wrong passphrase", code="AF0962",
                             hint="set AF_SIGNING_PASSPHRASE to the key's passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{name} is not an Ed25519 private key", code="AF0962",
                         hint="give the .key file `af keygen` wrote (PEM, PKCS#8)")
    return SigningKey(key)


def load_public_key(data: bytes, *, name: str = "the key") -> PublicKey:
    """Read a PEM Ed25519 public key (what `af keygen` writes to ``NAME.pub``).

    Raises:
        UsageError: AF0963 when ``data`` is not an Ed25519 public key (a private key included:
            it is refused, so that a private key is never handed around as a trust anchor).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        private = b"PRIVATE KEY" in data[:64]
        raise UsageError(f"{name} is " + ("a private key" if private else "not an Ed25519 public key"), code="AF0963",
                         hint="give the .pub file `af keygen` wrote beside the .key (PEM SubjectPublicKeyInfo)")
    return PublicKey(key.public_bytes_raw())


#: one PEM block of a public key (a file of admitted keys holds one or more, one after the other)
_PEM_PUBLIC_RE = re.compile(rb"-----BEGIN PUBLIC KEY-----\r?\n.*?-----END PUBLIC KEY-----\r?\n?", re.S)


def load_public_keys(data: bytes, *, name: str = "the file") -> list[PublicKey]:
    """Read every PEM Ed25519 public key of ``data`` (``.pub`` files of `af keygen`, concatenated).

    Returns:
        The keys, in file order, each once.

    Raises:
        UsageError: AF0963 when ``data`` holds no public key, anything but public keys and
            blank lines, or a block that is not an Ed25519 public key.
    """
    keys: list[PublicKey] = []
    blocks = _PEM_PUBLIC_RE.findall(data)
    if not blocks or _PEM_PUBLIC_RE.sub(b"", data).strip():
        load_public_key(data, name=name)  # says what the file is instead (a private key, not a key)
        raise UsageError(f"{name} holds something other than PEM public keys", code="AF0963",
                         hint="concatenate the .pub files `af keygen` wrote, nothing else")
    for block in blocks:
        key = load_public_key(block, name=name)
        if key not in keys:
            keys.append(key)
    return keys


# --------------------------------------------------------------------------- the envelope


@dataclass(frozen=True)
class Envelope:
    """A parsed ``signature.json``, not yet verified.

    Attributes:
        payload: the statement's bytes, as signed.
        key_id: the key id the signer named (a hint: only a trusted key's signature counts).
        signature: the 64 signature bytes.
    """

    payload: bytes
    key_id: str
    signature: bytes


@dataclass(frozen=True)
class Signature:
    """A verified signature: who signed which manifest, at which version.

    Attributes:
        key_id: the id of the trusted key that verified it.
        version: the version the signer gave, which only grows (`af run --trust` refuses an older one).
        manifest_sha256: the sha256 (hex) of the signed ``manifest.json``.
        key: the trusted key.
    """

    key_id: str
    version: int
    manifest_sha256: str
    key: PublicKey

    def to_json(self) -> dict[str, Any]:
        """Return ``{key_id, version, manifest_sha256}``."""
        return {"key_id": self.key_id, "version": self.version, "manifest_sha256": self.manifest_sha256}


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed, so that the type cannot be swapped."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _malformed(why: str) -> BundleError:
    return BundleError(f"the bundle's signature is malformed or of an unsupported format: {why}", code="AF4054",
                       hint="signature.json is written by `af sign`; sign the bundle again with this af")


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _malformed(f"`{what}` is not a string")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise _malformed(f"`{what}` is not base64") from None
    if base64.b64encode(decoded).decode("ascii") != value:  # unused low bits set: another text, same bytes
        raise _malformed(f"`{what}` is not canonical base64")
    return decoded


def parse_signature(data: bytes) -> Envelope:
    """Parse ``signature.json`` (no cryptography: the shape only).

    Raises:
        BundleError: AF4054 when it is not the envelope `af sign` writes: not JSON, another
            payload type, not exactly one signature, a malformed key id or signature.
    """
    try:
        envelope = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _malformed("it is not JSON") from None
    if not isinstance(envelope, dict) or set(envelope) != _ENVELOPE_KEYS:
        raise _malformed("it is not a DSSE envelope of `payloadType`, `payload` and `signatures`")
    if envelope["payloadType"] != PAYLOAD_TYPE:
        shown = repr(envelope["payloadType"])[:80]
        raise _malformed(f"payload type {shown} (this af reads {PAYLOAD_TYPE!r})")
    payload = _b64(envelope["payload"], "payload")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or len(signatures) != 1:
        count = len(signatures) if isinstance(signatures, list) else "no list of"
        raise _malformed(f"it holds {count} signatures (this af reads exactly one)")
    entry = signatures[0]
    if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
        raise _malformed("the signature entry is not `{keyid, sig}`")
    key_id = entry["keyid"]
    if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
        raise _malformed(f"the key id is not {KEY_ID_LENGTH} lower-case hex digits")
    signature = _b64(entry["sig"], "sig")
    if len(signature) != _SIGNATURE_BYTES:
        raise _malformed(f"the signature is {len(signature)} bytes, not the {_SIGNATURE_BYTES} of Ed25519")
    parsed = Envelope(payload, key_id, signature)
    if _encode_envelope(parsed) != data:
        # the envelope's own bytes are not signed: only its one canonical form (`af sign`'s) is
        # accepted, so that no byte of a signed bundle can change without the bundle being refused
        raise _malformed("it is not in the canonical form `af sign` writes")
    return parsed


def _encode_envelope(envelope: Envelope) -> bytes:
    data = {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(envelope.payload).decode(),
            "signatures": [{"keyid": envelope.key_id, "sig": base64.b64encode(envelope.signature).decode()}]}
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode()


def _parse_statement(payload: bytes) -> tuple[str, int]:
    try:
        statement = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _malformed("the signed statement is not JSON") from None
    if not isinstance(statement, dict) or set(statement) != {"manifest_sha256", "version"}:
        raise _malformed("the signed statement is not `{manifest_sha256, version}`")
    if _encode_statement(statement) != payload:
        raise _malformed("the signed statement is not in the canonical form `af sign` writes")
    digest, version = statement["manifest_sha256"], statement["version"]
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise _malformed("the signed manifest digest is not 64 lower-case hex digits")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise _malformed(f"the signed version is not an integer from 1 to {MAX_VERSION}")
    return digest, version


def signed_version(data: bytes | None) -> int | None:
    """Return the version a signature member claims, unverified (None when unreadable): `af sign`'s default."""
    if data is None:
        return None
    try:
        return _parse_statement(parse_signature(data).payload)[1]
    except BundleError:
        return None


def sign_manifest(manifest_bytes: bytes, key: SigningKey, *, version: int) -> bytes:
    """Return the bytes of ``signature.json`` for a manifest.

    Args:
        manifest_bytes: ``manifest.json`` exactly as stored.
        key: the signer's key.
        version: the bundle's signed version, 1 to `MAX_VERSION`.

    Raises:
        UsageError: AF0964 for a version out of range.
    """
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UsageError(f"version {version!r} is not an integer from 1 to {MAX_VERSION}", code="AF0964",
                         hint="versions only grow: give the next one after the last signed")
    payload = _encode_statement({"manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(), "version": version})
    return _encode_envelope(Envelope(payload, key.key_id, key.sign(_pae(PAYLOAD_TYPE, payload))))


def _encode_statement(statement: dict[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def trusted_keys(keys: Iterable[Any]) -> tuple[PublicKey, ...]:
    """Return ``keys`` as `PublicKey` s: each a `PublicKey` or a `cryptography` Ed25519 public key.

    Raises:
        UsageError: AF0963 when ``keys`` is empty or holds anything else.
    """
    out = []
    for key in keys:
        if not isinstance(key, PublicKey):
            raw = getattr(key, "public_bytes_raw", None)
            if raw is None or type(key).__name__ != "Ed25519PublicKey":
                raise UsageError(f"a trusted key must be an Ed25519 public key, not a {type(key).__name__}",
                                 code="AF0963", hint="read it with afcore.signing.load_public_key")
            key = PublicKey(raw())
        out.append(key)
    if not out:
        raise UsageError("no trusted key was given", code="AF0963", hint="pass the signers' public keys (--trust)")
    return tuple(out)


def _trusted_ids(trusted: Sequence[PublicKey]) -> str:
    return ", ".join(sorted({key.key_id for key in trusted}))


def verify_signature(manifest_bytes: bytes, signature: bytes | None, trusted: Sequence[PublicKey]) -> Signature:
    """Verify a bundle's signature over its manifest bytes against the trusted keys.

    Args:
        manifest_bytes: ``manifest.json`` exactly as stored.
        signature: the bytes of ``signature.json``, None when the bundle has none.
        trusted: the keys whose signatures are accepted.

    Returns:
        The verified `Signature`.

    Raises:
        BundleError: AF4050 unsigned; AF4054 malformed or unsupported envelope or statement;
            AF4051 signed by a key not trusted; AF4052 the signature does not verify (the
            signature or its statement was altered, or forged under a trusted key's id); AF4053
            the signature is genuine but was made for another manifest.
    """
    if signature is None:
        raise BundleError("the bundle is not signed", code="AF4050",
                          hint=f"sign it with `af sign BUNDLE --key KEY` (trusted: {_trusted_ids(trusted)})")
    envelope = parse_signature(signature)
    candidates = [key for key in trusted if key.key_id == envelope.key_id]
    if not candidates:
        raise BundleError(f"the bundle is signed by key {envelope.key_id}, which is not trusted", code="AF4051",
                          hint=f"trusted keys: {_trusted_ids(trusted)}; add --trust with the signer's .pub "
                          "if you trust it")
    message = _pae(PAYLOAD_TYPE, envelope.payload)
    key = next((key for key in candidates if key.verify(envelope.signature, message)), None)
    if key is None:
        raise BundleError(f"the bundle's signature does not verify with key {envelope.key_id}", code="AF4052",
                          hint="signature.json was altered or forged: do not run this bundle; get it from its signer again")
    digest, version = _parse_statement(envelope.payload)
    actual = hashlib.sha256(manifest_bytes).hexdigest()
    if actual != digest:
        raise BundleError(f"the signature (key {key.key_id}, version {version}) was made for another manifest "
                          f"(sha256 {digest[:16]}..., this one is {actual[:16]}...)", code="AF4053",
                          hint="manifest.json was altered after signing, or the signature was taken from another "
                          "bundle: do not run this bundle")
    return Signature(key.key_id, version, digest, key)


def _not_as_signed(error: BundleError, signature: Signature) -> BundleError:
    return BundleError(f"the bundle signed by key {signature.key_id} (version {signature.version}) holds a member "
                       f"that is not the one signed: {error.message}", code="AF4055",
                       hint="a member was swapped in from another bundle or altered after signing: "
                       "do not run this bundle")


def read_signed_bundle(source: bytes | str | os.PathLike, trusted: Iterable[PublicKey], *,
                       max_total_bytes: int = MAX_TOTAL_BYTES, keep: Any = None, spill_over: int | None = None) -> Bundle:
    """Read a bundle, verifying its signature before its manifest is parsed, then every member.

    Args:
        source: the .afb bytes or a path to them.
        trusted: the keys whose signatures are accepted (at least one; `trusted_keys`).
        max_total_bytes: as for `afcore.bundle.read_bundle`.
        keep: as for `afcore.bundle.read_bundle`.
        spill_over: as for `afcore.bundle.read_bundle`.

    Returns:
        The `Bundle`, its ``verified`` the `Signature`.

    Raises:
        BundleError: the container faults of `afcore.bundle.read_bundle` met before the signature;
            AF4050-AF4054 (`verify_signature`); AF4055 for a member that is not listed in the signed
            manifest, missing, or of another size or sha256 (mix-and-match).
        UsageError: AF0963 when ``trusted`` is empty or holds something other than a public key.
    """
    keys = trusted_keys(trusted)
    verified: list[Signature] = []

    def verify(manifest_bytes: bytes, signature: bytes | None) -> Signature:
        verified.append(verify_signature(manifest_bytes, signature, keys))
        return verified[0]

    try:
        return read_bundle(source, max_total_bytes=max_total_bytes, verify=verify, keep=keep, spill_over=spill_over)
    except BundleError as error:
        if verified and error.code in ("AF4011", "AF4012", "AF4013"):
            raise _not_as_signed(error, verified[0]) from None
        raise


def verify_loaded_bundle(bundle: Bundle, trusted: Iterable[PublicKey]) -> Signature:
    """Verify a `Bundle` that was read without ``trusted``: its signature, then each member's sha256.

    A bundle `read_signed_bundle` verified with one of the ``trusted`` keys is taken as it is.

    Raises:
        BundleError: as `read_signed_bundle`.
        UsageError: AF0963 when ``trusted`` is empty.
    """
    keys = trusted_keys(trusted)
    if isinstance(bundle.verified, Signature) and bundle.verified.key in keys:
        return bundle.verified
    if not bundle.manifest_bytes:
        raise BundleError("the bundle is not signed (it was not read from a file)", code="AF4050",
                          hint="read it with afcore.bundle.read_bundle, or pass the path")
    signature = verify_signature(bundle.manifest_bytes, bundle.signature, keys)
    from .manifest import parse_members

    listed = {entry.name: entry for entry in parse_members(json.loads(bundle.manifest_bytes))}
    for name in sorted(set(listed) | set(bundle.members)):
        if name in bundle.left_out and name in listed and name not in bundle.members:
            continue  # verified against these very manifest bytes when read, then not kept
        data, entry = bundle.members.get(name), listed.get(name)
        if data is None or entry is None or len(data) != entry.size or _sha256(data) != entry.sha256:
            raise _not_as_signed(BundleError(f"member {name!r} does not match manifest.json", code="AF4013"), signature)
    return signature


def _sha256(data: Any) -> str:
    """sha256 (hex) of a member's bytes, or of a `afcore.bundle.MemberFile` read in pieces."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    with open(data.path, "rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def sign_bundle(source: Bundle | bytes | str | os.PathLike, key: SigningKey, *, version: int,
                max_total_bytes: int = MAX_TOTAL_BYTES) -> bytes:
    """Return the bytes of a bundle with a signature by ``key`` (replacing any it had).

    The bundle is read and verified first (a corrupt bundle is never signed); its manifest and
    members are kept byte for byte.

    Args:
        source: the .afb bytes, a path to them, or a `Bundle` `read_bundle` read.
        key: the signer's key.
        version: the signed version (1 to `MAX_VERSION`).
        max_total_bytes: as for `afcore.bundle.read_bundle`.

    Raises:
        BundleError: the bundle is corrupt (AF4xxx), or its manifest does not type (AF4018).
        UsageError: AF0964 for a version out of range.
    """
    from .manifest import Manifest

    bundle = source if isinstance(source, Bundle) else read_bundle(source, max_total_bytes=max_total_bytes)
    Manifest.from_json(bundle.manifest)
    signature = sign_manifest(bundle.manifest_bytes, key, version=version)
    return assemble_bundle(bundle.manifest_bytes, bundle.members, signature=signature)
