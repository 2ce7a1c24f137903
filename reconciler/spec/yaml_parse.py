"""YAML text → documents. ``StrictLoader`` (libyaml, refusing duplicate keys) and ``FastLoader``
(the same values, built without PyYAML's generic constructor) serve both paths;
``parse_with_marks`` keeps each document's nodes with their line/column marks, and
``node_position`` finds where a path of a document is written (through merge keys), so a
problem is reported at ``file:line:col``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import SpecProblem
from reconciler.spec.validate import Path_, short_repr

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


class StrictLoader(yaml.CSafeLoader):
    """The C safe loader, refusing duplicate keys in a mapping (PyYAML silently keeps the last
    one, so a second ``env:`` block would quietly replace the first). The check costs a length
    comparison per mapping; keys are compared only when the lengths differ."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        pairs = node.value  # flatten_mapping leaves only this mapping's own (non-merge) pairs here
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)  # type: ignore[arg-type]
        if len(mapping) != len(pairs):  # merged keys or duplicates
            seen: set[Any] = set()
            for key_node, _ in pairs:
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {short_repr(key)}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return mapping


_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Unusual(Exception):
    """A document needs PyYAML's general constructor (merge keys, aliases to an unfinished
    node, duplicate or unhashable keys, other tags)."""


class FastLoader(StrictLoader):
    """``StrictLoader`` with a lean constructor for plain documents.

    libyaml parses in C, but PyYAML builds the Python values in Python, one generic
    ``construct_object`` call per node; that is half the time of ``yaml.load_all``. Desired-state
    documents are maps, lists, strings, numbers, booleans and nulls, which this builds directly
    with the very same values (and shared objects for aliases). Anything else makes it hand the
    document to PyYAML's constructor, which then builds it, or raises, exactly as usual.
    """

    def construct_document(self, node: Node) -> Any:
        try:
            return self._build(node, {})
        except _Unusual:
            return super().construct_document(node)

    def _build(self, node: Node, built: dict[int, Any]) -> Any:
        tag = node.tag
        kind = type(node)
        if kind is ScalarNode:
            if tag == _STR_TAG:
                return node.value
            if tag == _NULL_TAG:
                return None
            if tag == _INT_TAG:
                return self.construct_yaml_int(node)  # type: ignore[arg-type]
            if tag == _BOOL_TAG:
                return self.construct_yaml_bool(node)  # type: ignore[arg-type]
            if tag == _FLOAT_TAG:
                return self.construct_yaml_float(node)  # type: ignore[arg-type]
            raise _Unusual
        ident = id(node)
        if ident in built:  # an alias
            value = built[ident]
            if value is None:  # ...to a node still being built: a recursive structure
                raise _Unusual
            return value
        build = self._build
        if kind is MappingNode and tag == _MAP_TAG:
            built[ident] = None
            mapping: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _STR_TAG and type(key_node) is ScalarNode:
                    key = key_node.value
                else:
                    key = build(key_node, built)
                    if type(key) is dict or type(key) is list:
                        raise _Unusual
                if key in mapping:
                    raise _Unusual
                mapping[key] = build(value_node, built)
            built[ident] = mapping
            return mapping
        if kind is SequenceNode and tag == _SEQ_TAG:
            built[ident] = None
            sequence = [build(item, built) for item in node.value]
            built[ident] = sequence
            return sequence
        raise _Unusual


UNBUILT = object()  # a document whose construction failed


@dataclass
class Parsed:
    """A file parsed with marks: (node, value) per document, and the parse error if any."""

    documents: list[tuple[Node, Any]]
    problem: SpecProblem | None


def _yaml_problem(path: str, data: bytes, exc: BaseException) -> SpecProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    elif isinstance(exc, yaml.reader.ReaderError):
        before = data[: exc.position]
        line = before.count(b"\n") + 1
        col = exc.position - (before.rfind(b"\n") + 1) + 1
    else:
        line, col = 1, 1
    if isinstance(exc, yaml.reader.ReaderError):
        encoding = exc.encoding
        if encoding in {"?", None}:  # libyaml does not say; its byte order mark does
            encoding = "UTF-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "UTF-8"
        message = f"invalid YAML: the file is not valid {encoding} ({exc.reason})"
    elif isinstance(exc, yaml.MarkedYAMLError):
        message = f"invalid YAML: {exc.problem}"
        if exc.context:
            message += f" ({exc.context})"
    elif isinstance(exc, RecursionError):
        message = "invalid YAML: nested too deeply"
    else:
        message = f"invalid YAML: {exc}"
    return SpecProblem(path, line, col, message)


def parse_with_marks(path: str, data: bytes) -> Parsed:
    loader = FastLoader(data)
    documents: list[tuple[Node, Any]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            try:
                value = loader.construct_document(node)
            except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
                # e.g. an impossible date (2024-13-45): the constructor's error has no mark
                documents.append((node, UNBUILT))
                problem = _yaml_problem(path, data, exc)
                if not isinstance(exc, yaml.YAMLError):
                    start = node.start_mark
                    problem = SpecProblem(
                        path, start.line + 1, start.column + 1, f"invalid YAML value: {exc}"
                    )
                return Parsed(documents, problem)
            documents.append((node, value))
    except (yaml.YAMLError, RecursionError) as exc:
        return Parsed(documents, _yaml_problem(path, data, exc))
    finally:
        loader.dispose()
    return Parsed(documents, None)


def _key_value(key: Node) -> Any:
    if isinstance(key, ScalarNode) and key.tag == _STR_TAG:
        return key.value
    try:
        return SafeConstructor().construct_document(key)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        return UNBUILT


def _child(
    node: Node, part: str | int, seen: frozenset[int] = frozenset()
) -> tuple[Node | None, Node] | None:
    """(key node, value node) of ``part`` under ``node``, following merge keys (``<<``)."""
    if isinstance(node, MappingNode) and id(node) not in seen:
        merges: list[Node] = []
        for key, value in reversed(node.value):  # the last duplicate key wins, as in PyYAML
            if key.tag == _MERGE_TAG:
                merges.append(value)
                continue
            found = _key_value(key)
            if found is not UNBUILT and type(found) is type(part) and found == part:
                return key, value
        for merged in reversed(merges):
            sources = merged.value if isinstance(merged, SequenceNode) else [merged]
            for source in sources:
                hit = _child(source, part, seen | {id(node)})
                if hit is not None:
                    return hit
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def node_position(root: Node, path: Path_, at_key: bool) -> tuple[int, int]:
    """1-based (line, col) of the node at ``path`` (or of its key), else of the deepest node
    on the way there."""
    node: Node = root
    key: Node | None = None
    reached = True
    for part in path:
        hit = _child(node, part)
        if hit is None:
            reached = False
            break
        key, node = hit
    target = key if (at_key and reached and key is not None) else node
    return target.start_mark.line + 1, target.start_mark.column + 1
