"""dockerd killed (SIGKILL) and started again while ``reconciler apply`` deploys: the pass fails
cleanly, and a rerun converges with nothing left in progress.

The shared dockerd of tests/infra/up.sh serves every test on this machine (and other people's
runs), so this test starts a second, private dockerd of its own: own data root, exec root,
pidfile and socket under a temporary directory, no bridge, no iptables, the vfs storage driver
(no overlay mounts to leave behind). The tiny image is copied into it with save | load.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import need
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import (
    CliFleet,
    document,
    free_port,
    http_get_sync,
    project_containers,
    wait_until,
)

pytestmark = [pytest.mark.integration]

DOCKERD = "/usr/sbin/dockerd"
PROJECT = "com.docker.compose.project"


class PrivateDockerd:
    """A dockerd only this test talks to (started, SIGKILLed, restarted, stopped by it)."""

    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        # Short path: unix socket paths are limited to 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="fpd-", dir="/tmp"))
        self.socket = self.base / "docker.sock"
        self.pidfile = self.base / "docker.pid"
        self.log = self.base / "dockerd.log"
        (self.base / "daemon.json").write_text("{}\n")  # not /etc/docker/daemon.json
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def argv(self) -> list[str]:
        return [
            DOCKERD,
            "--config-file", str(self.base / "daemon.json"),
            "--data-root", str(self.base / "data"),
            "--exec-root", str(self.base / "exec"),
            "--pidfile", str(self.pidfile),
            "-H", self.host,
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def docker(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.infra.docker_cli, "-H", self.host, *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def answers(self) -> bool:
        try:
            return self.docker("version", timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def start(self) -> None:
        # A SIGKILLed dockerd leaves its pidfile behind, and a new one refuses to start on it.
        self.pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(self.answers, 30, "the private dockerd answers", step=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def kill9(self) -> None:
        """SIGKILL dockerd, as a crash would. Its containerd gets SIGKILL too (parent-death
        signal) and stays a zombie until PID 1 reaps it; a dockerd started before then takes
        the zombie for a running containerd, waits for its socket and gives up."""
        assert self.proc is not None
        pidfile = self.base / "exec" / "containerd" / "containerd.pid"
        containerd = int(pidfile.read_text()) if pidfile.exists() else None
        self.proc.kill()
        self.proc.wait(timeout=10)
        if containerd is not None:
            t0 = time.monotonic()
            while Path(f"/proc/{containerd}").exists() and time.monotonic() - t0 < 15:
                time.sleep(0.1)

    def load_image(self, name: str) -> None:
        save = subprocess.Popen([self.infra.docker_cli, "save", name], stdout=subprocess.PIPE)
        load = self.docker_load(save)
        assert save.wait(timeout=60) == 0
        assert load.returncode == 0, load.stderr

    def docker_load(self, save: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.infra.docker_cli, "-H", self.host, "load", "-q"],
            stdin=save.stdout, capture_output=True, timeout=60,
        )  # fmt: skip

    def _our_pids(self) -> list[int]:
        """Processes whose command line names our directory (containerd, shims)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if str(self.base).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Remove every container, stop dockerd (and its containerd), unmount, delete."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                ids = self.docker("ps", "-a", "-q").stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, timeout=60)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while self._our_pids() and time.monotonic() < deadline:
            time.sleep(0.1)  # containerd exits once its dockerd is gone
        for pid in self._our_pids():  # left running only when dockerd could not stop them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in range(5):  # dockerd bind-mounts its data root and a netns file under base
            mounts = self._mounts()
            if not mounts:
                break
            for mount in mounts:
                if subprocess.run(["umount", mount], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)

    def _mounts(self) -> list[str]:
        prefix = str(self.base)
        points = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == prefix or line.split()[4].startswith(prefix + "/")
        ]
        return sorted(points, key=len, reverse=True)


@pytest.fixture
def private_dockerd(docker_engine: Infra, tiny_image: str) -> Iterator[PrivateDockerd]:
    need(os.access(DOCKERD, os.X_OK), f"{DOCKERD} not installed (apt-get install docker.io)")
    need(os.geteuid() == 0, "a private dockerd needs root")
    daemon = PrivateDockerd(docker_engine)
    try:
        daemon.start()
        daemon.load_image(tiny_image)
        yield daemon
    finally:
        daemon.stop()


def slow_web(environment: str, image: str, port: int) -> str:
    """httpd that takes 3 s to listen: the deploy spends them waiting for health."""
    script = f"sleep 3 && exec httpd -f -p 127.0.0.1:{port} -h /www"
    spec: dict[str, Any] = {
        "target": "docker",
        "stopTimeout": "2s",
        "health": {
            "http": {"url": f"http://{{host}}:{port}/health", "expectStatus": 200},
            "interval": "200ms",
            "timeout": "1s",
            "startPeriod": "5s",
        },
        "compose": {
            "image": image,
            "pullPolicy": "never",
            "networkMode": "host",
            "command": ["/bin/sh", "-c", script],
            "healthcheck": {
                "test": ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/health"],
                "interval": "500ms",
                "timeout": "2s",
                "retries": 3,
                "startPeriod": "20s",
            },
            "waitTimeout": "20s",
        },
    }
    return document("Service", "web", environment, spec)


@pytest.mark.timeout(60)
def test_dockerd_killed_mid_deploy_then_rerun_converges(
    private_dockerd: PrivateDockerd, compose_cli: list[str], tiny_image: str, tmp_path: Path
) -> None:
    environment, port = "restart", free_port()
    project = f"fraisier_{environment}_service_web"
    fleet = CliFleet(tmp_path)
    target = {"provider": "compose",
              "docker": {"host": private_dockerd.host, "composeCommand": compose_cli}}  # fmt: skip
    fleet.commit(
        {"target.yaml": document("Target", "docker", environment, target),
         "web.yaml": slow_web(environment, tiny_image, port)},
        "web on the private dockerd",
    )  # fmt: skip

    apply = subprocess.Popen(
        fleet.argv("--log-format", "json", "apply", *fleet.repo_args()),
        cwd=fleet.repo, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # Mid-deploy: compose has started the container, which is not healthy yet.
        running = ("ps", "-q", "--filter", f"label={PROJECT}={project}")
        wait_until(lambda: private_dockerd.docker(*running).stdout.strip(), 20,
                   "compose up started the container", step=0.05)  # fmt: skip
        assert apply.poll() is None, "the deploy ended before dockerd was killed"
        private_dockerd.kill9()
        time.sleep(1.0)
        private_dockerd.start()
        out, _ = apply.communicate(timeout=40)
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.wait(timeout=10)
    assert apply.returncode == 1, out
    [interrupted] = fleet.json("history", "web")
    assert interrupted["status"] == "failed", interrupted
    # Killed in `compose up` or while waiting for health: either way the deploy step failed.
    deploy_steps = [s for s in interrupted["steps"] if s["action"] == "deploy"]
    assert [s["status"] for s in deploy_steps] == ["failed"], interrupted

    proc = fleet.apply()
    assert proc.returncode == 0, proc.stdout + proc.stderr + private_dockerd.log_tail()
    assert http_get_sync(port, "/health")[0] == 200
    history = fleet.json("history", "web")
    assert [d["status"] for d in history] == ["succeeded", "failed"]
    web = fleet.status_of("web")
    assert (web["sync"], web["health"], web["lastResult"]) == ("Synced", "Healthy", "succeeded")
    [container] = project_containers(private_dockerd.infra, project, private_dockerd.host)
    shown = private_dockerd.docker("inspect", "-f", "{{.State.Running}} {{.State.Health.Status}}",
                                   container)  # fmt: skip
    assert shown.stdout.split() == ["true", "healthy"], shown.stdout + shown.stderr
    # Nothing stays open in the journal: no deployment pending or in progress.
    assert not {d["status"] for d in history} & {"pending", "in_progress"}
