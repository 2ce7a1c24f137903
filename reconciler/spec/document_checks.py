"""Checks of one document on its own: JSON-only values, control characters, alias expansion,
apiVersion and kind, the schemas (both validators) and what a schema cannot express
(``semantic_issues``); ``check_document`` locates every problem at its node, and
``document_record`` makes the cacheable record (canonical JSON hash) of a valid document.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from datetime import date
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from reconciler.errors import SpecProblem
from reconciler.spec import environments
from reconciler.spec.cache import Record
from reconciler.spec.cron import schedule_errors, timezone_error
from reconciler.spec.model import DEFAULT_ENVIRONMENT
from reconciler.spec.sync_windows import window_problems
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

if TYPE_CHECKING:
    # ``yaml_parse`` (PyYAML) is imported where a document is located, on the slow path
    from yaml.nodes import Node

_KIND_LIST = ", ".join(sorted(KIND_SCHEMAS))


def document_record(index: int, line: int, kind: str, document: dict[str, Any]) -> Record | None:
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


def control_issues(document: Any) -> list[Issue]:
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


def semantic_issues(kind: str, document: dict[str, Any]) -> list[Issue]:
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




# what a "billion laughs" file would make the hash serialise.
EXPANSION_LIMIT = 1_000_000


def expands_beyond(value: Any, limit: int = EXPANSION_LIMIT) -> bool:
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
Identity = tuple[str, str, str]


def check_document(
    path: str, index: int, node: Node, document: Any
) -> tuple[Record | None, Identity | None, list[SpecProblem]]:
    from reconciler.spec.yaml_parse import node_position

    problems: list[SpecProblem] = []

    def add(issue: Issue) -> None:
        line, col = node_position(node, issue.path, issue.at_key)
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
    if not odd and not expands_beyond(document):
        for issue in control_issues(document):
            add(issue)
    if not odd and expands_beyond(document):
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
            issues = [fast_message_issue(message)] if message else semantic_issues(kind, document)
        for issue in issues:
            add(issue)
    if problems:
        return None, identity, problems
    record = document_record(index, node.start_mark.line + 1, kind, document)
    if record is None:
        add(Issue((), "document holds values that have no JSON equivalent"))
        return None, identity, problems
    return record, identity, problems


def _identity(kind: str, document: dict[str, Any]) -> Identity | None:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    environment = metadata.get("environment", DEFAULT_ENVIRONMENT)
    if not isinstance(environment, str):
        environment = DEFAULT_ENVIRONMENT
    return (environment, kind, metadata["name"])
