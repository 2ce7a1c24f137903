"""``${NAME}`` substitution in a shared definition (``spec/environments.py`` says where).

A string that is exactly ``${NAME}`` becomes the value itself, with its type (a number, a list
of hosts, a map of env vars); a ``${NAME}`` inside a longer string becomes the value's text
(strings, numbers and booleans only). ``$${`` writes a literal ``${`` (a shell command that
needs ``${HOME}`` writes ``$${HOME}``). Keys are never substituted: a document's shape is fixed
by its definition, only values vary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
NAME_RE = re.compile(NAME)
# $${...} (escape) or ${...}; what is inside the braces is checked separately so that a
# malformed reference (``${}``, ``${a b}``) is reported rather than silently kept.
_TOKEN = re.compile(r"\$(\$?)\{([^}]*)\}")
_WHOLE = re.compile(r"\$\{(" + NAME + r")\}")

Path_ = tuple[str | int, ...]


@dataclass
class Use:
    """One ``${NAME}`` written at ``path`` (of the document being substituted)."""

    path: Path_
    name: str
    whole: bool  # the whole string: the value keeps its type


@dataclass
class Failure:
    """Why a use could not be substituted (``kind``: undefined, malformed, not-scalar,
    in-key)."""

    path: Path_
    name: str
    kind: str


@dataclass
class Result:
    value: Any
    uses: list[Use] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


UNDEFINED = "undefined"
MALFORMED = "malformed"
NOT_SCALAR = "not-scalar"
IN_KEY = "in-key"


def has_reference(text: str) -> bool:
    return "${" in text


def copy_value(value: Any) -> Any:
    """An independent copy of a JSON value (resources of two environments never share a list)."""
    kind = type(value)
    if kind is dict:
        return {k: copy_value(v) for k, v in value.items()}
    if kind is list:
        return [copy_value(v) for v in value]
    return value


def as_text(value: Any) -> str | None:
    """How a value reads inside a longer string; None for a list, a map or null."""
    if type(value) is str:
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) in (int, float):
        return json.dumps(value)
    return None


def substitute(value: Any, values: Mapping[str, Any], path: Path_ = ()) -> Result:
    """``value`` with every ``${NAME}`` replaced from ``values``; unknown or unusable
    references are collected in ``failures`` (and left as written)."""
    result = Result(None)
    result.value = _walk(value, values, path, result)
    return result


def _walk(value: Any, values: Mapping[str, Any], path: Path_, result: Result) -> Any:
    kind = type(value)
    if kind is str:
        if "${" not in value:
            return value
        return _string(value, values, path, result)
    if kind is dict:
        out = {}
        for k, v in value.items():
            if "${" in k:  # keys are not substituted: reported (one loop, no second walk)
                result.failures.append(Failure((*path, k), k, IN_KEY))
            out[k] = _walk(v, values, (*path, k), result)
        return out
    if kind is list:
        return [_walk(v, values, (*path, i), result) for i, v in enumerate(value)]
    return value


def _string(text: str, values: Mapping[str, Any], path: Path_, result: Result) -> Any:
    whole = _WHOLE.fullmatch(text)
    if whole is not None:
        name = whole.group(1)
        result.uses.append(Use(path, name, True))
        if name not in values:
            result.failures.append(Failure(path, name, UNDEFINED))
            return text
        return copy_value(values[name])

    def replace(match: re.Match[str]) -> str:
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "${" + name + "}"
        if not NAME_RE.fullmatch(name):
            result.failures.append(Failure(path, name, MALFORMED))
            return match.group(0)
        result.uses.append(Use(path, name, False))
        if name not in values:
            result.failures.append(Failure(path, name, UNDEFINED))
            return match.group(0)
        text_value = as_text(values[name])
        if text_value is None:
            result.failures.append(Failure(path, name, NOT_SCALAR))
            return match.group(0)
        return text_value

    return _TOKEN.sub(replace, text)


# -- fast path: substitution on the JSON text of a document -----------------------------------
# A walk in Python over every node of 10,000 documents costs a third of parsing them; the
# same substitution on each document's JSON text runs in C (dumps, one regex, loads). Anything
# unusual (an undefined or unusable value, a reference in a key, a malformed reference) makes
# it give up, and the walk above then says exactly what and where.
_TEXT_TOKEN = re.compile(r'"\$\{(' + NAME + r')\}"(:?)|\$(\$?)\{([^}"\\]*)\}')


def canonical(value: Any) -> str:
    """The canonical JSON of ``value`` (``model.canonical_json``: sorted keys, no spaces),
    refusing what JSON cannot hold. Substituting canonical values into a canonical text keeps
    it canonical: keys are never substituted, so their order does not change."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


class Prepared:
    """One environment's values, encoded once for ``fast_substitute``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        # whole string "${NAME}" -> the value's JSON; inside a string -> its escaped text
        self.whole = {name: canonical(value) for name, value in values.items()}
        self.part: dict[str, str] = {}
        for name, value in values.items():
            text = as_text(value)
            if text is not None:
                self.part[name] = json.dumps(text, ensure_ascii=False)[1:-1]


class _GiveUp(Exception):
    pass


def _in_key(text: str, position: int) -> bool:
    """Whether ``position`` (inside a JSON string of ``text``) is inside a mapping key: the
    string's closing quote is followed by ':'."""
    end = text.find('"', position)
    while end > 0:
        backslashes = 0
        while text[end - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return text.startswith(":", end + 1)
        end = text.find('"', end + 1)
    return False


def fast_substitute(value: Any, prepared: Prepared) -> Any:
    """``substitute(value, values).value`` when nothing fails, else None (then call
    ``substitute`` for the failures). ``value`` is plain JSON data."""
    return fast_substitute_text(
        json.dumps(value, ensure_ascii=False, allow_nan=False, check_circular=False), prepared)


def fast_substitute_text(text: str, prepared: Prepared) -> Any:
    """``fast_substitute`` of the value whose JSON text is ``text``."""
    substituted = substitute_text(text, prepared)
    return None if substituted is None else json.loads(substituted)


def substitute_text(text: str, prepared: Prepared) -> str | None:
    """The JSON text ``text`` with every reference substituted (canonical if ``text`` is), or
    None when anything fails."""
    if "${" not in text:
        return text
    whole, part = prepared.whole, prepared.part

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is not None:
            if match.group(2) or name not in whole:  # a key, or undefined
                raise _GiveUp
            return whole[name]
        if _in_key(text, match.end()):
            raise _GiveUp
        escaped, inner = match.group(3), match.group(4)
        if escaped:
            return "${" + inner + "}"
        found = part.get(inner)
        if found is None:  # undefined, a list or map, or malformed
            raise _GiveUp
        return found

    try:
        return _TEXT_TOKEN.sub(replace, text)
    except _GiveUp:
        return None


def references(value: Any, path: Path_ = ()) -> list[Use]:
    """Every well-formed ``${NAME}`` in ``value`` (escapes excluded), with its path."""
    found: list[Use] = []
    stack: list[tuple[Path_, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if type(item) is str:
            if "${" not in item:
                continue
            whole = _WHOLE.fullmatch(item) is not None
            for match in _TOKEN.finditer(item):
                if not match.group(1) and NAME_RE.fullmatch(match.group(2)):
                    found.append(Use(where, match.group(2), whole))
        elif type(item) is dict:
            stack.extend(((*where, k), v) for k, v in item.items())
        elif type(item) is list:
            stack.extend(((*where, i), v) for i, v in enumerate(item))
    found.sort(key=lambda use: [str(p) for p in use.path])
    return found


def keys_with_references(value: Any, path: Path_ = ()) -> list[Path_]:
    """Paths of mapping keys that hold ``${`` (keys are not substituted: a mistake to report)."""
    found: list[Path_] = []
    stack: list[tuple[Path_, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if type(item) is dict:
            for key, child in item.items():
                if type(key) is str and "${" in key:
                    found.append((*where, key))
                stack.append(((*where, key), child))
        elif type(item) is list:
            stack.extend(((*where, i), v) for i, v in enumerate(item))
    return found
