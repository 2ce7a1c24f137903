"""Benchmark: the fleet of bench/fleet.py under 3 `reconciler daemon --ha` replicas on one
PostgreSQL database — how the work is split, takeover after kill -9, double deploys (issue 17).

The same model as bench/fleet.py (its ``Fleet`` writes the config repo: one Target per host, S
Services on each, ``busybox httpd`` on its own loopback port, health ``http`` every 100 ms), on
the 20 fleet hosts of ``/var/tmp/fraisier-fleet`` (see fleet.py's docstring), a fresh PostgreSQL
database (dropped afterwards) and R replicas (``daemon --ha``, each its own state dir and metrics
port, ``--interval 30s``, ``--shard-ttl`` 15 s as documented). The config repo is a local git
repo: each replica watches its refs, so a commit reaches every replica within ~0.1 s — the fastest
trigger the daemon has and the one a local repo gets in production.

Passes, each timed from the commit (after a kill: from the kill) until every unit answers the
new version over HTTP, checked from here on every unit's port as fleet.py's ``verify`` does
("served"), and until every Service's deployment of the pass succeeded in the deployment journal
("recorded"):

* warm-up: the Targets only; the replicas start, split the 64 shards and go idle;
* converge: every Service appears (hosts wiped: no release, no unit);
* change-all: a new revision of the shared app directory, every unit restarts;
* kill during rollout: a new revision is committed; once ``--kill-at`` of the units serve it,
  the replica holding the most shards gets SIGKILL (its process group). Takeover = from the kill
  until the survivors hold every shard;
* kill before commit: a fresh replica joins (back to R), then the replica holding the most
  shards is killed and a new revision committed right after.

Split: resources per replica (each Service's shard, ``reconciler.state.shards.shard_of``, and the
owner of that shard's lease in ``tb_lock``) and deployments per replica (the delta of each
replica's ``reconciler_deployments_total`` on its ``/metrics``). Double deploys, counted twice
independently: (1) on the hosts, systemd's "Started" journal entries (MESSAGE_ID of a started
job) of every ``fraisier-*`` unit, grouped by the pass (= revision) whose window they fall in —
a unit started more than once in one pass was deployed twice for the same revision; (2) in the
database's deployment journal, more than one deployment of a resource to the same revision. Both
are printed apart when the earlier deployment was one a killed replica left open and the new
owner's recovery deployed again (rollout/recovery.py: cancelled, then redeployed).
Each replica's CPU time (``/proc/<pid>/stat``, its reaped children included) and peak RSS
(``VmHWM``), sampled every 0.5 s while it runs (a killed replica: its last sample).

    .venv/bin/python bench/fleet_ha.py [--hosts 20] [--services 5] [--replicas 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _figures import Figure, add_json_flag, at_most, emit
from fleet import LOGS, ROOT, WIPE, Fleet, git, loadavg, stop_daemon

from reconciler.spec.durations import parse_duration
from reconciler.spec.model import ResourceKey
from reconciler.state.shards import DEFAULT_SHARDS, shard_of
from tests.helpers import free_port
from tests.infra.testinfra import InfraHost, lease_all, load
from tests.state.backends import raw_query, throwaway_url

# systemd's catalog id of "Started <unit>" (a start or restart job that completed)
STARTED = "39f53479d3a045ac8e11786248231fbf"
CLK_TCK = os.sysconf("SC_CLK_TCK")




class Replica:
    """One ``reconciler daemon --ha`` process and what /proc and /metrics say about it."""

    def __init__(self, number: int, db: str, fleet: Fleet, ttl: str, interval: str) -> None:
        self.number = number
        self.port = free_port()
        self.state = fleet.tmp / f"state-{number}"
        self.log_path = LOGS / f"fleet-ha-replica{number}.log"
        python = sys.executable if fleet.code == ROOT else str(fleet.code / ".venv/bin/python")
        argv = [python, "-m", "reconciler", "--db", db, "--state-dir", str(self.state),
                "--log-format", "text", "daemon", "--repo", str(fleet.repo), "--path", "fleet",
                "--listen", f"127.0.0.1:{self.port}", "--interval", interval, "--ha",
                "--shard-ttl", ttl]
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=fleet.py_env, cwd=fleet.code, start_new_session=True)
        self.cpu = 0.0
        self.peak_rss_mb = 0.0
        self.killed = False

    @property
    def name(self) -> str:
        return f"r{self.number}"

    def owns_lease(self, owner: str) -> bool:
        """Lease owners are ``host:pid:start`` (rollout.leases.process_identity)."""
        parts = owner.split(":")
        return len(parts) >= 2 and parts[1] == str(self.proc.pid)

    def sample(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        # after ")": state is field 3, utime..cstime are fields 14-17 (1-based, man proc)
        self.cpu = sum(int(v) for v in fields[11:15]) / CLK_TCK
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)

    def deployments(self) -> float:
        """Finished deployments so far (``reconciler_deployments_total``, every result)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("reconciler_deployments_total{"))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                        timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        self.sample()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.killed = True

    def stop(self) -> None:
        stop_daemon(self.proc)
        self.log.close()


class HaBench:
    def __init__(self, fleet: Fleet, db: str, ttl: str, interval: str) -> None:
        self.fleet = fleet
        self.db = db
        self.ttl = ttl
        self.interval = interval
        self.replicas: list[Replica] = []
        self.pause = 0.2  # between two rounds of HTTP checks: as long as the last round took
        self.windows: list[tuple[str, float]] = []  # (pass, epoch of its commit), in order
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)

    # -- replicas -------------------------------------------------------------------------------
    def start_replica(self) -> Replica:
        replica = Replica(len(self.replicas) + 1, self.db, self.fleet, self.ttl, self.interval)
        self.replicas.append(replica)
        return replica

    def start_sampling(self) -> None:
        self._sampler.start()

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if not r.killed and r.proc.poll() is None]

    def _sample_loop(self) -> None:
        while not self._sampling.wait(0.5):
            for replica in list(self.replicas):
                replica.sample()

    def shard_owners(self) -> dict[int, str]:
        """Shard number -> owner, for the unexpired shard leases (judged by the database)."""
        rows = raw_query(self.db, "SELECT name, owner FROM tb_lock WHERE name LIKE 'shard:%%' "
                                  "AND expires_at > clock_timestamp()")
        return {int(str(name).split(":", 1)[1]): str(owner) for name, owner in rows}

    def shards_by_replica(self) -> dict[str, int]:
        owners = self.shard_owners()
        return {r.name: sum(r.owns_lease(o) for o in owners.values()) for r in self.replicas}

    def balanced(self) -> bool:
        """Every shard held, by live replicas only, about evenly."""
        owners = self.shard_owners()
        live = self.live()
        if len(owners) < DEFAULT_SHARDS:
            return False
        counts = [sum(r.owns_lease(o) for o in owners.values()) for r in live]
        return sum(counts) == DEFAULT_SHARDS and min(counts) >= DEFAULT_SHARDS // len(live) - 1

    def wait(self, what: str, check: Any, timeout: float, step: float = 0.2) -> float:
        started = time.monotonic()
        while not check():
            for replica in self.replicas:
                if not replica.killed and replica.proc.poll() is not None:
                    raise SystemExit(f"replica {replica.name} exited "
                                     f"({replica.proc.returncode}); see {replica.log_path}")
            if time.monotonic() - started > timeout:
                raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(step)
        return time.monotonic() - started

    # -- units ----------------------------------------------------------------------------------
    def units(self) -> list[tuple[int, int]]:
        return [(h, i) for h in range(1, len(self.fleet.hosts) + 1)
                for i in range(1, self.fleet.services + 1)]

    def serving(self, pending: set[tuple[int, int]], version: str) -> set[tuple[int, int]]:
        """The units of ``pending`` that answer ``ok <version>``: raw HTTP/1.0 GETs on one event
        loop (urllib on a thread pool cost this process more CPU than the three daemons had at
        1,000 units — on 2 cores that slowed what it measured). Then a pause as long as the
        round took (at least 0.2 s), so the checks take at most about half a core."""
        expected = f"ok {version}".encode()
        started = time.monotonic()

        async def check(unit: tuple[int, int], slots: asyncio.Semaphore) -> bool:
            async with slots:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(
                        "127.0.0.1", self.fleet.port("reconciler", *unit)), 2)
                    try:
                        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
                        data = await asyncio.wait_for(reader.read(), 2)
                    finally:
                        writer.close()
                except (OSError, TimeoutError):  # refused, reset by a restart, hung
                    return False
            head, _, body = data.partition(b"\r\n\r\n")
            return head.split(b" ", 2)[1:2] == [b"200"] and body.strip() == expected

        async def check_all(units: list[tuple[int, int]]) -> list[bool]:
            slots = asyncio.Semaphore(64)
            return list(await asyncio.gather(*(check(u, slots) for u in units)))

        units = sorted(pending)
        served = {u for u, ok in zip(units, asyncio.run(check_all(units)), strict=True) if ok}
        self.pause = max(0.2, time.monotonic() - started)
        return served

    def commit(self, name: str) -> float:
        self.fleet.commit(name)
        self.windows.append((name, time.time()))
        return time.monotonic()

    def deployments(self) -> dict[str, float]:
        return {r.name: r.deployments() for r in self.live()}

    def resources_by_replica(self) -> dict[str, int]:
        owners = self.shard_owners()
        split: Counter[str] = Counter()
        for h, i in self.units():
            owner = owners.get(shard_of(ResourceKey("default", "Service", self.fleet.name(h, i))))
            holder = next((r.name for r in self.replicas if owner and r.owns_lease(owner)), "none")
            split[holder] += 1
        return dict(split)

    def rollout(self, name: str, timeout: float) -> dict[str, Any]:
        """Commit a new revision and wait until every unit serves it."""
        before = self.deployments()
        split = self.resources_by_replica()
        started = self.commit(name)
        pending = set(self.units())
        while pending:
            pending -= self.serving(pending, self.fleet.rev)
            if pending:
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"{name}: {len(pending)} units not serving "
                                     f"{self.fleet.rev} after {timeout:.0f} s")
                time.sleep(self.pause)
        elapsed = time.monotonic() - started
        self.wait_recorded(self.windows[-1][1], timeout)
        recorded = time.monotonic() - started
        after = self.deployments()
        deploys = {n: after[n] - before.get(n, 0.0) for n in after}
        return {"seconds": elapsed, "recorded": recorded, "resources": split,
                "deploys": deploys, "load": loadavg()}

    def wait_recorded(self, since: float, timeout: float) -> None:
        """Until every Service has a deployment of this pass that succeeded and none is open in
        the journal: a unit serves the new version a moment before its gate passes, and a
        killed replica's units may serve it before the new owner has redeployed them."""
        def recorded() -> bool:
            rows = raw_query(self.db, """
                SELECT count(DISTINCT d.fk_resource) FILTER (WHERE d.status = 'succeeded'),
                       count(*) FILTER (WHERE d.finished_at IS NULL)
                FROM tb_deployment d JOIN tb_resource r ON r.pk_resource = d.fk_resource
                WHERE r.kind = 'Service' AND d.created_at >= to_timestamp(%s)""", (since,))
            succeeded, open_ = (int(v) for v in rows[0])
            return succeeded >= len(self.units()) and open_ == 0

        self.wait("the deployments recorded", recorded, timeout)

    def kill_pass(self, name: str, kill_at: float | None, timeout: float) -> dict[str, Any]:
        """Kill the replica holding the most shards: once ``kill_at`` of the units serve the new
        revision (during its rollout), or right before the commit (``kill_at`` None)."""
        before = self.deployments()
        shards = self.shards_by_replica()
        victim = max(self.live(), key=lambda r: shards.get(r.name, 0))
        survivors = [r for r in self.live() if r is not victim]
        pending = set(self.units())
        total = len(pending)
        served_at_kill = 0
        if kill_at is None:
            victim.kill()
            killed = started = time.monotonic()
            self.commit(name)
        else:
            started = self.commit(name)
            while (total - len(pending)) < kill_at * total:
                pending -= self.serving(pending, self.fleet.rev)
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"{name}: the rollout did not start")
                time.sleep(self.pause)
            served_at_kill = total - len(pending)
            victim.kill()
            killed = time.monotonic()
        # the shards are watched on a thread of their own: a round of HTTP checks of the units
        # takes seconds under load and would blur the takeover time
        taken_over: list[float] = []
        watching = threading.Event()

        def watch_shards() -> None:
            while not watching.is_set():
                owners = self.shard_owners()
                if len(owners) == DEFAULT_SHARDS and all(
                        any(s.owns_lease(o) for s in survivors) for o in owners.values()):
                    taken_over.append(time.monotonic() - killed)
                    return
                time.sleep(0.1)

        watcher = threading.Thread(target=watch_shards, daemon=True)
        watcher.start()
        served: float | None = None
        try:
            while served is None or not taken_over:
                pending -= self.serving(pending, self.fleet.rev)
                if not pending and served is None:
                    served = time.monotonic() - killed
                if time.monotonic() - killed > timeout:
                    raise SystemExit(f"{name}: {len(pending)} units not serving "
                                     f"{self.fleet.rev}, shards taken over: {bool(taken_over)}, "
                                     f"{timeout:.0f} s after the kill")
                if served is None or not taken_over:
                    time.sleep(self.pause)
        finally:
            watching.set()
            watcher.join(timeout=30)
        converged = served
        self.wait_recorded(self.windows[-1][1], timeout)
        recorded = time.monotonic() - killed
        after = self.deployments()
        return {"seconds": converged, "recorded": recorded, "takeover": taken_over[0],
                "victim": victim.name,
                "victim_shards": shards.get(victim.name, 0), "served_at_kill": served_at_kill,
                "killed_after_commit": max(0.0, killed - started),
                "deploys": {n: after[n] - before.get(n, 0.0) for n in after},
                "shards_after": self.shards_by_replica(), "load": loadavg()}

    # -- double deploys -------------------------------------------------------------------------
    def host_starts(self, since: float) -> list[tuple[float, str]]:
        """(epoch, unit) of every "Started fraisier-…" entry on every host since ``since``."""
        script = (f"journalctl -q --no-pager MESSAGE_ID={STARTED} --since @{int(since)} "
                  "-o json --output-fields=UNIT")

        def read(host: InfraHost) -> list[tuple[float, str]]:
            entries = []
            for line in host.sh(script, timeout=120).splitlines():
                entry = json.loads(line)
                unit = str(entry.get("UNIT", ""))
                if unit.startswith("fraisier-"):
                    entries.append((int(entry["__REALTIME_TIMESTAMP"]) / 1e6,
                                    f"{host.name}/{unit}"))
            return entries

        return [e for found in self.fleet.each_host(read) for e in found]

    def interrupted(self) -> list[tuple[str, float]]:
        """(Service name, epoch created) of the deployments the recovery closed as interrupted
        (a replica died during them; the new owner deployed the revision again)."""
        rows = raw_query(self.db, """
            SELECT r.name, extract(epoch FROM d.created_at)
            FROM tb_deployment d JOIN tb_resource r ON r.pk_resource = d.fk_resource
            WHERE d.status = 'cancelled' AND EXISTS (
                SELECT 1 FROM tb_deployment_event e WHERE e.fk_deployment = d.pk_deployment
                AND e.status = 'cancelled' AND e.message LIKE 'interrupted%%')""")
        return [(str(name), float(at)) for name, at in rows]

    def double_deploys_on_hosts(self) -> dict[str, dict[str, int]]:
        """Per pass: units started, and those started more than once — split into units whose
        first deployment a killed replica left open (resumed by the new owner) and the rest
        (double deploys proper)."""
        starts = self.host_starts(self.windows[0][1] - 1)
        interrupted = self.interrupted()
        bounds = [t for _, t in self.windows[1:]] + [float("inf")]
        report: dict[str, dict[str, int]] = {}
        for (name, begin), end in zip(self.windows, bounds, strict=True):
            per_unit = Counter(unit for t, unit in starts if begin <= t < end)
            resumed = {n for n, at in interrupted if begin <= at < end}
            twice = [u for u, n in per_unit.items() if n > 1]
            # "<host>/fraisier-default_<name>.service"
            after_kill = [u for u in twice
                          if u.split("_", 1)[1].removesuffix(".service") in resumed]
            report[name] = {"units started": len(per_unit),
                            "started twice or more": len(twice),
                            "of which resumed after a kill": len(after_kill),
                            "double deploys": len(twice) - len(after_kill)}
        return report

    def double_deploys_in_db(self) -> tuple[int, int, list[tuple[Any, ...]], dict[str, int]]:
        """Resources with more than one deployment to the same revision: (double deploys, of
        those the ones where every earlier deployment was interrupted by a kill and resumed,
        the groups, every deployment's status count)."""
        rows = raw_query(self.db, """
            SELECT r.identifier, d.to_revision, d.seq, d.status, EXISTS (
                SELECT 1 FROM tb_deployment_event e WHERE e.fk_deployment = d.pk_deployment
                AND e.status = 'cancelled' AND e.message LIKE 'interrupted%%')
            FROM tb_deployment d JOIN tb_resource r ON r.pk_resource = d.fk_resource
            ORDER BY r.identifier, d.seq""")
        groups: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        for identifier, revision, _, status, interrupted in rows:
            groups.setdefault((str(identifier), str(revision)), []).append(
                (str(status), bool(interrupted)))
        doubles = [(k, v) for k, v in groups.items() if len(v) > 1]
        resumed = sum(all(i for _, i in v[:-1]) for _, v in doubles)
        statuses = Counter(str(r[3]) for r in rows)
        listed = [(k[0], k[1], ",".join(s + ("(interrupted)" if i else "") for s, i in v))
                  for k, v in doubles]
        return len(doubles), resumed, listed, dict(statuses)

    def close(self) -> None:
        self._sampling.set()
        for replica in self.replicas:
            replica.stop()


def stop_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--services", type=int, default=5,
                        help="Services per host (issue 17's size: 50)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--shard-ttl", default="15s")
    parser.add_argument("--interval", default="30s")
    parser.add_argument("--kill-at", type=float, default=0.1,
                        help="kill once this fraction of the units serve the new revision")
    parser.add_argument("--timeout", type=float, default=900, help="per pass, seconds")
    parser.add_argument("--code", type=Path, default=ROOT,
                        help="run the replicas of this checkout (its .venv): a before figure")
    add_json_flag(parser)
    args = parser.parse_args()

    # SIGTERM (a timeout, run_all) unwinds like an error: daemons stopped, database dropped,
    # units wiped
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    os.environ.setdefault("FRAISIER_TESTINFRA", "/var/tmp/fraisier-fleet")
    infra, reason = load()
    if infra is None:
        raise SystemExit(reason)
    if len(infra.hosts) < args.hosts:
        raise SystemExit(f"need {args.hosts} test hosts, {infra.workdir} has {len(infra.hosts)} "
                         "(see bench/fleet.py's docstring)")
    hosts = list(infra.hosts[: args.hosts])
    units = args.hosts * args.services
    print(f"fleet --ha: {args.hosts} hosts x {args.services} Services = {units} units, "
          f"{args.replicas} replicas, --shard-ttl {args.shard_ttl}, --interval {args.interval}; "
          f"replicas from {args.code}; load {loadavg()}", flush=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with lease_all(infra.hosts), tempfile.TemporaryDirectory(prefix="fraisier-fleet-ha-") as tmp_s:
        tmp = Path(tmp_s)
        fleet = Fleet(hosts, args.services, tmp, None, args.code.resolve())
        fleet.each_host(lambda host: host.sh(WIPE, timeout=120))
        fleet.check_ports(["reconciler"])
        try:
            with throwaway_url("postgresql", tmp) as db:
                subprocess.run([sys.executable, "-m", "reconciler", "--db", db, "db", "migrate"],
                               check=True, capture_output=True, env=fleet.py_env, cwd=ROOT)
                fleet.repo.mkdir()
                git(fleet.repo, "init", "-q", "-b", "main")
                bench = HaBench(fleet, db, args.shard_ttl, args.interval)
                try:
                    results = run_passes(bench, args)
                finally:
                    bench.close()  # the daemons stop before the database is dropped
                hosts_report = bench.double_deploys_on_hosts()
                db_doubles, db_resumed, db_rows, statuses = bench.double_deploys_in_db()
                replicas = [(r.name, r.cpu, r.peak_rss_mb, r.killed) for r in bench.replicas]
        finally:
            fleet.each_host(lambda host: host.sh(WIPE, timeout=120))

    print(f"\n{args.hosts} hosts x {args.services} Services ({units} units), {args.replicas} "
          f"`daemon --ha` replicas on PostgreSQL; load average at end {loadavg()}:")
    print("  (from the commit; after a kill: from the kill) served = every unit answers the new"
          " version over HTTP;\n  recorded = every Service's deployment succeeded in the journal")
    print(f"  {'pass':<24} {'served':>8} {'recorded':>9} {'takeover':>9}  "
          "resources / deploys per replica  (load)")
    for name, r in results.items():
        takeover = f"{r['takeover']:.1f}s" if r.get("takeover") is not None else "—"
        split = " ".join(f"{k}:{v}" for k, v in sorted(r.get("resources", {}).items()))
        deploys = " ".join(f"{k}:{v:.0f}" for k, v in sorted(r["deploys"].items()))
        print(f"  {name:<24} {r['seconds']:>7.1f}s {r['recorded']:>8.1f}s {takeover:>9}  "
              f"{split + ' / ' if split else ''}{deploys}  ({r['load']})")
        if "victim" in r:
            print(f"  {'':<24} killed {r['victim']} ({r['victim_shards']} shards) "
                  f"{r['killed_after_commit']:.1f}s after the commit, "
                  f"{r['served_at_kill']} units already served; shards after: "
                  + " ".join(f"{k}:{v}" for k, v in sorted(r["shards_after"].items())))
    host_twice = sum(v["started twice or more"] for v in hosts_report.values())
    host_resumed = sum(v["of which resumed after a kill"] for v in hosts_report.values())
    print("  units started twice or more in one pass (systemd 'Started' on the hosts), per "
          "pass: " + "; ".join(f"{k}: {v['units started']} started, "
                               f"{v['started twice or more']} twice+ "
                               f"({v['of which resumed after a kill']} resumed after the kill)"
                               for k, v in hosts_report.items()))
    print(f"  double deploys on the hosts: {host_twice}, of which {host_resumed} a killed "
          f"replica's interrupted deployment resumed by the new owner, "
          f"{host_twice - host_resumed} other")
    print(f"  double deploys in the database (same resource, same revision): {db_doubles}, "
          f"of which {db_resumed} after an interrupted one, {db_doubles - db_resumed} other; "
          f"deployments by status {statuses}")
    for row in db_rows[:20]:
        print(f"    {row}")
    own = resource.getrusage(resource.RUSAGE_SELF)
    print("  this bench (HTTP checks of the units, SQL polls): "
          f"CPU {own.ru_utime + own.ru_stime:.1f} s")
    for name, cpu, rss, killed in replicas:
        print(f"  replica {name}: CPU {cpu:.1f} s, peak RSS {rss:.0f} MB"
              + (" (SIGKILLed; last sample)" if killed else ""))

    if args.json:
        label = f"fleet {args.hosts}x{args.services}, {args.replicas} --ha replicas"
        figures = [Figure(f"{name}, {label}: every unit serves it", r["seconds"], "s")
                   for name, r in results.items()]
        figures += [Figure(f"{name}, {label}: every deployment recorded", r["recorded"], "s")
                    for name, r in results.items()]
        # a dead replica's shards move after the TTL + one heartbeat (TTL / 3, jittered 10 %)
        ttl = parse_duration(args.shard_ttl)
        figures += [Figure(f"{name}, {label}: shards taken over after kill -9", r["takeover"],
                           "s", ttl, "shard TTL", "<= TTL + one heartbeat (TTL x 1.37)",
                           at_most(r["takeover"], ttl * (1 + 1.1 / 3)))
                    for name, r in results.items() if r.get("takeover") is not None]
        # the goal counts every one: a kill's recovery adopts what the victim finished
        figures.append(Figure(f"{label}: double deploys on the hosts, all", host_twice, "",
                              None, "", "0", at_most(host_twice, 0)))
        figures.append(Figure(f"{label}: double deploys on the hosts, not after a kill",
                              host_twice - host_resumed, "", None, "", "0",
                              at_most(host_twice - host_resumed, 0)))
        figures.append(Figure(f"{label}: double deploys in the journal, all", db_doubles, "",
                              None, "", "0", at_most(db_doubles, 0)))
        figures.append(Figure(f"{label}: double deploys in the journal, not after a kill",
                              db_doubles - db_resumed, "", None, "", "0",
                              at_most(db_doubles - db_resumed, 0)))
        figures += [Figure(f"{label}: replica {name} CPU", cpu, "s") for name, cpu, _, _ in
                    replicas]
        figures += [Figure(f"{label}: replica {name} peak RSS", rss, "MB") for name, _, rss, _
                    in replicas]
        emit("fleet_ha", figures, hosts=args.hosts, services=args.services,
             replicas=args.replicas, shard_ttl=args.shard_ttl, interval=args.interval)


def run_passes(bench: HaBench, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    fleet = bench.fleet
    results: dict[str, dict[str, Any]] = {}

    def report(name: str, result: dict[str, Any]) -> None:
        results[name] = result
        # the takeover too: a later pass that times out loses the summary
        takeover = (f"  takeover {result['takeover']:.1f}s" if result.get("takeover") is not None
                    else "")
        print(f"  {name:<24} {result['seconds']:6.1f}s{takeover}  deploys {result['deploys']}  "
              f"(load {result['load']})", flush=True)

    # warm-up: Targets only; the replicas start, split the shards, go idle
    services, fleet.services = fleet.services, 0
    bench.commit("targets")
    fleet.services = services
    started = time.monotonic()
    for _ in range(args.replicas):
        bench.start_replica()
    bench.wait("replicas ready", lambda: all(r.ready() for r in bench.replicas), 300)
    bench.wait("shards split", bench.balanced, 300)
    print(f"  replicas ready and shards split in {time.monotonic() - started:.1f}s: "
          f"{bench.shards_by_replica()}", flush=True)
    bench.start_sampling()

    report("converge", bench.rollout("v0", args.timeout))
    fleet.rev = "v1"
    report("change-all", bench.rollout("v1", args.timeout))
    fleet.rev = "v2"
    report("kill during rollout", bench.kill_pass("v2", args.kill_at, args.timeout))
    # back to R replicas before the next kill
    bench.start_replica()
    bench.wait("the new replica", lambda: bench.replicas[-1].ready() and bench.balanced(), 300)
    fleet.rev = "v3"
    report("kill before commit", bench.kill_pass("v3", None, args.timeout))
    return results


if __name__ == "__main__":
    main()
