"""The error catalogue: unique stable codes, a hint for each, every code documented in
docs/errors.md (and nothing else there), and the hints reaching the user for real."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import asyncssh
import pytest

from reconciler.transport.ssh import SSHAuthError, SSHHostConfig, SSHHostKeyError, SSHTransport
from tests.docs.conftest import DOCS, ROOT
from tests.helpers import free_port, need

SECTION = re.compile(r"^## (FR\d{3})\n(.*?)(?=^## |\Z)", re.MULTILINE | re.DOTALL)


def documented() -> dict[str, str]:
    return dict(SECTION.findall((DOCS / "errors.md").read_text()))


def test_codes_are_unique_and_every_class_has_a_hint(generator: ModuleType) -> None:
    classes = generator.error_classes()
    assert len(classes) > 20  # every module was imported
    by_code: dict[str, list[str]] = {}
    for cls in classes:
        if "code" not in vars(cls):
            # An alias of its parent for users (same code, same hint) — e.g. a class that
            # also derives from ValueError. A different hint needs a code of its own.
            assert "hint" not in vars(cls), f"{cls.__qualname__}: own hint, but no own code"
            continue
        assert re.fullmatch(r"FR\d{3}", cls.code), cls
        by_code.setdefault(cls.code, []).append(f"{cls.__module__}.{cls.__qualname__}")
        hint = cls.hint.strip()
        assert hint and "\n" not in hint and len(hint) >= 30, (cls, hint)
        assert cls.exit_code in (1, 2), cls
    duplicates = {code: names for code, names in by_code.items() if len(names) > 1}
    assert not duplicates, duplicates


def test_every_code_is_documented_and_every_documented_code_exists(
        generator: ModuleType) -> None:
    codes = {cls.code: cls for cls in generator.error_classes() if "code" in vars(cls)}
    sections = documented()
    assert sorted(set(codes) - set(sections)) == [], "codes missing from docs/errors.md"
    assert sorted(set(sections) - set(codes)) == [], "docs/errors.md documents unknown codes"
    for code, cls in codes.items():
        assert f"`{cls.__name__}`" in sections[code], f"## {code} should name {cls.__name__}"
        assert "emediation" in sections[code], f"## {code} has no remediation"
    table = (DOCS / "errors.md").read_text().split("\n## ", 1)[0]
    for code, cls in codes.items():
        assert f"| [{code}](#{code.lower()}) | `{cls.__name__}` |" in table


def test_cli_prints_code_and_hint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["RECONCILER_STATE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "reconciler", "history", "no-such-thing"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error[FR700]: no resource named 'no-such-thing'"
    assert lines[1].startswith("hint: list resources with `reconciler status`")


@pytest.mark.timeout(60)
async def test_unknown_host_key_hint_is_the_command_that_pins_it(tmp_path: Path) -> None:
    """An unknown host's error carries `ssh-keyscan -p PORT HOST`; running the hinted commands
    pins the key, after which the connection gets past host-key checking (to the login)."""
    need(shutil.which("ssh-keyscan") is not None and shutil.which("ssh-keygen") is not None,
         "ssh-keyscan/ssh-keygen (openssh-client) not installed")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(asyncssh.SSHServer, "127.0.0.1", 0,
                                          server_host_keys=[host_key])
    port = server.sockets[0].getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = SSHHostConfig(host_id="web-1", address="127.0.0.1", port=port,
                           known_hosts=str(known_hosts), connect_attempts=1, connect_timeout=5)
    try:
        transport = SSHTransport(config)
        with pytest.raises(SSHHostKeyError) as caught:
            await transport.run(["true"], timeout=5)
        await transport.close()
        error = caught.value
        assert error.code == "FR411"
        command = re.search(r"`(ssh-keyscan [^`]*)`", error.hint)
        assert command is not None, error.hint
        assert command.group(1).startswith(f"ssh-keyscan -p {port} 127.0.0.1 > host.key")
        assert str(known_hosts) in error.hint
        # Follow the hint: fetch, fingerprint, pin.
        # (in a thread: the server answering ssh-keyscan runs on this event loop)
        await asyncio.to_thread(subprocess.run, ["bash", "-euo", "pipefail", "-c",
                                                 command.group(1)],
                                cwd=tmp_path, check=True, timeout=30, capture_output=True)
        fingerprint = subprocess.run(["ssh-keygen", "-lf", "host.key"], cwd=tmp_path,
                                     check=True, timeout=30, capture_output=True, text=True)
        expected = host_key.get_fingerprint("sha256")
        assert expected in fingerprint.stdout
        with known_hosts.open("a") as pinned:
            pinned.write((tmp_path / "host.key").read_text())
        transport = SSHTransport(config)
        with pytest.raises(SSHAuthError):  # past the host key: no client key is accepted here
            await transport.run(["true"], timeout=5)
        await transport.close()
    finally:
        server.close()
        await server.wait_closed()


def test_log_fields_carry_code_and_hint() -> None:
    from reconciler.errors import SecretError

    fields = SecretError("secret reference env:DB_PASSWORD is not set").log_fields()
    assert fields == {"error": "secret reference env:DB_PASSWORD is not set", "code": "FR500",
                      "hint": SecretError.hint}


def test_apply_shows_the_code_and_hint_of_a_failed_resource(tmp_path: Path) -> None:
    """A resource that fails during `apply` (here: an unset secret) is listed with its code and
    the remediation hint, and the JSON log line of the failure carries both."""
    repo = tmp_path / "fleet"
    repo.mkdir()
    (repo / "fleet.yaml").write_text("""\
apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local}
spec: {provider: bare_metal, transport: local}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api}
spec:
  target: local
  command: [sleep, "60"]
  env: {TOKEN: {env: FRAISIER_DOCS_TEST_UNSET_TOKEN}}
""")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, timeout=30)
    subprocess.run([*git, "add", "."], check=True, timeout=30)
    subprocess.run([*git, "commit", "-qm", "fleet"], check=True, timeout=30)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECONCILER_") and k != "FRAISIER_DOCS_TEST_UNSET_TOKEN"}
    env["RECONCILER_STATE_DIR"] = str(tmp_path / "state")
    base = [sys.executable, "-m", "reconciler", "--log-format", "json", "--log-level", "info",
            "apply", "--repo", str(repo)]
    text = subprocess.run(base, capture_output=True, text=True, env=env, timeout=90)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "default/Service/api: failed — [FR500] " in text.stdout, text.stdout
    assert "env:FRAISIER_DOCS_TEST_UNSET_TOKEN" in text.stdout
    from reconciler.errors import SecretError

    assert f"    hint: {SecretError.hint}" in text.stdout
    import json

    logged = [json.loads(line) for line in text.stderr.splitlines() if line.startswith("{")]
    failed = [e for e in logged if e.get("phase") == "failed"]
    assert failed and failed[0]["code"] == "FR500" and failed[0]["hint"] == SecretError.hint
    assert failed[0]["resource"] == "default/Service/api"
    from reconciler.rollout.engine import Outcome
    from reconciler.spec.model import ResourceKey

    outcome = Outcome(ResourceKey("default", "Service", "api"), "deploy", "failed", None,
                      "secret reference env:X is not set", code="FR500", hint=SecretError.hint)
    assert outcome.to_json()["code"] == "FR500" and outcome.to_json()["hint"] == SecretError.hint
    assert "code" not in Outcome(outcome.key, "deploy", "succeeded").to_json()


@pytest.mark.timeout(90)
async def test_git_clone_over_ssh_hints_follow_the_failure(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Cloning the config repo from an SSH server whose key is unknown hints the ssh-keyscan
    command for that server; once the key is pinned as hinted, the next failure (a refused
    login) hints the deploy key instead."""
    from reconciler.errors import SourceError
    from reconciler.source.git import GitSource

    need(shutil.which("ssh") is not None and shutil.which("ssh-keyscan") is not None,
         "ssh/ssh-keyscan (openssh-client) not installed")
    class KeysOnly(asyncssh.SSHServer):  # offers public-key login, accepts no key
        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return False

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(KeysOnly, "127.0.0.1", 0, server_host_keys=[host_key])
    port = server.sockets[0].getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    monkeypatch.setenv("GIT_SSH_COMMAND", (
        f"ssh -F /dev/null -o UserKnownHostsFile={known_hosts} -o GlobalKnownHostsFile=/dev/null"
        f" -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes"
        f" -i {tmp_path / 'no-such-key'}"))
    url = f"ssh://git@127.0.0.1:{port}/acme/fleet.git"

    async def sync() -> SourceError:
        source = GitSource(url, state_dir=tmp_path / "state")
        with pytest.raises(SourceError) as caught:
            await asyncio.to_thread(source.sync)
        return caught.value

    try:
        unknown = await sync()
        assert f"`ssh-keyscan -p {port} 127.0.0.1 > host.key" in unknown.hint, unknown.hint
        assert "Host key verification failed" in unknown.message  # the line that matters
        scan = await asyncio.to_thread(subprocess.run,
                                       ["ssh-keyscan", "-p", str(port), "127.0.0.1"],
                                       capture_output=True, text=True, timeout=30)
        known_hosts.write_text(scan.stdout)
        refused = await sync()
        assert "deploy key" in refused.hint, (refused.message, refused.hint)
        assert "Permission denied (publickey" in refused.message
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.timeout(60)
def test_daemon_logs_carry_code_and_hint(tmp_path: Path) -> None:
    """A config repository the daemon cannot read: the JSON log line has the code and hint."""
    import json
    import queue
    import threading

    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(RECONCILER_STATE_DIR=str(tmp_path / "state"),
               GIT_SSH_COMMAND="ssh -F /dev/null -o BatchMode=yes -o ConnectTimeout=5")
    with socket.socket() as s:  # nothing listens there once closed
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    listen_port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "daemon", "--repo",
         f"ssh://git@127.0.0.1:{closed_port}/acme/fleet.git", "--interval", "1h",
         "--listen", f"127.0.0.1:{listen_port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert daemon.stderr is not None
    threading.Thread(target=lambda: [lines.put(x) for x in daemon.stderr], daemon=True).start()
    try:
        deadline = time.monotonic() + 40
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if entry["msg"].startswith("cannot read config repo"):
                break
        assert entry["level"] == "error" and entry["code"] == "FR200"
        assert f"`nc -vz 127.0.0.1 {closed_port}`" in entry["hint"], entry
        assert "fleet.git" in entry["error"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
