"""blue-green and weighted canary on the local bare-metal provider behind a real nginx.

The Service runs in two slots (ports); nginx's upstream is switched only once the new slot is
healthy, and a request loop through nginx during the whole rollout sees no failed request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, wait_for
from tests.e2e.conftest import http_get as _http_get
from tests.rollout.fleets import local_fleet
from tests.rollout.proxy import Nginx, RequestLoop, start_nginx

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = local_fleet(tmp_path)
    yield f
    f.stop_all()


@pytest.fixture
def ports() -> dict[str, int]:
    return {"blue": free_port(), "green": free_port(), "proxy": free_port()}


@pytest.fixture
def nginx(tmp_path: Path, ports: dict[str, int]) -> Iterator[Nginx]:
    proxy = start_nginx(tmp_path / "nginx", ports["proxy"], "web", ports["blue"])
    yield proxy
    proxy.stop()


def web_yaml(ports: dict[str, int], nginx: Nginx, *, greeting: str, fail: bool = False,
             strategy: str = "", delay: str = "1s") -> str:
    strategy = strategy or f"""
    type: blue-green
    scaleDownDelay: {delay}"""
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "{{port}}"]
  env:
    GREETING: "{greeting}"
    FAIL_HEALTH: "{'1' if fail else '0'}"
    SERVICE_NAME: "slot-{{slot}}"
  stopTimeout: 3s
  health:
    http: {{url: "http://{{host}}:{{port}}/healthz"}}
    interval: 200ms
    timeout: 1s
    startPeriod: 1s
    failureThreshold: 2
  strategy:{strategy}
    ports: {{blue: {ports['blue']}, green: {ports['green']}}}
    traffic:
      nginx: {{upstreamFile: "{nginx.upstream_file}", upstream: web, config: "{nginx.config}"}}
"""


def apply_in_background(fleet: Fleet) -> subprocess.Popen[str]:
    """`reconciler apply` in its own process (output captured), for rollouts that wait."""
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "apply", *fleet.repo_args()], cwd=fleet.repo, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing listens."""
    try:
        return _http_get(port, path, timeout)
    except OSError as exc:
        return 0, str(exc)


def greeting_via(nginx: Nginx) -> str:
    status, body = http_get(nginx.port)
    assert status == 200, body
    return str(json.loads(body)["greeting"])


def test_blue_green_switches_without_a_failed_request_and_reverts_on_failure(
        fleet: Fleet, nginx: Nginx, ports: dict[str, int]) -> None:
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v1"))
    fleet.commit("v1")
    first = fleet.cli("apply", *fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert greeting_via(nginx) == "v1"
    blue_up = http_get(ports["blue"])[0] == 200
    green_up = http_get(ports["green"])[0] == 200
    assert blue_up != green_up, "exactly one slot serves after the first rollout"
    live = "blue" if blue_up else "green"
    other = "green" if live == "blue" else "blue"

    # v2 while a request loop goes through nginx the whole time
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v2"))
    fleet.commit("v2")
    loop = RequestLoop(nginx.url).start()
    try:
        second = fleet.cli("apply", *fleet.repo_args())
        time.sleep(0.3)
    finally:
        loop.stop()
    assert second.returncode == 0, second.stdout + second.stderr
    assert loop.errors == [], loop.errors[:5]
    assert loop.ok > 50
    greetings = [json.loads(b)["greeting"] for b in loop.bodies]
    assert greetings[0] == "v1" and greetings[-1] == "v2"
    assert greeting_via(nginx) == "v2"
    # the new revision serves from the other slot; the old slot was retired after its delay
    assert json.loads(http_get(ports[other])[1])["greeting"] == "v2"
    wait_for(lambda: http_get(ports[live], timeout=0.5)[0] != 200, timeout=10)

    logs = fleet.cli("logs", "web")
    assert logs.returncode == 0, logs.stderr
    # each slot's output, labelled with its slot
    assert f" {other}] 127.0.0.1" in logs.stdout and f" {live}] 127.0.0.1" in logs.stdout

    history = fleet.json("history", "web")
    steps = [s["action"] for s in history[0]["steps"]]
    assert steps.index("deploy") < steps.index("health") < steps.index("traffic") \
        < steps.index("retire")

    # v3 fails its health gate in the new slot: traffic never moves, the slot is stopped
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v3", fail=True))
    fleet.commit("v3 broken")
    loop = RequestLoop(nginx.url).start()
    try:
        third = fleet.cli("apply", *fleet.repo_args())
    finally:
        loop.stop()
    assert third.returncode == 1, third.stdout + third.stderr
    assert loop.errors == [], loop.errors[:5]
    assert {json.loads(b)["greeting"] for b in loop.bodies} == {"v2"}
    history = fleet.json("history", "web")
    assert history[0]["status"] == "rolled_back"
    assert "traffic" not in [s["action"] for s in history[0]["steps"]]
    wait_for(lambda: http_get(ports[live], timeout=0.5)[0] != 200, timeout=10)
    assert greeting_via(nginx) == "v2"
    status = fleet.json("status")
    web = next(r for r in status["resources"] if r["name"] == "web")
    assert web["lastResult"] == "rolled_back"


def test_weighted_canary_pauses_until_promoted(fleet: Fleet, nginx: Nginx,
                                               ports: dict[str, int]) -> None:
    canary = """
    type: canary
    steps:
      - setWeight: 25
      - pause: {}
      - setWeight: 50
      - pause: {duration: 1s}"""
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v1", strategy=canary))
    fleet.commit("v1")
    first = fleet.cli("promote", "web")  # nothing known yet: exit 1 path is NotFound (2)
    assert first.returncode == 2
    # the first rollout has no old slot: the weights give everything to the only slot
    proc = apply_in_background(fleet)
    try:
        # paused: waits for promote
        wait_for(lambda: _paused(fleet), timeout=60, step=0.3)
        assert greeting_via(nginx) == "v1"
        assert proc.poll() is None, "apply waits for the promotion"
        promoted = fleet.cli("promote", "web")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out

    # v2: weights 25 then 50 between the slots, then everything on the new one
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v2", strategy=canary))
    fleet.commit("v2")
    proc = apply_in_background(fleet)
    try:
        wait_for(lambda: _paused(fleet), timeout=60, step=0.3)
        seen = _sample(nginx, 80)
        assert seen["v1"] > 0 and seen["v2"] > 0, seen
        # abort: traffic back to v1, the canary slot stopped, recorded rolled_back
        aborted = fleet.cli("abort", "web")
        assert aborted.returncode == 0, aborted.stdout + aborted.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert _sample(nginx, 20) == {"v1": 20, "v2": 0}
    history = fleet.json("history", "web")
    assert history[0]["status"] == "rolled_back"
    assert "aborted by cli:" in (history[0]["error"] or "")
    # the aborted revision is not retried by the next pass
    again = fleet.cli("apply", *fleet.repo_args())
    assert "blocked" in again.stdout + again.stderr or again.returncode == 0
    assert fleet.json("history", "web")[0]["id"] == history[0]["id"]


def _paused(fleet: Fleet) -> bool:
    status = fleet.json("status")
    web = next((r for r in status["resources"] if r["name"] == "web"), None)
    return bool(web and "waiting for `reconciler promote" in (web.get("lastError") or ""))


def _sample(nginx: Nginx, n: int) -> dict[str, int]:
    seen = {"v1": 0, "v2": 0}
    for _ in range(n):
        seen[greeting_via(nginx)] += 1
    return seen


def test_lock_status_and_a_second_apply_says_who_holds_the_lock(fleet: Fleet) -> None:
    assert fleet.json("lock", "status") == []
    port = free_port()
    fleet.write("slow.yaml", f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: slow}}
spec:
  target: local
  source: {{path: app}}
  command: [{sys.executable}, app.py, --port, "{port}"]
  env: {{SLOW_START: "8"}}
  health:
    http: {{url: "http://{{host}}:{port}/healthz"}}
    interval: 200ms
    startPeriod: 20s
""")
    fleet.commit("slow")
    first = apply_in_background(fleet)
    try:
        locks = wait_for(lambda: [lk for lk in fleet.json("lock", "status")
                                  if lk["name"] == "resource:default/Service/slow"],
                         timeout=30, step=0.2)
        assert locks[0]["state"] == "held"
        assert f":{first.pid}:" in locks[0]["owner"]
        second = fleet.cli("apply", *fleet.repo_args())
        assert second.returncode == 1
        assert f"resource lock held by {locks[0]['owner']}" in second.stdout + second.stderr
        out, _ = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert fleet.json("lock", "status") == []


def test_suspend_pauses_a_rollout_in_progress_and_rollback_uses_the_slots(
        fleet: Fleet, nginx: Nginx, ports: dict[str, int]) -> None:
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v1", delay="0s"))
    fleet.commit("v1")
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    fleet.write("web.yaml", web_yaml(ports, nginx, greeting="v2", delay="4s"))
    fleet.commit("v2")
    proc = apply_in_background(fleet)
    try:
        def switched() -> bool:
            hist = fleet.json("history", "web")
            return hist[0]["toRevision"] != hist[-1]["toRevision"] and any(
                s["action"] == "traffic" for s in hist[0]["steps"])
        wait_for(switched, timeout=60, step=0.2)
        assert fleet.cli("suspend", "web").returncode == 0
        wait_for(lambda: any(s["action"] == "suspended" and s["finishedAt"] is None
                             for s in fleet.json("history", "web")[0]["steps"]),
                 timeout=20, step=0.2)
        time.sleep(5)  # longer than scaleDownDelay: a paused rollout does not go on
        dep = fleet.json("history", "web")[0]
        assert dep["status"] == "in_progress"
        assert "retire" not in [s["action"] for s in dep["steps"]]
        assert proc.poll() is None
        assert fleet.cli("resume", "web").returncode == 0
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    dep = fleet.json("history", "web")[0]
    assert dep["status"] == "succeeded"
    suspended = [s for s in dep["steps"] if s["action"] == "suspended"]
    assert suspended[0]["status"] == "succeeded" and suspended[0]["detail"] == "resumed"
    assert greeting_via(nginx) == "v2"

    # operator rollback: v1 comes back through the other slot, traffic switched to it
    back = fleet.cli("rollback", "web", *fleet.repo_args())
    assert back.returncode == 0, back.stdout + back.stderr
    assert greeting_via(nginx) == "v1"
    dep = fleet.json("history", "web")[0]
    assert dep["strategy"] == "rollback" and dep["status"] == "succeeded"
    assert [s["action"] for s in dep["steps"]].count("traffic") == 1
