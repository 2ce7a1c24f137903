"""A provider packaged outside the reconciler (tests/providers/plugin_example/, its own
pyproject.toml and entry point) validates and deploys with zero edits outside its folder.

The package is pip-installed by a session fixture, as a user installs a provider plugin, into a
directory of its own that only these tests' processes have on their path (installed into the
venv, it changed what every later test and bench found there); the reconciler then runs as a
user runs it, in a new process: before the provider contract, `validate` rejected it
(`spec.provider: 'example' is not one of ...`).
Real processes, a real git repository, no service.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, git, http_get, service_yaml, wait_for

pytestmark = pytest.mark.timeout(180)

PLUGIN = Path(__file__).resolve().parent / "plugin_example"


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, pip-installed (no dependencies) into a directory of its own: the
    value of PYTHONPATH that lets a process find it."""
    target = tmp_path_factory.mktemp("example-plugin")
    source = tmp_path_factory.mktemp("example-plugin-source") / "plugin"
    shutil.copytree(PLUGIN, source)  # pip builds in the source tree (build/, egg-info)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
            str(source)]
    if all(importlib.util.find_spec(m) is not None for m in ("setuptools", "wheel")):
        argv.insert(4, "--no-build-isolation")  # offline: the venv's setuptools builds it
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


@pytest.fixture
def plugin_fleet(tmp_path: Path, example_plugin: Path) -> Iterator[Fleet]:
    repo = tmp_path / "config"
    (repo / "app").mkdir(parents=True)
    app = Path(__file__).resolve().parents[2] / "examples" / "app" / "app.py"
    (repo / "app" / "app.py").write_text(app.read_text())
    git(repo, "init", "-q", "-b", "main")
    root = tmp_path / "root"
    fleet = Fleet(repo, tmp_path / "state", root,
                  env={**os.environ, "PYTHONPATH": str(example_plugin)})
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: example
  root: {root}
""")
    try:
        yield fleet
    finally:
        for state in root.rglob("state.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)


def with_block(yaml_text: str, block: str) -> str:
    return yaml_text + block


def test_validate_uses_the_plugin_fragments(plugin_fleet: Fleet) -> None:
    port = free_port()
    plugin_fleet.write("api.yaml", with_block(service_yaml("api", port),
                                              "  example: {stopGrace: 2s}\n"))
    ok = plugin_fleet.cli("validate", str(plugin_fleet.repo / "fleet"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the workload fragment is enforced like a built-in's: a typo is a located error, exit 2
    plugin_fleet.write("api.yaml", with_block(service_yaml("api", port),
                                              "  example: {stopGrase: 2s}\n"))
    bad = plugin_fleet.cli("validate", str(plugin_fleet.repo / "fleet"))
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "api.yaml:" in bad.stderr + bad.stdout and "stopGrase" in bad.stderr + bad.stdout


def test_apply_update_and_prune_through_the_plugin(plugin_fleet: Fleet) -> None:
    port = free_port()
    plugin_fleet.write("api.yaml", with_block(service_yaml("api", port, greeting="one"),
                                              "  example: {stopGrace: 2s}\n"))
    plugin_fleet.commit("api one")
    first = plugin_fleet.cli("apply", *plugin_fleet.repo_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "one"
    [api] = [r for r in plugin_fleet.json("status")["resources"] if r["name"] == "api"]
    assert api["lastResult"] == "succeeded" and api["health"] == "Healthy", api

    plugin_fleet.write("api.yaml", with_block(service_yaml("api", port, greeting="two"),
                                              "  example: {stopGrace: 2s}\n"))
    plugin_fleet.commit("api two")
    second = plugin_fleet.cli("apply", *plugin_fleet.repo_args())
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(http_get(port)[1])["greeting"] == "two"

    (plugin_fleet.repo / "fleet" / "api.yaml").unlink()
    plugin_fleet.commit("api gone")
    pruned = plugin_fleet.cli("apply", "--prune", *plugin_fleet.repo_args())
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr

    def closed() -> bool:
        try:
            http_get(port, timeout=0.5)
        except OSError:
            return True
        return False

    assert wait_for(closed, timeout=10)
    assert not list(plugin_fleet.root.rglob("state.json"))
