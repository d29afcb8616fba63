"""Load the YAML header of an .af file safely, keeping the position of every node.

Why not ruamel's round-trip loader for reading: it takes ~7 ms on the reference header (the target
is 2 ms) and it constructs before we could look, so tags like ``!!python/name`` or an alias bomb
would be acted on first. Instead we walk the event stream of libyaml (ruamel.yaml.clib's
``CParser``, ~0.3 ms here) ourselves: every tag, anchor and alias is refused *before* anything is
constructed (an alias is never expanded), nesting is capped, duplicate and non-string keys are
refused, and each node's start/end marks are kept. libyaml's marks are 0-based character indexes;
they become 1-based `Span`s here and nowhere else. The round-trip tree (comments, key order, quote
styles) is built lazily by `YamlDocument.round_trip` only when someone writes or edits the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from afcore.diagnostics import Diagnostic
from afcore.errors import ParseError

if TYPE_CHECKING:
    from afcore.spans import SourceFile, Span

__all__ = [
    "MAX_DEPTH",
    "NodePosition",
    "YamlDocument",
    "dump_round_trip",
    "load_yaml",
    "round_trip_yaml",
]

#: deepest nesting of mappings/sequences a header may use (the reference example needs 3)
MAX_DEPTH = 32

#: characters refused in mapping keys and in `name`: C0/C1 controls and the bidi/invisible marks of "trojan source"
_FORBIDDEN_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")

# YAML 1.2 core schema, the schema ruamel's round-trip loader uses by default.
_NULL = re.compile(r"~|null|Null|NULL|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"([-+]?)\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")


@dataclass(frozen=True)
class NodePosition:
    """Where a node stands: 0-based character offsets of its key (if any) and of its value.

    ``style`` is the scalar style as libyaml reports it (``""`` plain, ``'"'``, ``"'"``, ``"|"``, ``">"``),
    or None for a collection.
    """

    key_start: int | None
    key_end: int | None
    start: int
    end: int
    style: str | None = None


@dataclass
class YamlDocument:
    """A parsed header: plain data plus a position for every instance path.

    Args:
        source: the header text (a `SourceFile` whose offsets are those of the .af file).
        data: the header as plain JSON-like data (dict, list, str, int, float, bool, None).
        positions: instance path (tuple of keys and indexes) to `NodePosition`.
    """

    source: SourceFile
    data: Any
    positions: dict[tuple, NodePosition] = field(default_factory=dict)
    _round_trip: Any = field(default=None, repr=False)

    def nearest_path(self, path: tuple) -> tuple:
        """Return the longest prefix of ``path`` that exists in the document."""
        path = tuple(path)
        while path and path not in self.positions:
            path = path[:-1]
        return path

    def span_of(self, path: tuple, *, part: str = "value") -> Span:
        """Return the span of the node at ``path`` (or of its nearest existing ancestor).

        Args:
            path: instance path, e.g. ``("neural_config", "hidden_layers", 1)``.
            part: ``"value"`` for the node itself, ``"key"`` for its mapping key (falls back to the value).

        Returns:
            A 1-based `Span` in the .af file.
        """
        pos = self.positions.get(self.nearest_path(path))
        if pos is None:
            return self.source.span(0, 0)
        if part == "key" and pos.key_start is not None:
            return self.source.span(pos.key_start, pos.key_end)
        return self.source.span(pos.start, pos.end)

    def text_of(self, path: tuple) -> str:
        """Return the source text of the node at ``path`` exactly as written (quotes included)."""
        pos = self.positions[path]
        return self.source.text[pos.start : pos.end]

    def round_trip(self) -> Any:
        """Return the ruamel round-trip tree (CommentedMap), built on first use (~7 ms).

        Safe because `load_yaml` already refused tags, anchors and aliases.
        """
        if self._round_trip is None:
            # ruamel keeps a CR inside comments of CRLF text; dump_round_trip puts the file's newline back.
            self._round_trip = round_trip_yaml().load(self.source.text.replace("\r\n", "\n"))
        return self._round_trip


def round_trip_yaml() -> Any:
    """Return a ruamel round-trip ``YAML`` configured so that headers written like the reference example survive a dump.

    Returns:
        A ``ruamel.yaml.YAML`` instance.
    """
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def dump_round_trip(tree: Any, *, newline: str = "\n") -> str:
    """Dump a round-trip tree to text with `round_trip_yaml`'s layout and the given line ending.

    Args:
        tree: a CommentedMap (or plain data).
        newline: ``"\\n"`` or ``"\\r\\n"``.

    Returns:
        The YAML text.
    """
    import io

    stream = io.StringIO()
    round_trip_yaml().dump(tree, stream)
    text = stream.getvalue()
    return text.replace("\n", newline) if newline != "\n" else text


def load_yaml(source: SourceFile) -> YamlDocument:
    """Parse a header without constructing anything unsafe.

    Args:
        source: the header text; its offsets must be those of the .af file (the header comes first).

    Returns:
        The document with plain data and node positions.

    Raises:
        ParseError: AF0050 YAML syntax, AF0051 empty or non-mapping header, AF0052 tag, AF0053 anchor,
            AF0054 alias, AF0055 nesting too deep, AF0056 non-string key, AF0057 duplicate key,
            AF0058 more than one document, AF0059 a `%YAML`/`%TAG` directive, AF0060 control or bidi
            character in a name. (The header's size
            cap and its UTF-8 decoding are the reader's: AF0002, AF0001.)
    """
    walker = _Walker(source)
    walker.run()
    if any(d.is_error for d in walker.diagnostics):
        raise ParseError(walker.diagnostics)
    return YamlDocument(source, walker.data, walker.positions)


class _Fatal(Exception):
    """Stops the walk at an error after which the event stream cannot be followed."""


class _Walker:
    """Consumes libyaml events once, building data and positions and collecting diagnostics."""

    def __init__(self, source: SourceFile) -> None:
        from _ruamel_yaml import CParser

        self.source = source
        self.parser = CParser(source.text)
        self.diagnostics: list[Diagnostic] = []
        self.positions: dict[tuple, NodePosition] = {}
        self.data: Any = None

    def run(self) -> None:
        from ruamel.yaml.error import YAMLError

        try:
            self._stream()
        except _Fatal:
            pass
        except YAMLError as exc:
            self.diagnostics.append(self._syntax_error(exc))
        except (ValueError, TypeError, UnicodeError) as exc:  # libyaml bindings on odd input
            self.diagnostics.append(Diagnostic("AF0050", "error", f"the YAML header cannot be parsed: {exc}",
                                               span=self.source.span(0, 0)))

    def _next(self) -> Any:
        return self.parser.get_event()

    def _stream(self) -> None:
        self._next()  # StreamStart
        event = self._next()
        if type(event).__name__ != "DocumentStartEvent":
            self._error("AF0051", "the YAML header is empty", event.start_mark.index, event.end_mark.index,
                        "start the file with `version: \"1.0\"` and `name: ...`; `af init` writes a valid one")
            raise _Fatal
        if event.version is not None or event.tags:
            # %YAML would change how scalars resolve (1.1: `yes` is true); %TAG only serves tags.
            self._error("AF0059", "YAML directives (`%YAML`, `%TAG`) are not allowed in an .af header",
                        event.start_mark.index, event.start_mark.index + 1,
                        "remove the `%...` lines: an .af header is plain YAML 1.2")
        root = self._next()
        if type(root).__name__ != "MappingStartEvent":
            start = root.start_mark.index
            self._value(root, (), None, 0)
            self._error("AF0051", "the YAML header must be a mapping of keys to values", start, root.end_mark.index,
                        "write `key: value` lines, e.g. `name: my-agent`")
            raise _Fatal
        self.data = self._value(root, (), None, 0)
        self._next()  # DocumentEnd
        extra = self._next()
        if type(extra).__name__ == "DocumentStartEvent":
            self._error("AF0058", "the YAML header holds more than one document", extra.start_mark.index,
                        extra.start_mark.index + 3,
                        "remove the `---` line: an .af header is a single YAML document")

    def _value(self, event: Any, path: tuple, key: tuple[int, int] | None, depth: int) -> Any:
        kind = type(event).__name__
        self._refuse_properties(event, kind)
        if kind == "AliasEvent":
            self._record(path, key, event, None)
            return None
        if kind == "ScalarEvent":
            self._record(path, key, event, event.style or "")
            return _resolve(event)
        if depth >= MAX_DEPTH:
            self._error("AF0055", f"the YAML header is nested more than {MAX_DEPTH} levels deep",
                        event.start_mark.index, event.start_mark.index + 1,
                        "an agent header needs only a few levels; flatten the structure")
            raise _Fatal
        if kind == "SequenceStartEvent":
            return self._sequence(event, path, key, depth)
        return self._mapping(event, path, key, depth)

    def _sequence(self, start: Any, path: tuple, key: tuple[int, int] | None, depth: int) -> list:
        items: list = []
        event = self._next()
        while type(event).__name__ != "SequenceEndEvent":
            items.append(self._value(event, (*path, len(items)), None, depth + 1))
            event = self._next()
        self._record(path, key, start, None, end=event.end_mark.index)
        return items

    def _mapping(self, start: Any, path: tuple, key: tuple[int, int] | None, depth: int) -> dict:
        mapping: dict = {}
        event = self._next()
        while type(event).__name__ != "MappingEndEvent":
            name, key_span = self._key(event, path)
            value = self._value(self._next(), (*path, name), key_span, depth + 1)
            if path == () and name == "name" and isinstance(value, str):
                self._check_name(value, self.positions[("name",)])
            if name in mapping:
                self._duplicate(name, path, key_span)
            elif name is not None:
                mapping[name] = value
            event = self._next()
        self._record(path, key, start, None, end=_mapping_end(self.source.text, start, event))
        return mapping

    def _key(self, event: Any, path: tuple) -> tuple[Any, tuple[int, int]]:
        kind = type(event).__name__
        span = (event.start_mark.index, event.end_mark.index)
        if kind == "AliasEvent":
            self._refuse_properties(event, kind)
            return None, span
        if kind != "ScalarEvent":
            self._refuse_properties(event, kind)
            self._error("AF0056", "a mapping key must be a string, not a collection", *span,
                        "write keys as plain names such as `input_size`")
            raise _Fatal  # skipping a collection key would need a second walker; stop here
        self._refuse_properties(event, kind)
        value = _resolve(event)
        if not isinstance(value, str):
            self._error("AF0056", f"mapping key `{event.value}` is {_type_name(value)}, not a string", *span,
                        f"quote it if it is meant as a name: `\"{event.value}\"`")
            return None, span
        bad = _FORBIDDEN_IN_NAMES.search(value)
        if bad:
            self._forbidden_char(value, bad.group(), span)
        return value, span

    def _record(self, path: tuple, key: tuple[int, int] | None, event: Any, style: str | None,
                end: int | None = None) -> None:
        if path in self.positions:
            return  # a duplicate key: keep the first, which is the one in the data
        key_start, key_end = key if key else (None, None)
        stop = end if end is not None else event.end_mark.index
        self.positions[path] = NodePosition(key_start, key_end, event.start_mark.index, stop, style)

    def _refuse_properties(self, event: Any, kind: str) -> None:
        start, end = event.start_mark.index, event.end_mark.index
        if kind == "AliasEvent":
            self._error("AF0054", f"YAML alias `*{event.anchor}` is not allowed in an .af header", start, end,
                        "write the value out in full; anchors and aliases are refused (alias bombs)")
            return
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            self._error("AF0052", f"YAML tag `{shown}` is not allowed in an .af header", start,
                        start + max(len(shown), 1),
                        "remove the tag; values are plain strings, numbers, lists and mappings")
        if getattr(event, "anchor", None) is not None:
            self._error("AF0053", f"YAML anchor `&{event.anchor}` is not allowed in an .af header", start,
                        start + len(event.anchor) + 1,
                        "write the value out in full; anchors and aliases are refused (alias bombs)")

    def _duplicate(self, name: str, path: tuple, key_span: tuple[int, int]) -> None:
        first = self.positions[(*path, name)]
        line, _ = self.source.position(first.key_start or first.start)
        self._error("AF0057", f"duplicate key `{name}`", *key_span,
                    f"the first `{name}` is on line {line}; remove one of them")

    def _check_name(self, value: str, pos: NodePosition) -> None:
        bad = _FORBIDDEN_IN_NAMES.search(value)
        if bad:
            self._forbidden_char(value, bad.group(), (pos.start, pos.end))

    def _forbidden_char(self, value: str, char: str, span: tuple[int, int]) -> None:
        self._error("AF0060", f"name {value!r} contains the invisible or control character U+{ord(char):04X}",
                    *span, "use printable characters only: such characters can make text read differently "
                    "from what it is")

    def _error(self, code: str, message: str, start: int, end: int, hint: str) -> None:
        span = self.source.span(start, end if end > start else None)
        self.diagnostics.append(Diagnostic(code, "error", message, span=span, help=hint))

    def _syntax_error(self, exc: Any) -> Diagnostic:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            offset = mark.index
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
        else:  # ReaderError: a character YAML does not allow
            offset = getattr(exc, "position", 0) or 0
            message = f"invalid YAML: {getattr(exc, 'reason', exc)} (character U+{getattr(exc, 'character', 0):04X})"
        hint = "fix the YAML syntax here; see docs/format.md for the header layout"
        if "invalid Unicode character escape" in message:  # libyaml's words for `\ud800` and `\U00110000`
            hint = ("a `\\u` or `\\U` escape must name a character: halves of a surrogate pair (D800-DFFF) "
                    "and values past 10FFFF are not; write the character itself (the file is UTF-8)")
        return Diagnostic("AF0050", "error", message, span=self.source.span(offset), help=hint)


def _mapping_end(text: str, start: Any, end_event: Any) -> int:
    # A block mapping "ends" where the next one begins (often lines later); trim trailing blanks.
    stop = end_event.end_mark.index
    if getattr(start, "flow_style", False):
        return stop
    return len(text[:stop].rstrip())


def _resolve(event: Any) -> Any:
    value: str = event.value
    if event.style:  # quoted or block scalars are strings
        return value
    if _NULL.fullmatch(value):
        return None
    if _TRUE.fullmatch(value):
        return True
    if _FALSE.fullmatch(value):
        return False
    if _INT10.fullmatch(value):
        # Python refuses int() of over 4300 digits; as a float such a number fails the schema's maximum.
        return int(value) if len(value) <= 4000 else float(value)
    if _INT16.fullmatch(value):
        return int(value[2:], 16)
    if _INT8.fullmatch(value):
        return int(value[2:], 8)
    if _FLOAT.fullmatch(value):
        return float(value)
    inf = _INF.fullmatch(value)
    if inf:
        return float("-inf") if inf.group(1) == "-" else float("inf")
    if _NAN.fullmatch(value):
        return float("nan")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number"}.get(type(value), type(value).__name__)
