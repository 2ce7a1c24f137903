"""On-disk cache of parsed, validated documents, keyed by the git blob id of their file.

A warm load reads one small marshal file per unchanged blob instead of parsing and validating
its YAML, so the cost of a reconcile follows what changed, not the size of the fleet. Entries are
only written for files that loaded without a problem. The cache directory is namespaced by a
version covering the schemas' bytes, the loader's version, and the Python/PyYAML/croniter
versions (marshal's format and what parses or validates may change with them); a new version
simply starts an empty namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import re
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import croniter
import fastjsonschema
import yaml

from reconciler.spec.validate import schemas_version

# Bump when the loader's records or checks change meaning.
LOADER_VERSION = "4"  # 2: systemd calendar schedules; 3: control characters, root;
# 4: shared definitions (metadata.environments) and Environment records

_VERSION_NAME = re.compile(r"[0-9a-f]{20}")

# (document index in file, line, kind, name, environment, labels, spec, hash)
Record = tuple[int, int, str, str, str, dict[str, str], dict[str, Any], str]


def _module_fingerprint(module: Any) -> str:
    """Where ``module``'s code is and its size and mtime: changes with any upgrade of it.
    A ``stat`` instead of ``importlib.metadata.version``, which scans every installed
    distribution (tens of ms at each CLI start)."""
    path = getattr(module, "__file__", None)
    if not path:
        return "?"
    try:
        st = os.stat(path)
    except OSError:
        return str(path)
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


@cache
def cache_version() -> str:
    parts = [
        LOADER_VERSION,
        schemas_version(),
        sys.version,
        str(marshal.version),
        yaml.__version__,
        _module_fingerprint(croniter),
        fastjsonschema.VERSION,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


class SpecCache:
    """Directory-backed cache: ``<dir>/<version>/<blob[:2]>/<blob>``, one marshal file per blob."""

    def __init__(self, directory: Path, *, version: str | None = None) -> None:
        self.directory = Path(directory)
        self.version = version or cache_version()
        self.root = self.directory / self.version
        self.hits = 0
        self.misses = 0
        self._checked_root = False

    def _path(self, blob_id: str) -> Path:
        if len(blob_id) < 3 or not all(c in "0123456789abcdef" for c in blob_id):
            raise ValueError(f"not a git blob id: {blob_id!r}")
        return self.root / blob_id[:2] / blob_id

    def get(self, blob_id: str) -> list[Record] | None:
        """The records stored for ``blob_id``, or None (absent or unreadable: treated as a miss)."""
        path = self._path(blob_id)  # a malformed id is the caller's bug: raise, do not miss
        try:
            raw = path.read_bytes()
            records = marshal.loads(raw)  # noqa: S302 - our own cache directory, plain data only
        except (OSError, EOFError, ValueError, TypeError):
            self.misses += 1
            return None
        if not isinstance(records, list):
            self.misses += 1
            return None
        self.hits += 1
        return records

    def put(self, blob_id: str, records: list[Record]) -> None:
        """Store ``records`` atomically (readers never see a half-written file)."""
        path = self._path(blob_id)
        data = marshal.dumps(records)
        try:
            if not self._checked_root:
                self._checked_root = True
                if not self.root.is_dir():
                    self.drop_other_versions()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            # a cache that cannot be written only costs speed, never correctness
            return

    def drop_other_versions(self) -> None:
        """Delete the namespaces of other cache versions (left by older schemas or releases).

        Runs by itself when this version's namespace is first created; a process still using
        an old version only loses speed."""
        try:
            siblings = list(self.directory.iterdir())
        except OSError:
            return
        for sibling in siblings:
            if sibling.name != self.version and _VERSION_NAME.fullmatch(sibling.name):
                shutil.rmtree(sibling, ignore_errors=True)

    def prune(self, keep: set[str]) -> int:
        """Delete the entries of blobs not in ``keep`` (e.g. the blob ids of the files at the
        current commit); returns how many were deleted."""
        removed = 0
        try:
            buckets = list(self.root.iterdir())
        except OSError:
            return 0
        for bucket in buckets:
            try:
                entries = list(bucket.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name not in keep:
                    with contextlib.suppress(OSError):
                        entry.unlink()
                        removed += 1
        return removed
