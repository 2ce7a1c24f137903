"""Which sockets a set of Linux processes listen on, from /proc: for providers whose instances'
processes they can read (``Capabilities.reports_listening``), on this machine or on a host.

A process's sockets are the ``socket:[inode]`` links of its file descriptors
(``/proc/<pid>/fd``); which of those listen, and on which TCP port, is in its network
namespace's tables (``/proc/<pid>/net/tcp``, ``tcp6``, ``unix``). On a host the tables are
filtered there by inode (a host may list thousands of sockets, a fleet's shared loopback more):
the awk program ``TALLY`` does it for many groups of processes at once, ``parse_tally`` reads
what it printed, ``listening`` parses the tables.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterable

from reconciler.providers.contract import Listening

_TCP_LISTEN = "0A"  # /proc/net/tcp's st of a socket in LISTEN
_UNIX_ACCEPTS = 0x10000  # /proc/net/unix's flag of a listening socket (__SO_ACCEPTCON)
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")

# An awk program, run where the processes are (on a host, in a container), reading ``ls -l`` of
# the fd folders of groups of processes ("units", numbered from 1) and of one main process's
# ``ns/net`` link per unit. ``map`` names them: "PID:N" per process of unit N, "net:PID:N" per
# main process. It prints "socket N INODE" per socket, then, reading each network namespace's
# TCP and unix tables once, each line for those inodes as "tcp N LINE" or "unix N LINE". A unit
# with a descriptor it may not read: "retry N MAINPID PIDS..." (for a caller that can read it
# again as the unit's own user), or "unreadable N" when ``retried`` is set.
TALLY = r"""
BEGIN {
  n = split(map, entries, " ")
  for (i = 1; i <= n; i++) {
    split(entries[i], f, ":")
    if (f[1] == "net") main[f[2]] = f[3]
    else { unit[f[1]] = f[2]; members[f[2]] = members[f[2]] " " f[1] }
  }
}
/^ls: / {
  if ($0 ~ /Permission denied/ && match($0, /\/proc\/[0-9]+\//)) {
    p = substr($0, RSTART + 6, RLENGTH - 7)
    if (p in unit) denied[unit[p]] = 1
    else if (p in main) denied[main[p]] = 1
  }
  next
}
/^\/proc\/[0-9]+\/fd:$/ { cur = substr($0, 7, length($0) - 10); next }
/ -> net:\[/ {
  if (match($0, /\/proc\/[0-9]+\/ns/)) ns[substr($0, RSTART + 6, RLENGTH - 9)] = $NF
  next
}
/ -> socket:\[[0-9]+\]$/ {
  if (cur in unit) {
    s = $NF
    gsub(/[^0-9]/, "", s)
    owner[s] = unit[cur]
    print "socket", unit[cur], s
  }
  next
}
function table(p, name, tag, column,   file, line, f) {
  file = "/proc/" p "/net/" name
  while ((getline line < file) > 0) {
    split(line, f, " ")
    if (f[column] in owner) print tag, owner[f[column]], line
  }
  close(file)
}
END {
  for (u in denied) {
    if (retried) { print "unreadable", u; continue }
    line = "retry " u
    for (p in main) if (main[p] == u) line = line " " p
    print line members[u]
  }
  for (p in main) {
    if (main[p] in denied) continue
    key = (p in ns) ? ns[p] : "pid:" p
    if (key in done) continue
    done[key] = 1
    table(p, "tcp", "tcp", 10)
    table(p, "tcp6", "tcp", 10)
    table(p, "unix", "unix", 7)
  }
}
"""
# Printed for a unit instead of its sockets: its processes are not there, or cannot be read.
GONE, UNREADABLE = "gone", "unreadable"


def socket_inodes(fd_links: Iterable[str]) -> set[int]:
    """The socket inodes among ``fd_links``: readlink of /proc/<pid>/fd/* (``socket:[N]``), or
    lines of ``ls -l`` of such folders, which end with it."""
    return {int(m.group(1)) for link in fd_links for m in _SOCKET_LINK.finditer(link)}


def listening(tcp_lines: Iterable[str], unix_lines: Iterable[str],
              inodes: Collection[int]) -> Listening:
    """Which of the sockets ``inodes`` listen: lines of /proc/<pid>/net/tcp and tcp6 (the TCP
    port of each in LISTEN) and of /proc/<pid>/net/unix (listening stream sockets). Headers and
    lines of other sockets are skipped; an inode in no line is counted unknown."""
    ports: set[int] = set()
    seen: set[int] = set()
    for line in tcp_lines:
        fields = line.split()
        # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        if len(fields) < 10 or not fields[9].isdigit() or int(fields[9]) not in inodes:
            continue
        seen.add(int(fields[9]))
        if fields[3] == _TCP_LISTEN:
            with contextlib.suppress(ValueError, IndexError):
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    unix = 0
    for line in unix_lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]
        if len(fields) < 7 or not fields[6].isdigit() or int(fields[6]) not in inodes:
            continue
        seen.add(int(fields[6]))
        with contextlib.suppress(ValueError):
            if int(fields[3], 16) & _UNIX_ACCEPTS:
                unix += 1
    return Listening(frozenset(ports), unix, len(set(inodes) - seen))


def parse_tally(output: str, asked: int) -> list[Listening | None]:
    """What ``TALLY`` printed for ``asked`` units, a ``Listening`` per unit in
    order (None for one "gone" or "unreadable")."""
    inodes: list[set[int]] = [set() for _ in range(asked)]
    tcp: list[list[str]] = [[] for _ in range(asked)]
    unix: list[list[str]] = [[] for _ in range(asked)]
    unknown: set[int] = set()
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        number, _, tail = rest.partition(" ")
        if not number.isdigit() or not 1 <= int(number) <= asked:
            continue
        at = int(number) - 1
        if word in (GONE, UNREADABLE):
            unknown.add(at)
        elif word == "socket" and tail.isdigit():
            inodes[at].add(int(tail))
        elif word == "tcp":
            tcp[at].append(tail)
        elif word == "unix":
            unix[at].append(tail)
    return [None if at in unknown else listening(tcp[at], unix[at], inodes[at])
            for at in range(asked)]
