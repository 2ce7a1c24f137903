"""SpecCache: warm loads equal cold ones, only changed blobs are parsed, schema changes
invalidate, and a damaged cache only costs a re-parse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.spec import fast_path
from reconciler.spec.cache import SpecCache, cache_version
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState
from reconciler.spec.validate import schema_dir
from tests.spec.conftest import VALID


def snapshot(state: DesiredState) -> dict[str, tuple[object, ...]]:
    return {
        str(key): (r.labels, r.spec, r.file, r.line, r.hash, r.depends_on)
        for key, r in state.resources.items()
    }


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    target = tmp_path / "fleet"
    shutil.copytree(VALID / "basic", target)
    return target


def count_fast_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    parsed: list[bytes] = []
    real = fast_path.load_fast

    def counting(data: bytes) -> object:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(fast_path, "load_fast", counting)
    return parsed


def test_warm_load_equals_cold_load_without_parsing(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SpecCache(tmp_path / "cache")
    cold = load_desired_state(files_from_directory(fleet), cache=cache)
    assert cache.misses == 3 and cache.hits == 0
    parsed = count_fast_parses(monkeypatch)
    warm = load_desired_state(files_from_directory(fleet), cache=cache, commit="c2")
    assert parsed == []
    assert cache.hits == 3
    assert snapshot(warm) == snapshot(cold)
    assert warm.commit == "c2"
    # the same cache serves a fresh process (a new SpecCache on the same directory)
    again = load_desired_state(files_from_directory(fleet), cache=SpecCache(tmp_path / "cache"))
    assert snapshot(again) == snapshot(cold)


def test_only_changed_blobs_are_parsed(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    jobs = fleet / "apps" / "jobs.yml"
    jobs.write_text(jobs.read_text().replace("backoffLimit: 2", "backoffLimit: 3"))
    parsed = count_fast_parses(monkeypatch)
    state = load_desired_state(files_from_directory(fleet), cache=cache)
    assert parsed == [jobs.read_bytes()]
    migrate = next(r for r in state.resources.values() if r.name == "migrate")
    assert migrate.spec["backoffLimit"] == 3


def test_paths_come_from_the_source_not_the_cache(fleet: Path, tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    moved = tmp_path / "moved"
    fleet.rename(moved)
    state = load_desired_state(files_from_directory(moved), cache=cache)
    assert cache.hits == 3
    assert all(r.file.startswith(moved.as_posix()) for r in state.resources.values())


def test_invalid_files_are_not_cached(fleet: Path, tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    (fleet / "bad.yaml").write_text("kind: [\n")
    for _ in range(2):
        with pytest.raises(SpecError):
            load_desired_state(files_from_directory(fleet), cache=cache)
    bad = next(f for f in files_from_directory(fleet) if f.path.endswith("bad.yaml"))
    assert cache.get(bad.blob_id) is None


def test_damaged_entries_are_misses(fleet: Path, tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    cold = load_desired_state(files_from_directory(fleet), cache=cache)
    # the blobs' entries only: the compiled validators (code/) are written by whichever
    # process compiles them first, so their presence depends on what ran before
    entries = sorted(p for p in cache.root.glob("??/*") if p.is_file())
    assert len(entries) == 3
    entries[0].write_bytes(b"\x00garbage")
    entries[1].write_bytes(b"")
    warm = load_desired_state(files_from_directory(fleet), cache=cache)
    assert snapshot(warm) == snapshot(cold)
    assert cache.misses >= 3 + 2


def test_unwritable_cache_directory_costs_only_speed(fleet: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    state = load_desired_state(files_from_directory(fleet), cache=SpecCache(blocker))
    assert len(state.resources) == 6


def test_rejects_paths_that_are_not_blob_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SpecCache(tmp_path).get("../../etc/passwd")


def test_version_namespaces_entries(fleet: Path, tmp_path: Path) -> None:
    files = files_from_directory(fleet)
    old = SpecCache(tmp_path / "cache", version="old")
    load_desired_state(files, cache=old)
    new = SpecCache(tmp_path / "cache", version="new")
    load_desired_state(files, cache=new)
    assert new.hits == 0 and new.misses == 3
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["new", "old"]


@pytest.mark.usefixtures("fresh_schema_caches")
def test_schema_change_invalidates_the_cache(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(schema_dir(), schemas)
    monkeypatch.setenv("RECONCILER_SCHEMAS_DIR", str(schemas))
    from reconciler.spec import cache as spec_cache
    from reconciler.spec import validate

    validate.reload_schemas()
    spec_cache.cache_version.cache_clear()
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    before = cache_version()

    # tighten the schema: Jobs may no longer retry more than once
    job = schemas / "job.json"
    job.write_text(job.read_text().replace('"minimum": 0,', '"minimum": 0, "maximum": 1,'))
    validate.reload_schemas()
    spec_cache.cache_version.cache_clear()
    assert cache_version() != before
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(fleet), cache=SpecCache(tmp_path / "cache"))
    assert [p.message for p in raised.value.problems] == [
        "spec.backoffLimit: 2 is greater than the maximum of 1"
    ]
    assert os.environ["RECONCILER_SCHEMAS_DIR"] == str(schemas)


def test_a_new_version_drops_old_namespaces(fleet: Path, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    old = "0" * 20
    load_desired_state(files_from_directory(fleet), cache=SpecCache(directory, version=old))
    (directory / "unrelated").mkdir()  # not a version namespace: left alone
    new = "1" * 20
    load_desired_state(files_from_directory(fleet), cache=SpecCache(directory, version=new))
    assert sorted(p.name for p in directory.iterdir()) == [new, "unrelated"]


def test_prune_keeps_only_the_given_blobs(fleet: Path, tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    files = files_from_directory(fleet)
    load_desired_state(files, cache=cache)
    keep = {files[0].blob_id}
    assert cache.prune(keep) == 2
    assert cache.get_entry(files[0].blob_id) is not None
    assert cache.get_entry(files[1].blob_id) is None


def test_compiled_validators_are_kept_for_the_next_process(
    fleet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.spec import validate

    validate.reload_schemas()  # nothing compiled in this process yet
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    assert {"validator-Service", "validator-Target", "validator-Job"} <= {
        p.name for p in (cache.root / "code").iterdir()}

    # A fresh process (nothing in memory) validating a changed Service file reads the kept
    # validator back instead of generating and compiling it again, and it still judges.
    validate.reload_schemas()
    generated: list[str] = []
    real = validate._validator_code
    monkeypatch.setattr(validate, "_validator_code",
                        lambda kind: generated.append(kind) or real(kind))
    api = fleet / "apps" / "api.yaml"
    api.write_text(api.read_text().replace("GREETING: hello", "GREETING: changed"))
    changed = load_desired_state(files_from_directory(fleet), cache=SpecCache(tmp_path / "cache"))
    assert generated == []
    assert any(r.spec.get("env", {}).get("GREETING") == "changed"
               for r in changed.resources.values())
    api.write_text(api.read_text().replace("stopTimeout: 10s", "stopTimeout: 10"))
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(fleet), cache=SpecCache(tmp_path / "cache"))
    assert generated == []
    assert "stopTimeout" in str(raised.value)
    # kept for other schemas (another key): not used
    assert cache.get_code("validator-Service", "another key") is None
    (cache.root / "code" / "validator-Service").write_bytes(b"damaged")
    assert cache.get_code("validator-Service", validate._code_key()) is None
