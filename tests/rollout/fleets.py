"""Config repos for rollout tests: a real git repo with the example app and a Target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import APP, Fleet, free_port, git


def new_fleet(tmp_path: Path, app: str = APP) -> Fleet:
    """A git repo with ``app/app.py`` (and nothing deployed from it yet)."""
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(app)
    git(repo, "init", "-q", "-b", "main")
    return Fleet(repo, tmp_path / "state", tmp_path / "root")


def local_fleet(tmp_path: Path, app: str = APP) -> Fleet:
    """``new_fleet`` plus Target ``local``: this machine, the built-in supervisor."""
    fleet = new_fleet(tmp_path, app)
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {fleet.root}, keepReleases: 3}}
""")
    return fleet


def ssh_fleet(tmp_path: Path, hosts: Any, app: str) -> tuple[Fleet, dict[str, int]]:
    """``new_fleet`` plus Target ``hosts`` over SSH; each test host's copy of the app listens
    on a port of its own (written to /etc/fraisier-test-port there), returned by host name."""
    fleet = new_fleet(tmp_path, app)
    ports: dict[str, int] = {}
    entries = []
    for h in hosts:
        ports[h.name] = free_port()
        # the port, and no failure markers left by an earlier test (host resets keep /etc)
        h.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port; rm -f /etc/fraisier-fail-*',
               "-", str(ports[h.name])])
        entries.append(f"    - {{name: {h.name}, address: {h.address}, port: {h.port}, "
                       f"user: root, identityFile: {h.identity_file}, "
                       f"knownHosts: {h.known_hosts}}}")
    fleet.write("target.yaml", """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: hosts}
spec:
  provider: bare_metal
  transport: ssh
  hosts:
""" + "\n".join(entries) + "\n")
    return fleet, ports
