"""Which sockets a set of Linux processes listen on, from /proc: for providers whose instances'
processes they can read (``Capabilities.reports_listening``), on this machine or on a host.

A process's sockets are the ``socket:[inode]`` links of its file descriptors
(``/proc/<pid>/fd``); which of those listen, and on which TCP port, is in its network
namespace's tables (``/proc/<pid>/net/tcp``, ``tcp6``, ``unix``). On a host the tables are
filtered there by inode (a host may list thousands of sockets, a fleet's shared loopback more):
``REPORT_FUNCTION`` prints a report, ``parse_report`` reads it, ``listening`` parses the tables.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterable

from reconciler.providers.contract import Listening

_TCP_LISTEN = "0A"  # /proc/net/tcp's st of a socket in LISTEN
_UNIX_ACCEPTS = 0x10000  # /proc/net/unix's flag of a listening socket (__SO_ACCEPTCON)
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")

# A POSIX shell function: ``report LINKS NET`` prints, for the ``ls -l`` lines of fd folders
# LINKS, a "socket N" line per socket inode, then each line of the tables in folder NET for
# those inodes, prefixed by its table ("tcp ..." or "unix ..."). Nothing at all: no socket.
REPORT_FUNCTION = r"""report() {
  inodes=$(printf '%s\n' "$1" | sed -n 's/.*socket:\[\([0-9]*\)\]$/\1/p')
  [ -n "$inodes" ] || return 0
  printf 'socket %s\n' $inodes
  awk -v own="$inodes" '
    BEGIN { n = split(own, list); for (i = 1; i <= n; i++) mine[list[i]] = 1 }
    FILENAME ~ /unix$/ { if ($7 in mine) print "unix", $0; next }
    $10 in mine { print "tcp", $0 }
  ' "$2/tcp" "$2/tcp6" "$2/unix" 2>/dev/null
}
"""
# Printed instead of a report: the processes are not (all) there, or cannot be read.
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


def parse_report(text: str) -> Listening | None:
    """What ``report`` printed (or ``GONE``/``UNREADABLE``: None)."""
    inodes: set[int] = set()
    tcp: list[str] = []
    unix: list[str] = []
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word in (GONE, UNREADABLE):
            return None
        if word == "socket" and rest.isdigit():
            inodes.add(int(rest))
        elif word == "tcp":
            tcp.append(rest)
        elif word == "unix":
            unix.append(rest)
    return listening(tcp, unix, inodes)
