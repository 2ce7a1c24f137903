"""A real daemon whose pass overruns for real: a Service whose health gate waits on a local
process that starts slowly keeps the pass running past a short --pass-overrun; /readyz says so
(naming the Service) and the age metric shows it, then both recover once the pass ends."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, stop_daemon, wait_for

pytestmark = pytest.mark.timeout(180)

LIMIT_S = 3.0
SLOW_START_S = 15


def readyz(listen: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/readyz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def gauge(listen: int, name: str) -> float:
    body = http_get(listen, "/metrics")[1]
    line = next(x for x in body.splitlines() if x.startswith(f"{name} "))
    return float(line.split()[-1])


def pass_age(listen: int) -> float:
    return gauge(listen, "reconciler_reconcile_age_seconds")


def test_overrunning_pass_makes_readyz_not_ready_until_it_ends(fleet: Fleet) -> None:
    port, listen = free_port(), free_port()
    fleet.commit("only the target")  # the first pass has nothing to roll out
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}", "--interval", "30s",
         "--pass-overrun", f"{LIMIT_S:g}s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: readyz(listen)[0] == 200, timeout=60, step=0.2)
        assert readyz(listen)[1]["overrun"] is None
        # the limit is exported: FraisierPassOverrun compares the age with it
        assert gauge(listen, "reconciler_pass_overrun_limit_seconds") == LIMIT_S

        # the new Service's process listens only after SLOW_START_S: its health gate (start
        # period 90s) holds the rollout, and with it the pass, that long
        fleet.write("api.yaml", service_yaml(
            "api", port, extra_env=f'\n    SLOW_START: "{SLOW_START_S}"', start_period="90s"))
        fleet.commit("a slow starter")
        committed = time.monotonic()

        _, body = wait_for(lambda: (r := readyz(listen))[0] == 503 and r, timeout=30,
                           step=0.2)
        assert body["ready"] is False
        reason = str(body["reason"])
        assert "--pass-overrun" in reason and "default/Service/api" in reason, body
        overrun = body["overrun"]
        assert isinstance(overrun, dict)
        assert overrun["limitSeconds"] == LIMIT_S
        assert overrun["passSeconds"] >= LIMIT_S
        assert [r["resource"] for r in overrun["resources"]] == ["default/Service/api"]
        assert pass_age(listen) >= LIMIT_S
        assert not _listening(port)  # the pass really waits: the process is still asleep
        # measured, not asserted tightly (CI machines vary)
        print(f"not ready {time.monotonic() - committed:.2f}s after the commit, the pass "
              f"{overrun['passSeconds']}s old (limit {LIMIT_S:g}s)")

        # the health gate passes, the pass ends: ready again, no overrun, the age back to 0
        wait_for(lambda: _listening(port), timeout=60, step=0.05)
        serving = time.monotonic()
        wait_for(lambda: readyz(listen)[0] == 200, timeout=60, step=0.05)
        print(f"ready again {time.monotonic() - serving:.2f}s after the Service listened "
              f"({time.monotonic() - committed:.1f}s after the commit)")
        body = readyz(listen)[1]
        assert body["ready"] is True and body["reason"] is None and body["overrun"] is None
        assert http_get(port)[0] == 200  # the rollout succeeded
        assert pass_age(listen) < LIMIT_S
    finally:
        code = stop_daemon(daemon)
    out = daemon.stdout.read() if daemon.stdout else ""
    assert code == 0, out[-3000:]
    assert out.count("reconcile pass overrunning") == 1, out[-3000:]  # once per overrun
    assert out.count("overrunning reconcile pass ended") == 1, out[-3000:]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
