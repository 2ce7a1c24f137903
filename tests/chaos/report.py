"""The chaos report: one row per scenario (trials, converged, records lost).

Any test may import ``record_trial`` and add a row (tests/rollout's SIGKILL trials do); the
terminal summary hook of tests/conftest.py prints the table at the end of the session (under
pytest-xdist, from the trials each worker sent the controller) and
writes it to ``$FRAISIER_CHAOS_REPORT`` (default ``$ARTIFACTS/chaos-report.md`` when ARTIFACTS is
set, else /var/tmp/fraisier-chaos/report.md). Every trial is also appended, as it happens, to a
JSON-lines file beside the report, so a session that dies half way still leaves its trials.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Trial:
    scenario: str
    converged: bool
    lost: int
    note: str = ""
    seconds: float = 0.0


_lock = threading.Lock()
_trials: list[Trial] = []


def report_path() -> Path:
    explicit = os.environ.get("FRAISIER_CHAOS_REPORT")
    if explicit:
        return Path(explicit)
    artifacts = os.environ.get("ARTIFACTS")
    if artifacts:
        return Path(artifacts) / "chaos-report.md"
    return Path("/var/tmp/fraisier-chaos/report.md")


def record_trial(scenario: str, converged: bool, lost: int = 0, *, note: str = "",
                 seconds: float = 0.0) -> Trial:
    """Record one trial of ``scenario``: did the fleet converge, how many records were lost."""
    trial = Trial(scenario, bool(converged), int(lost), note, round(seconds, 2))
    with _lock:
        _trials.append(trial)
        path = report_path().with_suffix(".jsonl")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as out:
                out.write(json.dumps({**asdict(trial), "pid": os.getpid(),
                                      "at": time.time()}) + "\n")
        except OSError:
            pass  # the in-memory table is what the summary prints
    return trial


def trials() -> list[Trial]:
    with _lock:
        return list(_trials)


def to_wire(recorded: list[Trial]) -> list[dict[str, object]]:
    """Trials as plain data, for a parallel worker to hand to the controller (xdist)."""
    return [asdict(trial) for trial in recorded]


def merge(wire: list[dict[str, object]]) -> None:
    """Add the trials another process (a parallel worker) recorded, sent with ``to_wire``."""
    received = [Trial(str(t["scenario"]), bool(t["converged"]), int(str(t["lost"])),
                      str(t["note"]), float(str(t["seconds"]))) for t in wire]
    with _lock:
        _trials.extend(received)


def rows(recorded: list[Trial] | None = None) -> list[tuple[str, int, int, int]]:
    """(scenario, trials, converged, records lost), in the order scenarios first appeared."""
    table: dict[str, list[int]] = {}
    for trial in trials() if recorded is None else recorded:
        row = table.setdefault(trial.scenario, [0, 0, 0])
        row[0] += 1
        row[1] += trial.converged
        row[2] += trial.lost
    return [(name, count, converged, lost) for name, (count, converged, lost) in table.items()]


def render(recorded: list[Trial] | None = None) -> str:
    lines = ["| scenario | trials | converged | records lost |",
             "|---|---:|---:|---:|"]
    for name, count, converged, lost in rows(recorded):
        lines.append(f"| {name} | {count} | {converged} | {lost} |")
    return "\n".join(lines) + "\n"


def write_report(path: Path | None = None) -> Path | None:
    """Write the table (Markdown) when any trial was recorded; returns where."""
    recorded = trials()
    if not recorded:
        return None
    target = path or report_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    notes = [f"- {t.scenario}: {t.note}" for t in recorded if t.note]
    target.write_text(f"# Fraisier chaos report ({stamp})\n\n{render(recorded)}"
                      + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    return target
