"""The shell blocks of docs/getting-started.md marked `<!-- doctest -->` run as written.

Each block runs in `bash -euo pipefail` in a fresh clone of this repository (so `--repo .` sees
the committed examples and nothing is written into the working tree), with `.venv/bin` first on
PATH (what `. .venv/bin/activate` does) and a throw-away RECONCILER_STATE_DIR. The PostgreSQL and
MySQL blocks get their database dropped before and after.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import need

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "getting-started.md"
BLOCK = re.compile(r"<!-- doctest -->\n```sh\n(.*?)```", re.DOTALL)
DB_NAME = "fraisier_demo"


def blocks() -> list[str]:
    return BLOCK.findall(GUIDE.read_text())


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def drop_databases(script: str) -> None:
    if "createdb" in script:
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB_NAME],
                       capture_output=True, timeout=30)
    if "mysql " in script:
        subprocess.run(["mysql", "-h", "127.0.0.1", "-u", "root", "-e",
                        f"DROP DATABASE IF EXISTS {DB_NAME}"], capture_output=True, timeout=30)


def test_the_guide_has_tested_blocks_for_every_database() -> None:
    found = blocks()
    assert len(found) >= 4
    assert any("createdb" in b for b in found) and any("mysql://" in b for b in found)


def _server(script: str) -> str | None:
    if "postgresql://" in script:
        return "postgresql"
    if "mysql://" in script:
        return "mysql"
    return None


@pytest.fixture(scope="session")
def postgresql_server() -> None:
    """PostgreSQL answers on 127.0.0.1:5432 (the block creates its own database)."""
    need(port_open(5432), "PostgreSQL not answering on 127.0.0.1:5432")


@pytest.fixture(scope="session")
def mysql_server() -> None:
    """MySQL/MariaDB answers on 127.0.0.1:3306 (the block creates its own database)."""
    need(port_open(3306), "MySQL/MariaDB not answering on 127.0.0.1:3306")


def _ids(script: str) -> str:
    return script.splitlines()[0][:40]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", [b for b in blocks() if _server(b) is None], ids=_ids)
def test_getting_started_block(script: str, tmp_path: Path) -> None:
    run_block(script, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", [b for b in blocks() if _server(b) == "postgresql"], ids=_ids)
def test_getting_started_postgresql_block(script: str, tmp_path: Path,
                                          postgresql_server: None) -> None:
    run_block(script, tmp_path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("script", [b for b in blocks() if _server(b) == "mysql"], ids=_ids)
def test_getting_started_mysql_block(script: str, tmp_path: Path, mysql_server: None) -> None:
    run_block(script, tmp_path)


def run_block(script: str, tmp_path: Path) -> None:
    clone = tmp_path / "fraisier"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)],
                   check=True, timeout=60)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
               RECONCILER_STATE_DIR=str(tmp_path / "state"), VIRTUAL_ENV=str(venv_bin.parent))
    drop_databases(script)
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=100)
    finally:
        drop_databases(script)
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n" \
                                   f"{result.stderr[-3000:]}"
