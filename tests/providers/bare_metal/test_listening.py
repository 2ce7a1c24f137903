"""What a service's processes listen on (``Capabilities.reports_listening``), read from the real
/proc: on this machine for the supervisor's process groups (``procfs.group_listening``), and on
a systemd test host for a unit's cgroup (``listening.unit_listening``, its script run by the
host's shell over SSH)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.providers.bare_metal import procfs
from reconciler.providers.bare_metal.listening import listening_batcher, unit_listening
from reconciler.providers.contract import Listening
from reconciler.transport.ssh import SSHTransport
from tests.e2e.conftest import free_port
from tests.infra.testinfra import InfraHost
from tests.transport.test_ssh import config_for, root

__all__ = ["root"]

pytestmark = pytest.mark.timeout(60)


# -- this machine: a supervised process group ------------------------------------------------

SERVER = """
import os, socket, sys, time
tcp = socket.socket()
tcp.bind(("127.0.0.1", int(sys.argv[1])))
tcp.listen()
unix = socket.socket(socket.AF_UNIX)
unix.bind(sys.argv[2])
unix.listen()
if os.fork() == 0:  # a worker holding the sockets too, as pre-forking servers do
    time.sleep(600)
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def group(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(tmp_path / "s")],
                             start_new_session=True, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        yield child, port
    finally:
        import os
        import signal

        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_a_process_group_listens_on_what_any_member_holds(
        group: tuple[subprocess.Popen[str], int]) -> None:
    child, port = group
    assert procfs.group_listening(child.pid) == Listening(frozenset({port}), 1)


def test_a_group_that_holds_no_socket_listens_on_nothing() -> None:
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        with socket.create_server(("127.0.0.1", 0)):  # ours, not the group's
            listening = procfs.group_listening(child.pid)
        assert listening is not None and listening.none
    finally:
        child.kill()
        child.wait()
    assert procfs.group_listening(child.pid) is None  # gone


# -- a systemd unit on a test host -----------------------------------------------------------

def start_unit(host: InfraHost, command: str, *properties: str) -> tuple[str, int]:
    """A transient unit running ``sh -c command`` (``fraisier-*``: the lease's reset removes
    it); (its name, its main pid)."""
    unit = f"fraisier-listening-{uuid.uuid4().hex[:8]}.service"
    host.run(["systemd-run", f"--unit={unit}", *(f"--property={p}" for p in properties),
              "sh", "-c", command])
    for _ in range(100):
        pid = host.sh(f"systemctl show -p MainPID --value {unit}").strip()
        if pid not in ("", "0"):
            return unit, int(pid)
        time.sleep(0.05)
    raise AssertionError(f"{unit} did not start")


async def listening_when(transport: SSHTransport, pid: int, unit: str,
                         ports: frozenset[int]) -> Listening | None:
    """The unit's listening sockets once its process has bound ``ports`` (it starts now)."""
    seen = None
    for _ in range(100):
        seen = await unit_listening(transport, pid, unit)
        if seen is not None and seen.tcp_ports >= ports:
            return seen
        await asyncio.sleep(0.05)
    return seen


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_unit_listens_on_what_its_processes_hold(ssh_host: InfraHost,
                                                         root: SSHTransport) -> None:
    port = free_port()
    unit, pid = start_unit(ssh_host, f"exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp")
    assert await listening_when(root, pid, unit, frozenset({port})) \
        == Listening(frozenset({port}))
    assert await unit_listening(root, pid, "fraisier-another.service") is None  # not its pid

    # a child holding a unix listener, the main process a shell holding nothing
    script = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
              "s.bind('/run/fraisier-listening.sock'); s.listen(); time.sleep(600)")
    unit, pid = start_unit(ssh_host, f"rm -f /run/fraisier-listening.sock; "
                                     f"python3 -c \"{script}\"; true")
    seen = await listening_when(root, pid, unit, frozenset())
    for _ in range(100):
        if seen is not None and seen.unix_sockets:
            break
        await asyncio.sleep(0.05)
        seen = await unit_listening(root, pid, unit)
    assert seen == Listening(frozenset(), 1)

    unit, pid = start_unit(ssh_host, "exec sleep 600")
    seen = await unit_listening(root, pid, unit)
    assert seen is not None and seen.none

    # asked at once, answered together in one command, each its own
    first, _ = start_unit(ssh_host, "exec sleep 600")
    batcher = listening_batcher(root)
    before = batcher.batches.batches
    answers = await asyncio.gather(*(unit_listening(root, p, u) for p, u in
                                     [(pid, unit), (pid, first), (1, unit)] * 10))
    assert answers[:3] == [Listening(frozenset()), None, None]
    assert answers == answers[:3] * 10
    assert batcher.batches.batches - before == 1


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_a_sandboxed_unit_is_read_as_its_own_user(ssh_host: InfraHost) -> None:
    # root in a container lacks CAP_SYS_PTRACE, so another user's descriptors are read as
    # that user; the same through sudo
    port = free_port()
    unit, pid = start_unit(ssh_host, f"exec busybox httpd -f -p 127.0.0.1:{port} -h /tmp",
                           "User=nobody", "NoNewPrivileges=yes")
    for user, sudo in (("root", False), ("deploy", True)):
        transport = SSHTransport(config_for(ssh_host, user, sudo))
        try:
            assert await listening_when(transport, pid, unit, frozenset({port})) \
                == Listening(frozenset({port})), user
        finally:
            await transport.close()
