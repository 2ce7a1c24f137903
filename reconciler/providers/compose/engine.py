"""Read-side access to a Docker engine: containers by compose label, logs, waits, clean-up.

Two implementations with one shape (container dicts are what ``GET /containers/{id}/json`` and
``docker inspect`` both return):

- ``AiodockerEngine``: the engine API over a local socket (``unix://``), through aiodocker;
- ``CliEngine``: the ``docker`` CLI run through a ``Transport``, for Docker hosts reached over SSH
  (the engine socket is local to that host, and aiodocker cannot tunnel through SSH).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import aiodocker
import aiohttp
from aiodocker.volumes import DockerVolume

from reconciler.errors import ProviderError
from reconciler.transport import CommandResult, CommandTimeout, Transport

_API_TIMEOUT_S = 30.0


class DockerEngine(Protocol):
    async def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """Full inspect data of every container (running or not) carrying all ``labels``."""

    async def labelled(self, labels: dict[str, str], keys: Sequence[str]) -> list[Labelled]:
        """(id, the values of ``keys`` among its labels) of every container carrying all
        ``labels``: the cheap listing (no inspect) for when labels are all that is needed."""

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


def _split_lines(chunks: Sequence[str]) -> list[str]:
    return "".join(chunks).splitlines()


class AiodockerEngine:
    """The engine API on a local socket."""

    def __init__(self, url: str, host_id: str) -> None:
        self.url = url
        self.host_id = host_id
        self._docker: aiodocker.Docker | None = None

    def _client(self) -> aiodocker.Docker:
        # Created on first use: aiohttp sessions belong to the running event loop.
        if self._docker is None:
            self._docker = aiodocker.Docker(
                url=self.url, timeout=aiohttp.ClientTimeout(total=_API_TIMEOUT_S)
            )
        return self._docker

    def _error(self, what: str, exc: Exception) -> ProviderError:
        return ProviderError(f"{self.host_id}: docker engine: {what}: {exc}")

    @contextlib.asynccontextmanager
    async def _deadline(self, what: str, seconds: float = _API_TIMEOUT_S) -> AsyncIterator[None]:
        """Every engine call is bounded, streaming ones (logs, stop) included."""
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError as exc:
            raise ProviderError(
                f"{self.host_id}: docker engine: {what}: no answer after {seconds:g}s"
            ) from exc

    async def containers(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        async with self._deadline("listing containers"):
            docker = self._client()
            try:
                listed = await docker.containers.list(
                    all=True, filters={"label": _label_filters(labels)}
                )

                async def show(container: Any) -> dict[str, Any] | None:
                    try:
                        return dict(await container.show())
                    except aiodocker.DockerError as exc:
                        if exc.status == 404:  # removed between list and inspect
                            return None
                        raise

                # inspected concurrently: a per-replica Service has a container per replica
                shown = await asyncio.gather(*(show(c) for c in listed))
                return [c for c in shown if c is not None]
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise self._error("listing containers", exc) from exc

    async def labelled(self, labels: dict[str, str], keys: Sequence[str]) -> list[Labelled]:
        async with self._deadline("listing containers"):
            try:
                listed = await self._client().containers.list(
                    all=True, filters={"label": _label_filters(labels)}
                )
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise self._error("listing containers", exc) from exc
            result: list[Labelled] = []
            for container in listed:
                found = dict(container["Labels"] or {})
                result.append((str(container["Id"]), {k: found[k] for k in keys if k in found}))
            return result

    async def image(self, ref: str) -> dict[str, Any] | None:
        async with self._deadline("inspecting an image"):
            try:
                return await self._client().images.inspect(ref)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return None
                raise self._error(f"inspecting image {ref}", exc) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self._error(f"inspecting image {ref}", exc) from exc

    async def logs(self, container: str, tail: int) -> list[str]:
        async with self._deadline("reading logs"):
            try:
                handle = self._client().containers.container(container)
                chunks = await handle.log(stdout=True, stderr=True, tail=tail)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return []
                raise self._error(f"reading logs of {container}", exc) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self._error(f"reading logs of {container}", exc) from exc
            return _split_lines(chunks)

    async def wait(self, container: str, timeout: float) -> int | None:  # noqa: ASYNC109
        handle = self._client().containers.container(container)
        try:
            status = await asyncio.wait_for(handle.wait(timeout=None), timeout)
        except TimeoutError:
            return None
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            raise self._error(f"waiting for {container}", exc) from exc
        return int(status.get("StatusCode", -1))

    async def stop_container(self, container: str, grace: float) -> None:
        async with self._deadline("stopping a container", _API_TIMEOUT_S + grace):
            try:
                await self._client().containers.container(container).stop(t=math.ceil(grace))
            except aiodocker.DockerError as exc:
                if exc.status not in (304, 404):
                    raise self._error(f"stopping {container}", exc) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self._error(f"stopping {container}", exc) from exc

    async def remove_container(self, container: str) -> None:
        async with self._deadline("removing a container"):
            try:
                await self._client().containers.container(container).delete(force=True, v=False)
            except aiodocker.DockerError as exc:
                # 409 "removal ... is already in progress": someone else is removing it
                if exc.status != 404 and not (exc.status == 409 and "in progress" in str(exc)):
                    raise self._error(f"removing {container}", exc) from exc

    async def volumes(self, labels: dict[str, str]) -> list[str]:
        async with self._deadline("listing volumes"):
            try:
                data = await self._client().volumes.list(filters={"label": _label_filters(labels)})
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise self._error("listing volumes", exc) from exc
            return sorted(str(v["Name"]) for v in data.get("Volumes") or [])

    async def remove_volume(self, name: str) -> None:
        async with self._deadline("removing a volume"):
            try:
                await DockerVolume(self._client(), name).delete()
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise self._error(f"removing volume {name}", exc) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self._error(f"removing volume {name}", exc) from exc

    async def create_volume(
        self, name: str, labels: dict[str, str], driver: str | None, options: dict[str, str]
    ) -> None:
        config: dict[str, Any] = {"Name": name, "Labels": labels, "DriverOpts": options}
        if driver:
            config["Driver"] = driver
        async with self._deadline("creating a volume"):
            try:
                # Creating an existing volume returns it unchanged (labels included).
                await self._client().volumes.create(config)
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                raise self._error(f"creating volume {name}", exc) from exc

    async def exec(
        self, container: str, argv: Sequence[str], timeout: float, cwd: str | None  # noqa: ASYNC109
    ) -> CommandResult:
        out: list[bytes] = []
        err: list[bytes] = []
        async with self._deadline(f"exec in {container}", timeout):
            try:
                handle = self._client().containers.container(container)
                execution = await handle.exec(
                    list(argv), stdout=True, stderr=True, workdir=cwd or None
                )
                async with execution.start(detach=False) as stream:
                    while (message := await stream.read_out()) is not None:
                        (out if message.stream == 1 else err).append(message.data)
                info = await execution.inspect()
            except aiodocker.DockerError as exc:
                # not running, gone: the probe fails with the engine's reason
                return CommandResult(126, b"", str(exc).encode())
            except (aiohttp.ClientError, OSError) as exc:
                raise self._error(f"exec in {container}", exc) from exc
        code = info.get("ExitCode")
        return CommandResult(int(code) if code is not None else 126, b"".join(out), b"".join(err))

    async def close(self) -> None:
        if self._docker is not None:
            await self._docker.close()
            self._docker = None


class CliEngine:
    """The ``docker`` CLI through a transport (for engines only reachable on their own host)."""

    def __init__(self, transport: Transport, docker: Sequence[str] = ("docker",)) -> None:
        self.transport = transport
        self.docker = list(docker)

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
