"""Per-host values (issue 15, item 13): hosts behind one address, each with its own port.

The test hosts share 127.0.0.1 (as hosts behind one NAT address or port forwards do); each is
given its own ``vars.port``, which the Service reads from its env and the health gate probes.
A placeholder some host does not define is a ``file:line:col`` error, exit 2, nothing applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.e2e.conftest import git
from tests.providers.bare_metal.conftest import free_port

APP = """\
import http.server, os
port = int(os.environ["PORT"])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['NODE']} on {port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

SERVICE = """apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
spec:
  target: hosts
  source: {path: app}
  command: [python3, app.py]
  env:
    PORT: "{vars.port}"
    NODE: "node-{vars.node}"
  stopTimeout: 3s
  health:
    http: {url: "http://{host}:{vars.port}/"}
    interval: 100ms
    timeout: 2s
    startPeriod: 1s
    failureThreshold: 3
"""


def target_yaml(hosts: Any, ports: list[int], *, skip_node_on_last: bool = False) -> str:
    entries = ""
    for n, (h, port) in enumerate(zip(hosts, ports, strict=True)):
        node = "" if skip_node_on_last and n == len(hosts) - 1 else f", node: n{n + 1}"
        entries += f"""
    - name: {h.name}
      address: {h.address}
      port: {h.port}
      user: root
      identityFile: {h.identity_file}
      knownHosts: {h.known_hosts}
      vars: {{port: {port}{node}}}"""
    return f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: hosts
spec:
  provider: bare_metal
  transport: ssh
  hosts:{entries}
"""


def _repo(tmp_path: Path, target: str) -> Path:
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "app.py").write_text(APP)
    (repo / "fleet").mkdir()
    (repo / "fleet" / "target.yaml").write_text(target)
    (repo / "fleet" / "api.yaml").write_text(SERVICE)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fleet")
    return repo


def _cli(tmp_path: Path, repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
         "--log-format", "text", *args],
        capture_output=True, text=True, timeout=120, cwd=repo, env=dict(os.environ))


@pytest.mark.timeout(150)
def test_each_host_gets_its_own_port_in_env_and_health(tmp_path: Path, ssh_hosts: Any) -> None:
    hosts = ssh_hosts[:2]
    ports = [free_port(), free_port()]
    repo = _repo(tmp_path, target_yaml(hosts, ports))
    out = _cli(tmp_path, repo, "apply", "--repo", str(repo), "--path", "fleet")
    assert out.returncode == 0, out.stdout + out.stderr
    for n, port in enumerate(ports):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as response:
            assert response.read().decode() == f"node-n{n + 1} on {port}"


@pytest.mark.timeout(60)
def test_a_placeholder_some_host_does_not_define_is_a_located_error(tmp_path: Path) -> None:
    # validation only: no host is contacted
    hosts = [SimpleNamespace(name=f"web{n}", address="127.0.0.1", port=22,
                             identity_file="/nonexistent/key", known_hosts="/nonexistent/kh")
             for n in (1, 2)]
    repo = _repo(tmp_path, target_yaml(hosts, [18081, 18082], skip_node_on_last=True))
    out = _cli(tmp_path, repo, "validate", str(repo / "fleet"))
    assert out.returncode == 2, out.stdout + out.stderr
    # NODE: "node-{vars.node}" is line 11, its value at column 11
    assert "api.yaml:11:11" in out.stderr + out.stdout, out.stderr
    assert f"{{vars.node}}: host {hosts[1].name!r} of Target 'hosts' defines no vars.node" in (
        out.stderr + out.stdout)
    applied = _cli(tmp_path, repo, "apply", "--repo", str(repo), "--path", "fleet")
    assert applied.returncode == 2
    assert not (tmp_path / "state").exists() or "api" not in _cli(
        tmp_path, repo, "status").stdout
