"""`make test` runs the suite in pytest-xdist workers with ``--dist loadgroup``; the tests on the
shared test hosts must all run in one worker (tests/conftest.py, ``xdist_group``).

A small pytest session, run as a new process with the installed pytest and pytest-xdist, uses
the grouping hook of tests/conftest.py on stand-in host fixtures: every host test must report the
same worker. With a pair of versions that ignores groups (xdist 3.8 on pytest 9.2,
pytest-dev/pytest-xdist#1386) the host tests are dealt out to both workers and this fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
import os
from pathlib import Path

import pytest

from tests.conftest import pytest_collection_modifyitems  # noqa: F401  (the hook under test)

OUT = Path(__file__).parent / "workers"


@pytest.fixture
def testhosts():
    return ()


@pytest.fixture
def ssh_host(testhosts):
    return None


@pytest.fixture
def ssh_hosts(testhosts):
    return ()


def record(name):
    OUT.mkdir(exist_ok=True)
    (OUT / name).write_text(os.environ["PYTEST_XDIST_WORKER"])
'''

TESTS = '''
import time

import pytest

from conftest import record


@pytest.mark.parametrize("i", range(4))
def test_one_host(ssh_host, i):
    record(f"host-one-{i}")
    time.sleep(0.05)


@pytest.mark.parametrize("i", range(4))
def test_all_hosts(ssh_hosts, i):
    record(f"host-all-{i}")
    time.sleep(0.05)


@pytest.mark.parametrize("i", range(8))
def test_plain(i):
    record(f"plain-{i}")
    time.sleep(0.05)
'''


@pytest.mark.timeout(120)
def test_host_tests_share_one_worker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouped.py").write_text(TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)  # this may itself run in a worker
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path),
         str(tmp_path)],
        capture_output=True, text=True, timeout=100, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {p.name: p.read_text() for p in (tmp_path / "workers").iterdir()}
    assert len(workers) == 16, workers
    hosts = {w for name, w in workers.items() if name.startswith("host-")}
    assert len(hosts) == 1, workers  # one worker ran every host test
    assert set(workers.values()) == {"gw0", "gw1"}, workers  # both workers ran tests
