"""A replica whose event loop a long pass keeps busy: the daemon's ``ShardKeeper`` holds its
shards while the loop runs CPU-bound work in long stretches (what SSH crypto, JSON and plans of
a big pass do), yielding only for a moment between them.

Usage: python -m tests.state.busy_replica URL REPLICA_ID TTL SHARDS BUSY_SECONDS OUT
Writes to OUT one JSON line per sample (every 20 ms, from a thread of its own) of the shards
``owns()`` answers True for: {"replica": id, "t": epoch, "owns": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

from reconciler.daemon.wakeups import ShardKeeper
from reconciler.state import open_store
from reconciler.state.shards import ShardLeases, shard_of


def watch(leases: ShardLeases, replica: str, shards: int, done: threading.Event,
          out: Path) -> None:
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < shards:
        keys.setdefault(shard_of(f"default/Service/s{i}", shards), f"default/Service/s{i}")
        i += 1
    with out.open("a", encoding="utf-8") as samples:
        while not done.wait(0.02):
            owns = [n for n, key in sorted(keys.items()) if leases.owns(key)]
            samples.write(json.dumps({"replica": replica, "t": time.time(), "owns": owns}) + "\n")
            samples.flush()


def busy(seconds: float) -> None:
    """CPU-bound Python, never yielding to the loop (the GIL is still switched)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(2000))


async def run(url: str, replica: str, ttl: float, shards: int, busy_s: float,
              out: Path) -> None:
    leases = ShardLeases(open_store(url), replica, shards=shards, ttl=ttl)
    keeper = ShardKeeper(leases, lambda _reason: None)
    done = threading.Event()
    threading.Thread(target=watch, args=(leases, replica, shards, done, out), daemon=True).start()
    await keeper.start()
    try:
        while True:
            busy(busy_s)
            await asyncio.sleep(0.01)
    finally:
        done.set()
        await keeper.stop()


def main() -> None:
    url, replica = sys.argv[1], sys.argv[2]
    asyncio.run(run(url, replica, float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]),
                    Path(sys.argv[6])))


if __name__ == "__main__":
    main()
