"""Upload a local directory tree over SFTP in as few requests as it takes.

asyncssh's ``put(recurse=True, preserve=True)`` spends 16 requests on a two-file, two-folder
release: a type check before each folder, then a ``setstat`` per entry for modes and times.
Here each folder is one ``mkdir`` and each file one ``open``/``write``/``close``, with the
mode asked for at creation. The server applies its umask (or a default ACL) to a created mode,
so the top folder's mode is read back once per upload; an entry whose mode may not come
through intact (it has a bit the server stripped or was not seen to keep, or a setuid, setgid
or sticky bit) gets an explicit ``setstat`` as well. Modes end up exactly as in the
local tree, as with ``preserve``. Times do not: files carry the upload's time, as a checkout's
do; nothing reads them, and setting them would cost a request per entry.

Symbolic links are recreated as links (never followed). Any other kind of file (a FIFO, a
socket, a device) is refused before anything is created for it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

import asyncssh

_PERMISSION_BITS = 0o777
_SPECIAL_BITS = 0o7000
_CHUNK = 1 << 20


class UnsupportedFileType(OSError):
    """The local tree holds something that is neither a folder, a file nor a symbolic link."""


async def upload_tree(sftp: asyncssh.SFTPClient, local_dir: Path, remote_dir: str) -> None:
    """Create ``remote_dir`` (it must not exist) holding a copy of ``local_dir``.

    A missing parent of ``remote_dir`` is created first (default modes), found by the first
    ``mkdir`` failing, so uploads into an existing folder pay nothing for it."""
    root_mode = stat.S_IMODE(os.stat(local_dir).st_mode)
    asked = _creation_mode(root_mode)
    try:
        await sftp.mkdir(remote_dir, asyncssh.SFTPAttrs(permissions=asked))
    except asyncssh.SFTPNoSuchFile:
        await make_dirs(sftp, posixpath.dirname(remote_dir) or "/")
        await sftp.mkdir(remote_dir, asyncssh.SFTPAttrs(permissions=asked))
    created = stat.S_IMODE((await sftp.stat(remote_dir)).permissions or 0)
    if created != asked:
        # Before anything is created inside, so nothing inherits what is cleared here (a
        # setgid bit the parent passes on, say).
        await sftp.chmod(remote_dir, asked)
    kept = asked & created & _PERMISSION_BITS
    await _upload_entries(sftp, local_dir, remote_dir, kept)
    if asked != root_mode:
        await sftp.chmod(remote_dir, root_mode)


async def make_dirs(sftp: asyncssh.SFTPClient, path: str) -> None:
    """``mkdir -p``, from the deepest folder up: one request when only the last folder is
    missing, two more per missing parent. (asyncssh's ``makedirs`` walks down from ``/`` with
    a ``mkdir`` and a ``stat`` for every folder that exists: 9 requests for a new
    ``/srv/fraisier/<env>/<name>``.) New folders get the server's default mode."""
    try:
        await sftp.mkdir(path)
    except asyncssh.SFTPNoSuchFile:
        parent = posixpath.dirname(path.rstrip("/"))
        if parent in ("", "/", path):
            raise
        await make_dirs(sftp, parent)
        try:
            await sftp.mkdir(path)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            await _must_be_a_folder(sftp, path)  # made meanwhile by someone else
    except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
        # SFTP v3 (OpenSSH) answers a plain failure when the path exists: a folder is fine
        await _must_be_a_folder(sftp, path)


async def _must_be_a_folder(sftp: asyncssh.SFTPClient, path: str) -> None:
    if not await sftp.isdir(path):
        raise asyncssh.SFTPFailure(f"{path} exists and is not a folder")


def _creation_mode(mode: int) -> int:
    """A folder is created writable and searchable by its owner, whatever its final mode, so
    that its contents can be created; a stricter mode is set once they are in."""
    return mode | stat.S_IRWXU


def _needs_setstat(mode: int, kept: int) -> bool:
    """Whether a mode asked for at creation may come out different: it has a special bit, or
    a permission bit the server was not seen to keep."""
    return bool(mode & _SPECIAL_BITS or mode & _PERMISSION_BITS & ~kept)


async def _upload_entries(sftp: asyncssh.SFTPClient, local_dir: Path, remote_dir: str,
                          kept: int) -> None:
    with os.scandir(local_dir) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        target = posixpath.join(remote_dir, entry.name)
        if entry.is_symlink():
            await sftp.symlink(os.readlink(entry.path), target)
            continue
        info = entry.stat(follow_symlinks=False)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            asked = _creation_mode(mode)
            await sftp.mkdir(target, asyncssh.SFTPAttrs(permissions=asked))
            if _needs_setstat(asked, kept):
                await sftp.chmod(target, asked)
            await _upload_entries(sftp, Path(entry.path), target, kept)
            if asked != mode:
                await sftp.chmod(target, mode)
        elif stat.S_ISREG(info.st_mode):
            await _upload_file(sftp, Path(entry.path), target, mode, size=info.st_size)
            if _needs_setstat(mode, kept):
                await sftp.chmod(target, mode)
        else:
            raise UnsupportedFileType(f"{entry.path}: not a file, folder or symbolic link")


async def _upload_file(sftp: asyncssh.SFTPClient, local: Path, remote: str, mode: int,
                       *, size: int) -> None:
    async with sftp.open(remote, "wb", asyncssh.SFTPAttrs(permissions=mode)) as fh:
        if size == 0:
            return
        with local.open("rb") as source:
            while chunk := source.read(_CHUNK):
                # asyncssh splits a large write into parallel requests of the server's size
                await fh.write(chunk)
