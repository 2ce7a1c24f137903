"""``tarfile`` extraction with the "data" filter, also on Pythons without it.

Python 3.11.4+ (and 3.12) have ``extractall(filter="data")``; Debian 12's CPython 3.11.2, which the
systemd unit runs on, does not (TypeError). There each member is checked the same way before a
plain extraction: no absolute or escaping path, no link pointing out of ``dest``, only regular
files, directories and links.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import SourceError


def _check(member: tarfile.TarInfo, dest: Path) -> None:
    root = dest.resolve()
    target = (root / member.name).resolve()
    if os.path.isabs(member.name) or not target.is_relative_to(root):
        raise SourceError(f"unsafe path in archive: {member.name!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise SourceError(f"unsupported member type in archive: {member.name!r}")
    if member.issym():
        link = (target.parent / member.linkname).resolve()
    elif member.islnk():
        link = (root / member.linkname).resolve()
    else:
        return
    if os.path.isabs(member.linkname) or not link.is_relative_to(root):
        raise SourceError(f"link out of the archive: {member.name!r} -> {member.linkname!r}")


def extract_data(tar: tarfile.TarFile, dest: Path,
                 members: Sequence[tarfile.TarInfo] | None = None) -> None:
    """Extract like ``extractall(dest, members, filter="data")``."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, members=members, filter="data")
        return
    chosen = list(members) if members is not None else tar.getmembers()
    for member in chosen:
        _check(member, dest)
        # What the data filter also does: no set-id bits, no ownership from the archive.
        if member.isdir():
            member.mode = (member.mode & 0o755) | 0o700
        elif member.isfile():
            member.mode = (member.mode & 0o755) | 0o600
        member.uid = member.gid = 0
        member.uname = member.gname = ""
    tar.extractall(dest, members=chosen)  # noqa: S202 - every member was checked above
