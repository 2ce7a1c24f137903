"""`reconciler diff` at fleet scale, as ratios against a bare YAML parse measured in the same run.

Generates N Services (default 10,000, ≈5.5 MB of YAML in 100 files) in a real git repo, records
them as applied in a SQLite state database, then times:

* baseline: ``yaml.load_all(CSafeLoader)`` of the same files (in this process);
* cold ``reconciler diff`` (empty spec cache), as a subprocess — goal ≤ 1.5x baseline;
* warm ``reconciler diff`` with 1 % of the files changed — goal ≤ 0.2x baseline;
* a no-op reconcile pass in-process (nothing changed) — goal ≤ 200 ms.

Usage: python bench/diff_scale.py [--services N] [--files F]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _figures import Figure, add_json_flag, at_most, emit

DOC = """apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: svc-{i:05d}
  environment: bench
  labels: {{team: team-{team}, tier: backend, app: svc-{i:05d}}}
spec:
  target: fleet
  command: [/usr/local/bin/server, --port, "{port}", --workers, "4"]
  env:
    LOG_LEVEL: info
    REGION: eu-west-{team}
    FEATURE_FLAGS: "a,b,c"
    DB_PASSWORD: {{env: DB_PASSWORD}}
    GREETING: "{greeting}"
  stopTimeout: 10s
  health:
    http: {{url: "http://{{host}}:{port}/healthz", expectStatus: 200}}
    interval: 2s
    timeout: 1s
    failureThreshold: 3
  strategy: {{type: recreate}}
"""

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: fleet, environment: bench}
spec: {provider: bare_metal, transport: local}
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c",
                    "user.email=bench@example.invalid", *args], check=True, capture_output=True)


def write_files(repo: Path, services: int, files: int, greeting: str = "hello",
                only_file: int | None = None) -> None:
    per = services // files
    for f in range(files):
        if only_file is not None and f != only_file:
            continue
        docs = [DOC.format(i=i, team=i % 7, port=20000 + i % 40000,
                           greeting=greeting if only_file is None or f == only_file else "hello")
                for i in range(f * per, (f + 1) * per)]
        (repo / "fleet" / f"services-{f:03d}.yaml").write_text("---\n".join(docs))


def baseline(repo: Path) -> float:
    paths = sorted((repo / "fleet").glob("*.yaml"))
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for p in paths:
            with p.open("rb") as fh:
                list(yaml.load_all(fh, Loader=yaml.CSafeLoader))
        best = min(best, time.perf_counter() - t0)
    return best


def diff_cli(repo: Path, state: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), "diff",
                           "--repo", str(repo), "--path", "fleet", "-o", "json"],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"diff failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, proc.returncode


async def record_applied(repo: Path, state: Path) -> tuple[float, int]:
    from reconciler.rollout.engine import Reconciler
    from reconciler.source.git import GitSource
    from reconciler.spec.cache import SpecCache
    from reconciler.spec.loader import load_desired_state
    from reconciler.state import default_db_url, open_store

    source = GitSource(str(repo), path="fleet")
    commit = source.sync().commit
    cache = SpecCache(state / "cache" / "spec")
    desired = load_desired_state(source.files(commit), commit=commit, cache=cache)
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state, source=source)
    for resource in desired.resources.values():
        revision = engine.revision_of(resource, desired)
        await store.record_desired(resource.key, revision=revision, spec_hash=resource.hash,
                                   spec=resource.document(), config_commit=commit)
        await store.record_applied(resource.key, revision=revision, spec_hash=resource.hash,
                                   spec=resource.document(), config_commit=commit)
        await store.update_status(resource.key, sync_status="Synced", health_status="Healthy",
                                  last_result="succeeded")
    # The no-op pass: everything recorded as applied, nothing to do.
    t0 = time.perf_counter()
    result = await engine.reconcile(desired, trigger="bench")
    noop = time.perf_counter() - t0
    await engine.close()
    await store.close()
    return noop, len(result.outcomes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    add_json_flag(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraisier-bench-"))
    try:
        repo, state = work / "repo", work / "state"
        (repo / "fleet").mkdir(parents=True)
        (repo / "fleet" / "target.yaml").write_text(TARGET)
        write_files(repo, args.services, args.files)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "fleet")
        size = sum(p.stat().st_size for p in (repo / "fleet").glob("*.yaml"))
        os.environ.setdefault("DB_PASSWORD", "bench-only")

        base = baseline(repo)
        noop, count = asyncio.run(record_applied(repo, state))
        shutil.rmtree(state / "cache", ignore_errors=True)
        cold, code_cold = diff_cli(repo, state)
        warm_same, code_same = diff_cli(repo, state)
        write_files(repo, args.services, args.files, greeting="changed", only_file=0)
        git(repo, "commit", "-q", "-am", "1% changed")
        warm, code_warm = diff_cli(repo, state)
        startup = min(diff_cli_startup() for _ in range(3))

        print(f"fleet: {args.services} services in {args.files} files, {size / 1e6:.1f} MB YAML")
        print(f"{'measure':44s} {'seconds':>8s} {'ratio':>7s}  goal")
        print(f"{'baseline yaml.load_all(CSafeLoader)':44s} {base:8.3f} {1.0:7.2f}")
        print(f"{'cold diff (empty cache), exit ' + str(code_cold):44s} {cold:8.3f} "
              f"{cold / base:7.2f}  <= 1.5")
        print(f"{'warm diff, nothing changed, exit ' + str(code_same):44s} {warm_same:8.3f} "
              f"{warm_same / base:7.2f}")
        print(f"{'warm diff, 1% of files changed, exit ' + str(code_warm):44s} {warm:8.3f} "
              f"{warm / base:7.2f}  <= 0.2")
        print(f"{'  of which: CLI start-up (reconciler --help)':44s} {startup:8.3f} "
              f"{startup / base:7.2f}")
        print(f"{f'no-op reconcile pass ({count} resources)':44s} {noop:8.3f} "
              f"{'':7s}  <= 0.200 s")
        if args.json:
            label = f"yaml.load_all of {args.services} Services"
            emit("diff_scale", [
                Figure(f"cold diff, {args.services} Services (exit {code_cold})", cold, "s",
                       base, label, "<= 1.5x", at_most(cold / base, 1.5)),
                Figure("warm diff, 1% of files changed", warm, "s", base, label, "<= 0.2x",
                       at_most(warm / base, 0.2)),
                Figure(f"no-op reconcile pass, {count} resources", noop, "s", base, label,
                       "<= 0.200 s", noop <= 0.2),
            ], services=args.services, files=args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def diff_cli_startup() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reconciler", "--help"], capture_output=True,
                   check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
