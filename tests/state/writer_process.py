"""A separate process for test_concurrency: hammers one SQLite file through the Store.

Usage: python -m tests.state.writer_process URL TAG N GO_FILE
Prints "ready" once connected, waits for GO_FILE, then migrates and writes; prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from reconciler.spec.model import ResourceKey
from reconciler.state import open_store

SHARED = ResourceKey("prod", "Service", "shared")
COUNTER = ResourceKey("prod", "Job", "counter")


async def run(url: str, tag: str, n: int, go_file: Path) -> dict[str, int]:
    store = open_store(url)
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit("go file never appeared")
        time.sleep(0.005)
    summary = {"migrated": 0, "shared_deliveries": 0, "lock_wins": 0}
    try:
        summary["migrated"] = len(await store.migrate())  # both processes race here
        own = ResourceKey("prod", "Service", f"own-{tag}")
        for i in range(n):
            await store.record_desired(
                own, revision=f"{tag}-{i}", spec_hash=f"h{i}", spec={"i": i}, config_commit=None
            )
            d = await store.create_deployment(
                SHARED, from_revision=None, to_revision=f"{tag}-{i}", config_commit=None,
                trigger=tag, strategy="rolling",
            )
            await store.transition(d.id, "in_progress")
            step = await store.start_step(d.id, "act", tag)
            await store.finish_step(step, "succeeded")
            await store.transition(d.id, "succeeded")
            if not await store.record_delivery("github", f"{tag}-{i}"):
                raise SystemExit(f"own delivery {tag}-{i} reported as a replay")
            if await store.record_delivery("github", f"shared-{i}"):
                summary["shared_deliveries"] += 1
            # read-modify-write guarded only by the lease: lost updates would show a lock bug
            if await store.acquire_lock("counter", tag, 60):
                summary["lock_wins"] += 1
                current = await store.get_resource(COUNTER)
                value = int(current.desired_revision or 0) if current else 0
                await store.record_desired(
                    COUNTER, revision=str(value + 1), spec_hash="c", spec={}, config_commit=None
                )
                await store.release_lock("counter", tag)
    finally:
        await store.close()
    return summary


def main() -> None:
    url, tag, n, go_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    print(json.dumps(asyncio.run(run(url, tag, n, go_file))), flush=True)


if __name__ == "__main__":
    main()
