"""Release directories: build step, reuse, pruning, atomic switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import ProviderError
from reconciler.providers import Release
from reconciler.providers.bare_metal import BareMetalProvider
from reconciler.providers.bare_metal.releases import ReleaseStore, check_revision, within
from reconciler.transport.local import LocalTransport
from tests.providers.bare_metal.conftest import (
    ENV,
    PY,
    AppSources,
    make_resource,
    new_provider,
    wait_for_http,
)
from tests.providers.bare_metal.test_service import app_spec, pick_port

SLEEPER = [PY, "-c", "import time; time.sleep(60)"]


def release_names(provider: BareMetalProvider, name: str) -> list[str]:
    return sorted(os.listdir(Path(provider.root) / ENV / name / "releases"))


@pytest.mark.timeout(30)
async def test_build_runs_once_before_the_switch(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    build = [
        PY,
        "-c",
        "open('BUILT', 'a').write('built\\n'); open('VERSION', 'w').write('b1-built')",
    ]
    port = pick_port()
    resource = make_resource("api", app_spec(port, build=build))
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "b1"), instance)
    assert await wait_for_http(f"http://127.0.0.1:{port}/", "b1-built")
    await provider.deploy(sources.release(resource, "b1"), instance)  # same release: reused
    release_dir = Path(provider.root) / ENV / "api" / "releases" / "b1"
    assert (release_dir / "BUILT").read_text() == "built\n"
    assert sources.exports["b1"].calls == 1
    await provider.stop(resource, instance)


@pytest.mark.timeout(30)
async def test_build_failure_keeps_the_old_release_running(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    port = pick_port()
    resource = make_resource("api", app_spec(port))
    [instance] = await provider.instances(resource)
    await provider.deploy(sources.release(resource, "r1"), instance)
    await wait_for_http(f"http://127.0.0.1:{port}/", "r1")
    pid = (await provider.observe(resource))[0].facts["pid"]

    failing = [PY, "-c", "import sys; print('compiling...'); print('error: boom'); sys.exit(2)"]
    broken = make_resource("api", app_spec(port, build=failing))
    with pytest.raises(ProviderError) as info:
        await provider.deploy(sources.release(broken, "r2"), instance)
    assert "failed with exit 2" in info.value.message
    assert "error: boom" in info.value.message  # the output's tail
    # nothing half-done is left; the running release is untouched
    assert release_names(provider, "api") == ["r1"]
    [state] = await provider.observe(resource)
    assert (state.running, state.revision, state.facts["pid"]) == (True, "r1", pid)
    assert await wait_for_http(f"http://127.0.0.1:{port}/", "r1")

    # once the build is fixed, the same revision is exported again and deployed
    await provider.deploy(sources.release(resource, "r2"), instance)
    assert sources.exports["r2"].calls == 2
    await wait_for_http(f"http://127.0.0.1:{port}/", "r2")
    await provider.stop(resource, instance)


@pytest.mark.timeout(60)
async def test_pruning_keeps_recent_current_and_previous(
    state_dir: Path, sources: AppSources
) -> None:
    provider = new_provider(state_dir, keepReleases=2)
    resource = make_resource("worker", {"command": SLEEPER, "stopTimeout": "2s"})
    [instance] = await provider.instances(resource)
    try:
        for revision in ("v1", "v2", "v3", "v4"):
            await provider.deploy(sources.release(resource, revision), instance)
        assert release_names(provider, "worker") == ["v3", "v4"]

        # roll back to v3 (no export), then forward to a new v5: v3 stays as the previous one
        await provider.deploy(Release(resource, "v3", None), instance)
        assert release_names(provider, "worker") == ["v3", "v4"]
        await provider.deploy(sources.release(resource, "v5"), instance)
        assert release_names(provider, "worker") == ["v3", "v5"]
        store = provider.releases(resource)
        assert (await store.current(), await store.previous()) == ("v5", "v3")
    finally:
        await provider.stop(resource, instance)
        await provider.close()

    # keepReleases 1 still never deletes the current or the previous release
    tight = new_provider(state_dir, keepReleases=1)
    try:
        await tight.deploy(sources.release(resource, "v6"), instance)
        assert release_names(tight, "worker") == ["v5", "v6"]
        assert (await tight.observe(resource))[0].revision == "v6"
    finally:
        await tight.stop(resource, instance)
        await tight.close()


async def test_interrupted_export_is_redone(provider: BareMetalProvider, tmp_path: Path) -> None:
    resource = make_resource("job", {"command": ["true"]}, kind="Job")
    calls = []

    async def flaky_export(dest: Path) -> None:
        calls.append(dest)
        (dest / "partial").write_text("half")
        if len(calls) == 1:
            raise OSError("disk full")
        (dest / "done").write_text("all")

    [instance] = await provider.instances(resource)
    with pytest.raises(ProviderError, match="export of x1 failed: disk full"):
        await provider.run(Release(resource, "x1", None, export=flaky_export), instance)
    releases = Path(provider.root) / ENV / "job.job" / "releases"
    assert os.listdir(releases) == []  # no staging leftovers
    result = await provider.run(Release(resource, "x1", None, export=flaky_export), instance)
    assert result.exit_code == 0
    assert sorted(os.listdir(releases / "x1")) == ["done", "partial"]


async def test_a_release_dir_without_state_record_is_not_trusted(tmp_path: Path) -> None:
    store = ReleaseStore(LocalTransport(), str(tmp_path / "svc"), "test/svc")
    (tmp_path / "svc" / "releases" / "z1").mkdir(parents=True)
    (tmp_path / "svc" / "releases" / "z1" / "stale").write_text("from a crash")
    assert not await store.has("z1")
    resource = make_resource("svc", {})

    async def export(dest: Path) -> None:
        (dest / "fresh").write_text("ok")

    path, created = await store.ensure(
        Release(resource, "z1", None, export=export),
        build=None,
        working_dir=None,
        env={},
        build_timeout_s=10,
    )
    assert created
    assert sorted(os.listdir(path)) == ["fresh"]
    assert await store.has("z1")


async def test_a_deploys_completion_record_is_written_with_its_switch(tmp_path: Path) -> None:
    # ensure(record=False): the release counts as complete for this store (this deploy), and
    # the state file gets the record with the switch's history, in one write
    service_dir = tmp_path / "svc"
    store = ReleaseStore(LocalTransport(), str(service_dir), "test/svc")
    resource = make_resource("svc", {})
    exports: list[str] = []

    async def export(dest: Path) -> None:
        exports.append(dest.name)
        (dest / "app").write_text("ok")

    def ensure(on: ReleaseStore) -> object:
        return on.ensure(Release(resource, "r1", None, export=export), build=None,
                         working_dir=None, env={}, build_timeout_s=10, record=False)

    await ensure(store)
    assert not (service_dir / "releases.json").exists()
    assert await store.has("r1")
    # a crash now: a new store does not trust the unrecorded directory and exports again
    await ensure(ReleaseStore(LocalTransport(), str(service_dir), "test/svc"))
    assert len(exports) == 2

    await store.switched("r1")
    await store.flush()
    again = ReleaseStore(LocalTransport(), str(service_dir), "test/svc")
    assert await again.has("r1")
    assert (await again.load_state())["history"] == ["r1"]
    await ensure(again)
    assert len(exports) == 2  # recorded: reused


async def test_switch_is_a_symlink_rename(tmp_path: Path) -> None:
    store = ReleaseStore(LocalTransport(), str(tmp_path / "svc"), "test/svc")
    (tmp_path / "svc" / "releases" / "a").mkdir(parents=True)
    (tmp_path / "svc" / "releases" / "b").mkdir(parents=True)
    assert await store.current() is None
    await store.switch("a")
    inode_a = os.lstat(tmp_path / "svc" / "current").st_ino
    await store.switch("b")
    assert os.readlink(tmp_path / "svc" / "current") == "releases/b"
    assert os.lstat(tmp_path / "svc" / "current").st_ino != inode_a  # replaced, not edited
    assert await store.current() == "b"
    assert await store.previous() == "a"
    leftovers = [n for n in os.listdir(tmp_path / "svc") if n.startswith(".current")]
    assert leftovers == []


def test_revision_and_working_dir_checks() -> None:
    assert check_revision("0123abcd") == "0123abcd"
    assert check_revision("v1.2.3-rc_1") == "v1.2.3-rc_1"
    for bad in ("", "..", "a/b", ".hidden", "x" * 200, "a b"):
        with pytest.raises(ProviderError):
            check_revision(bad)
    assert within("/r", None) == "/r"
    assert within("/r", ".") == "/r"
    assert within("/r", "app/./web") == "/r/app/web"
    for bad in ("/etc", "..", "../x", "a/../../x"):
        with pytest.raises(ProviderError):
            within("/r", bad)
