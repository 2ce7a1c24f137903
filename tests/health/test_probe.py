"""Single probes against a real HTTP server, real sockets and real commands."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest

from reconciler.health import probe
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
    assert result.message.startswith(f"http://127.0.0.1:{port}/: ")


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
async def test_an_http_probe_loads_no_ca_bundle(server: ScriptedServer) -> None:
    """A probe of an http:// URL never does TLS (redirects are not followed): the process
    does not load the CA bundle for it (~30 ms of CPU, on a first gate's way). A process of
    its own: the verifying context, once made, is kept for the process's later probes."""
    script = f"""
import asyncio, httpx
made = []
create = httpx.create_ssl_context
httpx.create_ssl_context = lambda *a, **k: made.append(a) or create(*a, **k)
from reconciler.health import probe
from reconciler.providers import Instance
result = asyncio.run(probe({{"http": {{"url": "{server.url()}"}}}}, Instance("local", "127.0.0.1")))
print(result.ok, len(made))
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    out, err = await asyncio.wait_for(proc.communicate(), 25)
    assert out.decode().split() == ["True", "0"], err.decode()


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
