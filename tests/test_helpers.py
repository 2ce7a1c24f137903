"""tests/helpers.py's port check, against real loopback sockets."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import port_free

pytestmark = pytest.mark.timeout(20)


def a_port_in_time_wait() -> int:
    """A loopback port whose only socket is a closed connection in TIME_WAIT (the server side
    closed first, as busybox httpd does after an answer)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port: int = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = server.accept()
        accepted.close()
        time.sleep(0.05)  # the client sees the FIN before it closes too
        client.close()
    return port


def test_time_wait_does_not_hold_a_port_for_a_server_that_reuses_addresses() -> None:
    port = a_port_in_time_wait()
    assert not port_free(port)  # a plain bind is refused ...
    assert port_free(port, reuse_address=True)  # ... the units' httpd binds it all the same
    with socket.socket() as server:  # and what it can bind, it can serve on
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


def test_a_listener_holds_its_port_either_way() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_free(port)
        assert not port_free(port, reuse_address=True)
