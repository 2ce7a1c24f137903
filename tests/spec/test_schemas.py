"""The JSON Schemas themselves: well-formed 2020-12, described, usable from an editor, and the
fast (compiled) and slow (explaining) validators agree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from reconciler.spec.document_checks import expands_beyond
from reconciler.spec.validate import (
    KIND_SCHEMAS,
    KINDS,
    fast_errors,
    schema_dir,
    schema_files,
    schema_issues,
    slow_validator,
)
from tests.spec.conftest import DATA

SCHEMAS = schema_dir()
MINE = [
    "common.json",
    "fraisier.json",
    "target.json",
    "service.json",
    "job.json",
    "schedule.json",
    "providers/bare_metal-target.json",
]
CORE = ["common.json", "target.json", "service.json", "job.json", "schedule.json"]
PROVIDER_FIELDS = ("compose", "coolify", "bare_metal", "docker", "hosts", "serviceManager")
ALL = sorted(schema_files())


# subschemas that only state conditions on properties defined (and described) elsewhere
CONDITIONS = {"if", "then", "else", "not"}


def properties_of(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{where}/properties/{name}", sub
        for key, value in node.items():
            if key not in CONDITIONS:
                yield from properties_of(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from properties_of(item, f"{where}/{index}")


def test_expected_files_exist() -> None:
    # core files on disk; provider fragments mounted from the provider folders
    for name in [*CORE, "fraisier.json"]:
        assert (SCHEMAS / name).is_file(), name
    for name in [
        *MINE,
        "providers/compose-target.json",
        "providers/compose-workload.json",
        "providers/coolify-target.json",
        "providers/coolify-workload.json",
    ]:
        assert name in schema_files(), name


@pytest.mark.parametrize("name", CORE)
def test_core_schemas_name_no_provider_field(name: str) -> None:
    """A provider's fields live in its own folder's fragments, never in schemas/*.json."""
    schema = json.loads((SCHEMAS / name).read_text())
    fields = [where for where, _ in properties_of(schema)
              if where.rsplit("/", 1)[-1] in PROVIDER_FIELDS]
    assert fields == []
    assert "enum" not in schema.get("properties", {}).get("spec", {}).get(
        "properties", {}).get("provider", {})


def test_editor_bundle_is_generated_from_core_and_fragments() -> None:
    """schemas/fraisier.json is what docs/generate.py makes of the assembled schemas."""
    from tests.docs.conftest import load_generator

    bundle = load_generator().editor_bundle()
    assert json.loads((SCHEMAS / "fraisier.json").read_text()) == bundle, (
        "run `make docs`"
    )


@pytest.mark.parametrize("name", ALL)
def test_schema_is_valid_2020_12(name: str) -> None:
    schema = schema_files()[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema.get("description")
    assert "$id" not in schema  # editors resolve the relative $refs against the file itself


@pytest.mark.parametrize("name", ALL)
def test_every_property_has_a_description(name: str) -> None:
    schema = schema_files()[name]
    missing = [
        where
        for where, sub in properties_of(schema)
        if isinstance(sub, dict) and not sub.get("description")
    ]
    assert missing == []


@pytest.mark.parametrize("name", MINE)
def test_objects_reject_unknown_properties(name: str) -> None:
    schema = schema_files()[name]
    open_objects = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                open_objects.append(where)
            for key, value in node.items():
                if key not in CONDITIONS:
                    walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{where}/{index}")

    walk(schema, "")
    # the Target spec is closed by its provider fragment; fraisier.json dispatches to closed ones
    assert [w for w in open_objects if w not in {"/properties/spec", ""}] == []


def documents(root: Path) -> Iterator[tuple[str, Any]]:
    for path in sorted(root.rglob("*.y*ml")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        try:
            docs = list(yaml.safe_load_all(path.read_bytes()))
        except (yaml.YAMLError, ValueError):
            continue
        for index, doc in enumerate(docs):
            if isinstance(doc, dict) and doc.get("kind") in KIND_SCHEMAS:
                if expands_beyond(doc):  # the alias bomb: rejected before any schema runs
                    continue
                yield f"{path.relative_to(root)}#{index}", doc


CORPUS = list(documents(DATA))


def test_corpus_has_valid_and_invalid_documents() -> None:
    verdicts = {fast_errors(doc["kind"], doc) is None for _, doc in CORPUS}
    assert verdicts == {True, False}


@pytest.mark.parametrize(("where", "doc"), CORPUS, ids=[w for w, _ in CORPUS])
def test_fast_and_slow_validators_agree(where: str, doc: dict[str, Any]) -> None:
    kind = doc["kind"]
    assert (fast_errors(kind, doc) is None) == (schema_issues(kind, doc) == []), where


@pytest.mark.parametrize(("where", "doc"), CORPUS, ids=[w for w, _ in CORPUS])
def test_fraisier_json_dispatches_on_kind(where: str, doc: dict[str, Any]) -> None:
    by_kind = slow_validator(KIND_SCHEMAS[doc["kind"]]).is_valid(doc)
    assert slow_validator("fraisier.json").is_valid(doc) == by_kind


def test_fraisier_json_rejects_unknown_kinds_and_versions() -> None:
    validator = slow_validator("fraisier.json")
    assert not validator.is_valid({"apiVersion": "fraisier.dev/v1", "kind": "Deployment"})
    assert not validator.is_valid(
        {
            "apiVersion": "v2",
            "kind": "Target",
            "metadata": {"name": "x"},
            "spec": {"provider": "bare_metal"},
        }
    )


def test_relative_refs_resolve_from_the_files_like_an_editor() -> None:
    """An editor follows `$schema=.../fraisier.json` by file URL; every $ref must resolve so."""

    def retrieve(uri: str) -> Resource:
        assert uri.startswith("file://"), uri
        return Resource.from_contents(
            json.loads(Path(uri.removeprefix("file://")).read_text()),
            default_specification=DRAFT202012,
        )

    registry: Registry = Registry(retrieve=retrieve)  # type: ignore[call-arg]
    root_uri = (SCHEMAS / "fraisier.json").as_uri()
    schema = {"$ref": root_uri}
    validator = Draft202012Validator(schema, registry=registry)
    valid = [doc for _, doc in CORPUS if fast_errors(doc["kind"], doc) is None]
    assert valid
    for doc in valid:
        assert validator.is_valid(doc)
    bad = {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Service",
        "metadata": {"name": "a"},
        "spec": {"target": "t", "stopTimeout": "soon"},
    }
    assert not validator.is_valid(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_bundles_compile_for_every_kind(kind: str) -> None:
    assert fast_errors(kind, {}) is not None


@pytest.mark.usefixtures("fresh_schema_caches")
def test_missing_schema_directory_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECONCILER_SCHEMAS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="RECONCILER_SCHEMAS_DIR"):
        fast_errors("Service", {})


@pytest.mark.usefixtures("fresh_schema_caches")
def test_patterns_fastjsonschema_mangles_still_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fastjsonschema rewrites every bare `$` to `\\Z`, breaking `[$]`; the bundle escapes it."""
    schemas = tmp_path / "schemas"
    import shutil

    shutil.copytree(SCHEMAS, schemas)
    common = schemas / "common.json"
    content = json.loads(common.read_text())
    content["$defs"]["workingDir"]["pattern"] = "^[a-z.$]*[$]?$"
    common.write_text(json.dumps(content))
    monkeypatch.setenv("RECONCILER_SCHEMAS_DIR", str(schemas))
    doc = {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"target": "t", "workingDir": "work$"},
    }
    assert fast_errors("Job", doc) is None
    doc["spec"]["workingDir"] = "Work$"
    assert fast_errors("Job", doc) is not None
    assert [i.path for i in schema_issues("Job", doc)] == [("spec", "workingDir")]


def test_slow_stand_in_for_an_uncompilable_schema() -> None:
    from reconciler.spec.validate import _slow_as_fast

    validate = _slow_as_fast("Job")
    good = {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"target": "t"},
    }
    assert validate(good) is good
    import fastjsonschema

    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        validate({**good, "spec": {"target": "t", "timeout": "soon"}})


@pytest.mark.usefixtures("fresh_schema_caches")
def test_properties_named_like_keywords_survive_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    job = json.loads((schemas / "job.json").read_text())
    extra = {
        "title": {"type": "string", "description": "A property called title."},
        "const": {"type": "integer", "description": "A property called const."},
        "description": {"type": "string", "description": "A property called description."},
    }
    job["properties"]["spec"]["properties"].update(extra)
    (schemas / "job.json").write_text(json.dumps(job))
    monkeypatch.setenv("RECONCILER_SCHEMAS_DIR", str(schemas))
    spec = {"target": "t", "title": "x", "const": 3, "description": "y"}
    doc = {"apiVersion": "fraisier.dev/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": spec}
    assert fast_errors("Job", doc) is None and schema_issues("Job", doc) == []
    spec["const"] = "three"
    assert fast_errors("Job", doc) is not None
    assert [i.path for i in schema_issues("Job", doc)] == [("spec", "const")]
