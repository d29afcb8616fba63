"""What `af keygen`, `af sign`, `af verify`, `af run --trust|--admit|--identity` and `af submit --admit`
share: reading key files.

A private key may be encrypted: `af keygen` encrypts it with the passphrase in the environment
variable `PASSPHRASE_ENV` when that is set, and `af sign` decrypts it with the same variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

if TYPE_CHECKING:
    from afcore.signing import PublicKey, SigningKey

#: the environment variable holding the passphrase of a private key (unset: the key is not encrypted)
PASSPHRASE_ENV = "AF_SIGNING_PASSPHRASE"


def passphrase() -> Optional[bytes]:
    """Return the passphrase from `PASSPHRASE_ENV`, None when it is unset or empty."""
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode() if value else None


def trust_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --trust PUB (repeatable): the public keys whose signatures are accepted."""
    import click

    return click.option("--trust", "trust", multiple=True, type=click.Path(path_type=Path), metavar="PUB",
                        help="A signer's public key (.pub from `af keygen`); repeat for several.")(fn)


def admit_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --admit PUB (repeatable; a file may hold several keys): whose signed bus entries are taken."""
    import click

    return click.option("--admit", "admit", multiple=True, type=click.Path(path_type=Path), metavar="PUB",
                        help="Take only bus entries signed by these public keys (PEM .pub files; one file may hold "
                             "several keys; repeat for several files) and drop the rest (docs/security.md).")(fn)


def read_admitted_keys(paths: Sequence[Path]) -> Optional[list[PublicKey]]:
    """Read the public keys of ``--admit`` (every key of every file, each once); None when none is given.

    Raises:
        UsageError: AF0901 when a file cannot be read, AF0963 when one holds anything but PEM
            Ed25519 public keys.
    """
    from afcore.errors import UsageError
    from afcore.signing import load_public_keys

    from ._files import read_input

    if not paths:
        return None
    keys: list[PublicKey] = []
    for path in paths:
        try:
            found = load_public_keys(read_input(path), name=f"`{path}`")
        except UsageError as error:
            error.path = str(path)  # type: ignore[attr-defined]
            raise
        keys += [key for key in found if key not in keys]
    return keys


def read_signing_key(path: Path) -> SigningKey:
    """Read the private key at ``path`` (decrypted with `PASSPHRASE_ENV` when set).

    Raises:
        UsageError: AF0901 when the file cannot be read, AF0962 when it is no Ed25519 private key.
    """
    from afcore.errors import UsageError
    from afcore.signing import load_private_key

    from ._files import read_input

    data = read_input(path)
    try:
        return load_private_key(data, passphrase=passphrase(), name=f"`{path}`")
    except UsageError as error:
        error.path = str(path)  # type: ignore[attr-defined]  # named in JSON diagnostics
        raise


def read_trusted_keys(paths: Sequence[Path]) -> list[PublicKey]:
    """Read the public keys of ``--trust`` (each once).

    Raises:
        UsageError: AF0901 when a file cannot be read, AF0963 when one is no Ed25519 public key.
    """
    from afcore.errors import UsageError
    from afcore.signing import load_public_key

    from ._files import read_input

    keys: list[PublicKey] = []
    for path in paths:
        data = read_input(path)
        try:
            key = load_public_key(data, name=f"`{path}`")
        except UsageError as error:
            error.path = str(path)  # type: ignore[attr-defined]
            raise
        if key not in keys:
            keys.append(key)
    return keys


def refuse_unsigned_source(path: Path) -> None:
    """Refuse an .af given with ``--trust``: it is compiled in memory, so nobody signed what would run.

    Raises:
        BundleError: AF4050.
    """
    from afcore.errors import BundleError

    error = BundleError(f"`{path}` is an .af file, which is never signed: --trust runs signed bundles only",
                        code="AF4050", hint="compile it (`af compile`), sign the bundle (`af sign`) and run that")
    error.path = str(path)  # type: ignore[attr-defined]
    raise error
