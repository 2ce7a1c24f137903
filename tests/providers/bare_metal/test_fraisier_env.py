"""FRAISIER_REVISION, FRAISIER_SERVICE and FRAISIER_ENVIRONMENT reach deployed processes.

Local supervisor, through the real CLI: a recreate Service and a blue-green one each answer
with the variables their process sees (and /proc/<pid>/environ says the same); the revision is
the one `reconciler status` records; a new revision changes them and leaves no drift behind.
The names are reserved: `reconciler validate` rejects them in a spec.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.supervisor import TAG_VARIABLE
from tests.e2e.conftest import Fleet, fleet, free_port, http_get, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(180)

# Answers GET / with the FRAISIER_* variables of its own environment, /healthz with ok.
ENV_APP = """\
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok"
        else:
            env = {k: v for k, v in os.environ.items() if k.startswith("FRAISIER_")}
            env["VERSION"] = open("VERSION").read().strip()
            body = json.dumps(env, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def services(port: int, blue: int, green: int, backends: Path) -> str:
    health = """  health:
    http: {url: "http://{host}:%s/healthz"}
    interval: 100ms
    timeout: 1s
    startPeriod: 1s
"""
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: local
  source: {{path: envapp}}
  command: [{sys.executable}, app.py, "{port}"]
  stopTimeout: 3s
{health % port}---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: shop}}
spec:
  target: local
  source: {{path: envapp}}
  command: [{sys.executable}, app.py, "{{port}}"]
  stopTimeout: 3s
{health % "{port}"}  strategy:
    type: blue-green
    ports: {{blue: {blue}, green: {green}}}
    scaleDownDelay: 0s
    traffic:
      command: [sh, -c, 'printf "%s" "$FRAISIER_BACKENDS" > {backends}']
"""


def seen(port: int) -> dict[str, str]:
    status, body = http_get(port)
    assert status == 200, body
    answer: dict[str, str] = json.loads(body)
    answer.pop(TAG_VARIABLE, None)  # the supervisor's own tag (checked below)
    return answer


def applied(f: Fleet) -> dict[str, str]:
    return {r["name"]: r["appliedRevision"] for r in f.json("status")["resources"]}


def environ_of(pidfile: Path) -> dict[str, str]:
    pid = json.loads(pidfile.read_text())["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(): v.decode() for k, v in pairs}


def test_local_processes_see_their_revision(fleet: Fleet, tmp_path: Path) -> None:  # noqa: F811
    port, blue, green = free_port(), free_port(), free_port()
    backends = tmp_path / "backends"
    app = fleet.repo / "envapp"
    app.mkdir()
    (app / "app.py").write_text(ENV_APP)
    (app / "VERSION").write_text("v1\n")
    fleet.write("services.yaml", services(port, blue, green, backends))
    fleet.commit("v1")
    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    revisions = applied(fleet)
    assert seen(port) == {"FRAISIER_ENVIRONMENT": "default", "FRAISIER_REVISION": revisions["api"],
                          "FRAISIER_SERVICE": "api", "VERSION": "v1"}
    pidfile = next(fleet.root.rglob("run/api.pid"))
    environ = environ_of(pidfile)
    assert environ["FRAISIER_REVISION"] == revisions["api"]
    assert environ[TAG_VARIABLE] == str(pidfile)  # the supervisor's own tag is still there
    live = backends.read_text().split(":")[1].split("=")[0]
    slot_port = int(live)
    # the slot's process names the Service, not the slot
    assert seen(slot_port) == {"FRAISIER_ENVIRONMENT": "default", "FRAISIER_SERVICE": "shop",
                               "FRAISIER_REVISION": revisions["shop"], "VERSION": "v1"}

    # a new revision (the source changed, the spec did not): every variable follows
    (app / "VERSION").write_text("v2\n")
    fleet.commit("v2")
    second = fleet.cli("apply", *fleet.repo_args())
    assert second.returncode == 0, second.stdout + second.stderr
    after = applied(fleet)
    assert after["api"] != revisions["api"] and after["shop"] != revisions["shop"]
    assert seen(port)["FRAISIER_REVISION"] == after["api"]
    new_port = int(backends.read_text().split(":")[1].split("=")[0])
    assert new_port != slot_port and new_port in (blue, green)
    assert seen(new_port) == {"FRAISIER_ENVIRONMENT": "default", "FRAISIER_SERVICE": "shop",
                              "FRAISIER_REVISION": after["shop"], "VERSION": "v2"}

    # no drift: the live diff is clean and another apply deploys nothing
    drift = fleet.cli("diff", *fleet.repo_args(), "--live")
    assert drift.returncode == 0, drift.stdout + drift.stderr
    again = fleet.json("apply", *fleet.repo_args())
    assert _deployed(again) == [], again


def _deployed(report: dict[str, Any]) -> list[Any]:
    return [r for r in report["resources"] if r["deployment"] is not None]


def test_reserved_names_are_rejected_by_validate(fleet: Fleet) -> None:  # noqa: F811
    fleet.write("api.yaml", """apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api}
spec:
  target: local
  command: [python3, app.py]
  env: {GREETING: hi, FRAISIER_REVISION: mine}
""")
    done = fleet.cli("validate", str(fleet.repo / "fleet"))
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "api.yaml:7:" in out and "spec.env.FRAISIER_REVISION" in out
    assert "'FRAISIER_REVISION' is reserved" in out
    # not an invalid-name message: the name is valid, just not the operator's to set
    assert "not a valid environment variable name" not in out
