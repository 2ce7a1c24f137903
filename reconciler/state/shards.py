"""Replicas sharing a fleet: shard leases on the store (PostgreSQL or MySQL; SQLite for one host).

Resources are spread over a fixed number of shards by a stable hash of their identifier. Each
replica heartbeats every ``ttl / 3``: it renews its membership lease ``replica:<id>``, counts the
live replicas, and holds about ``ceil(shards / live)`` shard leases ``shard:<n>`` — renewing
its own, releasing extras when a replica joined, claiming free or expired ones when a replica
left or died. Exclusivity comes from ``Store.acquire_lock``, one atomic statement judged by the
database clock: a shard lease has one owner at any time. A replica killed with SIGKILL stops
renewing; its leases expire after ``ttl``. A heartbeat also notes when the earliest live lease
of another replica expires and the next one runs then if that is sooner than ``ttl / 3``, so the
survivors claim a dead replica's shards as they expire: within ``ttl`` of its last renewal plus
a heartbeat's round trips, rather than up to a heartbeat later (bench/store.py, bench/fleet_ha.py).

Why shard leases and not one lease per resource: 10,000 resource leases renewed every few
seconds by every replica would be thousands of writes per second for nothing; 64 shards cost a
few dozen small writes per heartbeat whatever the fleet size. Per-resource locks remain what
guards one deployment (the rollout takes them); shards only decide who looks at what.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from reconciler.spec.model import ResourceKey
from reconciler.state.store import LockInfo, Store

DEFAULT_SHARDS = 64
DEFAULT_TTL = 15.0
SHARD_PREFIX = "shard:"
REPLICA_PREFIX = "replica:"
EXPIRY_MARGIN = 0.05  # seconds after another's lease expires before looking again
MIN_PAUSE = 0.05  # between two heartbeats, whatever expires


def shard_of(key: ResourceKey | str, shards: int = DEFAULT_SHARDS) -> int:
    """The shard of a resource: stable across processes, hosts and Python versions."""
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_lock_name(shard: int) -> str:
    return f"{SHARD_PREFIX}{shard}"


async def store_now(store: Store) -> datetime:
    """The clock leases are judged by: the server's for PostgreSQL/MySQL, this host's for
    SQLite (one host)."""
    return await store.database_now()


@dataclass(frozen=True)
class Beat:
    """What one heartbeat did and when (what the daemon logs when its share changes)."""

    started: float  # monotonic
    took: float  # seconds, its store round trips included
    claimed: tuple[int, ...]  # shards taken that were free, expired or released
    released: tuple[int, ...]
    # how long the longest-expired shard claimed had been expired when the heartbeat saw it
    # (database clock): the part of a takeover spent waiting for this heartbeat
    overdue: float | None


class ShardLeases:
    """One replica's view of the shard leases; call ``heartbeat()`` every ``ttl / 3`` seconds."""

    def __init__(self, store: Store, replica_id: str, *, shards: int = DEFAULT_SHARDS,
                 ttl: float = DEFAULT_TTL) -> None:
        if shards < 1 or ttl <= 0:
            raise ValueError("shards must be >= 1 and ttl > 0")
        self.store = store
        self.replica_id = replica_id
        self.shards = shards
        self.ttl = ttl
        self.owned: frozenset[int] = frozenset()
        self.live_replicas: frozenset[str] = frozenset()
        # Monotonic deadline of the leases renewed by the last heartbeat, with a margin so a
        # replica stops acting before another can take over.
        self._valid_until = 0.0
        self.last: Beat | None = None
        # Monotonic time at which the earliest live lease of another replica (membership or
        # shard) expires, as of the last heartbeat: when a dead replica's share becomes free.
        self._next_expiry: float | None = None
        # The share a pass started with (``one_pass``): a pass acts on those shards only, so
        # its recovery of a dead replica's open deployments and its plan see the same share.
        self._pass_share: frozenset[int] | None = None

    @property
    def interval(self) -> float:
        return self.ttl / 3


    async def heartbeat(self) -> frozenset[int]:
        """Renew, rebalance and claim; returns the shards this replica now holds."""
        started = time.monotonic()
        await self.store.acquire_lock(REPLICA_PREFIX + self.replica_id, self.replica_id,
                                      self.ttl)
        asked = time.monotonic()  # `now` is the database's clock between this and the answer
        now = await store_now(self.store)
        locks = await self.store.list_locks()
        live = {lock.owner for lock in locks
                if lock.name.startswith(REPLICA_PREFIX) and lock.expires_at > now}
        live.add(self.replica_id)
        shard_locks: dict[int, LockInfo] = {}
        for lock in locks:
            if lock.name.startswith(SHARD_PREFIX):
                suffix = lock.name[len(SHARD_PREFIX):]
                if suffix.isdigit() and int(suffix) < self.shards:
                    shard_locks[int(suffix)] = lock
        target = math.ceil(self.shards / len(live))
        mine = sorted(n for n, lock in shard_locks.items()
                      if lock.owner == self.replica_id and lock.expires_at > now)
        held: set[int] = set()
        released: list[int] = []
        for number in mine:
            if len(held) >= target:  # a replica joined: hand the extras over
                # not ours from now on: another replica may claim it as soon as it is released
                self.owned = self.owned - {number}
                await self.store.release_lock(shard_lock_name(number), self.replica_id)
                released.append(number)
            elif await self.store.acquire_lock(shard_lock_name(number), self.replica_id,
                                               self.ttl):
                held.add(number)
        if len(held) < target:
            # Free or expired shards; start at an offset per replica so replicas claiming at
            # the same moment mostly try different shards.
            free = [n for n in range(self.shards) if n not in held and (
                n not in shard_locks or shard_locks[n].expires_at <= now)]
            offset = shard_of(self.replica_id, max(1, len(free))) if free else 0
            for number in free[offset:] + free[:offset]:
                if len(held) >= target:
                    break
                if await self.store.acquire_lock(shard_lock_name(number), self.replica_id,
                                                 self.ttl):
                    held.add(number)
        claimed = tuple(sorted(held.difference(mine)))
        overdue = [(now - shard_locks[n].expires_at).total_seconds() for n in claimed
                   if n in shard_locks]
        others = [(lock.expires_at - now).total_seconds() for lock in locks
                  if lock.owner != self.replica_id and lock.expires_at > now
                  and lock.name.startswith((REPLICA_PREFIX, SHARD_PREFIX))]
        self._next_expiry = asked + min(others) if others else None
        self.owned = frozenset(held)
        self.live_replicas = frozenset(live)
        self._valid_until = started + self.ttl * 0.8
        self.last = Beat(started, time.monotonic() - started, claimed, tuple(released),
                         max(overdue) if overdue else None)
        return self.owned

    def next_beat_in(self, pause: float) -> float:
        """Seconds until the next heartbeat: ``pause`` (about ``interval``), or sooner when
        another replica's lease expires before then — a dead replica's shards are claimed as
        they expire rather than up to a heartbeat later."""
        wait = pause
        if self._next_expiry is not None:
            # + a little: the database judges a lease expired once its clock passed it
            wait = min(wait, self._next_expiry + EXPIRY_MARGIN - time.monotonic())
        return max(MIN_PAUSE, wait)

    def owns(self, key: ResourceKey | str) -> bool:
        """True while this replica holds the shard of ``key`` (and its lease cannot have
        expired yet): reconcile only those resources."""
        shard = shard_of(key, self.shards)
        share = self._pass_share
        return (time.monotonic() < self._valid_until and shard in self.owned
                and (share is None or shard in share))

    @contextmanager
    def one_pass(self) -> Iterator[None]:
        """Within: ``owns`` answers for the shards held when the block began (and still held).
        A shard claimed meanwhile waits for the pass its claim triggers: that pass's recovery
        closes or adopts what the dead replica left open before anything plans it — a plan
        that saw the shard without its recovery deployed the revision a second time."""
        self._pass_share = self.owned
        try:
            yield
        finally:
            self._pass_share = None

    async def leave(self) -> None:
        """Release everything (clean shutdown): the others take over at their next heartbeat."""
        for number in sorted(self.owned):
            await self.store.release_lock(shard_lock_name(number), self.replica_id)
        await self.store.release_lock(REPLICA_PREFIX + self.replica_id, self.replica_id)
        self.owned = frozenset()
        self._valid_until = 0.0


async def shard_owners(store: Store, shards: int = DEFAULT_SHARDS) -> dict[int, str | None]:
    """Who holds each shard now (None: free or expired): what ``status`` can show."""
    now = await store_now(store)
    owners: dict[int, str | None] = dict.fromkeys(range(shards))
    for lock in await store.list_locks():
        suffix = lock.name[len(SHARD_PREFIX):]
        if (lock.name.startswith(SHARD_PREFIX) and suffix.isdigit() and int(suffix) < shards
                and lock.expires_at > now):
            owners[int(suffix)] = lock.owner
    return owners


__all__ = ["DEFAULT_SHARDS", "DEFAULT_TTL", "Beat", "ShardLeases", "shard_lock_name", "shard_of",
           "shard_owners", "store_now"]
