"""Rolling update of 20 Docker Compose replicas, maxParallel 5, against the ideal and raw compose.

The ideal of 20 instances in batches of 5 is 4 batches, each as long as one instance's deploy.
Measured in the same run, on the real dockerd of tests/infra/up.sh with the busybox test image,
the reconciler's rounds and the raw ones alternating (which goes first swaps every round):

* single: a Service with 1 replica (strategy rolling) updated to a new revision;
* fleet:  a Service with 20 replicas, maxParallel 5, updated to a new revision;
* raw single, raw fleet: the same two Services' replicas laid out as the compose provider lays
  them out (one compose project per replica, the documents rendered by its own ``render`` and
  ``replica_document``), updated to a new revision without the reconciler: for each replica the
  document is rewritten (not timed), then the provider's own ``up -d --no-deps --remove-orphans
  --scale <service>=1 <service>`` with the same compose binary and process environment, then an
  HTTP GET of the replica's health URL until it answers 2xx, probed as the reconciler's gate
  probes in its start period (at once, 50 ms later, then every 100 ms); the fleet in batches of
  maxParallel concurrent replicas, the next batch starting when the previous one answers.

The reconciler's figures are the deployment's own duration from the journal (start →
health-gated finish), so CLI start-up is not counted; the raw ones are the wall time from the
first ``up`` to the last replica answering. Goals: fleet <= 1.2 x (4 x single); fleet <= 1.2 x
raw fleet. Beside each figure, the machine's busy CPU time over it (/proc/stat, every process:
compose, dockerd, containerd, its shims, runc, the reconciler and whatever else runs).

Usage: python bench/rolling.py [--replicas 20] [--max-parallel 5] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figures import Figure, add_json_flag, at_most, emit
from _python_env import installed_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.providers.compose.host import local_base_env  # noqa: E402
from reconciler.providers.compose.render import render, replica_document  # noqa: E402
from reconciler.spec.model import Resource, ResourceKey  # noqa: E402
from tests.helpers import port_free  # noqa: E402
from tests.infra.testinfra import load  # noqa: E402

# The reconciler's gate in a start period: a probe at once, 50 ms after, then every interval.
HEALTH_INTERVAL_S = 0.1
FIRST_RETRY_S = 0.05
HEALTH_DEADLINE_S = 60.0


def port_prefix(count: int) -> int:
    """P such that the ports P1..P9 and P10..P<count> (``{replica}`` appended) are free, all
    below Linux's ephemeral range (32768 up): a port free when chosen there can be taken by any
    outgoing connection before its replica starts (probably what failed one bench round once:
    a replica exited with code 1, and was rolled back)."""
    for _ in range(500):
        prefix = random.randint(103, 326)
        if all(port_free(int(f"{prefix}{n}")) for n in range(1, count + 1)):
            return prefix
    raise SystemExit("no free port range")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x.invalid"})


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot: user, nice, system, irq and
    softirq (not idle, I/O wait or the hypervisor's steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / TICKS


TICKS = os.sysconf("SC_CLK_TCK")


class CpuClock:
    """The machine's busy CPU seconds sampled every 20 ms on a thread, so that the busy time
    within a window known only afterwards (a deployment's start and finish in the journal) can
    be read: ``between(t0, t1)``, wall-clock seconds, interpolated between samples."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), busy_cpu_s()))
            if self._stop.wait(0.02):
                return

    def at(self, when: float) -> float:
        samples = list(self.samples)
        for (t0, b0), (t1, b1) in itertools.pairwise(samples):
            if t0 <= when <= t1:
                return b0 + (b1 - b0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
        raise ValueError(f"no CPU samples around {when}")

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start)


def service_spec(image: str, prefix: int, replicas: int, max_parallel: int,
                 version: str) -> dict[str, Any]:
    """The spec of the Service both methods roll (``{replica}`` in its port and health URL)."""
    script = (f'mkdir -p /srv && echo "$VERSION" > /srv/index.html && exec httpd -f -p '
              f"127.0.0.1:{prefix}{{replica}} -h /srv")
    return {
        "target": "docker",
        "env": {"VERSION": version},
        "health": {"http": {"url": f"http://{{host}}:{prefix}{{replica}}/"},
                   "interval": "100ms", "startPeriod": "5s"},
        "compose": {"image": image, "pullPolicy": "never", "networkMode": "host",
                    "replicas": replicas, "command": ["/bin/sh", "-c", script],
                    "stopGracePeriod": "1s"},
        "strategy": {"type": "rolling", "maxParallel": max_parallel},
    }


class Bench:
    def __init__(self, tmp: Path, docker_host: str, image: str, environment: str) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.repo.mkdir(parents=True)
        self.docker_host = docker_host
        self.image = image
        self.environment = environment
        self.env = installed_env(tmp / "pycache")  # the untimed first apply writes the caches
        git(self.repo, "init", "-q", "-b", "main")
        (self.repo / "target.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: docker, environment: {environment}}}
spec:
  provider: compose
  docker: {{host: "{docker_host}"}}
""")

    def service(self, name: str, replicas: int, max_parallel: int, version: str) -> None:
        spec = service_spec(self.image, port_prefix(replicas), replicas, max_parallel, version)
        (self.repo / f"{name}.yaml").write_text(
            "apiVersion: fraisier.dev/v1\nkind: Service\n"
            f"metadata: {{name: {name}, environment: {self.environment}}}\n"
            f"spec: {json.dumps(spec)}\n")  # JSON is YAML

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(self.state), *args],
            capture_output=True, text=True, timeout=900, cwd=ROOT, env=self.env)

    def apply(self) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "bench")
        out = self.cli("apply", "--repo", str(self.repo), "-e", self.environment)
        if out.returncode != 0:
            raise SystemExit(f"apply failed:\n{out.stdout}\n{out.stderr}")

    def last_window(self, name: str) -> tuple[float, float]:
        """(start, finish) of the resource's last deployment in the journal, epoch seconds."""
        out = self.cli("history", name, "-n", "1", "-o", "json")
        dep = json.loads(out.stdout)[0]
        assert dep["status"] == "succeeded", dep
        return (datetime.fromisoformat(dep["startedAt"]).timestamp(),
                datetime.fromisoformat(dep["finishedAt"]).timestamp())

    def cleanup(self) -> None:
        prefix = f"fraisier_{self.environment}_"
        listing = subprocess.run(
            ["docker", "-H", self.docker_host, "ps", "-a", "--format",
             '{{.ID}} {{.Label "com.docker.compose.project"}}'],
            capture_output=True, text=True, timeout=60).stdout.splitlines()
        mine = [ln.split()[0] for ln in listing if ln.split()[-1:]
                and ln.split()[-1].startswith(prefix)]
        if mine:
            subprocess.run(["docker", "-H", self.docker_host, "rm", "-f", *mine],
                           capture_output=True, timeout=120)


@dataclass(frozen=True)
class RawReplica:
    argv: list[str]
    port: int


class Raw:
    """The bench's Services rolled without the reconciler: the provider's per-replica documents
    and ``up``, the same compose binary and process environment, an HTTP health wait."""

    def __init__(self, tmp: Path, compose: list[str], docker_host: str, image: str,
                 environment: str) -> None:
        self.root = tmp / "raw"  # as the provider's <state-dir>/compose
        self.compose = compose
        self.image = image
        self.environment = environment
        self.env = local_base_env(docker_host)  # what the provider gives its compose processes

    def write(self, name: str, replicas: int, max_parallel: int,
              version: str) -> list[RawReplica]:
        """Write the replicas' documents of the new revision (not timed); their ``up``s."""
        prefix = port_prefix(replicas)
        spec = service_spec(self.image, prefix, replicas, max_parallel, version)
        resource = Resource(ResourceKey(self.environment, "Service", name), {}, spec,
                            f"{name}.yaml")
        template = render(resource, f"raw-{version}")
        project_dir = self.root / template.project
        out = []
        for number in range(1, replicas + 1):
            document = replica_document(template, number, None)
            file = project_dir / "replicas" / str(number) / "compose.yaml"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(document.yaml())
            service = document.services[0]
            out.append(RawReplica(
                [*self.compose, "--ansi", "never", "-p", document.project, "-f", str(file),
                 "--project-directory", str(project_dir), "up", "-d", "--no-deps",
                 "--remove-orphans", "--scale", f"{service}=1", service],
                int(f"{prefix}{number}")))
        self.env = {**self.env, "VERSION": version}  # the release's env, as the provider's
        return out

    def up(self, replica: RawReplica) -> None:
        proc = subprocess.run(replica.argv, capture_output=True, text=True, timeout=360,
                              env=self.env)
        if proc.returncode != 0:
            raise SystemExit(f"raw up failed (exit {proc.returncode}):\n{proc.stdout}"
                             f"{proc.stderr}")
        deadline = time.monotonic() + HEALTH_DEADLINE_S
        pause = FIRST_RETRY_S
        while not answers(replica.port):
            if time.monotonic() > deadline:
                raise SystemExit(f"raw: 127.0.0.1:{replica.port} not healthy after "
                                 f"{HEALTH_DEADLINE_S:g}s")
            time.sleep(pause)
            pause = min(pause * 2, HEALTH_INTERVAL_S)

    def rollout(self, replicas: list[RawReplica], max_parallel: int) -> tuple[float, float]:
        """(start, finish), epoch seconds, of the batches of max_parallel concurrent replicas."""
        with ThreadPoolExecutor(max_parallel) as pool:
            started = time.time()
            for first in range(0, len(replicas), max_parallel):
                list(pool.map(self.up, replicas[first:first + max_parallel]))
            return started, time.time()


def answers(port: int) -> bool:
    """Whether GET / on the port answers 2xx (the gate's http probe without expectStatus)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        return 200 <= connection.getresponse().status < 300
    except OSError:
        return False
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--max-parallel", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    add_json_flag(parser)
    args = parser.parse_args()
    infra, reason = load()
    if infra is None:
        raise SystemExit(f"test infrastructure not up ({reason}): run tests/infra/up.sh")
    compose = infra.compose_argv("v2")
    if compose is None:
        raise SystemExit("compose v2 not installed: run tests/infra/up.sh")
    batches = math.ceil(args.replicas / args.max_parallel)
    times: dict[str, list[float]] = {"single": [], "fleet": [], "raw single": [], "raw fleet": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    with (tempfile.TemporaryDirectory(prefix="fraisier-bench-rolling-") as tmp,
          CpuClock() as clock):
        environment = f"bench-rolling-{os.getpid()}"
        bench = Bench(Path(tmp), infra.docker_host, infra.tiny_image, environment)
        raw = Raw(Path(tmp), compose, infra.docker_host, infra.tiny_image, environment)

        def record(name: str, start: float, end: float) -> None:
            time.sleep(0.05)  # a sample after the end
            times[name].append(end - start)
            cpu[name].append(clock.between(start, end))

        def reconciler_round(n: int) -> None:
            for name, replicas, parallel in (("single", 1, 1),
                                             ("fleet", args.replicas, args.max_parallel)):
                bench.service(name, replicas, parallel, f"v{n}")
                bench.apply()
                record(name, *bench.last_window(name))

        def raw_round(n: int) -> None:
            for name, replicas, parallel in (("raw single", 1, 1),
                                             ("raw fleet", args.replicas, args.max_parallel)):
                plan = raw.write(name.replace(" ", ""), replicas, parallel, f"v{n}")
                record(name, *raw.rollout(plan, parallel))

        try:
            bench.service("single", 1, 1, "v0")
            bench.service("fleet", args.replicas, args.max_parallel, "v0")
            bench.apply()  # first rollouts: create everything (not measured)
            raw.rollout(raw.write("rawsingle", 1, 1, "v0"), 1)
            raw.rollout(raw.write("rawfleet", args.replicas, args.max_parallel, "v0"),
                        args.max_parallel)
            for n in range(1, args.rounds + 1):
                order = (reconciler_round, raw_round) if n % 2 else (raw_round, reconciler_round)
                for step in order:
                    step(n)
                print(f"round {n}: " + ", ".join(
                    f"{name} {values[-1]:.2f}s (CPU {cpu[name][-1]:.2f}s)"
                    for name, values in times.items()), flush=True)
        finally:
            bench.cleanup()
    med = {name: statistics.median(values) for name, values in times.items()}
    busy = {name: statistics.median(values) for name, values in cpu.items()}
    ideal, raw_ideal = batches * med["single"], batches * med["raw single"]
    ratio, raw_ratio = med["fleet"] / ideal, med["raw fleet"] / raw_ideal
    over_raw = med["fleet"] / med["raw fleet"]
    cores = os.cpu_count() or 1
    print(f"medians of {args.rounds} (busy CPU of the machine over each, of {cores} cores):")
    for label, name in (("single-replica deploy", "single"),
                        (f"{args.replicas} replicas, maxParallel {args.max_parallel} "
                         f"({batches} batches)", "fleet"),
                        ("raw single-replica update", "raw single"),
                        (f"raw {args.replicas} replicas, {batches} batches of "
                         f"{args.max_parallel}", "raw fleet")):
        print(f"  {label}: {med[name]:.2f}s (CPU {busy[name]:.2f}s, "
              f"{busy[name] / med[name] / cores:.0%} of the cores)")
    print(f"ratio to the ideal {batches} x single = {ideal:.2f}s: {ratio:.2f}x (goal <= 1.2x)")
    print(f"raw compose's ratio to its ideal {batches} x raw single = {raw_ideal:.2f}s: "
          f"{raw_ratio:.2f}x")
    print(f"reconciler / raw compose, {args.replicas} replicas: {over_raw:.2f}x (goal <= 1.2x)")
    if args.json:
        fleet_label = (f"rolling {args.replicas} replicas, maxParallel {args.max_parallel} "
                       f"(median of {args.rounds})")
        emit("rolling", [
            Figure(fleet_label, med["fleet"], "s", ideal, f"{batches} x single-replica deploy",
                   "<= 1.2x", at_most(ratio, 1.2)),
            Figure(f"raw compose {args.replicas} replicas, {batches} batches of "
                   f"{args.max_parallel} (median of {args.rounds})", med["raw fleet"], "s",
                   raw_ideal, f"{batches} x raw single-replica update"),
            Figure(f"rolling {args.replicas} replicas, maxParallel {args.max_parallel}, "
                   f"reconciler vs raw compose (median of {args.rounds})", med["fleet"], "s",
                   med["raw fleet"],
                   f"raw compose, {batches} batches of {args.max_parallel}", "<= 1.2x",
                   at_most(over_raw, 1.2)),
        ], replicas=args.replicas, max_parallel=args.max_parallel, rounds=args.rounds)


if __name__ == "__main__":
    main()
