"""The "testing a webhook by hand" block of docs/webhooks.md works against a real daemon: the
openssl HMAC it shows is the signature the daemon checks, and the answer is the one printed."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.docs.conftest import DOCS
from tests.helpers import free_port, need

SECRET = "doc-test-webhook-secret-7c1e"


def manual_block() -> tuple[str, str]:
    text = (DOCS / "webhooks.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.DOTALL) if "openssl" in b)
    expected = re.search(r"^# (\{.*\})$", block, re.MULTILINE)
    assert expected is not None, "the block shows the expected answer as a # comment"
    return block, expected.group(1)


@pytest.mark.timeout(90)
def test_manual_webhook_block_gets_the_documented_answer(tmp_path: Path) -> None:
    need(shutil.which("openssl") is not None and shutil.which("curl") is not None,
         "openssl and curl are needed to run the documented commands")
    block, expected = manual_block()
    assert "127.0.0.1:9464" in block
    repo = tmp_path / "fleet"
    repo.mkdir()
    (repo / "target.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: local}\n"
        "spec: {provider: bare_metal, transport: local}\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "fleet"]):
        subprocess.run([*git, *args], check=True, timeout=30)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_STATE_DIR=str(tmp_path / "state"), GITHUB_WEBHOOK_SECRET=SECRET)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--log-format", "text", "daemon", "--repo",
         str(repo), "--interval", "1h", "--listen", f"127.0.0.1:{port}",
         "--webhook-secret", "github=env:GITHUB_WEBHOOK_SECRET",
         "--webhook-repo", "https://github.com/acme/fleet.git"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                assert daemon.poll() is None, daemon.communicate()[0]
                assert time.monotonic() < deadline, "daemon did not come up"
                time.sleep(0.2)
        script = block.replace("127.0.0.1:9464", f"127.0.0.1:{port}")
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env,
                             capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip() == expected
        # and a wrong secret is refused: the signature really is checked
        env_wrong = {**env, "GITHUB_WEBHOOK_SECRET": "not-the-secret"}
        wrong = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env_wrong,
                               capture_output=True, text=True, timeout=30)
        assert '"unauthorized"' in wrong.stdout, wrong.stdout
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
