"""Bare-metal over SSH under faults: ``reconciler apply`` rolls a new release out to a real
systemd+sshd test host while (1) the host is restarted (``docker restart -t 0``: sshd, systemd
and every unit go down at once) during the upload, (2) every SSH connection to it is killed
(sshd's per-connection processes SIGKILLed) during the upload, (3) the same during the health
gate. The apply retries and converges, or fails honestly and the next apply converges; the
journal loses nothing and the host ends up serving the new release with nothing half-uploaded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.providers.bare_metal.remote import DEFAULT_ROOT
from tests.chaos.journal import deployment_ids, journal_problems, newest_status
from tests.chaos.report import record_trial
from tests.e2e.conftest import git
from tests.e2e.conftest import wait_for as wait
from tests.providers.bare_metal.conftest import HOST_APP, free_port
from tests.providers.bare_metal.test_ssh_cli import SECRET, service_yaml, target_yaml
from tests.state.backends import raw_query

pytestmark = pytest.mark.timeout(240)
SCENARIO_RESTART = "test host restart during an SSH deploy"
SCENARIO_DROP = "SSH connections dropped during an SSH deploy"
RELEASES = f"{DEFAULT_ROOT}/default/api/releases"


def http(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


class SSHFleet:
    def __init__(self, tmp_path: Path, host: Any) -> None:
        self.host = host
        self.repo = tmp_path / "config"
        self.state = tmp_path / "state"
        self.url = f"sqlite:///{self.state / 'fraisier.db'}"
        (self.repo / "app" / "data").mkdir(parents=True)
        (self.repo / "app" / "app.py").write_text(HOST_APP)
        (self.repo / "fleet").mkdir()
        (self.repo / "fleet" / "target.yaml").write_text(target_yaml([host]))
        (self.repo / "fleet" / "api.yaml").write_text(service_yaml())
        git(self.repo, "init", "-q", "-b", "main")

    def release(self, version: str, files: int = 0) -> None:
        """A new revision; ``files`` files of 16 KiB of data make its upload last a while."""
        (self.repo / "app" / "VERSION").write_text(version + "\n")
        data = self.repo / "app" / "data"
        for old in data.iterdir():
            old.unlink()
        for i in range(files):
            (data / f"{version}-{i}.bin").write_bytes(os.urandom(16384))
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", version)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "reconciler", "--state-dir", str(self.state),
                "--log-format", "text", "apply", "--repo", str(self.repo), "--path", "fleet"]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FRAISIER_SSH_E2E_TOKEN": SECRET}

    def apply(self, *extra: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([*self.argv(), *extra], capture_output=True, text=True,
                                  timeout=100, cwd=self.repo, env=self.env)
        except subprocess.TimeoutExpired as exc:  # keep what it printed: that is the clue
            def text(data: Any) -> str:
                return data.decode(errors="replace") if isinstance(data, bytes) else data or ""
            raise AssertionError(f"apply hung for 100 s:\n{text(exc.stdout)}\n"
                                 f"{text(exc.stderr)}") from None

    def start_apply(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(), cwd=self.repo, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def uploading(self) -> bool:
        probe = ["sh", "-c", 'ls -d "$1"/.staging-* 2>/dev/null', "-", RELEASES]
        try:
            return bool(self.host.run(probe, check=False, timeout=5).stdout.strip())
        except subprocess.TimeoutExpired:
            return False

    def in_step(self, action: str) -> bool:
        """The in-progress deployment has started a step ``action`` (deploy, health)."""
        try:
            return bool(raw_query(
                self.url, "SELECT 1 FROM v_deployment_step AS s JOIN v_deployment AS d "
                          "ON d.id = s.deployment_id WHERE d.status = 'in_progress' "
                          "AND s.action = %s", (action,)))
        except Exception:  # the database is not there yet
            return False


def restart_host(infra: Any, host: Any) -> int | None:
    done = subprocess.run([infra.docker_cli, "restart", "-t", "0", host.container],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return None


def drop_ssh(infra: Any, host: Any) -> int:
    """SIGKILL sshd's per-connection processes on the host (not its listener): every open SSH
    connection to it dies at once, as with a network cut. Returns how many were killed."""
    script = ("n=0; for p in $(pgrep -f '^sshd: (root|deploy)'); do kill -KILL $p && n=$((n+1));"
              " done; echo $n")
    done = subprocess.run([infra.docker_cli, "exec", host.container, "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip() or 0)


def test_host_restart_and_ssh_drop_mid_deploy(tmp_path: Path, ssh_host: Any,
                                              testinfra: Any) -> None:
    port = free_port()
    ssh_host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-", str(port)])
    fleet = SSHFleet(tmp_path, ssh_host)
    fleet.release("v1")
    first = fleet.apply()
    assert first.returncode == 0, first.stdout + first.stderr
    assert http(port) == "v1 hi"

    trials = [
        ("v2", SCENARIO_RESTART, "upload", lambda: restart_host(testinfra, ssh_host)),
        ("v3", SCENARIO_DROP, "upload", lambda: drop_ssh(testinfra, ssh_host)),
        ("v4", SCENARIO_DROP, "health", lambda: drop_ssh(testinfra, ssh_host)),
    ]
    try:
        for version, scenario, when, fault in trials:
            started = time.monotonic()
            fleet.release(version, files=300 if when == "upload" else 0)
            before = deployment_ids(fleet.url)
            apply = fleet.start_apply()
            try:
                step = "deploy" if when == "upload" else "health"
                wait(lambda s=step: fleet.in_step(s) or apply.poll() is not None,
                     timeout=60, step=0.01)
                if when == "upload":  # the deploy step exports, then uploads: catch the upload
                    with contextlib.suppress(AssertionError):
                        wait(lambda: fleet.uploading() or apply.poll() is not None,
                             timeout=3, step=0.01)
                assert apply.poll() is None, f"{version}: the apply ended before the fault"
                killed = fault()
                try:
                    out, _ = apply.communicate(timeout=100)
                except subprocess.TimeoutExpired:
                    apply.kill()
                    out, _ = apply.communicate(timeout=10)
                    raise AssertionError(f"{version}: apply hung for 100 s:\n{out}") from None
            finally:
                if apply.poll() is None:
                    apply.kill()
                    apply.wait(timeout=10)
            ssh_host.wait_ssh(timeout=60)
            assert "Traceback" not in out, out
            note = f"{version} fault during {when}: apply exit {apply.returncode}"
            if killed is not None:  # the drop really cut the deploy's connection(s)
                assert killed >= 1, "no SSH connection to drop"
                note = f"{note} ({killed} sshd connection process(es) killed)"
            rerun_ok = True
            if apply.returncode != 0:
                assert apply.returncode == 1, out  # a failed resource, not a crash
                interrupted = newest_status(fleet.url, "api")
                # a rolled-back revision waits for a new commit or --force (DESIGN)
                force = ["--force"] if interrupted in ("rolled_back", "rollback_failed") else []
                rerun = fleet.apply(*force)
                rerun_ok = rerun.returncode == 0
                note += (f" ({interrupted}), rerun{' --force' if force else ''} "
                         f"exit {rerun.returncode}")
            try:
                wait(lambda v=version: http(port) == f"{v} hi", timeout=30, step=0.2)
                serving = True
            except AssertionError:
                serving = False
            leftovers = [name for name in ssh_host.sh(f"ls -A {RELEASES}").split()
                         if "staging" in name]
            problems = journal_problems(fleet.url, before)
            converged = rerun_ok and serving and not leftovers
            record_trial(scenario, converged, len(problems), note=note,
                         seconds=time.monotonic() - started)
            assert converged, (note, out, http(port), leftovers)
            assert problems == [], problems
    finally:
        ssh_host.wait_ssh(timeout=60)
