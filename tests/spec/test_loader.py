"""The loader on valid fleets: discovery, identities, defaults, lines, hashes, references."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.errors import SourceError, SpecError
from reconciler.spec import yaml_parse
from reconciler.spec.loader import (
    document_lines,
    files_from_directory,
    git_blob_id,
    load_desired_state,
)
from reconciler.spec.model import DesiredState, ResourceKey, spec_hash
from tests.spec.conftest import VALID, source

BASIC = VALID / "basic"


def key(text: str) -> ResourceKey:
    return ResourceKey.parse(text)


def test_files_from_directory_finds_yaml_recursively_sorted_skipping_hidden() -> None:
    files = files_from_directory(BASIC)
    assert [f.path for f in files] == [
        f"{BASIC.as_posix()}/apps/api.yaml",
        f"{BASIC.as_posix()}/apps/jobs.yml",
        f"{BASIC.as_posix()}/targets.yaml",
    ]


def test_paths_keep_the_form_the_user_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(VALID)
    assert files_from_directory(Path("basic"))[0].path == "basic/apps/api.yaml"
    assert [f.path for f in files_from_directory(Path("basic/targets.yaml"))] == [
        "basic/targets.yaml"
    ]


def test_blob_ids_match_git_hash_object() -> None:
    for file in files_from_directory(BASIC):
        real = Path(file.path)
        out = subprocess.run(
            ["git", "hash-object", "--no-filters", str(real)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert file.blob_id == out.stdout.strip()
        assert file.read() == real.read_bytes()
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        files_from_directory(tmp_path / "nope")


def test_basic_fleet_loads_with_identities_lines_and_references() -> None:
    state = load_desired_state(files_from_directory(BASIC), commit="abc123", root="fleet")
    assert isinstance(state, DesiredState)
    assert state.commit == "abc123" and state.root == "fleet"
    assert sorted(map(str, state.resources)) == [
        "default/Job/migrate",
        "default/Schedule/report",
        "default/Service/api",
        "default/Service/db",
        "default/Target/local",
        "default/Target/web",
    ]
    api = state.resources[key("default/Service/api")]
    assert api.file.endswith("basic/apps/api.yaml")
    assert api.line == 2  # after the modeline comment
    assert api.labels == {"team": "core", "tier": "web"}
    assert api.depends_on == [key("default/Job/migrate"), key("default/Service/db")]
    assert state.target_of(api) is state.resources[key("default/Target/local")]
    assert state.resources[key("default/Service/db")].line == 32
    report = state.resources[key("default/Schedule/report")]
    # merge keys are resolved; the spec is otherwise exactly as written
    assert report.spec["target"] == "local"
    assert report.spec["source"] == {"path": "examples/jobs"}
    assert report.depends_on == [key("default/Job/migrate")]


def test_spec_is_exactly_as_written_without_defaults() -> None:
    state = load_desired_state(files_from_directory(VALID / "environments"))
    target = state.resources[key("prod/Target/main")]
    assert target.spec == {"provider": "bare_metal"}
    assert target.labels == {}
    worker = state.resources[key("prod/Service/worker")]
    assert worker.spec == {"target": "main", "command": ["./worker"]}


def test_environment_defaults_and_scopes_references() -> None:
    state = load_desired_state(files_from_directory(VALID / "environments"))
    assert state.resources[key("prod/Service/api")].depends_on == [key("prod/Service/worker")]
    # a bare name resolves within the environment; Kind/name picks among same-named kinds
    assert state.resources[key("staging/Service/worker")].depends_on == [key("staging/Job/worker")]
    assert (
        state.target_of(state.resources[key("staging/Service/api")])
        is state.resources[key("staging/Target/main")]
    )
    default = load_desired_state(files_from_directory(BASIC))
    assert {k.environment for k in default.resources} == {"default"}


def test_hash_is_spec_hash_of_the_document() -> None:
    for folder in (BASIC, VALID / "environments"):
        state = load_desired_state(files_from_directory(folder))
        for resource in state.resources.values():
            assert resource.hash == spec_hash(resource.document())


def test_hash_ignores_formatting_and_key_order() -> None:
    a = source(
        "a.yaml",
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: t}\n"
        "spec: {provider: bare_metal, transport: local}\n",
    )
    b = source(
        "b.yaml",
        "# comment\nkind: Target\napiVersion: fraisier.dev/v1\nmetadata:\n  name: t\n"
        "spec:\n  transport: local\n  provider: bare_metal\n",
    )
    ha = load_desired_state([a]).resources[key("default/Target/t")].hash
    hb = load_desired_state([b]).resources[key("default/Target/t")].hash
    assert ha == hb
    c = source("c.yaml", a.read().replace(b"transport: local", b"transport: local, root: /srv"))
    assert load_desired_state([c]).resources[key("default/Target/t")].hash != ha


def test_empty_files_and_documents_are_fine() -> None:
    files = [
        source("empty.yaml", ""),
        source("comments.yaml", "# nothing here\n"),
        source(
            "docs.yaml",
            "---\n---\napiVersion: fraisier.dev/v1\nkind: Target\n"
            "metadata: {name: t}\nspec: {provider: bare_metal}\n---\n",
        ),
    ]
    state = load_desired_state(files)
    assert list(state.resources) == [key("default/Target/t")]
    assert state.resources[key("default/Target/t")].line == 3


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_other_line_endings_give_the_same_lines(newline: str) -> None:
    text = (BASIC / "apps" / "api.yaml").read_text()
    converted = source("api.yaml", text.replace("\n", newline))
    target = source("t.yaml", (BASIC / "targets.yaml").read_bytes())
    jobs = source("j.yml", (BASIC / "apps" / "jobs.yml").read_bytes())
    state = load_desired_state([converted, target, jobs])
    assert state.resources[key("default/Service/api")].line == 2
    assert state.resources[key("default/Service/db")].line == 32


def test_happy_path_never_parses_with_marks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = yaml_parse.parse_with_marks

    def counting(path: str, data: bytes) -> yaml_parse.Parsed:
        calls.append(path)
        return real(path, data)

    monkeypatch.setattr(yaml_parse, "parse_with_marks", counting)
    load_desired_state(files_from_directory(BASIC))
    assert calls == []
    # ...while a failing file (and only it) is parsed again to locate its problems
    bad = source(
        "bad.yaml",
        "apiVersion: fraisier.dev/v1\nkind: Job\nmetadata: {name: j}\n"
        "spec: {target: local, timeout: soon}\n",
    )
    with pytest.raises(SpecError):
        load_desired_state([*files_from_directory(BASIC), bad])
    assert calls == ["bad.yaml"]


def test_cross_file_problem_reparses_only_the_file_involved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = yaml_parse.parse_with_marks
    monkeypatch.setattr(yaml_parse, "parse_with_marks", lambda p, d: calls.append(p) or real(p, d))
    orphan = source(
        "orphan.yaml",
        "apiVersion: fraisier.dev/v1\nkind: Job\nmetadata: {name: j}\nspec: {target: nowhere}\n",
    )
    with pytest.raises(SpecError) as raised:
        load_desired_state([*files_from_directory(BASIC), orphan])
    assert [str(p) for p in raised.value.problems] == [
        "orphan.yaml:4:16: spec.target: no Target 'nowhere' in environment 'default'"
    ]
    assert calls == ["orphan.yaml"]


def test_errors_from_many_files_come_together(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    shutil.copytree(BASIC, fleet)
    (fleet / "apps" / "api.yaml").write_text(
        (BASIC / "apps" / "api.yaml").read_text().replace("interval: 1s", "interval: 1 s")
    )
    (fleet / "zz.yaml").write_text("kind: [\n")
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(fleet))
    lines = [str(p).removeprefix(f"{fleet.as_posix()}/") for p in raised.value.problems]
    assert lines == [
        "apps/api.yaml:23:15: spec.health.interval: '1 s' is not a valid duration "
        "(Go-style, e.g. 500ms, 30s, 5m, 1h30m)",
        "zz.yaml:2:1: invalid YAML: did not find expected node content (while parsing a flow node)",
    ]


def test_invalid_document_does_not_cascade_into_reference_errors() -> None:
    target = source(
        "t.yaml",
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: t}\n"
        "spec: {provider: bare_metal, keepReleases: many}\n",
    )
    service = source(
        "s.yaml",
        "apiVersion: fraisier.dev/v1\nkind: Service\nmetadata: {name: s}\nspec: {target: t}\n",
    )
    with pytest.raises(SpecError) as raised:
        load_desired_state([target, service])
    assert [str(p) for p in raised.value.problems] == [
        "t.yaml:4:44: spec.keepReleases: expected an integer, got 'many'"
    ]


def test_long_dependency_chain_is_not_a_cycle_and_does_not_recurse() -> None:
    docs = [
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: t}\n"
        "spec: {provider: bare_metal}\n"
    ]
    for n in range(3000):
        deps = f"[s{n - 1}]" if n else "[]"
        docs.append(
            f"apiVersion: fraisier.dev/v1\nkind: Service\nmetadata: {{name: s{n}}}\n"
            f"spec: {{target: t, dependsOn: {deps}}}\n"
        )
    state = load_desired_state([source("chain.yaml", "---\n".join(docs))])
    assert state.resources[key("default/Service/s2999")].depends_on == [
        key("default/Service/s2998")
    ]
    docs[1] = docs[1].replace("dependsOn: []", "dependsOn: [s2999]")
    with pytest.raises(SpecError) as raised:
        load_desired_state([source("chain.yaml", "---\n".join(docs))])
    (problem,) = raised.value.problems
    assert problem.message == (
        "spec.dependsOn[0]: dependsOn cycle: Service/s0 -> Service/s2999 -> Service/s2998 -> "
        "Service/s2997 -> ... (2993 more) -> Service/s3 -> Service/s2 -> Service/s1 -> Service/s0"
    )


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\n",
        "# c\n---\n# x\n\n  a: 1\n...\n",
        "--- 5\n---\n",
        "a: '---'\nb: |\n  x\n---\nc: 1\n",
        "---\n---\n---\na: [1,\n 2]\n",
        "key: value # --- not a marker\n---   # comment\nb: 2\n",
    ],
)
def test_document_lines_agree_with_compose(text: str) -> None:
    data = text.encode()
    documents = list(yaml.load_all(data, Loader=yaml.CSafeLoader))
    lines = document_lines(data, len(documents))
    assert lines is not None
    composed = list(yaml.compose_all(data, Loader=yaml.CSafeLoader))
    for line, node, document in zip(lines, composed, documents, strict=True):
        if document is not None:
            assert line == node.start_mark.line + 1


def test_document_lines_declines_what_it_does_not_model() -> None:
    assert document_lines(b"%YAML 1.1\n---\na: 1\n", 1) is None
    assert document_lines(b"a: 1\rb: 2\r", 1) is None
    assert document_lines("a: 1\u2028b: 2\n".encode(), 1) is None
    assert document_lines(b"a: 1\n", 2) is None  # disagreement with the parser


def test_byte_order_mark_keeps_lines_right() -> None:
    text = b"\xef\xbb\xbf# modeline\napiVersion: fraisier.dev/v1\nkind: Target\n"
    text += b"metadata: {name: t}\nspec: {provider: bare_metal}\n"
    state = load_desired_state([source("bom.yaml", text)])
    assert state.resources[key("default/Target/t")].line == 2
