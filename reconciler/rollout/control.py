"""Operator signals to a rollout in progress: ``promote`` and ``abort``.

A rollout may run in another process (the daemon) than the CLI that signals it, so signals go
through the database every backend already shares: a short lease named
``signal:<verb>:<resource>`` whose owner is who sent it. The rollout polls for it at every pause,
between batches and steps, and consumes it (releases the lease) when it acts on it. A signal
nobody consumes expires with its TTL, so a stale ``promote`` cannot skip a later rollout's pause.
"""

from __future__ import annotations

from reconciler.spec.model import ResourceKey
from reconciler.state.store import Store

PROMOTE = "promote"
PROMOTE_FULL = "promote-full"  # skip every remaining step
ABORT = "abort"
VERBS = (PROMOTE, PROMOTE_FULL, ABORT)
SIGNAL_TTL_S = 3600.0


def signal_lock(verb: str, key: ResourceKey) -> str:
    return f"signal:{verb}:{key}"


async def send(store: Store, key: ResourceKey, verb: str, actor: str) -> None:
    if verb not in VERBS:
        raise ValueError(f"unknown signal {verb!r}")
    name = signal_lock(verb, key)
    holder = await store.lock_owner(name)
    if holder is not None and holder != actor:
        await store.release_lock(name, holder)  # the newest sender is the one recorded
    await store.acquire_lock(name, actor, ttl_seconds=SIGNAL_TTL_S)


async def pending(store: Store, key: ResourceKey, verb: str) -> str | None:
    """Who sent ``verb`` for ``key`` and has not been answered yet (None: nobody)."""
    return await store.lock_owner(signal_lock(verb, key))


async def consume(store: Store, key: ResourceKey, verb: str) -> str | None:
    """Take the signal: returns its sender, or None when there is none."""
    name = signal_lock(verb, key)
    holder = await store.lock_owner(name)
    if holder is not None:
        await store.release_lock(name, holder)
    return holder


async def clear(store: Store, key: ResourceKey) -> None:
    """Drop every signal of ``key`` (a rollout starts clean): one query finds them (at every
    deploy, and there is seldom one)."""
    for name, holder in (await store.lock_owners([signal_lock(v, key) for v in VERBS])).items():
        await store.release_lock(name, holder)
