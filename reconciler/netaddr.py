"""A host as written in a URL's authority or a ``host:port`` endpoint.

One rule for every module that prints or dials such an address: an IPv6 literal goes in
brackets (``[::1]:9464``), once; a name or an IPv4 address is written as it is.
"""

from __future__ import annotations


def url_host(host: str) -> str:
    """``host`` as it stands before ``:port`` or in a URL: an IPv6 literal bracketed."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal bracketed: ``[::1]:22``, ``10.0.0.5:22``."""
    return f"{url_host(host)}:{port}"
