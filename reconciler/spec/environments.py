"""One definition, several environments: ``metadata.environments`` and ``Environment`` values.

A Target, Service, Job or Schedule whose metadata lists ``environments: [staging, production]``
(instead of one ``environment``) is a *shared definition*: the loader turns it into one resource
per environment, each with the ``${NAME}`` references of its labels and spec replaced by the
values of that environment's ``Environment`` document (``spec.values``; ``spec/substitute.py``
for the syntax). Values may use other values of their environment (``image:
"${registry}/api:${version}"``). Each resolved resource is then checked exactly like a document
written out by hand (schema, semantic checks, references, policy), and its hash, hence its
revision, covers only its resolved document: a production value changes nothing in staging.

A problem points at both ends: the ``${NAME}`` that is used (``file:line:col``) and the
Environment that lacks or defines the value (``file:line:col``), for an undefined value, a
cycle between values, a list or map used inside a longer string, or a value whose type fails
the schema once substituted. Why this shape rather than overlays or templates:
docs/environments.md.

The loader calls ``definition_issues``/``definition_record`` for each shared definition it
meets (they are cached per file blob like any document, unresolved), then ``resolve`` once
every file is loaded; resolved records are cached under a key of the file's blob and the
resolved values of the environments it uses (``resolved_cache_key``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from reconciler.errors import SpecProblem
from reconciler.spec.cache import PackedRecord, Record
from reconciler.spec.model import Mark
from reconciler.spec.substitute import (
    IN_KEY,
    MALFORMED,
    NAME_RE,
    NOT_SCALAR,
    UNDEFINED,
    Failure,
    Path_,
    Prepared,
    Use,
    canonical,
    keys_with_references,
    references,
    substitute,
    substitute_text,
)
from reconciler.spec.validate import API_VERSION, Issue, format_path, short_repr

if TYPE_CHECKING:
    # PyYAML is imported where a file is parsed (``origins``): resolving cached records parses
    # nothing (docs/performance.md, session 11)
    from yaml.nodes import MappingNode, Node

ENVIRONMENT_KIND = "Environment"
DEFINABLE_KINDS = ("Target", "Service", "Job", "Schedule")
# the environment field of a shared definition's (unresolved) record: no real environment
# can be called "" (schemas/common.json #/$defs/name), so records never mix it up
DEFINITION = ""
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_METADATA_KEYS = frozenset({"name", "environments", "labels"})


def is_definition(document: Any) -> bool:
    """Whether a document is a shared definition (its metadata lists ``environments``)."""
    metadata = document.get("metadata") if type(document) is dict else None
    return type(metadata) is dict and "environments" in metadata


def _valid_name(value: Any) -> bool:
    return type(value) is str and len(value) <= 63 and _NAME.fullmatch(value) is not None


def definition_issues(kind: str, document: dict[str, Any], *,
                      thorough: bool = True) -> list[Issue]:
    """What is wrong with a shared definition before any value is substituted. The loader's
    fast path passes ``thorough=False``: references in keys and malformed references are then
    found by the substitution itself (``resolve``), without two more walks of every document."""
    issues: list[Issue] = []
    if kind not in DEFINABLE_KINDS:
        return [Issue(("metadata", "environments"), f"metadata.environments: a {kind} cannot "
                      f"list environments (only {', '.join(DEFINABLE_KINDS)} can)", True)]
    metadata = document["metadata"]
    for key in metadata:
        if key not in _METADATA_KEYS:
            what = ("metadata.environment: write either environment (one) or environments "
                    "(a shared definition), not both" if key == "environment"
                    else f"metadata: unknown property {short_repr(key)} (expected name, "
                         "environments, labels)")
            issues.append(Issue(("metadata", key), what, True))
    if not _valid_name(metadata.get("name")):
        issues.append(Issue(("metadata", "name"), "metadata.name: a shared definition needs a "
                            "name: lowercase letters, digits and '-' (no ${...}: a resource's "
                            "identity is the same in every environment)"))
    environments = metadata["environments"]
    if type(environments) is not list or not environments:
        issues.append(Issue(("metadata", "environments"), "metadata.environments: expected a "
                            "non-empty list of environment names"))
    else:
        seen: set[str] = set()
        for position, name in enumerate(environments):
            where = ("metadata", "environments", position)
            if not _valid_name(name):
                issues.append(Issue(where, f"{format_path(where)}: {short_repr(name)} is not an "
                                    "environment name (lowercase letters, digits and '-')"))
            elif name in seen:
                issues.append(Issue(where, f"{format_path(where)}: {name!r} is listed twice"))
            else:
                seen.add(name)
    labels = metadata.get("labels", {})
    if type(labels) is not dict:
        issues.append(Issue(("metadata", "labels"), "metadata.labels: expected a mapping"))
    if type(document.get("spec")) is not dict:
        issues.append(Issue(("spec",), "spec: expected a mapping"))
    if thorough:
        for path in keys_with_references(document):
            issues.append(Issue(path, _in_key_message(path), True))
        found = substitute({"metadata": {"labels": document["metadata"].get("labels")},
                            "spec": document.get("spec")}, {}).failures
        issues.extend(Issue(f.path, _malformed_message(f)) for f in found
                      if f.kind == MALFORMED)
    return issues


def _in_key_message(path: Path_) -> str:
    return (f"{format_path(path)}: ${{...}} in a key is not substituted (only values vary "
            "between environments)")


def _malformed_message(failure: Failure) -> str:
    return (f"{format_path(failure.path)}: malformed reference ${{{failure.name}}}: write "
            "${NAME} (letters, digits, '_'), or $${ for a literal ${")


def definition_record(index: int, line: int, kind: str, document: dict[str, Any]) -> Record | None:
    """The (unresolved) record of a shared definition: ``environment`` is ``DEFINITION`` and
    ``spec`` holds ``{"environments", "labels", "spec"}``, the last two as canonical JSON text
    (what substitution works on); None if not plain JSON data."""
    metadata = document["metadata"]
    try:
        labels = canonical(metadata.get("labels", {}))
        spec = canonical(document["spec"])
        spec.encode()  # no lone surrogate
        labels.encode()
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError):
        return None
    kept = {"environments": metadata["environments"], "labels": labels, "spec": spec}
    return (index, line, kind, metadata["name"], DEFINITION, {}, kept, "")


# ---------------------------------------------------------------------------------------------
# Resolution


class Cache(Protocol):
    def get(self, blob_id: str) -> list[Record] | None: ...

    def put(self, blob_id: str, records: list[Record]) -> None: ...


@dataclass(frozen=True)
class Checks:
    """What the loader lends the resolution (its own checks, so a resolved document is checked
    exactly like a written one)."""

    # schema + semantic issues of a complete document (empty: valid)
    issues: Callable[[str, dict[str, Any]], list[Issue]]
    # the record of a valid document (index, line, kind, document)
    record: Callable[[int, int, str, dict[str, Any]], Record | None]
    # a problem located at ``path`` of document ``index`` of file ``file_index``
    problem_at: Callable[..., SpecProblem]  # (file index, index, path, message, at_key=False)


@dataclass
class _Environment:
    name: str
    file_index: int
    index: int
    raw: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    prepared: Prepared | None = None


@dataclass
class Resolved:
    # plain records (packed from the spec cache or whole) plus one per definition and environment
    valid: list[tuple[int, Record | PackedRecord]]
    problems: list[SpecProblem]
    partial: list[tuple[str, str, str]]  # identities not produced because of a problem
    environments: list[str]  # every environment an Environment document defines


def resolve(valid: Sequence[tuple[int, Record | PackedRecord]], blob_ids: Sequence[str],
            cache: Cache | None, checks: Checks) -> Resolved:
    """Replace the Environment and shared-definition records of ``valid`` by one resolved
    record per definition and environment."""
    definitions: dict[int, list[Record]] = {}
    environments: dict[str, _Environment] = {}
    problems: list[SpecProblem] = []
    for file_index, record in valid:
        kind, environment = record[2], record[4]
        if kind != ENVIRONMENT_KIND and environment != DEFINITION:
            continue  # plain: nearly every record, looked at twice only when there is work
        if kind == ENVIRONMENT_KIND:
            name = record[3]
            first = environments.get(name)
            if first is not None:
                where = checks.problem_at(first.file_index, first.index, ("metadata", "name"), "")
                problems.append(checks.problem_at(
                    file_index, record[0], ("metadata", "name"),
                    f"metadata.name: duplicate Environment {name!r} (first defined at "
                    f"{where.file}:{where.line}:{where.col})"))
                continue
            # Environment and definition records are never packed (spec/facts.py)
            environments[name] = _Environment(name, file_index, record[0],
                                              dict(cast(Record, record)[6].get("values", {})))
        else:
            definitions.setdefault(file_index, []).append(cast(Record, record))
    if not definitions and not environments:
        # nothing to resolve: the same list, so the loader sees that no record was produced
        return Resolved(valid if isinstance(valid, list) else list(valid), [], [], [])
    for env in environments.values():
        problems.extend(_resolve_values(env, checks))
    out = [item for item in valid
           if item[1][2] != ENVIRONMENT_KIND and item[1][4] != DEFINITION]
    partial: list[tuple[str, str, str]] = []
    for file_index in sorted(definitions):
        records = definitions[file_index]
        used = sorted({e for r in records for e in r[6]["environments"]})
        key = None
        if cache is not None and all(e in environments and not environments[e].broken
                                     for e in used):
            key = resolved_cache_key(blob_ids[file_index],
                                     {e: environments[e].values for e in used})
            cached = cache.get(key)
            if cached is not None:
                out.extend((file_index, r) for r in cached)
                continue
        before = len(problems)
        produced: list[Record] = []
        for record in records:
            for position, env_name in enumerate(record[6]["environments"]):
                resolved, found = _resolve_one(file_index, record, position, env_name,
                                               environments, checks)
                problems.extend(found)
                if resolved is not None:
                    produced.append(resolved)
                else:
                    partial.append((env_name, record[2], record[3]))
        out.extend((file_index, r) for r in produced)
        if key is not None and cache is not None and len(problems) == before:
            cache.put(key, produced)
    out.sort(key=lambda item: (item[0], item[1][0]))  # file order, as written
    return Resolved(out, problems, partial, sorted(environments))


def resolved_cache_key(blob_id: str, values: Mapping[str, Any]) -> str:
    """Cache key of a file's resolved records: its blob and the values they were built from."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(f"environments\0{blob_id}\0{text}".encode(),
                        usedforsecurity=False).hexdigest()


def _definition_at(env: _Environment, checks: Checks, name: str | None = None) -> str:
    path: Path_ = ("spec", "values", name) if name is not None and name in env.raw \
        else ("metadata", "name")
    where = checks.problem_at(env.file_index, env.index, path, "")
    return f"{where.file}:{where.line}:{where.col}"


def _resolve_values(env: _Environment, checks: Checks) -> list[SpecProblem]:
    """Resolve the values that use other values (depth first); report undefined ones and
    cycles at the use, naming the definition."""
    problems: list[SpecProblem] = []
    state: dict[str, int] = {}  # 1: in progress, 2: done
    stack: list[str] = []

    def problem(name: str, message: str) -> None:
        env.broken.add(name)
        problems.append(checks.problem_at(env.file_index, env.index, ("spec", "values", name),
                                          f"spec.values.{name}: {message}"))

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        raw = env.raw[name]
        for use in references(raw):
            if use.name not in env.raw:
                problem(name, f"${{{use.name}}} is not defined in Environment {env.name!r} "
                              f"({_definition_at(env, checks)})")
            elif state.get(use.name) == 1:
                cycle = [*stack[stack.index(use.name):], use.name]
                shown = " -> ".join(f"${{{n}}} ({_definition_at(env, checks, n)})"
                                    for n in cycle)
                for member in cycle[:-1]:
                    env.broken.add(member)
                problem(name, f"values refer to each other in a cycle: {shown}")
            elif state.get(use.name) is None:
                visit(use.name)
            if use.name in env.broken:
                env.broken.add(name)
        if name not in env.broken:
            result = substitute(raw, env.values)
            for failure in result.failures:
                if failure.kind == NOT_SCALAR:
                    problem(name, f"${{{failure.name}}} is a {_shape(env.values[failure.name])}"
                                  f" ({_definition_at(env, checks, failure.name)}); only a whole "
                                  f"\"${{{failure.name}}}\" can hold one")
                elif failure.kind == MALFORMED:
                    problem(name, f"malformed reference ${{{failure.name}}}")
            if name not in env.broken:
                env.values[name] = result.value
        stack.pop()
        state[name] = 2

    for name in env.raw:
        if not NAME_RE.fullmatch(name):
            problem(name, "a value name is letters, digits and '_', not starting with a digit")
        elif state.get(name) is None:
            visit(name)
    return problems


def _shape(value: Any) -> str:
    return "list" if type(value) is list else "map" if type(value) is dict else "null"


def _resolve_one(file_index: int, record: Record, position: int, env_name: str,
                 environments: Mapping[str, _Environment], checks: Checks
                 ) -> tuple[Record | None, list[SpecProblem]]:
    index, line, kind, name = record[0], record[1], record[2], record[3]
    definition = record[6]
    env = environments.get(env_name)
    if env is None:
        known = ", ".join(sorted(environments)) or "none"
        where = ("metadata", "environments", position)
        return None, [checks.problem_at(
            file_index, index, where,
            f"{format_path(where)}: no Environment {env_name!r} (defined: {known}); write a "
            f"document with kind: Environment, metadata.name: {env_name}")]
    if env.prepared is None:
        env.prepared = Prepared(env.values)
    labels_text = substitute_text(definition["labels"], env.prepared)
    spec_text = substitute_text(definition["spec"], env.prepared) if labels_text else None
    if labels_text is not None and spec_text is not None:  # every reference resolved
        body = {"labels": json.loads(labels_text), "spec": json.loads(spec_text)}
        document = _document(kind, name, env_name, body)
        if not checks.issues(kind, document):
            # the record the loader makes of a written document (``_record``: the hash of the
            # canonical JSON of kind, metadata and spec), from the substituted canonical texts
            # rather than dumping the document again; test_environments checks they agree
            text = (f'{{"kind":{canonical(kind)},"metadata":{{"environment":'
                    f'{canonical(env_name)},"labels":{labels_text},"name":{canonical(name)}}},'
                    f'"spec":{spec_text}}}')
            digest = hashlib.sha256(text.encode()).hexdigest()
            return (index, line, kind, name, env_name, body["labels"], body["spec"], digest), []
    # something is wrong: substitute again, walking, to say what and where
    labels = substitute(json.loads(definition["labels"]), env.values, ("metadata", "labels"))
    spec = substitute(json.loads(definition["spec"]), env.values, ("spec",))
    problems: list[SpecProblem] = []
    for failure in labels.failures + spec.failures:
        if failure.kind in (MALFORMED, IN_KEY):  # the same in every environment: once
            if position == 0:
                problems.append(checks.problem_at(
                    file_index, index, failure.path,
                    _malformed_message(failure) if failure.kind == MALFORMED
                    else _in_key_message(failure.path), failure.kind == IN_KEY))
            continue
        message = _failure_message(failure, env, checks)
        if message is not None:
            problems.append(checks.problem_at(file_index, index, failure.path, message))
    if labels.failures or spec.failures:
        return None, problems
    document = _document(kind, name, env_name, {"labels": labels.value, "spec": spec.value})
    issues = checks.issues(kind, document)
    if issues:
        uses = labels.uses + spec.uses
        for issue in issues:
            problems.append(_located_issue(file_index, index, issue, uses, env, checks))
        return None, problems
    resolved = checks.record(index, line, kind, document)
    if resolved is None:
        return None, [checks.problem_at(file_index, index, (), "the resolved document holds "
                                        "values that have no JSON equivalent")]
    return resolved, []


def _document(kind: str, name: str, environment: str, body: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "environment": environment}
    if body["labels"]:
        metadata["labels"] = body["labels"]
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": body["spec"]}


def _failure_message(failure: Failure, env: _Environment, checks: Checks) -> str | None:
    where = format_path(failure.path)
    if failure.name in env.broken:
        return None  # its definition's problem is reported there
    if failure.kind == UNDEFINED:
        defined = ", ".join(sorted(env.values)) or "no values"
        return (f"{where}: ${{{failure.name}}} is not defined for environment {env.name!r} "
                f"(Environment {env.name!r} at {_definition_at(env, checks)} defines: "
                f"{defined})")
    if failure.kind == NOT_SCALAR:
        return (f"{where}: ${{{failure.name}}} is a {_shape(env.values[failure.name])} in "
                f"environment {env.name!r} ({_definition_at(env, checks, failure.name)}); "
                f"only a whole string \"${{{failure.name}}}\" can hold one")
    return None


def _located_issue(file_index: int, index: int, issue: Issue, uses: Iterable[Use],
                   env: _Environment, checks: Checks) -> SpecProblem:
    """A schema problem of a resolved document, at the use that brought the value in (and
    naming the value's definition), else where the definition writes the field."""
    best: Use | None = None
    for use in uses:
        if issue.path[: len(use.path)] == use.path and (best is None
                                                        or len(use.path) > len(best.path)):
            best = use
    if best is None:
        return checks.problem_at(file_index, index, issue.path,
                                 f"{issue.message} (in environment {env.name!r})")
    value = env.values.get(best.name)
    return checks.problem_at(
        file_index, index, best.path,
        f"{issue.message} (in environment {env.name!r}: ${{{best.name}}} = {short_repr(value)}"
        f", defined at {_definition_at(env, checks, best.name)})")


# ---------------------------------------------------------------------------------------------
# Where each resolved value came from (render/diff --show-origin; parses with marks, on request)


@dataclass(frozen=True)
class Origin:
    path: str  # in the resolved document, e.g. "spec.image"
    name: str  # the value used
    use: Mark  # where ${name} is written
    definition: Mark | None  # where the environment defines it

    def __str__(self) -> str:
        defined = f"defined at {self.definition}" if self.definition else "undefined"
        return f"${{{self.name}}} used at {self.use}, {defined}"


def origins(files: Sequence[Any]) -> dict[tuple[str, str, str], list[Origin]]:
    """(environment, kind, name) -> where each substituted value of that resource came from.
    ``files`` are ``SourceFile``-like (``path``, ``read()``); only files holding ``${`` or an
    Environment are parsed."""
    import yaml
    from yaml.constructor import SafeConstructor
    from yaml.nodes import MappingNode, ScalarNode

    definitions: list[tuple[str, MappingNode, dict[str, Any]]] = []
    values_at: dict[str, dict[str, Mark]] = {}
    for source in files:
        if getattr(source, "refused", None) is not None:
            continue
        data = source.read()
        if b"${" not in data and ENVIRONMENT_KIND.encode() not in data:
            continue
        try:
            nodes = list(yaml.compose_all(data, Loader=yaml.CSafeLoader))
        except yaml.YAMLError:
            continue  # validation reports it
        for node in nodes:
            if not isinstance(node, MappingNode):
                continue
            # the composed node built in place (as spec/yaml_parse.py does for keys), not
            # serialized and parsed again
            document = SafeConstructor().construct_document(node)
            if type(document) is not dict:
                continue
            if document.get("kind") == ENVIRONMENT_KIND:
                name = (document.get("metadata") or {}).get("name")
                values = _node_at(node, ("spec", "values"))
                if isinstance(name, str) and isinstance(values, MappingNode):
                    # the value's own position, as in validation messages: what to edit
                    values_at[name] = {
                        str(k.value): Mark(source.path, v.start_mark.line + 1,
                                           v.start_mark.column + 1)
                        for k, v in values.value if isinstance(k, ScalarNode)}
            elif is_definition(document):
                definitions.append((source.path, node, document))
    found: dict[tuple[str, str, str], list[Origin]] = {}
    for path, node, document in definitions:
        metadata = document["metadata"]
        envs = metadata.get("environments")
        if type(envs) is not list:
            continue
        uses = references({"metadata": {"labels": metadata.get("labels")},
                           "spec": document.get("spec")})
        for env in envs:
            key = (str(env), str(document.get("kind")), str(metadata.get("name")))
            entries = found.setdefault(key, [])
            for use in uses:
                at = _node_at(node, use.path)
                mark = Mark(path, at.start_mark.line + 1, at.start_mark.column + 1) \
                    if at is not None else Mark(path, node.start_mark.line + 1, 1)
                entries.append(Origin(format_path(use.path), use.name, mark,
                                      values_at.get(str(env), {}).get(use.name)))
    return found


def _node_at(node: Node, path: Path_) -> Node | None:
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    for part in path:
        if isinstance(node, MappingNode):
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.value == part:
                    node = value
                    break
            else:
                return None
        elif isinstance(node, SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return None
    return node
