"""examples/fleet/strategies.yaml, unchanged, applied twice by the real CLI: a first rollout,
then a new revision through each strategy (the traffic command hooks really run)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, git

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ENV = "strategies-demo"


@contextlib.contextmanager
def example_lock() -> Iterator[None]:
    """Fixed ports (18185-18189): runs on one machine take turns."""
    path = Path(tempfile.gettempdir()) / "fraisier-example-strategies.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def greeting(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
        return str(json.loads(r.read())["greeting"])


def test_example_strategies_apply_and_roll_forward(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    shutil.copytree(ROOT / "examples" / "app", repo / "examples" / "app")
    (repo / "examples" / "fleet").mkdir(parents=True)
    example = (ROOT / "examples" / "fleet" / "strategies.yaml").read_text()
    (repo / "examples" / "fleet" / "strategies.yaml").write_text(example)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "example")
    fleet = Fleet(repo, tmp_path / "state", tmp_path / "state")
    args = ["--repo", str(repo), "--path", "examples/fleet", "-e", ENV]
    backends = {n: Path(f"/tmp/fraisier-{n}.backends") for n in ("storefront", "search")}
    with example_lock():
        for path in backends.values():
            path.unlink(missing_ok=True)
        try:
            first = fleet.cli("apply", *args, timeout=180)
            assert first.returncode == 0, first.stdout + first.stderr
            assert greeting(18185) == "hello from checkout"
            served = {n: p.read_text().strip() for n, p in backends.items()}
            assert served["storefront"] in ("127.0.0.1:18186=100", "127.0.0.1:18187=100")

            (repo / "examples" / "fleet" / "strategies.yaml").write_text(
                example.replace("GREETING: hello from", "GREETING: v2 from"))
            git(repo, "commit", "-qam", "v2")
            second = fleet.cli("apply", *args, timeout=180)
            assert second.returncode == 0, second.stdout + second.stderr
            assert greeting(18185) == "v2 from checkout"
            for name in ("storefront", "search"):
                now = backends[name].read_text().strip()
                assert now != served[name] and now.endswith("=100"), (name, now)
                port = int(now.split(":")[1].split("=")[0])
                assert greeting(port) == f"v2 from {name}"
            history = fleet.json("history", "search")
            actions = [s["action"] for s in history[0]["steps"]]
            assert actions.count("traffic") == 3 and "analysis" in actions and "pause" in actions
            assert {d["strategy"] for d in history} == {"canary"}
        finally:
            fleet.stop_all()
