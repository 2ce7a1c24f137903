"""The live look of ``reconciler apply`` (``reconciler.rollout.drift.drifted``) through the provider
contract alone (tests/providers/fake_fleet.py): how many observations are in flight, per Target
and in all, and what it finds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.rollout import drift
from reconciler.rollout.drift import drifted
from tests.providers.fake_fleet import BATCHING, SERVICES, TARGETS, Applied, InFlight, applied_fleet

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def applied(tmp_path: Path) -> AsyncIterator[Applied]:
    async with applied_fleet(tmp_path) as fleet:
        yield fleet


async def test_the_live_look_follows_the_targets(applied: Applied) -> None:
    """Up to ``concurrency`` observations per Target, every Target at once, and all of a
    Target's Services where its provider batches the looks at a host: a limit over all
    resources, taken in plan order, kept the later Targets waiting for the first one (a fleet
    of 20 one-host Targets was looked at one or two hosts at a time)."""
    in_flight = InFlight()
    in_flight.slow_down(applied)
    tasks_before = len(asyncio.all_tasks())
    assert await drifted(applied.engine, applied.desired, concurrency=2) == set()
    assert dict(in_flight.most) == {"east": 2, "west": 2, BATCHING: SERVICES}
    assert in_flight.most_in_all == 2 + 2 + SERVICES
    # a task per look in flight, not one per Service waiting for its turn
    assert in_flight.most_tasks - tasks_before <= 2 + 2 + SERVICES
    assert len(TARGETS) == 3


async def test_the_live_look_finds_what_drifted_on_each_target(applied: Applied) -> None:
    applied.world.kill("east-1-1")
    applied.world.kill("north-3-1")
    found = await drifted(applied.engine, applied.desired, concurrency=1)
    assert {key.name for key in found} == {"east-1", "north-3"}


async def test_the_live_look_shares_its_cap_among_the_targets(
        applied: Applied, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the cap over all Targets, each Target keeps a share of it, one look at least."""
    monkeypatch.setattr(drift, "MAX_IN_FLIGHT", 3)
    in_flight = InFlight()
    in_flight.slow_down(applied)
    assert await drifted(applied.engine, applied.desired, concurrency=2) == set()
    assert in_flight.most_in_all <= 3
    assert set(in_flight.most) == set(TARGETS)
