"""`af sign`: add a signature to a bundle (docs/cli.md, section `af sign`; docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ._app import command
from ._load import max_bundle_option
from ._output import emit, say

#: the largest version `--version` takes: `afcore.signing.MAX_VERSION` (a test holds them equal), not
#: imported, so that `af --help`, which imports every command module, does not load the bundle reader
MAX_VERSION = (1 << 53) - 1


def counter_path(key: Path) -> Path:
    """Return the file that holds the last version signed with ``key``: ``team.key`` -> ``team.key.counter``."""
    return key.with_name(key.name + ".counter")


def read_counter(path: Path) -> int:
    """Return the version in a counter file, 0 when there is none.

    Raises:
        UsageError: AF0965 when it cannot be read or holds no version.
    """
    from afcore.errors import UsageError

    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the version counter `{path}`: {getattr(exc, 'strerror', None) or exc}",
                         code="AF0965", hint="fix or delete it, and pass --version") from None
    if not text.isdigit() or not 0 <= int(text) <= MAX_VERSION:
        raise UsageError(f"the version counter `{path}` holds no version", code="AF0965",
                         hint="it holds the last version signed with the key: fix it, or delete it and pass --version")
    return int(text)


@command("sign")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--key", "-k", "key_path", required=True, type=click.Path(path_type=Path), metavar="KEY",
              help="The private key (from `af keygen`).")
@click.option("--version", "version", type=click.IntRange(1, MAX_VERSION), metavar="N",
              help="The signed version, which only grows  [default: one above the bundle's and KEY.counter's]")
@click.option("--output", "-o", "output", type=click.Path(path_type=Path),
              help="Write the signed bundle here  [default: replace BUNDLE]")
@click.option("--json", "as_json", is_flag=True, help="Print {bundle, key_id, version, manifest_sha256} as JSON on stdout.")
@max_bundle_option
def sign_command(path: Path, *, key_path: Path, version: Optional[int], output: Optional[Path], as_json: bool,
                 max_bundle_mb: Optional[int]) -> None:
    """Sign a bundle: add signature.json, an Ed25519 signature over its manifest and a version.

    The manifest lists every member's sha256, so the signature pins the whole bundle. The version
    defaults to one above both the version of the bundle's current signature and the last one
    signed with KEY (kept in KEY.counter, which af sign updates). The bundle is verified first and
    written atomically; a signature it had is replaced.
    """
    from afcore.bundle import read_bundle
    from afcore.errors import UsageError
    from afcore.fsutil import write_file_atomic
    from afcore.signing import sign_bundle, signed_version

    from ._files import check_input, check_output
    from ._keys import read_signing_key
    from ._load import bundle_cap

    check_input(path, ("bundle",), "af sign")
    destination = output or path
    check_output(destination)
    key = read_signing_key(key_path)
    bundle = read_bundle(path, max_total_bytes=bundle_cap(max_bundle_mb))
    counter = counter_path(key_path)
    last = read_counter(counter)
    if version is None:
        version = max(signed_version(bundle.signature) or 0, last) + 1
        if version > MAX_VERSION:
            raise UsageError("no version is left above the last one signed", code="AF0964", hint="pass --version")
    data = sign_bundle(bundle, key, version=version)
    try:
        if version > last:  # first: a version given up is harmless, one given twice is not
            write_file_atomic(counter, f"{version}\n".encode(), mode=0o600)
        write_file_atomic(destination, data)
    except OSError as exc:
        raise UsageError(f"cannot write `{exc.filename or destination}`: {exc.strerror or exc}", code="AF0961",
                         hint="check that the directory is writable") from None
    if as_json:
        import hashlib

        emit(json.dumps({"bundle": str(destination), "key_id": key.key_id, "version": version,
                         "manifest_sha256": hashlib.sha256(bundle.manifest_bytes).hexdigest()}, sort_keys=True))
    say(f"signed {destination} with key {key.key_id}, version {version} ({len(data):,} bytes)")
