"""What a systemd unit's processes listen on, read on its host in one command.

The health gate asks it after a passing probe (``Capabilities.reports_listening``): a probe
answered while the unit's processes hold no listening socket was answered by another process
(an older one still holding the port), and one answered on a port they hold was theirs.

The unit's processes are its cgroup's (``cgroup.procs`` of the unified hierarchy, mounted at
``/sys/fs/cgroup`` or, hybrid, ``/sys/fs/cgroup/unified``, or of v1's ``name=systemd``), found
from the main process, whose cgroup must be the unit's: a pid reused by another process is not
taken for it. Their sockets are the ``socket:[inode]`` links of their
file descriptors; which of those listen is read from the main process's network namespace
(``/proc/<pid>/net/{tcp,tcp6,unix}``), filtered on the host by inode (a host may list
thousands of sockets), and parsed here by ``procfs.listening``.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal import procfs
from reconciler.providers.bare_metal.batches import RequestBatches
from reconciler.providers.contract import Listening
from reconciler.transport import Transport

LISTENING_TIMEOUT_S = 15.0

# Arguments: pairs of a main pid and its unit. For each pair, a line "unit" and then: "gone" (the
# pid is not the unit's), "unreadable" (its file descriptors cannot be read), or a "socket N"
# line per socket inode and each line of the net tables for those inodes, prefixed by the table
# ("tcp ..." or "unix ..."). A sandboxed process runs as another user and is not ptrace-able by
# a root without CAP_SYS_PTRACE (a container): its descriptors are then read as its own user,
# as the observe script reads its cwd.
LISTENING_SCRIPT = r"""one() {
  pid=$1 unit=$2 cg= cg1=
  { while IFS= read -r line; do
      case $line in
        0::*) cg=${line#0::} ;;
        *:name=systemd:*) cg1=${line#*:name=systemd:} ;;
      esac
    done < "/proc/$pid/cgroup"; } 2>/dev/null
  case $cg$cg1 in */"$unit"|*/"$unit"/*) ;; *) echo gone; return ;; esac
  pids=
  for procs in "/sys/fs/cgroup$cg" "/sys/fs/cgroup/unified$cg" "/sys/fs/cgroup/systemd$cg1"
  do
    pids=$(cat -- "$procs/cgroup.procs" 2>/dev/null) && [ -n "$pids" ] && break
  done
  [ -n "$pids" ] || pids=$pid
  dirs=
  for p in $pids; do dirs="$dirs /proc/$p/fd"; done
  links=$(ls -l $dirs 2>/dev/null) || {
    ids=$(stat -c '%u %g' "/proc/$pid" 2>/dev/null)
    links=$(setpriv --reuid="${ids% *}" --regid="${ids#* }" --clear-groups \
      ls -l $dirs 2>/dev/null) || { echo unreadable; return; }
  }
  inodes=$(printf '%s\n' "$links" | sed -n 's/.*socket:\[\([0-9]*\)\]$/\1/p')
  [ -n "$inodes" ] || return
  printf 'socket %s\n' $inodes
  net=/proc/$pid/net
  awk -v own="$inodes" '
    BEGIN { n = split(own, list); for (i = 1; i <= n; i++) mine[list[i]] = 1 }
    FILENAME ~ /unix$/ { if ($7 in mine) print "unix", $0; next }
    $10 in mine { print "tcp", $0 }
  ' "$net/tcp" "$net/tcp6" "$net/unix" 2>/dev/null
}
while [ "$#" -ge 2 ]; do
  echo unit
  one "$1" "$2"
  shift 2
done
exit 0
"""
MAX_BATCH = 64  # units per remote command (a bounded command line)


def parse(output: str) -> list[Listening | None]:
    """What ``LISTENING_SCRIPT`` printed, a ``Listening`` per unit asked (None for "gone" or
    "unreadable")."""
    sections = output.split("unit\n")[1:]
    return [_section(text) for text in sections]


def _section(text: str) -> Listening | None:
    inodes: set[int] = set()
    tcp: list[str] = []
    unix: list[str] = []
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("gone", "unreadable"):
            return None
        if word == "socket" and rest.isdigit():
            inodes.add(int(rest))
        elif word == "tcp":
            tcp.append(rest)
        elif word == "unix":
            unix.append(rest)
    return procfs.listening(tcp, unix, inodes)


class ListeningBatcher:
    """The listening sockets of one host's units, many per remote command: 50 Services gated
    at once on a host ask in a few round trips, not 50."""

    def __init__(self, transport: Transport) -> None:
        # weakly: the batcher is the value of a weak mapping keyed by the transport
        self.transport = weakref.ref(transport)
        self.batches: RequestBatches[tuple[int, str], Listening | None] = RequestBatches(
            self._run, limit=MAX_BATCH)

    async def _run(self, asked: Sequence[tuple[int, str]]) -> list[Listening | None]:
        transport = self.transport()
        if transport is None:
            raise ProviderError("the host's connection was closed")
        args = [str(part) for pid, unit in asked for part in (pid, unit)]
        result = await transport.run(["sh", "-c", LISTENING_SCRIPT, "fraisier-listening",
                                           *args], timeout=LISTENING_TIMEOUT_S, check=False)
        answers = parse(result.stdout.decode(errors="replace")) if result.ok else []
        if len(answers) != len(asked):  # the script did not finish: nothing is known
            return [None] * len(asked)
        return answers


_BATCHERS: weakref.WeakKeyDictionary[Transport, ListeningBatcher] = weakref.WeakKeyDictionary()


async def unit_listening(transport: Transport, pid: int, unit: str) -> Listening | None:
    """What ``unit`` listens on while ``pid`` is its main process (None: it is not, or its
    descriptors cannot be read); asked together with the host's other units asked meanwhile.
    A host that does not answer raises ``ProviderError``."""
    return await listening_batcher(transport).batches.ask((pid, unit))


def listening_batcher(transport: Transport) -> ListeningBatcher:
    batcher = _BATCHERS.get(transport)
    if batcher is None:
        batcher = _BATCHERS[transport] = ListeningBatcher(transport)
    return batcher
