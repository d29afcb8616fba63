"""`AgentFile`: a loaded and checked .af file, and the functions that load, validate and write one.

Loading runs the layers in order, each on the previous one's result: container framing
(`afc.reader`), YAML (`afc.yamlload`), then schema (`afc.validate`), step syntax (`afc.expr`) and
meaning (`afc.check`). Framing and YAML errors stop the pipeline (there is no tree to check). The
last three are reported together, so one run shows every error of the file: each meaning check
reads only the header nodes that pass the schema (`SchemaReport.is_valid`), so an invalid
`neural_config` silences the weight-shape checks instead of feeding them nonsense. The exception is
the class of the earliest layer with an error: `ParseError`, then `SchemaError`, then `CheckError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from afcore.diagnostics import Diagnostic, sort_diagnostics
from afcore.errors import CheckError, ParseError, SchemaError, SourceError, UsageError

from . import check
from .check_network import check_backends, check_network_size, check_output_activation
from .reader import DEFAULT_MAX_SECTION_BYTES, Container, RawSection, read_container
from .validate import report_header
from .yamlload import YamlDocument, dump_round_trip, load_yaml

if TYPE_CHECKING:
    import numpy as np

    from afcore.spans import Span
    from afcore.steps import Step

    from .spec import AgentSpec

__all__ = [
    "AgentFile",
    "load_agent_bytes",
    "load_agent_file",
    "read_agent_bytes",
    "render_agent_file",
    "validate",
    "validate_bytes",
    "write_agent_file",
]


@dataclass(eq=False)
class AgentFile:
    """A valid .af file: header as data (with positions), sections, decoded tensors, parsed steps.

    Attributes:
        path: the path shown in diagnostics.
        container: the split file (`afc.reader.Container`).
        document: the parsed header with node positions.
        sections: the raw sections by name, in file order.
        workflows: the parsed steps of each declared workflow.
        diagnostics: the warnings and notes found while loading (a loaded file has no errors).
    """

    path: str
    container: Container
    document: YamlDocument
    sections: dict[str, RawSection]
    workflows: dict[str, tuple[Step, ...]]
    diagnostics: list[Diagnostic] = field(default_factory=list)
    _tensors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    _data: bytes = field(default=b"", repr=False)

    @property
    def header(self) -> dict[str, Any]:
        """Return the header as plain JSON-like data."""
        return self.document.data

    @property
    def header_text(self) -> str:
        """Return the header exactly as written (BOM removed)."""
        return self.container.header_text

    @property
    def yaml(self) -> Any:
        """Return the header as a ruamel round-trip tree (CommentedMap); edit it, then `write_agent_file`."""
        return self.document.round_trip()

    def tensors(self, name: str) -> dict[str, np.ndarray]:
        """Return the float32 tensors of a tensor section (``neural_weights``, ``training_data``).

        Raises:
            KeyError: when the file has no such tensor section.
        """
        return self._tensors[name]

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Return the tensors of ``neural_weights`` (``layers.<i>.weight`` [out, in], ``layers.<i>.bias``)."""
        return self._tensors["neural_weights"]

    @property
    def training_data(self) -> dict[str, np.ndarray] | None:
        """Return ``{"inputs", "targets"}`` of ``training_data``, or None when the file has none."""
        return self._tensors.get("training_data")

    def span_of(self, instance_path: tuple, *, part: str = "value") -> Span:
        """Return where the header node at ``instance_path`` (e.g. ``("neural_config", "input_size")``) is written."""
        return self.document.span_of(instance_path, part=part)

    def spec(self) -> AgentSpec:
        """Return the compiler's IR for this agent (see `afc.build.build_agent`)."""
        from .build import build_agent

        return build_agent(self)


def load_agent_file(path: str | Path, *, max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES) -> AgentFile:
    """Read, parse and check an .af file.

    Args:
        path: the file.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        The loaded file; its ``diagnostics`` hold warnings only.

    Raises:
        UsageError: AF0901 when the file cannot be read.
        ParseError: container, YAML or step syntax errors (AF0xxx).
        SchemaError: schema violations (AF1xxx), and no syntax error.
        CheckError: meaning errors (AF2xxx) only.
        Past the YAML layer, the error holds every diagnostic of the file (schema, syntax and meaning).
    """
    return load_agent_bytes(read_agent_bytes(path), path=str(path), max_section_bytes=max_section_bytes)


def read_agent_bytes(path: str | Path) -> bytes:
    """Return the bytes of a file.

    Raises:
        UsageError: AF0901 when the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read `{path}`: {exc.strerror or exc}", code="AF0901",
                         hint="check the path and its permissions") from None


def load_agent_bytes(data: bytes, *, path: str, max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES) -> AgentFile:
    """Parse and check the bytes of an .af file (what `load_agent_file` does after reading it).

    Args:
        data: the whole file.
        path: the path shown in diagnostics.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        The loaded file.

    Raises:
        ParseError, SchemaError, CheckError: as `load_agent_file`.
    """
    container = read_container(data, path=path, max_section_bytes=max_section_bytes)
    document = load_yaml(container.header_source)
    schema = report_header(document)
    workflows, syntax = check.parse_workflows(document)
    sections = {s.name: s for s in container.sections}
    valid = schema.is_valid
    found = check_network_size(document, valid=valid) + check_output_activation(document, valid=valid)
    found += check_backends(document, valid=valid)
    tensors, decoded = _decode_tensor_sections(sections)
    found += decoded
    found += check.check_weights(document, sections.get("neural_weights"), tensors.get("neural_weights"), valid=valid)
    found += check.check_training_data(document, sections.get("training_data"), tensors.get("training_data"),
                                       valid=valid)
    found += check.check_resources(document, valid=valid)
    found += check.check_interop_fields(document, valid=valid)
    found += check.check_steps(document, workflows)
    found += check.check_learning(document, workflows)
    _raise_errors(syntax, schema.diagnostics, found)
    return AgentFile(path, container, document, sections, workflows, sort_diagnostics(found), tensors, data)


def _raise_errors(syntax: list[Diagnostic], schema: list[Diagnostic], meaning: list[Diagnostic]) -> None:
    """Raise every diagnostic at once, as the class of the earliest layer that has an error."""
    everything = syntax + schema + meaning
    for kind, layer in ((ParseError, syntax), (SchemaError, schema), (CheckError, meaning)):
        if _errors(layer):
            raise kind(everything)


def _errors(diagnostics: list[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def _decode_tensor_sections(sections: Mapping[str, RawSection]) -> tuple[dict[str, dict], list[Diagnostic]]:
    from .tensors import TENSOR_SECTIONS, decode_tensors

    tensors: dict[str, dict] = {}
    diagnostics: list[Diagnostic] = []
    for name in TENSOR_SECTIONS:
        if name in sections:
            decoded, found = decode_tensors(sections[name])
            diagnostics += found
            if not _errors(found):
                tensors[name] = decoded
    return tensors, diagnostics


def validate(path: str | Path, *, max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES) -> list[Diagnostic]:
    """Check an .af file and return every diagnostic found, errors and warnings.

    Args:
        path: the file.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        The diagnostics sorted by position; no error among them means the file is valid.

    Raises:
        UsageError: AF0901 when the file cannot be read (that is not a fault of the file's content).
    """
    return validate_bytes(read_agent_bytes(path), path=str(path), max_section_bytes=max_section_bytes)


def validate_bytes(data: bytes, *, path: str, max_section_bytes: int = DEFAULT_MAX_SECTION_BYTES) -> list[Diagnostic]:
    """Check the bytes of an .af file; see `validate`.

    Args:
        data: the whole file.
        path: the path shown in diagnostics.
        max_section_bytes: cap on any section's decompressed size.

    Returns:
        Every diagnostic, sorted by position.
    """
    try:
        return list(load_agent_bytes(data, path=path, max_section_bytes=max_section_bytes).diagnostics)
    except SourceError as error:
        return list(error.diagnostics)


def write_agent_file(path: str | Path, agent_file: AgentFile, *, raw: bool | None = None) -> None:
    """Write an agent file atomically, keeping everything that did not change byte for byte.

    The header is written as it was read unless its round-trip tree (`AgentFile.yaml`) was edited,
    in which case it is dumped by ruamel with the layout of the reference example. Sections are
    copied as they are in the file unless ``raw`` asks for another encoding.

    Args:
        path: the destination (replaced atomically).
        agent_file: what to write.
        raw: None keeps each section's encoding; True stores every section raw, False as base64.
    """
    from afcore import fsutil

    fsutil.write_file_atomic(Path(path), render_agent_file(agent_file, raw=raw))


def render_agent_file(agent_file: AgentFile, *, raw: bool | None = None) -> bytes:
    """Return the bytes `write_agent_file` would write.

    Args:
        agent_file: what to render.
        raw: None keeps each section's encoding (and its bytes, when the sections are unchanged);
            True stores every section raw, False as base64.

    Returns:
        The file's bytes.
    """
    from .writer import write_container

    container = agent_file.container
    header = _header_text(agent_file)
    unchanged_sections = list(agent_file.sections.values()) == list(container.sections)
    if raw is None and unchanged_sections and agent_file._data:
        # Splice: the sections' bytes stay exactly as they were, whoever wrote them.
        first = container.sections[0].offset if container.sections else len(agent_file._data)
        head = ("\ufeff" if container.bom else "") + header
        return head.encode("utf-8") + agent_file._data[first:]
    sections = [(s.name, s.payload) for s in agent_file.sections.values()]
    raw_names = [s.name for s in agent_file.sections.values() if s.encoding == "raw"] if raw is None else bool(raw)
    return write_container(header, sections, raw=raw_names, newline=container.newline, bom=container.bom)


def _header_text(agent_file: AgentFile) -> str:
    document = agent_file.document
    if document._round_trip is None:
        return agent_file.header_text
    newline = agent_file.container.newline
    edited = dump_round_trip(document.round_trip(), newline=newline)
    pristine = dump_round_trip(load_yaml(document.source).round_trip(), newline=newline)
    return agent_file.header_text if edited == pristine else edited
