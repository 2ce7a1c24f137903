"""The files of the desired state: ``SourceFile`` (one YAML file, however it is stored) and
``files_from_directory``, which reads a folder as ``validate`` does on untrusted trees (symbolic
links followed only to regular files inside the tree, anything else refused, never read).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from reconciler.errors import SourceError

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceFile:
    """One YAML file of the desired state, however it is stored (folder, git tree)."""

    path: str  # shown in errors, posix, e.g. "examples/fleet/api.yaml"
    blob_id: str  # git blob sha1 of the content
    read: Callable[[], bytes]
    # Why the file was not read (a symbolic link out of the tree, not a regular file): the
    # loader reports it at file:1:1 and never calls ``read``.
    refused: str | None = None


def git_blob_id(data: bytes) -> str:
    """The id ``git hash-object`` gives ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _reader(data: bytes) -> Callable[[], bytes]:
    def read() -> bytes:
        return data

    return read


def files_from_directory(path: Path) -> list[SourceFile]:
    """Every ``*.yaml``/``*.yml`` file under ``path`` (or ``path`` itself if it is a file),
    recursively, sorted by relative path, skipping hidden files and directories.

    The tree is ``path`` (a file's folder for a file): ``validate`` runs on untrusted trees (pull
    requests in CI), so a symbolic link is followed only to a regular file inside the tree;
    anything else is returned ``refused`` and never read. Symlinked folders are not descended
    (as in a git tree). Contents are read once here, so ``blob_id`` and ``read()`` agree.
    """
    root = Path(path)
    shown_root = PurePosixPath(root.as_posix())
    _refuse_symlinked_root(root)
    if root.is_file():
        found = [(shown_root, root)]
        tree = root.parent.resolve()
    elif root.is_dir():
        tree = root.resolve()
        relative: list[PurePosixPath] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            base = Path(dirpath).relative_to(root)
            for filename in filenames:
                if filename.startswith(".") or not filename.endswith(YAML_SUFFIXES):
                    continue
                relative.append(PurePosixPath((base / filename).as_posix()))
        found = [(shown_root / rel, root / rel) for rel in sorted(relative)]
    else:
        raise SourceError(f"{shown_root}: no such file or directory")
    files = []
    for shown, real in found:
        target, refused = _inside(real, tree, shown_root)
        if target is None:
            files.append(SourceFile(str(shown), "", _reader(b""), refused))
            continue
        data = target.read_bytes()
        files.append(SourceFile(str(shown), git_blob_id(data), _reader(data)))
    return files


def _refuse_symlinked_root(root: Path) -> None:
    """PATH itself, or a folder of a relative PATH, must not be a symbolic link: the tree it
    names would be wherever the link points (an untrusted checkout could point it at $HOME)."""
    parts = root.parts if not root.is_absolute() else (str(root),)
    current = Path()
    for part in parts:
        current = current / part
        if part not in (".", "..") and current.is_symlink():
            raise SourceError(
                f"{current.as_posix()}: is a symbolic link; validate reads a real folder",
                hint="pass the folder it points to, if that folder is trusted")


def _inside(real: Path, tree: Path, shown_root: PurePosixPath) -> tuple[Path | None, str]:
    """``(path to read, "")`` for a regular file in ``tree`` (through symbolic links that stay
    inside), else ``(None, why it is not read)``."""
    target = real
    if real.is_symlink():
        link = os.readlink(real)
        try:
            target = real.resolve()
        except (OSError, RuntimeError):  # a loop
            return None, f"symbolic link to {link!r}: loops, not read"
        if not target.is_relative_to(tree):
            return None, (f"symbolic link to {link!r}, outside {shown_root}: not read (the "
                          "desired state is read from files inside the tree only)")
        if not target.exists():
            return None, f"symbolic link to {link!r}: no such file in {shown_root}"
    if not target.is_file():
        return None, "not a regular file: not read"
    return target, ""
