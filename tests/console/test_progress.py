"""`apply` as a person sees it, in a real terminal (tmux) at 80 and 120 columns: a live table
that moves during a slow health gate (phase, instance, probe n, elapsed), and failures that
say in which phase they happened and what the failed Job printed last. Without a terminal:
plain lines, one per phase (never one per probe).

Before console/progress.py and rollout/lastlines.py: nothing moved during the gate, the
summary had no phase, and a failed Job said only "exited with code 3"."""

from __future__ import annotations

import re
import sys

import pytest

from reconciler.console.progress import Progress
from reconciler.spec.model import ResourceKey
from tests.console.tmux import run_in_terminal
from tests.e2e.conftest import Fleet, fleet, free_port, service_yaml

__all__ = ["fleet"]  # the e2e fixture: a config repo and a local Target
CRASH = "print('reading /etc/crash.toml'); print('error: no such file'); raise SystemExit(4)"


def fleet_with_a_slow_gate_and_two_failures(f: Fleet) -> None:
    slow = service_yaml("slow", free_port(), extra_env='\n    SLOW_START: "3"',
                        start_period="8s")
    f.write("slow.yaml", slow.replace("interval: 200ms", "interval: 500ms"))
    f.write("broken.yaml", service_yaml("broken", free_port(), fail=True))
    f.write("job.yaml", f"""apiVersion: fraisier.dev/v1
kind: Job
metadata:
  name: migrate
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, job.py]
  env: {{MSG: "boom: table users is locked", CODE: "3"}}
  timeout: 30s
""")
    f.write("crash.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: crash
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, -c, "{CRASH}"]
  health:
    tcp: {{port: {free_port()}}}
    interval: 200ms
    startPeriod: 5s
""")
    f.commit("a slow gate, a failing gate, a crashing Service, a failing job")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("width", [80, 120])
def test_apply_shows_the_gate_live_and_where_failures_happened(fleet: Fleet,
                                                               width: int) -> None:
    fleet_with_a_slow_gate_and_two_failures(fleet)
    command = (f"{sys.executable} -m reconciler --state-dir {fleet.state} --log-format text "
               "apply --repo . --path fleet")
    screen, code, frames = run_in_terminal(command, width=width, cwd=fleet.repo, during=0.5,
                                           timeout=150)
    assert code == 1, screen
    # while the slow Service's gate waits, its row moves: probe number and elapsed seconds
    gate = [f for f in frames if re.search(r"default/Service/slow\s+health check\s+\d+s", f)]
    assert gate, frames[-1] if frames else screen
    probes = {m for f in gate for m in re.findall(r"probe (\d+)", f)}
    seconds = {m for f in gate
               for m in re.findall(r"default/Service/slow\s+health check\s+(\d+)s", f)}
    assert len(probes) >= 2 and len(seconds) >= 2, gate[-1]
    assert any("local: probe" in f for f in gate), gate[-1]
    flat = " ".join(screen.split())
    assert "default/Job/migrate: failed — exited with code 3; last output: job says boom: " \
           "table users is locked" in flat, screen
    assert "failed in: running" in flat and "| job says boom: table users is locked" in flat
    assert "failed in: health check (deploying → health check → health check failed" in flat
    # the Service that exited: its last output lines, from the provider's InstanceState
    crash = flat.split("default/Service/crash: failed")[1]
    assert "last output: | [fraisier" in crash, screen  # one line each, under the failure
    assert "| reading /etc/crash.toml | error: no such file hint:" in crash, screen
    # the table was redrawn in place, not printed again below itself at every refresh
    assert screen.count("RESOURCE") == 1, screen


@pytest.mark.timeout(180)
def test_apply_without_a_terminal_prints_one_line_per_phase(fleet: Fleet) -> None:
    fleet_with_a_slow_gate_and_two_failures(fleet)
    done = fleet.cli("apply", *fleet.repo_args(), timeout=150)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    slow = [line for line in lines if line.startswith("default/Service/slow: ")]
    assert [line.split(" [")[0] for line in slow] == [
        "default/Service/slow: deploying", "default/Service/slow: health check",
        "default/Service/slow: succeeded"], done.stdout
    assert not any("probe 2" in line for line in lines), done.stdout
    assert "    failed in: running (running → failed)" in lines, done.stdout
    assert "      | job says boom: table users is locked" in lines, done.stdout


def test_failed_phase_is_the_one_before_the_failure_and_its_rollback() -> None:
    shown: list[str] = []
    ticks = iter(range(100))
    progress = Progress(live=False, echo=shown.append, clock=lambda: float(next(ticks)))
    key = ResourceKey("default", "Service", "api")
    for phase in ("deploying", "health check", "health check", "health check failed",
                  "rolling back", "rolled back", "failed"):
        progress(key, phase, "web-1: probe" if phase == "health check" else "")
    assert progress.phases(key) == ["deploying", "health check", "health check failed",
                                    "rolling back", "rolled back", "failed"]
    assert progress.failed_phase(key) == "health check"
    assert shown[1] == "default/Service/api: health check [1s] — web-1: probe"
    assert len(shown) == 6  # the repeated probe is not a new line
