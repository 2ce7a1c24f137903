"""The parsers of what /proc says about listening sockets (``providers/sockets.py``); the
providers that read them run against real processes in tests/providers/bare_metal/
test_listening.py and tests/providers/compose/test_listening.py."""

from __future__ import annotations

from reconciler.providers.contract import Listening
from reconciler.providers.sockets import listening, parse_tally, socket_inodes

# /proc/net/tcp lines (the fields after the inode cut: they are not read)
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  t inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 333 1
"""
UNIX = """Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 444 /run/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 555 /run/app.sock
"""


def test_only_the_given_sockets_in_listen_count() -> None:
    assert listening(TCP.splitlines(), UNIX.splitlines(), {111, 333, 444, 555}) \
        == Listening(frozenset({8080}), 1)
    # another process's listener (222) is not theirs; a connection (333) does not listen
    assert listening(TCP.splitlines(), UNIX.splitlines(), {333, 555}).none
    # a socket in none of the tables (UDP, another network namespace) may listen
    assert listening(TCP.splitlines(), UNIX.splitlines(), {333, 999}) \
        == Listening(frozenset(), 0, unknown_sockets=1)
    assert not listening(TCP.splitlines(), UNIX.splitlines(), {999}).none
    assert socket_inodes(["socket:[12]", "pipe:[13]", "/dev/null",
                                 "lrwx------ 1 root root 64 Dec  7 20:00 3 -> socket:[14]"]) \
        == {12, 14}


def test_a_tally_is_read_as_the_shell_printed_it() -> None:
    tcp = TCP.splitlines()[1]
    unix = UNIX.splitlines()[1]
    assert parse_tally(f"socket 1 111\nsocket 1 444\ntcp 1 {tcp}\nunix 1 {unix}\n"
                       "gone 3\n"  # unit 2: no socket at all
                       "socket 4 111\nunreadable 4\n"
                       "retry 5 1 2\nsocket 9 111\n", 5) \
        == [Listening(frozenset({8080}), 1), Listening(frozenset()), None, None,
            Listening(frozenset())]
    assert parse_tally("", 0) == []
