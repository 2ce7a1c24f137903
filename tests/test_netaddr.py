"""One rule for writing a host before ``:port`` or in a URL."""

from __future__ import annotations

import pytest

from reconciler.netaddr import host_port, url_host


@pytest.mark.parametrize(("host", "written"), [
    ("127.0.0.1", "127.0.0.1"),
    ("db.example.internal", "db.example.internal"),
    ("::1", "[::1]"),
    ("fe80::1%eth0", "[fe80::1%eth0]"),
    ("[::1]", "[::1]"),  # already bracketed: not twice
])
def test_url_host_brackets_an_ipv6_literal_once(host: str, written: str) -> None:
    assert url_host(host) == written


def test_host_port() -> None:
    assert host_port("::1", 9464) == "[::1]:9464"
    assert host_port("127.0.0.1", 22) == "127.0.0.1:22"
    assert host_port("[::1]", 22) == "[::1]:22"
