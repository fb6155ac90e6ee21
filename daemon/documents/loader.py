"""YAML text to plain Python values, recording the line of every field path.

PyYAML's SafeLoader follows YAML 1.1, where ``on``, ``yes`` and ``off`` are booleans, ``1:30`` is a
number in base 60 and ``010`` is octal. Documents here follow the YAML 1.2 core schema instead: only
``true``/``false`` (in three spellings) are booleans, numbers are decimal, ``null``/``~``/empty are
null, everything else is a string. Values are built from the composed node tree rather than by
PyYAML's constructor, so that each path's line can be kept and duplicate keys rejected.
"""

from __future__ import annotations

import math
import re

import msgspec
import yaml

from daemon.documents.paths import child
from daemon.documents.problems import Problem

# Aliases can make a small text expand to a huge tree; past this many nodes a document is refused.
MAX_NODES = 100_000

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"


class _Core12Loader(yaml.SafeLoader):
    """SafeLoader whose implicit scalar types are those of the YAML 1.2 core schema, decimal only."""

    yaml_implicit_resolvers: dict = {}  # noqa: RUF012 - PyYAML's own class-level registry


_Core12Loader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Core12Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Core12Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Core12Loader.add_implicit_resolver(
    _FLOAT,
    # Integers match this too; the int resolver, added first, takes them.
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


class LoadedDocument(msgspec.Struct, frozen=True):
    """One YAML document: its value, the line of each field path (``""`` = the document) and its line."""

    value: object
    lines: dict[str, int]
    line: int


class _TooLarge(Exception):
    pass


class _Builder:
    """Turns one composed node tree into Python values, noting lines and problems by path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.nodes = 0
        self.open: set[int] = set()  # ids of the collection nodes being built: an alias to one recurses

    def build(self, node: yaml.Node, path: str, line: int) -> object:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooLarge
        self.lines[path] = line
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, line)
        if id(node) in self.open:
            self._problem(path, line, "an alias refers to a node that contains it")
            return None
        self.open.add(id(node))
        try:
            return self._collection(node, path, line)
        finally:
            self.open.discard(id(node))

    def _collection(self, node: yaml.Node, path: str, line: int) -> object:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if node.tag != _SEQ:
            self._problem(path, line, f"unsupported tag {node.tag}")
        return [
            self.build(item, child(path, index), item.start_mark.line + 1)
            for index, item in enumerate(node.value)
        ]

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, object]:
        if node.tag != _MAP:
            self._problem(path, node.start_mark.line + 1, f"unsupported tag {node.tag}")
        result: dict[str, object] = {}
        first_lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            key = self._scalar(key_node, path, key_line) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = "" if key is None else f" {key!r}"
                self._problem(path, key_line, f"key{shown} must be a string (quote it)")
                continue
            key_path = child(path, key)
            if key in first_lines:
                self._problem(key_path, key_line, f"duplicate key '{key}' (first at line {first_lines[key]})")
                continue
            first_lines[key] = key_line
            # A value's line is its key's line: that is where a reader looks for `command:` and the like.
            result[key] = self.build(value_node, key_path, key_line)
        return result

    def _scalar(self, node: yaml.ScalarNode, path: str, line: int) -> object:
        value = node.value
        if node.tag == _STR:
            return value
        if node.tag == _NULL:
            return None
        if node.tag == _BOOL and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if node.tag in (_INT, _FLOAT) and (number := _number(value, node.tag)) is not None:
            return number
        if node.tag in (_BOOL, _INT, _FLOAT):
            self._problem(path, line, f"{value!r} is not a usable {node.tag.rsplit(':', 1)[-1]}")
        else:
            self._problem(path, line, f"unsupported tag {node.tag}")
        return value

    def _problem(self, path: str, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, path, message))


def _number(text: str, tag: str) -> int | float | None:
    """The finite decimal number ``text`` (with an explicit tag, any text can get here), else None."""
    try:
        number = int(text, 10) if tag == _INT else float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def load_yaml(file: str, text: str) -> tuple[list[LoadedDocument], list[Problem]]:
    """Every non-empty document of ``text``, and the problems found while reading them.

    A syntax error (or nesting too deep to read) ends the file: the documents before it are
    returned, the error is a problem.
    """
    documents: list[LoadedDocument] = []
    problems: list[Problem] = []
    try:
        for node in yaml.compose_all(text, Loader=_Core12Loader):
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL):
                continue
            line = node.start_mark.line + 1
            builder = _Builder(file)
            try:
                value = builder.build(node, "", line)
            except _TooLarge:
                problems.append(Problem(file, line, "", f"document expands to more than {MAX_NODES} nodes"))
                continue
            problems.extend(builder.problems)
            documents.append(LoadedDocument(value, builder.lines, line))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            reason = f"{reason} ({exc.context} at line {exc.context_mark.line + 1})"
        problems.append(Problem(file, mark.line + 1 if mark else None, "", f"YAML syntax error: {reason}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, None, "", f"YAML syntax error: {exc}"))
    except RecursionError:
        # PyYAML's composer (and the builder) recurse once per level of nesting.
        problems.append(Problem(file, None, "", "YAML nests too deeply"))
    return documents, problems
