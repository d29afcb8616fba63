"""Replace or add the tensor sections of an .af file (`af pack`): merge, check, write atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from afcore.errors import UsageError

from .reader import DEFAULT_MAX_SECTION_BYTES
from .writer import write_af_file

if TYPE_CHECKING:
    from .reader import Container

__all__ = ["PACKABLE_SECTIONS", "PackResult", "pack"]

#: the sections `pack` can fill, by keyword argument
PACKABLE_SECTIONS = ("neural_weights", "training_data")


@dataclass(frozen=True)
class PackResult:
    """An .af file written by `pack`.

    Attributes:
        path: the file written.
        size: its size in bytes.
        sections: the sections replaced or added, sorted.
        raw: whether they were stored as raw zstd bytes (else base64 text).
    """

    path: Path
    size: int
    sections: tuple[str, ...]
    raw: bool

    def to_json(self) -> dict:
        """Return the summary `af pack --format json` prints."""
        return {"path": str(self.path), "bytes": self.size, "sections": list(self.sections),
                "encoding": "raw" if self.raw else "base64"}


def pack(
    path: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    training_data: str | os.PathLike | None = None,
    raw: bool = False,
    output: str | os.PathLike | None = None,
    max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES,
) -> PackResult:
    """Put safetensors files into an .af file's sections, keeping its header text and other sections.

    The new file must validate, or nothing is written; it replaces ``path`` atomically (or goes to
    ``output``). The sections keep their place and encoding; new ones are appended.

    Args:
        path: the .af file.
        weights: a safetensors file to store as ``neural_weights``.
        training_data: a safetensors file to store as ``training_data``.
        raw: store the packed sections as raw zstd bytes instead of base64 text.
        output: write here instead of replacing ``path``.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        The `PackResult`.

    Raises:
        UsageError: AF0912 when no file is given, AF0914 when the result cannot be written, AF0901
            when a file cannot be read.
        CheckError: a given file is not a safetensors file of accepted dtypes.
        SourceError: the result would not validate (its diagnostics).
    """
    from .agentfile import load_agent_bytes, read_agent_bytes
    from .reader import read_container
    from .writer import write_container

    new = _new_payloads({"neural_weights": weights, "training_data": training_data})
    container = read_container(read_agent_bytes(path), path=str(path), max_section_bytes=max_section_bytes,
                               skip_payloads=new)
    sections = _merge(container, new)
    raw_names = {n for n, _ in sections if (n in new and raw) or (n not in new and _encoding(container, n) == "raw")}
    result = write_container(container.header_text, sections, raw=raw_names, newline=container.newline,
                             bom=container.bom)
    target = Path(output if output is not None else path)
    load_agent_bytes(result, path=str(target), max_section_bytes=max_section_bytes)  # refuse to write an invalid file
    write_af_file(target, result, code="AF0914")
    return PackResult(target, len(result), tuple(sorted(new)), raw)


def _new_payloads(given: dict[str, str | os.PathLike | None]) -> dict[str, bytes]:
    """Read and check the given safetensors files; return their bytes by section name."""
    from .agentfile import read_agent_bytes

    new = {name: read_agent_bytes(file) for name, file in given.items() if file is not None}
    if not new:
        raise UsageError("nothing to pack", code="AF0912", hint="give --weights FILE and/or --training-data FILE")
    for name, payload in new.items():
        _check_tensors(name, payload, given[name])
    return new


def _check_tensors(name: str, payload: bytes, file: str | os.PathLike | None) -> None:
    """Raise `CheckError` when ``payload`` is not a safetensors file of accepted dtypes."""
    from afcore.errors import CheckError
    from afcore.spans import Span

    from .reader import RawSection
    from .tensors import decode_tensors

    _, diagnostics = decode_tensors(RawSection(name, "raw", payload, Span(str(file), 1, 1), 0))
    if any(d.is_error for d in diagnostics):
        # A binary file has no source lines to frame: name the file in the message instead.
        placeless = [replace(d, span=None, message=f"{file}: {d.message}") for d in diagnostics]
        raise CheckError(placeless)


def _merge(container: Container, new: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Keep the sections in file order with the new payloads in place; append the new ones."""
    sections = [(s.name, new.get(s.name, s.payload)) for s in container.sections]
    present = {s.name for s in container.sections}
    return sections + [(name, payload) for name, payload in new.items() if name not in present]


def _encoding(container: Container, name: str) -> str | None:
    section = container.section(name)
    return section.encoding if section is not None else None
