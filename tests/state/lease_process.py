"""A separate process for test_leases: contends for one lease through the Store.

Usage: python -m tests.state.lease_process URL TAG ATTEMPTS GO_FILE
Prints "ready" once connected, waits for GO_FILE, then makes ATTEMPTS tries at the lease
"shared"; prints a JSON summary. While holding the lease it does a read-modify-write of a counter
and claims the counter's next value as a webhook delivery id: the claim is a unique row, so two
holders at once would both read the same value and the second claim would fail (a violation).
Every tenth win is abandoned with a 20 ms TTL instead of released (a holder that died), so
expired-lease takeover is contended too.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from reconciler.spec.model import ResourceKey
from reconciler.state import open_store

COUNTER = ResourceKey("lease", "Job", "counter")
LEASE = "shared"


async def run(url: str, tag: str, attempts: int, go_file: Path) -> dict[str, object]:
    store = open_store(url)
    await store.list_locks()  # connected
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go file never appeared")
        await asyncio.sleep(0.005)
    summary: dict[str, object] = {"tag": tag, "attempts": attempts, "wins": 0, "abandoned": 0,
                                  "violations": []}
    violations: list[str] = []
    wins = 0
    try:
        for attempt in range(attempts):
            if not await store.acquire_lock(LEASE, tag, 5):
                await asyncio.sleep(random.uniform(0, 0.002))
                continue
            wins += 1
            holder = await store.lock_owner(LEASE)
            if holder != tag:
                violations.append(f"attempt {attempt}: won, but lock_owner says {holder!r}")
            current = await store.get_resource(COUNTER)
            value = int(current.desired_revision or 0) if current else 0
            if not await store.record_delivery("lease-epoch", str(value + 1)):
                violations.append(f"attempt {attempt}: epoch {value + 1} already claimed")
            await store.record_desired(COUNTER, revision=str(value + 1), spec_hash="c", spec={},
                                       config_commit=None)
            if wins % 10 == 0:
                await store.acquire_lock(LEASE, tag, 0.02)  # "die": leave a short lease behind
                summary["abandoned"] = int(str(summary["abandoned"])) + 1
            else:
                await store.release_lock(LEASE, tag)
    finally:
        await store.close()
    summary["wins"] = wins
    summary["violations"] = violations[:20]  # enough to diagnose, short enough to read
    summary["violation_count"] = len(violations)
    return summary


def main() -> None:
    url, tag, attempts, go_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    print(json.dumps(asyncio.run(run(url, tag, attempts, go_file))), flush=True)


if __name__ == "__main__":
    main()
