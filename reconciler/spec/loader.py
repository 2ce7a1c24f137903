"""Load the desired state: YAML files → validated, cross-checked ``Resource`` objects.

Fast path (every file not in the cache): one ``yaml.load_all`` pass (libyaml's C parser with a
lean constructor, ``FastLoader``), the compiled fastjsonschema validator of each kind, a text
scan for the line where each document starts, and a canonical-JSON hash per document. No marks
are kept and jsonschema does not run. Only a file that fails anywhere on that path is parsed
again keeping its nodes (with line/column marks) and validated by jsonschema, which yields every
violation; each is located at its node. Cross-file checks (duplicates, references, cycles) run on
the fast data and re-parse only the file involved to locate a problem. With a ``SpecCache`` a
file whose git blob is already cached is neither read nor parsed.

Every problem is collected; ``load_desired_state`` raises one ``SpecError`` carrying them all.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import SourceError, SpecError, SpecProblem
from reconciler.spec import environments
from reconciler.spec.cache import Record, SpecCache
from reconciler.spec.cron import schedule_errors, timezone_error
from reconciler.spec.hostvars import instance_var_maps, placeholders, uses_vars
from reconciler.spec.model import DEFAULT_ENVIRONMENT, DesiredState, Resource, ResourceKey
from reconciler.spec.policy import PolicyError
from reconciler.spec.policy import violations as policy_violations
from reconciler.spec.provider_schemas import provider_schemas
from reconciler.spec.sync_windows import window_problems
from reconciler.spec.tree import SourceTree, source_path_problems
from reconciler.spec.validate import (
    API_VERSION,
    KIND_SCHEMAS,
    Issue,
    Path_,
    fast_errors,
    fast_message_issue,
    format_path,
    schema_issues,
    short_repr,
)

YAML_SUFFIXES = (".yaml", ".yml")
_KIND_LIST = ", ".join(sorted(KIND_SCHEMAS))
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class SourceFile:
    """One YAML file of the desired state, however it is stored (folder, git tree)."""

    path: str  # shown in errors, posix, e.g. "examples/fleet/api.yaml"
    blob_id: str  # git blob sha1 of the content
    read: Callable[[], bytes]
    # Why the file was not read (a symbolic link out of the tree, not a regular file): the
    # loader reports it at file:1:1 and never calls ``read``.
    refused: str | None = None


def git_blob_id(data: bytes) -> str:
    """The id ``git hash-object`` gives ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _reader(data: bytes) -> Callable[[], bytes]:
    def read() -> bytes:
        return data

    return read


def files_from_directory(path: Path) -> list[SourceFile]:
    """Every ``*.yaml``/``*.yml`` file under ``path`` (or ``path`` itself if it is a file),
    recursively, sorted by relative path, skipping hidden files and directories.

    The tree is ``path`` (a file's folder for a file): ``validate`` runs on untrusted trees (pull
    requests in CI), so a symbolic link is followed only to a regular file inside the tree;
    anything else is returned ``refused`` and never read. Symlinked folders are not descended
    (as in a git tree). Contents are read once here, so ``blob_id`` and ``read()`` agree.
    """
    root = Path(path)
    shown_root = PurePosixPath(root.as_posix())
    _refuse_symlinked_root(root)
    if root.is_file():
        found = [(shown_root, root)]
        tree = root.parent.resolve()
    elif root.is_dir():
        tree = root.resolve()
        relative: list[PurePosixPath] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath).relative_to(root)
            for filename in filenames:
                if filename.startswith(".") or not filename.endswith(YAML_SUFFIXES):
                    continue
                relative.append(PurePosixPath((base / filename).as_posix()))
        found = [(shown_root / rel, root / rel) for rel in sorted(relative)]
    else:
        raise SourceError(f"{shown_root}: no such file or directory")
    files = []
    for shown, real in found:
        target, refused = _inside(real, tree, shown_root)
        if target is None:
            files.append(SourceFile(str(shown), "", _reader(b""), refused))
            continue
        data = target.read_bytes()
        files.append(SourceFile(str(shown), git_blob_id(data), _reader(data)))
    return files


def _refuse_symlinked_root(root: Path) -> None:
    """PATH itself, or a folder of a relative PATH, must not be a symbolic link: the tree it
    names would be wherever the link points (an untrusted checkout could point it at $HOME)."""
    parts = root.parts if not root.is_absolute() else (str(root),)
    current = Path()
    for part in parts:
        current = current / part
        if part not in (".", "..") and current.is_symlink():
            raise SourceError(
                f"{current.as_posix()}: is a symbolic link; validate reads a real folder",
                hint="pass the folder it points to, if that folder is trusted")


def _inside(real: Path, tree: Path, shown_root: PurePosixPath) -> tuple[Path | None, str]:
    """``(path to read, "")`` for a regular file in ``tree`` (through symbolic links that stay
    inside), else ``(None, why it is not read)``."""
    target = real
    if real.is_symlink():
        link = os.readlink(real)
        try:
            target = real.resolve()
        except (OSError, RuntimeError):  # a loop
            return None, f"symbolic link to {link!r}: loops, not read"
        if not target.is_relative_to(tree):
            return None, (f"symbolic link to {link!r}, outside {shown_root}: not read (the "
                          "desired state is read from files inside the tree only)")
        if not target.exists():
            return None, f"symbolic link to {link!r}: no such file in {shown_root}"
    if not target.is_file():
        return None, "not a regular file: not read"
    return target, ""


# ---------------------------------------------------------------------------------------------
# Fast path


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


_MARKER_TOKENS = (b"---", b"...")
_MARKER_END = frozenset(b" \t\r\n")
_CONTENT = re.compile(rb"^[ \t]*[^ \t\r\n#]", re.M)
_ODD_LINE_BREAKS = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # NEL, LS, PS: YAML 1.1 breaks


def document_lines(data: bytes, count: int) -> list[int] | None:
    """1-based line where each document's content starts (the line compose would mark), found
    by scanning the text; None when the text has constructs the scan does not model (directives,
    unusual line breaks, byte order marks, UTF-16) or when the scan disagrees with ``count``."""
    if count == 0:
        return []
    if (
        data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf", b"%"))
        or b"\n%" in data
        or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n"))
        or any(odd in data for odd in _ODD_LINE_BREAKS)
    ):
        return None
    lines: list[int] = []
    line_at = _LineCounter(data)
    is_open = False
    content_line: int | None = None
    marker_line = 1

    def content_in(start: int, end: int) -> None:
        nonlocal is_open, content_line, marker_line
        if content_line is not None:
            return
        match = _CONTENT.search(data, start, end)
        if match is None:
            return
        content_line = line_at(match.start())
        if not is_open:
            is_open, marker_line = True, content_line

    def close() -> None:
        nonlocal is_open, content_line
        if is_open:
            lines.append(content_line if content_line is not None else marker_line)
        is_open, content_line = False, None

    position = 0
    for start, token in _markers(data):
        content_in(position, start)
        close()
        end_of_line = data.find(b"\n", start + 3)
        end_of_line = len(data) if end_of_line < 0 else end_of_line
        if token == b"---":
            is_open, marker_line = True, line_at(start)
            rest = data[start + 3 : end_of_line].strip()
            if rest and not rest.startswith(b"#"):
                content_line = marker_line
        position = end_of_line
    content_in(position, len(data))
    close()
    return lines if len(lines) == count else None


def _markers(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, token) of each document marker: ``---`` or ``...`` at the start of a line,
    followed by a blank or the end of the text (bytes.find runs far faster than a ^-regex)."""
    found: list[tuple[int, bytes]] = []
    size = len(data)
    for token in _MARKER_TOKENS:
        needle = b"\n" + token
        starts = [0] if data.startswith(token) else []
        position = data.find(needle)
        while starts or position >= 0:
            if starts:
                start = starts.pop()
            else:
                start = position + 1
                position = data.find(needle, start + 3)
            after = start + 3
            if after >= size or data[after] in _MARKER_END:
                found.append((start, token))
    found.sort()
    return found


class _LineCounter:
    """Line number of increasing byte offsets, counting only the new part each time."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.line = 1

    def __call__(self, offset: int) -> int:
        if offset < self.offset:
            self.offset, self.line = 0, 1
        self.line += self.data.count(b"\n", self.offset, offset)
        self.offset = offset
        return self.line


def _record(index: int, line: int, kind: str, document: dict[str, Any]) -> Record | None:
    """The cacheable record of a schema-valid document; None if it is not plain JSON data.

    json.dumps rejects what JSON cannot hold (dates, binary, sets, NaN, cycles); non-string
    keys are rejected by the schemas (``propertyNames: {type: string}``) before this point.
    """
    metadata = document["metadata"]
    name = metadata["name"]
    environment = metadata.get("environment", DEFAULT_ENVIRONMENT)
    labels = metadata.get("labels", {})
    spec = document["spec"]
    # the same shape and serialisation as Resource.document() / model.spec_hash
    recorded = {
        "kind": kind,
        "metadata": {"name": name, "environment": environment, "labels": labels},
        "spec": spec,
    }
    try:
        text = json.dumps(
            recorded,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            check_circular=False,  # the schemas admit no cycle; a recursion error still ends it
        )
        encoded = text.encode()
    except (TypeError, ValueError, RecursionError):
        return None
    digest = hashlib.sha256(encoded).hexdigest()
    return (index, line, kind, name, environment, labels, spec, digest)


# Characters no value of a document may hold: NUL (no argv, environment or path can carry it:
# the deployment would fail at exec) and the other C0 controls and DEL, which no field needs and
# which rewrite terminals and logs; tab and newline stay allowed (multi-line values). In a
# YAML file they can only come from escapes ("\0", "\x1b", "\u0007"): raw ones are a syntax
# error, and line breaks are normalised to "\n".
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _control_message(char: str) -> str:
    if char == "\0":
        return ("contains a NUL character (\\0), which no command argument, environment "
                "variable or path can hold")
    return (f"contains the control character U+{ord(char):04X}; only tab and newline are "
            "allowed in values")


def _control_issues(document: Any) -> list[Issue]:
    """Every string (value or key) holding a character of ``_CONTROL``, with its path."""
    issues: list[Issue] = []
    stack: list[tuple[Path_, Any]] = [((), document)]
    while stack:
        path, value = stack.pop()
        if type(value) is str:
            found = _CONTROL.search(value)
            if found:
                issues.append(Issue(path, _at(path, _control_message(found.group()))))
        elif type(value) is dict:
            for key, item in value.items():
                if type(key) is str and (found := _CONTROL.search(key)):
                    where = (*path, key)
                    issues.append(Issue(where, _at(where, "name " + _control_message(
                        found.group())), at_key=True))
                stack.append(((*path, key), item))
        elif type(value) is list:
            stack.extend(((*path, index), item) for index, item in enumerate(value))
    issues.sort(key=lambda issue: [str(p) for p in issue.path])
    return issues


def _semantic_issues(kind: str, document: dict[str, Any]) -> list[Issue]:
    """Checks a schema cannot express, on a schema-valid document."""
    issues: list[Issue] = []
    spec = document["spec"]
    if kind == "Target" and spec.get("provider") == "bare_metal" and "root" in spec \
            and not str(spec["root"]).startswith("/"):
        # Relative to whatever the daemon's (or the SSH login's) working directory is: releases
        # would land somewhere else after a restart or on another host.
        issues.append(Issue(("spec", "root"), f"spec.root: {short_repr(spec['root'])} must be "
                                              "an absolute path"))
    source = spec.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str) \
            and ".." in PurePosixPath(source["path"]).parts:
        issues.append(Issue(("spec", "source", "path"), "spec.source.path: must be a folder "
                                                        "inside the config repository (no '..')"))
    if kind == "Schedule":
        spec = document["spec"]
        for path, message in schedule_errors(spec["schedule"], spec.get("timezone")):
            issues.append(Issue(("spec", *path), f"spec.{'.'.join(path)}: {message}"))
        if "timezone" in spec:
            error = timezone_error(spec["timezone"])
            if error:
                issues.append(Issue(("spec", "timezone"), f"spec.timezone: {error}"))
    if "syncWindows" in document["spec"]:
        windows = document["spec"]["syncWindows"]
        issues.extend(Issue(path, message) for path, message in window_problems(windows))
    return issues


# An alias is "*name" after a blank, a flow indicator or a colon; "*/5", "* *" and "'*.txt"
# are not. Scanning with bytes.find visits only the asterisks (a regex costs 7% of a load).
_BEFORE_ALIAS = frozenset(b" \t\r\n[{,:")
_NOT_ALIAS_NAME = frozenset(b" \t\r\n]},*/'\"")


def _may_have_aliases(data: bytes) -> bool:
    position = data.find(b"*")
    while position >= 0:
        after = position + 1
        if (
            (position == 0 or data[position - 1] in _BEFORE_ALIAS)
            and after < len(data)
            and data[after] not in _NOT_ALIAS_NAME
        ):
            return True
        position = data.find(b"*", after)
    return False


# Values one document may expand to through aliases: far above any real document, far below
# what a "billion laughs" file would make the hash serialise.
EXPANSION_LIMIT = 1_000_000


def _expands_beyond(value: Any, limit: int = EXPANSION_LIMIT) -> bool:
    """Whether ``value`` counts more than ``limit`` values once aliases are expanded (a cycle
    counts as infinitely many); stops counting at ``limit``."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        count += 1
        if type(item) is dict:
            count += len(item)
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
        if count > limit:
            return True
    return False


def _load_fast(data: bytes) -> list[Record] | None:
    """Records of every document of a file that is entirely valid; None at the first doubt."""
    try:
        documents = list(yaml.load_all(data, Loader=FastLoader))
    except Exception:
        # anything the loader can raise (syntax, bad timestamps, nesting): the slow path
        # parses again and reports it with its location
        return None
    lines = document_lines(data, len(documents))
    if lines is None:
        return None
    if _may_have_aliases(data) and any(_expands_beyond(d) for d in documents):
        return None
    if b"\\" in data and any(_control_issues(d) for d in documents):
        return None  # control characters only come from escapes: the slow path locates them
    records: list[Record] = []
    for index, (document, line) in enumerate(zip(documents, lines, strict=True)):
        if document is None:
            continue
        if type(document) is not dict:
            return None
        kind = document.get("kind")
        if document.get("apiVersion") != API_VERSION or not isinstance(kind, str):
            return None
        if kind in KIND_SCHEMAS and environments.is_definition(document):
            if environments.definition_issues(kind, document, thorough=False):
                return None
            record = environments.definition_record(index, line, kind, document)
            if record is None:
                return None
            records.append(record)
            continue
        if kind not in KIND_SCHEMAS or fast_errors(kind, document) is not None:
            return None
        if _semantic_issues(kind, document):
            return None
        record = _record(index, line, kind, document)
        if record is None:
            return None
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# Slow path: parse with marks, report every problem with its location


_UNBUILT = object()  # a document whose construction failed


@dataclass
class _Parsed:
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


def _parse_with_marks(path: str, data: bytes) -> _Parsed:
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
                documents.append((node, _UNBUILT))
                problem = _yaml_problem(path, data, exc)
                if not isinstance(exc, yaml.YAMLError):
                    start = node.start_mark
                    problem = SpecProblem(
                        path, start.line + 1, start.column + 1, f"invalid YAML value: {exc}"
                    )
                return _Parsed(documents, problem)
            documents.append((node, value))
    except (yaml.YAMLError, RecursionError) as exc:
        return _Parsed(documents, _yaml_problem(path, data, exc))
    finally:
        loader.dispose()
    return _Parsed(documents, None)


def _key_value(key: Node) -> Any:
    if isinstance(key, ScalarNode) and key.tag == _STR_TAG:
        return key.value
    try:
        return SafeConstructor().construct_document(key)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError):
        return _UNBUILT


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
            if found is not _UNBUILT and type(found) is type(part) and found == part:
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


def _position(root: Node, path: Path_, at_key: bool) -> tuple[int, int]:
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


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {short_repr(value)}"


def _non_json(
    value: Any,
    path: Path_ = (),
    stack: frozenset[int] = frozenset(),
    done: set[int] | None = None,
) -> Iterator[Issue]:
    """Values YAML can express but a JSON document cannot (so no schema can check them).

    Each container is visited once, however many aliases point at it, so an alias bomb costs
    no more than its text; ``stack`` holds the containers being visited, to find cycles."""
    if done is None:
        done = set()
    if isinstance(value, dict | list):
        if id(value) in stack:
            yield Issue(path, _at(path, "refers to itself through a YAML alias"))
            return
        if id(value) in done:
            return
        done.add(id(value))
        stack = stack | {id(value)}
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from _non_json(item, (*path, index), stack, done)
            return
        for key, item in value.items():
            if not isinstance(key, str):
                yield Issue(
                    (*path, key),
                    _at(path, f"key {short_repr(key)} is not a string; quote it"),
                    at_key=True,
                )
                continue
            yield from _non_json(item, (*path, key), stack, done)
        return
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            yield Issue(path, _at(path, "contains an invalid Unicode character (a lone surrogate)"))
        return
    if isinstance(value, float) and not math.isfinite(value):
        yield Issue(path, _at(path, f"{value!r} is not a JSON number; quote it if it is text"))
        return
    if value is None or isinstance(value, bool | int | float):
        return
    if isinstance(value, date):
        what = "a date/time"
    elif isinstance(value, bytes):
        what = "binary data (!!binary)"
    elif isinstance(value, set):
        what = "a set (!!set)"
    elif isinstance(value, tuple):
        what = "ordered pairs (!!omap/!!pairs)"
    else:
        what = type(value).__name__
    yield Issue(path, _at(path, f"{what} is not allowed here; quote the value to make it a string"))


def _at(path: Path_, message: str) -> str:
    where = format_path(tuple(p if isinstance(p, str | int) else str(p) for p in path))
    return f"{where}: {message}" if where else message


# (environment, kind, name) of a document that failed its own checks but still names a resource,
# so references to it do not cascade into more errors.
_Identity = tuple[str, str, str]


def _check_document(
    path: str, index: int, node: Node, document: Any
) -> tuple[Record | None, _Identity | None, list[SpecProblem]]:
    problems: list[SpecProblem] = []

    def add(issue: Issue) -> None:
        line, col = _position(node, issue.path, issue.at_key)
        problems.append(SpecProblem(path, line, col, issue.message))

    if not isinstance(document, dict):
        add(
            Issue(
                (),
                "expected a mapping with apiVersion, kind, metadata and spec, "
                f"got {_describe(document)}",
            )
        )
        return None, None, problems
    try:
        odd = list(_non_json(document))
    except RecursionError:
        odd = [Issue((), "document nested too deeply")]
    for issue in odd:
        add(issue)
    if not odd and not _expands_beyond(document):
        for issue in _control_issues(document):
            add(issue)
    if not odd and _expands_beyond(document):
        add(
            Issue(
                (),
                f"document expands to more than {EXPANSION_LIMIT:,} values through YAML "
                "aliases; write the repeated parts out or anchor smaller pieces",
            )
        )
        return None, None, problems
    api_version, kind = document.get("apiVersion"), document.get("kind")
    known_api = api_version == API_VERSION
    if "apiVersion" not in document:
        add(Issue((), f"missing required property 'apiVersion' (expected {API_VERSION!r})"))
    elif not known_api:
        add(
            Issue(
                ("apiVersion",),
                f"apiVersion: unknown apiVersion {short_repr(api_version)} "
                f"(expected {API_VERSION!r})",
            )
        )
    known_kind = isinstance(kind, str) and kind in KIND_SCHEMAS
    if "kind" not in document:
        add(Issue((), f"missing required property 'kind' (one of {_KIND_LIST})"))
    elif not known_kind:
        add(
            Issue(
                ("kind",), f"kind: unknown kind {short_repr(kind)} (expected one of {_KIND_LIST})"
            )
        )
    if not known_kind:
        return None, None, problems
    assert isinstance(kind, str)
    identity = _identity(kind, document)
    if known_api and not odd and environments.is_definition(document):
        for issue in environments.definition_issues(kind, document):
            add(issue)
        record = None if problems else environments.definition_record(
            index, node.start_mark.line + 1, kind, document)
        return record, None, problems
    if known_api and not odd:
        try:
            issues = schema_issues(kind, document)
        except RecursionError:
            issues = [Issue((), "document nested too deeply")]
        if not issues:
            message = fast_errors(kind, document)
            # the two validators disagree only on corner cases; never accept what either rejects
            issues = [fast_message_issue(message)] if message else _semantic_issues(kind, document)
        for issue in issues:
            add(issue)
    if problems:
        return None, identity, problems
    record = _record(index, node.start_mark.line + 1, kind, document)
    if record is None:
        add(Issue((), "document holds values that have no JSON equivalent"))
        return None, identity, problems
    return record, identity, problems


def _identity(kind: str, document: dict[str, Any]) -> _Identity | None:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    environment = metadata.get("environment", DEFAULT_ENVIRONMENT)
    if not isinstance(environment, str):
        environment = DEFAULT_ENVIRONMENT
    return (environment, kind, metadata["name"])


# ---------------------------------------------------------------------------------------------
# The whole desired state


class _Load:
    """State of one ``load_desired_state`` call."""

    def __init__(self, files: Sequence[SourceFile]) -> None:
        self.files = files
        self.parsed: dict[int, _Parsed] = {}
        self.problems: list[SpecProblem] = []
        # (file index, record) of every valid document, in file order
        self.valid: list[tuple[int, Record]] = []
        self.partial: list[_Identity] = []
        # (environment, kind, name) -> (file index, document index, line) of each resource
        self.where: dict[_Key, tuple[int, int, int]] = {}

    def parse(self, file_index: int, data: bytes | None = None) -> _Parsed:
        parsed = self.parsed.get(file_index)
        if parsed is None:
            source = self.files[file_index]
            parsed = _parse_with_marks(source.path, source.read() if data is None else data)
            self.parsed[file_index] = parsed
        return parsed

    def load_slowly(self, file_index: int, data: bytes) -> list[Record]:
        path = self.files[file_index].path
        parsed = self.parse(file_index, data)
        records: list[Record] = []
        if parsed.problem is not None:
            self.problems.append(parsed.problem)
        for index, (node, value) in enumerate(parsed.documents):
            if value is None or value is _UNBUILT:
                continue
            record, identity, problems = _check_document(path, index, node, value)
            self.problems.extend(problems)
            if record is not None:
                records.append(record)
            elif identity is not None:
                self.partial.append(identity)
        return records

    def problem_at(
        self, file_index: int, index: int, path: Path_, message: str, at_key: bool = False
    ) -> SpecProblem:
        """A cross-file problem, located by parsing that one file with marks."""
        source = self.files[file_index]
        documents = self.parse(file_index).documents
        if index < len(documents):
            line, col = _position(documents[index][0], path, at_key)
        else:  # the file changed under us; still report the problem
            line, col = 1, 1
        return SpecProblem(source.path, line, col, message)


def load_desired_state(
    files: Sequence[SourceFile],
    *,
    commit: str | None = None,
    cache: SpecCache | None = None,
    root: str = "",
    tree: SourceTree | None = None,
) -> DesiredState:
    """Parse, validate and cross-check ``files``; raise ``SpecError`` with every problem found.
    With ``tree`` (the repository the files come from), ``source.path`` folders are checked
    too (``spec/tree.py``)."""
    with _gc_paused():
        return _load_desired_state(files, commit=commit, cache=cache, root=root, tree=tree)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading allocates ~70 objects per document and frees almost none of them; the cyclic
    collector would rescan that growing heap again and again (15-20% of a cold load)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_desired_state(
    files: Sequence[SourceFile], *, commit: str | None, cache: SpecCache | None, root: str,
    tree: SourceTree | None = None,
) -> DesiredState:
    load = _Load(files)
    for file_index, source in enumerate(files):
        if source.refused is not None:
            load.problems.append(SpecProblem(source.path, 1, 1, source.refused))
            continue
        records = cache.get(source.blob_id) if cache is not None else None
        if records is None:
            data = source.read()
            records = _load_fast(data)
            if records is None:
                before = len(load.problems)
                records = load.load_slowly(file_index, data)
                clean = len(load.problems) == before
            else:
                clean = True
            if clean and cache is not None:
                cache.put(source.blob_id, records)
        load.valid.extend((file_index, record) for record in records)
    resolved = environments.resolve(load.valid, [f.blob_id for f in files], cache, _checks(load))
    load.valid, load.partial = resolved.valid, load.partial + resolved.partial
    load.problems.extend(resolved.problems)
    resources = _cross_check(load, tree)
    # The operator policy is checked on every load, cached files included (the cache holds
    # what the repo says, the policy what the operator allows now).
    refused = [load.problem_at(*load.where[key][:2], path, message)
               for key, path, message in policy_violations(resources.values())]
    if load.problems:
        raise SpecError(load.problems + refused)
    if refused:
        raise PolicyError(refused)
    return DesiredState(resources=resources, commit=commit, root=root)


def _resolved_issues(kind: str, document: dict[str, Any]) -> list[Issue]:
    """The checks of a written document, for one resolved from a shared definition."""
    message = fast_errors(kind, document)
    if message is not None:
        return schema_issues(kind, document) or [fast_message_issue(message)]
    return _semantic_issues(kind, document)


def _checks(load: _Load) -> environments.Checks:
    return environments.Checks(_resolved_issues, _record, load.problem_at)


# Inside the cross-file checks identities are plain (environment, kind, name) tuples: hashing
# them is several times cheaper than hashing ResourceKey, and 10,000 resources hash a lot.
_Key = tuple[str, str, str]


# ResourceKey from a plain tuple in C (ResourceKey(...) runs a Python-level __new__).
_new_key = tuple.__new__


def _ref(key: _Key) -> str:
    return f"{key[1]}/{key[2]}"


def _cross_check(load: _Load, tree: SourceTree | None = None) -> dict[ResourceKey, Resource]:
    files = load.files
    resources: dict[_Key, Resource] = {}
    where = load.where  # file index, document index, line
    kinds_by_name: dict[tuple[str, str], set[str]] = {}
    for file_index, (index, line, kind, name, environment, labels, spec, digest) in load.valid:
        key = (environment, kind, name)
        first = where.get(key)
        if first is not None:
            message = (
                f"metadata.name: duplicate {kind} {name!r} in environment {environment!r} "
                f"(first defined at {files[first[0]].path}:{first[2]})"
            )
            load.problems.append(load.problem_at(file_index, index, ("metadata", "name"), message))
            continue
        resources[key] = Resource(
            key=_new_key(ResourceKey, key),
            labels=labels,
            spec=spec,
            file=files[file_index].path,
            line=line,
            hash=digest,
        )
        where[key] = (file_index, index, line)
        kinds = kinds_by_name.get((environment, name))
        if kinds is None:
            kinds_by_name[(environment, name)] = {kind}
        else:
            kinds.add(kind)
    known: set[_Key] = set(resources)
    for identity in load.partial:
        known.add(identity)
        kinds_by_name.setdefault((identity[0], identity[2]), set()).add(identity[1])

    # resolved dependsOn: resource -> [(index in dependsOn, key)]
    edges: dict[_Key, list[tuple[int, _Key]]] = {}
    for key, resource in resources.items():
        spec = resource.spec
        target = spec.get("target")
        if (
            key[1] != "Target"
            and isinstance(target, str)
            and (key[0], "Target", target) not in known
        ):
            file_index, index, _ = where[key]
            message = _target_problem(key, target, known, kinds_by_name)
            load.problems.append(load.problem_at(file_index, index, ("spec", "target"), message))
        elif key[1] != "Target" and isinstance(target, str) and uses_vars(spec):
            target_resource = resources.get((key[0], "Target", target))
            if target_resource is not None:
                file_index, index, _ = where[key]
                for location, undefined in _placeholder_problems(spec, target_resource):
                    load.problems.append(load.problem_at(file_index, index, location, undefined))
        depends_on = spec.get("dependsOn")
        if not depends_on:
            continue
        resolved: list[tuple[int, _Key]] = []
        for position, ref in enumerate(depends_on):
            dependency, problem = _resolve(key[0], ref, known, kinds_by_name)
            if problem:
                file_index, index, _ = where[key]
                location = ("spec", "dependsOn", position)
                message = f"{format_path(location)}: {problem}"
                load.problems.append(load.problem_at(file_index, index, location, message))
            elif dependency is not None and dependency not in (d for _, d in resolved):
                resolved.append((position, dependency))
        resource.depends_on = [ResourceKey(*dependency) for _, dependency in resolved]
        edges[key] = resolved

    if tree is not None:
        checked: dict[str, list[str]] = {}  # one look per folder, however many resources
        for key, resource in resources.items():
            source = resource.spec.get("source")
            if not isinstance(source, dict) or not isinstance(source.get("path"), str):
                continue
            folder = source["path"]
            if folder not in checked:
                checked[folder] = source_path_problems(tree, folder)
            file_index, index, _ = where[key]
            for problem in checked[folder]:
                load.problems.append(load.problem_at(
                    file_index, index, ("spec", "source", "path"), f"spec.source.path: {problem}"))

    for cycle in _cycles(edges, where):
        start, following = cycle[0], cycle[1]
        position = next(p for p, d in edges[start] if d == following)
        file_index, index, _ = where[start]
        location = ("spec", "dependsOn", position)
        names = [_ref(k) for k in cycle]
        if len(names) > 9:  # keep a long cycle readable: its ends show where to cut it
            names = [*names[:4], f"... ({len(names) - 8} more)", *names[-4:]]
        message = f"{format_path(location)}: dependsOn cycle: " + " -> ".join(names)
        load.problems.append(load.problem_at(file_index, index, location, message))
    return {resource.key: resource for resource in resources.values()}


def _placeholder_problems(
    spec: dict[str, Any], target: Resource
) -> Iterator[tuple[Path_, str]]:
    """``{vars.NAME}`` placeholders that some instance of the Target does not define."""
    provider = str(target.spec.get("provider"))
    schemas = provider_schemas().get(provider)
    declared = schemas.instance_vars if schemas is not None else ""
    maps = instance_var_maps(target.spec, declared) if declared else None
    for location, name in placeholders(spec):
        where = format_path(location)
        if maps is None:
            yield location, (
                f"{where}: undefined placeholder {{vars.{name}}}: Target {target.name!r} gives "
                f"its instances no values (bare_metal: hosts[].vars)"
            )
            continue
        missing = [host for host, values in maps if name not in values]
        if missing:
            hosts = ", ".join(repr(h) for h in missing)
            yield location, (
                f"{where}: undefined placeholder {{vars.{name}}}: host {hosts} of Target "
                f"{target.name!r} defines no vars.{name}"
            )


def _target_problem(
    key: _Key, target: str, known: set[_Key], kinds_by_name: dict[tuple[str, str], set[str]]
) -> str:
    environment = key[0]
    others = sorted(kinds_by_name.get((environment, target), set()))
    if others:
        return f"spec.target: {target!r} is a {' and a '.join(others)}, not a Target"
    message = f"spec.target: no Target {target!r} in environment {environment!r}"
    elsewhere = sorted(k[0] for k in known if k[1] == "Target" and k[2] == target)
    if elsewhere:
        message += (
            f" (there is one in environment {elsewhere[0]!r}; references stay in their environment)"
        )
    return message


def _resolve(
    environment: str,
    ref: str,
    known: set[_Key],
    kinds_by_name: dict[tuple[str, str], set[str]],
) -> tuple[_Key | None, str | None]:
    if "/" in ref:
        kind, _, name = ref.partition("/")
        key = (environment, kind, name)
        if key in known:
            return key, None
        others = sorted(kinds_by_name.get((environment, name), set()))
        message = f"no {kind} {name!r} in environment {environment!r}"
        if others:
            message += " (there is " + ", ".join(f"{k}/{name}" for k in others) + ")"
        return None, message
    kinds = sorted(kinds_by_name.get((environment, ref), set()))
    if not kinds:
        return None, f"no resource named {ref!r} in environment {environment!r}"
    if len(kinds) > 1:
        choices = ", ".join(f"{k}/{ref}" for k in kinds)
        return None, (
            f"{ref!r} is ambiguous in environment {environment!r} ({choices}); write Kind/name"
        )
    return (environment, kinds[0], ref), None


def _cycles(
    edges: dict[_Key, list[tuple[int, _Key]]],
    where: dict[_Key, tuple[int, int, int]],
) -> list[list[_Key]]:
    """One cycle per strongly connected component that has one, starting (and ending) at the
    member written first; Tarjan's algorithm, iterative so long chains do not hit the
    recursion limit. Only resources with dependencies are nodes: nothing else can be on a cycle.
    """
    graph = {key: [d for _, d in deps if d in edges] for key, deps in edges.items()}
    order: dict[_Key, int] = {}
    low: dict[_Key, int] = {}
    stack: list[_Key] = []
    on_stack: set[_Key] = set()
    components: list[list[_Key]] = []
    for start in graph:
        if start in order:
            continue
        order[start] = low[start] = len(order)
        stack.append(start)
        on_stack.add(start)
        work: list[tuple[_Key, Iterator[_Key]]] = [(start, iter(graph[start]))]
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in order:
                    order[successor] = low[successor] = len(order)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(graph[successor])))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], order[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == order[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    cycles = []
    for component in components:
        members = set(component)
        first = min(component, key=lambda k: where[k])
        if len(component) == 1 and first not in graph[first]:
            continue
        # shortest way back to the first member (breadth-first inside the component)
        parents: dict[_Key, _Key] = {}
        queue = deque([first])
        closing: _Key | None = None
        while queue and closing is None:
            current = queue.popleft()
            for successor in graph[current]:
                if successor == first:
                    closing = current
                    break
                if successor in members and successor not in parents:
                    parents[successor] = current
                    queue.append(successor)
        assert closing is not None
        path = [closing]
        while path[-1] != first:
            path.append(parents[path[-1]])
        path.reverse()
        cycles.append([*path, first])
    return cycles
