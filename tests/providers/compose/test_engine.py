"""``SocketEngine``: the engine API on dockerd's unix socket through httpx — stream framing of logs
and exec, waits, idempotent removals, and every failure as a ProviderError naming the host."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.errors import ProviderError
from reconciler.providers.compose.engine import SocketEngine, demultiplex, frames
from tests.conftest import DockerCLI
from tests.infra.testinfra import Infra


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def test_demultiplex_splits_stdout_and_stderr_and_keeps_a_cut_frame() -> None:
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"") + frame(1, b"more\n")
    assert demultiplex(data) == (b"out\nmore\n", b"err\n")
    assert [stream for stream, _ in frames(data)] == [1, 2, 1, 1]
    # the stream ended inside a frame: what arrived is kept, a partial header is dropped
    assert demultiplex(frame(1, b"whole\n") + frame(2, b"cut short")[:11]) == (b"whole\n", b"cut")
    assert demultiplex(frame(1, b"a") + b"\x01\x00") == (b"a", b"")
    assert demultiplex(b"") == (b"", b"")


@pytest.fixture
async def engine(docker_engine: Infra) -> AsyncIterator[SocketEngine]:
    made = SocketEngine(docker_engine.docker_host, "docker")
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def containers(docker_cli: DockerCLI, tiny_image: str) -> Iterator[list[str]]:
    """Names of containers a test starts from the tiny image; removed at the end."""
    names: list[str] = []
    yield names
    for name in names:
        docker_cli("rm", "-f", name, check=False)


def start(docker_cli: DockerCLI, names: list[str], *args: str) -> str:
    """``docker run -d`` of ``args`` (options, image, command); the container's name."""
    name = f"fraisier-engine-{uuid.uuid4().hex[:8]}"
    names.append(name)
    docker_cli("run", "-d", "--name", name, "--network", "none", "--init", *args)
    return name


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_logs_exec_wait_and_removal_on_the_real_engine(
    engine: SocketEngine, docker_cli: DockerCLI, containers: list[str], tiny_image: str
) -> None:
    script = "echo out-1; sleep 0.1; echo err-1 >&2; sleep 0.1; echo out-2; exec sleep 300"
    plain = start(docker_cli, containers, "--label", "dev.fraisier.test=engine", tiny_image,
                  "sh", "-c", script)
    tty = start(docker_cli, containers, "-t", "--label", "dev.fraisier.test=engine", tiny_image,
                "sh", "-c", script)

    async def logged(container: str) -> list[str]:
        for _ in range(100):
            lines = await engine.logs(container, 10)
            if len(lines) == 3:
                return lines
            await asyncio.sleep(0.05)
        return lines

    # without a TTY the engine frames each stream; with one it sends the bytes as they are; both
    # streams in the order they were written
    assert await logged(plain) == ["out-1", "err-1", "out-2"]
    assert [line.rstrip("\r") for line in await logged(tty)] == ["out-1", "err-1", "out-2"]
    assert await engine.logs(plain, 1) == ["out-2"]
    assert await engine.logs("fraisier-engine-never-was", 10) == []

    result = await engine.exec(plain, ["sh", "-c", "pwd; echo bad >&2; exit 3"], 10, "/www")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"/www\n", b"bad\n")
    big = await engine.exec(plain, ["sh", "-c", "seq 1 20000"], 10, None)  # many frames
    assert big.returncode == 0 and big.stdout.split() == [str(n).encode() for n in range(1, 20001)]

    labels = {"dev.fraisier.test": "engine"}
    inspected = await engine.containers(labels)
    assert {c["Name"].lstrip("/") for c in inspected} >= {plain, tty}
    listed = await engine.labelled(labels, ["dev.fraisier.test", "absent"])
    assert sorted(listed) == sorted((c["Id"], labels) for c in inspected)
    assert await engine.image(tiny_image) is not None
    assert await engine.image("fraisier-no-such-image:0") is None

    # wait: None while it runs, the exit code once it stops
    assert await engine.wait(plain, 0.3) is None
    await engine.stop_container(plain, 1)
    assert await engine.wait(plain, 10) == 137 or await engine.wait(plain, 10) == 143
    await engine.stop_container(plain, 1)  # stopped already (304): no error
    stopped = await engine.exec(plain, ["true"], 10, None)
    assert stopped.returncode == 126 and b"is not running" in stopped.stderr
    await engine.remove_container(plain)
    await engine.remove_container(plain)  # gone already: no error
    await engine.stop_container(plain, 1)
    assert docker_cli("ps", "-a", "-q", "--filter", f"name={plain}").split() == []


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_volumes_are_created_once_listed_and_removed(
    engine: SocketEngine, docker_cli: DockerCLI
) -> None:
    name = f"fraisier-engine-{uuid.uuid4().hex[:8]}"
    labels = {"dev.fraisier.test": name}
    try:
        await engine.create_volume(name, labels, None, {})
        await engine.create_volume(name, {"other": "x"}, None, {})  # exists: left as it is
        assert await engine.volumes(labels) == [name]
        assert docker_cli("volume", "inspect", "-f", "{{json .Labels}}", name).strip() == (
            f'{{"dev.fraisier.test":"{name}"}}'
        )
        await engine.remove_volume(name)
        await engine.remove_volume(name)  # gone already: no error
        assert await engine.volumes(labels) == []
    finally:
        docker_cli("volume", "rm", "-f", name, check=False)


@contextlib.asynccontextmanager
async def socket_server(path: Path, answer: bytes | None) -> AsyncIterator[None]:
    """A unix socket that reads each request and answers ``answer`` (then closes), or never
    answers at all (None)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        if answer is None:
            await asyncio.sleep(3600)
        writer.write(answer or b"")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(path))
    try:
        yield
    finally:
        server.close()


@pytest.mark.timeout(30)
async def test_engine_failures_are_provider_errors_naming_the_host(tmp_path: Path) -> None:
    missing = SocketEngine(f"unix://{tmp_path}/no.sock", "box")
    with pytest.raises(ProviderError, match=r"^box: docker engine: listing containers: "):
        await missing.containers({"a": "b"})
    await missing.close()

    silent_path = tmp_path / "silent.sock"
    async with socket_server(silent_path, None):
        silent = SocketEngine(f"unix://{silent_path}", "box")
        with pytest.raises(ProviderError, match=r"exec in c1: no answer after 0\.3s"):
            await silent.exec("c1", ["true"], 0.3, None)
        assert await silent.wait("c1", 0.3) is None
        await silent.close()

    garbage_path = tmp_path / "garbage.sock"
    async with socket_server(garbage_path, b"SSH-2.0-not-http\r\n"):
        garbage = SocketEngine(f"unix://{garbage_path}", "box")
        with pytest.raises(ProviderError, match=r"^box: docker engine: inspecting image x:1: "):
            await garbage.image("x:1")
        await garbage.close()

    refusing_path = tmp_path / "refusing.sock"
    body = b'{"message":"something broke"}'
    answer = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    async with socket_server(refusing_path, answer):
        refusing = SocketEngine(f"unix://{refusing_path}", "box")
        with pytest.raises(ProviderError, match="removing c1: 500 something broke"):
            await refusing.remove_container("c1")
        with pytest.raises(ProviderError, match="listing volumes: 500 something broke"):
            await refusing.volumes({"a": "b"})
        await refusing.close()


class _Searches:
    """A meta path finder that only counts the module searches that reach it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        self.names.append(name)


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_requests_search_for_no_module(engine: SocketEngine) -> None:
    # A module imported at each request is a search of sys.path when it is not installed: with
    # httpcore (the engine's client before), sniffio's four per request were half of a
    # request's CPU.
    await engine.containers({"dev.fraisier.test": "none"})  # first use: its imports are done
    searches = _Searches()
    sys.meta_path.insert(0, searches)
    try:
        for _ in range(5):
            await engine.containers({"dev.fraisier.test": "none"})
            await engine.image("fraisier-no-such-image:0")
    finally:
        sys.meta_path.remove(searches)
    assert searches.names == []
