"""Shared test helpers (no fixtures here; see each folder's conftest.py)."""

from __future__ import annotations

import os
import random
import socket

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


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` now (a bind succeeds). The benches use it too."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on now on 127.0.0.1, from ``SERVER_PORTS`` (at random, so the
    parallel test workers rarely pick the same one)."""
    for _ in range(500):
        port = random.choice(SERVER_PORTS)
        if port_free(port):
            return port
    raise RuntimeError(f"no free port in {SERVER_PORTS}")
