"""Issue 16, problem 9: values a client chooses are echoed without control or bidi characters.

A branch name in a signed push, or a ``--to`` revision on the command line, may carry bidi
overrides/isolates/marks (U+202A-U+202E, U+2066-U+2069, U+200E/U+200F) and C1 controls
(U+0085, U+009B = CSI): echoed as they are, they make a terminal, a log viewer or a web page
show another text than the one received. The webhook answer's ``reason``, the daemon's log
line and the CLI's error each show ``?`` instead. Real daemon, real socket, real signed
deliveries built from the real GitHub sample; the real CLI.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from reconciler.observe.printable import printable
from tests.e2e.conftest import Fleet, free_port, http_get, wait_for
from tests.e2e.conftest import fleet as fleet  # the fixture
from tests.helpers import need

CONTRACTS = Path(os.environ.get("RECONCILER_CONTRACTS", Path(__file__).resolve().parents[3]
                                / "shared" / "contracts"))
SAMPLE = CONTRACTS / "webhooks" / "github" / "push.new-branch.json"
SECRET = "echo-sanitised-webhook-secret-5d0c93b1a7e2f4c6"
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
C1 = "\x85\x9b"
HOSTILE = f"feature{BIDI}exe.{C1}[31mmain"
FORBIDDEN = set(BIDI + C1) | {chr(c) for c in range(0x80, 0xA0)} | {"\x1b"}


def clean(text: str) -> bool:
    return not FORBIDDEN & set(text)


def github_push(branch: str) -> bytes:
    doc: dict[str, Any] = copy.deepcopy(json.loads(SAMPLE.read_bytes()))
    doc.update(ref=f"refs/heads/{branch}", created=False, deleted=False)
    return json.dumps(doc).encode()


def post(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-GitHub-Event": "push",
                 "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_printable_covers_every_class() -> None:
    assert printable(HOSTILE) == "feature" + "?" * len(BIDI) + "exe.??[31mmain"
    assert printable("a\x00b\x1b[2Jc\r\nd\te", lines=True) == "a?b?[2Jc?\nd\te"
    assert printable("x" * 10, 5) == "xxxx…"
    assert printable("grüße, 東京") == "grüße, 東京"  # letters of any script stay


@pytest.mark.timeout(120)
def test_webhook_reason_and_log_carry_no_bidi_or_controls(fleet: Fleet) -> None:
    need(SAMPLE.is_file(), f"webhook sample {SAMPLE} not found")
    fleet.commit()
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{port}", "--interval",
         "1h", "--webhook-secret", "github=env:GH_SECRET",
         "--webhook-repo", "https://github.com/Codertocat/Hello-World.git",
         "--webhook-branch", "main"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "GH_SECRET": SECRET}, cwd=fleet.repo)

    def ready() -> bool:
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:
            assert daemon.poll() is None, daemon.communicate()[1]
            return False

    try:
        wait_for(ready, timeout=60, step=0.2)
        status, answer = post(port, github_push(HOSTILE))
        assert (status, answer["status"]) == (200, "ignored"), answer
        reason = answer["reason"]
        assert reason.startswith("branch not watched: feature"), reason
        assert clean(reason), ascii(reason)
        assert reason == f"branch not watched: {printable(HOSTILE)}"
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    log = err.decode("utf-8", "replace")
    assert "branch not watched: feature" in log, log[-2000:]
    assert clean(log), ascii(log[-2000:])


@pytest.mark.timeout(120)
def test_cli_error_echoing_an_argument_is_sanitised(fleet: Fleet) -> None:
    fleet.commit()
    assert fleet.cli("apply", *fleet.repo_args()).returncode == 0
    proc = fleet.cli("rollback", "local", "--to", HOSTILE)
    assert proc.returncode != 0
    assert "no succeeded deployment of revision feature" in proc.stderr, proc.stderr
    assert clean(proc.stdout + proc.stderr), ascii(proc.stderr)
    # and the audit row of the refusal, as the API and `audit -o json` show it
    audit = fleet.json("audit")
    refused = [e for e in audit if e["action"] == "rollback" and e["outcome"] == "failed"]
    assert refused and all(clean(e["message"]) for e in refused), audit
