"""Shard leases: replicas split the shards, rebalance on join/leave, and take over the share of
a replica killed with SIGKILL within the TTL (real processes on PostgreSQL and MariaDB)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from reconciler.spec.model import ResourceKey
from reconciler.state import Store, open_store
from reconciler.state.shards import ShardLeases, shard_of, shard_owners

REPO = Path(__file__).resolve().parents[2]


def test_shard_of_is_stable_and_spread() -> None:
    keys = [ResourceKey("prod", "Service", f"svc-{i}") for i in range(10_000)]
    counts = Counter(shard_of(k, 64) for k in keys)
    assert set(counts) == set(range(64))
    assert max(counts.values()) < 2 * min(counts.values())
    # fixed by the hash, not by the process: the same on every replica and release
    assert shard_of(ResourceKey("prod", "Service", "api"), 64) == shard_of("prod/Service/api", 64)
    assert shard_of("prod/Service/api", 64) == 47  # pinned: changing it reshuffles fleets


@pytest.mark.timeout(60)
async def test_join_leave_and_expiry_rebalance(any_store: Store, any_second: Store) -> None:
    a = ShardLeases(any_store, "a", shards=8, ttl=0.6)
    b = ShardLeases(any_second, "b", shards=8, ttl=0.6)
    assert await a.heartbeat() == frozenset(range(8))
    assert await b.heartbeat() == frozenset()  # a's leases are live: nothing to take yet
    assert len(await a.heartbeat()) == 4  # b is live now: a hands half over
    assert len(await b.heartbeat()) == 4
    assert a.owned.isdisjoint(b.owned) and a.owned | b.owned == frozenset(range(8))
    owners = await shard_owners(any_store, 8)
    assert {n for n, o in owners.items() if o == "a"} == a.owned
    key = next(f"prod/Service/s{i}" for i in range(100) if shard_of(f"prod/Service/s{i}", 8)
               in a.owned)
    assert a.owns(key) and not b.owns(key)
    await b.leave()
    assert await a.heartbeat() == frozenset(range(8))
    # a stops heartbeating (dies): after its TTL, b takes everything
    await asyncio.sleep(0.7)
    assert not a.owns(key)  # a knows its leases may be gone
    assert await b.heartbeat() == frozenset(range(8))


@pytest.mark.timeout(60)
async def test_a_pass_acts_on_the_share_it_started_with(any_store: Store,
                                                      any_second: Store) -> None:
    """A shard claimed while a pass runs is not that pass's: its recovery skipped the shard,
    so its plan must too (fleet_ha saw a pass deploy a dead replica's open deployment again
    when a second claim landed between the two)."""
    a = ShardLeases(any_store, "a", shards=8, ttl=10)
    b = ShardLeases(any_second, "b", shards=8, ttl=10)
    for leases in (a, b, a, b):
        await leases.heartbeat()
    assert len(a.owned) == len(b.owned) == 4
    key = next(f"prod/Service/s{i}" for i in range(100) if shard_of(f"prod/Service/s{i}", 8)
               in b.owned)
    kept = next(f"prod/Service/s{i}" for i in range(100) if shard_of(f"prod/Service/s{i}", 8)
                in a.owned)
    with a.one_pass():
        await b.leave()
        assert await a.heartbeat() == frozenset(range(8))  # claimed during the pass
        assert not a.owns(key) and a.owns(kept)
    assert a.owns(key)  # the next pass (the one the claim triggers) acts on it


def _start(url: str, replica: str, ttl: float, shards: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_DB")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.state.shard_process", url, replica, str(ttl), str(shards)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


async def balanced(store: Any, shards: int, at_least: int) -> dict[int, str | None]:
    """The shard owners once every shard is held, three ways, each by ``at_least`` (30 s)."""
    deadline = time.monotonic() + 30
    while True:
        owners = await shard_owners(store, shards)
        counts = Counter(owners.values())
        if None not in counts and len(counts) == 3 and min(counts.values()) >= at_least:
            return owners
        assert time.monotonic() < deadline, f"never balanced: {counts}"
        await asyncio.sleep(0.1)


async def kill_and_wait_taken(procs: dict[str, Any], owners: dict[int, str | None],
                              store: Any, shards: int, limit: float) -> tuple[set[int], float]:
    """SIGKILL replica-0; once the others hold every shard it held (within ``limit`` seconds):
    its share and how long that took."""
    victim = "replica-0"
    share = {n for n, o in owners.items() if o == victim}
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    while True:
        owners = await shard_owners(store, shards)
        if all(owners[n] not in (None, victim) for n in share):
            return share, time.monotonic() - killed_at
        assert time.monotonic() - killed_at < limit, owners
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
async def test_killed_replica_share_taken_over_within_ttl(server_url: str) -> None:
    ttl, shards = 1.5, 64
    store = open_store(server_url)
    await store.migrate()
    procs = {f"replica-{i}": _start(server_url, f"replica-{i}", ttl, shards) for i in range(3)}
    try:
        owners = await balanced(store, shards, at_least=20)
        share, takeover = await kill_and_wait_taken(procs, owners, store, shards, 3 * ttl)
        print(f"{len(share)} shards of the killed replica taken over in {takeover:.2f} s "
              f"(ttl {ttl} s)")
        assert takeover <= ttl + ttl / 3 + 1.5  # TTL + one heartbeat + slack for a busy CI
        await asyncio.sleep(ttl / 3 * 2)
        final = Counter((await shard_owners(store, shards)).values())
        assert set(final) == {"replica-1", "replica-2"} and sum(final.values()) == shards
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for proc in procs.values():
            assert proc.stderr is not None
            err = proc.stderr.read()
            assert "Traceback" not in err or proc.returncode == -signal.SIGKILL, err
        await store.close()


def _start_busy(url: str, replica: str, ttl: float, shards: int, busy: float,
                out: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_DB")}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.state.busy_replica", url, replica, str(ttl), str(shards),
         str(busy), str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=env)


def _beliefs_overlap(lines: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """Shards two replicas' ``owns()`` answered True for at once: per replica and shard, the
    spans from the first to the last sample of a run of samples holding it; two replicas'
    spans of one shard must not intersect."""
    spans: dict[int, list[tuple[float, float, str]]] = {}
    for replica in {str(line["replica"]) for line in lines}:
        samples = sorted((float(e["t"]), set(e["owns"])) for e in lines
                         if e["replica"] == replica)
        open_: dict[int, tuple[float, float]] = {}
        for t, owns in samples:
            for shard in list(open_):
                if shard not in owns:
                    spans.setdefault(shard, []).append((*open_.pop(shard), replica))
            for shard in owns:
                first, _ = open_.get(shard, (t, t))
                open_[shard] = (first, t)
        for shard, (first, last) in open_.items():
            spans.setdefault(shard, []).append((first, last, replica))
    overlaps = []
    for shard, found in spans.items():
        for i, (start_a, end_a, a) in enumerate(found):
            overlaps += [(shard, a, b) for start_b, end_b, b in found[i + 1:]
                         if a != b and start_a <= end_b and start_b <= end_a]
    return overlaps


@pytest.mark.timeout(120)
async def test_busy_replicas_keep_and_take_over_shards(db_url: str, tmp_path: Path) -> None:
    """A replica whose event loop a long pass keeps busy (CPU-bound stretches of 8 s, longer
    than the TTL) still renews its shards and claims a killed replica's share within TTL + one
    heartbeat; no shard is ever believed owned by two replicas at once. The TTL is 6 s (the
    daemon's default 15 s): with 3 s, a CI run on 2 cores, three replicas spinning beside the
    other test workers and the database, once saw two shards lapse (their renewals, on a
    thread of their own, starved of CPU for 3 s)."""
    ttl, shards, busy = 6.0, 16, 8.0
    store = open_store(db_url)
    await store.migrate()
    samples = tmp_path / "owns.jsonl"
    procs = {f"replica-{i}": _start_busy(db_url, f"replica-{i}", ttl, shards, busy, samples)
             for i in range(3)}
    try:
        owners = await balanced(store, shards, at_least=4)
        # more than one busy stretch of every replica: their leases never lapse
        until = time.monotonic() + busy * 1.5
        while time.monotonic() < until:
            owners = await shard_owners(store, shards)
            assert None not in owners.values(), f"a lease lapsed while its loop was busy: {owners}"
            await asyncio.sleep(0.1)
        # TTL + one heartbeat, + 1 s for a loaded machine (the loops are 8 s busy)
        share, takeover = await kill_and_wait_taken(procs, owners, store, shards,
                                                    ttl + ttl / 3 + 1.0)
        print(f"{len(share)} shards of the killed replica taken over in "
              f"{takeover:.2f} s by busy survivors (ttl {ttl} s)")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        await store.close()
    for proc in procs.values():
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "Traceback" not in err, err
    lines = [json.loads(line) for line in samples.read_text().splitlines() if line]
    assert {line["replica"] for line in lines} == set(procs)
    overlaps = _beliefs_overlap(lines)
    assert overlaps == [], overlaps[:5]
