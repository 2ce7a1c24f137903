"""Jobs (run to completion on each new revision) and Schedules (installed; each run journaled like
a Job).
"""

from __future__ import annotations

import asyncio

from reconciler.errors import ReconcilerError
from reconciler.observe import metrics
from reconciler.plan.planner import PlanItem
from reconciler.providers import Provider
from reconciler.rollout.failures import failure_of, recorded
from reconciler.rollout.journal import Journal
from reconciler.rollout.lastlines import tail, with_output
from reconciler.rollout.outcome import Outcome
from reconciler.rollout.releases import Releases
from reconciler.rollout.runner import Interrupted
from reconciler.spec.model import DesiredState, Resource
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord, ResourceRecord


class Runnables(Journal, Releases):
    """Job runs and Schedule installs and runs."""

    async def deploy_runnable(self, item: PlanItem, resource: Resource, target: Resource,
                              desired: DesiredState, trigger: str,
                              opened: list[DeploymentRecord]) -> Outcome:
        """A Job runs to completion on each new revision; a Schedule is installed (the daemon's
        scheduler, or the provider's own timer, runs it on its cron schedule)."""
        key, revision = item.key, item.revision
        assert revision is not None
        provider = self.provider_for(target)
        provider_name = str(target.spec.get("provider"))
        previous = item.record.applied_revision if item.record else None
        strategy = "run" if key.kind == "Job" else "install"
        metrics.init_deployment_series(provider_name, strategy)
        dep = await self.store.create_deployment(
            key, from_revision=previous, to_revision=revision, config_commit=desired.commit,
            trigger=trigger, strategy=strategy, spec=resource.document())
        opened.append(dep)
        await self.store.transition(dep.id, st.IN_PROGRESS)
        self.emit(key, "running" if key.kind == "Job" else "installing", revision)
        error: str | None = None
        output: str | None = None
        exit_code: int | None = None
        last_output: tuple[str, ...] = ()
        try:
            release = self.release_for(resource, revision, desired.commit)
            instances = await provider.instances(resource)
            if key.kind == "Job":
                attempts = 1 + int(resource.spec.get("backoffLimit", 0))
                for attempt in range(attempts):
                    outputs = []
                    exit_code = 0
                    for instance in instances:
                        run = await self.step(dep.id, "run", instance,
                                              provider.run(release, instance),
                                              f"attempt {attempt + 1}/{attempts}")
                        outputs.append(run.output)
                        exit_code = exit_code or run.exit_code
                    output = "\n".join(outputs)[-65536:]
                    if exit_code == 0:
                        break
                    last_output = tail(output.splitlines())
                    error = with_output(f"exited with code {exit_code}", last_output)
                    if attempt + 1 < attempts:
                        await asyncio.sleep(min(2 ** attempt, 30))
                if exit_code == 0:
                    error = None
                metrics.JOB_RUNS_TOTAL.labels("Job", "succeeded" if exit_code == 0
                                              else "failed").inc()
            else:
                for instance in instances:
                    await self.step(dep.id, "install", instance,
                                    provider.deploy(release, instance), f"revision {revision}")
        except ReconcilerError as exc:
            error = exc.message
        except (OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # unforeseen: this run fails, the pass goes on
            error = recorded(failure_of(key, exc))
        if error is None:
            await self.store.transition(dep.id, st.SUCCEEDED, output=output, exit_code=exit_code)
            await self.record_succeeded(key, revision, resource, desired.commit)
            metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy, st.SUCCEEDED).inc()
            self.emit(key, "succeeded", f"{revision}" + (f" exit {exit_code}"
                                                          if exit_code is not None else ""))
            return Outcome(key, item.action, st.SUCCEEDED, revision, deployment=dep.identifier)
        await self.store.transition(dep.id, st.FAILED, error=error, output=output,
                                    exit_code=exit_code, message=error)
        await self.store.update_status(key, sync_status="OutOfSync", health_status="Degraded",
                                       last_result=st.FAILED, last_error=error)
        metrics.DEPLOYMENTS_TOTAL.labels(provider_name, strategy, st.FAILED).inc()
        self.emit(key, "failed", error)
        return Outcome(key, item.action, st.FAILED, revision, error, deployment=dep.identifier,
                       last_output=last_output if exit_code else ())

    async def run_schedule(self, resource: Resource, target: Resource, record: ResourceRecord,
                           trigger: str = "schedule") -> DeploymentRecord:
        """One run of an installed Schedule at its applied revision, journaled like a Job."""
        key = resource.key
        revision = record.applied_revision or ""
        provider = self.provider_for(target)
        dep = await self.store.create_deployment(
            key, from_revision=revision, to_revision=revision, config_commit=record.config_commit,
            trigger=trigger, strategy="run", spec=resource.document())
        self.running_deployments.add(dep.id)
        try:
            return await self._run_schedule(dep, resource, provider)
        finally:
            self.running_deployments.discard(dep.id)

    async def _run_schedule(self, dep: DeploymentRecord, resource: Resource,
                            provider: Provider) -> DeploymentRecord:
        key, revision = resource.key, dep.to_revision
        await self.store.transition(dep.id, st.IN_PROGRESS)
        error: str | None = None
        output = ""
        exit_code: int | None = None
        try:
            release = self.release_for(resource, revision, dep.config_commit)
            for instance in await provider.instances(resource):
                run = await self.step(dep.id, "run", instance, provider.run(release, instance))
                output += run.output
                exit_code = exit_code or run.exit_code
            if exit_code:
                error = with_output(f"exited with code {exit_code}", tail(output.splitlines()))
        except ReconcilerError as exc:
            error = exc.message
        except Interrupted:
            raise
        except Exception as exc:  # unforeseen: this run fails, never left in_progress
            error = recorded(failure_of(key, exc))
        status = st.SUCCEEDED if error is None else st.FAILED
        await self.store.transition(dep.id, status, error=error, output=output[-65536:],
                                    exit_code=exit_code, message=error)
        await self.store.update_status(key, last_result=status, last_error=error,
                                       health_status="Healthy" if error is None else "Degraded")
        metrics.JOB_RUNS_TOTAL.labels("Schedule", status).inc()
        self.emit(key, "ran", error or f"exit {exit_code}")
        found = await self.store.get_deployment(dep.id)
        assert found is not None
        return found

