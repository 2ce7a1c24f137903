"""A daemon following a *remote* config repo, woken only by signed GitHub push webhooks.

The remote is a bare repo behind a ``file://`` URL and the poll interval is an hour, so a rollout
that happens within seconds was triggered by the webhook. The payload is the real GitHub sample
(``contracts/webhooks/github/push.new-branch.json``) with ref/before/after edited in memory; the
daemon is told the sample's own repository URL with ``--webhook-repo`` (a ``file://`` URL is
not a repository URL ``matches()`` can compare with a payload's).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    Fleet,
    free_port,
    git,
    greeting,
    http_get,
    service_yaml,
    stop_daemon,
    wait_for,
)
from tests.helpers import need

pytestmark = pytest.mark.timeout(180)

CONTRACTS = Path(os.environ.get("RECONCILER_CONTRACTS", Path(__file__).resolve().parents[3]
                                / "shared" / "contracts"))
SAMPLE = CONTRACTS / "webhooks" / "github" / "push.new-branch.json"
SECRET = "e2e-webhook-secret-0f9d"


def github_push(before: str, after: str, branch: str = "main") -> bytes:
    """The real GitHub push sample, re-pointed at our branch and commits."""
    doc: dict[str, Any] = copy.deepcopy(json.loads(SAMPLE.read_bytes()))
    doc.update(ref=f"refs/heads/{branch}", before=before, after=after, created=False,
               deleted=False)
    doc["head_commit"]["id"] = after
    for commit in doc.get("commits", []):
        commit["id"] = after
    return json.dumps(doc).encode()


def post_webhook(port: int, body: bytes, *, delivery: str, secret: str = SECRET,
                 event: str = "push") -> tuple[int, dict[str, Any]]:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-GitHub-Event": event,
                 "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature,
                 "User-Agent": "GitHub-Hookshot/e2e"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")



def ready(listen: int) -> bool:
    try:
        return http_get(listen, "/readyz")[0] == 200
    except OSError:
        return False


def stays(predicate: Any, seconds: float) -> bool:
    """True when ``predicate`` holds for the whole period (checked every 100 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True


def test_signed_push_webhook_rolls_out_remote_commit(fleet: Fleet, tmp_path: Path) -> None:
    need(SAMPLE.is_file(), f"webhook sample {SAMPLE} not found")
    port, listen = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    first = fleet.commit("one")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(fleet.repo), str(remote)], check=True)
    git(fleet.repo, "remote", "add", "origin", str(remote))
    url = remote.as_uri()  # file:///…/remote.git

    env = {**os.environ, "GH_SECRET": SECRET}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         "--repo", url, "--path", "fleet", "--listen", f"127.0.0.1:{listen}",
         "--interval", "1h", "--webhook-secret", "github=env:GH_SECRET",
         "--webhook-repo", "https://github.com/Codertocat/Hello-World.git",
         "--webhook-branch", "main"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for(lambda: ready(listen), timeout=60, step=0.2)
        wait_for(lambda: greeting(port) == "one", timeout=30)

        # A pushed commit alone is not seen: the daemon polls only hourly.
        fleet.write("api.yaml", service_yaml("api", port, greeting="two"))
        second = fleet.commit("two")
        git(fleet.repo, "push", "-q", "origin", "main")
        assert stays(lambda: greeting(port) == "one", 2.0)

        delivery = str(uuid.uuid4())
        body = github_push(first, second)
        status, answer = post_webhook(listen, body, delivery=delivery)
        assert status == 202, answer
        assert answer["status"] == "accepted" and answer["reconcile_id"]
        t0 = time.monotonic()
        wait_for(lambda: greeting(port) == "two", timeout=30, step=0.02)
        print(f"webhook -> new revision serving: {time.monotonic() - t0:.2f}s")
        # Serving comes before the health gate closes the deployment: wait for the record.
        wait_for(lambda: fleet.json("history", "api")[0]["status"] != "in_progress",
                 timeout=30, step=0.1)
        history = fleet.json("history", "api")
        assert history[0]["trigger"] == f"webhook:github:{delivery}"
        assert history[0]["status"] == "succeeded" and history[0]["configCommit"] == second
        deployments = len(history)

        # The next commit is pushed, but announced with a wrong signature: 401, nothing runs.
        fleet.write("api.yaml", service_yaml("api", port, greeting="three"))
        third = fleet.commit("three")
        git(fleet.repo, "push", "-q", "origin", "main")
        forged = github_push(second, third)
        status, answer = post_webhook(listen, forged, delivery=str(uuid.uuid4()),
                                      secret="not-the-secret")
        assert status == 401 and answer["status"] == "unauthorized"
        # Same body, signature of another body: also 401.
        request = urllib.request.Request(
            f"http://127.0.0.1:{listen}/webhooks/github", data=forged, method="POST",
            headers={"Content-Type": "application/json", "X-GitHub-Event": "push",
                     "X-GitHub-Delivery": str(uuid.uuid4()),
                     "X-Hub-Signature-256": "sha256=" + hmac.new(
                         SECRET.encode(), forged + b" ", hashlib.sha256).hexdigest()})
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(request, timeout=5)
        assert unsigned.value.code == 401
        # A replay of the accepted delivery (valid signature, same id) is a no-op, although a
        # reconcile now *would* change something (commit three is waiting in the remote).
        status, answer = post_webhook(listen, body, delivery=delivery)
        assert status == 200 and answer["status"] == "duplicate", answer
        assert stays(lambda: greeting(port) == "two", 3.0)
        assert len(fleet.json("history", "api")) == deployments

        # A fourth commit is pushed too, then a fresh, correctly signed delivery for commit
        # three: the pass is pinned to three, not to the branch head (four).
        fleet.write("api.yaml", service_yaml("api", port, greeting="four"))
        fleet.commit("four")
        git(fleet.repo, "push", "-q", "origin", "main")
        fresh = str(uuid.uuid4())
        status, answer = post_webhook(listen, forged, delivery=fresh)
        assert status == 202, answer
        wait_for(lambda: greeting(port) == "three", timeout=30, step=0.02)
        wait_for(lambda: fleet.json("history", "api")[0]["status"] != "in_progress",
                 timeout=30, step=0.1)
        newest = fleet.json("history", "api")[0]
        assert (newest["configCommit"], newest["trigger"]) == (third, f"webhook:github:{fresh}")
        assert stays(lambda: greeting(port) == "three", 1.5)
        audit = fleet.json("audit", "api", "-n", "1")[0]
        assert (audit["actor"], audit["configCommit"], audit["outcome"]) == (
            f"webhook:github:{fresh}", third, "succeeded")
        # A push to a branch that is not watched is ignored with its reason.
        status, answer = post_webhook(listen, github_push(third, third, branch="feature"),
                                      delivery=str(uuid.uuid4()))
        assert status == 200 and answer["status"] == "ignored"
        assert "branch not watched" in answer["reason"]
        # Signed but not JSON → 400; over the 1 MiB cap → 413 (before the signature is checked).
        status, answer = post_webhook(listen, b'{"ref": "refs/heads/main", ',
                                      delivery=str(uuid.uuid4()))
        assert status == 400 and answer["status"] == "bad_payload"
        huge = github_push(third, third)[:-1] + b', "pad": "' + b"x" * (1 << 20) + b'"}'
        try:
            status, answer = post_webhook(listen, huge, delivery=str(uuid.uuid4()))
        except (ConnectionError, urllib.error.URLError):
            status = 413  # the daemon may drop the connection while the body is still sent
        assert status == 413
        assert greeting(port) == "three"
    finally:
        code = stop_daemon(daemon)
    err = daemon.stderr.read() if daemon.stderr else ""
    assert code == 0, err[-3000:]
    assert "Traceback" not in err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    queued = [e for e in events if e["msg"] == "webhook push queued"]
    assert [e["sha"] for e in queued] == [second, third]
    outcomes = [e.get("outcome") for e in events if e["logger"] == "reconciler.daemon.webhooks"]
    assert outcomes == ["accepted", "unauthorized", "unauthorized", "duplicate", "accepted",
                        "ignored", "bad_payload", "too_large"]
    # Only the webhook (and start-up) woke the loop: never a poll.
    triggers = {e["trigger"] for e in events if e["msg"] == "reconcile pass done"}
    assert all(t == "startup" or t.startswith("webhook:github:") for t in triggers), triggers
    pinned = [e["sha"] for e in events if e["msg"] == "webhook pass pinned to the pushed commit"]
    assert pinned == [second, third]
    assert SECRET not in err
