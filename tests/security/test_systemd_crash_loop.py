"""Acceptance of issue 16, problem 1, under the packaged unit: no commit crash-loops the daemon.

systemd/reconciler.service installed and run on a Debian 12 test host exactly as
tests/deploy/test_systemd_unit.py does it (its helpers; same drop-in), with its one Service
converged. Then two bad commits that used to end the daemon with ``internal error`` — and,
with ``Restart=on-failure``, again at every restart (NRestarts climbing every RestartSec):

1. a NUL in the Service's ``env`` (refused when the commit is loaded: last good state kept);
2. a second Service whose source makes the code raise an exception it does not handle (an
   ``ext::`` URL: GitPython's UnsafeProtocolError while planning; the error boundary fails that
   resource with FR001 and retries it with backoff).

After each the unit stays ``active`` with ``NRestarts=0`` and the same main PID, the Service
keeps serving; a later good commit converges.
"""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy import test_systemd_unit as unit
from tests.deploy.conftest import Wheels
from tests.infra.testinfra import InfraHost, lease_any

BAD_SERVICE = """\
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: bad}
spec:
  target: local
  source: {git: {repo: "ext::x@y:"}}
  command: [python3, app.py]
"""


@pytest.fixture
def installed(testhosts: tuple[InfraHost, ...],
              wheels: Wheels) -> Iterator[tuple[InfraHost, str, int]]:
    listen = f"127.0.0.1:{unit.free_port()}"
    web_port = unit.free_port()
    with lease_any(testhosts) as host:
        host.reset()
        host.sh(unit.CLEANUP, timeout=60)
        try:
            unit.install(host, wheels, listen, web_port)
            yield host, listen, web_port
        finally:
            print("--- journal of reconciler.service (last 60 lines)")
            print(host.run("journalctl -u reconciler.service -n 60 --no-pager -o cat",
                           check=False).stdout.decode())
            host.sh(unit.CLEANUP, timeout=60)


def commit(host: InfraHost, message: str, script: str) -> None:
    """Change the config repo on the host as its owner (the daemon's user) and commit."""
    host.sh(f"""set -e
cd /srv/fraisier-config
{script}
runuser -u fraisier -- git add -A
runuser -u fraisier -- git -c user.name=ops -c user.email=ops@example.com \
  commit -q -m {shlex.quote(message)}
""")


def as_owner(path: str, text: str) -> str:
    return (f"printf %s {shlex.quote(text)} | runuser -u fraisier -- tee {path} >/dev/null")


def readyz(listen: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://{listen}/readyz", timeout=2) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except OSError:
        return {}


def page(web_port: int) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/index.html",
                                    timeout=2) as response:
            return bytes(response.read())
    except OSError:
        return b""


def steady(host: InfraHost, main_pid: str) -> dict[str, str]:
    state = unit.show(host, "ActiveState", "SubState", "NRestarts", "MainPID", "StatusText")
    assert state["ActiveState"] == "active" and state["NRestarts"] == "0", state
    assert state["MainPID"] == main_pid, (state, unit.journal(host)[-3000:])
    return state


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bad_commits_do_not_crash_loop_the_unit(installed: tuple[InfraHost, str, int]) -> None:
    host, listen, web_port = installed
    began = host.sh("date '+%Y-%m-%d %H:%M:%S'").strip()  # the journal keeps earlier runs
    start = host.run(["systemctl", "start", "reconciler.service"], timeout=120, check=False)
    assert start.returncode == 0, unit.journal(host)[-3000:]
    unit.wait_for("a converged pass", lambda: "converged" in (
        s := unit.show(host, "StatusText")["StatusText"]) and "not converged" not in s, 60)
    assert page(web_port) == b"ok\n"
    main_pid = unit.show(host, "MainPID")["MainPID"]
    steady(host, main_pid)
    fleet = unit.FLEET.format(port=web_port)

    # 1. a NUL in an env value: refused at load, located, last good state kept
    started = time.monotonic()
    commit(host, "NUL in env", as_owner(
        "fleet/fleet.yaml", fleet.replace("  stopTimeout: 5s", '  env: {X: "a\\0b"}\n'
                                                               "  stopTimeout: 5s")))
    error = unit.wait_for("the refused commit on /readyz",
                          lambda: readyz(listen).get("lastError") or "", 30)
    print(f"NUL commit refused in {time.monotonic() - started:.1f}s: {error}")
    assert "invalid" in error and "fleet/fleet.yaml:" in error and "spec.env.X" in error
    time.sleep(3 * 1)  # RestartSec=1 in the drop-in: a crash loop would have restarted by now
    steady(host, main_pid)
    assert page(web_port) == b"ok\n"

    # 2. an exception nothing handles, in one resource: that resource fails, the rest is fine
    since = host.sh("date '+%Y-%m-%d %H:%M:%S'").strip()  # the journal keeps earlier runs
    started = time.monotonic()
    commit(host, "a Service the code cannot plan",
           as_owner("fleet/fleet.yaml", fleet) + "\n" + as_owner("fleet/bad.yaml", BAD_SERVICE))
    failed = unit.wait_for("the failed resource on /readyz",
                           lambda: readyz(listen).get("failed"), 30)
    print(f"unforeseen error contained in {time.monotonic() - started:.1f}s: {failed}")
    assert [f["resource"] for f in failed] == ["default/Service/bad"], failed
    assert failed[0]["code"] == "FR001" and "UnsafeProtocolError" in failed[0]["error"]
    assert readyz(listen)["lastError"] is None and readyz(listen)["ready"] is True
    time.sleep(5)  # retried with backoff meanwhile
    steady(host, main_pid)
    assert page(web_port) == b"ok\n"
    log = unit.journal(host, since)
    assert "unexpected error; this resource failed" in log, log[-3000:]
    passes = log.count("unexpected error; this resource failed")
    print(f"passes over the failing resource in {time.monotonic() - started:.1f}s: {passes}")
    # backoff (2 s, 4 s, …) plus the 5 s poll of the test's unit: a handful, not a hot loop
    assert 1 <= passes <= 6, passes

    # 3. a good commit converges
    started = time.monotonic()
    commit(host, "fixed", "runuser -u fraisier -- git rm -q fleet/bad.yaml\n"
           "echo ok, fixed | runuser -u fraisier -- tee fleet/app/index.html >/dev/null")
    unit.wait_for("the fixed commit served", lambda: page(web_port) == b"ok, fixed\n", 60)
    unit.wait_for("no failed resource", lambda: readyz(listen).get("failed") == [], 30)
    unit.wait_for("a converged pass", lambda: "converged" in (
        s := unit.show(host, "StatusText")["StatusText"]) and "not converged" not in s, 30)
    print(f"good commit converged in {time.monotonic() - started:.1f}s")
    final = steady(host, main_pid)
    print("unit after the bad commits and the fix:", final)
    assert "internal error" not in unit.journal(host, began)
