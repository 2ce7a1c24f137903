"""Uncommitted edits in the work tree of a local config repository.

`diff` and `apply` read committed state only: an edit that is not committed is not planned.
Saying "In sync." then, without a word about it, misleads whoever just edited a file.
"""

from __future__ import annotations

import git

from reconciler.source.git import GitSource


def uncommitted(source: GitSource, commit: str) -> list[str]:
    """Files below the source's folder that differ between the work tree and ``commit``
    (edited, staged, deleted or new and not ignored). Empty for a remote or bare repo."""
    if source.remote:
        return []
    repo = source.repo
    if repo.bare or not repo.working_tree_dir:
        return []
    pathspec = source.path or "."
    try:
        changed = repo.git.diff("--name-only", "--no-renames", commit, "--", pathspec)
        new = repo.git.ls_files("--others", "--exclude-standard", "--", pathspec)
    except git.GitCommandError:
        return []
    return sorted({line for line in (changed + "\n" + new).splitlines() if line})


def uncommitted_warning(source: GitSource, commit: str) -> str | None:
    """One line for people, or None when the work tree matches ``commit``."""
    files = uncommitted(source, commit)
    if not files:
        return None
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"the work tree differs from commit {commit[:12]} in {len(files)} file(s) "
            f"({shown}): only committed changes are planned; commit them to include them")
