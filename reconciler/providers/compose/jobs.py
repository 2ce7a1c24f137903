"""Jobs and Schedules with the compose provider: installing one (document, files and images in
place, nothing started), running it once to completion in a detached container that is
waited for, read and removed (a timeout kills exactly that one), the record of the last run
on the host, and its state as ``observe`` reports it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import Instance, InstanceState, Release, RunResult
from reconciler.providers.compose.containers import is_running, tail
from reconciler.providers.compose.host import UP_TIMEOUT_S, ComposeHost, Prepared
from reconciler.providers.compose.render import (
    Rendered,
    compose_section,
    is_file_reference,
    project_name,
    pull_policy,
    seconds,
)
from reconciler.spec.model import Resource

DEFAULT_JOB_TIMEOUT_S = 600.0
LOG_KEEP_LINES = 1000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class JobRunner:
    """Installs and runs Jobs and Schedules on one Docker host."""

    def __init__(self, host: ComposeHost) -> None:
        self.host = host
        self._active_runs: set[str] = set()  # container names of runs being waited for here

    async def install(self, release: Release, prepared: Prepared) -> None:
        """Deploying a Job or Schedule installs it: document and files in place, images present
        (pulled per the pull policy), nothing started — ``run`` starts it, the daemon's
        scheduler at each cron fire for a Schedule."""
        rendered = prepared.rendered
        self._one_service(release.resource, rendered)
        async with self.host.lock(rendered.project):
            cli = await self.host.cli()
            env = self.host.env(release, rendered)
            await self.host.write_document(prepared, cli)
            await self.host.ensure_images(cli, prepared, pull_policy(release.resource), env, True)
            await self._update_record(rendered.project, {"installed_revision": release.revision})

    @staticmethod
    def _one_service(resource: Resource, rendered: Rendered) -> str:
        if len(rendered.services) != 1:
            raise ProviderError(
                f"{resource.key}: a {resource.kind} runs exactly one compose service, "
                f"not {len(rendered.services)} ({', '.join(rendered.services)})"
            )
        return rendered.services[0]

    async def run(self, release: Release, instance: Instance) -> RunResult:
        """Run the Job/Schedule's service once to completion (``compose run``), in a detached
        container that is waited for, read and removed: the engine keeps stdout and stderr
        apart from compose's own progress lines, and a timeout can kill exactly that one."""
        resource = release.resource
        prepared = await self.host.prepare(release)
        rendered = prepared.rendered
        project = rendered.project
        service = self._one_service(resource, rendered)
        timeout = seconds(resource.spec.get("timeout"), DEFAULT_JOB_TIMEOUT_S)
        name = f"{project}-{service}-run-{secrets.token_hex(4)}"
        async with self.host.lock(project):
            cli = await self.host.cli()
            env = self.host.env(release, rendered)
            await self.host.write_document(prepared, cli)
            await self.host.ensure_images(cli, prepared, pull_policy(resource), env)
            for leftover in await self.host.project_containers(project, oneoff=True):
                # Exited runs nobody here is waiting for: a reconciler that died mid-run.
                if not is_running(leftover) and leftover.get("Name", "").lstrip("/") not in (
                    self._active_runs
                ):
                    await self.host.engine.remove_container(str(leftover["Id"]))
            args = ["run", "-d", "--name", name, "--no-deps", service]
            section = compose_section(resource)
            if is_file_reference(section) and resource.spec.get("command"):
                args += [str(a) for a in resource.spec["command"]]
            started = time.monotonic()
            self._active_runs.add(name)
            try:
                code, out = await self.host.compose(cli, prepared, env, *args, timeout=UP_TIMEOUT_S)
            except ProviderError:
                self._active_runs.discard(name)
                await self.host.engine.remove_container(name)
                raise
        # Waiting happens outside the project lock: with concurrencyPolicy Allow, runs overlap.
        try:
            if code != 0:
                raise ProviderError(
                    f"{self.host.host_id}: compose run of {project} failed (exit {code}): "
                    f"{tail(out)}"
                )
            exit_code = await self.host.engine.wait(name, timeout)
            if exit_code is None:
                await self.host.engine.stop_container(name, 0)
            lines = await self.host.engine.logs(name, LOG_KEEP_LINES)
        finally:
            try:
                await self.host.engine.remove_container(name)
            finally:
                self._active_runs.discard(name)
        output = "\n".join(lines)
        if exit_code is None:
            exit_code = 124  # as timeout(1) reports it
            output += f"\n[fraisier] timed out after {timeout:g}s; the container was killed"
        async with self.host.lock(project):
            await self._record_run(release, project, exit_code, time.monotonic() - started, output)
        return RunResult(exit_code, output)

    async def _record_run(
        self, release: Release, project: str, exit_code: int, duration: float, output: str
    ) -> None:
        changes: dict[str, Any] = {
            "revision": release.revision,
            "exit_code": exit_code,
            "finished_at": _now(),
            "duration_s": round(duration, 3),
        }
        if exit_code == 0:
            changes["last_success_revision"] = release.revision
        await self._update_record(project, changes)
        kept = "\n".join(output.splitlines()[-LOG_KEEP_LINES:])
        await self.host.transport.write_file(
            self.host.run_log_file(project), kept.encode(), mode=0o600
        )

    async def _update_record(self, project: str, changes: Mapping[str, Any]) -> None:
        record = {**await self._read_record(project), **changes}
        await self.host.mkdir(self.host.project_dir(project))
        await self.host.transport.write_file(
            self.host.run_record_file(project), json.dumps(record).encode()
        )

    async def _read_record(self, project: str) -> dict[str, Any]:
        data = await self.host.transport.read_file(self.host.run_record_file(project))
        if not data:
            return {}
        try:
            record = json.loads(data)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    async def observe_runs(self, resource: Resource) -> list[InstanceState]:
        """A Job/Schedule has no long-running container: its state is the last run (revision of
        the last successful run) and whether a run is going on now."""
        project = project_name(resource)
        (instance,) = await self.host.instances(resource)
        record = await self._read_record(project)
        active = [
            c for c in await self.host.project_containers(project, oneoff=True) if is_running(c)
        ]
        facts: dict[str, Any] = {
            "project": project,
            "last_revision": record.get("revision"),
            "last_exit_code": record.get("exit_code"),
            "last_finished_at": record.get("finished_at"),
            "last_duration_s": record.get("duration_s"),
            "active_runs": len(active),
        }
        detail = ""
        if record.get("exit_code") not in (None, 0):
            detail = f"last run exited {record.get('exit_code')}"
        facts["installed_revision"] = record.get("installed_revision")
        # A Schedule is deployed by installing it; a Job by running it successfully.
        if resource.kind == "Schedule":
            revision = record.get("installed_revision")
        else:
            revision = record.get("last_success_revision")
        return [InstanceState(instance, revision, bool(active), detail, facts)]
