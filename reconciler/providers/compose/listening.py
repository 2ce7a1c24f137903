"""What a compose replica's container listens on, read inside it (``docker exec``).

The health gate asks it after a passing probe (``Capabilities.reports_listening``): a probe
answered while the container's processes hold no listening socket was answered by another
process (with ``network_mode: host``, one still holding the port), and one answered on a port
they hold was theirs. The container's processes are every process its PID namespace shows;
what they listen on is read as ``providers/sockets.py`` says, in its network namespace. An image
without a POSIX shell, ``ls``, ``sed`` and ``awk`` (a distroless one), or a process the exec's
user cannot read, tells nothing: the gate's time rule decides then.
"""

from __future__ import annotations

from reconciler.errors import ProviderError
from reconciler.providers import sockets
from reconciler.providers.compose.engine import DockerEngine
from reconciler.providers.contract import Listening

LISTENING_TIMEOUT_S = 15.0

# Arguments: the awk program ``sockets.TALLY``. Every process of the container is unit 1's, read
# in the exec's own network namespace. A process that ended since it was listed is no loss; one
# whose descriptors cannot be read is ("unreadable 1": nobody to read them as).
CONTAINER_SCRIPT = r"""map="net:$$:1" dirs=
for d in /proc/[0-9]*/fd; do p=${d#/proc/}; map="$map ${p%/fd}:1" dirs="$dirs $d"; done
LC_ALL=C ls -l "/proc/$$/ns/net" $dirs 2>&1 | awk -v map="$map" -v retried=1 "$1"
"""


async def container_listening(engine: DockerEngine, container: str) -> Listening | None:
    """What ``container``'s processes listen on; None when that cannot be read there."""
    try:
        result = await engine.exec(
            container, ["sh", "-c", CONTAINER_SCRIPT, "fraisier-listening", sockets.TALLY],
            LISTENING_TIMEOUT_S, None)
    except ProviderError:
        return None  # gone, or no shell in the image
    if not result.ok:
        return None
    return sockets.parse_tally(result.stdout.decode(errors="replace"), 1)[0]
