"""Resource leases: who holds a resource while deploying it, taken over from a dead process on
this host, renewed while the deployment runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.rollout.core import EngineCore

log = logging.getLogger("reconciler.rollout")


LEASE_SECONDS = 60.0  # a resource lease; renewed every LEASE_SECONDS / 3 while deploying


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_identity() -> str:
    """``host:pid:starttime`` — who holds a lease, checkable for liveness on this host."""
    pid = os.getpid()
    return f"{os.uname().nodename}:{pid}:{_start_time(pid) or 0}"


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is elsewhere (trust the lease)."""
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != os.uname().nodename or not pid_text.isdigit():
        return None
    return _start_time(int(pid_text)) == start



class Leases(EngineCore):
    """Resource leases held by this process."""

    async def take_lease(self, name: str) -> bool:
        """Take a resource lease; a lease left by a dead process on this host is taken over."""
        if await self.store.acquire_lock(name, self.owner, ttl_seconds=LEASE_SECONDS):
            return True
        holder = await self.store.lock_owner(name)
        if holder is not None and owner_alive(holder) is False:
            log.warning("taking over a lease of a dead reconciler",
                        extra={"lock": name, "holder": holder})
            await self.store.release_lock(name, holder)
            return await self.store.acquire_lock(name, self.owner, ttl_seconds=LEASE_SECONDS)
        return False

    async def renew(self, name: str) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                renewed = await self.store.acquire_lock(name, self.owner,
                                                        ttl_seconds=LEASE_SECONDS)
            except ReconcilerError as exc:
                log.warning("lease renewal failed", extra={"lock": name, "error": exc.message})
                continue  # the lease is still ours until it expires; try again
            if not renewed:
                # Another reconciler took the resource (we stalled past the TTL): no further
                # provider step may start under this deployment.
                log.error("lease lost; stopping this deployment", extra={"lock": name})
                self.lost_leases.add(name)
                return
