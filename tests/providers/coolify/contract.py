"""Validate HTTP requests and responses against the real Coolify OpenAPI document.

The spec (contracts/coolify/openapi.yaml, Coolify 4.3.11) is read in place and never edited; the
few places where the running Coolify and its spec disagree are listed in SPEC_GAPS below, each
with where the real behaviour is documented. Everything else must match the spec exactly:
path + method exist, every query parameter is declared and has the declared type, bodies match
their schemas, every response status is declared and its body matches.

Two translations are applied to a private, parsed copy of the document:
- ``nullable: true`` (an OpenAPI 3.0 keyword this 3.1 document still uses) becomes
  ``type: [T, "null"]``; without it a JSON-Schema validator rejects the nulls Coolify sends.
- request bodies are checked strictly at the top level (unknown fields are violations), as
  Coolify's controllers answer 422 "This field is not allowed." for them.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_BYTES = 491336  # contracts/README.md: byte length of the verbatim upstream file
SPEC_URI = "urn:coolify-openapi"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def spec_path() -> Path | None:
    """Where contracts/coolify/openapi.yaml lives: $RECONCILER_CONTRACTS, the repo, /work/shared."""
    candidates = []
    if os.environ.get("RECONCILER_CONTRACTS"):
        candidates.append(Path(os.environ["RECONCILER_CONTRACTS"]))
    repo = Path(__file__).resolve().parents[3]
    candidates += [
        repo / "contracts",
        repo.parent / "shared" / "contracts",
        Path("/work/shared/contracts"),
    ]
    for base in candidates:
        path = base / "coolify" / "openapi.yaml"
        if path.is_file():
            return path
    return None


class ContractViolation(AssertionError):
    """A request or response the Coolify spec does not allow."""


@dataclass(frozen=True)
class Gap:
    """A documented difference between the spec and what Coolify really does."""

    method: str  # "*" = any
    template: str  # "*" = any
    status: int
    schema: dict[str, Any]
    source: str
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


def _ref(pointer: str) -> dict[str, Any]:
    return {"$ref": f"{SPEC_URI}#{pointer}"}


MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}, "success": {"type": "boolean"}},
}

SPEC_GAPS: tuple[Gap, ...] = (
    Gap(
        "GET",
        "/deployments/applications/{uuid}",
        200,
        {
            "type": "object",
            "required": ["count", "deployments"],
            "additionalProperties": False,
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "deployments": {
                    "type": "array",
                    "items": _ref("/components/schemas/ApplicationDeploymentQueue"),
                },
            },
        },
        "contracts README §1 'Per-app history': actual {count, deployments}; the spec wrongly "
        "says [Application]",
    ),
    Gap(
        "*",
        "*",
        403,
        MESSAGE_SCHEMA,
        "contracts README §1 'Auth': API disabled / IP allowlist answer 403 on every route; "
        "app/Http/Middleware/ApiAbility.php answers 403 'Missing required permissions: …'",
    ),
    Gap(
        "*",
        "*",
        401,
        _ref("/components/responses/401/content/application~1json/schema"),
        "contracts README §1 'Auth': the auth middleware answers 401 on every route",
    ),
    Gap(
        "*",
        "*",
        400,
        _ref("/components/responses/400/content/application~1json/schema"),
        "contracts README §1 'Auth': 400 Invalid token on every route",
    ),
    Gap(
        "*",
        "*",
        429,
        _ref("/components/responses/429/content/application~1json/schema"),
        "contracts README §1: 429 with Retry-After when the deployment queue is full (and the "
        "API rate limiter on any route); the spec lists 429 only on a few routes",
        headers={"Retry-After": {"type": "integer", "minimum": 0}},
    ),
    Gap(
        "*",
        "*",
        500,
        MESSAGE_SCHEMA,
        "Laravel's exception handler (APP_DEBUG off) answers any route 500 "
        '{"message": "Server Error"} on an unhandled exception; the spec lists no 5xx',
    ),
    Gap(
        "*",
        "*",
        503,
        MESSAGE_SCHEMA,
        "Laravel maintenance mode (`php artisan down`, during a Coolify upgrade) answers any "
        'route 503 {"message": "Service Unavailable"}; the spec lists no 5xx',
    ),
    Gap(
        "POST",
        "/deploy",
        404,
        _ref("/components/responses/404/content/application~1json/schema"),
        "contracts README §1 Deploy: 404 'No resources found.'",
    ),
    Gap(
        "PATCH",
        "/applications/{uuid}",
        422,
        _ref("/components/responses/422/content/application~1json/schema"),
        "Coolify 4.3.11 ApplicationsController::update_by_uuid answers 422 'Validation failed.' "
        "with errors per field (Laravel rules of sharedDataApplications(), fields not allowed); "
        "the spec does not list 422 for this route",
    ),
    Gap(
        "PATCH",
        "/applications/{uuid}/envs/bulk",
        422,
        _ref("/components/responses/422/content/application~1json/schema"),
        "Coolify 4.3.11 ApplicationsController::create_bulk_envs answers 422 'Validation "
        "failed.' when an item breaks its rules; the spec does not list 422 for this route",
    ),
    Gap(
        "POST",
        "/applications/{uuid}/envs",
        409,
        MESSAGE_SCHEMA,
        "ApplicationsController create_env: 409 when the key already exists",
    ),
)


def _nullable_to_31(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _nullable_to_31(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True:
            kind = out.get("type")
            if isinstance(kind, str):
                out["type"] = [kind, "null"]
            elif isinstance(kind, list) and "null" not in kind:
                out["type"] = [*kind, "null"]
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        return out
    if isinstance(node, list):
        return [_nullable_to_31(v) for v in node]
    return node


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


@dataclass
class Operation:
    method: str
    template: str
    regex: re.Pattern[str]
    spec: dict[str, Any]
    pointer: str

    @property
    def params(self) -> list[dict[str, Any]]:
        return list(self.spec.get("parameters") or [])

    @property
    def secured(self) -> bool:
        return bool(self.spec.get("security"))


class OpenAPIContract:
    def __init__(self, path: Path) -> None:
        raw = path.read_bytes()
        if len(raw) != SPEC_BYTES:
            raise ContractViolation(
                f"{path} is {len(raw)} bytes, not the {SPEC_BYTES} of the verbatim upstream file"
            )
        self.raw_document: dict[str, Any] = yaml.load(raw, Loader=yaml.CSafeLoader)
        document = _nullable_to_31(copy.deepcopy(self.raw_document))
        # Gap: Application.build_pack's enum lacks "dockerimage", which Coolify sets for every
        # application created through POST /applications/dockerimage (ApplicationsController).
        build_pack = document["components"]["schemas"]["Application"]["properties"]["build_pack"]
        build_pack["enum"] = [*build_pack["enum"], "dockerimage"]
        self.document = document
        self.registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self.operations: list[Operation] = []
        for template, item in document["paths"].items():
            regex = re.compile(
                "^" + re.sub(r"\\\{[^/]+?\\\}", "([^/]+)", re.escape(template)) + "$"
            )
            for method in HTTP_METHODS:
                if method in item:
                    pointer = f"/paths/{_escape(template)}/{method}"
                    self.operations.append(
                        Operation(method.upper(), template, regex, item[method], pointer)
                    )
        self._validators: dict[str, jsonschema.Draft202012Validator] = {}

    # ------------------------------------------------------------------ helpers

    def validator(self, schema: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
        key = json.dumps(schema, sort_keys=True)
        found = self._validators.get(key)
        if found is None:
            found = jsonschema.Draft202012Validator(dict(schema), registry=self.registry)
            self._validators[key] = found
        return found

    def errors(self, schema: Mapping[str, Any], instance: Any) -> list[str]:
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(self.validator(schema).iter_errors(instance), key=str)
        ]

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def find(self, method: str, path: str) -> Operation:
        matches = [op for op in self.operations if op.regex.match(path)]
        if not matches:
            raise ContractViolation(f"{method} {path}: no such path in the Coolify spec")
        for_method = [op for op in matches if op.method == method]
        if not for_method:
            allowed = sorted({op.method for op in matches})
            raise ContractViolation(
                f"{method} {path}: method not in the Coolify spec (allowed: {', '.join(allowed)})"
            )
        # Literal segments win over templated ones (/applications/public vs /applications/{uuid}).
        return min(for_method, key=lambda op: op.template.count("{"))

    # ------------------------------------------------------------------ requests

    def check_request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Operation:
        """Raise ContractViolation unless the spec allows this request."""
        op = self.find(method, path)
        problems: list[str] = []
        if op.secured:
            auth = headers.get("Authorization", "")
            if not re.match(r"^Bearer \S+$", auth):
                problems.append("missing or malformed 'Authorization: Bearer <token>' header")
        match = op.regex.match(path)
        assert match is not None
        names = re.findall(r"\{([^/]+?)\}", op.template)
        path_values = dict(zip(names, match.groups(), strict=True))
        declared = {(p["in"], p["name"]): (i, p) for i, p in enumerate(op.params)}
        seen: dict[str, int] = {}
        for name, _ in query:
            seen[name] = seen.get(name, 0) + 1
        for name, count in seen.items():
            if ("query", name) not in declared:
                problems.append(
                    f"query parameter {name!r} is not declared for {method} {op.template}"
                )
            elif count > 1:
                problems.append(f"query parameter {name!r} given {count} times")
        query_values = dict(query)
        for (location, name), (index, param) in declared.items():
            if location == "path":
                raw: str | None = path_values.get(name)
            elif location == "query":
                raw = query_values.get(name)
            else:
                continue
            if raw is None:
                if param.get("required"):
                    problems.append(f"required {location} parameter {name!r} missing")
                continue
            schema = param.get("schema", {})
            value = _coerce(raw, schema.get("type"))
            if value is _INVALID:
                problems.append(
                    f"{location} parameter {name!r}={raw!r} is not a {schema.get('type')}"
                )
                continue
            for err in self.errors(_ref(f"{op.pointer}/parameters/{index}/schema"), value):
                problems.append(f"{location} parameter {name!r}: {err}")
        request_body = op.spec.get("requestBody")
        if request_body is None:
            if body.strip():
                problems.append(f"{method} {op.template} takes no request body")
        elif not body.strip():
            if request_body.get("required"):
                problems.append(f"{method} {op.template} requires a JSON body")
        else:
            content_type = headers.get("Content-Type", "").split(";")[0].strip()
            if content_type not in request_body.get("content", {}):
                problems.append(f"body content type {content_type!r} not allowed")
            else:
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = _INVALID
                    problems.append("body is not valid JSON")
                if payload is not _INVALID:
                    pointer = f"{op.pointer}/requestBody/content/{_escape(content_type)}/schema"
                    problems += [f"body {e}" for e in self.errors(_ref(pointer), payload)]
                    schema = self.resolve(request_body["content"][content_type]["schema"])
                    properties = schema.get("properties")
                    if isinstance(payload, dict) and isinstance(properties, dict):
                        unknown = sorted(set(payload) - set(properties))
                        if unknown:
                            problems.append(f"body fields not in the spec: {', '.join(unknown)}")
        if problems:
            raise ContractViolation(f"{method} {path}: " + "; ".join(problems))
        return op

    # ------------------------------------------------------------------ responses

    def gap_for(self, op: Operation, status: int) -> Gap | None:
        for gap in SPEC_GAPS:
            if (
                gap.status == status
                and gap.method in ("*", op.method)
                and gap.template in ("*", op.template)
            ):
                return gap
        return None

    def check_response(
        self, op: Operation, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Raise ContractViolation unless the spec (or a documented gap) allows this response."""
        gap = self.gap_for(op, status)
        responses = op.spec.get("responses", {})
        declared = responses.get(str(status))
        problems: list[str] = []
        if gap is not None:
            schema: dict[str, Any] | None = gap.schema
            header_schemas = gap.headers
        elif declared is not None:
            response = self.resolve(declared)
            content = response.get("content", {}).get("application/json")
            schema = None
            if content is not None and "schema" in content:
                schema = _ref(_pointer_of(self, op, str(status), declared))
            header_schemas = {
                name: self.resolve(h).get("schema", {})
                for name, h in (response.get("headers") or {}).items()
            }
        else:
            raise ContractViolation(
                f"{op.method} {op.template}: response status {status} is not in the spec "
                f"(declared: {', '.join(sorted(responses))}) nor a documented gap"
            )
        for name, header_schema in header_schemas.items():
            value = headers.get(name)
            if value is None:
                problems.append(f"header {name} missing")
                continue
            coerced = _coerce(value, header_schema.get("type"))
            if coerced is _INVALID:
                problems.append(f"header {name}={value!r} is not a {header_schema.get('type')}")
            else:
                problems += [f"header {name}: {e}" for e in self.errors(header_schema, coerced)]
        if schema is not None:
            try:
                payload = json.loads(body)
            except ValueError:
                problems.append("response body is not JSON")
            else:
                problems += [f"body {e}" for e in self.errors(schema, payload)]
        if problems:
            raise ContractViolation(
                f"{op.method} {op.template} -> {status}: " + "; ".join(problems[:20])
            )


def _pointer_of(
    contract: OpenAPIContract, op: Operation, status: str, declared: dict[str, Any]
) -> str:
    if "$ref" in declared:
        return declared["$ref"].lstrip("#") + "/content/application~1json/schema"
    return f"{op.pointer}/responses/{status}/content/application~1json/schema"


class _Invalid:
    pass


_INVALID: Any = _Invalid()


def _coerce(raw: str, kind: Any) -> Any:
    """A query/header string as the typed value the spec declares (Laravel's accepted forms)."""
    if kind == "integer":
        return int(raw) if re.fullmatch(r"-?\d+", raw) else _INVALID
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            return _INVALID
    if kind == "boolean":
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        return _INVALID
    return raw


@cache
def load_contract() -> OpenAPIContract | None:
    path = spec_path()
    return OpenAPIContract(path) if path is not None else None
