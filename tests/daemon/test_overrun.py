"""The pass watchdog on the event loop's real clock: within its limit a pass is not an overrun;
past it, the overrun names the resources still being applied (longest first), is logged once
however long it lasts, and is over, with a line saying so, when the pass ends."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from reconciler.daemon.overrun import PassWatch, default_limit
from reconciler.spec.model import ResourceKey

pytestmark = pytest.mark.timeout(30)

API = ResourceKey("default", "Service", "api")
WORKER = ResourceKey("prod", "Job", "worker")


def test_default_limit_is_at_least_30_minutes_and_10_intervals() -> None:
    assert default_limit(30) == 1800
    assert default_limit(600) == 6000


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PassWatch(0, dict)


async def test_overrun_reported_once_then_over_when_the_pass_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    applying: dict[ResourceKey, float] = {}
    watch = PassWatch(0.3, lambda: applying)
    caplog.set_level(logging.INFO, logger="reconciler.daemon")
    assert watch.age() == 0 and watch.overrun() is None
    with watch.running():
        applying[WORKER] = time.monotonic()
        await asyncio.sleep(0.05)
        applying[API] = time.monotonic() - 10  # applying since before the pass (adopted)
        assert watch.overrun() is None  # within the limit
        await asyncio.sleep(0.4)
        overrun = watch.overrun()
        assert overrun is not None and overrun.seconds >= 0.3 and watch.age() >= 0.3
        assert [key for key, _ in overrun.resources] == [API, WORKER]
        reason = overrun.reason()
        assert "--pass-overrun limit of 0.3s" in reason
        assert reason.index("default/Service/api") < reason.index("prod/Job/worker")
        assert overrun.as_json()["resources"][0]["resource"] == "default/Service/api"
        await asyncio.sleep(0.4)  # still overrunning: no second warning
        warnings = [r for r in caplog.records if "overrunning" in r.getMessage()
                    and r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert warnings[0].resources == ["default/Service/api", "prod/Job/worker"]  # type: ignore[attr-defined]
    assert watch.age() == 0 and watch.overrun() is None
    assert any(r.getMessage().startswith("overrunning reconcile pass ended")
               for r in caplog.records)

    caplog.clear()
    with watch.running():  # a pass within the limit: nothing logged
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    assert not [r for r in caplog.records if "overrunning" in r.getMessage()]


async def test_resources_named_are_capped() -> None:
    now = time.monotonic()
    applying = {ResourceKey("default", "Service", f"s{n:02}"): now - n for n in range(25)}
    watch = PassWatch(0.01, lambda: applying)
    with watch.running():
        await asyncio.sleep(0.05)
        overrun = watch.overrun()
        assert overrun is not None
        assert len(overrun.resources) == 10 and overrun.more == 15
        assert str(overrun.resources[0][0]) == "default/Service/s24"  # the longest first
        assert overrun.reason().endswith("and 15 more")
