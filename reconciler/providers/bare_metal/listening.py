"""What a systemd unit's processes listen on, read on its host.

The health gate asks it after a passing probe (``Capabilities.reports_listening``): a probe
answered while the unit's processes hold no listening socket was answered by another process
(an older one still holding the port), and one answered on a port they hold was theirs.

The unit's processes are its cgroup's (``cgroup.procs`` of the unified hierarchy, mounted at
``/sys/fs/cgroup`` or, hybrid, ``/sys/fs/cgroup/unified``, or of v1's ``name=systemd``), found
from the main process, whose cgroup must be the unit's: a pid reused by another process is not
taken for it. What they listen on is read as ``providers/sockets.py`` says, in the main
process's network namespace; the units of a host asked meanwhile share one command.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from reconciler.errors import ProviderError
from reconciler.providers import sockets
from reconciler.providers.bare_metal.batches import LOOK_LINGER_S, RequestBatches
from reconciler.providers.contract import Listening
from reconciler.transport import Transport

LISTENING_TIMEOUT_S = 15.0

# Arguments: the awk program ``sockets.TALLY``, then pairs of a main pid and its unit, numbered
# from 1. Prints "gone N" for a pid that is not its unit's (its cgroup says so), "unreadable N",
# or what ``TALLY`` prints: nothing at all for a unit without sockets. The units' processes are
# listed with shell builtins and all their descriptors read by one ``ls`` and one ``awk``,
# whatever the number of units: a few processes per unit were most of what a gate's look cost a
# host of 50 Services. A sandboxed process runs as another user and is not ptrace-able by a root
# without CAP_SYS_PTRACE (a container): its descriptors are then read as its own user, as the
# observe script reads its cwd.
LISTENING_SCRIPT = r"""set -f
tally=$1
shift
n=0 map= dirs= nets=
while [ "$#" -ge 2 ]; do
  n=$((n + 1)) pid=$1 unit=$2 cg= cg1= pids=
  shift 2
  { while IFS= read -r line; do
      case $line in
        0::*) cg=${line#0::} ;;
        *:name=systemd:*) cg1=${line#*:name=systemd:} ;;
      esac
    done < "/proc/$pid/cgroup"; } 2>/dev/null
  case $cg$cg1 in */"$unit"|*/"$unit"/*) ;; *) echo "gone $n"; continue ;; esac
  for procs in "/sys/fs/cgroup$cg" "/sys/fs/cgroup/unified$cg" "/sys/fs/cgroup/systemd$cg1"
  do
    { while IFS= read -r p; do pids="$pids $p"; done < "$procs/cgroup.procs"; } 2>/dev/null
    [ -n "$pids" ] && break
  done
  [ -n "$pids" ] || pids=$pid
  map="$map net:$pid:$n" nets="$nets /proc/$pid/ns/net"
  for p in $pids; do map="$map $p:$n" dirs="$dirs /proc/$p/fd"; done
done
[ -n "$dirs" ] || exit 0
LC_ALL=C ls -l $nets $dirs 2>&1 | awk -v map="$map" -v retried= "$tally" |
while IFS= read -r line; do
  case $line in
    "retry "*)
      set -- $line
      n=$2 pid=$3 map="net:$3:$2" dirs=
      shift 3
      for p do map="$map $p:$n" dirs="$dirs /proc/$p/fd"; done
      ids=$(stat -c '%u %g' "/proc/$pid" 2>/dev/null) || { echo "gone $n"; continue; }
      LC_ALL=C setpriv --reuid="${ids% *}" --regid="${ids#* }" --clear-groups \
        ls -l "/proc/$pid/ns/net" $dirs 2>&1 | awk -v map="$map" -v retried=1 "$tally" ;;
    *) printf '%s\n' "$line" ;;
  esac
done
exit 0
"""
MAX_BATCH = 64  # units per remote command (a bounded command line)


class ListeningBatcher:
    """The listening sockets of one host's units, many per remote command: 50 Services gated
    at once on a host ask in a few round trips, not 50."""

    def __init__(self, transport: Transport) -> None:
        # weakly: the batcher is the value of a weak mapping keyed by the transport
        self.transport = weakref.ref(transport)
        self.batches: RequestBatches[tuple[int, str], Listening | None] = RequestBatches(
            self._run, limit=MAX_BATCH, linger=LOOK_LINGER_S)

    async def _run(self, asked: Sequence[tuple[int, str]]) -> list[Listening | None]:
        transport = self.transport()
        if transport is None:
            raise ProviderError("the host's connection was closed")
        args = [str(part) for pid, unit in asked for part in (pid, unit)]
        result = await transport.run(
            ["sh", "-c", LISTENING_SCRIPT, "fraisier-listening", sockets.TALLY, *args],
            timeout=LISTENING_TIMEOUT_S, check=False)
        if not result.ok:  # the script did not finish: nothing is known
            return [None] * len(asked)
        return sockets.parse_tally(result.stdout.decode(errors="replace"), len(asked))


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
