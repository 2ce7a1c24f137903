"""Run a command in a real terminal of a given width (a detached tmux session) and read the
screen back (capture-pane): what a person at an 80-column terminal sees."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from tests.helpers import need


def tmux_available() -> None:
    need(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")


def run_in_terminal(command: str, *, width: int, cwd: Path, env: dict[str, str] | None = None,
                    height: int = 50, timeout: float = 60.0,
                    during: float | None = None) -> tuple[str, int, list[str]]:
    """(the screen after ``command`` ended, its exit status, screens captured every
    ``during`` seconds while it ran)."""
    tmux_available()
    name = f"fraisier-{uuid.uuid4().hex[:8]}"
    socket = f"fraisier-test-{name}"
    done = cwd / f".{name}.rc"
    full_env = {**os.environ, **(env or {}), "TERM": "xterm-256color"}
    full_env.pop("TMUX", None)
    # the pane's size is the terminal's; an inherited COLUMNS/LINES would override it (a
    # pytest-xdist worker has COLUMNS=80 LINES=24: a 120-column pane printed 80 columns)
    full_env.pop("COLUMNS", None)
    full_env.pop("LINES", None)
    # the command is the pane's own program (no prompt, no echo of what was typed); the
    # pane stays open after it, for capture-pane
    script = f"{command}; echo $? > {shlex.quote(str(done))}; sleep 600"
    base = ["tmux", "-L", socket, "-f", "/dev/null"]
    exported = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
    subprocess.run([*base, "new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                    "-c", str(cwd), *exported, "bash", "--norc", "--noprofile", "-c", script],
                   check=True, env=full_env, timeout=10)
    frames: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while not done.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command!r} did not end in {timeout}s:\n"
                                   + capture(base, name))
            if during is not None:
                frames.append(capture(base, name))
                time.sleep(during)
            else:
                time.sleep(0.1)
        time.sleep(0.2)
        screen = capture(base, name)
        return screen, int(done.read_text().strip() or "-1"), frames
    finally:
        subprocess.run([*base, "kill-server"], timeout=10, check=False)
        done.unlink(missing_ok=True)


def capture(base: list[str], name: str) -> str:
    out = subprocess.run([*base, "capture-pane", "-p", "-t", name, "-S", "-5000"],
                         check=True, capture_output=True, text=True, timeout=10).stdout
    return "\n".join(line.rstrip() for line in out.splitlines()).strip("\n")
