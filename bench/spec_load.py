"""Benchmark of the desired-state loader against the bare YAML parse (DESIGN "Performance notes").

Generates 10,000 Service documents (about 5.5 MB of YAML over 100 files) plus a Target, then in
one process times:

  baseline  read every file + yaml.load_all(CSafeLoader)          (the floor: parsing only)
  cold      files_from_directory + load_desired_state, empty SpecCache
  warm      the same with 1% of the files changed and a populated SpecCache

and prints each time and its ratio to the baseline (goals: cold <= 1.3x, warm <= 0.1x).
Times are CPU time of this process (see ``timed``) over --repeat interleaved runs, shown as
the minimum (least disturbed by other load on the machine) and the median; "cold" gets a fresh
cache directory every run.

    .venv/bin/python bench/spec_load.py [--services 10000] [--files 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from _figures import Figure, add_json_flag, at_most, emit

from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import files_from_directory, load_desired_state

TARGET = """\
# yaml-language-server: $schema=../schemas/fraisier.json
apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: bare_metal
  transport: local
  keepReleases: 5
"""

SERVICE = """\
---
apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: svc-{n:05d}
  labels:
    team: team-{team}
    tier: backend
spec:
  target: local
  source:
    path: apps/svc-{n:05d}
  command: [python3, app.py, --port, "{port}"]
  env:
    GREETING: hello from service {n}
    API_TOKEN: {{env: API_TOKEN}}
    DB_PASSWORD: {{file: /etc/secrets/db-{team}}}
  stopTimeout: 10s
  health:
    http:
      url: "http://{{host}}:{port}/healthz"
      expectStatus: 200
    interval: 1s
    timeout: 2s
    startPeriod: 5s
    failureThreshold: 3
  strategy:
    type: rolling
"""


def generate(root: Path, services: int, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "target.yaml").write_text(TARGET)
    per_file = -(-services // files)
    for f in range(files):
        docs = [
            SERVICE.format(n=n, team=n % 17, port=8000 + n % 1000)
            for n in range(f * per_file, min(services, (f + 1) * per_file))
        ]
        (root / f"services-{f:03d}.yaml").write_text("".join(docs))


def change_files(root: Path, fraction: float, round_: int) -> int:
    """Edit ``fraction`` of the service files (a label value), as a commit would."""
    paths = sorted(root.glob("services-*.yaml"))
    count = max(1, round(len(paths) * fraction))
    for path in paths[:count]:
        text = path.read_text()
        path.write_text(text.replace("tier: backend", f"tier: backend-r{round_}", 1))
    return count


def baseline(root: Path) -> int:
    documents = 0
    for path in sorted(root.rglob("*.yaml")):
        documents += sum(1 for _ in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader))
    return documents


def timed(action: Callable[[], object]) -> float:
    """CPU seconds of ``action``: the loader is single-threaded and CPU-bound, and CPU time is
    far less disturbed than wall time by other work on a shared 2-core machine."""
    start = time.process_time()
    action()
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    add_json_flag(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fraisier-bench-") as tmp:
        fleet = Path(tmp) / "fleet"
        generate(fleet, args.services, args.files)
        size = sum(p.stat().st_size for p in fleet.rglob("*.yaml"))
        print(
            f"fleet: {args.services} Services + 1 Target, {args.files + 1} files, "
            f"{size / 1e6:.2f} MB; Python {sys.version.split()[0]}, "
            f"libyaml {yaml.__with_libyaml__}"
        )

        # first call in the process: includes compiling the fastjsonschema validators
        first_cache = SpecCache(Path(tmp) / "cache-first")
        first_cold = timed(
            lambda: load_desired_state(files_from_directory(fleet), cache=first_cache)
        )

        base_times, cold_times, warm_times, no_cache_times = [], [], [], []
        for run in range(args.repeat):
            base_times.append(timed(lambda: baseline(fleet)))
            cache = SpecCache(Path(tmp) / f"cache-{run}")
            cold_times.append(
                timed(lambda c=cache: load_desired_state(files_from_directory(fleet), cache=c))  # type: ignore[misc]
            )
            no_cache_times.append(timed(lambda: load_desired_state(files_from_directory(fleet))))
            changed = change_files(fleet, 0.01, run)
            state = None

            def warm(c: SpecCache = cache) -> None:
                nonlocal state
                state = load_desired_state(files_from_directory(fleet), cache=c)

            hits_before = cache.hits
            warm_times.append(timed(warm))
            assert state is not None and len(state.resources) == args.services + 1
            reparsed = args.files + 1 - (cache.hits - hits_before)
            assert reparsed == changed, (reparsed, changed)

        print(f"{'':<48} {'min':>9} {'ratio':>6} {'median':>9} {'ratio':>6}")
        base_min, base_median = min(base_times), statistics.median(base_times)
        rows = [
            ("baseline: read + yaml.load_all(CSafeLoader)", base_times),
            ("cold, first in process (compiles validators)", [first_cold]),
            ("cold: load_desired_state, empty cache", cold_times),
            ("cold: load_desired_state, no cache", no_cache_times),
            ("warm: 1% of files changed, cache populated", warm_times),
        ]
        for label, times in rows:
            low, middle = min(times), statistics.median(times)
            print(
                f"{label:<48} {low * 1000:7.0f}ms {low / base_min:5.2f}x "
                f"{middle * 1000:7.0f}ms {middle / base_median:5.2f}x"
            )
        for statistic, base, cold, warm in (
            ("min", base_min, min(cold_times), min(warm_times)),
            ("median", base_median, statistics.median(cold_times), statistics.median(warm_times)),
        ):
            cold_ratio, warm_ratio = cold / base, warm / base
            print(
                f"goals ({statistic}): cold <= 1.30x -> {cold_ratio:.2f}x "
                f"{'ok' if cold_ratio <= 1.3 else 'MISSED'}; warm <= 0.10x -> "
                f"{warm_ratio:.3f}x {'ok' if warm_ratio <= 0.1 else 'MISSED'}"
            )
        if args.json:
            label = "read + yaml.load_all (CPU s, median)"
            cold, warm = statistics.median(cold_times), statistics.median(warm_times)
            emit("spec_load", [
                Figure(f"load {args.services} Services, empty cache (CPU)", cold, "s",
                       base_median, label, "<= 1.3x", at_most(cold / base_median, 1.3)),
                Figure("load, 1% of files changed, warm cache (CPU)", warm, "s", base_median,
                       label, "<= 0.1x", at_most(warm / base_median, 0.1)),
            ], services=args.services, files=args.files, repeat=args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
