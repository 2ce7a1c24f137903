"""Property tests: whatever a user types, loading gives a DesiredState or a SpecError, never
another exception; and the fast path accepts exactly what the slow, explaining path accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import SpecError
from reconciler.spec import fast_path, loader
from reconciler.spec.load_state import LoadState
from reconciler.spec.loader import SourceFile, files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, spec_hash
from tests.spec.conftest import VALID, source

FLEET = files_from_directory(VALID / "basic") + files_from_directory(VALID / "environments")
TEXTS = [f.read() for f in FLEET]

# characters that matter to YAML, plus a few that matter to readers and decoders
# fmt: off
_PIECES = st.sampled_from(
    [":", ": ", "-", "- ", "[", "]", "{", "}", "#", "&a", "*a", "!", "!!str ", "|", ">",
     "'", '"', "%", "@", "`", ",", "\n", "\t", " ", "  ", "?", "---\n", "...\n", "<<: ",
     "\r", "\r\n", "\u2028", "é", "\x00", "\ufeff", "0", "1.5", "yes", "null", "~",
     "2024-01-01", "1e400", ".nan", "apiVersion", "kind", "Service", "Target", "spec",
     "metadata", "name", "target", "dependsOn", "env", "{env: X}", "[a, b]", "x",
     "!!omap ", "!!set ", "!!binary ", "? ", "1: ", "on: ", "&b ", "*b", "<<: *a\n"]
)
# fmt: on
_EDIT = st.tuples(
    st.floats(min_value=0, max_value=1),
    st.sampled_from(["insert", "delete", "replace"]),
    st.integers(min_value=1, max_value=12),
    _PIECES,
)


def mutate(text: bytes, edits: list[tuple[float, str, int, str]]) -> bytes:
    data = text
    for where, op, length, piece in edits:
        at = int(where * len(data))
        payload = piece.encode()
        if op == "insert":
            data = data[:at] + payload + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + length :]
        else:
            data = data[:at] + payload + data[at + length :]
    return data


def check_outcome(files: list[SourceFile]) -> DesiredState | SpecError:
    try:
        state = load_desired_state(files)
    except SpecError as error:
        assert error.problems, "a SpecError always carries problems"
        paths = {f.path for f in files}
        for problem in error.problems:
            assert problem.file in paths
            assert problem.line >= 1 and problem.col >= 1
            assert problem.message and "\n" not in problem.message
        return error
    for resource in state.resources.values():
        assert resource.hash == spec_hash(resource.document())
    return state


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(FLEET) - 1), st.lists(_EDIT, min_size=1, max_size=6))
def test_any_edit_gives_a_state_or_a_spec_error(which: int, edits: list) -> None:  # type: ignore[type-arg]
    files = list(FLEET)
    mutated = mutate(TEXTS[which], edits)
    files[which] = source(files[which].path, mutated)
    check_outcome(files)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_state_or_a_spec_error(data: bytes) -> None:
    check_outcome([source("noise.yaml", data)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(FLEET) - 1), st.lists(_EDIT, min_size=1, max_size=4))
def test_fast_path_accepts_exactly_what_the_slow_path_accepts(which: int, edits: list) -> None:  # type: ignore[type-arg]
    data = mutate(TEXTS[which], edits)
    fast = fast_path.load_fast(data)
    load = LoadState([source("f.yaml", data)])
    slow = load.load_slowly(0, data)
    if fast is not None:
        # same documents, same lines (the text scan agrees with compose), same hashes
        assert load.problems == []
        assert slow == fast
    elif load.problems == []:
        # the slow path found nothing wrong: the fast path only declined to guess lines
        count = len(list(yaml.load_all(data, Loader=yaml.CSafeLoader)))
        assert loader.document_lines(data, count) is None


def test_mutations_do_hit_both_outcomes() -> None:
    """Guard against a property that passes vacuously: some edits keep the fleet valid."""
    files = list(FLEET)
    assert isinstance(check_outcome(files), DesiredState)
    files[0] = source(files[0].path, mutate(TEXTS[0], [(0.5, "insert", 1, "{")]))
    assert isinstance(check_outcome(files), SpecError)


def test_valid_fleet_files_are_found() -> None:
    assert all(Path(f.path).exists() for f in FLEET)


def _construct(loader_class: type, data: bytes) -> str:
    try:
        return repr(list(yaml.load_all(data, Loader=loader_class)))
    except Exception as error:  # any failure: the other loader must fail too
        return f"error {type(error).__name__}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=len(FLEET) - 1), st.lists(_EDIT, min_size=1, max_size=6))
def test_fast_constructor_builds_what_pyyaml_builds(which: int, edits: list) -> None:  # type: ignore[type-arg]
    data = mutate(TEXTS[which], edits)
    assert _construct(loader.FastLoader, data) == _construct(loader.StrictLoader, data)


@pytest.mark.parametrize(
    "text",
    [
        "a: &x {k: [1, 2.5, true, null, ~, 0x1f, 1_000, .inf, -.inf, yes, off]}\nb: *x\n",
        "base: &b {x: 1, y: 2}\nderived: {<<: *b, y: 3}\n",
        "r: &r [*r]\n",
        "when: 2024-01-01\nbin: !!binary aGVsbG8=\nset: !!set {a, b}\n",
        "o: !!omap [a: 1, b: 2]\n",
        "? [a, b]\n: x\n",
        "2: a\ntrue: b\nnull: c\n1.5: d\n",
        "s: !!str 123\nn: !!int '7'\n",
        "a: 1\na: 2\n",
        "k: !!str [a]\n",
        "k: !custom x\n",
    ],
)
def test_fast_constructor_matches_pyyaml_on_unusual_yaml(text: str) -> None:
    data = text.encode()
    assert _construct(loader.FastLoader, data) == _construct(loader.StrictLoader, data)
    stock = _construct(yaml.CSafeLoader, data)
    if "a: 1\na: 2" not in text:  # PyYAML itself silently keeps the last duplicate key
        assert _construct(loader.FastLoader, data) == stock


# --- the compiled bundle (inlined $refs, if/then/else for oneOf, enum for const) means what the
# --- schema files mean: replace any node of a valid document by an arbitrary JSON value
_VOCABULARY = st.sampled_from(
    [
        "http",
        "tcp",
        "exec",
        "env",
        "file",
        "path",
        "git",
        "artifact",
        "url",
        "port",
        "command",
        "interval",
        "type",
        "recreate",
        "ssh",
        "local",
        "hosts",
        "name",
        "address",
        "30s",
        "1h30m",
        "abc",
        "",
        "Job/migrate",
        "db",
        "bare_metal",
        "compose",
        "provider",
        "transport",
        "0",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.floats(allow_nan=False) | _VOCABULARY,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_VOCABULARY, children, max_size=3)
    ),
    max_leaves=8,
)
_VALID_DOCS = [doc for text in TEXTS for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_compiled_and_explaining_validators_agree(data: st.DataObject) -> None:
    import copy

    from reconciler.spec.validate import fast_errors, schema_issues

    document = copy.deepcopy(data.draw(st.sampled_from(_VALID_DOCS)))
    kind = document["kind"]  # the schema under test; a replaced kind just fails its const
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(document)[1:]))
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        replacement = data.draw(_JSON)
        if isinstance(parent, dict) and data.draw(st.booleans()):
            parent[data.draw(_VOCABULARY)] = replacement  # add a key, maybe unknown
        else:
            parent[path[-1]] = replacement
    assert (fast_errors(kind, document) is None) == (schema_issues(kind, document) == [])
