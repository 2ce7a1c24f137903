"""An idle daemon with 1,000 resources: CPU % of one core and RSS over 60 s.

Goals: ≤ 1 % of a core and ≤ 150 MB RSS.

Scenarios (each a real ``python -m reconciler daemon`` at the default ``--interval 30s``):

* ``services`` (default): 1,000 Services really running (``sleep`` processes started by the
  bare_metal provider's local supervisor through a real ``reconciler apply``). This is the honest
  idle daemon: every poll plans 1,000 resources and every self-heal pass observes 1,000 live
  processes, and nothing needs doing.
* ``jobs``: 1,000 Jobs recorded as applied and succeeded in the SQLite state database (as
  bench/diff_scale.py does); the self-heal loop observes only Services, so this measures the
  poll/plan loop alone.

Measured from /proc after the daemon's first pass is done and a settle period: CPU = Δ(utime +
stime) of the daemon over the window, plus that of any child process it started meanwhile
(git), divided by the wall time; RSS sampled every second (VmRSS; max, mean and VmHWM).

Usage: python bench/idle.py [--resources 1000] [--seconds 60] [--scenario services|jobs|both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _figures import Figure, add_json_flag, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import free_port

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local, environment: bench}}
spec: {{provider: bare_metal, transport: local, root: {root}, keepReleases: 1}}
"""

SERVICE = """apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: svc-{i:04d}, environment: bench, labels: {{team: team-{team}}}}}
spec:
  target: local
  source: {{path: app}}
  command: [sleep, infinity]
  env: {{LOG_LEVEL: info, REGION: eu-west-{team}}}
  stopTimeout: 2s
"""

JOB = """apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: job-{i:04d}, environment: bench, labels: {{team: team-{team}}}}}
spec:
  target: local
  source: {{path: app}}
  command: [/bin/true]
  env: {{LOG_LEVEL: info, REGION: eu-west-{team}}}
  timeout: 1m
"""




def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c",
                    "user.email=bench@example.invalid", *args], check=True, capture_output=True)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17.
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def descendants_ticks(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for child in children(pid):
        try:
            out[child] = cpu_ticks(child)[0]
        except (OSError, IndexError):
            continue
        out.update(descendants_ticks(child))
    return out


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def write_fleet(repo: Path, root: Path, kind: str, count: int) -> None:
    fleet = repo / "fleet"
    fleet.mkdir(parents=True)
    (repo / "app").mkdir()
    (repo / "app" / "README").write_text("what every release contains\n")
    (fleet / "target.yaml").write_text(TARGET.format(root=root))
    template = SERVICE if kind == "services" else JOB
    per_file = 50
    for f in range(0, count, per_file):
        docs = [template.format(i=i, team=i % 7) for i in range(f, min(count, f + per_file))]
        (fleet / f"{kind}-{f // per_file:03d}.yaml").write_text("---\n".join(docs))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fleet")


async def record_jobs_applied(repo: Path, state: Path) -> int:
    """Jobs recorded as applied and succeeded, without running them (nothing left to do)."""
    from reconciler.plan.planner import ACTING
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
    for resource in desired.resources.values():
        revision = engine.revision_of(resource, desired)
        await store.record_desired(resource.key, revision=revision, spec_hash=resource.hash,
                                   spec=resource.document(), config_commit=commit)
        await store.record_applied(resource.key, revision=revision, spec_hash=resource.hash,
                                   spec=resource.document(), config_commit=commit)
        await store.update_status(resource.key, sync_status="Synced", health_status="Healthy",
                                  last_result="succeeded")
    # A pass over the recorded state must find nothing to do (no Job runs again).
    result = await engine.reconcile(desired, trigger="bench")
    await engine.close()
    await store.close()
    acted = [o for o in result.outcomes if o.action in ACTING]
    if not result.converged:
        raise SystemExit(f"recorded Jobs did not converge: {result.failed()[:3]}")
    return len(acted)


def stop_services(root: Path) -> None:
    for pidfile in root.rglob("*.pid"):
        try:
            os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGKILL)
        except (ValueError, KeyError, OSError):
            continue


def measure(work: Path, kind: str, count: int, seconds: float) -> dict[str, float]:
    repo, state, root = work / f"repo-{kind}", work / f"state-{kind}", work / f"root-{kind}"
    write_fleet(repo, root, kind, count)
    setup = time.monotonic()
    if kind == "services":
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "apply",
             "--repo", str(repo), "--path", "fleet"],
            capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"apply failed ({proc.returncode}): {proc.stderr[-3000:]}")
        running = sum(1 for _ in root.rglob("*.pid"))
        print(f"  {kind}: apply of {count} Services took {time.monotonic() - setup:.1f} s, "
              f"{running} pidfiles", file=sys.stderr, flush=True)
    else:
        acted = asyncio.run(record_jobs_applied(repo, state))
        print(f"  {kind}: {count} Jobs recorded as applied in "
              f"{time.monotonic() - setup:.1f} s; a pass over them acted on {acted}",
              file=sys.stderr, flush=True)

    listen = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(state), "daemon",
         "--repo", str(repo), "--path", "fleet", "--listen", f"127.0.0.1:{listen}",
         "--interval", "30s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[dict[str, object]] = []
    first_pass = threading.Event()

    def read() -> None:
        assert daemon.stderr is not None
        for line in daemon.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            lines.append(event)
            if event.get("msg") == "reconcile pass done":
                first_pass.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not first_pass.wait(300):
            raise SystemExit(f"daemon did not finish its first pass: {lines[-10:]}")
        time.sleep(5)  # settle: start-up work (imports, first heal pass) is not idling
        mark = len(lines)
        own0, reaped0 = cpu_ticks(daemon.pid)
        kids0 = descendants_ticks(daemon.pid)
        kids_last = dict(kids0)
        rss: list[int] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            rss.append(status_kb(daemon.pid, "VmRSS"))
            for pid, ticks in descendants_ticks(daemon.pid).items():
                kids_last[pid] = ticks
            time.sleep(1.0)
        wall = time.monotonic() - t0
        own1, reaped1 = cpu_ticks(daemon.pid)
        hwm = status_kb(daemon.pid, "VmHWM")
        kids = sum(ticks - kids0.get(pid, 0) for pid, ticks in kids_last.items())
        window = lines[mark:]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        stop_services(root)
    own = (own1 - own0) / TICKS
    reaped = (reaped1 - reaped0) / TICKS
    child_s = kids / TICKS + reaped
    passes = sum(1 for e in window if e.get("msg") == "reconcile pass done")
    drift = sum(1 for e in window if e.get("msg") == "drift detected")
    deploys = sum(1 for e in window if e.get("phase") == "deploying")
    warnings = sum(1 for e in window if e.get("level") in ("warning", "error"))
    return {"wall_s": wall, "cpu_s": own, "child_cpu_s": child_s,
            "cpu_pct": 100 * own / wall, "cpu_pct_with_children": 100 * (own + child_s) / wall,
            "rss_max_mb": max(rss) / 1024, "rss_mean_mb": sum(rss) / len(rss) / 1024,
            "hwm_mb": hwm / 1024, "passes": passes, "drift": drift, "deploys": deploys,
            "warnings": warnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scenario", choices=["services", "jobs", "both"], default="both")
    add_json_flag(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraisier-idle-"))
    results: dict[str, dict[str, float]] = {}
    try:
        kinds = ["services", "jobs"] if args.scenario == "both" else [args.scenario]
        for kind in kinds:
            results[kind] = measure(work, kind, args.resources, args.seconds)
    finally:
        for root in work.glob("root-*"):
            stop_services(root)
        shutil.rmtree(work, ignore_errors=True)
    print(f"idle daemon, {args.resources} resources, --interval 30s, window "
          f"{args.seconds:g} s (goals: <= 1 % of a core, <= 150 MB RSS)")
    print(f"{'scenario':10s} {'CPU %':>7s} {'+children':>9s} {'RSS max':>8s} {'mean':>7s} "
          f"{'VmHWM':>7s} {'passes':>6s} {'drift':>5s} {'deploys':>7s} {'warn':>5s}")
    for kind, r in results.items():
        print(f"{kind:10s} {r['cpu_pct']:7.2f} {r['cpu_pct_with_children']:9.2f} "
              f"{r['rss_max_mb']:7.1f}M {r['rss_mean_mb']:6.1f}M {r['hwm_mb']:6.1f}M "
              f"{int(r['passes']):6d} {int(r['drift']):5d} {int(r['deploys']):7d} "
              f"{int(r['warnings']):5d}")
    for kind, r in results.items():
        ok_cpu = r["cpu_pct_with_children"] <= 1.0
        ok_rss = r["rss_max_mb"] <= 150
        print(f"{kind}: CPU goal {'met' if ok_cpu else 'NOT met'}, "
              f"RSS goal {'met' if ok_rss else 'NOT met'}")
    if args.json:
        figures = []
        for kind, r in results.items():
            what = f"idle daemon, {args.resources} {kind}, {args.seconds:g} s window"
            figures.append(Figure(f"{what}: CPU (% of a core, with children)",
                                  r["cpu_pct_with_children"], "%", None, "", "<= 1 %",
                                  r["cpu_pct_with_children"] <= 1.0))
            figures.append(Figure(f"{what}: RSS max", r["rss_max_mb"], "MB", None, "",
                                  "<= 150 MB", r["rss_max_mb"] <= 150))
        emit("idle", figures, resources=args.resources, seconds=args.seconds,
             scenario=args.scenario)


if __name__ == "__main__":
    main()
