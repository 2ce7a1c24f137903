"""Benchmark: one image update of one compose Service — `reconciler apply` vs a raw
`docker compose up -d --wait` (v1: `up -d` and a health wait loop), on the same dockerd in the
same run (issue 4).

Both deploy the same service (the tiny busybox image of tests/infra/up.sh, rebuilt locally as two
tags that differ in one file; httpd on 127.0.0.1, network_mode host, a Docker healthcheck) and
switch it between the two tags, alternating, rounds interleaved:

- reconciler: the image change is committed to a config repo (not timed), then the wall time of
  a `reconciler apply` process: load the repo, plan, `compose up -d --no-deps`, wait until the
  container runs and Docker reports it healthy, record the deployment in SQLite;
- raw: the compose file is rewritten (not timed), then the wall time of `compose up -d --wait`
  (compose v2: it returns once the container is healthy; as fast as, or faster than, polling
  `docker inspect` every 100 ms, measured in docs/performance.md), or with compose v1, which has
  no `--wait`, `up -d` followed by `docker inspect` of the container every 100 ms until its
  health status is `healthy`.

The reconciler runs byte-compiled, as an installed one (pip, the container image) does: a shell
with PYTHONDONTWRITEBYTECODE=1 (a development session's) would make every `apply` compile its
modules from source, a cost no user pays (the untimed first deploy writes the caches).

The two use separate projects and ports, so they never disturb one another. Medians and their
ratio are printed (goal: reconciler <= 1.15x raw), plus a no-op `reconciler apply` (interpreter
start-up, loading, planning: the fixed cost that the ratio is most sensitive to).

    sudo tests/infra/up.sh    # once: dockerd, compose v1/v2, the tiny image
    .venv/bin/python bench/compose.py [--rounds 5] [--compose v2] [--health-interval 1s]
                                      [--from-source]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _figures import Figure, add_json_flag, at_most, emit
from _python_env import installed_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import free_port  # noqa: E402
from tests.infra.testinfra import Infra, load  # noqa: E402

IMAGE_REPO = "fraisier-bench-compose"
ENVIRONMENT = "bench"
RAW_PROJECT = "fraisier-bench-raw"
RECONCILER_PROJECT = f"fraisier_{ENVIRONMENT}_service_web"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}




def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def build_images(infra: Infra, tmp: Path) -> list[str]:
    """Two tags of the tiny image whose index.html differ (classic builder: no registry, no
    BuildKit needed)."""
    tags = []
    for version in ("1", "2"):
        tag = f"{IMAGE_REPO}:{version}"
        context = tmp / f"image-{version}"
        context.mkdir()
        (context / "index.html").write_text(f"bench version {version}\n")
        (context / "Dockerfile").write_text(f"FROM {infra.tiny_image}\nCOPY index.html /www/\n")
        run(
            [infra.docker_cli, "build", "-q", "-t", tag, str(context)],
            env={"DOCKER_BUILDKIT": "0", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        tags.append(tag)
    return tags


def service_fields(image: str, port: int, interval: str) -> dict[str, Any]:
    """The one compose service both methods run (as compose YAML keys)."""
    return {
        "image": image,
        "network_mode": "host",
        "init": True,
        "restart": "unless-stopped",
        "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
        "stop_grace_period": "2s",
        "healthcheck": {
            "test": ["CMD", "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/health"],
            "interval": interval,
            "timeout": "2s",
            "retries": 3,
        },
    }


class Reconciler:
    def __init__(self, tmp: Path, infra: Infra, compose: list[str], port: int, interval: str,
                 from_source: bool = False):
        self.repo, self.state = tmp / "config", tmp / "state"
        self.repo.mkdir()
        self.infra, self.compose, self.port, self.interval = infra, compose, port, interval
        self.env = installed_env(tmp / "pycache")
        self.env.update(GIT_ENV)
        if from_source:
            # the installed packages' and the standard library's caches are used, the project's
            # own modules are compiled at every run (no caches are written beside them)
            del self.env["PYTHONPYCACHEPREFIX"]
            self.env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.git("init", "-q", "-b", "main")
        target = {
            "provider": "compose",
            "docker": {"host": infra.docker_host, "composeCommand": compose},
        }
        self.write("target.yaml", self.document("Target", "docker", target))

    def git(self, *args: str) -> None:
        run(["git", "-C", str(self.repo), *args], env=self.env)

    def document(self, kind: str, name: str, spec: dict[str, Any]) -> str:
        return (
            f"apiVersion: fraisier.dev/v1\nkind: {kind}\nmetadata:\n  name: {name}\n"
            f"  environment: {ENVIRONMENT}\nspec: {json.dumps(spec)}\n"
        )

    def write(self, name: str, text: str) -> None:
        (self.repo / name).write_text(text)

    def commit(self, image: str) -> None:
        fields = service_fields(image, self.port, self.interval)
        check = fields["healthcheck"]
        compose = {
            "image": image,
            "pullPolicy": "never",
            "networkMode": "host",
            "command": fields["command"],
            "stopGracePeriod": "2s",
            "healthcheck": {
                "test": check["test"][1:],
                "interval": check["interval"],
                "timeout": check["timeout"],
                "retries": check["retries"],
            },
        }
        self.write(
            "web.yaml", self.document("Service", "web", {"target": "docker", "compose": compose})
        )
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"web {image}")

    def apply(self) -> tuple[float, float | None]:
        """Wall time of one `reconciler apply` process, and the part of it from the deployment's
        start to its success (provider + health), read from the JSON log."""
        argv = [sys.executable, "-m", "reconciler", "--state-dir", str(self.state)]
        argv += ["--log-format", "json", "--log-level", "info", "apply", "--repo", str(self.repo)]
        started = time.perf_counter()
        proc = run(argv, cwd=self.repo, env=self.env)
        wall = time.perf_counter() - started
        stamps: dict[str, datetime] = {}
        for line in proc.stderr.splitlines():
            with contextlib.suppress(ValueError, KeyError):
                event = json.loads(line)
                if event.get("resource", "").endswith("/Service/web"):
                    stamps[event["phase"]] = datetime.fromisoformat(event["ts"])
        if "deploying" in stamps and "succeeded" in stamps:
            return wall, (stamps["succeeded"] - stamps["deploying"]).total_seconds()
        return wall, None


class Raw:
    def __init__(self, tmp: Path, infra: Infra, compose: list[str], port: int, interval: str):
        self.dir = tmp / "raw"
        self.dir.mkdir()
        self.file = self.dir / "compose.yaml"
        self.infra, self.compose, self.port, self.interval = infra, compose, port, interval
        self.wait_flag = False  # set for compose v2, whose `up --wait` waits for health

    def write(self, image: str) -> None:
        document = {"services": {"web": service_fields(image, self.port, self.interval)}}
        self.file.write_text(json.dumps(document, indent=1))  # JSON is YAML

    def deploy(self) -> float:
        docker = self.infra.docker_cli
        env = {**os.environ, "DOCKER_HOST": self.infra.docker_host}
        up = [*self.compose, "-p", RAW_PROJECT, "-f", str(self.file), "up", "-d"]
        started = time.perf_counter()
        if self.wait_flag:
            run([*up, "--wait"], env=env)
            return time.perf_counter() - started
        run(up, env=env)
        while True:
            ids = run(
                [docker, "ps", "-q", "--filter", f"label=com.docker.compose.project={RAW_PROJECT}"]
            ).stdout.split()
            if len(ids) == 1:
                health = run([docker, "inspect", "-f", "{{.State.Health.Status}}", ids[0]])
                if health.stdout.strip() == "healthy":
                    return time.perf_counter() - started
                if health.stdout.strip() == "unhealthy":
                    raise SystemExit("raw: container unhealthy")
            time.sleep(0.1)


def served(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as response:
        return str(response.read().decode().strip())


def remove_projects(infra: Infra) -> None:
    for project in (RAW_PROJECT, RECONCILER_PROJECT):
        ids = run(
            [
                infra.docker_cli,
                "ps",
                "-a",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={project}",
            ]
        ).stdout.split()
        if ids:
            run([infra.docker_cli, "rm", "-f", *ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="updates per method (default 5)")
    parser.add_argument("--compose", choices=("v1", "v2"), default="v2")
    parser.add_argument(
        "--from-source",
        action="store_true",
        help="run the reconciler without bytecode caches (as a PYTHONDONTWRITEBYTECODE=1 shell)",
    )
    parser.add_argument(
        "--health-interval",
        default="1s",
        help="Docker healthcheck interval of the service (default 1s)",
    )
    add_json_flag(parser)
    args = parser.parse_args()

    infra, reason = load()
    if infra is None or not infra.docker_ok():
        raise SystemExit(f"no test dockerd: {reason or 'not answering'}; run tests/infra/up.sh")
    compose = infra.compose_argv(args.compose)
    if compose is None:
        raise SystemExit(f"compose {args.compose} not installed; run tests/infra/up.sh")
    version = run([*compose, "version", "--short"]).stdout.strip()

    tmp = Path(tempfile.mkdtemp(prefix="fraisier-bench-compose-"))
    remove_projects(infra)
    try:
        images = build_images(infra, tmp)
        reconciler = Reconciler(
            tmp, infra, compose, free_port(), args.health_interval, args.from_source
        )
        raw = Raw(tmp, infra, compose, free_port(), args.health_interval)
        raw.wait_flag = not version.lstrip("v").startswith("1.")
        # First deploy of each (creates the container): not measured.
        reconciler.commit(images[0])
        reconciler.apply()
        raw.write(images[0])
        raw.deploy()

        times: dict[str, list[float]] = {"reconciler": [], "raw": []}
        cpu: dict[str, list[float]] = {"reconciler": [], "raw": []}
        deploy_phase: list[float] = []
        for round_no in range(1, args.rounds + 1):
            image = images[round_no % 2]
            reconciler.commit(image)
            before = children_cpu()
            wall, phase = reconciler.apply()
            cpu["reconciler"].append(children_cpu() - before)
            times["reconciler"].append(wall)
            if phase is not None:
                deploy_phase.append(phase)
            raw.write(image)
            before = children_cpu()
            times["raw"].append(raw.deploy())
            cpu["raw"].append(children_cpu() - before)
            want = f"bench version {image.rsplit(':', 1)[1]}"
            for name, port in (("reconciler", reconciler.port), ("raw", raw.port)):
                if served(port) != want:
                    raise SystemExit(f"{name}: serves {served(port)!r}, not {want!r}")
            print(
                f"round {round_no}: -> {image}  "
                + "  ".join(f"{name} {values[-1]:.2f}s" for name, values in times.items())
                + (f"  (reconciler deploy phase {phase:.2f}s)" if phase is not None else ""),
                flush=True,
            )
        noop = [reconciler.apply()[0] for _ in range(3)]
    finally:
        remove_projects(infra)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\none image update of 1 compose Service (compose {version}, healthcheck interval "
        f"{args.health_interval}{', from source' if args.from_source else ''}), "
        f"median of {args.rounds}:"
    )
    for name, value in med.items():
        print(
            f"  {name:<10} {value:6.2f}s   (min {min(times[name]):.2f}s; CPU "
            f"{statistics.median(cpu[name]):.2f}s)"
        )
    print(
        f"  (reconciler apply with nothing to do: {statistics.median(noop):.2f}s — start-up, "
        "loading, planning)"
    )
    if deploy_phase:
        phase = statistics.median(deploy_phase)
        print(
            f"  (of which the deployment itself, deploying -> healthy in the log: {phase:.2f}s, "
            f"{phase / med['raw']:.2f}x raw)"
        )
    print(f"reconciler / raw compose : {med['reconciler'] / med['raw']:.2f}x  (goal <= 1.15x)")
    if args.json:
        emit("compose", [
            Figure(f"compose image update, reconciler apply (median of {args.rounds})",
                   med["reconciler"], "s", med["raw"],
                   "compose up -d --wait" if raw.wait_flag else "compose up -d + health wait",
                   "<= 1.15x", at_most(med["reconciler"] / med["raw"], 1.15)),
        ], rounds=args.rounds, compose=version, health_interval=args.health_interval)


if __name__ == "__main__":
    main()
