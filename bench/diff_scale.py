"""`reconciler diff` at fleet scale, as ratios against a bare YAML parse measured in the same run.

For each fleet size (default 1,000, 10,000 and 50,000 Services; 10,000 is ≈5.5 MB of YAML in
100 files) it makes a real git repo, records the Services as applied in a SQLite state database,
then times, baseline and ours alternately over --repeat rounds (medians):

* baseline: ``yaml.load_all(CSafeLoader)`` of the same files (in this process);
* cold ``reconciler diff`` (empty spec cache), as a subprocess — goal ≤ 1.5x baseline;
* warm ``reconciler diff`` with 1 % of the files changed — goal ≤ 0.2x baseline (10,000);
* no-op reconcile passes (nothing changed) in a fresh process that loads the fleet from the
  spec cache, as the daemon does at each poll — goal ≤ 200 ms at 10,000, ≤ 1 s at 50,000;
  and that process's peak RSS — goal ≤ 1 GB at 50,000.

Usage: python bench/diff_scale.py [--sizes 1000,10000,50000 | --services N] [--files F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from resource import RUSAGE_CHILDREN, RUSAGE_SELF, getrusage
from typing import Any

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


def baseline(repo: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of parsing every file, best of 2."""
    paths = sorted((repo / "fleet").glob("*.yaml"))
    best, best_cpu = float("inf"), float("inf")
    for _ in range(2):
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            with p.open("rb") as fh:
                list(yaml.load_all(fh, Loader=yaml.CSafeLoader))
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def children_cpu() -> float:
    usage = getrusage(RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def diff_cli(repo: Path, state: Path) -> tuple[float, float, int]:
    """(wall, CPU) seconds of a ``reconciler diff`` process, and its exit code. CPU time is the
    steadier of the two on a shared machine."""
    t0, c0 = time.perf_counter(), children_cpu()
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), "diff",
                           "--repo", str(repo), "--path", "fleet", "-o", "json"],
                          capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - t0, children_cpu() - c0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"diff failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, cpu, proc.returncode


async def record_applied(repo: Path, state: Path) -> None:
    """Record every Service of the repo's head as applied and healthy (the no-op pass's state)."""
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
    await engine.close()
    await store.close()


async def noop_passes(repo: Path, state: Path, passes: int) -> dict[str, Any]:
    """What a daemon does at each poll when nothing changed, in this (fresh) process: load the
    head from the spec cache, then reconcile passes that find nothing to do. Wall seconds of
    each pass, and the process's peak RSS (desired state, records, plan: the daemon's working
    set for this fleet, without its HTTP server and watchers)."""
    from reconciler.rollout.engine import Reconciler
    from reconciler.source.git import GitSource
    from reconciler.spec.cache import SpecCache
    from reconciler.spec.loader import load_desired_state
    from reconciler.state import default_db_url, open_store

    source = GitSource(str(repo), path="fleet")
    commit = source.sync().commit
    desired = load_desired_state(source.files(commit), commit=commit,
                                 cache=SpecCache(state / "cache" / "spec"))
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state, source=source)
    times, cpu, count = [], [], 0
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        result = await engine.reconcile(desired, trigger="bench")
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        count = len(result.outcomes)
        if any(o.action != "unchanged" for o in result.outcomes):
            raise SystemExit("the no-op pass found something to do")
    await engine.close()
    await store.close()
    rss_mb = getrusage(RUSAGE_SELF).ru_maxrss / 1024
    return {"times": times, "cpu": cpu, "count": count, "rss_mb": rss_mb}


def child(mode: str, repo: Path, state: Path, passes: int = 3) -> dict[str, Any]:
    """Run ``mode`` (record | noop) in a fresh interpreter: its RSS is its own."""
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(repo), str(state),
                           str(passes)], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_child(argv: list[str]) -> None:
    mode, repo, state, passes = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    os.environ.setdefault("DB_PASSWORD", "bench-only")
    if mode == "record":
        asyncio.run(record_applied(repo, state))
        print(json.dumps({}))
    else:
        print(json.dumps(asyncio.run(noop_passes(repo, state, passes))))


def measure(services: int, files: int, repeat: int) -> dict[str, Any]:
    """Every figure for a fleet of ``services``, in a work directory of its own."""
    work = Path(tempfile.mkdtemp(prefix="fraisier-bench-"))
    try:
        repo, state = work / "repo", work / "state"
        (repo / "fleet").mkdir(parents=True)
        (repo / "fleet" / "target.yaml").write_text(TARGET)
        write_files(repo, services, files)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "fleet")
        size = sum(p.stat().st_size for p in (repo / "fleet").glob("*.yaml"))
        child("record", repo, state)
        noop = child("noop", repo, state, passes=3)
        shutil.rmtree(state / "cache", ignore_errors=True)
        # baseline and ours alternately, so that both see the same load on the machine
        bases, colds, warms, sames = [], [], [], []
        cpu: dict[str, list[float]] = {"base": [], "cold": [], "warm": []}
        for run in range(repeat):
            base, base_cpu = baseline(repo)
            bases.append(base)
            cpu["base"].append(base_cpu)
            shutil.rmtree(state / "cache", ignore_errors=True)
            cold, cold_cpu, code_cold = diff_cli(repo, state)
            colds.append(cold)
            cpu["cold"].append(cold_cpu)
            same, _, code_same = diff_cli(repo, state)
            sames.append(same)
            write_files(repo, services, files, greeting=f"changed-{run}", only_file=0)
            git(repo, "commit", "-q", "-am", "1% changed")
            warm, warm_cpu, code_warm = diff_cli(repo, state)
            warms.append(warm)
            cpu["warm"].append(warm_cpu)
        return {
            "services": services, "files": files, "size": size,
            "base": statistics.median(bases), "cold": statistics.median(colds),
            "same": statistics.median(sames), "warm": statistics.median(warms),
            "ratios_cold": [c / b for c, b in zip(colds, bases, strict=True)],
            "ratios_warm": [w / b for w, b in zip(warms, bases, strict=True)],
            "cpu_ratio_cold": statistics.median(
                c / b for c, b in zip(cpu["cold"], cpu["base"], strict=True)),
            "cpu_ratio_warm": statistics.median(
                w / b for w, b in zip(cpu["warm"], cpu["base"], strict=True)),
            "codes": (code_cold, code_same, code_warm),
            "noop": statistics.median(noop["times"]), "noop_cpu": statistics.median(noop["cpu"]),
            "noop_times": noop["times"], "count": noop["count"], "rss_mb": noop["rss_mb"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000",
                        help="fleet sizes (Services), comma-separated; goals are checked at "
                             "10000 (diff, no-op) and 50000 (cold diff, no-op, RSS)")
    parser.add_argument("--services", type=int, help="one size only (same as --sizes N)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3,
                        help="baseline/cold/warm rounds per size, alternately (median)")
    add_json_flag(parser)
    args = parser.parse_args()
    sizes = [args.services] if args.services else [int(n) for n in args.sizes.split(",") if n]
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    startup = min(diff_cli_startup() for _ in range(3))
    figures: list[Figure] = []
    print(f"{'measure':52s} {'seconds':>8s} {'ratio':>7s}  goal")
    for services in sizes:
        m = measure(services, args.files, args.repeat)
        base, (code_cold, code_same, code_warm) = m["base"], m["codes"]
        print(f"fleet: {services} services in {args.files} files, {m['size'] / 1e6:.1f} MB YAML "
              f"(medians of {args.repeat} alternate rounds)")
        cold_goal = "<= 1.5" if services in (10_000, 50_000) else ""
        warm_goal = "<= 0.2" if services == 10_000 else ""
        noop_limit = {10_000: 0.2, 50_000: 1.0}.get(services)
        rows = [
            ("baseline yaml.load_all(CSafeLoader)", base, 1.0, ""),
            (f"cold diff (empty cache), exit {code_cold}", m["cold"], m["cold"] / base,
             cold_goal),
            (f"warm diff, same commit as the cold one, exit {code_same}", m["same"],
             m["same"] / base, ""),
            (f"warm diff, 1% of files changed, exit {code_warm}", m["warm"], m["warm"] / base,
             warm_goal),
            ("  of which: CLI start-up (reconciler --help)", startup, startup / base, ""),
        ]
        for label, seconds, ratio, goal in rows:
            print(f"  {label:50s} {seconds:8.3f} {ratio:7.2f}  {goal}")
        print(f"  {'round ratios, cold / warm':50s} "
              + " ".join(f"{r:.2f}" for r in m["ratios_cold"]) + " / "
              + " ".join(f"{r:.2f}" for r in m["ratios_warm"]))
        print(f"  {'CPU-time ratios (median), cold / warm':50s} {m['cpu_ratio_cold']:.2f} / "
              f"{m['cpu_ratio_warm']:.2f}")
        noop_label = f"no-op reconcile pass ({m['count']} resources)"
        print(f"  {noop_label:50s} {m['noop']:8.3f} "
              f"{'':7s}  " + (f"<= {noop_limit:.3f} s" if noop_limit else "")
              + f"  (passes: {' '.join(f'{t:.3f}' for t in m['noop_times'])}; "
              f"CPU {m['noop_cpu']:.3f} s)")
        print(f"  {'peak RSS, load + no-op passes (MB)':50s} {m['rss_mb']:8.0f} {'':7s}  "
              + ("<= 1024 MB" if services == 50_000 else ""))
        label = f"yaml.load_all of {services} Services"
        figures += [
            Figure(f"cold diff, {services} Services (exit {code_cold})", m["cold"], "s",
                   base, label, f"{cold_goal}x" if cold_goal else "",
                   at_most(m["cold"] / base, 1.5) if cold_goal else None),
            Figure(f"warm diff, {services} Services, 1% of files changed", m["warm"], "s", base,
                   label, f"{warm_goal}x" if warm_goal else "",
                   at_most(m["warm"] / base, 0.2) if warm_goal else None),
            Figure(f"no-op reconcile pass, {m['count']} resources", m["noop"], "s", None, "",
                   f"<= {noop_limit:.3f} s" if noop_limit else "",
                   m["noop"] <= noop_limit if noop_limit else None),
            Figure(f"peak RSS, {services} Services loaded + no-op passes", m["rss_mb"], "MB",
                   None, "", "<= 1024 MB" if services == 50_000 else "",
                   m["rss_mb"] <= 1024 if services == 50_000 else None),
        ]
    if args.json:
        emit("diff_scale", figures, sizes=sizes, files=args.files, repeat=args.repeat)


def diff_cli_startup() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reconciler", "--help"], capture_output=True,
                   check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
