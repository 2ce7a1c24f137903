"""`reconciler diff | head -1`: the reader goes away, the command ends quietly (exit 141, as
a program killed by SIGPIPE; no "internal error: BrokenPipeError", no traceback). And `diff`
in a work tree with uncommitted edits says so, beside its plan. In a real terminal (tmux) at
80 and 120 columns, as a person types it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.console.pipes import EXIT_CLOSED_PIPE
from tests.console.tmux import run_in_terminal
from tests.plan.sample import commit, git

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local}
spec: {provider: bare_metal, transport: local}
"""


def service(n: int) -> str:
    return f"""---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: svc-{n:04d}}}
spec:
  target: local
  command: [python3, -m, http.server, "{20000 + n}"]
  env: {{A: "{'a' * 100}", B: "{'b' * 100}"}}
"""


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fleet whose plan is far longer than a pipe holds (64 KiB): the writer does meet the
    closed pipe."""
    repo = tmp_path_factory.mktemp("pipes") / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"fleet/all.yaml": TARGET + "".join(service(n) for n in range(400))}, "big")
    return repo


@pytest.mark.timeout(120)
@pytest.mark.parametrize("width", [80, 120])
def test_diff_into_head_ends_quietly(big_repo: Path, tmp_path: Path, width: int) -> None:
    command = (f"{sys.executable} -m reconciler --state-dir {tmp_path} diff --path fleet "
               "| head -1; echo rc=${PIPESTATUS[0]}")
    screen, _, _ = run_in_terminal(command, width=width, cwd=big_repo)
    assert screen.splitlines() == ["Plan at commit " + git(big_repo, "rev-parse", "HEAD")[:12]
                                   + ": 401 create", f"rc={EXIT_CLOSED_PIPE}"], screen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("output", ["text", "json", "markdown"])
def test_a_closed_pipe_is_not_an_internal_error(big_repo: Path, tmp_path: Path,
                                                output: str) -> None:
    extra = ["--base", "HEAD"] if output == "markdown" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path), "diff", "--path",
         "fleet", "-o", output, *extra], cwd=big_repo, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    time.sleep(0.3)  # the writer is blocked on the full pipe, mid-write
    proc.stdout.close()  # the reader goes away after a few bytes
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    # markdown of HEAD..HEAD is short: it may be written whole before the pipe closes
    assert code in ((EXIT_CLOSED_PIPE, 0) if output == "markdown" else (EXIT_CLOSED_PIPE,))
    assert stderr == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("width", [80, 120])
def test_diff_warns_about_uncommitted_edits(tmp_path: Path, width: int) -> None:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, {"fleet/all.yaml": TARGET}, "target")
    state = tmp_path / "state"
    command = f"{sys.executable} -m reconciler --state-dir {state} diff --path fleet"
    screen, code, _ = run_in_terminal(command, width=width, cwd=repo)
    assert code == 1 and "warning" not in screen, screen  # a Target to create, no edits
    subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state), "apply",
                    "--path", "fleet"], cwd=repo, check=True, capture_output=True, timeout=60)
    (repo / "fleet" / "all.yaml").write_text(TARGET + service(1))
    (repo / "fleet" / "new.yaml").write_text(TARGET.replace("local", "other"))
    screen, code, _ = run_in_terminal(command, width=width, cwd=repo)
    assert code == 0, screen  # the committed state is applied ...
    flat = " ".join(screen.split())
    head = git(repo, "rev-parse", "HEAD")[:12]
    assert (f"warning: the work tree differs from commit {head} in 2 file(s) "
            "(fleet/all.yaml, fleet/new.yaml): only committed changes are planned; commit "
            "them to include them") in flat, screen  # ... but not what was edited
    assert "In sync." in flat
