"""Fixtures for the deployment tests: wheels of this project and its dependencies.

The dependency wheelhouse is built once per dependency set (keyed by pyproject.toml) and cached in
/var/tmp, outside the clone; the project's own wheel is rebuilt every session from a clean copy
of the working tree's files (tracked and new, not ignored: no stale ``build/`` leaks in), so what
is tested is what is checked out. FRAISIER_DEPLOY_SOURCE names another checkout to build from.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("FRAISIER_DEPLOY_SOURCE") or Path(__file__).resolve().parents[2])
CACHE = Path("/var/tmp/fraisier-deploy-cache")


@dataclass(frozen=True)
class Wheels:
    deps: Path  # every dependency as a wheel (pip install --no-index --find-links)
    project: Path  # fraisier-<version>-py3-none-any.whl built from the working tree
    key: str  # identifies the dependency set


def _pip_wheel(args: list[str], dest: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                    "-w", str(dest), *args], check=True, capture_output=True, timeout=600)


def copy_source(dest: Path) -> Path:
    """The working tree's files (tracked and untracked, minus .gitignore'd ones) under dest."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree, or a submodule
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return dest


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    src = copy_source(tmp_path_factory.mktemp("src"))
    key = hashlib.sha256((src / "pyproject.toml").read_bytes() + b"+build").hexdigest()[:16]
    deps = CACHE / f"wheels-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".wheels-{key}.lock").open("w") as lock:
        # parallel workers and sessions build one wheelhouse, not into each other's temp dir
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not deps.is_dir():
            building = CACHE / f".wheels-{key}.tmp"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            _pip_wheel([str(src)], building)
            # What building the project needs (offline `pip install /src` in the Dockerfile).
            _pip_wheel(["setuptools>=77", "wheel"], building)
            for own in building.glob("fraisier-*.whl"):
                own.unlink()
            building.rename(deps)
    out = tmp_path_factory.mktemp("wheel")
    _pip_wheel(["--no-deps", str(src)], out)
    (project,) = out.glob("fraisier-*.whl")
    return Wheels(deps=deps, project=project, key=key)
