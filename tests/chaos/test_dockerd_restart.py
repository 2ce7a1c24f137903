"""dockerd restarted while ``reconciler apply`` deploys a compose Service: gracefully (SIGTERM,
as ``systemctl restart docker`` does: dockerd stops the containers on its way out) during the
first deploy, and by SIGKILL (a crash) during an update. The pass converges or fails honestly;
the next apply converges; no deployment is lost or left open.

The dockerd is the private one of tests/providers/compose/test_dockerd_restart.py (own data root
and socket, vfs, no bridge): restarting the shared dockerd of tests/infra/up.sh would also stop
the systemd+sshd test-host containers every other test (and other sessions) are using.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.journal import deployment_ids, journal_problems, newest_status
from tests.chaos.report import record_trial
from tests.providers.compose.conftest import (
    CliFleet,
    document,
    free_port,
    http_get_sync,
    wait_until,
)
from tests.providers.compose.test_dockerd_restart import (  # noqa: F401  (fixture)
    PrivateDockerd,
    private_dockerd,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]
SCENARIO = "dockerd restart during a compose deploy"
PROJECT = "com.docker.compose.project"


def web(environment: str, image: str, port: int, version: str) -> str:
    """httpd that takes 2 s to listen: the deploy spends them waiting for health."""
    script = f"sleep 2 && : {version} && exec httpd -f -p 127.0.0.1:{port} -h /www"
    spec: dict[str, Any] = {
        "target": "docker",
        "stopTimeout": "2s",
        "health": {
            "http": {"url": f"http://{{host}}:{port}/health", "expectStatus": 200},
            "interval": "200ms", "timeout": "1s", "startPeriod": "5s",
        },
        "compose": {
            "image": image, "pullPolicy": "never", "networkMode": "host",
            "command": ["/bin/sh", "-c", script],
            "healthcheck": {
                "test": ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/health"],
                "interval": "500ms", "timeout": "2s", "retries": 3, "startPeriod": "20s",
            },
            "waitTimeout": "8s",
        },
    }  # fmt: skip
    return document("Service", "web", environment, spec)


def restart_gracefully(daemon: PrivateDockerd) -> None:
    assert daemon.proc is not None
    daemon.proc.terminate()
    daemon.proc.wait(timeout=60)
    daemon.start()


def restart_crashed(daemon: PrivateDockerd) -> None:
    daemon.kill9()
    time.sleep(0.5)
    daemon.start()


def test_dockerd_restart_mid_deploy_converges(
    private_dockerd: PrivateDockerd, compose_cli: list[str], tiny_image: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    environment, port = "chaos", free_port()
    project = f"fraisier_{environment}_service_web"
    fleet = CliFleet(tmp_path)
    url = f"sqlite:///{fleet.state / 'fraisier.db'}"
    target = {"provider": "compose",
              "docker": {"host": private_dockerd.host, "composeCommand": compose_cli}}  # fmt: skip
    fleet.commit({"target.yaml": document("Target", "docker", environment, target)}, "target")
    trials = [("v1", "SIGTERM + start", restart_gracefully),
              ("v2", "SIGKILL + start", restart_crashed)]
    for version, how, restart in trials:
        started = time.monotonic()
        fleet.commit({"web.yaml": web(environment, tiny_image, port, version)}, version)
        before = deployment_ids(url) if (fleet.state / "fraisier.db").exists() else set()
        apply = subprocess.Popen(
            fleet.argv("--log-format", "text", "apply", *fleet.repo_args()),
            cwd=fleet.repo, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            # Mid-deploy: compose started the new container, which is not healthy yet.
            running = ("ps", "-q", "--filter", f"label={PROJECT}={project}",
                       "--filter", "health=starting")  # fmt: skip
            wait_until(lambda: private_dockerd.docker(*running).stdout.strip(), 30,
                       "compose up started the container", step=0.05)  # fmt: skip
            assert apply.poll() is None, "the deploy ended before dockerd restarted"
            t_fault = time.monotonic()
            restart(private_dockerd)
            restarted_in = time.monotonic() - t_fault
            out, _ = apply.communicate(timeout=60)
            apply_after = time.monotonic() - t_fault
        finally:
            if apply.poll() is None:
                apply.kill()
                apply.wait(timeout=10)
        assert "Traceback" not in out, out
        assert apply.returncode in (0, 1), out
        note = (f"{version} ({how}, dockerd back in {restarted_in:.1f}s): apply exit "
                f"{apply.returncode} {apply_after:.1f}s after the fault")
        rerun_ok, rerun_out = True, ""
        if apply.returncode == 1:
            # Honest failure. A revision that was rolled back waits for a new commit or --force
            # (DESIGN "Deployment record"): the rerun forces it only then, and says so.
            interrupted = newest_status(url, "web")
            assert interrupted in ("failed", "rolled_back", "rollback_failed", "cancelled"), (
                interrupted)
            force = ["--force"] if interrupted in ("rolled_back", "rollback_failed") else []
            rerun = fleet.apply(*force)
            rerun_ok, rerun_out = rerun.returncode == 0, rerun.stdout + rerun.stderr
            note += f" ({interrupted}), rerun{' --force' if force else ''} exit {rerun.returncode}"
        web_status = fleet.status_of("web")
        serving = http_get_sync(port, "/health")[0] == 200
        converged = rerun_ok and serving and web_status["sync"] == "Synced"
        problems = journal_problems(url, before)
        record_trial(SCENARIO, converged, len(problems), note=note,
                     seconds=time.monotonic() - started)
        assert converged, (note, out, rerun_out, web_status)
        assert problems == [], problems
