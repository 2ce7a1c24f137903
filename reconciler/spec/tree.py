"""What a ``source.path`` folder holds, checked before anything is deployed from it.

A release is the folder exported as is, so a folder that is itself a symbolic link (git stores
the link, not the files: the release would be empty) or that holds a link leading out of it
(absolute, or ``..`` past the folder: the export refuses it, see ``source/tarsafe.py``) can
never deploy. ``validate`` and every load of the daemon report both with the ``file:line:col``
of ``spec.source.path``. The same rules hold for a work tree (``DirectoryTree``, used by
``validate``) and a commit (``source.git.GitTree``); nothing is followed, only read.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol

EntryKind = Literal["dir", "file", "link"]
MAX_READ = 1 << 20  # an encrypted secret file is small; a larger one is not read
MAX_LINK_PROBLEMS = 5  # per folder: enough to show the pattern, not a page of them


class SourceTree(Protocol):
    """The config repository's files at the commit being loaded."""

    def kind(self, path: str) -> EntryKind | None:
        """What ``path`` (relative to the repository root) is, without following a link at
        its end; None when it does not exist (or a component is not a folder)."""

    def links(self, folder: str) -> Iterator[tuple[str, str]]:
        """(path relative to the repository root, target) of every link below ``folder``."""

    def read(self, path: str) -> bytes | None:
        """The content of the regular file ``path`` (relative to the repository root); None
        when it does not exist or is not a regular file (a link is not followed)."""


def link_escapes(folder: str, link: str, target: str) -> bool:
    """Whether ``link`` (inside ``folder``) -> ``target`` leads out of ``folder``."""
    if not target or target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    if folder == ".":  # the whole repository
        return resolved == ".." or resolved.startswith("../")
    return not (resolved == folder or resolved.startswith(folder + "/"))


def source_path_problems(tree: SourceTree, path: str) -> list[str]:
    """Why the folder ``path`` can never be released whole; empty when it can (or does not
    exist here: a missing folder is reported by the export, and ``validate`` of a folder that
    is not a work tree cannot tell)."""
    folder = posixpath.normpath(path.strip("/") or ".")
    if folder == ".." or folder.startswith("../"):
        return []  # out of the repository: a check of the document itself reports it
    parts = [] if folder == "." else folder.split("/")
    kind: EntryKind | None = "dir"
    for end in range(1, len(parts) + 1):
        prefix = "/".join(parts[:end])
        kind = tree.kind(prefix)
        if kind is None:
            return []
        if kind == "link":
            what = "is" if prefix == folder else f"is under {prefix!r}, which is"
            return [f"{folder!r} {what} a symbolic link: git keeps the link, not the files, so "
                    "the release would be empty; name the real folder"]
    if kind != "dir":
        return []
    problems = []
    for link, target in tree.links(folder):
        if link_escapes(folder, link, target):
            problems.append(f"{link!r} is a link to {target!r}, outside {folder!r}: the release "
                            "export refuses it; copy the file in, or link inside the folder")
            if len(problems) == MAX_LINK_PROBLEMS:
                break
    return problems


class DirectoryTree:
    """A work tree on disk (``validate PATH``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def kind(self, path: str) -> EntryKind | None:
        full = self.root / path
        if full.is_symlink():
            return "link"
        if full.is_dir():
            return "dir"
        return "file" if full.exists() else None

    def links(self, folder: str) -> Iterator[tuple[str, str]]:
        base = self.root / folder
        for dirpath, dirnames, filenames in os.walk(base):  # links to folders: not entered
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                if full.is_symlink():
                    yield full.relative_to(self.root).as_posix(), os.readlink(full)

    def read(self, path: str) -> bytes | None:
        full = self.root / path
        # no link anywhere on the way: the repository's file, as git would have it
        for part in (full, *full.parents):
            if part == self.root:
                break
            if part.is_symlink():
                return None
        if not full.is_file() or full.stat().st_size > MAX_READ:
            return None
        return full.read_bytes()


def work_tree_of(path: Path) -> Path | None:
    """The top of the git work tree holding ``path`` (where ``source.path`` is rooted), or
    None for a folder outside any work tree."""
    current = path.resolve()
    if current.is_file():
        current = current.parent
    for folder in (current, *current.parents):
        if (folder / ".git").exists():
            return folder
    return None
