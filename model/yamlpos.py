"""YAML loading that remembers where every value came from (file and line), safely.

Validation errors must name the file, the line and the field; pydantic reports a field
path (``loc``), and this module maps such a path back to the line it was written on.

Every YAML file swaplab reads goes through ``load_located``, and any file is answered
quickly with data or a SpecError, never a traceback or a hang:

- only a regular file of at most MAX_BYTES is read (a FIFO or a device could feed
  bytes for ever), and it must be UTF-8;
- the event stream is checked *before* anything is built from it, without recursion:
  at most MAX_DEPTH nested collections, MAX_ALIASES alias uses and MAX_NODES values
  once aliases are expanded (so "billion laughs" and self-referencing anchors are
  refused), one document, mapping keys that are text and appear once;
- the same events are then composed and constructed once, by PyYAML's safe constructor,
  except that floats keep the text they were written as (YamlFloat: ``4.10`` is not
  ``4.1``) and numbers longer than MAX_NUMBER_CHARS are refused.

The lines come from the same scan: an alias's path gets the line of the alias itself, and
paths below it fall back to that line (its anchored block is not walked again).
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingStartEvent,
    ScalarEvent,
)
from yaml.nodes import Node, ScalarNode
from yaml.reader import ReaderError
from yaml.resolver import Resolver

FieldPath = tuple[str | int, ...]

# A campaign or inventory is a page or two; a bigger file is a mistake (or an attack).
MAX_BYTES = 1_048_576
# Far deeper than any swaplab file; keeps PyYAML's recursive composer shallow and the
# data safe for recursive consumers (json, pydantic).
MAX_DEPTH = 32
# Anchors are for sharing a block a few times, not for multiplying data.
MAX_ALIASES = 100
# Values (scalars and collections) once every alias is expanded: bounds all later work.
MAX_NODES = 10_000
# Python's own limit for decimal int conversion; it also bounds YAML 1.1 base-60 numbers
# (1:00:00), whose conversion is quadratic in their length.
MAX_NUMBER_CHARS = 4_300

# Tags a plain mapping key may resolve to and still be text: `<<` (merge) and `=` (value)
# are read by the safe constructor as text or a merge, never as another type.
_TEXT_KEY_TAGS = frozenset({"tag:yaml.org,2002:str", "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})
_TAG_KINDS = {
    "tag:yaml.org,2002:int": "a number",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
}
_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True)
class SpecIssue:
    """One problem in an input file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class SpecError(ValueError):
    """An input file is wrong; carries every issue found (file, line, field, message)."""

    def __init__(self, issues: Sequence[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class YamlFloat(float):
    """A YAML float that keeps its source text: ``version: 4.10`` is not ``4.1``."""

    __slots__ = ("source",)
    source: str

    def __new__(cls, value: float, source: str) -> YamlFloat:
        number = super().__new__(cls, value)
        number.source = source
        return number

    def __getnewargs__(self) -> tuple[float, str]:  # type: ignore[override]
        # float's own gives only the value, and __new__ needs the text too (pickle, copy).
        return (float(self), self.source)


@dataclass
class LocatedYaml:
    """Parsed YAML data plus the line of every mapping key and sequence item."""

    path: Path
    data: Any
    lines: dict[FieldPath, int]

    def line_of(self, loc: Sequence[str | int]) -> int | None:
        """Line of the deepest prefix of ``loc`` that exists in the file."""
        key: FieldPath = tuple(loc)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), None)

    def issue(self, loc: Sequence[str | int], message: str) -> SpecIssue:
        """An issue at field ``loc`` of this file."""
        return SpecIssue(str(self.path), self.line_of(loc), field_name(loc), message)


def field_name(loc: Sequence[str | int]) -> str:
    """``("workloads", 0, "mib")`` -> ``workloads[0].mib``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_located(path: Path) -> LocatedYaml:
    """Parse ``path`` within the limits above; every problem becomes a SpecError with its line."""
    text = _decode(path, _read_regular_file(path))
    scan = _Scan(path)
    try:
        # The scan passes each event on only once it is checked, so nothing is composed
        # from a stream that breaks a limit.
        events = list(scan.checked(yaml.parse(text, Loader=yaml.SafeLoader)))
        data = _construct(events)
    except yaml.YAMLError as err:
        raise SpecError([_yaml_issue(path, text, err)]) from None
    return LocatedYaml(path, data, scan.lines)


def _refusal(path: Path, line: int | None, message: str, field: str = "") -> SpecError:
    return SpecError([SpecIssue(str(path), line, field, message)])


def _read_regular_file(path: Path) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: a terminal
        # must not become ours. Both are no-ops for the regular files we go on to read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise _refusal(path, None, f"cannot read file: {err.strerror}") from None
    try:
        _check_regular(path, os.fstat(fd))
        return _read_capped(path, fd)
    except OSError as err:
        raise _refusal(path, None, f"cannot read file: {err.strerror}") from None
    finally:
        os.close(fd)


def _check_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "an unknown kind of file")
        raise _refusal(path, None, f"not a regular file ({kind}); swaplab reads YAML from regular files only")
    if info.st_size > MAX_BYTES:
        raise _too_big(path)


def _read_capped(path: Path, fd: int) -> bytes:
    # st_size can lie (a file still growing, /proc): read one byte past the limit at most.
    chunks: list[bytes] = []
    left = MAX_BYTES + 1
    while left > 0 and (chunk := os.read(fd, left)):
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise _too_big(path)
    return b"".join(chunks)


def _too_big(path: Path) -> SpecError:
    return _refusal(path, None, f"file is larger than {MAX_BYTES} bytes; a YAML input must be smaller")


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _refusal(path, line, f"not UTF-8 text: byte 0x{raw[err.start]:02x} cannot be decoded") from None


def _yaml_issue(path: Path, text: str, err: yaml.YAMLError) -> SpecIssue:
    if isinstance(err, ReaderError):
        # PyYAML checks the whole text before parsing and reports a character index.
        line = text.count("\n", 0, err.position) + 1
        code = ord(err.character) if isinstance(err.character, str) else err.character
        return SpecIssue(str(path), line, "", f"character 0x{code:02x} is not allowed in a YAML file ({err.reason})")
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        message = err.problem or err.context or "cannot be parsed"
        if err.problem and err.context:
            where = f", line {err.context_mark.line + 1}" if err.context_mark else ""
            message += f" ({err.context}{where})"
        return SpecIssue(str(path), mark.line + 1 if mark else None, "", f"invalid YAML: {message}")
    return SpecIssue(str(path), None, "", f"invalid YAML: {err}")


def _line(event: Event) -> int:
    # PyYAML's parser marks every event it emits; 0 (no line shown) is only a fallback.
    return event.start_mark.line + 1 if event.start_mark is not None else 0


@dataclass
class _Anchor:
    """What an alias to an anchor stands for, as far as the limits care."""

    line: int
    closed: bool = False  # an alias to a collection still open would refer to itself
    size: int = 0  # values in the anchored subtree, its own aliases expanded
    height: int = 0  # collections nested in it, itself included
    key: str | None = None  # its text when it is a text scalar (usable as a mapping key)


@dataclass
class _Frame:
    """A collection whose end has not been seen yet."""

    path: FieldPath
    mapping: bool
    first: int  # values counted before it: its anchor's size is what is counted after
    anchor: str | None
    height: int = 0  # deepest collection nesting among its children, aliases expanded
    index: int = 0  # sequence: index of the next item
    key: str | None = None  # mapping: the key whose value comes next (None: a key comes next)
    keys: dict[str, int] = field(default_factory=dict)  # mapping: key -> line (duplicates)


class _Scan:
    """Checks the event stream against the limits and records the line of each field.

    Works event by event with an explicit stack: no file can drive Python recursion, and an
    alias costs the size recorded for its anchor instead of a walk through it.
    """

    def __init__(self, path: Path) -> None:
        self.lines: dict[FieldPath, int] = {}
        self._path = path
        self._stack: list[_Frame] = []
        self._anchors: dict[str, _Anchor] = {}
        self._nodes = 0
        self._aliases = 0
        self._documents = 0
        self._resolver = Resolver()

    def checked(self, events: Iterable[Event]) -> Iterator[Event]:
        """``events``, each passed on once it is checked (raises SpecError)."""
        for event in events:
            self._check(event)
            yield event

    def _check(self, event: Event) -> None:
        if isinstance(event, DocumentStartEvent):
            self._document(event)
        elif isinstance(event, CollectionStartEvent):
            self._open(event)
        elif isinstance(event, CollectionEndEvent):
            self._close()
        elif isinstance(event, ScalarEvent):
            self._scalar(event)
        elif isinstance(event, AliasEvent):
            self._alias(event)

    def _refuse(self, event: Event, message: str, here: FieldPath | None = None) -> SpecError:
        if here is None:
            here = self._stack[-1].path if self._stack else ()
        return _refusal(self._path, _line(event), message, field_name(here))

    def _document(self, event: DocumentStartEvent) -> None:
        self._documents += 1
        if self._documents > 1:
            raise self._refuse(event, "a second YAML document starts here; a file holds one document")

    def _open(self, event: CollectionStartEvent) -> None:
        mapping = isinstance(event, MappingStartEvent)
        if self._at_key():
            kind = "mapping" if mapping else "list"
            raise self._refuse(event, f"a mapping key must be plain text, not a {kind}")
        self._check_depth(event, 1, "")
        self._count(event, 1)
        here = self._place(event)
        self._define(event, _Anchor(_line(event)))
        self._stack.append(_Frame(here, mapping, self._nodes - 1, event.anchor))

    def _close(self) -> None:
        frame = self._stack.pop()
        height = frame.height + 1
        if self._stack:
            self._stack[-1].height = max(self._stack[-1].height, height)
        if frame.anchor is not None:
            anchor = self._anchors[frame.anchor]
            anchor.closed, anchor.size, anchor.height = True, self._nodes - frame.first, height

    def _scalar(self, event: ScalarEvent) -> None:
        self._count(event, 1)
        text = self._text(event)
        if self._at_key():
            if text is None:
                raise self._refuse(event, _not_text(event.value, self._tag(event)))
            self._key(event, text)
        else:
            self._place(event)
        self._define(event, _Anchor(_line(event), closed=True, size=1, key=text))

    def _alias(self, event: AliasEvent) -> None:
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise self._refuse(event, f"more than {MAX_ALIASES} aliases (*name) in one file")
        anchor = self._anchor_for(event)
        self._check_depth(event, anchor.height, f" (counting what *{event.anchor} stands for)")
        self._count(event, anchor.size)
        if self._at_key():
            if anchor.key is None:
                raise self._refuse(event, f"a mapping key must be plain text; *{event.anchor} is not")
            self._key(event, anchor.key)
        else:
            # The alias's own line: its anchored subtree keeps the lines where it was written.
            self._place(event)
        if self._stack:
            self._stack[-1].height = max(self._stack[-1].height, anchor.height)

    def _anchor_for(self, event: AliasEvent) -> _Anchor:
        name = event.anchor or ""
        anchor = self._anchors.get(name)
        if anchor is None:
            raise self._refuse(event, f"alias *{name} has no anchor &{name} before it")
        if not anchor.closed:
            raise self._refuse(event, f"anchor &{name} refers to itself (its alias is inside it)")
        return anchor

    def _define(self, event: CollectionStartEvent | ScalarEvent, anchor: _Anchor) -> None:
        if event.anchor is None:
            return
        first = self._anchors.get(event.anchor)
        if first is not None:
            raise self._refuse(event, f"anchor &{event.anchor} is defined twice (first at line {first.line})")
        self._anchors[event.anchor] = anchor

    def _check_depth(self, event: Event, height: int, why: str) -> None:
        if len(self._stack) + height > MAX_DEPTH:
            raise self._refuse(event, f"nested more than {MAX_DEPTH} collections deep{why}")

    def _count(self, event: Event, size: int) -> None:
        self._nodes += size
        if self._nodes > MAX_NODES:
            raise self._refuse(event, f"more than {MAX_NODES} values once aliases are expanded")

    def _at_key(self) -> bool:
        return bool(self._stack) and self._stack[-1].mapping and self._stack[-1].key is None

    def _key(self, event: Event, key: str) -> None:
        frame = self._stack[-1]
        here = (*frame.path, key)
        first = frame.keys.get(key)
        if first is not None:
            raise self._refuse(event, f"duplicate key {key!r} (first at line {first})", here)
        frame.keys[key] = self.lines[here] = _line(event)
        frame.key = key

    def _place(self, event: Event) -> FieldPath:
        """Path of the value or item ``event`` starts; records the line of items and the root."""
        if not self._stack:
            self.lines[()] = _line(event)
            return ()
        frame = self._stack[-1]
        if frame.mapping:
            # A mapping value: its path already has its key's line.
            here = (*frame.path, frame.key or "")
            frame.key = None
            return here
        here = (*frame.path, frame.index)
        frame.index += 1
        self.lines[here] = _line(event)
        return here

    def _tag(self, event: ScalarEvent) -> str:
        # As PyYAML's composer does: no tag or "!" means the tag follows from the text.
        if event.tag is None or event.tag == "!":
            return str(self._resolver.resolve(ScalarNode, event.value, event.implicit))  # type: ignore[no-untyped-call]
        return event.tag

    def _text(self, event: ScalarEvent) -> str | None:
        return event.value if self._tag(event) in _TEXT_KEY_TAGS else None


def _not_text(value: str, tag: str) -> str:
    kind = _TAG_KINDS.get(tag, f"tag {tag}")
    return f'mapping key {value!r} is read as {kind}, not as text; quote it ("{value}")'


class _Constructor(SafeConstructor):
    """The safe constructor, with source-keeping floats and bounded numbers."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as err:
            # PyYAML's constructors fail on odd values with whatever Python raises: `2024-13-01`
            # (ValueError), `!!bool maybe` (KeyError), `!!timestamp x` (AttributeError) ...
            # The innermost node that failed gives the line.
            raise ConstructorError(None, None, _unreadable(node, err), node.start_mark) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        _check_number_length(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: ScalarNode) -> YamlFloat:
        _check_number_length(node)
        return YamlFloat(super().construct_yaml_float(node), str(node.value))

    # PyYAML looks constructors up by tag in this table, not by method name.
    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        **SafeConstructor.yaml_constructors,
        "tag:yaml.org,2002:int": construct_yaml_int,
        "tag:yaml.org,2002:float": construct_yaml_float,
    }


def _unreadable(node: Node, err: Exception) -> str:
    what = repr(node.value[:40]) if isinstance(node, ScalarNode) else "this value"
    # A ValueError says what is wrong (`month must be in 1..12`); the others only how PyYAML tripped.
    detail = f": {err}" if isinstance(err, ValueError | OverflowError) else ""
    return f"cannot read {what} as {node.tag.removeprefix('tag:yaml.org,2002:')}{detail}"


def _check_number_length(node: ScalarNode) -> None:
    if len(node.value) > MAX_NUMBER_CHARS:
        message = f"a number of {len(node.value)} characters; at most {MAX_NUMBER_CHARS}"
        raise ConstructorError(None, None, message, node.start_mark)


class _EventLoader(Composer, _Constructor, Resolver):
    """Composes and constructs from events already parsed and checked (parsed once)."""

    def __init__(self, events: Iterable[Event]) -> None:
        Composer.__init__(self)
        _Constructor.__init__(self)
        Resolver.__init__(self)
        self._events = deque(events)

    # The three parser methods PyYAML's composer calls.
    def check_event(self, *choices: type[Event]) -> bool:
        return bool(self._events) and (not choices or isinstance(self._events[0], choices))

    def peek_event(self) -> Event:
        return self._events[0]

    def get_event(self) -> Event:
        return self._events.popleft()


def _construct(events: Iterable[Event]) -> Any:
    loader = _EventLoader(events)
    node = loader.get_single_node()
    return None if node is None else loader.construct_document(node)
