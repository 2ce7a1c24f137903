"""A PostgreSQL server of one test's own, for the tests that stop and start the server.

Stopping the machine's shared PostgreSQL (127.0.0.1:5432) fails whatever else uses it at that
moment: the other tests of a parallel run, other people's sessions on the machine. So a restart
test gets a real server of its own instead (the same binaries as the shared cluster): its own
data directory, port and socket directory under /tmp, run as the ``postgres`` user when the
tests run as root (initdb refuses root), removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

DATABASE = "fraisier"


def pg_version() -> str:
    """The newest installed cluster version (what .ci/run starts), e.g. "15"."""
    versions = sorted((p.name for p in Path("/usr/lib/postgresql").glob("*") if p.name.isdigit()),
                      key=int)
    return versions[-1] if versions else "15"


def pg_bin() -> Path:
    return Path("/usr/lib/postgresql") / pg_version() / "bin"


def installed() -> tuple[bool, str]:
    missing = [name for name in ("initdb", "pg_ctl") if not (pg_bin() / name).is_file()]
    return not missing, f"PostgreSQL server binaries missing in {pg_bin()}: {missing}"


class PrivatePostgreSQL:
    """initdb'd on creation; ``start``/``stop`` as often as a test likes; ``remove`` at the end."""

    def __init__(self, port: int) -> None:
        self.port = port
        # Short path: the socket directory goes into a 108-byte unix socket path.
        self.base = Path(tempfile.mkdtemp(prefix="fpg-", dir="/tmp"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.base, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale", "C")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The test database (created by ``create_database``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, tool: str, *args: str, timeout: float = 60,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(pg_bin() / tool), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=self.base)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}"
                               f"{self.log_tail()}")
        return done

    def log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> None:
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.base}")
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "-o", options, timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  timeout=90)

    def running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def create_database(self) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        return self.url

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
