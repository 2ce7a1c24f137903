"""SSHTransport against the real systemd+sshd test hosts of tests/infra/up.sh."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from reconciler.errors import ProviderError
from reconciler.transport import CommandTimeout
from reconciler.transport.ssh import (
    SSHAuthError,
    SSHConfigError,
    SSHConnectError,
    SSHError,
    SSHHostConfig,
    SSHHostKeyError,
    SSHPool,
    SSHTransport,
    remote_command,
)
from tests.infra.testinfra import Infra, InfraHost

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NASTY = [
    "two words",
    'it\'s "quoted"',
    "$(touch /tmp/fraisier-pwned)",
    "`touch /tmp/fraisier-pwned`",
    "; touch /tmp/fraisier-pwned; #",
    "line one\nline two\n",
    "$HOME ${PATH} * ? [a] ~ \\ \t tab",
    "--help",
    "-e",
    "",
    "ünïcødé ✓",
]

# (user, sudo): root logs in directly; deploy escalates with `sudo -n`.
ACCOUNTS = [("root", False), ("deploy", True)]


def config_for(host: InfraHost, user: str = "root", sudo: bool = False, **kw: Any) -> SSHHostConfig:
    base = SSHHostConfig(
        host_id=host.name,
        address=host.address,
        port=host.port,
        user=user,
        identity_file=host.identity_file,
        known_hosts=host.known_hosts,
        sudo=sudo,
    )
    return dataclasses.replace(base, **kw)


@pytest.fixture(params=ACCOUNTS, ids=["root", "deploy+sudo"])
async def transport(
    request: pytest.FixtureRequest, ssh_host: InfraHost
) -> AsyncIterator[SSHTransport]:
    user, sudo = request.param
    t = SSHTransport(config_for(ssh_host, user, sudo))
    try:
        yield t
    finally:
        await t.close()


@pytest.fixture
async def root(ssh_host: InfraHost) -> AsyncIterator[SSHTransport]:
    t = SSHTransport(config_for(ssh_host))
    try:
        yield t
    finally:
        await t.close()


def other_public_key() -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.export_public_key().decode().strip()


# --- commands ---------------------------------------------------------------------------------


async def test_exit_code_stdout_stderr(transport: SSHTransport) -> None:
    result = await transport.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.ok
    ok = await transport.run(["id", "-u"], timeout=10)
    assert ok.ok and ok.stdout == b"0\n"  # root, directly or through sudo


async def test_deploy_without_sudo_is_not_root(ssh_host: InfraHost) -> None:
    t = SSHTransport(config_for(ssh_host, "deploy", sudo=False))
    try:
        result = await t.run(["id", "-un"], timeout=10, check=True)
        assert result.stdout == b"deploy\n"
    finally:
        await t.close()


async def test_check_raises_with_host_and_output(transport: SSHTransport) -> None:
    with pytest.raises(ProviderError) as info:
        await transport.run(["sh", "-c", "echo broken >&2; exit 7"], timeout=10, check=True)
    assert transport.host_id in str(info.value)
    assert "exited 7" in str(info.value) and "broken" in str(info.value)


async def test_env_and_argv_arrive_verbatim_and_are_not_executed(
    transport: SSHTransport, ssh_host: InfraHost
) -> None:
    ssh_host.run(["rm", "-f", "/tmp/fraisier-pwned"])
    env = {f"V{i}": value for i, value in enumerate(NASTY)}
    env["PATH"] = "/usr/bin:/bin"
    script = "import json, os, sys; print(json.dumps([dict(os.environ), sys.argv[1:]]))"
    result = await transport.run(["python3", "-c", script, *NASTY], env=env, timeout=10, check=True)
    seen_env, seen_argv = json.loads(result.stdout)
    assert seen_argv == NASTY
    # env is the whole environment (nothing inherited), exactly as given
    assert {k: v for k, v in seen_env.items() if k not in {"LC_CTYPE"}} == env
    assert ssh_host.run(["test", "-e", "/tmp/fraisier-pwned"], check=False).returncode == 1


async def test_stdin_bytes_and_eof(transport: SSHTransport) -> None:
    data = bytes(range(256)) * 1000
    result = await transport.run(["cat"], stdin=data, timeout=10, check=True)
    assert result.stdout == data
    started = time.monotonic()
    empty = await transport.run(["cat"], timeout=10, check=True)  # no stdin: EOF at once
    assert empty.stdout == b"" and time.monotonic() - started < 5


async def test_cwd(transport: SSHTransport, ssh_host: InfraHost) -> None:
    ssh_host.run(["mkdir", "-p", "/srv/fraisier/with space"])
    result = await transport.run(["pwd"], cwd="/srv/fraisier/with space", timeout=10, check=True)
    assert result.stdout == b"/srv/fraisier/with space\n"
    with pytest.raises(ProviderError, match="cannot run pwd in /srv/fraisier/missing"):
        await transport.run(["pwd"], cwd="/srv/fraisier/missing", timeout=10)


async def test_missing_command_and_bad_env_name(transport: SSHTransport) -> None:
    with pytest.raises(ProviderError, match="cannot run no-such-command-xyz"):
        await transport.run(["no-such-command-xyz"], timeout=10)
    with pytest.raises(ProviderError, match="cannot run no-such-command-xyz"):
        await transport.run(["no-such-command-xyz"], env={"A": "1"}, timeout=10)
    with pytest.raises(ProviderError, match="invalid environment variable name"):
        await transport.run(["true"], env={"A B": "1"}, timeout=10)


@pytest.mark.timeout(30)
async def test_timeout_kills_the_remote_command(
    transport: SSHTransport, ssh_host: InfraHost
) -> None:
    marker = f"{30 + int(uuid.uuid4().int % 1000) / 1000:.3f}"  # a sleep no one else runs
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        await transport.run(["sh", "-c", f"echo started; sleep {marker}"], timeout=1)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 5, elapsed
    assert info.value.stdout == b"started\n"
    assert transport.host_id in str(info.value)
    # gone on the host too (the remote `timeout` killed the process group)
    assert ssh_host.run(["pgrep", "-f", f"sleep {marker}"], check=False).returncode == 1
    # and the connection is still usable
    assert (await transport.run(["true"], timeout=10)).ok


async def test_cancelling_a_run_stops_the_remote_command(
    root: SSHTransport, ssh_host: InfraHost
) -> None:
    marker = f"{40 + int(uuid.uuid4().int % 1000) / 1000:.3f}"
    task = asyncio.create_task(root.run(["sleep", marker], timeout=60))
    await asyncio.sleep(1.0)
    assert ssh_host.run(["pgrep", "-f", f"sleep {marker}"], check=False).returncode == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while ssh_host.run(["pgrep", "-f", f"sleep {marker}"], check=False).returncode == 0:
        assert time.monotonic() < deadline, "remote command survived the cancellation"
        await asyncio.sleep(0.1)


# --- files ------------------------------------------------------------------------------------


def make_tree(root: Path, version: str) -> None:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "static" / "with space").mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(f"print('{version}')\n")
    (root / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "static" / "with space" / "it's.txt").write_text(version)


def remote_listing(host: InfraHost, path: str) -> list[str]:
    out = host.sh(f"cd {shlex.quote(path)} && find . -type f -printf '%p %m\\n' | sort")
    return out.splitlines()


async def test_put_tree_new_then_merge(
    transport: SSHTransport, ssh_host: InfraHost, tmp_path: Path
) -> None:
    make_tree(tmp_path / "v1", "v1")
    dest = "/srv/fraisier/releases/r1"
    await transport.put_tree(tmp_path / "v1", dest)
    assert remote_listing(ssh_host, dest) == [
        "./app.py 644",
        "./bin/run 755",
        "./static/with space/it's.txt 644",
    ]
    assert ssh_host.sh(f"cat '{dest}/static/with space/it'\\''s.txt'") == "v1"

    make_tree(tmp_path / "v2", "v2")
    (tmp_path / "v2" / "new.txt").write_text("new")
    await transport.put_tree(tmp_path / "v2", dest)
    assert ssh_host.sh(f"cat {dest}/app.py") == "print('v2')\n"
    assert ssh_host.sh(f"cat {dest}/new.txt") == "new"
    # no staging directories or temp files left behind
    assert ssh_host.sh("ls -A /srv/fraisier/releases").split() == ["r1"]
    assert ssh_host.sh("ls -A /tmp | grep -c fraisier-upload || true").strip() == "0"


async def test_put_tree_replace_and_list_dir(
    transport: SSHTransport, ssh_host: InfraHost, tmp_path: Path
) -> None:
    make_tree(tmp_path / "v1", "v1")
    (tmp_path / "v1" / "stale.txt").write_text("left by an interrupted attempt")
    dest = "/srv/fraisier/releases/r1"
    assert await transport.list_dir("/srv/fraisier/releases") is None  # missing: None
    await transport.put_tree(tmp_path / "v1", dest)
    make_tree(tmp_path / "v2", "v2")
    await transport.put_tree(tmp_path / "v2", dest, replace=True, stage=".staging-r1-x")
    # replaced, not merged: the file only v1 had is gone
    assert remote_listing(ssh_host, dest) == [
        "./app.py 644",
        "./bin/run 755",
        "./static/with space/it's.txt 644",
    ]
    ssh_host.run(["touch", "/srv/fraisier/releases/.hidden"])
    assert sorted(await transport.list_dir("/srv/fraisier/releases") or []) == [".hidden", "r1"]
    # a first write into a directory that does not exist yet creates it
    await transport.write_file("/srv/fraisier/new/deeper/file.txt", b"x")
    assert ssh_host.sh("cat /srv/fraisier/new/deeper/file.txt") == "x"


async def test_put_file_and_write_file(
    transport: SSHTransport, ssh_host: InfraHost, tmp_path: Path
) -> None:
    local = tmp_path / "unit.service"
    local.write_bytes(b"[Service]\nExecStart=/bin/true\n")
    await transport.put_file(local, "/srv/fraisier/etc/unit.service", mode=0o600)
    assert ssh_host.sh("stat -c '%a %U' /srv/fraisier/etc/unit.service").strip() == "600 root"
    assert await transport.read_file("/srv/fraisier/etc/unit.service") == local.read_bytes()

    big = tmp_path / "artifact.bin"
    big.write_bytes(os.urandom(3 << 20) + b"tail")  # several upload chunks
    await transport.put_file(big, "/srv/fraisier/artifact.bin")
    remote_sum = ssh_host.sh("sha256sum /srv/fraisier/artifact.bin").split()[0]
    assert remote_sum == hashlib.sha256(big.read_bytes()).hexdigest()
    ssh_host.run(["rm", "/srv/fraisier/artifact.bin"])

    await transport.write_file("/srv/fraisier/etc/current", b"r1\n")
    await transport.write_file("/srv/fraisier/etc/current", b"r2\n", mode=0o640)
    assert await transport.read_file("/srv/fraisier/etc/current") == b"r2\n"
    assert ssh_host.sh("stat -c %a /srv/fraisier/etc/current").strip() == "640"
    assert sorted(ssh_host.sh("ls -A /srv/fraisier/etc").split()) == ["current", "unit.service"]


async def test_whole_files_of_every_size_round_trip(
    transport: SSHTransport, ssh_host: InfraHost
) -> None:
    """A read asks for the server's largest block at once and takes a short answer as the
    end of a file: empty files, one byte under, at and over a block boundary, and files of
    several blocks come back whole; a write of several blocks arrives whole, with its mode."""
    sizes = [0, 1, 255 * 1024 - 1, 255 * 1024, 256 * 1024, 256 * 1024 + 1, (1 << 20) + 17]
    for size in sizes:
        data = os.urandom(size)
        path = f"/srv/fraisier/sized/{size}"
        await transport.write_file(path, data, mode=0o640)
        assert await transport.read_file(path) == data, size
        listed = ssh_host.sh(f"stat -c '%s %a' {path}").split()
        assert listed == [str(size), "640"], (size, listed)
    assert ssh_host.sh("ls -A /srv/fraisier/sized | grep -c fraisier || true").strip() == "0"


async def test_a_proc_file_is_read_whole_without_a_limit(transport: SSHTransport) -> None:
    """/proc says its files are empty (size 0): a read of the whole file reads what it holds,
    where asking the size first returned nothing."""
    uptime = await transport.read_file("/proc/uptime")
    assert uptime is not None and float(uptime.split()[0]) > 0, uptime


async def test_a_failed_write_leaves_the_old_file_and_no_temp(
    root: SSHTransport, ssh_host: InfraHost
) -> None:
    """The data, mode, fsync and close go together; when the write fails (the disk is full)
    nothing is renamed: the old content stays and no temporary file is left."""
    ssh_host.run(["sh", "-c", "mkdir -p /srv/fraisier/full && "
                  "mount -t tmpfs -o size=64k tmpfs /srv/fraisier/full && "
                  "printf old >/srv/fraisier/full/state"])
    try:
        with pytest.raises(ProviderError, match="write of /srv/fraisier/full/state"):
            await root.write_file("/srv/fraisier/full/state", os.urandom(1 << 20))
        assert await root.read_file("/srv/fraisier/full/state") == b"old"
        assert ssh_host.sh("ls -A /srv/fraisier/full").split() == ["state"]
    finally:
        ssh_host.run(["umount", "/srv/fraisier/full"])


async def test_read_missing_file_is_none(transport: SSHTransport, ssh_host: InfraHost) -> None:
    assert await transport.read_file("/srv/fraisier/nope") is None
    assert await transport.read_file("/srv/fraisier/missing-dir/nope") is None
    ssh_host.run(["sh", "-c", "mkdir -p /srv/fraisier && printf secret >/srv/fraisier/private"])
    ssh_host.run(["chmod", "600", "/srv/fraisier/private"])
    assert await transport.read_file("/srv/fraisier/private") == b"secret"  # root or sudo


async def test_proc_files_read_with_a_limit(transport: SSHTransport, ssh_host: InfraHost) -> None:
    """A file of /proc says its size is 0: read with a limit, it reads what it holds (a process's
    stat line, the uptime), over SFTP or sudo alike; a limit cuts a regular file short."""
    uptime = await transport.read_file("/proc/uptime", limit=4096)
    assert uptime is not None and float(uptime.split()[0]) > 0, uptime
    stat = await transport.read_file("/proc/1/stat", limit=4096)
    assert stat is not None and stat.startswith(b"1 ("), stat
    ssh_host.run(["sh", "-c", "mkdir -p /srv/fraisier && printf 0123456789 >/srv/fraisier/ten"])
    assert await transport.read_file("/srv/fraisier/ten", limit=4) == b"0123"
    assert await transport.read_file("/srv/fraisier/ten") == b"0123456789"
    assert await transport.read_file("/proc/no-such-file", limit=4096) is None


async def test_write_file_is_atomic_for_concurrent_readers(transport: SSHTransport) -> None:
    size = 1 << 20
    path = "/srv/fraisier/atomic.bin"
    progress, stop = path + ".progress", path + ".stop"
    await transport.run(["rm", "-f", progress, stop], check=True)
    await transport.write_file(path, b"a" * size)
    # A reader on the host reads until told to stop: each read must be all-a or all-b, full
    # length. The race is made by counts, not by time: the writer goes on until the reader has
    # read 20 times and it has written 6 times (a loaded CI host wrote only 4 times in 1.5 s).
    reader = (
        "import os, time\n"
        f"good = (b'a' * {size}, b'b' * {size})\n"
        "bad = reads = 0\n"
        "give_up = time.monotonic() + 30\n"
        f"while not os.path.exists({stop!r}) and time.monotonic() < give_up:\n"
        f"    data = open({path!r}, 'rb').read()\n"
        "    bad += data not in good\n"
        "    reads += 1\n"
        "    if reads == 20:\n"
        f"        open({progress!r}, 'w').close()\n"
        f"print(bad, reads, int(os.path.exists({stop!r})))\n"
    )
    read_task = asyncio.create_task(
        transport.run(["python3", "-c", reader], timeout=40, check=True)
    )
    writes = 0
    while not read_task.done() and (writes < 6 or await transport.read_file(progress) is None):
        await transport.write_file(path, (b"b" if writes % 2 == 0 else b"a") * size)
        writes += 1
    await transport.write_file(stop, b"")
    bad, reads, stopped = map(int, (await read_task).stdout.split())
    assert bad == 0
    assert stopped == 1, "the reader gave up before the writer had raced it"
    assert writes >= 6 and reads >= 20  # the reader really raced the writer


async def test_put_file_missing_local_file(root: SSHTransport, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="is not a file"):
        await root.put_file(tmp_path / "nope", "/srv/fraisier/x")


# --- host keys, auth, connect errors ------------------------------------------------------------


async def test_wrong_host_key_is_rejected(ssh_host: InfraHost, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"[{ssh_host.address}]:{ssh_host.port} {other_public_key()}\n")
    t = SSHTransport(config_for(ssh_host, known_hosts=str(known)))
    started = time.monotonic()
    with pytest.raises(SSHHostKeyError) as info:
        await t.run(["true"], timeout=10)
    message = str(info.value)
    assert f"{ssh_host.address}:{ssh_host.port}" in message
    assert "does not match" in message
    assert f"ssh-keyscan -p {ssh_host.port} {ssh_host.address}" in message
    assert t.connects == 0 and time.monotonic() - started < 3  # not retried
    await t.close()


async def test_unknown_host_is_rejected(ssh_host: InfraHost, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    for known_hosts in (str(empty), str(tmp_path / "missing")):
        t = SSHTransport(config_for(ssh_host, known_hosts=known_hosts))
        with pytest.raises(SSHHostKeyError, match="is unknown"):
            await t.run(["true"], timeout=10)
        await t.close()


async def test_pinned_host_keys(ssh_host: InfraHost) -> None:
    good = SSHTransport(config_for(ssh_host, known_hosts=None, host_keys=(ssh_host.host_key,)))
    assert (await good.run(["true"], timeout=10)).ok
    await good.close()
    bad = SSHTransport(config_for(ssh_host, known_hosts=None, host_keys=(other_public_key(),)))
    with pytest.raises(SSHHostKeyError, match="does not match"):
        await bad.run(["true"], timeout=10)
    await bad.close()


async def test_login_refused_is_not_retried(ssh_host: InfraHost, tmp_path: Path) -> None:
    key = tmp_path / "id_other"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    t = SSHTransport(dataclasses.replace(config_for(ssh_host), identity_file=str(key)))
    started = time.monotonic()
    with pytest.raises(SSHAuthError, match="login refused"):
        await t.run(["true"], timeout=10)
    assert time.monotonic() - started < 3
    await t.close()


async def test_unreachable_port_is_retried_then_fails(ssh_host: InfraHost) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    config = SSHHostConfig(
        host_id="nowhere", address="127.0.0.1", port=port, identity_file=ssh_host.identity_file,
        known_hosts=ssh_host.known_hosts, connect_attempts=3, retry_base_delay=0.2,
    )  # fmt: skip
    t = SSHTransport(config)
    started = time.monotonic()
    with pytest.raises(SSHConnectError, match="after 3 attempts"):
        await t.run(["true"], timeout=10)
    elapsed = time.monotonic() - started
    # two backoff sleeps: 0.1-0.2 s then 0.2-0.4 s
    assert 0.3 <= elapsed < 3, elapsed
    await t.close()


# --- connection reuse, reconnect, pool ----------------------------------------------------------


async def test_one_connection_for_many_calls(root: SSHTransport, tmp_path: Path) -> None:
    results = await asyncio.gather(
        *(root.run(["sh", "-c", "echo $SSH_CONNECTION"], timeout=10) for _ in range(20))
    )
    await root.write_file("/srv/fraisier/x", b"x")
    assert await root.read_file("/srv/fraisier/x") == b"x"
    results.append(await root.run(["sh", "-c", "echo $SSH_CONNECTION"], timeout=10))
    client_ports = {r.stdout.split()[1] for r in results}
    assert len(client_ports) == 1  # the same TCP connection, seen from the host
    assert root.connects == 1


@pytest.mark.timeout(90)
async def test_reconnects_after_host_restart(
    root: SSHTransport, ssh_host: InfraHost, testinfra: Infra
) -> None:
    before = await root.run(["sh", "-c", "echo $SSH_CONNECTION"], timeout=10, check=True)
    restart = subprocess.run(
        [testinfra.docker_cli, "restart", "-t", "5", ssh_host.container],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert restart.returncode == 0, restart.stderr
    await asyncio.to_thread(ssh_host.wait_ssh, 30)
    after = await root.run(["sh", "-c", "echo $SSH_CONNECTION"], timeout=10, check=True)
    assert before.stdout.split()[1] != after.stdout.split()[1]
    assert root.connects == 2
    assert await root.read_file("/etc/hostname") == f"{ssh_host.name}\n".encode()


async def test_concurrent_commands_stay_within_max_sessions(ssh_host: InfraHost) -> None:
    # max_sessions=3: one channel is kept for SFTP, so two commands at a time, five waves.
    t = SSHTransport(config_for(ssh_host, max_sessions=3))
    try:
        started = time.monotonic()
        await asyncio.gather(*(t.run(["sleep", "0.3"], timeout=10, check=True) for _ in range(10)))
        elapsed = time.monotonic() - started
        assert 1.4 < elapsed < 5, elapsed
        assert t.connects == 1
    finally:
        await t.close()


async def test_unusable_settings_fail_before_connecting(
    ssh_host: InfraHost, tmp_path: Path
) -> None:
    t = SSHTransport(config_for(ssh_host, identity_file=str(tmp_path / "no-such-key")))
    with pytest.raises(SSHConfigError, match="not readable"):
        await t.run(["true"], timeout=10)
    t = SSHTransport(config_for(ssh_host, known_hosts=None, host_keys=("not a key",)))
    with pytest.raises(SSHConfigError, match="not a public key"):
        await t.run(["true"], timeout=10)
    assert t.connects == 0


async def test_pool_shares_and_closes(ssh_host: InfraHost) -> None:
    config = config_for(ssh_host)
    async with SSHPool() as pool:
        first = pool.get(config)
        assert pool.get(config) is first
        assert (await first.run(["true"], timeout=10)).ok
        assert (await pool.get(config).run(["true"], timeout=10)).ok
        assert first.connects == 1
    with pytest.raises(SSHError, match="closed"):
        await first.run(["true"], timeout=10)


# --- quoting (pure) -----------------------------------------------------------------------------


def test_remote_command_round_trips_through_a_shell_parser() -> None:
    command = remote_command(
        ["printf", "%s", *NASTY], sudo=True, env={"K": NASTY[2]}, cwd="/a b", timeout=5
    )
    words = shlex.split(command)
    assert words[:3] == ["sudo", "-n", "--"]
    assert words[-len(NASTY) - 2 :] == ["printf", "%s", *NASTY]
    assert "K=$(touch /tmp/fraisier-pwned)" in words
    with pytest.raises(ProviderError):
        remote_command(["A=B"], env={})


def test_from_spec() -> None:
    config = SSHHostConfig.from_spec(
        {"name": "web1", "address": "web1.internal", "port": 2200, "user": "deploy",
         "identityFile": "/k", "hostKeys": ["ssh-ed25519 AAAA"], "sudo": True}
    )  # fmt: skip
    assert (config.host_id, config.port, config.user, config.sudo) == ("web1", 2200, "deploy", True)
    assert config.host_keys == ("ssh-ed25519 AAAA",) and config.known_hosts is None
    assert SSHHostConfig.from_spec({"name": "h", "address": "::1"}).endpoint == "[::1]:22"


async def test_a_read_cancelled_in_flight_leaves_no_task_behind(
        root: SSHTransport, ssh_host: InfraHost) -> None:
    """A health gate cancels its watcher's reads of /proc once the verdict is in. asyncssh read
    in tasks of its own, which went on after the cancel; the answer they got (end of file of an
    empty or vanished file) was logged by asyncio at exit as 'Task exception was never
    retrieved', an error line in `apply`'s output for nothing wrong (8 in one fleet bench)."""
    ssh_host.run(["sh", "-c", "mkdir -p /srv/fraisier && : >/srv/fraisier/empty"])
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        assert await root.read_file("/srv/fraisier/empty", limit=4096) == b""
        for turns in range(40):  # cancelled after a different number of loop turns each time
            read = asyncio.create_task(root.read_file("/srv/fraisier/empty", limit=4096))
            for _ in range(turns % 8):
                await asyncio.sleep(0)
            await asyncio.sleep(0.0005 * (turns // 8))
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
        await asyncio.sleep(0.3)  # every answer is in
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not unretrieved, unretrieved[:3]
