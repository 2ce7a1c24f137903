"""Rolling update of 20 Docker Compose replicas, maxParallel 5, against the ideal.

The ideal of 20 instances in batches of 5 is 4 batches, each as long as one instance's deploy.
Measured in the same run, on the real dockerd of tests/infra/up.sh with the busybox test image:

* single: a Service with 1 replica (strategy rolling) updated to a new revision;
* fleet:  a Service with 20 replicas, maxParallel 5, updated to a new revision.

Each figure is the deployment's own duration from the journal (start → health-gated finish),
so CLI start-up is not counted in either. Goal: fleet <= 1.2 x (4 x single).

Usage: python bench/rolling.py [--replicas 20] [--max-parallel 5] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _figures import Figure, add_json_flag, at_most, emit

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = Path("/var/tmp/fraisier-testinfra/env.json")


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_prefix(count: int) -> int:
    """P such that the ports P1..P9 and P10..P<count> (``{replica}`` appended) are free, all
    below Linux's ephemeral range (32768 up): a port free when chosen there can be taken by any
    outgoing connection before its replica starts (probably what failed one bench round once:
    a replica exited with code 1, and was rolled back)."""
    for _ in range(500):
        prefix = random.randint(103, 326)
        if all(free(int(f"{prefix}{n}")) for n in range(1, count + 1)):
            return prefix
    raise SystemExit("no free port range")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid",
                        "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x.invalid"})


class Bench:
    def __init__(self, tmp: Path, docker_host: str, image: str, environment: str) -> None:
        self.repo = tmp / "config"
        self.state = tmp / "state"
        self.repo.mkdir(parents=True)
        self.docker_host = docker_host
        self.image = image
        self.environment = environment
        git(self.repo, "init", "-q", "-b", "main")
        (self.repo / "target.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: docker, environment: {environment}}}
spec:
  provider: compose
  docker: {{host: "{docker_host}"}}
""")

    def service(self, name: str, replicas: int, max_parallel: int, version: str) -> None:
        prefix = port_prefix(replicas)
        script = (f'mkdir -p /srv && echo "$VERSION" > /srv/index.html && exec httpd -f -p '
                  f"127.0.0.1:{prefix}{{replica}} -h /srv")
        (self.repo / f"{name}.yaml").write_text(f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: {name}, environment: {self.environment}}}
spec:
  target: docker
  env: {{VERSION: "{version}"}}
  health:
    http: {{url: "http://{{host}}:{prefix}{{replica}}/"}}
    interval: 100ms
    startPeriod: 5s
  compose:
    image: {self.image}
    pullPolicy: never
    networkMode: host
    replicas: {replicas}
    command: [/bin/sh, -c, '{script}']
    stopGracePeriod: 1s
  strategy: {{type: rolling, maxParallel: {max_parallel}}}
""")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(self.state), *args],
            capture_output=True, text=True, timeout=900, cwd=ROOT)

    def apply(self) -> None:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", "bench")
        out = self.cli("apply", "--repo", str(self.repo), "-e", self.environment)
        if out.returncode != 0:
            raise SystemExit(f"apply failed:\n{out.stdout}\n{out.stderr}")

    def last_duration(self, name: str) -> float:
        out = self.cli("history", name, "-n", "1", "-o", "json")
        dep = json.loads(out.stdout)[0]
        assert dep["status"] == "succeeded", dep
        return (datetime.fromisoformat(dep["finishedAt"])
                - datetime.fromisoformat(dep["startedAt"])).total_seconds()

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--max-parallel", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    add_json_flag(parser)
    args = parser.parse_args()
    if not ENV_FILE.exists():
        raise SystemExit("test infrastructure not up: run tests/infra/up.sh")
    infra = json.loads(ENV_FILE.read_text())
    docker_host = (infra.get("docker") or {}).get("host", "unix:///var/run/docker.sock")
    image = (infra.get("images") or {}).get("tiny", "fraisier-tiny:1")
    batches = math.ceil(args.replicas / args.max_parallel)
    with tempfile.TemporaryDirectory(prefix="fraisier-bench-rolling-") as tmp:
        bench = Bench(Path(tmp), docker_host, image, f"bench-rolling-{os.getpid()}")
        try:
            bench.service("single", 1, 1, "v0")
            bench.service("fleet", args.replicas, args.max_parallel, "v0")
            bench.apply()  # first rollout: creates everything (not measured)
            singles, fleets = [], []
            for n in range(1, args.rounds + 1):
                bench.service("single", 1, 1, f"v{n}")
                bench.apply()
                singles.append(bench.last_duration("single"))
                bench.service("fleet", args.replicas, args.max_parallel, f"v{n}")
                bench.apply()
                fleets.append(bench.last_duration("fleet"))
                print(f"round {n}: single {singles[-1]:.2f}s, {args.replicas} replicas "
                      f"{fleets[-1]:.2f}s", flush=True)
        finally:
            bench.cleanup()
    single, fleet = statistics.median(singles), statistics.median(fleets)
    ideal = batches * single
    ratio = fleet / ideal
    print(f"single-replica deploy (median): {single:.2f}s")
    print(f"{args.replicas} replicas, maxParallel {args.max_parallel} ({batches} batches): "
          f"{fleet:.2f}s")
    print(f"ratio to the ideal {batches} x single = {ideal:.2f}s: {ratio:.2f}x (goal <= 1.2x)")
    if args.json:
        emit("rolling", [Figure(f"rolling {args.replicas} replicas, maxParallel "
                                f"{args.max_parallel} (median of {args.rounds})", fleet, "s",
                                ideal, f"{batches} x single-replica deploy", "<= 1.2x",
                                at_most(ratio, 1.2))],
             replicas=args.replicas, max_parallel=args.max_parallel, rounds=args.rounds)


if __name__ == "__main__":
    main()
