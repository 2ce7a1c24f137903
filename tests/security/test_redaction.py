"""Issue 16, problem 7: a credential inside a database, git or artifact URL never reaches the
terminal or the log, whatever form it takes (userinfo, ``?password=``, ``?sslpassword=``, a bad
percent escape, an unsupported scheme, a libpq key=value DSN, quoted or not).

Every case runs the real CLI against a loopback port where nothing listens (or the real
PostgreSQL/MariaDB of the test machine), at debug log level, and greps every byte it wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.observe.redact import is_credential_name, redact
from tests.helpers import free_port

SECRET = "Sekr1tPw9x"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reconciler(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[
        str]:
    env = {**os.environ, "RECONCILER_DB_RETRY_SECONDS": "0"}
    env.pop("RECONCILER_DB", None)
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
         "--log-level", "debug", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)


PORT = closed_port()
DB_URLS = {
    "pg userinfo": f"postgresql://fraisier:{SECRET}@127.0.0.1:{PORT}/db",
    "pg ?password=": f"postgresql://fraisier@127.0.0.1:{PORT}/db?password={SECRET}",
    "pg ?sslpassword=": (f"postgresql://fraisier@127.0.0.1:{PORT}/db?sslmode=prefer"
                         f"&sslpassword={SECRET}"),
    "pg bad escape": f"postgresql://fraisier:ab%zz{SECRET}@127.0.0.1:{PORT}/db",
    "pg bracket": f"postgresql://fraisier:{SECRET}[x@127.0.0.1:{PORT}/db",
    "pg @ in password": f"postgresql://fraisier:{SECRET}@x@127.0.0.1:{PORT}/db",
    "mysql userinfo": f"mysql://fraisier:{SECRET}@127.0.0.1:{PORT}/db",
    "mysql ?password=": f"mysql://fraisier@127.0.0.1:{PORT}/db?password={SECRET}",
    "mysql bad escape": f"mysql://fraisier:ab%zz{SECRET}@127.0.0.1:{PORT}/db",
    "mysql bracket": f"mysql://fraisier:{SECRET}[x@127.0.0.1:{PORT}/db",
    "unsupported scheme": f"mongodb://fraisier:{SECRET}@127.0.0.1:{PORT}/db",
    "unsupported ?token=": f"redis://127.0.0.1:{PORT}/0?token={SECRET}",
    "sqlite with userinfo": f"sqlite://fraisier:{SECRET}@localhost/x.db",
    "libpq dsn": f"host=127.0.0.1 port={PORT} user=fraisier password={SECRET} dbname=db",
    "libpq dsn quoted": (f"host=127.0.0.1 port={PORT} password='{SECRET} with \\' quote' "
                         "dbname=db"),
    "libpq dsn spaced": f"host=127.0.0.1 password = {SECRET} dbname=db",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["db", "status"], ["db", "check"], ["status"]])
@pytest.mark.parametrize("url", DB_URLS.values(), ids=DB_URLS.keys())
def test_database_password_never_printed(tmp_path: Path, url: str, command: list[str]) -> None:
    proc = reconciler(tmp_path, "--db", url, *command)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "error[FR300]" in proc.stderr, output  # a store error, not an internal error
    assert SECRET not in output, output
    assert "***" in output, output  # the URL is shown, redacted (not dropped)


@pytest.mark.timeout(60)
def test_db_copy_redacts_both_urls(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path}/src.db"
    proc = reconciler(tmp_path, "db", "copy", "--from", src,
                      "--to", f"host=127.0.0.1 password={SECRET}")
    assert proc.returncode == 2
    assert SECRET not in proc.stdout + proc.stderr, proc.stderr


@pytest.mark.timeout(60)
def test_real_server_refusal_is_redacted(tmp_path: Path) -> None:
    """The real PostgreSQL of the test machine refuses an unknown database: its message goes
    through as is, the password given in the query string does not."""
    proc = reconciler(tmp_path, "--db",
                      f"postgresql://postgres@127.0.0.1:5432/nosuchdb?password={SECRET}",
                      "db", "status")
    output = proc.stdout + proc.stderr
    if "Connection refused" in output:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    assert proc.returncode == 2, output
    assert "nosuchdb" in output and SECRET not in output, output


@pytest.mark.timeout(60)
def test_git_remote_token_not_in_errors(tmp_path: Path) -> None:
    for url in (f"https://x-access-token:{SECRET}@127.0.0.1:{PORT}/org/config.git",
                f"https://{SECRET}@127.0.0.1:{PORT}/org/config.git"):
        proc = reconciler(tmp_path, "diff", "--repo", url)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert "error[FR200]" in proc.stderr and SECRET not in output, output


@pytest.mark.timeout(60)
def test_daemon_log_does_not_carry_the_repo_token(tmp_path: Path) -> None:
    """The daemon logs the repository it follows at start: with the token of its URL hidden."""
    url = f"https://x-access-token:{SECRET}@127.0.0.1:{PORT}/org/config.git"
    env = {**os.environ, "RECONCILER_DB_RETRY_SECONDS": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "state"),
         "--log-level", "debug", "daemon", "--repo", url, "--listen",
         f"127.0.0.1:{free_port()}", "--interval", "1h"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        output = b""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 30
        while b"daemon listening" not in output and time.monotonic() < deadline:
            output += proc.stdout.read() or b""
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
    output += rest or b""
    assert b"daemon listening" in output, output
    assert SECRET.encode() not in output, output
    assert b"127.0.0.1" in output


@pytest.mark.timeout(60)
def test_artifact_url_credentials_not_in_errors(tmp_path: Path) -> None:
    """An artifact source whose download fails names the URL without its credentials."""
    import asyncio

    from reconciler.errors import SourceError
    from reconciler.source.artifact import fetch_artifact

    for url in (f"https://user:{SECRET}@127.0.0.1:{PORT}/a.tgz",
                f"ftp://user:{SECRET}@127.0.0.1:{PORT}/a.tgz"):
        with pytest.raises(SourceError) as caught:
            asyncio.run(fetch_artifact(url, "0" * 64, tmp_path / "dest", timeout=5))
        assert SECRET not in str(caught.value) and "127.0.0.1" in str(caught.value)


@pytest.mark.parametrize("text", [
    f"postgresql://u:{SECRET}@h/db", f"postgresql://u@h/db?password={SECRET}",
    f"postgresql://u@h/db?sslpassword={SECRET}&sslmode=require",
    f"host=h password={SECRET} dbname=x", f"host=h password='{SECRET} x' dbname=x",
    f"https://{SECRET}@github.com/o/r.git", f"https://oauth2:{SECRET}@gitlab.example/o/r",
    f"see 'postgresql://u:{SECRET}@h/db' above", f"http://prom:9090/?api_key={SECRET}",
])
def test_redact_forms(text: str) -> None:
    assert SECRET not in redact(text) and "***" in redact(text)


def test_redact_keeps_what_is_not_secret() -> None:
    assert redact("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("mysql://root@127.0.0.1/test") == "mysql://root@127.0.0.1/test"
    assert redact("sqlite:////var/lib/x.db") == "sqlite:////var/lib/x.db"
    assert redact("ssh://git@host:22/r.git") == "ssh://git@host:22/r.git"
    assert redact("git@github.com:o/r.git") == "git@github.com:o/r.git"
    assert redact("host=h sslmode=require sslkey=/k") == "host=h sslmode=require sslkey=/k"
    # a driver message echoing only the raw token of a bad escape
    assert redact('invalid percent-encoded token: "ab%zzpw1"',
                  urls=("postgresql://u:ab%zzpw1@h/db",)) == (
        'invalid percent-encoded token: "***"')


@pytest.mark.timeout(30)
def test_health_probe_messages_hide_url_credentials() -> None:
    """A health URL written with user:password@ (or ?token=) is recorded in deployment errors:
    shown redacted, whether nothing answers or the server answers with a wrong status."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from reconciler.health.probes import probe
    from reconciler.providers import Instance

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's naming
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = server.server_address[1]
        for url in (f"http://probe:{SECRET}@127.0.0.1:{PORT}/healthz",
                    f"http://probe:{SECRET}@127.0.0.1:{up}/healthz",
                    f"http://127.0.0.1:{up}/healthz?token={SECRET}"):
            result = asyncio.run(probe({"http": {"url": url}, "timeout": "2s"}, Instance("i")))
            assert not result.ok
            assert SECRET not in result.message and "127.0.0.1" in result.message, result
    finally:
        server.shutdown()


@pytest.mark.parametrize(("name", "secret"), [
    ("DB_PASSWORD", True), ("apiToken", True), ("client-secret", True), ("STRIPE_KEY", True),
    ("private_key", True), ("credentials", True), ("GREETING", False), ("monkey", False),
    ("keepReleases", False), ("hostKeys", False), ("SERVICE_NAME", False)])
def test_credential_names(name: str, secret: bool) -> None:
    """What `diff -o markdown` hides by a field's name (a literal under it is a value)."""
    assert is_credential_name(name) is secret
