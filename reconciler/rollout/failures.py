"""The error boundary of one resource: what an exception that escaped a deployment becomes (the
project's error, an unforeseen one logged with its traceback), what is recorded of it, and the
deployment it leaves behind closed as failed, never ``in_progress``.
"""

from __future__ import annotations

import logging

from reconciler.errors import ReconcilerError, UnexpectedError
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st
from reconciler.state.store import DeploymentRecord, Store

log = logging.getLogger("reconciler.rollout")


def failure_of(key: ResourceKey, exc: Exception) -> ReconcilerError:
    """The project's error for ``exc``; an unforeseen one is logged with its traceback."""
    if isinstance(exc, ReconcilerError):
        return exc
    log.error("unexpected error; this resource failed, the pass goes on",
              exc_info=exc, extra={"resource": str(key), "error_type": type(exc).__name__,
                                   "code": UnexpectedError.code})
    return UnexpectedError.of(exc)


def recorded(failure: ReconcilerError) -> str:
    """What a failure leaves on the resource and deployment: an unforeseen error carries its
    code in the text (nothing else tells it apart there); the others their message."""
    return failure.recorded if isinstance(failure, UnexpectedError) else failure.message


async def close_failed(store: Store, dep: DeploymentRecord, failure: ReconcilerError) -> None:
    """An error escaped a deployment's own handling: close it (and its open steps) as failed,
    so it never stays in_progress."""
    current = await store.get_deployment(dep.id)
    if current is None or current.status not in st.UNFINISHED_STATUSES:
        return
    for step in current.steps:
        if step.finished_at is None:
            await store.finish_step(step.id, st.STEP_FAILED, failure.code)
    text = recorded(failure)
    await store.transition(dep.id, st.FAILED, error=text, message=text)


async def fail_resource(store: Store, key: ResourceKey, exc: Exception,
                        opened: list[DeploymentRecord]) -> ReconcilerError:
    """One resource failed outside its deployment's own handling: the deployments this attempt
    opened are closed failed and the resource's status says why."""
    failure = failure_of(key, exc)
    for dep in opened:
        await close_failed(store, dep, failure)
    await store.update_status(key, last_result=st.FAILED, last_error=recorded(failure))
    return failure
