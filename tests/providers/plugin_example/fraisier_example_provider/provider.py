"""The example provider: each Service is one process of this machine, started detached (it
outlives ``reconciler apply``), found again through its pid file and the pid's start time."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import workload_env
from reconciler.providers.contract import (
    Capabilities,
    Identity,
    Instance,
    InstanceState,
    Phase,
    ProviderContext,
    Release,
    RunResult,
)
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource

HERE = Instance("local", "127.0.0.1")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None
    when it is gone or a zombie: with the pid it names one process, never a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


class ExampleProvider:
    capabilities = Capabilities()

    def __init__(self, target: Resource, ctx: ProviderContext) -> None:
        self.root = Path(str(target.spec["root"]))

    def _dir(self, resource: Resource) -> Path:
        return self.root / resource.environment / resource.kind / resource.name

    def _read(self, resource: Resource) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self._dir(resource) / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return data

    def _alive(self, state: dict[str, Any] | None) -> bool:
        return bool(state and _start_time(int(state["pid"])) == state["started"])

    async def instances(self, resource: Resource) -> list[Instance]:
        return [HERE]

    async def observe(self, resource: Resource) -> list[InstanceState]:
        state = self._read(resource)
        if state is None:
            return [InstanceState(HERE, None, False, "not deployed", phase=Phase.MISSING)]
        alive = self._alive(state)
        log = self._dir(resource) / "output.log"
        tail = tuple(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else ()
        return [InstanceState(
            HERE, state["revision"], alive, "" if alive else "exited",
            last_output=() if alive else tail,
            identity=Identity(pid=int(state["pid"]), started_at=state["started"]),
            working_dir=state["cwd"],
        )]

    async def _release_dir(self, release: Release) -> Path:
        releases = self._dir(release.resource) / "releases"
        path = releases / release.revision
        if not path.exists():
            staging = releases / f".{release.revision}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            if release.export is not None:
                await release.export(staging)
            staging.rename(path)
        return path

    async def deploy(self, release: Release, instance: Instance) -> None:
        resource = release.resource
        current = self._read(resource)
        if self._alive(current) and current and current["revision"] == release.revision:
            return  # already there: deploy is idempotent
        await self.stop(resource, instance)
        cwd = (await self._release_dir(release)) / str(resource.spec.get("workingDir") or ".")
        section = resource.spec.get("example") or {}
        argv = [*map(str, resource.spec.get("command") or []), *map(str, section.get("args", []))]
        if not argv:
            raise ProviderError(f"{resource.key}: the example provider needs spec.command")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               **workload_env(resource, release.revision), **release.env}
        with open(self._dir(resource) / "output.log", "ab") as log:
            try:
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                raise ProviderError(f"{resource.key}: cannot start {argv[0]}: {exc}") from exc
        state = {"pid": proc.pid, "started": _start_time(proc.pid),
                 "revision": release.revision, "cwd": str(cwd)}
        (self._dir(resource) / "state.json").write_text(json.dumps(state))

    async def stop(self, resource: Resource, instance: Instance) -> None:
        state = self._read(resource)
        if not self._alive(state):
            return
        assert state is not None
        pid = int(state["pid"])
        grace = to_seconds((resource.spec.get("example") or {}).get("stopGrace"), 5.0)
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._alive(state) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._alive(state):
            os.killpg(pid, signal.SIGKILL)

    async def remove(self, resource: Resource, instance: Instance) -> None:
        await self.stop(resource, instance)
        shutil.rmtree(self._dir(resource), ignore_errors=True)

    async def run(self, release: Release, instance: Instance) -> RunResult:
        resource = release.resource
        cwd = await self._release_dir(release)
        argv = [str(a) for a in resource.spec.get("command") or []]
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 **workload_env(resource, release.revision), **release.env})
        out, _ = await proc.communicate()
        return RunResult(proc.returncode or 0, out.decode(errors="replace"))

    async def logs(self, resource: Resource, instance: Instance, tail: int = 100) -> list[str]:
        log = self._dir(resource) / "output.log"
        return log.read_text(errors="replace").splitlines()[-tail:] if log.exists() else []

    async def close(self) -> None:
        return None


def create_provider(target: Resource, ctx: ProviderContext) -> ExampleProvider:
    return ExampleProvider(target, ctx)
