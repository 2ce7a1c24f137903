"""`make fuzz`: every fuzz target with FUZZ_EXAMPLES cases (default 10,000), in two pytest
processes side by side (the machine has two cores), then one table of the figures Hypothesis
reports per test: cases run (passing / failing / rejected by ``assume``), seconds, outcome.

    .venv/bin/python tests/fuzz/run.py [--examples 10000] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUPS = [  # balanced by measured cost: about half of the total time each
    [
        "tests/fuzz/test_loader.py",
        "tests/fuzz/test_cron_durations.py",
        "tests/fuzz/test_daemon_state.py",
    ],
    [
        "tests/fuzz/test_schema.py",
        "tests/fuzz/test_webhooks.py",
        "tests/fuzz/test_webhook_http.py",
    ],
]
_TEST = re.compile(r"^(tests/fuzz/\S+::\S+):$")
_PHASE = re.compile(r"during (\w+) phase \(([\d.]+) seconds\)")
_COUNTS = re.compile(
    r"(\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?, (?:and )?(\d+) invalid"
)


def statistics(text: str) -> dict[str, list[float]]:
    """test id -> [passing, failing, invalid, seconds] summed over Hypothesis' phases."""
    figures: dict[str, list[float]] = {}
    current: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        match = _TEST.match(stripped)
        if match:
            current = match.group(1)
            figures[current] = [0, 0, 0, 0.0]
            continue
        if current is None:
            continue
        phase = _PHASE.search(stripped)
        if phase:
            figures[current][3] += float(phase.group(2))
        counts = _COUNTS.search(stripped)
        if counts:
            for index in range(3):
                figures[current][index] += int(counts.group(index + 1))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int,
                        default=int(os.environ.get("FUZZ_EXAMPLES", "10000")))
    parser.add_argument("--jobs", type=int, default=2, choices=(1, 2))
    args = parser.parse_args()
    env = {**os.environ, "FUZZ_EXAMPLES": str(args.examples)}
    groups = GROUPS if args.jobs == 2 else [[path for group in GROUPS for path in group]]
    logs = [ROOT / ".hypothesis" / f"fuzz-{i}.log" for i in range(len(groups))]
    logs[0].parent.mkdir(exist_ok=True)
    print(f"fuzz: {args.examples} cases per target, {len(groups)} pytest process(es); "
          f"logs in {logs[0].parent}/", flush=True)
    started = time.monotonic()
    processes = []
    for group, log in zip(groups, logs, strict=True):
        with log.open("w") as handle:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "--hypothesis-show-statistics", *group],
                cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
            ))
    codes = [p.wait() for p in processes]
    wall = time.monotonic() - started
    figures: dict[str, list[float]] = {}
    for log in logs:
        text = log.read_text(errors="replace")
        figures.update(statistics(text))
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed)", line)]
        print(f"{log.name}: {summary[-1] if summary else 'no summary (see the log)'}")
    print(f"\n{'test':76s} {'cases':>7s} {'failing':>7s} {'assumed':>7s} {'seconds':>8s}")
    for test, (passing, failing, invalid, seconds) in sorted(figures.items()):
        name = test.removeprefix("tests/fuzz/")
        print(f"{name:76s} {int(passing + failing):7d} {int(failing):7d} {int(invalid):7d} "
              f"{seconds:8.1f}")
    print(f"\nwall time {wall:.0f} s; exit codes {codes}")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
