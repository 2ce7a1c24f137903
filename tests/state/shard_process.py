"""A replica for test_shards: holds shard leases as the daemon does (its ``ShardKeeper``) until
killed.

Usage: python -m tests.state.shard_process URL REPLICA_ID TTL SHARDS
Prints one JSON line whenever its share changes: {"replica": id, "owned": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from reconciler.daemon.wakeups import ShardKeeper
from reconciler.state import open_store
from reconciler.state.shards import ShardLeases


async def run(url: str, replica: str, ttl: float, shards: int) -> None:
    leases = ShardLeases(open_store(url), replica, shards=shards, ttl=ttl)

    def changed(_reason: str) -> None:
        print(json.dumps({"replica": replica, "owned": sorted(leases.owned)}), flush=True)

    keeper = ShardKeeper(leases, changed)
    await keeper.start()
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await keeper.stop()


def main() -> None:
    url, replica, ttl, shards = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    asyncio.run(run(url, replica, ttl, shards))


if __name__ == "__main__":
    main()
