"""The e2e tests' `greeting` reads a service that a rollout is replacing: every way the old
process can fail a request (refused, cut off after its headers) reads as no answer yet."""
from __future__ import annotations

import socket
import threading

import pytest

from tests.e2e.conftest import greeting

pytestmark = pytest.mark.timeout(30)


def serve_once(answer: bytes) -> tuple[int, threading.Thread]:
    """A server on loopback that answers one request with `answer`, then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def test_a_whole_answer_is_read() -> None:
    body = b'{"greeting": "one"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    port, thread = serve_once(head + body)
    assert greeting(port) == "one"
    thread.join(timeout=5)


def test_an_answer_cut_off_after_its_headers_is_no_answer() -> None:
    # The old process is stopped between writing its headers and its body.
    port, thread = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 55\r\n\r\n")
    assert greeting(port) is None
    thread.join(timeout=5)


def test_a_refused_connection_is_no_answer() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert greeting(port) is None
