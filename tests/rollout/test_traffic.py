"""Traffic routers against a real nginx on loopback in front of two real HTTP backends.

nginx runs from a temporary directory with its own configuration (pid, logs and temp paths in
that directory, listening on 127.0.0.1:<free port>); the backends are threaded HTTP servers that
answer their own name. Every request loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from reconciler.rollout.traffic import (
    Backend,
    CommandRouter,
    InvalidBackend,
    NginxRouter,
    TrafficError,
    backends_env_value,
    render_upstream,
    router_from_spec,
)
from reconciler.transport.local import LocalTransport
from tests.helpers import free_port, need

pytestmark = pytest.mark.timeout(60)


# --- backends ------------------------------------------------------------------------------


class _NameHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed ACK

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class HttpBackend:
    name: str
    port: int

    def backend(self, weight: int = 1) -> Backend:
        return Backend("127.0.0.1", self.port, weight)


@pytest.fixture
def backends() -> Iterator[tuple[HttpBackend, HttpBackend]]:
    servers = []
    for name in ("blue", "green"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _NameHandler)
        server.daemon_threads = True
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
    try:
        yield (HttpBackend("blue", servers[0].server_address[1]),
               HttpBackend("green", servers[1].server_address[1]))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# --- nginx ---------------------------------------------------------------------------------


@dataclass
class Nginx:
    binary: str
    dir: Path
    config: Path
    upstream_file: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def master_pid(self) -> int:
        return int((self.dir / "nginx.pid").read_text().strip())

    def workers(self) -> set[int]:
        pid = self.master_pid()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(c) for c in children}

    def router(self, **kwargs: object) -> NginxRouter:
        args: dict[str, object] = {
            "upstream_file": str(self.upstream_file), "upstream": "svc", "service": "svc",
            "config": str(self.config), "nginx": self.binary,
        }
        args.update(kwargs)
        return NginxRouter(**args)  # type: ignore[arg-type]


def _nginx_binary() -> str | None:
    return shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@pytest.fixture
def nginx(tmp_path: Path, backends: tuple[HttpBackend, HttpBackend],
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Nginx]:
    binary = _nginx_binary()
    need(binary is not None,
         "nginx is not installed (apt-get install -y --no-install-recommends nginx)")
    assert binary is not None
    # the router finds `nginx` on PATH (as the reconciler does)
    monkeypatch.setenv("PATH", os.path.dirname(binary) + ":" + os.environ.get("PATH", ""))
    port = free_port()
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    upstream_file = conf_d / "upstream.conf"
    upstream_file.write_text(render_upstream("svc", [backends[0].backend()]))
    temp = "".join(
        f"    {kind}_temp_path {tmp_path}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = tmp_path / "nginx.conf"
    config.write_text(f"""
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log notice;
events {{ worker_connections 512; }}
http {{
    access_log off;
{temp}
    include {conf_d}/*.conf;
    server {{
        listen 127.0.0.1:{port};
        keepalive_timeout 30s;
        location / {{ proxy_pass http://svc; }}
    }}
}}
""")
    os.chmod(tmp_path, 0o755)  # workers run as nobody when nginx starts as root
    import subprocess

    started = subprocess.run([binary, "-e", str(tmp_path / "error.log"), "-c", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    server = Nginx(binary, tmp_path, config, upstream_file, port)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        assert time.monotonic() < deadline, (tmp_path / "error.log").read_text()
        time.sleep(0.05)
    pid = server.master_pid()
    while not server.workers():  # the master listens before it forks its worker
        assert time.monotonic() < deadline, (tmp_path / "error.log").read_text()
        time.sleep(0.02)
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _get(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.text


@dataclass
class Request:
    started: float
    body: str | None
    error: str | None


def _no_response(exc: httpx.HTTPError) -> bool:
    """True when the connection died before any byte of a response came back."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending a response" in str(exc)
    cause: BaseException | None = exc
    while cause is not None:  # httpcore wraps anyio's BrokenResourceError, which wraps the reset
        if isinstance(cause, ConnectionResetError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


async def _hammer(url: str, keepalive: bool, stop: asyncio.Event, out: list[Request],
                  races: list[float]) -> None:
    """Sequential GETs until ``stop`` (bounded: 20,000 requests, 30 s)."""
    limits = httpx.Limits(max_keepalive_connections=4 if keepalive else 0)
    headers = {} if keepalive else {"Connection": "close"}
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5, limits=limits, headers=headers) as client:
        for _ in range(20_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                try:
                    response = await client.get(url)
                except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                    # HTTP/1.1's keep-alive race: the old worker closed this idle connection
                    # (graceful shutdown) as the request went out. RFC 9112 §9.3.1 lets a client
                    # retry an idempotent request that got no response; browsers, curl and Go do.
                    # httpx does not, so this client does, once, and the race is counted. The
                    # close shows as EOF before any response (RemoteProtocolError) or, when the
                    # request bytes had already reached the closing socket, as a reset (the
                    # kernel answers unread data with RST: ReadError).
                    if not keepalive or not _no_response(exc):
                        raise
                    races.append(started)
                    response = await client.get(url)
                if response.status_code == 200:
                    out.append(Request(started, response.text, None))
                else:
                    out.append(Request(started, None, f"HTTP {response.status_code}"))
            except httpx.HTTPError as exc:
                out.append(Request(started, None, repr(exc)))


# --- tests ---------------------------------------------------------------------------------


async def test_switch_under_load_drops_nothing(nginx: Nginx,
                                               backends: tuple[HttpBackend, HttpBackend]) -> None:
    blue, green = backends
    router = router_from_spec(
        {"nginx": {"upstreamFile": str(nginx.upstream_file), "config": str(nginx.config),
                   "upstream": "svc"}},
        service="svc",
    )
    assert await _get(nginx.url) == "blue"
    stop = asyncio.Event()
    logs: dict[str, list[Request]] = {"keepalive-1": [], "keepalive-2": [],
                                      "close-1": [], "close-2": []}
    races: list[float] = []
    loops = [asyncio.create_task(_hammer(nginx.url, name.startswith("keepalive"), stop, out,
                                         races))
             for name, out in logs.items()]
    # (route() called, route() returned, expected answer afterwards)
    phases: list[tuple[float, float, str]] = []
    try:
        await asyncio.sleep(0.3)
        for target in (green, blue, green, blue):
            called = time.monotonic()
            await router.route([target.backend()])
            returned = time.monotonic()
            phases.append((called, returned, target.name))
            # let every loop make a few requests against the new upstream (bounded wait)
            deadline = returned + 10
            while time.monotonic() < deadline and any(
                    sum(r.started >= returned for r in out[-10:]) < 8 for out in logs.values()):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*loops)

    for name, requests in logs.items():
        failed = [r for r in requests if r.error]
        assert not failed, f"{name}: {len(failed)} of {len(requests)} failed: {failed[:3]}"
        for i, (_called, returned, expected) in enumerate(phases):
            next_call = phases[i + 1][0] if i + 1 < len(phases) else float("inf")
            after = [r.body for r in requests if returned <= r.started < next_call]
            assert len(after) >= 5, f"{name}: too few requests after switch {i} to test it"
            wrong = [b for b in after if b != expected]
            assert not wrong, f"{name}: after switch {i} to {expected}: {wrong[:3]}"
    assert sum(len(r) for r in logs.values()) > 200
    # a race needs an idle keep-alive connection of an old worker: at most one per client and
    # switch, and only while a switch was in progress
    assert len(races) <= 2 * len(phases), races
    # (a request's start is stamped just before httpx sends it: allow a little scheduling slack)
    assert all(any(called - 0.5 <= t <= returned for called, returned, _ in phases)
               for t in races), (races, phases)


async def test_weights_split_traffic(nginx: Nginx,
                                     backends: tuple[HttpBackend, HttpBackend]) -> None:
    blue, green = backends
    router = nginx.router()
    await router.route([blue.backend(80), green.backend(20)])
    text = nginx.upstream_file.read_text()
    assert f"server 127.0.0.1:{blue.port} weight=80;" in text
    assert f"server 127.0.0.1:{green.port} weight=20;" in text
    counts = {"blue": 0, "green": 0}
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):
            counts[(await client.get(nginx.url)).text] += 1
    # nginx's smooth weighted round robin is exact per cycle of 100 with one worker
    assert 70 <= counts["blue"] <= 90, counts
    # weight 0 leaves a backend out of the upstream entirely
    await router.route([blue.backend(0), green.backend(1)])
    assert str(blue.port) not in nginx.upstream_file.read_text()
    assert {await _get(nginx.url) for _ in range(10)} == {"green"}


async def test_same_backends_do_not_reload(nginx: Nginx,
                                           backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    router = nginx.router()
    await router.route([green.backend()])
    workers = nginx.workers()
    mtime = nginx.upstream_file.stat().st_mtime_ns
    await router.route([green.backend()])
    assert nginx.workers() == workers
    assert nginx.upstream_file.stat().st_mtime_ns == mtime
    assert await _get(nginx.url) == "green"


async def test_failed_check_restores_and_keeps_serving(
        nginx: Nginx, backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    before = nginx.upstream_file.read_text()
    workers = nginx.workers()
    # a second file, also included, that defines the same upstream: `nginx -t` rejects it
    other = nginx.upstream_file.parent / "other.conf"
    with pytest.raises(TrafficError) as caught:
        await nginx.router(upstream_file=str(other)).route([green.backend()])
    assert caught.value.code == "FR425"
    assert "configuration check failed" in str(caught.value)
    assert 'duplicate upstream "svc"' in str(caught.value)
    assert not other.exists()  # it did not exist before: removed again
    assert nginx.upstream_file.read_text() == before
    assert nginx.workers() == workers  # never reloaded
    assert await _get(nginx.url) == "blue"


async def test_unwritable_or_not_included_file(nginx: Nginx,
                                               backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    afile = nginx.dir / "afile"
    afile.write_text("not a directory")
    with pytest.raises(TrafficError, match=r"cannot (read|write) the upstream file"):
        await nginx.router(upstream_file=str(afile / "upstream.conf")).route([green.backend()])

    elsewhere = nginx.dir / "elsewhere" / "upstream.conf"
    with pytest.raises(TrafficError, match="does not include"):
        await nginx.router(upstream_file=str(elsewhere)).route([green.backend()])
    assert not elsewhere.exists()
    assert await _get(nginx.url) == "blue"


async def test_failed_reload_restores_previous_file(
        nginx: Nginx, backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    before = nginx.upstream_file.read_text()
    router = nginx.router(reload_command=[sys.executable, "-c",
                                          "import sys; print('reload refused'); sys.exit(3)"])
    with pytest.raises(TrafficError, match=r"exited 3.*reload refused"):
        await router.route([green.backend()])
    assert nginx.upstream_file.read_text() == before
    assert await _get(nginx.url) == "blue"


async def test_reload_that_never_happens_is_an_error(
        nginx: Nginx, backends: tuple[HttpBackend, HttpBackend]) -> None:
    # the reload command "succeeds" but reaches no nginx (e.g. the wrong instance)
    _blue, green = backends
    before = nginx.upstream_file.read_text()
    router = nginx.router(reload_command=[sys.executable, "-c", "pass"], reload_timeout=1.0)
    with pytest.raises(TrafficError, match=r"started no new worker within 1s"):
        await router.route([green.backend()])
    assert nginx.upstream_file.read_text() == before
    assert await _get(nginx.url) == "blue"


async def test_missing_nginx_binary(nginx: Nginx,
                                    backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    before = nginx.upstream_file.read_text()
    with pytest.raises(TrafficError, match=r"cannot run.*previous upstream restored"):
        await nginx.router(nginx="/nonexistent/nginx").route([green.backend()])
    assert nginx.upstream_file.read_text() == before


class SftpLikeTransport(LocalTransport):
    """The local host, read the way SFTP reads: /proc files report size 0, so they read empty
    (what the SSH transport without sudo returns for them)."""

    async def read_file(self, remote: str, *, limit: int | None = None) -> bytes | None:
        data = await super().read_file(remote, limit=limit)
        if data is not None and remote.startswith("/proc/") and limit is None:
            return b""
        return data


async def test_workers_are_found_when_proc_reads_empty(
        nginx: Nginx, backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    router = nginx.router(transport=SftpLikeTransport())
    children = await router._children(nginx.master_pid())
    assert children is not None and set(children) == nginx.workers()
    assert all("worker process" in title for title in children.values()), children
    old = nginx.workers()
    await router.route([green.backend()])
    assert nginx.workers() - old  # the router waited for the master's new worker
    assert {await _get(nginx.url) for _ in range(5)} == {"green"}


async def test_custom_reload_command_works(nginx: Nginx,
                                           backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    router = nginx.router(reload_command=[nginx.binary, "-c", str(nginx.config), "-s", "reload"])
    await router.route([green.backend()])
    assert {await _get(nginx.url) for _ in range(5)} == {"green"}


# --- command router and rendering (no nginx needed) ----------------------------------------


async def test_command_router_environment(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAISIER_TEST_SECRET", "do-not-leak")
    out = tmp_path / "env.txt"
    script = ("import os, sys; open(sys.argv[1], 'w').write("
              "os.environ['FRAISIER_BACKENDS'] + '|' + os.environ['FRAISIER_SERVICE'] + '|' "
              "+ os.environ.get('FRAISIER_TEST_SECRET', 'absent'))")
    router = router_from_spec({"command": [sys.executable, "-c", script, str(out)]},
                              service="api")
    assert isinstance(router, CommandRouter)
    await router.route([Backend("127.0.0.1", 8081, 3), Backend("::1", 8082, 1),
                        Backend("10.0.0.9", 8083, 0)])
    assert out.read_text() == "127.0.0.1:8081=3,[::1]:8082=1|api|absent"
    assert "python" in router.describe()


async def test_command_router_failure_carries_truncated_output() -> None:
    script = "import sys; print('x' * 10000 + ' the end'); sys.exit(4)"
    router = CommandRouter([sys.executable, "-c", script], service="api")
    with pytest.raises(TrafficError) as caught:
        await router.route([Backend("127.0.0.1", 8081)])
    message = str(caught.value)
    assert "exited 4" in message and "127.0.0.1:8081=1" in message
    assert message.endswith("the end") and len(message) < 2000


async def test_command_router_missing_binary() -> None:
    router = CommandRouter(["/nonexistent/switch-traffic"], service="api")
    with pytest.raises(TrafficError, match="cannot run"):
        await router.route([Backend("127.0.0.1", 8081)])


def test_render_and_validation() -> None:
    text = render_upstream("api", [Backend("10.0.0.2", 80, 1), Backend("10.0.0.1", 80, 5),
                                   Backend("10.0.0.3", 80, 0)], service="api")
    lines = text.splitlines()
    assert lines[0].startswith("# fraisier-upstream api ")
    assert lines[1:] == ["upstream api {", "    server 10.0.0.1:80 weight=5;",
                         "    server 10.0.0.2:80 weight=1;", "}"]
    # the digest follows the content
    assert render_upstream("api", [Backend("10.0.0.1", 80, 4)]).splitlines()[0] != lines[0]
    with pytest.raises(TrafficError, match="no backend with a positive weight"):
        render_upstream("api", [Backend("10.0.0.1", 80, 0)])
    with pytest.raises(TrafficError, match="invalid nginx upstream name"):
        render_upstream("a b", [Backend("10.0.0.1", 80)])
    for bad in ("10.0.0.1;", "evil}", "a b", "x#y", ""):
        with pytest.raises(ValueError, match="invalid backend address"):
            Backend(bad, 80)
    with pytest.raises(InvalidBackend, match="port") as caught:
        Backend("10.0.0.1", 0)
    assert isinstance(caught.value, TrafficError) and caught.value.code == "FR425"
    with pytest.raises(ValueError, match="negative weight"):
        Backend("10.0.0.1", 80, -1)
    # the same endpoint twice (an address override) sums its weights
    assert backends_env_value([Backend("h", 80, 1), Backend("h", 80, 2)]) == "h:80=3"


def test_router_from_spec_defaults() -> None:
    router = router_from_spec({"nginx": {"upstreamFile": "/etc/nginx/conf.d/api.conf"}},
                              service="api")
    assert isinstance(router, NginxRouter)
    assert router.upstream == "api" and router.config is None
    assert router.describe() == "nginx upstream api in /etc/nginx/conf.d/api.conf"
    with pytest.raises(TrafficError):
        router_from_spec({}, service="api")


async def test_address_override(nginx: Nginx, backends: tuple[HttpBackend, HttpBackend]) -> None:
    _blue, green = backends
    router = nginx.router(address="127.0.0.1")
    await router.route([Backend("some-host.example", green.port)])
    assert f"server 127.0.0.1:{green.port} weight=1;" in nginx.upstream_file.read_text()
    assert await _get(nginx.url) == "green"


