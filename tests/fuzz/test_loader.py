"""Fuzzing the desired-state loader: arbitrary bytes and text, mutated real fleet files, and
generated documents that are well-formed YAML but wrong in shape.

Properties, for every input:
- the outcome is a ``DesiredState`` or a ``SpecError``, never another exception;
- every problem is located: a file of the input, 1 <= line <= lines in the file + 1, col >= 1,
  a one-line message; a YAML syntax error is reported at the parser's own mark;
- a load leaves no state that changes the next outcome: loading again with the spec cache the
  first load wrote gives exactly the same problems (or the same resources).
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler.errors import SpecError
from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import SourceFile, files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, spec_hash
from reconciler.spec.validate import API_VERSION, KINDS, schema_dir
from tests.fuzz.conftest import fuzz, mutate, mutations
from tests.spec.conftest import INVALID, VALID, source

ROOT = Path(__file__).resolve().parents[2]
SEED_FILES: list[SourceFile] = (
    files_from_directory(VALID)
    + files_from_directory(INVALID)
    + files_from_directory(ROOT / "examples" / "fleet")
)
SEEDS = [f.read() for f in SEED_FILES]

# tokens that mean something to YAML, to the loader's text scans, or to a decoder
# fmt: off
YAML_PIECES = st.sampled_from([
    b":", b": ", b"- ", b"[", b"]", b"{", b"}", b"#", b"&a ", b"*a", b"!", b"!!str ", b"|",
    b">-", b"'", b'"', b"%YAML 1.1\n", b"%TAG ! tag:x,2000:\n", b"@", b"`", b",", b"\n",
    b"\t", b"  ", b"? ", b"---\n", b"--- ", b"...\n", b"<<: *a\n", b"\r", b"\r\n", b"\xc2\x85",
    b"\xe2\x80\xa8", b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"\xc3", b"1e400", b".nan", b"0x1F",
    b"0o17", b"1_000", b"2024-02-30", b"2024-01-01T10:00:00Z", b"yes", b"off", b"~", b"null",
    b"!!binary aGk=", b"!!set {a}", b"!!omap [a: 1]", b"!!python/object:os.system", b"*/5",
    b"&b [*b]", b"[" * 60, b"{a: " * 40, b"kind: Service\n", b"apiVersion: fraisier.dev/v1\n",
    b"metadata: {name: x}\n", b"spec: {}\n", b"dependsOn: [x]\n", b"target: local\n",
])
# fmt: on


def line_count(data: bytes) -> int:
    """Lines as libyaml counts them (CR LF, CR, LF, and YAML 1.1's NEL, LS and PS all break),
    in UTF-8 or in the UTF-16 a byte order mark announces (an undecodable UTF-16 file is
    located by its bytes, as an editor opening it as UTF-8 shows it: the larger count)."""
    counts = []
    encodings = ["utf-8"]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encodings.append("utf-16")
    for encoding in encodings:
        text = data.decode(encoding, errors="replace")
        breaks = sum(text.count(c) for c in "\r\n\x85\u2028\u2029") - text.count("\r\n")
        counts.append(breaks + 1)
    return max(counts)


def check_outcome(files: list[SourceFile]) -> DesiredState | SpecError:
    """Load twice through one spec cache; check the properties above; return the outcome."""
    with tempfile.TemporaryDirectory(prefix="fuzz-cache-") as tmp:
        cache = SpecCache(Path(tmp))
        first = _load(files, cache)
        second = _load(files, cache)
    if isinstance(first, SpecError):
        assert isinstance(second, SpecError), "a cached load accepted what failed before"
        assert second.problems == first.problems
        texts = {f.path: f.read() for f in files}
        for problem in first.problems:
            assert problem.file in texts, problem
            assert 1 <= problem.line <= line_count(texts[problem.file]) + 1, problem
            assert problem.col >= 1, problem
            assert problem.message and "\n" not in problem.message, problem
        return first
    assert isinstance(second, DesiredState)
    assert {k: r.hash for k, r in first.resources.items()} == {
        k: r.hash for k, r in second.resources.items()
    }
    for resource in first.resources.values():
        assert resource.hash == spec_hash(resource.document())
        # what was accepted is plain JSON data
        json.dumps(resource.document(), allow_nan=False)
    return first


def _load(files: list[SourceFile], cache: SpecCache) -> DesiredState | SpecError:
    try:
        return load_desired_state(files, cache=cache)
    except SpecError as error:
        assert error.problems, "a SpecError always carries problems"
        return error


def yaml_mark(data: bytes) -> tuple[int, int] | None:
    """(line, col), 1-based, where libyaml itself stops on ``data``; None when it parses."""
    try:
        for _ in yaml.compose_all(data, Loader=yaml.CSafeLoader):
            pass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return (mark.line + 1, mark.column + 1) if mark else None
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    return None


@fuzz()
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    check_outcome([source("noise.yaml", data)])


@fuzz()
@given(st.text(max_size=1000))
def test_arbitrary_text(text: str) -> None:
    check_outcome([source("noise.yaml", text.encode("utf-8"))])


@fuzz()
@given(st.integers(0, len(SEEDS) - 1), mutations(YAML_PIECES))
def test_mutated_fleet_files(which: int, edits: list[Any]) -> None:
    files = list(SEED_FILES[:3])  # keep the load small: the mutated file plus two others
    data = mutate(SEEDS[which], edits)
    files = [f for f in files if f.path != SEED_FILES[which].path]
    files.append(source(SEED_FILES[which].path, data))
    outcome = check_outcome(files)
    mark = yaml_mark(data)
    if mark is not None:
        # a syntax error is reported where the parser stopped, in the mutated file, unless an
        # earlier document of the file already failed (e.g. a duplicate key): the first problem
        # of a file ends its parse
        assert isinstance(outcome, SpecError)
        located = {(p.line, p.col) for p in outcome.problems if p.file == files[-1].path}
        assert mark in located or min(located, default=mark) < mark, (mark, outcome.problems)


# -- structured but wrong documents --------------------------------------------------------------


def _schema_keys() -> list[str]:
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "properties" and isinstance(value, dict):
                    keys.update(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in schema_dir().rglob("*.json"):
        walk(json.loads(path.read_text()))
    return sorted(keys)


SCHEMA_KEYS = _schema_keys()
SPECIAL_STRINGS = st.sampled_from([
    "", " ", API_VERSION, "fraisier.dev/v2", *KINDS, "service", "local", "web", "default",
    "30s", "0", "-1s", "1.5h", "5x", "*/5 * * * *", "0 0 30 2 *", "@daily", "UTC",
    "Europe/Nowhere", "bare_metal", "compose", "coolify", "ssh", "rolling", "blue-green",
    "canary", "http://127.0.0.1:8080/health", "a" * 300, "name with spaces", "UPPER",
    "../etc/passwd", "x\ny", "é", "\u202e", "Service/api", "Target/local",
])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    SPECIAL_STRINGS,
    st.dates(min_value=dt.date(1, 1, 1)),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.binary(max_size=8),
)
KEYS = st.one_of(
    st.sampled_from(SCHEMA_KEYS), st.text(max_size=10), st.integers(-3, 3), st.booleans(), st.none()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(KEYS, inner, max_size=5),
        st.dictionaries(st.sampled_from(SCHEMA_KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)
NAMES = st.one_of(st.sampled_from(["api", "local", "web", "worker", "db"]), SCALARS)


@st.composite
def near_documents(draw: st.DrawFn) -> Any:
    """A document with the right top-level shape most of the time and wrong content."""
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)  # not even a mapping, sometimes
    document: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        document["apiVersion"] = draw(st.one_of(st.just(API_VERSION), SCALARS))
    if draw(st.integers(0, 9)):
        document["kind"] = draw(st.one_of(st.sampled_from(KINDS), SCALARS))
    if draw(st.integers(0, 9)):
        metadata = draw(
            st.fixed_dictionaries(
                {"name": NAMES},
                optional={
                    "environment": st.one_of(st.just("default"), SCALARS),
                    "labels": VALUES,
                    "extra": VALUES,
                },
            )
        )
        document["metadata"] = draw(st.one_of(st.just(metadata), VALUES))
    if draw(st.integers(0, 9)):
        spec = draw(st.dictionaries(st.sampled_from(SCHEMA_KEYS), VALUES, max_size=8))
        if draw(st.booleans()):
            spec["target"] = draw(st.one_of(st.just("local"), NAMES))
        document["spec"] = spec
    document.update(draw(st.dictionaries(KEYS, VALUES, max_size=2)))
    return document


@fuzz()
@given(st.lists(near_documents(), min_size=1, max_size=4), st.sampled_from([None, True, False]))
def test_structured_wrong_documents(documents: list[Any], flow: bool | None) -> None:
    # sort_keys=False: mixed key types (str, int, None) cannot be sorted
    text = yaml.dump_all(
        documents, Dumper=yaml.CSafeDumper, default_flow_style=flow, sort_keys=False,
        allow_unicode=True,
    )
    files = [SEED_FILES[0], source("fuzz/generated.yaml", text.encode("utf-8"))]
    check_outcome(files)


def test_seed_files_are_there() -> None:
    """Guard against a vacuous run: the seeds hold both valid and invalid fleets."""
    assert len(SEEDS) > 10
    outcomes = [check_outcome([f]) for f in SEED_FILES]
    assert any(isinstance(o, SpecError) for o in outcomes)
    assert any(isinstance(o, DesiredState) and o.resources for o in outcomes)
