"""A replica for test_shards / bench: heartbeats shard leases until killed.

Usage: python -m tests.state.shard_process URL REPLICA_ID TTL SHARDS
Prints one JSON line per heartbeat: {"replica": id, "owned": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from reconciler.state import open_store
from reconciler.state.shards import ShardLeases


async def run(url: str, replica: str, ttl: float, shards: int) -> None:
    store = open_store(url)
    leases = ShardLeases(store, replica, shards=shards, ttl=ttl)
    try:
        while True:
            owned = await leases.heartbeat()
            print(json.dumps({"replica": replica, "owned": sorted(owned)}), flush=True)
            await asyncio.sleep(leases.interval)
    finally:
        await store.close()


def main() -> None:
    url, replica, ttl, shards = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    asyncio.run(run(url, replica, ttl, shards))


if __name__ == "__main__":
    main()
