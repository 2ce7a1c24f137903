"""Uncommitted edits in the work tree of a local config repository.

`diff` and `apply` read committed state only: an edit that is not committed is not planned.
Saying "In sync." then, without a word about it, misleads whoever just edited a file.
"""

from __future__ import annotations

import subprocess

from reconciler.source.git import GitSource


def uncommitted(source: GitSource, commit: str) -> list[str]:
    """Files below the source's folder that differ between the work tree and ``commit``
    (edited, staged, deleted or new and not ignored). Empty for a remote or bare repo."""
    if source.remote or source.work_tree is None:
        return []
    pathspec = source.path or "."
    git = ["git", "-C", str(source.work_tree), "--git-dir", str(source.git_dir)]
    found: set[str] = set()
    for args in (["diff", "--name-only", "--no-renames", commit, "--", pathspec],
                 ["ls-files", "--others", "--exclude-standard", "--", pathspec]):
        try:
            proc = subprocess.run([*git, *args], capture_output=True, text=True, check=False,
                                  timeout=source.timeout)
        except subprocess.TimeoutExpired:
            return []
        if proc.returncode != 0:
            return []
        found.update(line for line in proc.stdout.splitlines() if line)
    return sorted(found)


def uncommitted_warning(source: GitSource, commit: str) -> str | None:
    """One line for people, or None when the work tree matches ``commit``."""
    files = uncommitted(source, commit)
    if not files:
        return None
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"the work tree differs from commit {commit[:12]} in {len(files)} file(s) "
            f"({shown}): only committed changes are planned; commit them to include them")
