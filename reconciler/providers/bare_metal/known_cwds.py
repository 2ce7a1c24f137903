"""The working directory of each unit's main process as last observed, per host, kept in the
state directory so that the next process of the reconciler (the next ``apply``) knows it too.

An observation tells which release a unit's process runs by the process's working directory.
Reading it costs a process on the host where root may not read another user's
``/proc/PID/cwd`` (a container's root without ``CAP_SYS_PTRACE``, a ``DynamicUser=`` unit):
``setpriv`` as the process's own user, one per unit. A process's identity (its MainPID and
start time) never comes back, and its working directory is the one systemd gave it at start
(``WorkingDirectory=``, resolved then), so a directory known for an identity stands until the
identity changes: the observation script is told the identity it was known for and reads the
directory only when the unit's process is another one.

The file holds hints, not truth: an entry whose identity does not match the host's process is
ignored, an unreadable file is an empty one, and a lost write costs a read next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# unit -> ("MainPID/ExecMainStartTimestamp", working directory) of its process as last observed
UnitCwds = dict[str, tuple[str, str]]

_FORMAT = 1


class KnownCwds:
    """Each host's ``UnitCwds``, loaded from ``path`` on first use, saved by ``save``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: kept in memory only
        self._hosts: dict[str, UnitCwds] | None = None
        self._saved: dict[str, UnitCwds] = {}

    def host(self, host_id: str) -> UnitCwds:
        """The live mapping of ``host_id``'s units: what observations learn goes into it."""
        if self._hosts is None:
            self._hosts = self._load()
            self._saved = {h: dict(units) for h, units in self._hosts.items()}
        return self._hosts.setdefault(host_id, {})

    def forget(self, host_id: str, unit: str) -> None:
        self.host(host_id).pop(unit, None)

    def _load(self) -> dict[str, UnitCwds]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("known working directories unreadable, ignored",
                        extra={"path": str(self.path), "error": str(exc)})
            return {}
        hosts: dict[str, UnitCwds] = {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return hosts
        for host_id, units in (data.get("hosts") or {}).items():
            if not isinstance(units, dict):
                continue
            hosts[str(host_id)] = {
                str(unit): (entry[0], entry[1]) for unit, entry in units.items()
                if isinstance(entry, list) and len(entry) == 2
                and all(isinstance(part, str) for part in entry)
            }
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
                "hosts": {h: {u: list(e) for u, e in units.items()}
                          for h, units in current.items()}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".cwds-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(data, out, separators=(",", ":"))
                os.replace(temp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:  # a hint lost: the next process reads the directories again
            log.warning("known working directories not saved",
                        extra={"path": str(self.path), "error": str(exc)})
            return
        self._saved = {h: dict(units) for h, units in current.items()}
