"""Whether a loopback port is free, for the benches that give their units fixed ports."""

from __future__ import annotations

import socket


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` now (a bind succeeds)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
