"""`reconciler diff` of 10,000 Services that all use ``${NAME}`` substitution (shared
definitions, docs/environments.md), as ratios against a bare YAML parse of the same files.

Generates N Service definitions (default 10,000 in 100 files), each listing
``metadata.environments`` (default one environment, ``--environments 2``: each definition
deployed to two, so 2N Services) and using six values of its Environment (text inside strings,
a duration, a whole map), records them as applied in a SQLite state database (as
bench/diff_scale.py), then times ``reconciler diff`` processes:

* baseline: ``yaml.load_all(CSafeLoader)`` of the same files (in this process);
* cold diff (empty spec cache) — goal ≤ 1.5x baseline;
* the same fleet written out (no substitution, same resolved documents), cold: what
  substitution itself costs;
* warm diff, 1 % of the definition files changed;
* warm diff after one Environment value changed (every file's resolved records are
  rebuilt from the cached, unresolved definitions).

Times are CPU seconds (user + system: of this process for the baseline, of the ``diff``
child for the rest), best of --repeat: on a shared 2-core machine wall time measures the
neighbours more than the code (bench/spec_load.py does the same).

Usage: python bench/environments.py [--services N] [--files F] [--environments E] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from _figures import Figure, add_json_flag, at_most, emit
from diff_scale import git, record_applied

DEFINITION = """apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: svc-{i:05d}
  environments: [{environments}]
  labels: {{team: team-{team}, tier: backend, release: "${{release}}"}}
spec:
  target: fleet
  command: [/usr/local/bin/server, --port, "{port}", --workers, "4"]
  env:
    LOG_LEVEL: ${{logLevel}}
    REGION: ${{region}}-{team}
    FEATURE_FLAGS: "a,b,c"
    DB_PASSWORD: {{env: DB_PASSWORD}}
    GREETING: "hello from ${{release}}"
  stopTimeout: 10s
  health:
    http: {{url: "http://{{host}}:{port}/healthz", expectStatus: 200}}
    interval: ${{healthInterval}}
    timeout: 1s
    failureThreshold: 3
  strategy: ${{strategy}}
"""

# the same documents written out for one environment (what the definitions resolve to)
WRITTEN = """apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: svc-{i:05d}
  environment: {environment}
  labels: {{team: team-{team}, tier: backend, release: "{release}"}}
spec:
  target: fleet
  command: [/usr/local/bin/server, --port, "{port}", --workers, "4"]
  env:
    LOG_LEVEL: info
    REGION: eu-west-{team}
    FEATURE_FLAGS: "a,b,c"
    DB_PASSWORD: {{env: DB_PASSWORD}}
    GREETING: "hello from {release}"
  stopTimeout: 10s
  health:
    http: {{url: "http://{{host}}:{port}/healthz", expectStatus: 200}}
    interval: 2s
    timeout: 1s
    failureThreshold: 3
  strategy: {{type: recreate}}
"""

ENVIRONMENT = """apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: {name}}}
spec:
  values:
    release: "{release}"
    logLevel: info
    region: eu-west
    healthInterval: 2s
    strategy: {{type: recreate}}
"""

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: fleet, environments: [{environments}]}}
spec: {{provider: bare_metal, transport: local}}
"""


def names(count: int) -> list[str]:
    return [f"bench{n}" for n in range(count)]


def write_definitions(fleet: Path, services: int, files: int, environments: list[str],
                      only_file: int | None = None, tier: str = "backend") -> None:
    per = services // files
    listed = ", ".join(environments)
    for f in range(files):
        if only_file is not None and f != only_file:
            continue
        docs = [DEFINITION.format(i=i, team=i % 7, port=20000 + i % 40000, environments=listed)
                for i in range(f * per, (f + 1) * per)]
        text = "---\n".join(docs)
        if only_file is not None:
            text = text.replace("tier: backend", f"tier: {tier}")
        (fleet / f"services-{f:03d}.yaml").write_text(text)


def write_environments(fleet: Path, environments: list[str], release: str = "1.0") -> None:
    (fleet / "environments.yaml").write_text("---\n".join(
        ENVIRONMENT.format(name=name, release=release) for name in environments))
    (fleet / "target.yaml").write_text(TARGET.format(environments=", ".join(environments)))


def write_out(fleet: Path, services: int, files: int, environments: list[str]) -> None:
    """The fleet as it resolves, written document by document (no substitution)."""
    per = services // files
    for f in range(files):
        docs = [WRITTEN.format(i=i, team=i % 7, port=20000 + i % 40000, environment=e,
                               release="1.0")
                for i in range(f * per, (f + 1) * per) for e in environments]
        (fleet / f"services-{f:03d}.yaml").write_text("---\n".join(docs))
    (fleet / "environments.yaml").unlink()
    (fleet / "target.yaml").write_text("---\n".join(
        f"apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {{name: fleet, environment: {e}}}"
        "\nspec: {provider: bare_metal, transport: local}\n" for e in environments))


def baseline(repo: Path) -> float:
    """CPU seconds of ``yaml.load_all(CSafeLoader)`` over the fleet's files."""
    paths = sorted((repo / "fleet").glob("*.yaml"))
    start = time.process_time()
    for path in paths:
        list(yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader))
    return time.process_time() - start


def diff_cli(repo: Path, state: Path, *, cold: bool) -> tuple[float, int]:
    """CPU seconds of one ``reconciler diff`` process (an empty spec cache when ``cold``)."""
    if cold:
        shutil.rmtree(state / "cache", ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), "diff",
                           "--repo", str(repo), "--path", "fleet", "-o", "json"],
                          capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"diff failed ({proc.returncode}): {proc.stderr[-2000:]}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used, proc.returncode


def best(repeat: int, measure: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    return min(measure() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000,
                        help="Service definitions (each deployed to --environments)")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--environments", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    add_json_flag(parser)
    args = parser.parse_args()
    environments = names(args.environments)
    resolved = args.services * args.environments
    work = Path(tempfile.mkdtemp(prefix="fraisier-bench-"))
    try:
        repo, state = work / "repo", work / "state"
        fleet = repo / "fleet"
        fleet.mkdir(parents=True)
        write_environments(fleet, environments)
        write_definitions(fleet, args.services, args.files, environments)
        git(repo, "init", "-q", "-b", "main")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "fleet")
        size = sum(p.stat().st_size for p in fleet.glob("*.yaml"))
        os.environ.setdefault("DB_PASSWORD", "bench-only")

        repeat = args.repeat
        base = min(baseline(repo) for _ in range(repeat))
        asyncio.run(record_applied(repo, state))
        cold, code_cold = best(repeat, lambda: diff_cli(repo, state, cold=True))
        diff_cli(repo, state, cold=False)  # fills the cache
        write_definitions(fleet, args.services, args.files, environments, only_file=0,
                          tier="changed")
        git(repo, "commit", "-q", "-am", "1% changed")
        warm, code_warm = diff_cli(repo, state, cold=False)
        write_environments(fleet, environments, release="1.1")
        git(repo, "commit", "-q", "-am", "a value changed")
        value, code_value = diff_cli(repo, state, cold=False)

        # the same resolved fleet, written out: cold diff with a fresh state
        written_repo, written_state = work / "written", work / "written-state"
        shutil.copytree(repo, written_repo)
        write_out(written_repo / "fleet", args.services, args.files, environments)
        git(written_repo, "add", "-A")
        git(written_repo, "commit", "-q", "-m", "written out")
        asyncio.run(record_applied(written_repo, written_state))
        written, code_written = best(repeat, lambda: diff_cli(written_repo, written_state,
                                                              cold=True))
        written_base = min(baseline(written_repo) for _ in range(repeat))

        print(f"fleet: {args.services} Service definitions x {args.environments} "
              f"environment(s) = {resolved} Services, {args.files} files, {size / 1e6:.1f} MB")
        print(f"{'measure (CPU seconds, best of ' + str(repeat) + ')':52s} {'seconds':>8s} "
              f"{'ratio':>7s}  goal")
        print(f"{'baseline yaml.load_all(CSafeLoader), same files':52s} {base:8.3f} {1.0:7.2f}")
        print(f"{'cold diff (empty cache), exit ' + str(code_cold):52s} {cold:8.3f} "
              f"{cold / base:7.2f}  <= 1.5")
        print(f"{'warm diff, 1% of files changed, exit ' + str(code_warm):52s} {warm:8.3f} "
              f"{warm / base:7.2f}")
        print(f"{'warm diff, one Environment value changed, exit ' + str(code_value):52s} "
              f"{value:8.3f} {value / base:7.2f}")
        print(f"{'written out: yaml.load_all':52s} {written_base:8.3f} "
              f"{written_base / base:7.2f}")
        print(f"{'written out: cold diff, exit ' + str(code_written):52s} {written:8.3f} "
              f"{written / base:7.2f}  (substitution costs {cold / written - 1:+.0%})")
        if args.json:
            label = f"yaml.load_all of the {args.services} definitions (CPU)"
            emit("environments", [
                Figure(f"cold diff, {resolved} Services using substitution (CPU, exit "
                       f"{code_cold})",
                       cold, "s", base, label, "<= 1.5x", at_most(cold / base, 1.5)),
                Figure("same fleet written out, cold diff", written, "s", base, label),
                Figure("warm diff, one Environment value changed", value, "s", base, label),
            ], services=args.services, files=args.files, environments=args.environments,
                repeat=repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
