"""Issue 16, problem 1: nothing a committer writes can stop the daemon.

Each test runs the real daemon on a real config repo with a Service that converged, commits
something that used to end the daemon with ``internal error`` (and again at every restart,
leaving the deployment ``in_progress``), and checks that

- ``reconciler validate`` refuses it with ``file:line:col`` when it can never deploy;
- the daemon keeps running the last good commit, ``/readyz`` says why, no deployment is left
  ``in_progress``;
- a later good commit converges, and SIGTERM still ends the daemon cleanly (exit 0).

What validate cannot see (an application repository's files, an unforeseen exception) goes
through the error boundary: that resource fails with a code, the others converge, the pass
is retried with backoff, not in a hot loop.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

LOCATED = re.compile(r"fleet/[\w.]+\.yaml:\d+:\d+: ")


def readyz(listen: int) -> dict[str, Any]:
    try:
        _, body = http_get(listen, "/readyz")
    except OSError:
        return {}
    return dict(json.loads(body)) if body.startswith("{") else {}


@contextmanager
def daemon(fleet: Fleet, listen: int, interval: str = "30s") -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "--log-format",
         "text", "daemon", *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}",
         "--interval", interval],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=fleet.repo)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def alive(proc: subprocess.Popen[str]) -> bool:
    if proc.poll() is not None:
        out = proc.stdout.read() if proc.stdout else ""
        raise AssertionError(f"the daemon exited with {proc.returncode}:\n{out[-3000:]}")
    return True


def stop(proc: subprocess.Popen[str], *, traceback_expected: bool = False) -> str:
    """SIGTERM: the daemon must still be running, and exit 0 (no `internal error`)."""
    alive(proc)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    out = proc.stdout.read() if proc.stdout else ""
    assert code == 0, out[-3000:]
    assert "internal error" not in out, out[-3000:]
    assert traceback_expected or "Traceback" not in out, out[-3000:]
    return out


def no_deployment_in_progress(fleet: Fleet, name: str, *, not_of: str | None = None) -> None:
    """No deployment of ``name`` stays pending or in progress (the bug: one left so for good;
    a pass of the last good state, e.g. a heal, may still be finishing), and none was made
    from the commit ``not_of``."""
    def settled() -> tuple[list[dict[str, object]]] | None:
        history = fleet.json("history", name)
        busy = [d for d in history if d["status"] in ("pending", "in_progress")]
        return None if busy else (history,)  # a tuple: an empty history is settled too

    (history,) = wait_for(settled, timeout=20, step=0.3)
    if not_of is not None:
        assert all(d["configCommit"] != not_of for d in history), history


def refused_then_converges(fleet: Fleet, edit: Callable[[Fleet], None], expect: str) -> None:
    """A converged Service, then a commit ``edit`` makes: refused by validate (located, naming
    ``expect``) and by the daemon's load (last good state kept, shown on /readyz); then a good
    commit converges."""
    port, listen = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="one"))
    fleet.commit("good")
    with daemon(fleet, listen) as proc:
        wait_for(lambda: alive(proc) and greeting(port) == "one", timeout=60, step=0.2)
        wait_for(lambda: fleet.json("history", "api")[0]["status"] == "succeeded", timeout=30,
                 step=0.2)

        edit(fleet)
        bad = fleet.commit("bad")
        checked = fleet.cli("validate", str(fleet.repo / "fleet"))
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert LOCATED.search(checked.stderr) and expect in checked.stderr, checked.stderr

        error = wait_for(lambda: alive(proc) and (readyz(listen).get("lastError") or ""),
                         timeout=30, step=0.2)
        assert bad[:12] in error and "invalid" in error and expect in error, error
        assert LOCATED.search(error), error
        assert readyz(listen)["commit"] != bad  # the last good commit is still the one applied
        time.sleep(1.0)  # a pass over the bad commit would have started by now
        alive(proc)
        assert greeting(port) == "one"
        no_deployment_in_progress(fleet, "api", not_of=bad)

        # the fix: back to a clean tree, a new greeting
        subprocess.run(["git", "-C", str(fleet.repo), "clean", "-fdxq"], check=True)
        git(fleet.repo, "rm", "-rq", "--ignore-unmatch", "app/passwd", "app/up", "app2",
            "app/escape")
        fleet.write("api.yaml", service_yaml("api", port, greeting="two"))
        fleet.write("target.yaml", (fleet.repo / "fleet" / "target.yaml").read_text()
                    .replace("root: relative/releases", f"root: {fleet.root}"))
        fleet.commit("fixed")
        wait_for(lambda: alive(proc) and greeting(port) == "two", timeout=60, step=0.2)
        wait_for(lambda: readyz(listen).get("lastError") is None, timeout=10, step=0.2)
        no_deployment_in_progress(fleet, "api")
        stop(proc)


# -- what can never deploy: refused at validate and at load --------------------------------


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_link_out_of_source_path(fleet: Fleet, form: str) -> None:
    """Was: AbsoluteLinkError / LinkOutsideDestinationError from the export, daemon exits."""
    def edit(f: Fleet) -> None:
        if form == "absolute":
            os.symlink("/etc/passwd", f.repo / "app" / "passwd")
        else:
            os.symlink("../fleet/target.yaml", f.repo / "app" / "up")
        f.write("api.yaml", service_yaml("api", _port(f), greeting="linked"))

    expect = "'app/passwd'" if form == "absolute" else "'app/up'"
    refused_then_converges(fleet, edit, expect)


@pytest.mark.parametrize("field", ["command", "build", "env"])
def test_nul_in_argv_or_env(fleet: Fleet, field: str) -> None:
    """Was: ValueError: embedded null byte at exec, daemon exits, deployment in_progress."""
    def edit(f: Fleet) -> None:
        text = service_yaml("api", _port(f), greeting="nul")
        if field == "command":
            text = text.replace(", app.py,", ', "app.py\\0",')
        elif field == "build":
            text = text.replace("  command:", '  build: [sh, -c, "true\\0"]\n  command:')
        else:
            text = text.replace('    GREETING: "nul"', '    GREETING: "a\\0b"')
        f.write("api.yaml", text)

    refused_then_converges(fleet, edit, f"spec.{field}")


def test_source_path_that_is_a_link(fleet: Fleet) -> None:
    """Was: git keeps the link only, an empty release 'succeeds' (and the service is gone)."""
    def edit(f: Fleet) -> None:
        os.symlink("app", f.repo / "app2")
        f.write("api.yaml", service_yaml("api", _port(f), greeting="empty")
                .replace("source: {path: app}", "source: {path: app2}"))

    refused_then_converges(fleet, edit, "'app2' is a symbolic link")


def test_relative_target_root(fleet: Fleet) -> None:
    """Was: accepted; releases land under whatever the daemon's working directory is."""
    def edit(f: Fleet) -> None:
        target = f.repo / "fleet" / "target.yaml"
        target.write_text(target.read_text().replace(f"root: {f.root}",
                                                     "root: relative/releases"))

    refused_then_converges(fleet, edit, "spec.root")


def _port(fleet: Fleet) -> int:
    """The port of the converged Service (kept across the edit: the edit must be the only
    difference)."""
    text = (fleet.repo / "fleet" / "api.yaml").read_text()
    found = re.search(r'"--port", "(\d+)"|--port, "(\d+)"', text)
    assert found, text
    return int(found.group(1) or found.group(2))


# -- what only shows when deploying: the error boundary -----------------------------------


def _app_repo(path: Path, link_to: str) -> None:
    """An application repository whose files hold a link out of it."""
    (path / "app").mkdir(parents=True)
    (path / "app" / "app.py").write_text((fleet_app()).read_text())
    os.symlink(link_to, path / "app" / "secret")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "app")


def fleet_app() -> Path:
    return Path(__file__).resolve().parents[2] / "examples" / "app" / "app.py"


def test_export_refuses_a_link_from_an_application_repository(fleet: Fleet,
                                                              tmp_path: Path) -> None:
    """validate cannot see another repository's files: the export refuses the link (FR201),
    the deployment fails (never left in_progress), nothing outside the tree is written into
    the release, the daemon lives on and a fixed source converges."""
    port, listen = free_port(), free_port()
    app = tmp_path / "apprepo"
    _app_repo(app, "/etc/hostname")
    text = service_yaml("api", port, greeting="app").replace(
        "source: {path: app}", f"source: {{git: {{repo: {app}}}}}").replace(
        "app.py,", "app/app.py,")
    fleet.write("api.yaml", text)
    fleet.commit("app repo with a link out of it")
    assert fleet.cli("validate", str(fleet.repo / "fleet")).returncode == 0
    with daemon(fleet, listen) as proc:
        failed = wait_for(lambda: alive(proc) and readyz(listen).get("failed"), timeout=60,
                          step=0.2)
        assert failed[0]["resource"] == "default/Service/api" and failed[0]["code"] == "FR201"
        assert "'app/secret' is a link" in failed[0]["error"], failed
        assert readyz(listen)["ready"] is True
        history = fleet.json("history", "api")
        assert history and history[0]["status"] == "failed", history
        assert "release export refused" in history[0]["error"], history[0]
        no_deployment_in_progress(fleet, "api")
        # nothing named by the link was written into a release, not even the link
        assert not [p for p in fleet.root.rglob("secret")]

        # the fix in the application repository: the next retry deploys it
        (app / "app" / "secret").unlink()
        git(app, "add", "-A")
        git(app, "commit", "-q", "-m", "no link")
        git(fleet.repo, "commit", "-q", "--allow-empty", "-m", "redeploy")
        wait_for(lambda: alive(proc) and greeting(port) == "app", timeout=90, step=0.3)
        no_deployment_in_progress(fleet, "api")
        stop(proc)


def test_unforeseen_error_fails_one_resource_and_is_retried_with_backoff(fleet: Fleet) -> None:
    """A Service whose source makes the code raise something it does not handle (GitPython's
    UnsafeProtocolError for an ext:: URL, raised while planning): was `internal error`, the
    daemon exited and no other resource was deployed. Now that resource fails with FR001, the
    others converge, /readyz lists it, and the pass is retried with backoff."""
    port, listen = free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", port, greeting="fine"))
    fleet.write("bad.yaml", """apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: bad}
spec:
  target: local
  source: {git: {repo: "ext::x@y:"}}
  command: [python3, app.py]
""")
    fleet.commit("one good, one bad")
    assert fleet.cli("validate", str(fleet.repo / "fleet")).returncode == 0
    with daemon(fleet, listen) as proc:
        wait_for(lambda: alive(proc) and greeting(port) == "fine", timeout=60, step=0.2)
        failed = wait_for(lambda: readyz(listen).get("failed"), timeout=30, step=0.2)
        assert [f["resource"] for f in failed] == ["default/Service/bad"], failed
        assert failed[0]["code"] == "FR001" and "UnsafeProtocolError" in failed[0]["error"]
        status = {r["resource"]: r for r in fleet.json("status")["resources"]}
        bad = status["default/Service/bad"]
        assert bad["lastResult"] == "failed", bad
        assert bad["lastError"].startswith("error[FR001]: unexpected UnsafeProtocolError"), bad
        assert status["default/Service/api"]["sync"] == "Synced", status

        # retried with backoff: a few passes in 12 s, not a hot loop
        def failed_passes() -> float:
            metrics = http_get(listen, "/metrics")[1]
            line = next((m for m in metrics.splitlines()
                         if m.startswith('reconciler_reconcile_total{result="failed"}')), "x 0")
            return float(line.split()[-1])

        before = failed_passes()
        time.sleep(12)
        retries = failed_passes() - before
        print(f"failed passes retried in 12 s: {retries:.0f}")
        assert 1 <= retries <= 6, retries
        alive(proc)

        # removing it converges everything
        (fleet.repo / "fleet" / "bad.yaml").unlink()
        fleet.commit("drop bad")
        wait_for(lambda: alive(proc) and readyz(listen).get("failed") == [], timeout=30,
                 step=0.2)
        # never deployed: forgotten, not left as an orphan that keeps the fleet unconverged
        wait_for(lambda: [r["resource"] for r in fleet.json("status")["resources"]]
                 == ["default/Service/api", "default/Target/local"], timeout=30, step=0.3)
        out = stop(proc, traceback_expected=True)
    # the log names the type, with its traceback, and the code
    assert "unexpected error; this resource failed" in out and "UnsafeProtocolError" in out
