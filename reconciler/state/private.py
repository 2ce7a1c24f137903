"""Owner-only files and folders, whatever the process umask.

The state dir (git mirror, spec cache, SQLite database), the database with its ``-wal``/``-shm``
companions and the services' output logs hold secrets (resolved env values end up in service
output, deployment errors in the database). Outside the systemd unit (``UMask=0077``) the umask
is usually 022 or even 000: these helpers create them 0700/0600 regardless, and tighten ones an
older version left readable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """Create ``path`` and its missing parents 0700; with ``tighten``, an existing ``path`` of
    ours that others can read is made 0700 (a shared sticky folder such as /tmp is left
    alone)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR)  # the umask may have masked more than asked, never less
    if tighten:
        _tighten(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> None:
    """Make sure ``path`` exists and is 0600 (created empty if missing; never truncated). Read
    only: another user's database stays readable for a read-only look, as SQLite allows."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        _fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def open_private_append(path: Path) -> BinaryIO:
    """``path`` opened for appending, created 0600 (an existing one tightened to 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                 PRIVATE_FILE)
    try:
        _fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def _fchmod(fd: int, mode: int) -> None:
    info = os.fstat(fd)
    if stat.S_IMODE(info.st_mode) & ~mode and info.st_uid == os.geteuid():
        os.fchmod(fd, mode)


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.stat()
    except OSError:
        return
    if (stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) & ~mode
            and not info.st_mode & stat.S_ISVTX and info.st_uid == os.geteuid()):
        os.chmod(path, mode)
