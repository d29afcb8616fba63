"""Fuzz targets: one per parser of untrusted bytes, each a function of one ``bytes`` argument.

A target passes when the parser returns a result or raises one of af's own errors (`AfError`),
within `TIME_LIMIT` seconds; anything else (another exception, a hang) is a bug. The same targets
are driven by hypothesis in the ordinary tests (tests/fuzz/test_fuzz.py, a bounded number of
examples) and by atheris or hypothesis for a set time in `make fuzz` (tests/fuzz/run.py). Every
input that ever failed is kept in tests/corpus/fuzz/<target>/ and replayed by
tests/fuzz/test_corpus.py.

Seeds (`seeds`) are valid and broken inputs from the repository: the examples, the bad-file
corpus, compiled and signed bundles, record files; mutating them reaches far deeper than random
bytes (a random byte string is almost never a zstd frame).
"""

from __future__ import annotations

import functools
import io
import tarfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
#: where inputs that once failed a target are kept, one directory per target
CORPUS = ROOT / "tests" / "corpus" / "fuzz"
#: the longest one input may take a target, in seconds (a slower one is a failure: a hang or a bomb)
TIME_LIMIT = 2.0
#: the decompression cap the bundle targets read with (the default 1 GiB would make a bomb slow, not wrong)
MAX_BUNDLE_BYTES = 32 << 20
#: the input width the record targets decode for
INPUT_SIZE = 3


class SlowInput(AssertionError):
    """Raised when a target took longer than `TIME_LIMIT` on one input."""


def _bounded(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
    @functools.wraps(fn)
    def run(data: bytes) -> None:
        from afcore.errors import AfError

        started = time.perf_counter()
        try:
            fn(bytes(data))
        except AfError:
            pass  # af's own refusal: what a hostile input should get
        elapsed = time.perf_counter() - started
        if elapsed > TIME_LIMIT:
            raise SlowInput(f"{fn.__name__} took {elapsed:.2f} s on {len(data)} bytes (limit {TIME_LIMIT} s)")

    return run


# --------------------------------------------------------------------------- the targets


@_bounded
def container(data: bytes) -> None:
    """The .af container: header text and sections (afc.reader.read_container)."""
    from afc.reader import read_container

    read_container(data, path="fuzz.af")


@_bounded
def header(data: bytes) -> None:
    """A whole .af, header checked through YAML, schema and meaning (afc.validate_bytes): diagnostics, never a crash."""
    import afc

    diagnostics = afc.validate_bytes(data, path="fuzz.af")
    assert all(d.code.startswith("AF") for d in diagnostics)


@_bounded
def step(data: bytes) -> None:
    """The step language (afc.expr.parse_step), on the text a YAML string could hold."""
    from afc.expr import parse_step
    from afcore.spans import SourceFile

    text = data.decode("utf-8", "replace")
    source = SourceFile("fuzz.af", text)
    parse_step(text, locate=lambda start, end: source.span(start, end))


@_bounded
def bundle(data: bytes) -> None:
    """The bundle reader on a whole .afb (afcore.bundle.read_bundle)."""
    from afcore.bundle import read_bundle

    read_bundle(data, max_total_bytes=MAX_BUNDLE_BYTES)


@_bounded
def archive(data: bytes) -> None:
    """The bundle reader past zstd: ``data`` is the tar archive, compressed here, then read and typed."""
    import zstandard

    from afcore.bundle import read_bundle
    from afcore.manifest import Manifest

    read = read_bundle(zstandard.ZstdCompressor(write_checksum=True).compress(data), max_total_bytes=MAX_BUNDLE_BYTES)
    Manifest.from_json(read.manifest)


@_bounded
def records(data: bytes) -> None:
    """The JSONL record decoder: LineParser in chunks, and parse_block equal to parse_line line by line."""
    from afrt.records import LineParser

    parser = LineParser(INPUT_SIZE, block_rows=4)
    for start in range(0, len(data), 97):  # chunks that cut lines anywhere
        parser.feed(data[start : start + 97], hold=True)
    parser.feed(b"")
    lines = data.split(b"\n")
    assert _block_outcomes(lines) == _line_outcomes(lines)


def _block_outcomes(lines: list[bytes]) -> list[tuple]:
    from afrt.records import parse_block

    block, errors, _ = parse_block(lines, seq=0, line_no=1, input_size=INPUT_SIZE)
    got = [("ok", rec.seq, repr(rec.id), tuple(float(v).hex() for v in rec.values))
           for rec in (block.record(i) for i in range(len(block)))] if block else []
    got += [("error", e.seq, repr(e.id), e.code) for e in errors]
    return sorted(got, key=lambda t: t[1])


def _line_outcomes(lines: list[bytes]) -> list[tuple]:
    import numpy as np

    from afrt.records import InputRecord, check_numbers, parse_lines

    want = []
    for rec in parse_lines(lines, input_size=INPUT_SIZE):
        if type(rec) is InputRecord:
            rec = check_numbers(rec) or rec
        if type(rec) is InputRecord:
            want.append(("ok", rec.seq, repr(rec.id), tuple(float(np.float32(v)).hex() for v in rec.values)))
        else:
            want.append(("error", rec.seq, repr(rec.id), rec.code))
    return want


@_bounded
def signature(data: bytes) -> None:
    """The signature parser and verifier (afcore.signing).

    The first byte picks what the rest is: even, ``signature.json`` itself (parsed, then verified
    against a fixed manifest and key); odd, a statement that the trusted key signs, so that the
    statement's parser, which only runs behind a valid signature, is reached too.
    """
    from afcore import signing

    if not data:
        return
    key, manifest = _signing_fixture()
    body = data[1:]
    if data[0] % 2:
        import base64

        sig = key.sign(signing._pae(signing.PAYLOAD_TYPE, body))
        body = signing._encode_envelope(signing.Envelope(body, key.key_id, sig))
        assert base64.b64decode(__import__("json").loads(body)["payload"]) == data[1:]
    signing.parse_signature(body)
    result = signing.verify_signature(manifest, body, [key.public_key])
    assert result.key_id == key.key_id and 1 <= result.version <= signing.MAX_VERSION


#: the channel the bus_entry target checks entries for
BUS_CHANNEL = "af:fuzz:results:0123456789abcdef"


@_bounded
def bus_entry(data: bytes) -> None:
    """A signed bus entry as a receiver reads it from Redis, and its verifier (afrt.busauth).

    The rest of ``data`` after its first byte is the entry's fields, ``name NUL value NUL ...``.
    First byte even: the entry is checked against a fixed admitted key and must be accepted or
    dropped for one of the reasons, never raise. Odd: its fields (without ``a``) are signed with
    that key first, so that the verification and the replay window are reached: accepted once,
    then refused as replayed.
    """
    from afrt.busauth import AUTH_FIELD, REASONS, REPLAYED, Signer, Verifier

    if not data:
        return
    key, _ = _signing_fixture()
    parts = data[1:].split(b"\0")
    fields = dict(zip(parts[::2], parts[1::2]))
    verifier = Verifier([key.public_key])
    if data[0] % 2:
        text = {name.decode("latin-1"): value for name, value in fields.items() if name != AUTH_FIELD.encode()}
        read = {name.encode(): value for name, value in Signer(key).sign(BUS_CHANNEL, text).items()}
        assert verifier.check(BUS_CHANNEL, read) is None and verifier.check(BUS_CHANNEL, read) == REPLAYED
    else:
        assert verifier.check(BUS_CHANNEL, fields) in (None, *REASONS)


@functools.lru_cache(maxsize=None)
def _signing_fixture() -> tuple:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from afcore import signing

    key = signing.SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    return key, b'{"format": "afb"}\n'


#: target name -> function
@_bounded
def fann(data: bytes) -> None:
    """`af import model.net`: the FANN_FLO_2.1 reader, then the .af it makes must compile."""
    _import_and_compile(b"FANN_" + data.lstrip()[5:] if data.lstrip()[:5] != b"FANN_" else data)


@_bounded
def onnx_import(data: bytes) -> None:
    """`af import model.onnx`: the ONNX MLP reader, then the .af it makes must compile."""
    _import_and_compile(data)


def _import_and_compile(data: bytes) -> None:
    """What `af import` accepts, `af compile` compiles (an accepted file that does not is a bug)."""
    from afc.agentfile import load_agent_bytes
    from afc.compile import compile_agent
    from afc.interop import import_model_bytes

    source = import_model_bytes(data, path="fuzz-model", name="fuzzed")
    compile_agent(load_agent_bytes(source, path="fuzzed.af").spec(), targets=("onnx",))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "container": container,
    "header": header,
    "step": step,
    "bundle": bundle,
    "archive": archive,
    "records": records,
    "signature": signature,
    "bus_entry": bus_entry,
    "fann": fann,
    "onnx_import": onnx_import,
}


# --------------------------------------------------------------------------- seeds


@functools.lru_cache(maxsize=None)
def seeds(target: str) -> tuple[bytes, ...]:
    """Return the seed inputs of a target (valid and broken examples from the repository)."""
    return tuple(_SEEDS[target]())


def _af_files() -> list[bytes]:
    files = sorted((ROOT / "examples").glob("*.af")) + sorted((ROOT / "tests" / "corpus" / "bad").glob("*.af"))
    return [path.read_bytes() for path in files if path.stat().st_size < 64 << 10]


def _header_seeds() -> list[bytes]:
    # the headers alone (no sections): mutations then land in the YAML, not in base64
    out = []
    for data in _af_files():
        cut = data.find(b"\n---")
        out.append(data if cut < 0 else data[:cut + 1])
    return out


def _step_seeds() -> list[bytes]:
    texts = [
        "load_neural_network", "receive_input", "process_neural_network", "send_output",
        "update_memory(window=10)", "save_state(every=100) when memory.count > 0",
        "save_state(every=100) when (memory.count + 1) * 2 >= 10 and not memory.stop",
        "send_output(topic=\"results\") when output.max > 0.5 or input.size == 3",
        "update_memory(window=1) when not (memory.count % 2 == 0)", "a(x=1, x=2)", "save_state(every=1e999)",
        "send_output when output.argmax == 3 and output.max >= 0.25", 'send_output(topic="a\\"b")',
    ]
    return [text.encode() for text in texts]


@functools.lru_cache(maxsize=None)
def _bundles() -> tuple[bytes, ...]:
    from afc import compile_agent, load_agent_file
    from afcore import signing

    plain = compile_agent(load_agent_file(ROOT / "examples" / "xor.af").spec(), targets=("onnx", "wasm"))
    key, _ = _signing_fixture()
    return plain, signing.sign_bundle(plain, key, version=3)


def _archive_seeds() -> list[bytes]:
    import zstandard

    tars = [zstandard.ZstdDecompressor().decompress(data) for data in _bundles()]
    # a small archive of the shape tools other than af write (tarfile's default GNU format, padding)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in (("manifest.json", b'{"format": "afb", "format_version": "1.0", "members": []}'),):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return [*tars, raw.getvalue()]


def _record_seeds() -> list[bytes]:
    files = sorted((ROOT / "tests" / "corpus" / "records").glob("*.jsonl"))
    return [path.read_bytes() for path in files] + [b'{"id": 1, "input": [1, 2, 3]}\n[4, 5, 6]\n']


def _signature_seeds() -> list[bytes]:
    from afcore import signing

    key, manifest = _signing_fixture()
    envelope = signing.sign_manifest(manifest, key, version=7)
    statement = b'{"manifest_sha256":"' + __import__("hashlib").sha256(manifest).hexdigest().encode() + b'","version":7}'
    return [b"\0" + envelope, b"\1" + statement, b"\0{}", b"\1{}"]


def _bus_entry_seeds() -> list[bytes]:
    from afrt.busauth import Signer

    key, _ = _signing_fixture()
    genuine = Signer(key).sign(BUS_CHANNEL, {"n": 0, "d": b'{"id":"a","output":[0.5]}\n', "t": "0" * 32})

    def entry(fields: dict) -> bytes:
        return b"\0".join(n.encode() + b"\0" + (v if isinstance(v, bytes) else str(v).encode()) for n, v in fields.items())

    return [b"\0" + entry(genuine), b"\1" + entry(genuine), b"\0" + entry({"n": 0, "d": b"x"}), b"\0a\0" + b"1." * 4]


def _fann_seeds() -> list[bytes]:
    from afc import load_agent_file
    from afc.fann import export_fann

    network = load_agent_file(ROOT / "examples" / "xor.af").spec().network
    return [export_fann(network).encode(), b"FANN_FLO_2.1\nnum_layers=2\n"]


def _onnx_seeds() -> list[bytes]:
    import zstandard

    plain = _bundles()[0]
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompress(plain))) as tar:
        model = tar.extractfile("model.onnx").read()
    return [model, model[: len(model) // 2]]


_SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "container": _af_files,
    "header": _header_seeds,
    "step": _step_seeds,
    "bundle": lambda: list(_bundles()),
    "archive": _archive_seeds,
    "records": _record_seeds,
    "signature": _signature_seeds,
    "bus_entry": _bus_entry_seeds,
    "fann": _fann_seeds,
    "onnx_import": _onnx_seeds,
}


def corpus(target: str) -> list[Path]:
    """Return the saved inputs of a target (tests/corpus/fuzz/<target>/*), sorted."""
    return sorted(path for path in (CORPUS / target).glob("*") if path.is_file() and path.name != "README.md")
