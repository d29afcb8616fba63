"""`af keygen`: make an Ed25519 key pair for signing bundles (docs/cli.md, section `af keygen`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._app import command
from ._output import emit, say


def public_path(private: Path) -> Path:
    """Return where the public key of ``private`` goes: ``team.key`` -> ``team.pub``, ``team`` -> ``team.pub``."""
    return private.with_suffix(".pub") if private.suffix == ".key" else private.with_name(private.name + ".pub")


@command("keygen")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path), metavar="KEY",
              help="The private key file (mode 0600); the public key goes beside it as .pub.")
@click.option("--force", is_flag=True, help="Replace existing key files.")
@click.option("--json", "as_json", is_flag=True, help="Print {key_id, private_key, public_key} as JSON on stdout.")
def keygen_command(out: Path, *, force: bool, as_json: bool) -> None:
    """Make an Ed25519 key pair: KEY (PEM PKCS#8, mode 0600) and its public key beside it (.pub).

    Prints the key id on stdout. The private key is encrypted with the passphrase in
    AF_SIGNING_PASSPHRASE when that is set. Existing files are kept unless --force.
    """
    from afcore.errors import UsageError
    from afcore.fsutil import write_file_atomic
    from afcore.signing import generate_key

    from ._files import check_output
    from ._keys import passphrase

    public = public_path(out)
    for path in (out, public):
        check_output(path, create_parents=False)
        if path.exists() and not force:
            raise UsageError(f"`{path}` exists: af keygen does not overwrite a key", code="AF0960",
                             hint="pass --force to replace it (bundles signed with the old key then need the old .pub)")
    key = generate_key()
    try:
        write_file_atomic(out, key.to_pem(passphrase()), mode=0o600)
        write_file_atomic(public, key.public_key.to_pem(), mode=0o644)
    except OSError as exc:
        raise UsageError(f"cannot write the key: {exc.strerror or exc}", code="AF0961",
                         hint="check that the directory exists and is writable") from None
    if as_json:
        emit(json.dumps({"key_id": key.key_id, "private_key": str(out), "public_key": str(public)}, sort_keys=True))
    else:
        emit(key.key_id)
    encrypted = " encrypted with AF_SIGNING_PASSPHRASE," if passphrase() else ""
    say(f"wrote {out} (private,{encrypted} mode 0600) and {public} (public: give it to those who run your bundles); "
        f"key id {key.key_id}")
