"""upload_tree against a real test host's sshd (OpenSSH's sftp-server, umask 022)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from reconciler.transport.sftp_tree import UnsupportedFileType, make_dirs, upload_tree
from tests.infra.testinfra import InfraHost

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BASE = "/srv/fraisier/uploads"


class CountingSFTP:
    """The real SFTP client, with the calls made through it counted by name."""

    def __init__(self, sftp: asyncssh.SFTPClient) -> None:
        self._sftp = sftp
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._sftp, name)


@pytest.fixture
async def sftp(ssh_host: InfraHost) -> AsyncIterator[CountingSFTP]:
    """An SFTP session as an unprivileged user (permissions apply to it, as they do not to
    root) that owns /srv/fraisier."""
    ssh_host.sh("mkdir -p /srv/fraisier && chown deploy: /srv/fraisier")
    async with asyncssh.connect(
        ssh_host.address, ssh_host.port, username="deploy",
        client_keys=[ssh_host.identity_file], known_hosts=ssh_host.known_hosts,
    ) as conn:
        client = await conn.start_sftp_client()
        yield CountingSFTP(client)
        client.exit()


def listing(host: InfraHost, path: str) -> list[str]:
    """Every entry under ``path``: name, octal mode (with special bits), type."""
    return host.sh(f"cd {path} && find . -printf '%p %#m %y\\n' | sort").splitlines()


def release_tree(root: Path) -> None:
    (root / "app").mkdir(parents=True)
    (root / "app" / "server.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\nexec python3 app/server.py\n")
    root.chmod(0o755)
    (root / "app").chmod(0o755)
    (root / "app" / "server.py").chmod(0o644)
    (root / "run.sh").chmod(0o755)


async def test_modes_the_server_keeps_cost_no_setstat(
    sftp: CountingSFTP, ssh_host: InfraHost, tmp_path: Path
) -> None:
    release_tree(tmp_path / "r1")
    await upload_tree(sftp, tmp_path / "r1", f"{BASE}/r1")  # type: ignore[arg-type]
    assert listing(ssh_host, f"{BASE}/r1") == [
        ". 0755 d", "./app 0755 d", "./app/server.py 0644 f", "./run.sh 0755 f",
    ]
    assert ssh_host.sh(f"cat {BASE}/r1/app/server.py") == "print('hi')\n"
    # the missing parent was made by one mkdir after the first failed; then one mkdir per
    # folder, one open per file and a single stat of the top folder to learn what the server
    # does to created modes
    assert sftp.calls == Counter(mkdir=4, stat=1, open=2)

    sftp.calls.clear()
    await upload_tree(sftp, tmp_path / "r1", f"{BASE}/r2")  # type: ignore[arg-type]
    assert sftp.calls == Counter(mkdir=2, stat=1, open=2)


async def test_modes_come_out_exact_even_where_the_umask_strips_them(
    sftp: CountingSFTP, ssh_host: InfraHost, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    (root / "shared").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "sticky").mkdir()
    (root / "shared" / "group-writable").write_text("g+w")  # the host's umask 022 strips g+w
    (root / "secret").write_text("owner only")
    (root / "empty").write_bytes(b"")
    (root / "locked" / "inside").write_text("made before the folder is closed")
    (root / "shared").chmod(0o2775)  # setgid: mkdir(2) does not set it from the mode
    (root / "shared" / "group-writable").chmod(0o664)
    (root / "secret").chmod(0o600)
    (root / "empty").chmod(0o640)
    (root / "locked" / "inside").chmod(0o444)
    (root / "locked").chmod(0o555)  # not writable: its contents go in before its mode
    (root / "sticky").chmod(0o1777)
    root.chmod(0o750)
    await upload_tree(sftp, root, f"{BASE}/tree")  # type: ignore[arg-type]
    assert listing(ssh_host, f"{BASE}/tree") == [
        ". 0750 d",
        "./empty 0640 f",
        "./locked 0555 d",
        "./locked/inside 0444 f",
        "./secret 0600 f",
        "./shared 02775 d",
        "./shared/group-writable 0664 f",
        "./sticky 01777 d",
    ]
    assert ssh_host.sh(f"cat {BASE}/tree/locked/inside") == "made before the folder is closed"
    assert ssh_host.sh(f"stat -c %s {BASE}/tree/empty") == "0\n"


async def test_a_setgid_parent_does_not_pass_its_bit_on(
    sftp: CountingSFTP, ssh_host: InfraHost, tmp_path: Path
) -> None:
    ssh_host.sh(f"mkdir -p {BASE} && chown deploy: {BASE} && chmod 2775 {BASE}")
    release_tree(tmp_path / "r1")
    await upload_tree(sftp, tmp_path / "r1", f"{BASE}/r1")  # type: ignore[arg-type]
    assert listing(ssh_host, f"{BASE}/r1") == [
        ". 0755 d", "./app 0755 d", "./app/server.py 0644 f", "./run.sh 0755 f",
    ]


async def test_large_files_and_links_arrive_whole(
    sftp: CountingSFTP, ssh_host: InfraHost, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    (root / "data").mkdir(parents=True)
    blob = os.urandom(3 * (1 << 20) + 12345)  # several chunks and a partial one
    (root / "data" / "blob.bin").write_bytes(blob)
    (root / "latest").symlink_to("data/blob.bin")
    (root / "dangling").symlink_to("/nowhere/at/all")
    await upload_tree(sftp, root, f"{BASE}/tree")  # type: ignore[arg-type]
    remote_sum = ssh_host.sh(f"sha256sum {BASE}/tree/data/blob.bin").split()[0]
    assert remote_sum == hashlib.sha256(blob).hexdigest()
    assert ssh_host.sh(f"readlink {BASE}/tree/latest") == "data/blob.bin\n"
    assert ssh_host.sh(f"readlink {BASE}/tree/dangling") == "/nowhere/at/all\n"


async def test_a_fifo_is_refused(
    sftp: CountingSFTP, ssh_host: InfraHost, tmp_path: Path
) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    os.mkfifo(root / "pipe")  # reading it would block the upload forever
    with pytest.raises(UnsupportedFileType, match="pipe: not a file, folder or symbolic link"):
        await upload_tree(sftp, root, f"{BASE}/tree")  # type: ignore[arg-type]
    assert ssh_host.sh(f"ls -A {BASE}/tree") == ""


async def test_make_dirs_works_up_from_the_deepest_folder(
    sftp: CountingSFTP, ssh_host: InfraHost
) -> None:
    await make_dirs(sftp, "/srv/fraisier/a")  # type: ignore[arg-type]
    assert sftp.calls == Counter(mkdir=1)  # its parent exists: one request
    sftp.calls.clear()
    await make_dirs(sftp, "/srv/fraisier/a/b/c/d")  # type: ignore[arg-type]
    assert sftp.calls == Counter(mkdir=5)  # d, c and b fail; b, c, d are made
    assert ssh_host.sh("stat -c %F /srv/fraisier/a/b/c/d") == "directory\n"
    sftp.calls.clear()
    await make_dirs(sftp, "/srv/fraisier/a/b")  # type: ignore[arg-type]
    assert sftp.calls == Counter(mkdir=1, isdir=1)  # there already: fine

    ssh_host.sh("touch /srv/fraisier/a/file")
    for path in ("/srv/fraisier/a/file", "/srv/fraisier/a/file/below"):
        with pytest.raises(asyncssh.SFTPFailure, match="a/file exists and is not a folder"):
            await make_dirs(sftp, path)  # type: ignore[arg-type]
    ssh_host.sh("chmod 555 /srv/fraisier/a")
    with pytest.raises(asyncssh.SFTPPermissionDenied):
        await make_dirs(sftp, "/srv/fraisier/a/denied/deeper")  # type: ignore[arg-type]
