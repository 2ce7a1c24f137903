"""Fuzzing schema validation with documents generated near the schemas: real valid documents
(the valid test fleets and examples/fleet) with random extra fields, values of the wrong type,
boundary values and removed fields, at random places.

Properties:
- the compiled validator (fast path) and jsonschema (slow, explaining path) agree on whether a
  document is valid, and jsonschema explains every rejection with at least one issue;
- loading the mutated document in its own fleet gives a ``DesiredState`` or a located
  ``SpecError`` (checked as in test_loader), never another exception.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler.spec.environments import is_definition
from reconciler.spec.loader import SourceFile, files_from_directory
from reconciler.spec.validate import KIND_SCHEMAS, fast_errors, schema_issues
from tests.fuzz.conftest import fuzz
from tests.fuzz.test_loader import ROOT, SCHEMA_KEYS, SPECIAL_STRINGS, check_outcome
from tests.spec.conftest import VALID, source

FLEETS: list[list[SourceFile]] = [
    files_from_directory(VALID / "basic"),
    files_from_directory(VALID / "environments"),
    files_from_directory(ROOT / "examples" / "fleet"),
]
# (fleet index, file index, document index, document)
DOCUMENTS: list[tuple[int, int, int, dict[str, Any]]] = [
    (fleet_index, file_index, doc_index, document)
    for fleet_index, fleet in enumerate(FLEETS)
    for file_index, file in enumerate(fleet)
    for doc_index, document in enumerate(yaml.safe_load_all(file.read()))
    if isinstance(document, dict) and document.get("kind") in KIND_SCHEMAS
]

BOUNDARY = st.sampled_from([
    0, -1, 1, 2, 65535, 65536, 2**31 - 1, 2**31, 2**53 + 1, 2**63, -(2**63), 10**100,
    0.0, -0.0, 0.5, 1e308, float("inf"), float("-inf"), float("nan"), True, False, None,
    "", "0", "-1", "1", "0s", "-5s", "1h", "9999999999h", "1.h", ".5s", "5 s", "abc",
    "a" * 64, "a" * 254, "a" * 255, "a" * 256, "A", "a_b", "a.b", "-a", "a-", "ä",
    [], {}, [None], {"": None},
])
WRONG_TYPE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), SPECIAL_STRINGS,
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(),
                                                         max_size=3),
)
EDIT = st.tuples(
    st.sampled_from(["extra", "wrong_type", "boundary", "delete", "duplicate_item"]),
    st.integers(0, 10_000),
    st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(min_size=1, max_size=10)),
    st.one_of(BOUNDARY, WRONG_TYPE),
)


def containers(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every (path, dict or list) inside ``node``, ``node`` included."""
    found: list[tuple[tuple[Any, ...], Any]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.items():
            found += containers(value, (*path, key))
    elif isinstance(node, list):
        found.append((path, node))
        for index, value in enumerate(node):
            found += containers(value, (*path, index))
    return found


def apply_edit(document: dict[str, Any], edit: tuple[str, int, str, Any]) -> None:
    op, pick, key, value = edit
    value = copy.deepcopy(value)  # sampled [] and {} are shared objects: never alias them
    places = containers(document)
    _, node = places[pick % len(places)]
    if isinstance(node, dict):
        keys = list(node)
        if op == "extra" or not keys:
            node[key] = value
        elif op == "delete":
            del node[keys[pick % len(keys)]]
        else:
            node[keys[pick % len(keys)]] = value
    else:
        if op == "extra" or not node:
            node.append(value)
        elif op == "delete":
            del node[pick % len(node)]
        elif op == "duplicate_item":
            node.append(copy.deepcopy(node[pick % len(node)]))
        else:
            node[pick % len(node)] = value


def validators_agree(kind: str, document: Any) -> None:
    fast = fast_errors(kind, document)
    slow = schema_issues(kind, document)
    assert (fast is None) == (not slow), (
        f"validators disagree on a {kind}: fast={fast!r} slow={[i.message for i in slow]!r}"
    )


@fuzz()
@given(st.integers(0, len(DOCUMENTS) - 1), st.lists(EDIT, min_size=1, max_size=4))
def test_documents_near_the_schemas(which: int, edits: list[Any]) -> None:
    fleet_index, file_index, doc_index, original = DOCUMENTS[which]
    document = copy.deepcopy(original)
    for edit in edits:
        apply_edit(document, edit)
    kind = original["kind"]
    if document.get("kind") == kind:
        validators_agree(kind, document)
    # the same document, written back into its file among the fleet's other files
    fleet = list(FLEETS[fleet_index])
    documents = list(yaml.load_all(fleet[file_index].read(), Loader=yaml.CSafeLoader))
    documents[doc_index] = document
    text = yaml.dump_all(documents, Dumper=yaml.CSafeDumper, sort_keys=False,
                         allow_unicode=True)
    fleet[file_index] = source(fleet[file_index].path, text.encode())
    check_outcome(fleet)


def test_the_unmodified_documents_are_valid() -> None:
    assert len(DOCUMENTS) >= 10
    assert {d[3]["kind"] for d in DOCUMENTS} == set(KIND_SCHEMAS)
    for _, _, _, document in DOCUMENTS:
        if is_definition(document):
            continue  # a shared definition is checked once resolved (test_environments)
        assert fast_errors(document["kind"], document) is None
        assert schema_issues(document["kind"], document) == []
