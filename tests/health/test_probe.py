"""Single probes against a real HTTP server, real sockets and real commands."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest

from reconciler.health import probe
from reconciler.health.probes import probed_ports
from reconciler.providers import Instance
from reconciler.spec.durations import to_seconds
from reconciler.transport.local import LocalTransport
from tests.health.conftest import ScriptedServer, free_port

LOCAL = Instance(id="local", address="127.0.0.1")


@pytest.mark.timeout(10)
async def test_http_pass_replaces_host(server: ScriptedServer) -> None:
    result = await probe({"http": {"url": server.url()}}, LOCAL)
    assert result.ok, result.message
    assert result.message == f"http://127.0.0.1:{server.port}/healthz: status 200"
    assert 0 <= result.duration_s < 2
    assert server.hits == 1


@pytest.mark.timeout(10)
async def test_http_wrong_status(server: ScriptedServer) -> None:
    server.script = [(500, "boom")]
    result = await probe({"http": {"url": server.url(), "expectStatus": 200}}, LOCAL)
    assert not result.ok
    assert result.message == f"http://127.0.0.1:{server.port}/healthz: status 500, expected 200"


@pytest.mark.timeout(10)
async def test_http_unset_expect_status_means_any_2xx(server: ScriptedServer) -> None:
    server.script = [(204, ""), (503, "")]
    assert (await probe({"http": {"url": server.url()}}, LOCAL)).ok
    failed = await probe({"http": {"url": server.url()}}, LOCAL)
    assert not failed.ok
    assert failed.message.endswith("status 503, expected 2xx")


@pytest.mark.timeout(10)
async def test_http_expect_status_list_and_no_redirects(server: ScriptedServer) -> None:
    server.script = [(503, "")]
    assert (await probe({"http": {"url": server.url(), "expectStatus": [200, 503]}}, LOCAL)).ok
    redirect = await probe({"http": {"url": server.url("/redirect")}}, LOCAL)
    assert not redirect.ok
    assert "status 302, expected 2xx" in redirect.message


@pytest.mark.timeout(10)
async def test_http_body_contains(server: ScriptedServer) -> None:
    server.script = [(200, "all good: ok"), (200, "degraded")]
    check = {"http": {"url": server.url(), "bodyContains": "ok"}}
    assert (await probe(check, LOCAL)).ok
    mismatch = await probe(check, LOCAL)
    assert not mismatch.ok
    assert mismatch.message.endswith("status 200, body does not contain 'ok'")


@pytest.mark.timeout(10)
async def test_http_timeout_is_bounded(server: ScriptedServer) -> None:
    started = time.monotonic()
    result = await probe({"http": {"url": server.url("/slow")}, "timeout": "300ms"}, LOCAL)
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.message == f"http://127.0.0.1:{server.port}/slow: timed out after 0.3s"
    assert elapsed < 1.5


@pytest.mark.timeout(10)
async def test_http_connection_refused() -> None:
    port = free_port()
    result = await probe({"http": {"url": f"http://{{host}}:{port}/"}}, LOCAL)
    assert not result.ok
    # the error code's words, once: not asyncio's "Connect call failed ('127.0.0.1', …)"
    assert result.message == f"http://127.0.0.1:{port}/: Connection refused", result.message


@pytest.mark.timeout(10)
async def test_tcp_open_and_closed() -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        opened = await probe({"tcp": {"port": port}}, LOCAL)
        assert opened.ok
        assert opened.message == f"tcp 127.0.0.1:{port}: open"
    finally:
        listener.close()
        await listener.wait_closed()
    closed = await probe({"tcp": {"port": port}, "timeout": "1s"}, LOCAL)
    assert not closed.ok
    assert closed.message.startswith(f"tcp 127.0.0.1:{port}: ")


@pytest.mark.timeout(10)
async def test_tcp_explicit_host() -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.2", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        # the instance address does not listen there; the explicit host does
        result = await probe({"tcp": {"host": "127.0.0.2", "port": port}}, LOCAL)
        assert result.ok, result.message
    finally:
        listener.close()
        await listener.wait_closed()


@pytest.mark.timeout(10)
async def test_tcp_timeout_against_a_full_backlog() -> None:
    # A listening socket with a full backlog that never accepts: SYNs go unanswered.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                c = socket.socket()
                c.setblocking(False)
                try:
                    c.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(c)
            started = time.monotonic()
            result = await probe({"tcp": {"port": port}, "timeout": "300ms"}, LOCAL)
            elapsed = time.monotonic() - started
        finally:
            for c in fillers:
                c.close()
    assert not result.ok
    assert result.message == f"tcp 127.0.0.1:{port}: timed out after 0.3s"
    assert elapsed < 1.5


@pytest.mark.timeout(10)
async def test_exec_true_false_and_output(tmp_path: Path) -> None:
    assert (await probe({"exec": {"command": ["true"]}}, LOCAL)).ok
    failed = await probe(
        {"exec": {"command": [sys.executable, "-c", "print('not ready'); raise SystemExit(1)"]}},
        LOCAL,
    )
    assert not failed.ok
    assert failed.message == f"exec {sys.executable}: exit 1: not ready"
    ready = tmp_path / "ready"
    check = {"exec": {"command": ["test", "-f", str(ready)]}}
    assert not (await probe(check, LOCAL, transport=LocalTransport())).ok
    ready.touch()
    assert (await probe(check, LOCAL, transport=LocalTransport())).ok


@pytest.mark.timeout(10)
async def test_exec_runs_in_cwd(tmp_path: Path) -> None:
    check = {"exec": {"command": ["test", "-f", "ready"]}}
    assert not (await probe(check, LOCAL, cwd=str(tmp_path))).ok
    (tmp_path / "ready").touch()
    assert (await probe(check, LOCAL, cwd=str(tmp_path))).ok


@pytest.mark.timeout(10)
async def test_exec_timeout() -> None:
    started = time.monotonic()
    result = await probe({"exec": {"command": ["sleep", "30"]}, "timeout": "300ms"}, LOCAL)
    assert not result.ok
    assert "timed out after 0.3s" in result.message
    assert time.monotonic() - started < 2


@pytest.mark.timeout(10)
async def test_several_kinds_must_all_pass(server: ScriptedServer) -> None:
    port = free_port()
    result = await probe({"http": {"url": server.url()}, "tcp": {"port": port}}, LOCAL)
    assert not result.ok
    assert "status 200" in result.message
    assert f"tcp 127.0.0.1:{port}" in result.message


async def test_no_probe_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="none of http, tcp, exec"):
        await probe({"interval": "1s"}, LOCAL)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("0", 0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert to_seconds(text, 99.0) == pytest.approx(seconds)


def test_duration_defaults_and_errors() -> None:
    assert to_seconds(None, 7.0) == 7.0
    assert to_seconds(3, 7.0) == 3.0
    with pytest.raises(ValueError):
        to_seconds("10 parsecs", 1.0)
    with pytest.raises(ValueError):
        to_seconds("", 1.0)


@pytest.mark.timeout(30)
async def test_an_http_probe_loads_no_ca_bundle_and_no_http_client_library(
    server: ScriptedServer,
) -> None:
    """A probe of an http:// URL never does TLS (redirects are not followed): the process
    does not load the CA bundle for it (~30 ms of CPU, on a first gate's way). Nor does it
    import httpx (its import, with the rich and click of its command line, made a process's
    first probe take 60-90 ms): a probe is h11 on an asyncio connection, ~8 ms the first time.
    A process of its own: the verifying context, once made, is kept for its later probes."""
    script = f"""
import asyncio, ssl, sys
loaded = []
load = ssl.SSLContext.load_verify_locations
ssl.SSLContext.load_verify_locations = lambda self, *a, **k: loaded.append(a) or load(self, *a, **k)
from reconciler.health import probe
from reconciler.health.probes import probed_ports
from reconciler.providers import Instance
result = asyncio.run(probe({{"http": {{"url": "{server.url()}"}}}}, Instance("local", "127.0.0.1")))
print(result.ok, len(loaded), "httpx" in sys.modules)
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    out, err = await asyncio.wait_for(proc.communicate(), 25)
    assert out.decode().split() == ["True", "0", "False"], err.decode()


async def serve_raw(answer: bytes, seen: list[bytes]) -> tuple[asyncio.Server, int]:
    """A loopback server that records each request's head and answers ``answer`` as is."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(answer)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.timeout(20)
async def test_http_request_host_header_credentials_and_target() -> None:
    """What goes on the wire: the Host with its port, credentials of the URL as Basic auth
    (unquoted first), the path and query escaped where they must be, no fragment."""
    seen: list[bytes] = []
    server, port = await serve_raw(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                                   seen)
    try:
        url = f"http://probe:p%40ss@{{host}}:{port}/health check/é?full=1#frag"
        result = await probe({"http": {"url": url}}, LOCAL)
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result.message
    assert "p%40ss" not in result.message and "p@ss" not in result.message, result.message
    [head] = seen
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /health%20check/%C3%A9?full=1 HTTP/1.1", lines
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["authorization"] == "Basic cHJvYmU6cEBzcw=="  # probe:p@ss


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("answer", "expected"), [
    (b"", "closed the connection without a response"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nall ok", None),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n4\r\n ok!\r\n0\r\n\r\n",
     None),
], ids=["closed", "not-http", "informational-first", "chunked-body"])
async def test_http_answers_that_are_not_a_plain_response(answer: bytes,
                                                          expected: str | None) -> None:
    """A peer that closes, or speaks another protocol, fails the probe at once (not at its
    timeout); a 1xx before the answer and a chunked body are read through."""
    seen: list[bytes] = []
    server, port = await serve_raw(answer, seen)
    check = {"http": {"url": f"http://{{host}}:{port}/", "bodyContains": "all ok"},
             "timeout": "5s"}
    try:
        started = time.monotonic()
        result = await probe(check, LOCAL)
    finally:
        server.close()
        await server.wait_closed()
    if expected is None:
        assert result.ok, result.message
    else:
        assert not result.ok and expected in result.message, result.message
        assert time.monotonic() - started < 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("url", "expected"), [
    ("ftp://{host}/", "invalid URL: the scheme must be http or https, not 'ftp'"),
    ("http://{host}:99999/", "invalid URL: Port out of range"),
    ("http:///nohost", "invalid URL: no host"),
])
async def test_http_invalid_urls_fail_with_why(url: str, expected: str) -> None:
    result = await probe({"http": {"url": url}}, LOCAL)
    assert not result.ok and expected in result.message, result.message


@pytest.mark.timeout(20)
async def test_http_probe_of_an_ipv6_loopback_address() -> None:
    """{host} of an IPv6 instance address is bracketed in the URL and in the Host header."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(handle, "::1", 0)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = server.sockets[0].getsockname()[1]
    try:
        result = await probe({"http": {"url": f"http://{{host}}:{port}/"}},
                             Instance("v6", "::1"))
    finally:
        server.close()
        await server.wait_closed()
    assert result.ok, result.message
    assert result.message == f"http://[::1]:{port}/: status 200"
    assert f"Host: [::1]:{port}" in seen[0].decode()


@pytest.mark.timeout(20)
async def test_https_verifies_certificates_on_every_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS context is made once and shared by the probes: it still verifies, on the second
    probe too, and ignores SSL_CERT_FILE (the client's trust_env=False)."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=15,
    )
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    served = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            await reader.readuntil(b"\r\n\r\n")
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    check = {"http": {"url": f"https://{{host}}:{port}/"}, "timeout": "5s"}
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        for _ in range(2):
            result = await probe(check, LOCAL)
            assert not result.ok
            assert "CERTIFICATE_VERIFY_FAILED" in result.message, result.message
        assert served == 0
    finally:
        server.close()
        await server.wait_closed()


def test_the_ports_probed_on_the_instances_own_address() -> None:
    here = Instance(id="h", address="127.0.0.1", vars={"port": "9001"})
    far = Instance(id="f", address="10.0.0.5")  # never dialled: only parsed
    check = {"http": {"url": "http://{host}:8080/healthz"}, "tcp": {"port": "{vars.port}"}}
    assert probed_ports(check, here) == (8080, 9001)
    assert probed_ports({"http": {"url": "https://localhost/"}}, here) == (443,)
    assert probed_ports({"http": {"url": "http://[::1]:81/"}}, here) == (81,)
    # another address (a load balancer), loopback of another machine, an exec probe
    assert probed_ports({"http": {"url": "http://lb.example:80/"}}, here) == ()
    assert probed_ports({"tcp": {"host": "127.0.0.1", "port": 80}}, far) == ()
    assert probed_ports({"http": {"url": "http://{host}:80/"}}, far) == (80,)
    assert probed_ports({"exec": {"command": ["true"]}}, here) == ()
    assert probed_ports({"http": {"url": "http://{host}:99999/"}}, here) == ()  # unreadable
