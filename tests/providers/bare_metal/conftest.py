"""Fixtures for the bare-metal provider: real processes, a tiny real HTTP app, real exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.providers import ProviderContext, Release
from reconciler.providers.bare_metal import BareMetalProvider, create_provider
from reconciler.providers.bare_metal.procfs import start_time
from reconciler.spec.model import Resource, ResourceKey
from tests.helpers import free_port as free_port  # re-exported: tests import it from here

ENV = "test"

APP = """\
import http.server, os, sys

port = int(sys.argv[1])
version = open("VERSION").read().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            body = b"ok"
        else:
            body = f"{version} {os.environ.get('GREETING', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)


server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print(f"listening on {port} revision {version}", flush=True)
server.serve_forever()
"""


def make_resource(
    name: str, spec: dict[str, Any], kind: str = "Service", environment: str = ENV
) -> Resource:
    return Resource(
        key=ResourceKey(environment, kind, name), labels={}, spec=spec, file="test.yaml"
    )


def make_target(name: str = "local", **spec: Any) -> Resource:
    return make_resource(name, {"provider": "bare_metal", "transport": "local", **spec}, "Target")


@dataclass
class FolderExport:
    """An exporter that copies a folder, counting its calls (to prove reuse)."""

    source: Path
    calls: int = 0

    async def __call__(self, dest: Path) -> None:
        self.calls += 1
        await asyncio.to_thread(shutil.copytree, self.source, dest, dirs_exist_ok=True)


@dataclass
class AppSources:
    """One source folder per revision of the tiny HTTP app."""

    base: Path
    exports: dict[str, FolderExport] = field(default_factory=dict)

    def export(self, revision: str, extra: dict[str, str] | None = None) -> FolderExport:
        if revision not in self.exports:
            folder = self.base / revision
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "app.py").write_text(APP)
            (folder / "VERSION").write_text(revision + "\n")
            for name, text in (extra or {}).items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            self.exports[revision] = FolderExport(folder)
        return self.exports[revision]

    def release(
        self,
        resource: Resource,
        revision: str,
        env: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> Release:
        return Release(
            resource=resource,
            revision=revision,
            config_commit="c0ffee",
            export=self.export(revision, extra),
            env=dict(env or {}),
        )


@pytest.fixture
def sources(tmp_path: Path) -> AppSources:
    return AppSources(tmp_path / "sources")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def kill_leftovers(root: Path) -> None:
    """Safety net: SIGKILL every process a test left behind under ``root`` (by pidfile)."""
    for pidfile in root.rglob("run/*.pid"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            record = json.loads(pidfile.read_text())
            pid = int(record["pid"])
            if start_time(pid) == int(record["start_time"]):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
async def provider(state_dir: Path) -> AsyncIterator[BareMetalProvider]:
    from reconciler.providers import ProviderContext

    p = create_provider(make_target(), ProviderContext(state_dir=state_dir))
    try:
        yield p
    finally:
        await p.close()
        kill_leftovers(state_dir)


def new_provider(state_dir: Path, **target_spec: Any) -> BareMetalProvider:
    return create_provider(make_target(**target_spec), ProviderContext(state_dir=state_dir))


async def wait_for_http(url: str, expect: str | None = None, timeout: float = 10.0) -> str:
    """Poll ``url`` until it answers (with ``expect`` in the body, when given)."""
    deadline = time.monotonic() + timeout
    last = ""
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                response = await client.get(url)
                last = response.text
                if expect is None or expect in last:
                    return last
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer {expect!r} within {timeout}s (last: {last})")


async def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has exited (zombies count as exited)."""
    from reconciler.providers.bare_metal.procfs import read_stat

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = read_stat(pid)
        if stat is None or stat.dead:
            return True
        await asyncio.sleep(0.05)
    return False


PY = sys.executable


# -- SSH + systemd test hosts -------------------------------------------------------------------

# The test hosts share this machine's loopback (host network), so each host's copy of a Service
# listens on a port of its own, read from PORT_FILE (written per host by the fixtures below).
PORT_FILE = "/etc/fraisier-test-port"

HOST_APP = """\
import http.server, os, sys, urllib.request

port = int(open("/etc/fraisier-test-port").read())
version = open("VERSION").read().strip()
if sys.argv[1:] == ["check"]:  # exec health check, run on the host over SSH
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz" and os.environ.get("FAIL_HEALTH") == "1":
            self.send_response(500)
            self.end_headers()
            return
        body = f"{version} {os.environ.get('GREETING', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)


http.server.HTTPServer.allow_reuse_address = True
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print(f"listening on {port} revision {version}", flush=True)
server.serve_forever()
"""


def ssh_target_resource(hosts: Any, name: str = "hosts", **spec: Any) -> Resource:
    """A bare_metal Target over SSH (as root, known_hosts pinned) for InfraHost ``hosts``."""
    entries = [
        {
            "name": h.name,
            "address": h.address,
            "port": h.port,
            "user": "root",
            "identityFile": h.identity_file,
            "knownHosts": h.known_hosts,
        }
        for h in hosts
    ]
    return make_resource(
        name,
        {"provider": "bare_metal", "transport": "ssh", "hosts": entries, "keepReleases": 3,
         **spec},
        "Target",
    )


@dataclass
class HostApp:
    """The HTTP app, one source folder per revision, and each host's port."""

    base: Path
    ports: dict[str, int]
    exports: dict[str, FolderExport] = field(default_factory=dict)

    def export(self, revision: str) -> FolderExport:
        if revision not in self.exports:
            folder = self.base / revision
            (folder / "bin").mkdir(parents=True, exist_ok=True)
            (folder / "app.py").write_text(HOST_APP)
            (folder / "VERSION").write_text(revision + "\n")
            self.exports[revision] = FolderExport(folder)
        return self.exports[revision]

    def release(self, resource: Resource, revision: str,
                env: dict[str, str] | None = None) -> Release:
        return Release(resource=resource, revision=revision, config_commit="c0ffee",
                       export=self.export(revision), env=dict(env or {}))

    async def get(self, host: str, path: str = "/") -> tuple[int, str]:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{self.ports[host]}{path}")
            return response.status_code, response.text


def host_app_spec(**extra: Any) -> dict[str, Any]:
    return {
        "target": "hosts",
        "command": ["python3", "app.py"],
        "stopTimeout": "3s",
        "health": {"exec": {"command": ["python3", "app.py", "check"]}, "interval": "100ms",
                   "timeout": "2s", "startPeriod": "3s"},
        **extra,
    }


@pytest.fixture
def host_app(tmp_path: Path, ssh_hosts: Any) -> HostApp:
    ports: dict[str, int] = {}
    for host in ssh_hosts:
        ports[host.name] = free_port()
        host.run(["sh", "-c", 'printf %s "$1" >/etc/fraisier-test-port', "-",
                  str(ports[host.name])])
    return HostApp(tmp_path / "host-sources", ports)


@pytest.fixture
async def ssh_provider(ssh_hosts: Any, state_dir: Path) -> AsyncIterator[Any]:
    """The bare_metal provider over SSH on two test hosts (reset and leased)."""
    target = ssh_target_resource(ssh_hosts[:2])
    p = create_provider(target, ProviderContext(state_dir=state_dir))
    try:
        yield p
    finally:
        await p.close()
