"""Issue 16, problem 9 (the non-webhook part): bad input is a 4xx or a usage error, never a 500
or an "internal error".

- ``reconciler daemon --listen/--interval/--shard-ttl/--heal-interval/--pass-overrun`` with a bad
  value: exit 2 with click's usage error naming the option (they used to die with ``internal
  error: ValueError``/``OverflowError`` after start-up had begun; ``--interval 0s`` spun).
- ``GET /api/v1/audit?since=`` with a time that leaves year 1..9999 once in UTC: 400 (was 500),
  asked of a real daemon over a real socket; ``reconciler audit --since`` alike.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, wait_for
from tests.e2e.conftest import fleet as fleet

TOKEN = "usage-errors-api-token-0123456789"


def reconciler(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state),
                           *args], capture_output=True, text=True, timeout=30, cwd=fleet.repo)


BAD_OPTIONS = [
    ("--listen", "abc"), ("--listen", "127.0.0.1:99999"), ("--listen", "127.0.0.1:0"),
    ("--listen", ":x"), ("--listen", "::1:9464"), ("--listen", "127.0.0.1:-1"),
    ("--interval", "xyz"), ("--interval", "0s"), ("--interval", "-5s"),
    ("--shard-ttl", "zz"), ("--heal-interval", "q"), ("--heal-interval", "0s"),
    ("--pass-overrun", "soon"), ("--pass-overrun", "0s"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS,
                         ids=[f"{o}={v}" for o, v in BAD_OPTIONS])
def test_bad_daemon_option_is_a_usage_error(fleet: Fleet, option: str, value: str) -> None:
    fleet.commit()
    args = ["daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{free_port()}", option, value]
    proc = reconciler(fleet, *args)
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert f"Invalid value for {option}" in proc.stderr, proc.stderr
    assert "Usage: reconciler daemon" in proc.stderr


@pytest.mark.timeout(60)
def test_a_listen_port_already_taken_is_a_clear_error_not_an_internal_one(fleet: Fleet) -> None:
    """A CI run's daemon found its port taken: it died with "internal error: OSError", and the
    test waited 30 s for log lines that never came. It must say which port and what to do."""
    fleet.commit()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        proc = reconciler(fleet, "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{port}",
                          "--interval", "1h")
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert f"error[FR000]: cannot listen on 127.0.0.1:{port}: address already in use" in (
        proc.stderr), proc.stderr
    assert f"hint: another process has port {port}" in proc.stderr, proc.stderr
    assert "reconcile pass done" not in proc.stderr  # it stopped before its first pass


@pytest.mark.timeout(60)
def test_a_listen_address_of_another_machine_is_a_clear_error(fleet: Fleet) -> None:
    fleet.commit()
    elsewhere = "203.0.113.5"  # TEST-NET-3 (RFC 5737): never an address of this machine
    proc = reconciler(fleet, "daemon", *fleet.repo_args(), "--listen", f"{elsewhere}:9464",
                      "--interval", "1h")
    assert proc.returncode == 2, proc.stderr
    assert (f"error[FR000]: cannot listen on {elsewhere}:9464: cannot assign requested address"
            in proc.stderr), proc.stderr
    assert f"hint: {elsewhere} is not an address of this machine" in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_cli_audit_since_out_of_range_is_a_usage_error(fleet: Fleet, since: str) -> None:
    proc = reconciler(fleet, "audit", "--since", since)
    assert proc.returncode == 2 and "Invalid value for --since" in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_cli_audit_since_a_huge_duration_lists_everything(fleet: Fleet) -> None:
    proc = reconciler(fleet, "audit", "--since", "99999999999h", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def api_get(port: int, query: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/audit?{query}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"raw": body.decode(errors="replace")}


@pytest.mark.timeout(120)
def test_api_since_extremes_are_400_not_500(fleet: Fleet) -> None:
    fleet.commit()
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{port}", "--interval", "1h"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "RECONCILER_API_TOKEN": TOKEN}, cwd=fleet.repo)

    def ready() -> bool:
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:
            assert daemon.poll() is None, daemon.communicate()[1]
            return False

    try:
        wait_for(ready, timeout=60, step=0.2)
        for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                      "0001-01-01T00:00:00+00:01", "not-a-time", "99999-01-01"):
            status, body = api_get(port, urllib.parse.urlencode({"since": since}))
            assert status == 400, (since, status, body)
            assert "since must be an ISO-8601 time" in str(body["error"])
        # the extremes that are in range still work. /readyz answers once the desired state is
        # loaded; the first pass's audit events come when it ends (a CI run asked before it)
        earliest = urllib.parse.urlencode({"since": "0001-01-01T00:00:00"})
        wait_for(lambda: bool(api_get(port, earliest)[1].get("events")), timeout=30, step=0.2)
        status, body = api_get(port, earliest)
        assert status == 200 and body["events"], body
        status, body = api_get(port, urllib.parse.urlencode({"since": "9999-12-31T23:59:59Z"}))
        assert (status, body) == (200, {"events": []})
        # the daemon is still serving
        assert http_get(port, "/healthz")[0] == 200
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
