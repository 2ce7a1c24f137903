"""`make bench`: run every benchmark in bench/ and print ONE table of figures.

Each script runs as its own process with ``--json`` (its human output goes to a log file) and
ends with a ``BENCH-FIGURES {...}`` line (bench/_figures.py); this collects those lines into a
table: figure, measured, baseline, ratio, goal, met. Baselines are measured in the same run
(a bare YAML parse, a raw ``docker compose``, a plain asyncssh script, SQLite...) or are a
fixed reference (the poll interval). A script without ``--json`` support still runs; it is
listed without figures.

    .venv/bin/python bench/run_all.py [--quick] [--only a,b] [--skip a,b] [--markdown FILE]

``--quick`` shortens the slow ones (idle: a 20 s window on Services only instead of 60 s on
both scenarios; bare_metal: 3 rounds and no ansible-core; latency: 10 commits; compose: 3
rounds; store: 100 deployments; rolling: 2 rounds; notifications: 200 resources;
fleet: 5 Services per host, no ansible-core; fleet_ha: 20 x 5, and only when the 20 fleet
hosts are up, see bench/fleet.py). The full run took 10 min on a quiet 2-core
machine (docs/performance.md), most of it idle's two 60 s windows and the first ansible-core
install.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _figures import PREFIX

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
ORDER = ["spec_load", "diff_scale", "environments", "store", "latency", "compose", "bare_metal",
         "fleet", "fleet_ha", "rolling", "sync_windows", "notifications", "idle"]
QUICK: dict[str, list[str]] = {
    "idle": ["--seconds", "20", "--scenario", "services"],
    "bare_metal": ["--rounds", "3", "--no-ansible"],
    "latency": ["--commits", "10", "--poll-commits", "4"],
    "compose": ["--rounds", "3"],
    "store": ["--deployments", "100"],
    "rolling": ["--rounds", "2"],
    "notifications": ["--resources", "200"],
    "environments": ["--repeat", "1"],
    "diff_scale": ["--sizes", "10000"],  # the 1,000 and 50,000 growth sizes: make bench only
    "fleet": ["--quick"],
}
TIMEOUT_S = 3600
# Benches on the 20 fleet hosts (bench/fleet.py's docstring): a quick run skips them when those
# hosts are not up.
NEEDS_FLEET_HOSTS = {"fleet_ha"}


def fleet_hosts_up(needed: int = 20) -> bool:
    """The work dir those benches use (FRAISIER_TESTINFRA, else the fleet's) lists the hosts."""
    workdir = Path(os.environ.get("FRAISIER_TESTINFRA", "/var/tmp/fraisier-fleet"))
    try:
        hosts = json.loads((workdir / "env.json").read_text()).get("hosts", [])
    except (OSError, ValueError):
        return False
    return len(hosts) >= needed


def scripts() -> list[str]:
    found = sorted(p.stem for p in BENCH.glob("*.py")
                   if not p.name.startswith("_") and p.name != "run_all.py")
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def machine() -> str:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                   timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({model or platform.processor() or '?'}), {memory}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def run_one(name: str, extra: list[str], logs: Path) -> tuple[int, float, dict[str, Any] | None]:
    script = BENCH / f"{name}.py"
    text = script.read_text()
    supports_json = "add_json_flag" in text or "\"--json\"" in text
    argv = [sys.executable, str(script), *extra, *(["--json"] if supports_json else [])]
    log = logs / f"{name}.log"
    shown = log.relative_to(ROOT) if log.is_relative_to(ROOT) else log
    print(f"== {name} {' '.join(extra)} (log: {shown})", flush=True)
    started = time.monotonic()
    document = None
    with log.open("w") as handle:
        handle.write("$ " + " ".join(argv) + "\n")
        handle.flush()
        try:
            proc = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)
            output, code = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout if isinstance(exc.stdout, str) else ""
            code = 124
        handle.write(output)
    for line in output.splitlines():
        if line.startswith(PREFIX):
            document = json.loads(line[len(PREFIX):])
        elif line.strip():
            print(f"   {line}", flush=True)
    elapsed = time.monotonic() - started
    status = "ok" if code == 0 else f"FAILED (exit {code})"
    print(f"   {name}: {status} in {elapsed:.0f} s"
          + ("" if supports_json else " (no --json: no figures)"), flush=True)
    return code, elapsed, document


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| figure | measured | baseline | ratio | goal | met? |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        baseline = fmt(row["baseline"], row["unit"])
        if row.get("baseline_label"):
            baseline = f"{baseline} ({row['baseline_label']})" if row["baseline"] is not None \
                else row["baseline_label"]
        met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
        ratio = "—" if row["ratio"] is None else f"{row['ratio']:.3g}x"
        lines.append(f"| {row['figure']} | {fmt(row['measured'], row['unit'])} | {baseline} | "
                     f"{ratio} | {row['goal'] or '—'} | {met} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter settings for slow benches")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    parser.add_argument("--skip", default="", help="comma-separated bench names")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--logs", type=Path, default=ROOT / ".state" / "bench")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    names = [n for n in scripts() if (not only or n in only) and n not in skip]
    args.logs.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    header = (f"bench run {started:%Y-%m-%d %H:%M} UTC{' (--quick)' if args.quick else ''} on "
              f"{machine()}")
    print(header, flush=True)
    rows: list[dict[str, Any]] = []
    summary: list[str] = []
    failed = 0
    for name in names:
        if args.quick and name in NEEDS_FLEET_HOSTS and not fleet_hosts_up():
            print(f"== {name}: skipped (the fleet hosts are not up)", flush=True)
            summary.append(f"{name}: skipped, the fleet hosts are not up")
            continue
        extra = QUICK.get(name, []) if args.quick else []
        code, elapsed, document = run_one(name, extra, args.logs)
        failed += code != 0
        settings = ""
        if document:
            rows += [{**f, "bench": name} for f in document["figures"]]
            settings = ", ".join(f"{k}={v}" for k, v in document.get("settings", {}).items())
        summary.append(f"{name}: {'ok' if code == 0 else f'FAILED (exit {code})'}, "
                       f"{elapsed:.0f} s" + (f" ({settings})" if settings else "")
                       + ("" if document or code else ", no figures"))
    lines = table(rows)
    total = (datetime.now(UTC) - started).total_seconds()
    print("\n" + header)
    print("\n".join(lines))
    print("\n" + "\n".join(summary))
    print(f"total {total / 60:.1f} min; {len(rows)} figures, "
          f"{sum(r['met'] is False for r in rows)} goal(s) missed, {failed} bench(es) failed")
    if args.markdown:
        args.markdown.write_text("\n".join([header, "", *lines, "", *summary, ""]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
