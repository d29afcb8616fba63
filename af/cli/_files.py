"""The files named on an `af` command line: what kind each is (by content), and how a bad one is reported.

A kind is decided by the first bytes, never by the extension: a bundle is a zstd frame
(``28 b5 2f fd``) holding a tar archive; an .af file is text (YAML, optionally followed by its
sections). Files plainly of another kind are named: safetensors, an ONNX model, a Letta agent file
(JSON that shares the .af extension), a tar archive, other binary data. Every problem with a named path is a usage error (exit 2) of the AF09xx family with a
help line: AF0901 a file that cannot be read, AF0904 a file of another kind than the command
takes, AF0905 an output path that names a directory, AF0906 an output that cannot be created.
The error keeps the path (``error.path``) so that JSON output names it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afcore.errors import UsageError

#: how many bytes `sniff_kind` looks at
SNIFF_BYTES = 4096
#: kind -> (what it is, which command takes it)
KINDS = {
    "agent": ("an .af agent file (text)", "`af validate`, `af compile` or `af run`"),
    "bundle": ("a compiled bundle (zstd-compressed tar)", "`af inspect`, `af export` or `af run`"),
    "tar": ("an uncompressed tar archive, not a bundle", "`af compile` writes bundles from .af files"),
    "safetensors": ("a safetensors file", "`af pack --weights`"),
    "onnx": ("an ONNX model", "onnxruntime or Netron (`af export` writes one from a bundle)"),
    "letta": ("a Letta agent file (JSON with `agents`), a format that shares the .af extension",
              "Letta; af agent files are YAML, see docs/format.md"),
    "json": ("a JSON document without the keys of an af agent file", "no af command (docs/format.md)"),
    "binary": ("a binary file that is neither an .af file nor a bundle", "no af command"),
    "empty": ("an empty file", "no af command"),
}

#: kind -> how a command names what it takes
_WANTED = {"agent": "an agent file (.af)", "bundle": "a compiled bundle (.afb)"}


def usage_error(message: str, code: str, hint: str, path: Any) -> UsageError:
    from afcore.errors import UsageError

    error = UsageError(message, code=code, hint=hint)
    error.path = str(path)  # type: ignore[attr-defined]
    return error


def sniff_kind(head: bytes) -> str:
    """Return the kind of a file from its first bytes: a key of `KINDS` (`afcore.sniff.file_kind`).

    Args:
        head: the file's first bytes (`SNIFF_BYTES` are enough), or all of them.
    """
    from afcore.sniff import file_kind

    return file_kind(head)


def read_head(path: Path) -> bytes:
    """Return the first `SNIFF_BYTES` of ``path``.

    Raises:
        UsageError: AF0901 when the path is missing, a directory or unreadable.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read(SNIFF_BYTES)
    except IsADirectoryError:
        raise usage_error(f"`{path}` is a directory", "AF0901", "give the path of a file", path) from None
    except OSError as exc:
        raise usage_error(f"cannot read `{path}`: {exc.strerror or exc}", "AF0901",
                     "check the path and its permissions", path) from None


def read_input(path: Path) -> bytes:
    """Return the whole of ``path``; the same errors as `read_head`."""
    read_head(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise usage_error(f"cannot read `{path}`: {exc.strerror or exc}", "AF0901",
                     "check the path and its permissions", path) from None


def ensure_kind(path: Path, kind: str, wanted: tuple[str, ...], command: str) -> str:
    """Check that ``kind`` (of the file at ``path``) is one ``command`` takes, and return it.

    Raises:
        UsageError: AF0904 naming what the file is and which command takes it.
    """
    if kind in wanted:
        return kind
    what, taker = KINDS[kind]
    needs = " or ".join(_WANTED[w] for w in wanted)
    raise usage_error(f"`{path}` is {what}: `{command}` takes {needs}", "AF0904", f"for this file use {taker}", path)


def check_input(path: Path, wanted: tuple[str, ...], command: str) -> str:
    """Check that ``path`` can be read and is of a kind in ``wanted``; return its kind (read from its content)."""
    return ensure_kind(path, sniff_kind(read_head(path)), wanted, command)


def check_output(path: Path, *, create_parents: bool = True) -> Path:
    """Check an output path (``-o``) and create its missing parent directories, as `af compile -o` does.

    Args:
        path: the output file.
        create_parents: create missing parent directories (False: the writer does, with its own errors).

    Raises:
        UsageError: AF0905 when it names a directory (nothing is written into it), AF0906 when its
            parent cannot be created.
    """
    if path.is_dir():
        raise usage_error(f"the output `{path}` is a directory", "AF0905",
                          f"give a file path, e.g. `{path / 'out'}`", path)
    if not create_parents:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise usage_error(f"cannot create the directory of `{path}`: {exc.strerror or exc}", "AF0906",
                          "check that the place exists and is writable", path) from None
    if not os.access(path.parent, os.W_OK):
        raise usage_error(f"cannot write into `{path.parent}`: permission denied", "AF0906",
                          "choose a writable directory", path)
    return path


def read_checked(path: Path, wanted: tuple[str, ...], command: str) -> bytes:
    """Return the whole of ``path`` after checking that it can be read and is of a kind in ``wanted``.

    Raises:
        UsageError: AF0901 or AF0904, as `read_input` and `ensure_kind`.
    """
    data = read_input(path)
    ensure_kind(path, sniff_kind(data), wanted, command)
    return data
