"""Jobs and Schedules on the local host: exit codes, output, timeouts, cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal import BareMetalProvider
from reconciler.providers.bare_metal.provider import RUN_OUTPUT_LIMIT
from tests.providers.bare_metal.conftest import (
    ENV,
    PY,
    AppSources,
    make_resource,
    new_provider,
    wait_gone,
)


@pytest.mark.timeout(30)
async def test_job_exit_code_and_output_are_recorded(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    code = (
        "import os, sys\n"
        "print('migrating', os.environ['DB'])\n"
        "print('warn', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    job = make_resource("migrate", {"command": [PY, "-c", code], "timeout": "10s"}, kind="Job")
    [instance] = await provider.instances(job)
    result = await provider.run(sources.release(job, "j1", env={"DB": "main"}), instance)
    assert result.exit_code == 3
    assert "migrating main" in result.output
    assert "warn" in result.output

    job_dir = Path(provider.root) / ENV / "migrate.job"
    log = (job_dir / "logs" / "migrate.job.log").read_text()
    assert "run revision j1" in log
    assert "migrating main" in log
    assert "exit 3" in log
    lines = await provider.logs(job, instance, tail=3)
    assert lines[-1].endswith("exit 3")

    [state] = await provider.observe(job)
    assert state.revision == "j1"
    assert state.running is False
    assert state.facts["last_run"]["exit_code"] == 3
    assert state.facts["last_run"]["revision"] == "j1"

    # A second run of the same revision reuses the release, and success is exit 0.
    ok = make_resource("migrate", {"command": [PY, "-c", "print('again')"]}, kind="Job")
    result = await provider.run(sources.release(ok, "j1"), instance)
    assert (result.exit_code, result.output) == (0, "again\n")
    assert sources.exports["j1"].calls == 1


@pytest.mark.timeout(30)
async def test_job_timeout_kills_it(provider: BareMetalProvider, sources: AppSources) -> None:
    code = "import time; print('started', flush=True); time.sleep(60)"
    job = make_resource("hang", {"command": [PY, "-c", code], "timeout": "1s"}, kind="Job")
    [instance] = await provider.instances(job)
    started = time.monotonic()
    result = await provider.run(sources.release(job, "h1"), instance)
    elapsed = time.monotonic() - started
    assert result.exit_code == 124
    assert "started" in result.output
    assert "timed out after 1s" in result.output
    assert 0.9 <= elapsed < 5


@pytest.mark.timeout(30)
async def test_job_output_kept_is_the_last_64_kib(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    code = "import sys; sys.stdout.write('x' * 200000 + 'END')"
    job = make_resource("loud", {"command": [PY, "-c", code]}, kind="Schedule")
    [instance] = await provider.instances(job)
    result = await provider.run(sources.release(job, "l1"), instance)
    assert result.exit_code == 0
    assert len(result.output) == RUN_OUTPUT_LIMIT
    assert result.output.endswith("END")
    log = Path(provider.root) / ENV / "loud.schedule" / "logs" / "loud.schedule.log"
    assert log.stat().st_size > 200000  # the log has all of it


@pytest.mark.timeout(30)
async def test_stop_cancels_a_running_job(
    provider: BareMetalProvider, sources: AppSources, tmp_path: Path
) -> None:
    pidfile = tmp_path / "job.pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    job = make_resource("long", {"command": [PY, "-c", code], "timeout": "1m"}, kind="Job")
    [instance] = await provider.instances(job)
    run = asyncio.create_task(provider.run(sources.release(job, "k1"), instance))
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await provider.observe(job))[0].running is True
    await provider.stop(job, instance)
    assert run.cancelled()
    assert await wait_gone(int(pidfile.read_text()))
    assert (await provider.observe(job))[0].running is False


async def test_job_without_command(provider: BareMetalProvider, sources: AppSources) -> None:
    job = make_resource("empty", {}, kind="Job")
    [instance] = await provider.instances(job)
    with pytest.raises(ProviderError, match="no command"):
        await provider.run(sources.release(job, "e1"), instance)


@pytest.mark.timeout(30)
async def test_deploy_of_a_job_prepares_without_running(
    provider: BareMetalProvider, sources: AppSources
) -> None:
    job = make_resource("prep", {"command": ["false"]}, kind="Job")
    [instance] = await provider.instances(job)
    await provider.deploy(sources.release(job, "p1"), instance)
    [state] = await provider.observe(job)
    assert (state.revision, state.running, state.facts.get("last_run")) == ("p1", False, None)
    result = await provider.run(sources.release(job, "p1"), instance)
    assert result.exit_code == 1
    assert sources.exports["p1"].calls == 1
    assert (
        json.loads((Path(provider.root) / ENV / "prep.job" / "last_run.json").read_text())[
            "exit_code"
        ]
        == 1
    )


@pytest.mark.timeout(30)
async def test_concurrency_limits_actions_per_host(
    state_dir: Path, sources: AppSources, tmp_path: Path
) -> None:
    # Each run records when it started and ended; overlap tells whether they ran side by side.
    code = (
        "import sys, time\n"
        "start = time.time(); time.sleep(0.5)\n"
        "open(sys.argv[1], 'w').write(f'{start} {time.time()}')\n"
    )
    for concurrency, overlap_expected in ((1, False), (2, True)):
        spans = [tmp_path / f"span-{concurrency}-{i}" for i in range(2)]
        jobs = [
            make_resource(f"j{i}", {"command": [PY, "-c", code, str(spans[i])]}, kind="Job")
            for i in range(2)
        ]
        provider = new_provider(state_dir, concurrency=concurrency)
        try:
            [instance] = await provider.instances(jobs[0])
            results = await asyncio.gather(
                *(provider.run(sources.release(job, "c1"), instance) for job in jobs)
            )
        finally:
            await provider.close()
        assert [r.exit_code for r in results] == [0, 0]
        (a0, a1), (b0, b1) = (map(float, span.read_text().split()) for span in spans)
        overlapped = a0 < b1 and b0 < a1
        assert overlapped is overlap_expected, (concurrency, (a0, a1), (b0, b1))


@pytest.mark.timeout(30)
async def test_deploy_and_run_of_one_job_at_concurrency_one(
    state_dir: Path, sources: AppSources
) -> None:
    provider = new_provider(state_dir, concurrency=1)
    job = make_resource("both", {"command": [PY, "-c", "print('ran')"]}, kind="Job")
    try:
        [instance] = await provider.instances(job)
        release = sources.release(job, "d1")
        _, result = await asyncio.wait_for(
            asyncio.gather(provider.deploy(release, instance), provider.run(release, instance)),
            10,
        )
    finally:
        await provider.close()
    assert result.output == "ran\n"
