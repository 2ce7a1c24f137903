"""Gates judge the instance they started (issue 15, item 1), through the real CLI and real
processes: a new process that dies while an older one still answers on its port, a Service
without a health check whose command exits, a tcp check whose command exits at once."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml
from tests.helpers import stranger_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stranger() -> Iterator[int]:
    """An older process (not this fleet's) holding a port and answering every probe."""
    with stranger_server() as port:
        yield port


def plain_service(name: str, command: str, health: str = "") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  target: local
  source: {{path: app}}
  command: [sh, -c, {json.dumps(command)}]
  stopTimeout: 3s
{health}"""


def failed_health_step(fleet: Fleet, name: str) -> str:
    history = fleet.json("history", name)
    steps = [s for s in history[0]["steps"] if s["action"] == "health"]
    assert steps, history[0]
    assert steps[-1]["status"] == "failed", steps
    assert "exited with code" in str(history[0]["error"]), history[0]
    return str(steps[-1]["detail"])


def apply_fails_on_the_held_port(fleet: Fleet) -> None:
    """``apply`` of the Service "api" fails its gate because its process died on the port."""
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 1, out.stdout + out.stderr
    message = failed_health_step(fleet, "api")
    assert "exited with code 1" in message, message
    assert "Address already in use" in message, message


def test_a_new_process_that_dies_while_an_old_one_answers_fails_the_gate(
        fleet: Fleet, stranger: int) -> None:
    # getting-started §2 while another process still held the port: the new process dies
    # with "Address already in use", the old one answers the probe. The probe's 200 ms
    # interval once let a loaded CI machine's interpreter, still short of its bind, be taken
    # for the answer; a pass now counts only while the instance listens on something.
    fleet.write("api.yaml", service_yaml("api", stranger, start_period="1s"))
    fleet.commit("api on a port someone else holds")
    apply_fails_on_the_held_port(fleet)
    assert fleet.json("history", "api")[0]["status"] != "succeeded"
    # the stranger still answers: nothing of ours was reported healthy on its behalf
    assert "stranger" in http_get(stranger)[1]
    status = fleet.cli("status")
    assert status.returncode == 1, status.stdout


def test_a_process_slower_to_bind_than_the_pass_rule_is_not_judged_by_a_stranger(
        fleet: Fleet, stranger: int) -> None:
    # The new process reaches its bind (and dies on the held port) 2 s after its start, later
    # than a pass "counts once the instance has run min(interval, 1 s)": the stranger's
    # answers meanwhile are not the instance's, which listens on nothing.
    command = f"sleep 2; exec {sys.executable} app.py --port {stranger}"
    health = f"""  health:
    http: {{url: "http://{{host}}:{stranger}/healthz"}}
    interval: 200ms
    startPeriod: 5s
"""
    fleet.write("api.yaml", plain_service("api", command, health))
    fleet.commit("a slow starter on a port someone else holds")
    apply_fails_on_the_held_port(fleet)
    assert "stranger" in http_get(stranger)[1]


def test_a_probe_through_another_local_process_still_passes(fleet: Fleet,
                                                            stranger: int) -> None:
    # The probe reaches the instance through another process on its host (a proxy: here the
    # stranger stands in for it); the instance listens on a port of its own, so the pass may
    # be its own and counts once it has run min(interval, 1 s), as before.
    own = free_port()
    command = f"exec {sys.executable} app.py --port {own}"
    health = f"""  health:
    http: {{url: "http://{{host}}:{stranger}/healthz"}}
    interval: 200ms
"""
    fleet.write("api.yaml", plain_service("api", command, health))
    fleet.commit("probed through a proxy")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert http_get(own)[0] == 200


def test_a_service_without_health_check_that_exits_fails(fleet: Fleet) -> None:
    fleet.write("job.yaml", plain_service("quits", "echo giving up; exit 3"))
    fleet.commit("a service that exits")
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 1, out.stdout + out.stderr
    message = failed_health_step(fleet, "quits")
    assert "exited with code 3" in message, message
    assert "giving up" in message, message


def test_a_service_that_stays_up_without_health_check_succeeds(fleet: Fleet) -> None:
    fleet.write("job.yaml", plain_service("sleeper", "exec sleep 600"))
    fleet.commit("a service that runs")
    started = time.monotonic()
    out = fleet.cli("apply", *fleet.repo_args())
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started >= 1.0  # it had to stay up for the default 1 s


def test_an_exit_during_a_tcp_gate_fails_within_one_interval(fleet: Fleet) -> None:
    port = free_port()
    health = f"""  health:
    tcp: {{port: {port}}}
    startPeriod: 10s
"""
    fleet.write("svc.yaml", plain_service("early", "echo cannot start; exit 3", health))
    fleet.commit("exits at once")
    started = time.monotonic()
    out = fleet.cli("apply", *fleet.repo_args())
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    message = failed_health_step(fleet, "early")
    assert "exited with code 3" in message, message
    assert "Connect call failed" not in message, message
    # the whole gate (startPeriod 10 s + thresholds) would be > 11 s; one interval is 2 s
    assert took < 8.0, took
