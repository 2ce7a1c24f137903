"""A one-shot command that is the whole process leaves what it built to the OS
(``console/process_end.py``): the process ends with the command's status, its buffered output
and log records written, the ``atexit`` handlers registered after it run, and nothing is freed
by the interpreter's teardown (a kept object's ``__del__`` never runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.plan.sample import commit, git

SCRIPT = """
import atexit, logging, sys
from reconciler.console.process_end import leave_to_the_os, record_status

log_file, left = sys.argv[1], sys.argv[2] == "left"
logging.getLogger().addHandler(logging.FileHandler(log_file))

class Noisy:
    def __del__(self):  # runs when the interpreter frees it: at its teardown, unless left
        sys.stderr.write("freed\\n")

kept = Noisy()
sys.stdout.write("x" * 200_000)  # more than a pipe holds, in the buffer still
logging.getLogger().warning("last words")
if left:
    leave_to_the_os(kept)
atexit.register(lambda: sys.stderr.write("late handler\\n"))  # runs before the end
try:
    sys.exit(3)
except SystemExit as exc:
    record_status(exc.code)  # what cli.main does
    raise
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("left", [True, False])
def test_the_process_ends_with_its_status_output_and_logs(tmp_path: Path, left: bool) -> None:
    log_file = tmp_path / "log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log_file),
                           "left" if left else "kept"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert proc.stdout == "x" * 200_000
    assert log_file.read_text() == "last words\n"
    assert "late handler" in proc.stderr
    # left to the OS: not freed at exit (the interpreter's teardown did not run)
    assert ("freed" in proc.stderr) is not left, proc.stderr


@pytest.mark.timeout(120)
def test_a_diff_leaves_its_plan_to_the_os_with_its_exit_status(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    target = ("apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: local}\n"
              "spec: {provider: bare_metal, transport: local}\n")
    commit(repo, {"fleet/all.yaml": target}, "one Target")
    state = tmp_path / "state"
    # What a diff prints and its status, as a process (`python -m reconciler`: cli.main).
    proc = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state),
                           "diff", "--repo", str(repo), "--path", "fleet", "-o", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr  # a create pending
    plan = json.loads(proc.stdout)
    assert plan["summary"] == {"create": 1} and not plan["inSync"]
    assert proc.stderr == ""
