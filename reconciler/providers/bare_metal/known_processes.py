"""Each unit's main process as last observed in full, per host, kept in the state directory so
that the next process of the reconciler (the next ``apply``) knows it too.

A full observation of a unit costs the host a ``systemctl show`` (a D-Bus GetAll of every
property of the unit, served by PID 1) and, where root may not read another user's
``/proc/PID/cwd`` (a container's root without ``CAP_SYS_PTRACE``, a ``DynamicUser=`` unit), a
``setpriv`` process to read the working directory that tells which release the process runs.
A process never comes back once gone (its PID and its start time in clock ticks since boot
name it), and while it runs, what systemd said of it stands: its MainPID, start timestamp,
invocation, restart count, user. So the observation script is told the process each unit was
known by, and for a unit that ``systemctl list-units`` (one cheap call for every unit) reports
active and running, whose process is that one still, whose unit file is the content systemd had
loaded then (the hash compared here) with no drop-in folder, and which is still enabled, only
what can change under a running process is read again (``current``, the unit file's hash, the
process's age). Anything else is observed in full.

The file holds hints, not truth: an entry whose process is not the host's is ignored, an
unreadable file is an empty one, and a lost write costs a full look next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_FORMAT = 2


@dataclass(frozen=True)
class KnownProcess:
    """A unit's main process as a full observation saw it."""

    pid: int
    start: int  # /proc/<pid>/stat field 22 (clock ticks after boot): with the pid, its identity
    cwd: str  # its working directory ("": unreadable)
    # What stands while this process runs, recorded when systemd had loaded the unit file
    # whose hash is ``unit_hash`` (NeedDaemonReload=no) and reported the unit active, running
    # and enabled; None when it did not (the unit is then always observed in full).
    unit_hash: str | None = None
    props: Mapping[str, str] | None = field(default=None, hash=False)

    @property
    def key(self) -> str:
        """How the observation script is told of it: "PID START"."""
        return f"{self.pid} {self.start}"

    @classmethod
    def from_json(cls, data: Any) -> KnownProcess | None:
        if not isinstance(data, dict):
            return None
        pid, start, cwd = data.get("pid"), data.get("start"), data.get("cwd")
        unit_hash, props = data.get("unit_hash"), data.get("props")
        if not (isinstance(pid, int) and isinstance(start, int) and isinstance(cwd, str)):
            return None
        if not (isinstance(unit_hash, str) and isinstance(props, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())):
            unit_hash, props = None, None
        return cls(pid, start, cwd, unit_hash, props)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["props"] = dict(self.props) if self.props is not None else None
        return data


# unit -> its main process as last observed in full
UnitProcesses = dict[str, KnownProcess]


class KnownProcesses:
    """Each host's ``UnitProcesses``, loaded from ``path`` on first use, saved by ``save``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: kept in memory only
        self._hosts: dict[str, UnitProcesses] | None = None
        self._saved: dict[str, UnitProcesses] = {}

    def host(self, host_id: str) -> UnitProcesses:
        """The live mapping of ``host_id``'s units: what observations learn goes into it."""
        if self._hosts is None:
            self._hosts = self._load()
            self._saved = {h: dict(units) for h, units in self._hosts.items()}
        return self._hosts.setdefault(host_id, {})

    def forget(self, host_id: str, unit: str) -> None:
        self.host(host_id).pop(unit, None)

    def _load(self) -> dict[str, UnitProcesses]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("known processes unreadable, ignored",
                        extra={"path": str(self.path), "error": str(exc)})
            return {}
        hosts: dict[str, UnitProcesses] = {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return hosts
        for host_id, units in (data.get("hosts") or {}).items():
            if not isinstance(units, dict):
                continue
            known = {str(unit): KnownProcess.from_json(entry) for unit, entry in units.items()}
            hosts[str(host_id)] = {u: k for u, k in known.items() if k is not None}
        return hosts

    def save(self) -> None:
        """Write the mappings when they changed since loaded or saved (atomically: a temporary
        file renamed over the old one, readable by the owner only)."""
        if self.path is None or self._hosts is None:
            return
        current = {h: units for h, units in self._hosts.items() if units}
        if current == {h: units for h, units in self._saved.items() if units}:
            return
        data = {"format": _FORMAT,
                "hosts": {h: {u: k.to_json() for u, k in units.items()}
                          for h, units in current.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".processes-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(data, out, separators=(",", ":"))
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:  # a hint lost: the next process observes those units in full
            log.warning("known processes not saved",
                        extra={"path": str(self.path), "error": str(exc)})
            return
        self._saved = {h: dict(units) for h, units in current.items()}
