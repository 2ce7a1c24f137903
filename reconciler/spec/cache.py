"""On-disk cache of parsed, validated documents, keyed by the git blob id of their file.

A warm load reads one small marshal file per unchanged blob instead of parsing and validating
its YAML, so the cost of a reconcile follows what changed, not the size of the fleet. Entries are
only written for files that loaded without a problem. The cache directory is namespaced by a
version covering the schemas' bytes, the loader's version, the Python version and the installed
PyYAML, croniter and fastjsonschema (marshal's format and what parses or validates may change
with them); a new version simply starts an empty namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import marshal
import os
import re
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import CodeType
from typing import Any

from reconciler.spec.model import Links
from reconciler.spec.validate import schemas_version

# Bump when the loader's records or checks change meaning.
LOADER_VERSION = "7"  # 2: systemd calendar schedules; 3: control characters, root;
# 4: shared definitions (metadata.environments) and Environment records; 5: facts (entries);
# 6, 7: packed records (entries)

_VERSION_NAME = re.compile(r"[0-9a-f]{20}")
_BLOB_ID = re.compile(r"[0-9a-f]{3,}")

# (document index in file, line, kind, name, environment, labels, spec, hash)
Record = tuple[int, int, str, str, str, dict[str, str], dict[str, Any], str]
# What the cross-file checks need of a file's records (spec/facts.py): (positions of the records
# naming per-host values, distinct (environment, policy check) pairs).
Facts = tuple[tuple[int, ...], tuple[tuple[str, tuple[Any, ...]], ...]]
# A record as a file's entry keeps it (``spec/facts.py`` ``packed``): (document index, line,
# kind, name, environment, hash, (marshalled (labels, spec), links)); decoded only when used
# (``model.PackedResource``). Environment and shared-definition records are kept as Records.
PackedRecord = tuple[int, int, str, str, str, str, tuple[bytes, Links]]
Entry = tuple[list[Record | PackedRecord], Facts]


def _module_fingerprint(module: Any) -> str:
    """Where ``module``'s code is and its size and mtime: changes with any upgrade of it.
    A ``stat`` instead of ``importlib.metadata.version``, which scans every installed
    distribution (tens of ms at each CLI start). ``module`` may be a name: found without
    importing it (croniter is needed only when a schedule is checked)."""
    if isinstance(module, str):
        found = importlib.util.find_spec(module)
        path = found.origin if found is not None else None
    else:
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
        # found, not imported: a warm load parses and validates nothing
        _module_fingerprint("yaml"),
        _module_fingerprint("croniter"),
        _module_fingerprint("fastjsonschema"),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


class SpecCache:
    """Directory-backed cache: ``<dir>/<version>/<blob[:2]>/<blob>``, one marshal file per blob;
    ``<dir>/<version>/code/<name>``, the compiled schema validators (``get_code``); and
    ``<dir>/<version>/memo/<name>``, values derived from them (``get_value``)."""

    def __init__(self, directory: Path, *, version: str | None = None) -> None:
        self.directory = Path(directory)
        self.version = version or cache_version()
        self.root = self.directory / self.version
        self._root_text = str(self.root)
        self.hits = 0
        self.misses = 0
        self._checked_root = False

    def _path(self, blob_id: str) -> Path:
        return Path(self._path_text(blob_id))

    def _path_text(self, blob_id: str) -> str:
        # a str, not a Path: a warm load reads one entry per file of the fleet
        if _BLOB_ID.fullmatch(blob_id) is None:
            raise ValueError(f"not a git blob id: {blob_id!r}")
        return os.path.join(self._root_text, blob_id[:2], blob_id)

    def get(self, blob_id: str) -> list[Record] | None:
        """The records stored under ``blob_id`` (a key of records only, e.g. the resolved
        records of a shared definition), or None (absent or unreadable: a miss)."""
        stored = self._read(blob_id)
        if stored is None or isinstance(stored, list):
            return stored
        self._missed()
        return None

    def put(self, blob_id: str, records: list[Record]) -> None:
        """Store ``records`` atomically (readers never see a half-written file)."""
        self._write(blob_id, records)

    def get_entry(self, blob_id: str) -> Entry | None:
        """The records and facts stored for a file's ``blob_id``, or None (a miss)."""
        stored = self._read(blob_id)
        if stored is None:
            return None
        if (isinstance(stored, tuple) and len(stored) == 2 and isinstance(stored[0], list)
                and isinstance(stored[1], tuple)):
            return stored
        self._missed()
        return None

    def put_entry(self, blob_id: str, records: list[Record | PackedRecord],
                  facts: Facts) -> None:
        """Store a file's ``records`` (packed: ``spec/facts.py``) and their ``facts``
        atomically."""
        self._write(blob_id, (records, facts))

    def get_code(self, name: str, key: str) -> tuple[str, CodeType] | None:
        """A compiled validator kept under ``name`` for ``key`` (``spec.validate.CodeStore``);
        None when absent, unreadable or made for another key."""
        try:
            stored = marshal.loads((self.root / "code" / name).read_bytes())  # noqa: S302
        except (OSError, EOFError, ValueError, TypeError):
            return None
        if (isinstance(stored, tuple) and len(stored) == 3 and stored[0] == key
                and isinstance(stored[1], str) and isinstance(stored[2], CodeType)):
            return stored[1], stored[2]
        return None

    def put_code(self, name: str, key: str, entry: tuple[str, CodeType]) -> None:
        """Keep a compiled validator (``get_code``), atomically; a failed write only costs
        speed."""
        self._store(self.root / "code" / name, marshal.dumps((key, *entry)))

    def get_value(self, name: str) -> Any:
        """A value kept under ``name`` (``put_value``): plain data a later process may reuse,
        derived from what the version covers (``source/revisions.py``'s memo); None when
        absent or unreadable."""
        try:
            return marshal.loads((self.root / "memo" / name).read_bytes())  # noqa: S302
        except (OSError, EOFError, ValueError, TypeError):
            return None

    def put_value(self, name: str, value: Any) -> None:
        """Keep ``value`` under ``name``, atomically; a failed write only costs speed."""
        try:
            data = marshal.dumps(value)
        except ValueError:
            return
        self._store(self.root / "memo" / name, data)

    def _missed(self) -> None:
        """What was read is not of the shape asked for (another format): a miss."""
        self.misses += 1
        self.hits -= 1  # _read counted a hit

    def _read(self, blob_id: str) -> Any:
        path = self._path_text(blob_id)  # a malformed id is the caller's bug: raise, do not miss
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
            stored = marshal.loads(raw)  # noqa: S302 - our own cache directory, plain data only
        except (OSError, EOFError, ValueError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return stored

    def _write(self, blob_id: str, value: Any) -> None:
        self._store(self._path(blob_id), marshal.dumps(value))

    def _store(self, path: Path, data: bytes) -> None:
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
            if bucket.name in ("code", "memo"):  # get_code, get_value: not blob entries
                continue
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
