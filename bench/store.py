"""Store benchmark: journal write rate, a 10,000-resource status read, replica takeover.

    .venv/bin/python bench/store.py [--backends sqlite,postgresql,mysql] [--deployments 300]
                                    [--resources 10000] [--replicas 3] [--ttl 3] [--json]

Per backend, on a throw-away database (PostgreSQL 127.0.0.1:5432 user postgres, MariaDB
127.0.0.1:3306 root; dropped afterwards):
- journal: deployments recorded per second, each = create + in_progress + start_step +
  finish_step + succeeded (5 write transactions), by one writer and by 4 concurrent writers;
- status read: ``list_resources()`` over N resources, full and ``with_specs=False``;
- replicas (server backends): R processes share 64 shard leases over the N resources; one is
  SIGKILLed; time until every shard it held is held by a survivor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _figures import Figure, emit  # noqa: E402

from reconciler.daemon.wakeups import ShardKeeper  # noqa: E402
from reconciler.spec.model import ResourceKey  # noqa: E402
from reconciler.state import Store, open_store  # noqa: E402
from reconciler.state.shards import ShardLeases, shard_of, shard_owners  # noqa: E402

SHARDS = 64


@contextmanager
def throwaway(backend: str, workdir: Path) -> Iterator[str]:
    name = f"fraisier_bench_{uuid.uuid4().hex[:10]}"
    if backend == "sqlite":
        yield f"sqlite:///{workdir / (name + '.db')}"
    elif backend == "postgresql":
        import psycopg

        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    else:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        try:
            conn.cursor().execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
            yield f"mysql://root@127.0.0.1:3306/{name}"
        finally:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
            conn.close()


async def deploy_once(store: Store, key: ResourceKey, revision: str) -> None:
    deployment = await store.create_deployment(
        key, from_revision=None, to_revision=revision, config_commit="c", trigger="bench",
        strategy="rolling", spec={"image": f"app:{revision}"})
    await store.transition(deployment.id, "in_progress")
    step = await store.start_step(deployment.id, "restart", "host-1")
    await store.finish_step(step, "succeeded")
    await store.transition(deployment.id, "succeeded")


async def bench_journal(store: Store, deployments: int) -> dict[str, float]:
    key = ResourceKey("bench", "Service", "serial")
    started = time.perf_counter()
    for i in range(deployments):
        await deploy_once(store, key, f"r{i}")
    serial = deployments / (time.perf_counter() - started)

    async def writer(w: int) -> None:
        key = ResourceKey("bench", "Service", f"parallel-{w}")
        for i in range(deployments // 4):
            await deploy_once(store, key, f"r{i}")

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(4)))
    parallel = 4 * (deployments // 4) / (time.perf_counter() - started)
    return {"deployments_per_s": round(serial, 1), "writes_per_s": round(serial * 5, 1),
            "deployments_per_s_4_writers": round(parallel, 1)}


async def bench_status(store: Store, resources: int) -> dict[str, float]:
    spec = {"image": "registry.local/app:1.0", "replicas": 2, "env": {"A": "1", "B": "2"},
            "health": {"http": "/healthz", "interval": "10s"}}
    queue = list(range(resources))

    async def filler() -> None:
        while queue:
            i = queue.pop()
            await store.record_desired(ResourceKey("prod", "Service", f"svc-{i:05d}"),
                                       revision="r1", spec_hash=f"h{i}", spec=spec,
                                       config_commit="c1")

    started = time.perf_counter()
    await asyncio.gather(*(filler() for _ in range(8)))
    fill = resources / (time.perf_counter() - started)
    full, light = [], []
    for _ in range(3):
        t = time.perf_counter()
        rows = await store.list_resources()
        full.append(time.perf_counter() - t)
        assert len(rows) >= resources
        t = time.perf_counter()
        await store.list_resources(with_specs=False)
        light.append(time.perf_counter() - t)
    return {"record_desired_per_s_8_tasks": round(fill, 1),
            "status_read_s": round(statistics.median(full), 3),
            "status_read_light_s": round(statistics.median(light), 3)}


def bench_replicas(url: str, replicas: int, ttl: float, resources: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_DB")}
    procs = {f"replica-{i}": subprocess.Popen(
        [sys.executable, __file__, "--replica", url, f"replica-{i}", str(ttl)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(replicas)}

    async def measure() -> dict[str, Any]:
        store = open_store(url)
        try:
            deadline = time.monotonic() + 60
            while True:
                owners = await shard_owners(store, SHARDS)
                counts = Counter(owners.values())
                if (None not in counts and len(counts) == replicas
                        and min(counts.values()) >= SHARDS // replicas - 1):  # balanced
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"replicas never covered every shard: {counts}")
                await asyncio.sleep(0.1)
            victim = "replica-0"
            share = {n for n, o in owners.items() if o == victim}
            affected = sum(1 for i in range(resources)
                           if shard_of(f"prod/Service/svc-{i:05d}", SHARDS) in share)
            procs[victim].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            while True:
                owners = await shard_owners(store, SHARDS)
                if all(owners[n] not in (None, victim) for n in share):
                    break
                await asyncio.sleep(0.02)
            return {"replicas": replicas, "ttl_s": ttl, "victim_shards": len(share),
                    "victim_resources": affected,
                    "takeover_s": round(time.monotonic() - killed, 2)}
        finally:
            await store.close()

    try:
        return asyncio.run(measure())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def replica_main(url: str, replica: str, ttl: float) -> None:
    """A replica holding its shards as the daemon does (``ShardKeeper``) until killed."""
    keeper = ShardKeeper(ShardLeases(open_store(url), replica, shards=SHARDS, ttl=ttl),
                         lambda _reason: None)
    await keeper.start()
    try:
        await asyncio.Event().wait()
    finally:
        await keeper.stop()


async def bench_backend(url: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(url)
    try:
        await store.migrate()
        result = await bench_journal(store, args.deployments)
        result.update(await bench_status(store, args.resources))
        return result
    finally:
        await store.close()


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--replica":
        asyncio.run(replica_main(sys.argv[2], sys.argv[3], float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument("--deployments", type=int, default=300)
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            with throwaway(backend, Path(tmp)) as url:
                results[backend] = asyncio.run(bench_backend(url, args))
                if backend != "sqlite" and args.replicas > 1:
                    results[backend]["replica_takeover"] = bench_replicas(
                        url, args.replicas, args.ttl, args.resources)
            if not args.json:
                print(backend, json.dumps(results[backend]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        emit("store", store_figures(results, args), backends=args.backends,
             deployments=args.deployments, resources=args.resources, replicas=args.replicas,
             ttl=args.ttl)


def store_figures(results: dict[str, Any], args: argparse.Namespace) -> list[Figure]:
    """Per backend, against SQLite (the default, embedded backend) measured in the same run."""
    figures = []
    for backend, r in results.items():
        base = results.get("sqlite", {}) if backend != "sqlite" else {}
        label = "SQLite" if base else ""
        figures.append(Figure(
            f"{backend}: deployments/s, 1 writer (5 write transactions each)",
            r["deployments_per_s"], "/s", base.get("deployments_per_s"), label))
        figures.append(Figure(
            f"{backend}: deployments/s, 4 concurrent writers",
            r["deployments_per_s_4_writers"], "/s", base.get("deployments_per_s_4_writers"),
            label))
        figures.append(Figure(
            f"{backend}: status read, {args.resources} resources",
            r["status_read_s"], "s", base.get("status_read_s"), label))
        takeover = r.get("replica_takeover")
        if takeover:
            limit = args.ttl * 4 / 3
            figures.append(Figure(
                f"{backend}: takeover of a killed replica's shards ({args.replicas} replicas)",
                takeover["takeover_s"], "s", args.ttl, "lease TTL", f"<= {limit:g} s (TTL x 4/3)",
                takeover["takeover_s"] <= limit))
    return figures


if __name__ == "__main__":
    main()
