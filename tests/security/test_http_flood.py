"""Issue 16, problem 2: an anonymous connection flood must not break the daemon.

A real daemon process with the open-files limit systemd gives a service (soft 1,024), real
loopback sockets that send half a request and hold it, spread over several peer addresses.
Before the HTTP front was guarded, accept() hit EMFILE: /healthz went unreachable, config-repo
reads failed, and the log filled with one error line per attempt.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.security.httpfront import (
    PARTIAL,
    Flood,
    commit,
    loopback_sources,
    metric,
    running,
    systemd_nofile,
    timed_get,
)


@pytest.mark.timeout(150)
def test_half_open_flood_leaves_health_and_repo_reads_working(tmp_path: Path) -> None:
    # soft = hard = 1024: the daemon cannot raise it, so only its reserve protects it
    with running(tmp_path, nofile=(1024, 1024)) as daemon:
        lines_before = len(daemon.log_lines())
        flood = Flood(daemon.port, 1100, loopback_sources(11))
        try:
            flood.fill()
            time.sleep(0.5)
            flood.send_partial()
            time.sleep(1.0)
            sha = commit(daemon.repo, "fleet/notes.txt", "a commit made during the flood\n")
            probes: list[tuple[float, int | None]] = []
            seen_commit = False
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                probes.append(timed_get(daemon, timeout=3))
                flood.refill()  # the flood keeps its connections open, as an attacker would
                if not seen_commit:
                    try:
                        seen_commit = daemon.readyz().get("commit") == sha
                    except OSError:
                        pass
                time.sleep(0.2)
            failed = [(i, probe) for i, probe in enumerate(probes) if probe[1] != 200]
            assert not failed, f"{len(failed)} of {len(probes)} probes failed: {failed}"
            # well inside the probes' 3 s timeout, which an unreachable daemon runs into (a
            # loaded 2-core CI machine saw 1.05 s once beside 3 other test workers)
            assert max(seconds for seconds, _ in probes) < 2.0, probes
            assert seen_commit, "the commit made during the flood was not loaded"
            refused = sum(metric(daemon.port, "reconciler_http_refused_total", f'reason="{r}"')
                          for r in ("evicted", "connections", "fd_reserve"))
            assert refused > 0, "the flood never met a limit: it was not one"
        finally:
            flood.close()
        assert daemon.alive()
        lines = daemon.log_lines()[lines_before:]
        assert not [line for line in lines if "cannot read config repo" in line
                    or "FR200" in line or "out of system resource" in line], lines[-20:]
        # refusals are summarised, not logged one line per connection
        assert len(lines) < 60, f"{len(lines)} log lines during the flood"


@pytest.mark.timeout(60)
def test_daemon_raises_its_soft_open_files_limit(tmp_path: Path) -> None:
    soft, hard = systemd_nofile()
    with running(tmp_path, nofile=(soft, hard)) as daemon:
        assert daemon.soft_nofile() == min(hard, 65536)


@pytest.mark.timeout(60)
def test_headers_sent_slowly_are_cut_off(tmp_path: Path) -> None:
    with running(tmp_path) as daemon:
        slow = socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
        try:
            slow.settimeout(1.0)
            # one byte a second: the request line, then an endless header value
            trickle = iter(PARTIAL + b"a" * 60)
            started = time.monotonic()
            closed_after: float | None = None
            answer = b""
            while time.monotonic() - started < 25:
                try:
                    slow.sendall(bytes([next(trickle)]))
                    answer = slow.recv(1024)
                except TimeoutError:
                    continue  # still open: one more byte of headers next second
                except OSError:
                    answer = b""
                closed_after = time.monotonic() - started
                break
            assert closed_after is not None, "a connection trickling headers was never closed"
            assert closed_after < 15, closed_after
            assert answer == b"", answer  # cut off, not answered
        finally:
            slow.close()
        assert metric(daemon.port, "reconciler_http_refused_total",
                      'reason="header_timeout"') >= 1
