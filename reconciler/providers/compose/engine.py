"""Read-side access to a Docker engine: containers by compose label, logs, waits, clean-up.

Two implementations with one shape (container dicts are what ``GET /containers/{id}/json`` and
``docker inspect`` both return):

- ``SocketEngine``: the engine API over a local socket (``unix://``), HTTP/1.1 by
  ``transport.http1``, one connection per request;
- ``CliEngine``: the ``docker`` CLI run through a ``Transport``, for Docker hosts reached over SSH
  (the engine socket is local to that host and is not tunnelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import struct
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import h11

from reconciler.errors import ProviderError
from reconciler.transport import CommandResult, CommandTimeout, Transport
from reconciler.transport.http1 import NoResponse, Response, exchange

_API_TIMEOUT_S = 30.0
# How long a remote engine's clock offset is reused before it is read again.
_CLOCK_TTL_S = 600.0


class DockerEngine(Protocol):
    async def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Full inspect data of every container (running or not) carrying all ``labels``."""

    async def labelled(self, labels: dict[str, str], keys: Sequence[str]) -> list[Labelled]:
        """(id, the values of ``keys`` among its labels) of every container carrying all
        ``labels``: the cheap listing (no inspect) for when labels are all that is needed."""

    async def container(self, container_id: str) -> dict[str, Any] | None:
        """Inspect data of one container, or None when it is not on the host (one request: no
        listing, for a caller that knows the container it asks about)."""

    async def image(self, ref: str) -> dict[str, Any] | None:
        """Inspect data of a local image, or None when it is not on the host."""

    async def logs(self, container: str, tail: int) -> list[str]:
        """The last ``tail`` lines of stdout and stderr."""

    async def wait(self, container: str, timeout: float) -> int | None:  # noqa: ASYNC109
        """The exit code once the container stops, or None after ``timeout`` seconds."""

    async def stop_container(self, container: str, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (no error when it is gone)."""

    async def remove_container(self, container: str) -> None:
        """Kill and delete a container (no error when it is gone already)."""

    async def volumes(self, labels: dict[str, str]) -> list[str]:
        """Names of the volumes carrying all ``labels``."""

    async def remove_volume(self, name: str) -> None: ...

    async def create_volume(
        self, name: str, labels: dict[str, str], driver: str | None, options: dict[str, str]
    ) -> None:
        """Create a volume unless one of that name exists already (then it is left as it is)."""

    async def exec(
        self, container: str, argv: Sequence[str], timeout: float, cwd: str | None  # noqa: ASYNC109
    ) -> CommandResult:
        """Run argv inside a running container (``docker exec``); its exit code and output."""

    async def clock(self) -> float | None:
        """The engine host's time now (seconds since the epoch), never ahead of it as far as
        this machine can tell: what a running container's age is counted against. None when it
        cannot be told."""

    async def close(self) -> None: ...


class ContainerExec:
    """A ``CommandRunner`` into one container: where a compose Service's exec probes run."""

    def __init__(self, engine: DockerEngine, container: str) -> None:
        self.engine = engine
        self.container = container

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - per-call timeouts are the protocol
        cwd: str | None = None,
    ) -> CommandResult:
        return await self.engine.exec(self.container, argv, timeout, cwd)


Labelled = tuple[str, dict[str, str]]


def _label_filters(labels: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())]


class EngineRefusal(Exception):
    """dockerd answered a request with an error status (its own message kept)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


# Stream framing of a container's stdout/stderr when it has no TTY (logs, exec): 8-byte headers
# (stream id, 3 zero bytes, big-endian payload length), then the payload.
_FRAME_HEADER = struct.Struct(">BxxxL")
_MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
_RAW = "application/vnd.docker.raw-stream"


def frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(stream, payload) of each frame of a multiplexed stream, in order (1 stdout, 2 stderr); a
    frame cut short by the end of the stream gives what arrived."""
    at = 0
    while at + _FRAME_HEADER.size <= len(data):
        stream, size = _FRAME_HEADER.unpack_from(data, at)
        at += _FRAME_HEADER.size
        yield stream, data[at : at + size]
        at += size


def demultiplex(data: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) of a multiplexed stream."""
    out, err = bytearray(), bytearray()
    for stream, payload in frames(data):
        (err if stream == 2 else out).extend(payload)
    return bytes(out), bytes(err)


def _quoted(name: str) -> str:
    """A container, image or volume name as one path segment of an engine URL (image references
    keep their ``/``, ``:`` and ``@``, which the engine's routes expect)."""
    return quote(name, safe="/:@")


def _refusal(answer: Response) -> EngineRefusal:
    """The engine's refusal of a request (its status >= 400), with its own message."""
    try:
        message = str(json.loads(answer.body).get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    return EngineRefusal(answer.status, message or answer.body[:500].decode(errors="replace"))


def _json(answer: Response) -> Any:
    return json.loads(answer.body) if answer.body else None


# What a broken socket, a dead engine or an answer that is not the engine's HTTP and JSON raise.
_BROKEN = (OSError, ValueError, h11.ProtocolError, NoResponse)


class SocketEngine:
    """The engine API on a local unix socket: one HTTP/1.1 request per connection
    (``transport.http1``). Connecting to a local socket costs next to nothing, and a pool's
    bookkeeping cost more than the requests: httpcore's pool took ~0.65 ms of CPU per inspect
    here, ~0.3 ms this way (docs/performance.md, session 17)."""

    def __init__(self, url: str, host_id: str) -> None:
        self.url = url
        self.host_id = host_id
        self.socket_path = urlsplit(url).path

    def _error(self, what: str, exc: Exception) -> ProviderError:
        reason = str(exc) or type(exc).__name__
        return ProviderError(f"{self.host_id}: docker engine: {what}: {reason}")

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str, seconds: float = _API_TIMEOUT_S) -> AsyncIterator[None]:
        """Every engine call is bounded, streaming ones (logs, stop, exec) included; a broken
        socket or an unreadable answer is a ProviderError naming the call."""
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError as exc:
            raise ProviderError(
                f"{self.host_id}: docker engine: {what}: no answer after {seconds:g}s"
            ) from exc
        except _BROKEN as exc:
            raise self._error(what, exc) from exc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Response:
        """One request on a connection of its own; the caller bounds how long it may take."""
        target = path + (f"?{urlencode(params)}" if params else "")
        headers = [("Host", "docker"), ("Connection", "close")]
        content = b""
        if body is not None:
            headers.append(("Content-Type", "application/json"))
            content = json.dumps(body).encode()
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        try:
            return await exchange(reader, writer, method, target, headers, content)
        finally:
            writer.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """The decoded JSON answer (None when empty); EngineRefusal for a status >= 400."""
        answer = await self._send(method, path, params=params, body=body)
        if answer.status >= 400:
            raise _refusal(answer)
        return _json(answer)

    async def _list(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = json.dumps({"label": _label_filters(labels)})
        params = {"all": 1, "filters": filters}
        return list(await self._call("GET", "/containers/json", params=params))

    async def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        what = "listing containers"
        async with self._deadline(what):
            try:
                listed = await self._list(labels)

                async def show(container_id: str) -> dict[str, Any] | None:
                    try:
                        return dict(await self._call("GET", f"/containers/{container_id}/json"))
                    except EngineRefusal as exc:
                        if exc.status == 404:  # removed between list and inspect
                            return None
                        raise

                # inspected concurrently: a per-replica Service has a container per replica
                shown = await asyncio.gather(*(show(str(c["Id"])) for c in listed))
            except EngineRefusal as exc:
                raise self._error(what, exc) from exc
            return [c for c in shown if c is not None]

    async def labelled(self, labels: dict[str, str], keys: Sequence[str]) -> list[Labelled]:
        what = "listing containers"
        async with self._deadline(what):
            try:
                listed = await self._list(labels)
            except EngineRefusal as exc:
                raise self._error(what, exc) from exc
            result: list[Labelled] = []
            for container in listed:
                found = dict(container.get("Labels") or {})
                result.append((str(container["Id"]), {k: found[k] for k in keys if k in found}))
            return result

    async def container(self, container_id: str) -> dict[str, Any] | None:
        what = f"inspecting container {container_id[:12]}"
        async with self._deadline(what):
            try:
                return dict(await self._call("GET", f"/containers/{_quoted(container_id)}/json"))
            except EngineRefusal as exc:
                if exc.status == 404:
                    return None
                raise self._error(what, exc) from exc

    async def image(self, ref: str) -> dict[str, Any] | None:
        async with self._deadline(f"inspecting image {ref}"):
            try:
                return dict(await self._call("GET", f"/images/{_quoted(ref)}/json"))
            except EngineRefusal as exc:
                if exc.status == 404:
                    return None
                raise self._error(f"inspecting image {ref}", exc) from exc

    async def clock(self) -> float | None:
        # A unix socket's dockerd runs on this kernel: its wall clock is this machine's.
        return time.time()

    async def logs(self, container: str, tail: int) -> list[str]:
        what = f"reading logs of {container}"
        async with self._deadline(what):
            path = f"/containers/{_quoted(container)}"
            params = {"stdout": 1, "stderr": 1, "tail": tail}
            answer = await self._send("GET", f"{path}/logs", params=params)
            if answer.status == 404:
                return []
            if answer.status >= 400:
                raise self._error(what, _refusal(answer))
            kind = answer.header("content-type")
            if kind == _MULTIPLEXED:
                multiplexed = True
            elif kind == _RAW:
                multiplexed = False
            else:  # engines before API 1.42 do not say: a container with a TTY has no framing
                try:
                    shown = await self._call("GET", f"{path}/json")
                except EngineRefusal as exc:
                    if exc.status == 404:
                        return []
                    raise self._error(what, exc) from exc
                multiplexed = not (shown.get("Config") or {}).get("Tty")
            data = answer.body
            if multiplexed:  # both streams, in the order they were written
                data = b"".join(payload for _, payload in frames(data))
            return data.decode(errors="replace").splitlines()

    async def wait(self, container: str, timeout: float) -> int | None:  # noqa: ASYNC109
        what = f"waiting for {container}"
        try:
            async with asyncio.timeout(timeout):
                status = await self._call(
                    "POST", f"/containers/{_quoted(container)}/wait")
        except TimeoutError:
            return None
        except EngineRefusal as exc:
            raise self._error(what, exc) from exc
        except _BROKEN as exc:
            raise self._error(what, exc) from exc
        return int(status.get("StatusCode", -1))

    async def stop_container(self, container: str, grace: float) -> None:
        seconds = math.ceil(grace)
        async with self._deadline(f"stopping {container}", _API_TIMEOUT_S + grace):
            try:
                # 304: stopped already
                await self._call(
                    "POST",
                    f"/containers/{_quoted(container)}/stop",
                    params={"t": seconds},
                )
            except EngineRefusal as exc:
                if exc.status != 404:
                    raise self._error(f"stopping {container}", exc) from exc

    async def remove_container(self, container: str) -> None:
        async with self._deadline(f"removing {container}"):
            try:
                await self._call(
                    "DELETE", f"/containers/{_quoted(container)}", params={"force": 1, "v": 0}
                )
            except EngineRefusal as exc:
                # 409 "removal ... is already in progress": someone else is removing it
                if exc.status != 404 and not (exc.status == 409 and "in progress" in exc.message):
                    raise self._error(f"removing {container}", exc) from exc

    async def volumes(self, labels: dict[str, str]) -> list[str]:
        what = "listing volumes"
        async with self._deadline(what):
            filters = json.dumps({"label": _label_filters(labels)})
            try:
                data = await self._call("GET", "/volumes", params={"filters": filters})
            except EngineRefusal as exc:
                raise self._error(what, exc) from exc
            return sorted(str(v["Name"]) for v in data.get("Volumes") or [])

    async def remove_volume(self, name: str) -> None:
        async with self._deadline(f"removing volume {name}"):
            try:
                await self._call("DELETE", f"/volumes/{_quoted(name)}")
            except EngineRefusal as exc:
                if exc.status != 404:
                    raise self._error(f"removing volume {name}", exc) from exc

    async def create_volume(
        self, name: str, labels: dict[str, str], driver: str | None, options: dict[str, str]
    ) -> None:
        config: dict[str, Any] = {"Name": name, "Labels": labels, "DriverOpts": options}
        if driver:
            config["Driver"] = driver
        async with self._deadline(f"creating volume {name}"):
            try:
                # Creating an existing volume returns it unchanged (labels included).
                await self._call("POST", "/volumes/create", body=config)
            except EngineRefusal as exc:
                raise self._error(f"creating volume {name}", exc) from exc

    async def exec(
        self, container: str, argv: Sequence[str], timeout: float, cwd: str | None  # noqa: ASYNC109
    ) -> CommandResult:
        config: dict[str, Any] = {"AttachStdout": True, "AttachStderr": True, "Cmd": list(argv)}
        if cwd:
            config["WorkingDir"] = cwd
        async with self._deadline(f"exec in {container}", timeout):
            try:
                created = await self._call(
                    "POST", f"/containers/{_quoted(container)}/exec", body=config
                )
                path = f"/exec/{_quoted(str(created['Id']))}"
                # Without an Upgrade header the engine answers 200 and then writes the raw
                # frames on the connection until the command ends and it closes the connection.
                answer = await self._send("POST", f"{path}/start",
                                          body={"Detach": False, "Tty": False})
                if answer.status >= 400:
                    raise _refusal(answer)
                data = answer.body
                info = await self._call("GET", f"{path}/json")
            except EngineRefusal as exc:
                # not running, gone: the probe fails with the engine's reason
                return CommandResult(126, b"", exc.message.encode())
        out, err = demultiplex(data)
        code = info.get("ExitCode")
        return CommandResult(int(code) if code is not None else 126, out, err)

    async def close(self) -> None:
        """Nothing is kept open between requests."""


class CliEngine:
    """The ``docker`` CLI through a transport (for engines only reachable on their own host)."""

    def __init__(self, transport: Transport, docker: Sequence[str] = ("docker",)) -> None:
        self.transport = transport
        self.docker = list(docker)
        # (engine clock - this machine's clock, when it was measured on this machine's clock)
        self._offset: tuple[float | None, float] | None = None
        self._offset_lock = asyncio.Lock()

    async def clock(self) -> float | None:
        """The remote host's clock may differ from this machine's: its offset is read from the
        engine's ``SystemTime`` (``docker info``) once per ``_CLOCK_TTL_S`` (a stepped clock is
        caught up with), counted as if read when the answer arrived, so the offset — and a
        container's age — is never overstated, only understated by the command's duration."""
        async with self._offset_lock:
            now = time.time()
            if self._offset is None or now - self._offset[1] > _CLOCK_TTL_S:
                self._offset = (await self._measure_offset(), now)
            offset = self._offset[0]
        return None if offset is None else time.time() + offset

    async def _measure_offset(self) -> float | None:
        try:
            out = await self._run("info", "--format", "{{json .SystemTime}}")
            answered = time.time()
            remote = datetime.fromisoformat(str(json.loads(out))).timestamp()
        except (ProviderError, ValueError, TypeError):
            return None  # ages unknown: the gate then counts from its own start
        return remote - answered

    async def _run(self, *args: str, timeout: float = _API_TIMEOUT_S) -> str:  # noqa: ASYNC109
        result = await self.transport.run([*self.docker, *args], timeout=timeout)
        if not result.ok:
            raise ProviderError(
                f"{self.transport.host_id}: docker {args[0]} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()[-500:]}"
            )
        return result.stdout.decode(errors="replace")

    async def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        filters = [a for f in _label_filters(labels) for a in ("--filter", f"label={f}")]
        ids = (await self._run("ps", "-a", "-q", "--no-trunc", *filters)).split()
        if not ids:
            return []
        result = await self.transport.run([*self.docker, "inspect", *ids], timeout=_API_TIMEOUT_S)
        # `inspect` exits 1 when a container vanished since `ps`, but still prints the others.
        try:
            data = json.loads(result.stdout or b"[]")
        except json.JSONDecodeError as exc:
            raise ProviderError(f"{self.transport.host_id}: docker inspect: {exc}") from exc
        return [dict(c) for c in data]

    async def labelled(self, labels: dict[str, str], keys: Sequence[str]) -> list[Labelled]:
        filters = [a for f in _label_filters(labels) for a in ("--filter", f"label={f}")]
        # one line per container: the id, then each key's value (tab-separated; a label value
        # holding a tab or a newline is not one of ours)
        fields = ["{{.ID}}", *(f"{{{{.Label {json.dumps(k)}}}}}" for k in keys)]
        out = await self._run("ps", "-a", "--no-trunc", *filters, "--format", "\t".join(fields))
        result: list[Labelled] = []
        for line in out.splitlines():
            if not line.strip():
                continue
            container_id, *values = line.split("\t")
            found = {k: v for k, v in zip(keys, values, strict=False) if v}
            result.append((container_id, found))
        return result

    async def container(self, container_id: str) -> dict[str, Any] | None:
        result = await self.transport.run(
            [*self.docker, "container", "inspect", "--", container_id], timeout=_API_TIMEOUT_S
        )
        if not result.ok:
            return None
        try:
            data = json.loads(result.stdout or b"[]")
        except json.JSONDecodeError as exc:
            raise ProviderError(f"{self.transport.host_id}: docker container inspect: {exc}"
                                ) from exc
        return dict(data[0]) if data else None

    async def image(self, ref: str) -> dict[str, Any] | None:
        result = await self.transport.run(
            [*self.docker, "image", "inspect", ref], timeout=_API_TIMEOUT_S
        )
        if not result.ok:
            return None
        data = json.loads(result.stdout or b"[]")
        return dict(data[0]) if data else None

    async def logs(self, container: str, tail: int) -> list[str]:
        result = await self.transport.run(
            [*self.docker, "logs", "--tail", str(tail), container], timeout=_API_TIMEOUT_S
        )
        if not result.ok:
            return []
        return (result.stdout + result.stderr).decode(errors="replace").splitlines()

    async def wait(self, container: str, timeout: float) -> int | None:  # noqa: ASYNC109
        try:
            out = await self._run("wait", container, timeout=timeout)
        except CommandTimeout:
            return None
        return int(out.strip().splitlines()[-1])

    async def stop_container(self, container: str, grace: float) -> None:
        await self.transport.run(
            [*self.docker, "stop", "-t", str(math.ceil(grace)), container],
            timeout=_API_TIMEOUT_S + grace,
        )

    async def remove_container(self, container: str) -> None:
        await self.transport.run([*self.docker, "rm", "-f", container], timeout=_API_TIMEOUT_S)

    async def volumes(self, labels: dict[str, str]) -> list[str]:
        filters = [a for f in _label_filters(labels) for a in ("--filter", f"label={f}")]
        out = await self._run("volume", "ls", "-q", *filters)
        return sorted(out.split())

    async def remove_volume(self, name: str) -> None:
        await self.transport.run([*self.docker, "volume", "rm", "-f", name], timeout=_API_TIMEOUT_S)

    async def create_volume(
        self, name: str, labels: dict[str, str], driver: str | None, options: dict[str, str]
    ) -> None:
        args = ["volume", "create"]
        for key, value in sorted(labels.items()):
            args += ["--label", f"{key}={value}"]
        if driver:
            args += ["--driver", driver]
        for key, value in sorted(options.items()):
            args += ["--opt", f"{key}={value}"]
        await self._run(*args, name)

    async def exec(
        self, container: str, argv: Sequence[str], timeout: float, cwd: str | None  # noqa: ASYNC109
    ) -> CommandResult:
        workdir = ["-w", cwd] if cwd else []
        return await self.transport.run(
            [*self.docker, "exec", *workdir, container, *argv], timeout=timeout
        )

    async def close(self) -> None:
        """The transport is owned (and closed) by the provider."""
