"""wait_healthy: thresholds, start period, deadlines — against a real scripted HTTP server."""

from __future__ import annotations

import time

import pytest

from reconciler.health import HealthPolicy, wait_healthy
from reconciler.providers import Instance
from tests.health.conftest import ScriptedServer

LOCAL = Instance(id="local", address="127.0.0.1")
FAIL = (500, "down")
OK = (200, "ok")


def health(server: ScriptedServer, **timing: object) -> dict[str, object]:
    return {
        "http": {"url": server.url(), "expectStatus": 200},
        "interval": "100ms",
        # every probe must reach the server, whose answers are scripted: a probe that timed out
        # on a loaded machine (a CI run: 500 ms) fails without taking its answer
        "timeout": "5s",
        "startPeriod": "0s",
        **timing,
    }


def test_defaults() -> None:
    policy = HealthPolicy.from_spec({})
    assert (policy.interval, policy.timeout, policy.initial_delay, policy.start_period) == (
        2.0,
        2.0,
        0.0,
        10.0,
    )
    assert (policy.success_threshold, policy.failure_threshold) == (1, 3)


@pytest.mark.timeout(10)
async def test_healthy_at_first_pass(server: ScriptedServer) -> None:
    result = await wait_healthy(health(server), LOCAL)
    assert result.healthy
    assert result.probes == 1
    assert "status 200" in result.message


@pytest.mark.timeout(10)
async def test_failure_threshold_counts_consecutive_failures(server: ScriptedServer) -> None:
    server.default = FAIL
    started = time.monotonic()
    result = await wait_healthy(health(server, failureThreshold=3), LOCAL)
    elapsed = time.monotonic() - started
    assert not result.healthy
    assert result.probes == 3
    assert result.message == (
        f"http://127.0.0.1:{server.port}/healthz: status 500, expected 200 (3 consecutive failures)"
    )
    assert 0.2 <= elapsed < 1.5  # three probes 100 ms apart


@pytest.mark.timeout(10)
async def test_a_pass_resets_the_failure_count(server: ScriptedServer) -> None:
    # fail, fail, pass with successThreshold 2 → the count restarts; then fail x3 → unhealthy
    server.script = [FAIL, FAIL, OK, FAIL, FAIL, FAIL]
    result = await wait_healthy(health(server, failureThreshold=3, successThreshold=2), LOCAL)
    assert not result.healthy
    assert result.probes == 6 and server.hits == 6


@pytest.mark.timeout(10)
async def test_success_threshold_needs_consecutive_passes(server: ScriptedServer) -> None:
    server.script = [OK, FAIL, OK, OK]
    result = await wait_healthy(health(server, successThreshold=3, failureThreshold=5), LOCAL)
    assert result.healthy
    assert result.probes == 5  # OK FAIL OK OK, then one more OK makes three in a row


@pytest.mark.timeout(10)
async def test_failures_during_start_period_do_not_count(server: ScriptedServer) -> None:
    # 5 failures in the first ~0.5 s; the start period covers them, failureThreshold 2 would not.
    server.script = [FAIL] * 5
    result = await wait_healthy(health(server, startPeriod="800ms", failureThreshold=2), LOCAL)
    assert result.healthy, result.message
    assert result.probes == 6


@pytest.mark.timeout(10)
async def test_failures_after_start_period_count(server: ScriptedServer) -> None:
    server.default = FAIL
    started = time.monotonic()
    result = await wait_healthy(health(server, startPeriod="300ms", failureThreshold=2), LOCAL)
    elapsed = time.monotonic() - started
    assert not result.healthy
    # probes at ~0, .1, .2 do not count; ~.3 and ~.4 do
    assert 4 <= result.probes <= 6
    assert 0.35 <= elapsed < 2


@pytest.mark.timeout(10)
async def test_initial_delay(server: ScriptedServer) -> None:
    started = time.monotonic()
    result = await wait_healthy(health(server, initialDelay="300ms"), LOCAL)
    assert result.healthy
    assert time.monotonic() - started >= 0.3


@pytest.mark.timeout(10)
async def test_flapping_ends_at_the_deadline(server: ScriptedServer) -> None:
    server.script = [OK, FAIL] * 50
    started = time.monotonic()
    result = await wait_healthy(
        health(server, successThreshold=2, failureThreshold=2), LOCAL, deadline_s=0.6
    )
    assert not result.healthy
    assert result.message.startswith("not healthy within 0.6s; last: ")
    assert time.monotonic() - started < 1.5


@pytest.mark.timeout(10)
async def test_no_probe_means_process_running() -> None:
    async def running() -> bool:
        return True

    async def stopped() -> bool:
        return False

    assert (await wait_healthy(None, LOCAL, is_running=running)).healthy
    result = await wait_healthy({"interval": "1s"}, LOCAL, is_running=stopped)
    assert not result.healthy
    assert result.message == "process not running"
    with pytest.raises(ValueError):
        await wait_healthy({}, LOCAL)


async def test_invalid_thresholds() -> None:
    with pytest.raises(ValueError):
        HealthPolicy.from_spec({"successThreshold": 0})


@pytest.mark.timeout(10)
async def test_start_period_probes_sooner_until_the_first_pass(server: ScriptedServer) -> None:
    # interval 2 s: at that pace two failures would make this take 4 s; in the start period the
    # probes after a failure come 50, then 100 ms later
    server.script = [FAIL, FAIL, OK]
    started = time.monotonic()
    result = await wait_healthy(health(server, interval="2s", startPeriod="5s"), LOCAL)
    elapsed = time.monotonic() - started
    assert result.healthy and result.probes == 3
    assert 0.15 <= elapsed < 1.0


@pytest.mark.timeout(10)
async def test_consecutive_passes_stay_an_interval_apart(server: ScriptedServer) -> None:
    # the fast start-period pace ends at the first pass: the second pass that successThreshold 2
    # needs comes an interval later
    server.script = [FAIL, OK, OK]
    started = time.monotonic()
    result = await wait_healthy(
        health(server, interval="400ms", startPeriod="5s", successThreshold=2), LOCAL
    )
    elapsed = time.monotonic() - started
    assert result.healthy and result.probes == 3
    assert 0.45 <= elapsed < 1.5


@pytest.mark.timeout(10)
async def test_failures_that_count_stay_an_interval_apart(server: ScriptedServer) -> None:
    server.default = FAIL
    started = time.monotonic()
    result = await wait_healthy(
        health(server, interval="300ms", startPeriod="0s", failureThreshold=3), LOCAL
    )
    assert not result.healthy and result.probes == 3
    assert time.monotonic() - started >= 0.6


@pytest.mark.timeout(10)
async def test_a_pass_the_instance_did_not_answer_counts_as_a_failure(
        server: ScriptedServer) -> None:
    # confirm says the first two passes were another process's: they fail (and count), the
    # third is the instance's
    verdicts = ["another process holds the port", "another process holds the port", None]

    async def confirm() -> str | None:
        return verdicts.pop(0)

    result = await wait_healthy(health(server, failureThreshold=3), LOCAL, confirm=confirm)
    assert result.healthy and result.probes == 3 and not verdicts

    verdicts = ["another process holds the port"] * 3
    result = await wait_healthy(health(server, failureThreshold=3), LOCAL, confirm=confirm)
    assert not result.healthy
    assert result.message.endswith(
        "status 200, but another process holds the port (3 consecutive failures)"), result
