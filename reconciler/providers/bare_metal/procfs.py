"""What /proc says about a process (Linux): enough to tell "our process" from a reused PID."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from reconciler.providers import sockets
from reconciler.providers.contract import Listening

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, Z, T, X, ...
    pgrp: int
    start_time: int  # clock ticks after boot (field 22): with the pid, a unique identity

    @property
    def dead(self) -> bool:
        """Exited but not yet reaped (zombie) or being torn down."""
        return self.state in ("Z", "X", "x")


# Clock ticks per second of /proc's times: USER_HZ, fixed at 100 by the kernel's ABI.
USER_HZ = 100


def parse_stat(pid: int, raw: str) -> ProcStat:
    """The fields of a /proc/<pid>/stat line (ValueError/IndexError when it is not one)."""
    # The command name (field 2) is in parentheses and may itself contain spaces and ")".
    rest = raw[raw.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(pid=pid, state=rest[0], pgrp=int(rest[5 - 3]), start_time=int(rest[22 - 3]))


def read_stat(pid: int) -> ProcStat | None:
    """Fields of /proc/<pid>/stat, or None when no such process exists."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
        return None
    return parse_stat(pid, raw)


def stat_of(pid: int, stat_line: str) -> ProcStat | None:
    """The fields of process ``pid``'s /proc/<pid>/stat line as read on a host; None when the
    line is missing or is not that process's."""
    if not stat_line.startswith(f"{pid} ("):
        return None
    try:
        return parse_stat(pid, stat_line)
    except (ValueError, IndexError):
        return None


def age_s(pid: int, stat_line: str, uptime_line: str) -> float | None:
    """How long process ``pid`` has run, from its /proc/<pid>/stat line and /proc/uptime read
    on the same host: both count from boot in the same clock (the start time is in ticks, so
    the age is rounded down to one). None when either is missing or is not what it should be."""
    stat = stat_of(pid, stat_line)
    try:
        uptime = float(uptime_line.split()[0])
    except (ValueError, IndexError):
        return None
    if stat is None:
        return None
    return max(0.0, uptime - (stat.start_time + 1) / USER_HZ)


def start_time(pid: int) -> int | None:
    stat = read_stat(pid)
    return stat.start_time if stat else None


def group_members(pgrp: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgrp``."""
    members = []
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        stat = read_stat(int(entry.name))
        if stat is not None and stat.pgrp == pgrp and not stat.dead:
            members.append(stat.pid)
    return members


# -- listening sockets ------------------------------------------------------------------------


def group_listening(pgrp: int) -> Listening | None:
    """What process group ``pgrp``'s live processes listen on (this machine); None when a
    member's file descriptors cannot be read (another user's process)."""
    members = group_members(pgrp)
    if not members:
        return None  # gone: the caller's watcher says how it ended
    links: list[str] = []
    for pid in members:
        fd_dir = PROC / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except FileNotFoundError:
            continue  # exited since
        except PermissionError:
            return None
        for name in names:
            try:
                links.append(os.readlink(fd_dir / name))
            except PermissionError:
                return None  # a socket unseen would read as "listens on nothing"
            except OSError:
                continue  # closed since
    inodes = sockets.socket_inodes(links)
    if not inodes:
        return Listening(frozenset(), 0)
    net = PROC / str(members[0]) / "net"  # the group's network namespace
    try:
        tcp = [*(net / "tcp").read_text().splitlines(), *_lines_if_any(net / "tcp6")]
        unix = (net / "unix").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return sockets.listening(tcp, unix, inodes)


def _lines_if_any(path: Path) -> list[str]:
    """The lines of a /proc file that exists only with its protocol (tcp6 without IPv6)."""
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
