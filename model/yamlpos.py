"""YAML loading that remembers where every value came from (file and line).

Validation errors must name the file, the line and the field; pydantic reports a field
path (``loc``), and this module maps such a path back to the line it was written on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FieldPath = tuple[str | int, ...]


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
    """Parse ``path``; syntax errors become a SpecError with the line YAML reports."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError([SpecIssue(str(path), None, "", f"cannot read file: {err.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else None
        raise SpecError([SpecIssue(str(path), line, "", f"invalid YAML: {err.problem}")]) from None
    lines: dict[FieldPath, int] = {}
    if node is not None:
        _collect_lines(node, (), lines)
    return LocatedYaml(path, data, lines)


def _collect_lines(node: yaml.Node, here: FieldPath, lines: dict[FieldPath, int]) -> None:
    lines.setdefault(here, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            child = (*here, key)
            lines[child] = key_node.start_mark.line + 1
            _collect_lines(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*here, index), lines)
