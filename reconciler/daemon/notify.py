"""A tiny sd_notify(3) client: tell systemd (``Type=notify``) we are ready, alive and how we are.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``NOTIFY_SOCKET``; a leading ``@`` names a socket in the abstract namespace (a NUL byte on the
wire). Outside systemd ``NOTIFY_SOCKET`` is unset and every call is a cheap no-op, so the daemon
can call these unconditionally. A failed send is logged once and never raises: losing a status
line must not take the reconciler down (the watchdog, if enabled, will notice a real hang).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("reconciler.daemon.notify")

_warned = False


def _address(env: str) -> str | bytes | None:
    if not env:
        return None
    if env.startswith("@"):
        return b"\0" + env[1:].encode()  # abstract namespace socket
    if env.startswith("/"):
        return env
    return None  # e.g. vsock: addresses, which this daemon never runs under


def notify(**fields: str | int) -> bool:
    """Send ``KEY=VALUE`` fields (``notify(READY=1, STATUS="...")``); True if a datagram went out.

    Keys are sent upper-case and in the given order. Values must not contain newlines (that
    would forge another field), so newlines are replaced by spaces.
    """
    global _warned
    address = _address(os.environ.get("NOTIFY_SOCKET", ""))
    if address is None or not fields:
        return False
    lines = [f"{key.upper()}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()]
    payload = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot notify systemd", extra={"error": str(exc)})
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1: startup finished (for ``Type=notify`` the unit becomes active now)."""
    if status is None:
        return notify(READY=1)
    return notify(READY=1, STATUS=status)


def reloading() -> bool:
    """RELOADING=1: a configuration reload started; follow with :func:`ready` when done."""
    return notify(RELOADING=1)


def stopping() -> bool:
    """STOPPING=1: shutdown began (systemd shows the unit as deactivating)."""
    return notify(STOPPING=1)


def status(text: str) -> bool:
    """STATUS=: one line shown by ``systemctl status`` (and ``StatusText``)."""
    return notify(STATUS=text)


def watchdog() -> bool:
    """WATCHDOG=1: keep-alive; must come more often than ``WatchdogSec`` or systemd restarts us."""
    return notify(WATCHDOG=1)


def watchdog_interval() -> float | None:
    """Seconds after which systemd declares us hung, or None when no watchdog is armed for us.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the environment must not answer for its parent.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


async def feed_watchdog(stopping: Callable[[], bool]) -> None:
    """WATCHDOG=1 every WatchdogSec/2, so systemd restarts a stopped or blocked daemon."""
    interval = watchdog_interval()
    if interval is None:
        return
    while not stopping():
        # Pinged while the event loop turns: a stopped or blocked process misses it. A long
        # pass (a slow health gate) is not a hang: every provider call has its own timeout.
        watchdog()
        await asyncio.sleep(interval / 2)
