"""``tarfile`` extraction with the "data" filter, also on Pythons without it.

Python 3.11.4+ (and 3.12) have ``extractall(filter="data")``; Debian 12's CPython 3.11.2, which the
systemd unit runs on, does not (TypeError). There each member is checked the same way before a
plain extraction: no absolute or escaping path, no link pointing out of ``dest``, only regular
files, directories and links.

An archive breaking one of those rules is refused whole (``UnsafeSourceError``), not extracted
without the offending member: a release missing a file it ships would start and fail in ways
that hide the cause. Both paths raise the same error, so a caller never sees ``tarfile``'s own
exceptions (which are not the project's errors and used to end the daemon).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import SourceError, UnsafeSourceError

# What the data filter raises; absent (and never raised) where the filter itself is missing.
_REFUSED: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ())


def _check(member: tarfile.TarInfo, dest: Path) -> None:
    root = dest.resolve()
    target = (root / member.name).resolve()
    if os.path.isabs(member.name) or not target.is_relative_to(root):
        raise UnsafeSourceError(f"unsafe path in archive: {member.name!r}")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeSourceError(f"unsupported member type in archive: {member.name!r}")
    if member.issym():
        link = (target.parent / member.linkname).resolve()
    elif member.islnk():
        link = (root / member.linkname).resolve()
    else:
        return
    if os.path.isabs(member.linkname) or not link.is_relative_to(root):
        raise UnsafeSourceError(
            f"link out of the source tree: {member.name!r} -> {member.linkname!r}")


def extract_data(tar: tarfile.TarFile, dest: Path,
                 members: Sequence[tarfile.TarInfo] | None = None) -> None:
    """Extract like ``extractall(dest, members, filter="data")``; ``UnsafeSourceError`` for a
    member the filter refuses, ``SourceError`` for an archive that cannot be read."""
    try:
        _extract(tar, dest, members)
    except _REFUSED as exc:  # its message names the member: "'x' is a link to an absolute path"
        raise UnsafeSourceError(f"release export refused: {exc}") from None
    except tarfile.TarError as exc:
        raise SourceError(f"archive cannot be read: {type(exc).__name__}: {exc}") from None


def _extract(tar: tarfile.TarFile, dest: Path,
             members: Sequence[tarfile.TarInfo] | None) -> None:
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
