"""The daemon's self-heal check (``reconciler.daemon.heal.SelfHeal.check``) through the provider
contract alone (tests/providers/fake_fleet.py): it looks at the Services as ``apply``'s live look
does, per Target and all Targets at once, and records what it finds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.daemon.config import DaemonConfig
from reconciler.daemon.heal import SelfHeal
from reconciler.notifications.sink import EventSink
from reconciler.spec.model import DesiredState, ResourceKey
from tests.providers.fake_fleet import BATCHING, SERVICES, TARGETS, Applied, InFlight, applied_fleet

pytestmark = pytest.mark.timeout(60)


class Daemon:
    """What ``SelfHeal`` reads of a daemon; ``check`` needs none of it."""

    def __init__(self, desired: DesiredState) -> None:
        self.desired = desired
        self.reconciling = False
        self.stopping = False
        self.passed = asyncio.Event()
        self.events: EventSink | None = None
        self.queued: set[ResourceKey] = set()

    def queue_redeploy(self, keys: set[ResourceKey]) -> None:
        self.queued |= keys


@pytest.fixture
async def applied(tmp_path: Path) -> AsyncIterator[Applied]:
    async with applied_fleet(tmp_path) as fleet:
        yield fleet


def self_heal(applied: Applied, tmp_path: Path) -> SelfHeal:
    cfg = DaemonConfig(repo=str(tmp_path), ref=None, path="", listen_host="127.0.0.1",
                       listen_port=0, interval=3600, prune=False, state_dir=tmp_path,
                       db_url=applied.store.url)
    return SelfHeal(Daemon(applied.desired), cfg, applied.engine, applied.store)


async def test_the_heal_check_looks_at_every_target_at_once(applied: Applied,
                                                            tmp_path: Path) -> None:
    """One look after another was a remote command per Service (no batch to join) and, at
    1,000 Services over 20 hosts, a check of tens of seconds."""
    in_flight = InFlight()
    in_flight.slow_down(applied)
    assert await self_heal(applied, tmp_path).check(applied.desired) == {}
    assert in_flight.most[BATCHING] == SERVICES
    assert in_flight.most_in_all == len(TARGETS) * SERVICES


async def test_the_heal_check_records_what_drifted_and_what_is_healthy(
        applied: Applied, tmp_path: Path) -> None:
    applied.world.kill("west-2-1")
    found = await self_heal(applied, tmp_path).check(applied.desired)
    assert {key.name for key in found} == {"west-2"}
    assert "west-2-1" in next(iter(found.values()))
    statuses = {r.key.name: r for r in await applied.store.list_resources(with_specs=False)
                if r.key.kind == "Service"}
    assert statuses["west-2"].health_status == "Degraded"
    assert statuses["west-2"].sync_status == "OutOfSync"
    assert {name for name, r in statuses.items() if r.health_status == "Healthy"} == {
        f"{t}-{i}" for t in TARGETS for i in range(SERVICES)} - {"west-2"}
