"""rolling and in-place canary on real systemd+sshd test hosts through `reconciler apply`.

Each host runs its own copy of the Service on a port of its own (the hosts share this machine's
loopback). A failure is made host-specific with a marker file, so a rolling update can pass its
first batch and fail in a later one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.rollout.fleets import ssh_fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PORT_FILE = "/etc/fraisier-test-port"
APP = """\
import http.server, os, urllib.request, sys

port = int(open("/etc/fraisier-test-port").read())
greeting = os.environ.get("GREETING", "")
fail = os.path.exists("/etc/fraisier-fail-" + greeting)
if sys.argv[1:] == ["check"]:  # the exec health check, run on the host over SSH
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = (500, b"failing") if fail and self.path == "/healthz" else (
            200, greeting.encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


http.server.HTTPServer.allow_reuse_address = True
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fleet(tmp_path: Path, ssh_hosts: Any) -> Iterator[Fleet]:
    f, ports = ssh_fleet(tmp_path, ssh_hosts, APP)
    f.hosts = ssh_hosts  # type: ignore[attr-defined]
    f.ports = ports  # type: ignore[attr-defined]
    yield f


def service(greeting: str, strategy: str) -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: hosts
  source: {{path: app}}
  command: [python3, app.py]
  env: {{GREETING: "{greeting}"}}
  stopTimeout: 2s
  health:
    exec: {{command: [python3, app.py, check]}}
    interval: 200ms
    timeout: 5s
    startPeriod: 3s
    failureThreshold: 3
  strategy:{strategy}
"""


def greetings(fleet: Any) -> dict[str, str]:
    import urllib.request

    out = {}
    for name, port in fleet.ports.items():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                out[name] = r.read().decode()
        except OSError as exc:
            out[name] = f"down ({exc})"
    return out


def steps(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["action"], s["instance"]) for s in deployment["steps"]]


ROLLING = """
    type: rolling
    maxParallel: 2"""


def test_rolling_batches_and_rollback_in_reverse(fleet: Any) -> None:
    names = [h.name for h in fleet.hosts]
    fleet.write("api.yaml", service("v1", ROLLING))
    fleet.commit("v1")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(greetings(fleet).values()) == {"v1"}
    first = fleet.json("history", "api")[0]
    deploys = [i for a, i in steps(first) if a == "deploy"]
    assert sorted(deploys[:2]) == sorted(names[:2]) and deploys[2:] == names[2:]

    # v2 fails its health gate on the last host only: batch 1 (two hosts) passes, batch 2
    # fails, and every moved host goes back to v1 — the failed batch first.
    fleet.hosts[-1].run(["touch", "/etc/fraisier-fail-v2"])
    fleet.write("api.yaml", service("v2", ROLLING))
    fleet.commit("v2")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 1, out.stdout + out.stderr
    dep = fleet.json("history", "api")[0]
    assert dep["status"] == "rolled_back", dep
    rollbacks = [i for a, i in steps(dep) if a == "rollback"]
    assert rollbacks[0] == names[-1] and sorted(rollbacks) == sorted(names), steps(dep)
    assert set(greetings(fleet).values()) == {"v1"}
    status = {r["name"]: r for r in fleet.json("status")["resources"]}
    assert status["api"]["lastResult"] == "rolled_back"


def test_canary_in_place_steps(fleet: Any) -> None:
    canary = """
    type: canary
    steps:
      - setCanary: 1
      - analysis: {duration: 1s, interval: 300ms}
      - setCanary: 50%
      - pause: {duration: 500ms}"""
    names = [h.name for h in fleet.hosts]
    fleet.write("api.yaml", service("v1", canary))
    fleet.commit("v1")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    dep = fleet.json("history", "api")[0]
    order = [(a, i) for a, i in steps(dep) if a in ("deploy", "analysis", "pause")]
    assert order == [("deploy", names[0]), ("analysis", "rollout"), ("deploy", names[1]),
                     ("pause", "rollout"), ("deploy", names[2])]
    assert set(greetings(fleet).values()) == {"v1"}

    # the canary host fails: only it moved, only it goes back
    fleet.hosts[0].run(["touch", "/etc/fraisier-fail-v2"])
    fleet.write("api.yaml", service("v2", canary))
    fleet.commit("v2")
    out = fleet.cli("apply", *fleet.repo_args(), timeout=180)
    assert out.returncode == 1
    dep = fleet.json("history", "api")[0]
    assert dep["status"] == "rolled_back"
    assert [i for a, i in steps(dep) if a == "deploy"] == [names[0]]
    assert [i for a, i in steps(dep) if a == "rollback"] == [names[0]]
    assert set(greetings(fleet).values()) == {"v1"}
    assert json.dumps(dep)  # serialisable history
