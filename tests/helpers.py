"""Shared test helpers (no fixtures here; see each folder's conftest.py)."""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import socket
import threading
from collections.abc import Iterator

import pytest

REQUIRE_INTEGRATION = os.environ.get("RECONCILER_REQUIRE_INTEGRATION") == "1"


def need(available: bool, reason: str) -> None:
    """Skip when an external service is missing — or fail, when CI requires integration tests."""
    if available:
        return
    if REQUIRE_INTEGRATION:
        pytest.fail(f"required service missing (RECONCILER_REQUIRE_INTEGRATION=1): {reason}")
    pytest.skip(reason)


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports the tests' servers listen on: below the kernel's ephemeral range, where no outgoing
# connection takes one as its source port between the test choosing it and its server binding
# it (a port from ``bind(("127.0.0.1", 0))`` is in that range: a CI run's canary app failed
# with EADDRINUSE while the other workers' tests connected everywhere).
SERVER_PORTS = range(20000, min(32768, _ephemeral_start()))


def port_free(port: int, *, reuse_address: bool = False) -> bool:
    """Nothing holds 127.0.0.1:``port`` now (a bind succeeds). The benches use it too.

    ``reuse_address``: bind as a server that sets SO_REUSEADDR does (busybox httpd, asyncio's
    servers): connections of an earlier run left in TIME_WAIT on the port do not count, a
    listener still does."""
    with socket.socket() as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _worker_ports() -> range:
    """This pytest-xdist worker's share of ``SERVER_PORTS``: the workers' shares do not overlap,
    so two workers never choose the same port in the time between choosing and binding it (a CI
    run's daemon died with "address already in use" that way). The whole range outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 2:
        return SERVER_PORTS
    share = len(SERVER_PORTS) // count
    start = SERVER_PORTS.start + int(worker[2:]) % count * share
    return range(start, start + share)


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now on 127.0.0.1, from this worker's share of ``SERVER_PORTS``,
    and not one handed out before by this process: a test that chooses two ports before it
    starts either server must get two different ones."""
    ports = _worker_ports()
    if len(_handed_out) > len(ports) // 2:
        _handed_out.clear()  # the earliest tests' servers are long gone
    for _ in range(500):
        port = random.choice(ports)
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {ports}")


@contextlib.contextmanager
def stranger_server(body: bytes = b'{"greeting": "stranger"}') -> Iterator[int]:
    """An HTTP server of this test's process (no fleet's: an older process still holding a
    port) answering every GET with 200 and ``body`` on 127.0.0.1; its port."""
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
