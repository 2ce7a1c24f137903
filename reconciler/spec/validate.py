"""JSON Schema validation of documents: a compiled fast path and a slow, explanatory path.

The schemas in ``schemas/`` are the single source of truth. On the happy path every document goes
through a fastjsonschema validator compiled once per process from a bundle of the kind's schema
(every cross-file ``$ref`` rewritten to a local ``#/$defs/...`` pointer, as fastjsonschema cannot
fetch other files). Only documents that fail go through jsonschema's Draft 2020-12 validator,
whose ``iter_errors`` yields every violation; ``schema_issues`` turns those into short messages
with the JSON path of the offending node, which the loader then locates in the YAML text.

jsonschema and referencing are imported on first use of the slow path only: a valid fleet (and
every warm, cached run) never needs them, and they were a third of ``reconciler``'s start-up.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import posixpath
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.spec.provider_schemas import provider_schemas

# fastjsonschema (and the decimal module it loads) is imported where a validator is compiled or
# run: a warm load, every file's records cached, validates nothing (docs/performance.md,
# session 11).
if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

logger = logging.getLogger(__name__)

API_VERSION = "fraisier.dev/v1"
KINDS: tuple[str, ...] = ("Target", "Service", "Job", "Schedule", "Notifier")
KIND_SCHEMAS: dict[str, str] = {
    "Target": "target.json",
    "Service": "service.json",
    "Job": "job.json",
    "Schedule": "schedule.json",
    "Notifier": "notifier.json",
    # values of one environment for shared definitions (spec/environments.py); consumed by
    # the loader, never a resource of its own
    "Environment": "environment.json",
}
# Registry base for the slow validator; the files themselves carry no $id, so editors resolve
# their relative $refs against the files' own locations.
SCHEMA_BASE_URI = "https://fraisier.dev/schemas/"

Path_ = tuple[str | int, ...]


def schema_dir() -> Path:
    """Where the schema files live: $RECONCILER_SCHEMAS_DIR, else ``schemas/`` of the source
    checkout (editable installs, containers built from the repo), else
    ``<prefix>/share/fraisier/schemas`` (where a packaged install would put them)."""
    configured = os.environ.get("RECONCILER_SCHEMAS_DIR")
    if configured:
        return Path(configured)
    checkout = Path(__file__).resolve().parents[2] / "schemas"
    installed = Path(sys.prefix) / "share" / "fraisier" / "schemas"
    if not (checkout / KIND_SCHEMAS["Service"]).is_file() and installed.is_dir():
        return installed
    return checkout


# schemas/fraisier.json on disk is the editors' bundle generated from what is assembled here
# (docs/generate.py); validation assembles its own dispatcher instead of reading it.
EDITOR_BUNDLE = "fraisier.json"
_WORKLOAD_KINDS = ("service.json", "job.json", "schedule.json")
_DISPATCH_DESCRIPTION = (
    "Any Fraisier desired-state document (Target, Service, Job, Schedule, Notifier or "
    "Environment), chosen by kind. "
    "Point an editor at it with the modeline "
    "`# yaml-language-server: $schema=<path>/schemas/fraisier.json`."
)


def _dispatcher() -> dict[str, Any]:
    """Any document, by kind (the editors' entry point)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Fraisier resource",
        "description": _DISPATCH_DESCRIPTION,
        "type": "object",
        "properties": {
            "apiVersion": {
                "$ref": "common.json#/$defs/apiVersion",
                "description": "Version of the resource format; must be fraisier.dev/v1.",
            },
            "kind": {
                "enum": list(KIND_SCHEMAS),
                "description": "Resource kind: Target (where things run), Service (long-running, "
                "health-checked), Job (runs to completion per revision), Schedule (runs on a "
                "cron schedule), Notifier (where outcomes are reported) or Environment (values of "
                "one environment for shared definitions).",
            },
        },
        "required": ["apiVersion", "kind"],
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                "then": {"$ref": file},
            }
            for kind, file in KIND_SCHEMAS.items()
        ],
    }


def _with_providers(files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The core files plus the handed-in provider fragments: each mounted under providers/, the
    Target's ``provider`` limited to the known names with each one's fragment applied, and each
    workload block added to Services, Jobs and Schedules."""
    fragments = provider_schemas()
    out = dict(files)
    target = copy.deepcopy(files["target.json"])
    spec = target["properties"]["spec"]
    spec["properties"]["provider"] = {
        **spec["properties"]["provider"],
        "enum": sorted(fragments),
    }
    branches = []
    for name, fragment in sorted(fragments.items()):
        out[f"providers/{name}-target.json"] = fragment.target
        branches.append({
            "if": {"properties": {"provider": {"const": name}}, "required": ["provider"]},
            "then": {"$ref": f"providers/{name}-target.json"},
        })
    if branches:
        spec["allOf"] = branches
    out["target.json"] = target
    for kind_file in _WORKLOAD_KINDS:
        kind = copy.deepcopy(files[kind_file])
        properties = kind["properties"]["spec"]["properties"]
        for name, fragment in sorted(fragments.items()):
            if fragment.workload_key is None or fragment.workload is None:
                continue
            out[f"providers/{name}-workload.json"] = fragment.workload
            properties[fragment.workload_key] = {
                "$ref": f"providers/{name}-workload.json",
                "description": f"Fields of the {name} provider "
                f"({fragment.source or 'its schema fragment'}).",
            }
        out[kind_file] = kind
    out[EDITOR_BUNDLE] = _dispatcher()
    return out


@cache
def _schema_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    """Every schema, keyed by its posix path relative to the schema directory: the core files
    of that directory with the provider fragments handed in (``_with_providers``)."""
    root = schema_dir()
    core: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob("*.json")):
        if path.name != EDITOR_BUNDLE:
            core[path.name] = json.loads(path.read_bytes())
    missing = [name for name in KIND_SCHEMAS.values() if name not in core]
    if missing:
        raise FileNotFoundError(
            f"schema files {missing} not found in {root}; set RECONCILER_SCHEMAS_DIR to the "
            "project's schemas/ folder"
        )
    return {
        name: (json.dumps(content, sort_keys=True).encode(), content)
        for name, content in sorted(_with_providers(core).items())
    }


def schema_files() -> dict[str, dict[str, Any]]:
    return {name: content for name, (_, content) in _schema_files().items()}


@cache
def schemas_version() -> str:
    """Digest of every schema file's name and bytes: changes whenever a schema changes."""
    digest = hashlib.sha256()
    for name, (raw, _) in sorted(_schema_files().items()):
        digest.update(name.encode() + b"\0" + raw + b"\0")
    return digest.hexdigest()


def _bundle_key(name: str) -> str:
    return "file_" + name.replace("/", "_").replace(".", "_")


# dropped from the fast validator's bundle: they do not validate and would bloat generated code
_ANNOTATIONS = frozenset({"$schema", "title", "description", "$comment", "examples"})


_CHARACTER_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")
_BARE_DOLLAR = re.compile(r"(?<!\\)\$")


def _escape_dollars_in_classes(pattern: str) -> str:
    """``[$]`` → ``[\\$]``: fastjsonschema turns every unescaped ``$`` into ``\\Z`` (to anchor
    at the very end), which is a syntax error inside a character class. Same meaning."""
    return _CHARACTER_CLASS.sub(lambda m: _BARE_DOLLAR.sub(r"\\$", m.group(0)), pattern)


def _only_required_branches(branches: Any) -> bool:
    return isinstance(branches, list) and all(
        isinstance(b, dict) and list(b) == ["required"] and len(b["required"]) == 1
        for b in branches
    )


def _exactly_one_present(keys: list[str]) -> dict[str, Any]:
    """``oneOf: [{required: [a]}, {required: [b]}, ...]`` as an if/then/else chain.

    Same meaning, but fastjsonschema evaluates a oneOf by raising an exception in every failing
    branch, which made it the most expensive part of validating a Service.
    """
    first, rest = keys[0], keys[1:]
    if not rest:
        return {"required": [first]}
    return {
        "if": {"required": [first]},
        "then": {"properties": dict.fromkeys(rest, False)},
        "else": _exactly_one_present(rest),
    }


# Where a schema holds subschemas (everything else is data: enum values, required names...).
_SCHEMA_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_VALUES = frozenset(
    {
        "items",
        "additionalItems",
        "not",
        "if",
        "then",
        "else",
        "additionalProperties",
        "propertyNames",
        "contains",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)


def _map_subschemas(schema: dict[str, Any], change: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of ``schema`` with ``change`` applied to each of its direct subschemas (never to
    a property *name*, so a property called "title" or "const" stays what it is)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: change(sub) for name, sub in value.items()}
        elif (key in _SCHEMA_LISTS or key == "items") and isinstance(value, list):
            out[key] = [change(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = change(value)
        else:
            out[key] = value
    return out


def _rewrite_refs(schema: Any, base: str) -> Any:
    """A copy of ``schema`` (from file ``base``) for the fast bundle: $refs point into the
    bundle's $defs instead of other files, annotations are dropped, and a few keywords get
    equivalent spellings fastjsonschema compiles better."""
    if not isinstance(schema, dict):
        return schema
    node = _map_subschemas(schema, lambda sub: _rewrite_refs(sub, base))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            target, _, fragment = value.partition("#")
            name = (
                posixpath.normpath(posixpath.join(posixpath.dirname(base), target))
                if target
                else base
            )
            out[key] = f"#/$defs/{_bundle_key(name)}{fragment}"
        elif key in _ANNOTATIONS:
            continue
        elif key == "pattern" and isinstance(value, str):
            out[key] = _escape_dollars_in_classes(value)
        elif key == "oneOf" and _only_required_branches(value):
            out.update(_exactly_one_present([b["required"][0] for b in value]))
        elif key == "const":
            # same meaning; fastjsonschema's const cannot compile without detailed exceptions
            out["enum"] = [value]
        else:
            out[key] = value
    return out


def bundle(name: str) -> dict[str, Any]:
    """Schema file ``name`` with every file it can reach inlined under ``$defs``."""
    files = schema_files()
    root = _rewrite_refs(copy.deepcopy(files[name]), name)
    defs = dict(root.get("$defs", {}))
    for other, content in files.items():
        defs[_bundle_key(other)] = _rewrite_refs(content, other)
    root["$defs"] = defs
    root["$schema"] = files[name].get("$schema", "")
    return root


def _inline_refs(schema: Any, root: dict[str, Any], active: tuple[str, ...] = ()) -> Any:
    """``schema`` with every local $ref replaced by a copy of its target (a recursive $ref is
    kept). fastjsonschema compiles each $ref into a function call that also builds an error-path
    string on every call; inlining makes validating a Service about 40% faster."""
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and ref not in active:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        resolved = _inline_refs(target, root, (*active, ref))
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        if not rest:
            return resolved
        return {"allOf": [resolved, _inline_refs(rest, root, active)]}
    return _map_subschemas(schema, lambda sub: _inline_refs(sub, root, active))


class CodeStore(Protocol):
    """Where compiled validators are kept between processes (``spec.cache.SpecCache``): an
    entry is only valid for the schemas, Python and fastjsonschema it was made with, which the
    store's namespace covers, and for this module's code (``key`` says which)."""

    def get_code(self, name: str, key: str) -> tuple[str, CodeType] | None: ...

    def put_code(self, name: str, key: str, entry: tuple[str, CodeType]) -> None: ...


_code_store: CodeStore | None = None


def use_code_store(store: CodeStore | None) -> None:
    """Keep the compiled validators in ``store`` (None: in this process only). Generating and
    compiling one is tens of ms at every process that validates a document of its kind (a
    `diff` or `apply` of a commit that changed a Service file, a daemon's first load); reading
    it back is about a millisecond (docs/performance.md)."""
    global _code_store
    _code_store = store


@cache
def _code_key() -> str:
    """What the generated code depends on: the schemas, this module as loaded (bundling,
    rewrites), fastjsonschema and Python."""
    import fastjsonschema

    try:
        st = os.stat(__file__)
        module = f"{__file__}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        module = "?"
    parts = (schemas_version(), module, fastjsonschema.VERSION, sys.version)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def _validator_code(kind: str, bundled: dict[str, Any]) -> tuple[str, CodeType]:
    """(name of the validating function, code of the module defining it) for one kind, from
    its bundled schema."""
    import fastjsonschema

    inlined = _inline_refs({k: v for k, v in bundled.items() if k != "$defs"}, bundled)
    inlined["$defs"] = bundled["$defs"]  # still the target of any recursive $ref
    # without detailed exceptions the generated code does not embed the schema in every raise
    resolver = fastjsonschema.RefResolver.from_schema(inlined, handlers={}, store={})
    source = fastjsonschema.compile_to_code(inlined, detailed_exceptions=False)
    return resolver.get_scope_name(), compile(source, f"<fastjsonschema {kind}>", "exec")


@cache
def fast_validator(kind: str) -> Callable[[Any], Any]:
    """Compiled validator of one kind (compiled on first use, then reused by the process; kept
    in the code store when there is one)."""
    store, name = _code_store, f"validator-{kind}"
    entry = store.get_code(name, _code_key()) if store is not None else None
    if entry is None:
        # schema files that cannot be read are an error of the installation, not a construct
        # to validate another way: raised, with where they were looked for
        bundled = bundle(KIND_SCHEMAS[kind])
        try:
            entry = _validator_code(kind, bundled)
        except Exception as exc:  # a construct fastjsonschema cannot compile: stay correct
            logger.warning(
                "schema of %s cannot be compiled by fastjsonschema (%s); validating it with "
                "jsonschema, which is slower",
                kind,
                exc,
            )
            return _slow_as_fast(kind)
        if store is not None:
            store.put_code(name, _code_key(), entry)
    function, code = entry
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - generated here from our schemas, or kept by us
    validator: Callable[[Any], Any] = namespace[function]
    return validator


def _slow_as_fast(kind: str) -> Callable[[Any], Any]:
    def validate(document: Any) -> Any:
        import fastjsonschema

        error = next(iter(kind_validator(kind).iter_errors(document)), None)
        if error is not None:
            raise fastjsonschema.JsonSchemaValueException(error.message)
        return document

    return validate


@cache
def _registry() -> Registry:
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = []
    for name, content in schema_files().items():
        uri = SCHEMA_BASE_URI + name
        with_id = {**content, "$id": uri}
        resources.append((uri, Resource.from_contents(with_id, default_specification=DRAFT202012)))
    registry: Registry = Registry().with_resources(resources)
    return registry


@cache
def _end_anchored(pattern: str) -> re.Pattern[str]:
    """``pattern`` as ECMA-262 reads it: an unescaped ``$`` outside a character class matches
    only at the very end of the text. Python's ``$`` also matches before a final newline, so
    jsonschema took ``"30s\\n"`` for a duration (the compiled validator, which writes ``\\Z``,
    did not)."""
    out: list[str] = []
    position = 0
    for match in _CHARACTER_CLASS.finditer(pattern):
        out.append(_BARE_DOLLAR.sub(r"\\Z", pattern[position : match.start()]))
        out.append(match.group(0))
        position = match.end()
    out.append(_BARE_DOLLAR.sub(r"\\Z", pattern[position:]))
    return re.compile("".join(out))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    from jsonschema.exceptions import ValidationError

    if validator.is_type(instance, "string") and not _end_anchored(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator_class() -> Any:
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"pattern": _pattern})


@cache
def slow_validator(name: str) -> Draft202012Validator:
    """jsonschema validator of schema file ``name`` (e.g. ``service.json`` or ``fraisier.json``),
    with ECMA-262 end anchors in ``pattern`` (see ``_end_anchored``)."""
    schema = _registry().contents(SCHEMA_BASE_URI + name)
    validator: Draft202012Validator = _validator_class()(schema, registry=_registry())
    return validator


def kind_validator(kind: str) -> Draft202012Validator:
    return slow_validator(KIND_SCHEMAS[kind])


def reload_schemas() -> None:
    """Forget every schema, digest and compiled validator; the next use reads the files again."""
    for cached in (_schema_files, schemas_version, fast_validator, _registry, slow_validator,
                   _code_key):
        cached.cache_clear()


def fast_errors(kind: str, document: Any) -> str | None:
    """None when the compiled validator accepts ``document``; else its (unlocated) message."""
    import fastjsonschema

    validator = fast_validator(kind)
    try:
        validator(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return str(exc.message)
    except Exception as exc:
        # values no JSON document has (non-string keys, dates) can trip the generated code
        return f"cannot be validated: {type(exc).__name__}"
    return None


@dataclass(frozen=True)
class Issue:
    """A schema violation: the JSON path to point at and the message (path included)."""

    path: Path_
    message: str
    at_key: bool = False  # point at the key that names the node rather than its value


def format_path(path: Path_) -> str:
    """``spec.health.interval``, ``spec.dependsOn[0]``; empty for the document itself."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isprintable():
            # a key with a line break or control character, quoted: a message stays one line
            out += f"[{str(part)!r}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _prefixed(path: Path_, message: str) -> str:
    where = format_path(path)
    return f"{where}: {message}" if where else message


def short_repr(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it in YAML, shortened: 'text', 3, true, null, a mapping."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true/false)",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}

_TITLED_MESSAGES = {
    "Duration": "{value} is not a valid duration (Go-style, e.g. 500ms, 30s, 5m, 1h30m)",
    "Name": (
        "{value} is not a valid name (lowercase letters, digits and '-', starting and ending "
        "with a letter or digit, at most 63 characters)"
    ),
    "Target name": (
        "{value} is not a valid Target name (lowercase letters, digits and '-', starting and "
        "ending with a letter or digit, at most 63 characters)"
    ),
    "Variable name": (
        "{value} is not a valid environment variable name (letters, digits and '_', "
        "not starting with a digit)"
    ),
    "Reserved variable name": (
        "{value} is reserved: names starting with FRAISIER_ are Fraisier's own (it sets "
        "FRAISIER_REVISION, FRAISIER_SERVICE and FRAISIER_ENVIRONMENT in every process); "
        "rename the variable"
    ),
    "Full commit SHA": (
        "{value} is not a full commit SHA: give all 40 lowercase hex digits (an abbreviated SHA "
        "cannot be fetched by a shallow clone; `git rev-parse <short>` prints the full one)"
    ),
    "Reference": (
        '{value} is not a valid reference ("name" or "Kind/name", Kind one of '
        "Target, Service, Job, Schedule)"
    ),
}

_EXACTLY_ONE = {
    "Secret reference": "a secret reference needs exactly one of 'env' or 'file'",
    "Source": "a source needs exactly one of 'path', 'git' or 'artifact'",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "string"


def schema_issues(kind: str, document: Any) -> list[Issue]:
    """Every violation of ``kind``'s schema in ``document``, as located-able issues."""
    issues: list[Issue] = []
    for error in kind_validator(kind).iter_errors(document):
        issues.extend(_issues(error))
    return sorted(set(issues), key=lambda i: (format_path(i.path), i.message))


def _issues(error: ValidationError) -> Iterator[Issue]:
    path: Path_ = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    title = schema.get("title")
    validator = error.validator
    instance = error.instance

    if "propertyNames" in error.schema_path:
        # jsonschema reports a bad key at its object's path with the key as the instance
        key_path = (*path, str(instance))
        if not isinstance(instance, str):
            message = f"key {short_repr(instance)} is not a string; quote it"
        elif title in _TITLED_MESSAGES:
            message = _TITLED_MESSAGES[title].format(value=short_repr(instance))
        else:
            message = f"invalid key {short_repr(instance)}: {error.message}"
        yield Issue(key_path, _prefixed(key_path, message), at_key=True)
        return
    if title == "Secret reference" and not isinstance(instance, dict):
        # a literal where a reference belongs is most likely the secret itself: never echo it
        yield Issue(path, _prefixed(path, (
            f"expected a secret reference ({{env: NAME}} or {{file: /path}}), got "
            f"{_JSON_TYPE_NAMES.get(_json_type(instance), 'a value')} (not shown: it may be "
            "the secret itself; commit a reference, not the value)")))
        return
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [
            k
            for k in instance
            if k not in schema.get("properties", {})
            and not any(isinstance(k, str) and re.search(p, k) for p in patterns)
        ]
        for key in sorted(extra, key=str):
            key_path = (*path, str(key))
            import difflib  # only when there is an unknown key to suggest for

            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(allowed)
            yield Issue(key_path, _prefixed(key_path, f"unknown property ({hint})"), at_key=True)
        return
    if validator == "required" and isinstance(instance, dict):
        for name in error.validator_value:
            if name not in instance:
                yield Issue(
                    path, _prefixed(path, f"missing required property {name!r}"), at_key=True
                )
        return
    if title in _TITLED_MESSAGES and validator in {"pattern", "type", "minLength", "maxLength"}:
        yield Issue(
            path, _prefixed(path, _TITLED_MESSAGES[title].format(value=short_repr(instance)))
        )
        return
    if title in _EXACTLY_ONE and validator in {"minProperties", "maxProperties"}:
        yield Issue(path, _prefixed(path, _EXACTLY_ONE[title]))
        return
    if title == "Health check" and validator == "oneOf" and isinstance(instance, dict):
        probes = [p for p in ("http", "tcp", "exec") if p in instance]
        found = ", ".join(probes) if probes else "none"
        message = (
            f"a health check needs exactly one probe of 'http', 'tcp' or 'exec' (found: {found})"
        )
        yield Issue(path, _prefixed(path, message))
        return
    if title == "Environment value":
        if validator == "type":
            message = (
                f"{short_repr(instance)} is not a valid value: expected a string, a number or a "
                "secret reference ({env: NAME} or {file: /path})"
            )
            yield Issue(path, _prefixed(path, message))
            return
        if validator in {"minProperties", "maxProperties"}:
            yield Issue(path, _prefixed(path, _EXACTLY_ONE["Secret reference"]))
            return
    if validator == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_JSON_TYPE_NAMES.get(n, n) for n in names)
        yield Issue(path, _prefixed(path, f"expected {wanted}, got {short_repr(instance)}"))
        return
    if validator == "const":
        yield Issue(
            path,
            _prefixed(
                path,
                f"{short_repr(instance)} is not allowed here, expected {error.validator_value!r}",
            ),
        )
        return
    if validator == "enum":
        choices = ", ".join(repr(c) for c in error.validator_value)
        yield Issue(path, _prefixed(path, f"{short_repr(instance)} is not one of {choices}"))
        return
    if validator == "uniqueItems":
        yield Issue(path, _prefixed(path, "has duplicate entries"))
        return
    yield Issue(path, _prefixed(path, error.message))


def fast_message_issue(message: str) -> Issue:
    """An issue from fastjsonschema's message (used only if the slow validator disagrees)."""
    head, _, text = message.partition(" ")
    path: list[str | int] = []
    if head.startswith("data"):
        for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", head[len("data") :]):
            path.append(int(index) if index else name)
    else:
        text = message
    return Issue(tuple(path), _prefixed(tuple(path), text))
