"""FRAISIER_REVISION & co. on real systemd hosts over SSH, through the real CLI.

A rolling Service on two hosts and a blue-green Service (its slots are units of their own) on
one: each running process has the three variables in /proc/<pid>/environ (FRAISIER_SERVICE and
FRAISIER_ENVIRONMENT are also the unit's ``Environment=``, ``systemctl show -p Environment``),
the revision is the one `reconciler status` records, a new revision moves every one of them, and
nothing is reported as drift afterwards. A release that changes only code leaves the unit file
as it is and systemd unreloaded (FRAISIER_REVISION lives in the environment file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import git, wait_for
from tests.providers.bare_metal.conftest import HOST_APP, PORT_FILE, free_port
from tests.providers.bare_metal.test_fraisier_env import ENV_APP
from tests.providers.bare_metal.test_ssh_cli import target_yaml

pytestmark = pytest.mark.timeout(240)


def fleet_yaml(hosts: Any, blue: int, green: int, backends: Path) -> str:
    one = target_yaml(hosts[:1]).replace("name: hosts\n", "name: one\n", 1)
    return f"""{target_yaml(hosts)}---
{one}---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: hosts
  source: {{path: app}}
  command: [python3, app.py]
  env: {{GREETING: hi}}
  stopTimeout: 3s
  health:
    exec: {{command: [python3, app.py, check]}}
    interval: 100ms
    timeout: 2s
    startPeriod: 1s
  strategy: {{type: rolling, maxParallel: 1}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: shop}}
spec:
  target: one
  source: {{path: envapp}}
  command: [python3, app.py, "{{port}}"]
  stopTimeout: 3s
  health:
    http: {{url: "http://{{host}}:{{port}}/healthz"}}
    interval: 100ms
    timeout: 1s
    startPeriod: 1s
  strategy:
    type: blue-green
    ports: {{blue: {blue}, green: {green}}}
    scaleDownDelay: 0s
    traffic:
      command: [sh, -c, 'printf "%s" "$FRAISIER_BACKENDS" > {backends}']
"""


def unit_environment(host: Any, unit: str) -> dict[str, str]:
    """FRAISIER_* of the unit's main process (/proc environ), checked against what systemd
    declares for the unit (``Environment=``: FRAISIER_SERVICE and FRAISIER_ENVIRONMENT)."""
    props = dict(line.split("=", 1) for line in host.sh(
        f"systemctl show -p Environment -p MainPID {unit}").splitlines() if "=" in line)
    declared = dict(item.split("=", 1) for item in props["Environment"].split())
    pid = int(props["MainPID"])
    assert pid > 0, f"{host.name}: {unit} is not running"
    raw = host.run(["cat", f"/proc/{pid}/environ"]).stdout
    environ = {k.decode(): v.decode() for k, v in (
        item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)}
    assert set(declared) == {"FRAISIER_SERVICE", "FRAISIER_ENVIRONMENT"}, (host.name, declared)
    for name, value in declared.items():
        assert environ[name] == value, (host.name, unit, name)
    return {k: v for k, v in environ.items() if k.startswith("FRAISIER_")}


def unit_file_and_reloads(host: Any, unit: str) -> tuple[str, int]:
    """The unit file's inode and content hash (a deploy writes a new file by rename), and how
    many times systemd has reloaded (its own journal)."""
    stat = host.sh(f"stat -c %i /etc/systemd/system/{unit}; "
                   f"sha256sum /etc/systemd/system/{unit}").split()[:2]
    reloads = host.sh("journalctl --no-pager -o cat _PID=1 | grep -c '^Reloading' || true")
    return " ".join(stat), int(reloads.strip() or 0)


def test_ssh_units_carry_the_revision(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
    for host in hosts:
        host.run(["sh", "-c", 'printf %s "$1" >"$2"', "-", str(free_port()), PORT_FILE])
    blue, green = free_port(), free_port()
    backends = tmp_path / "backends"
    repo = tmp_path / "config"
    for folder, app in (("app", HOST_APP), ("envapp", ENV_APP)):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "app.py").write_text(app)
        (repo / folder / "VERSION").write_text("v1\n")
    (repo / "fleet").mkdir()
    (repo / "fleet" / "fleet.yaml").write_text(fleet_yaml(hosts, blue, green, backends))
    git(repo, "init", "-q", "-b", "main")
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "--log-format",
             "text", *args], capture_output=True, text=True, timeout=150, cwd=repo,
            env=dict(os.environ))

    def commit_and_apply(version: str) -> dict[str, str]:
        for folder in ("app", "envapp"):
            (repo / folder / "VERSION").write_text(version + "\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", version)
        done = cli("apply", "--repo", str(repo), "--path", "fleet")
        assert done.returncode == 0, done.stdout + done.stderr
        rows = json.loads(cli("status", "-o", "json").stdout)["resources"]
        return {r["name"]: r["appliedRevision"] for r in rows if r["kind"] == "Service"}

    def live_slot() -> str:
        port = int(backends.read_text().split(":")[1].split("=")[0])
        return {blue: "blue", green: "green"}[port]

    previous: dict[str, str] = {}
    units_before: list[tuple[str, int]] = []
    for version in ("v1", "v2"):
        revisions = commit_and_apply(version)
        units_now = [unit_file_and_reloads(host, "fraisier-default_api.service")
                     for host in hosts]
        if units_before:  # v2 changed code only: same unit file, no daemon-reload
            for host, (file_before, reloads_before), (file_now, reloads_now) in zip(
                    hosts, units_before, units_now, strict=True):
                assert file_now == file_before, (host.name, file_before, file_now)
                if host is not hosts[0]:  # there, the blue-green slot's new unit reloads
                    assert reloads_now == reloads_before, (host.name, reloads_before,
                                                           reloads_now)
        units_before = units_now
        assert revisions["api"] != previous.get("api")
        for host in hosts:
            env = unit_environment(host, "fraisier-default_api.service")
            assert env == {"FRAISIER_REVISION": revisions["api"], "FRAISIER_SERVICE": "api",
                           "FRAISIER_ENVIRONMENT": "default"}, host.name
        slot = live_slot()
        env = unit_environment(hosts[0], f"fraisier-default_shop-{slot}.service")
        assert env == {"FRAISIER_REVISION": revisions["shop"], "FRAISIER_SERVICE": "shop",
                       "FRAISIER_ENVIRONMENT": "default"}
        port = blue if slot == "blue" else green
        import urllib.request

        answer = wait_for(lambda p=port: json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{p}/", timeout=2).read()), timeout=10)
        assert answer["FRAISIER_REVISION"] == revisions["shop"] and answer["VERSION"] == version
        previous = revisions

    # No drift: the unit as installed is the unit recorded, and nothing is redeployed.
    drift = cli("diff", "--repo", str(repo), "--path", "fleet", "--live")
    assert drift.returncode == 0, drift.stdout + drift.stderr
    again = cli("apply", "--repo", str(repo), "--path", "fleet", "-o", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r for r in json.loads(again.stdout)["resources"] if r["deployment"]] == []
    # A hand edit of the unit is still drift (the revision line did not blind the check).
    hosts[1].sh("sed -i 's/^TimeoutStopSec=.*/TimeoutStopSec=9s/' "
                "/etc/systemd/system/fraisier-default_api.service && systemctl daemon-reload")
    edited = cli("diff", "--repo", str(repo), "--path", "fleet", "--live")
    assert edited.returncode == 1, edited.stdout + edited.stderr
