"""sd_notify client against real unix datagram sockets (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.daemon import notify


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(address))
        yield sock


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"fraisier-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield sock


@pytest.mark.timeout(10)
def test_ready_status_watchdog_on_a_path_socket(path_socket: socket.socket) -> None:
    assert notify.ready()
    assert _recv(path_socket) == {"READY": "1"}
    assert notify.status("pass 3: 12 resources in sync")
    assert _recv(path_socket) == {"STATUS": "pass 3: 12 resources in sync"}
    assert notify.watchdog()
    assert _recv(path_socket) == {"WATCHDOG": "1"}
    assert notify.ready("loaded abc123")
    assert _recv(path_socket) == {"READY": "1", "STATUS": "loaded abc123"}
    assert notify.reloading()
    assert _recv(path_socket) == {"RELOADING": "1"}
    assert notify.stopping()
    assert _recv(path_socket) == {"STOPPING": "1"}


@pytest.mark.timeout(10)
def test_abstract_namespace_socket(abstract_socket: socket.socket) -> None:
    assert notify.notify(status="hello", errno=0)
    assert _recv(abstract_socket) == {"STATUS": "hello", "ERRNO": "0"}


@pytest.mark.timeout(10)
def test_newline_in_a_value_cannot_forge_a_field(path_socket: socket.socket) -> None:
    assert notify.status("bad\nREADY=1")
    received = _recv(path_socket)
    assert received == {"STATUS": "bad READY=1"}


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.watchdog() is False


@pytest.mark.timeout(10)
def test_socket_nobody_listens_on_is_not_fatal(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + uuid.uuid4().hex)
    assert notify.status("x") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert notify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert notify.watchdog_interval() is None


@pytest.mark.timeout(30)
def test_watchdog_meant_for_the_parent_is_not_answered_by_a_child() -> None:
    env = {**os.environ, "WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}
    child = subprocess.run(
        [sys.executable, "-c",
         "from reconciler.daemon.notify import watchdog_interval; print(watchdog_interval())"],
        env=env, capture_output=True, text=True, check=True, timeout=20)
    assert child.stdout.strip() == "None"
