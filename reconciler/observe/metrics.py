"""Prometheus metrics, served by the daemon itself. Labels never carry secret values.

The instruments (``RECONCILE_TOTAL``, ``REGISTRY``, …) are defined in
`reconciler.observe.instruments` and made on the first use of one through this module: importing
prometheus_client and building them is ~40 ms of CPU, which a command that counts nothing (`diff`,
`status`, `validate`) does not pay. Every module uses them as ``metrics.NAME``. Only the daemon
serves them: a one-shot command (`apply`, `rollback`, …) calls ``discard()`` and its updates go
nowhere, without prometheus_client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ gives, for the type checker
    from reconciler.observe.instruments import COMMIT_STATUS_TOTAL as COMMIT_STATUS_TOTAL
    from reconciler.observe.instruments import DB_CONNECTIONS as DB_CONNECTIONS
    from reconciler.observe.instruments import DB_ERRORS as DB_ERRORS
    from reconciler.observe.instruments import DB_QUERY_DURATION as DB_QUERY_DURATION
    from reconciler.observe.instruments import DEPLOYMENT_DURATION as DEPLOYMENT_DURATION
    from reconciler.observe.instruments import DEPLOYMENTS_TOTAL as DEPLOYMENTS_TOTAL
    from reconciler.observe.instruments import DESIRED_STATE_ERRORS as DESIRED_STATE_ERRORS
    from reconciler.observe.instruments import DESIRED_STATE_REFUSED as DESIRED_STATE_REFUSED
    from reconciler.observe.instruments import DRIFT_RESOURCES as DRIFT_RESOURCES
    from reconciler.observe.instruments import GIT_FETCH_DURATION as GIT_FETCH_DURATION
    from reconciler.observe.instruments import GIT_FETCH_ERRORS as GIT_FETCH_ERRORS
    from reconciler.observe.instruments import HEALTH_CHECK_DURATION as HEALTH_CHECK_DURATION
    from reconciler.observe.instruments import HEALTH_CHECK_FAILURES as HEALTH_CHECK_FAILURES
    from reconciler.observe.instruments import HTTP_REFUSED as HTTP_REFUSED
    from reconciler.observe.instruments import HTTP_REFUSED_REASONS as HTTP_REFUSED_REASONS
    from reconciler.observe.instruments import JOB_RUNS_TOTAL as JOB_RUNS_TOTAL
    from reconciler.observe.instruments import LAST_SUCCESSFUL_SYNC as LAST_SUCCESSFUL_SYNC
    from reconciler.observe.instruments import LOCK_WAIT as LOCK_WAIT
    from reconciler.observe.instruments import NOTIFICATIONS_TOTAL as NOTIFICATIONS_TOTAL
    from reconciler.observe.instruments import PASS_OVERRUN_LIMIT as PASS_OVERRUN_LIMIT
    from reconciler.observe.instruments import PROCESS as PROCESS
    from reconciler.observe.instruments import RECONCILE_AGE as RECONCILE_AGE
    from reconciler.observe.instruments import RECONCILE_DURATION as RECONCILE_DURATION
    from reconciler.observe.instruments import RECONCILE_TOTAL as RECONCILE_TOTAL
    from reconciler.observe.instruments import REGISTRY as REGISTRY
    from reconciler.observe.instruments import RESOURCE_INFO as RESOURCE_INFO
    from reconciler.observe.instruments import ROLLBACKS_TOTAL as ROLLBACKS_TOTAL
    from reconciler.observe.instruments import SSH_CONNECTIONS as SSH_CONNECTIONS
    from reconciler.observe.instruments import WEBHOOK_REQUESTS as WEBHOOK_REQUESTS


# The instruments a command updates as it works (`reconciler.observe.instruments` makes them;
# a test keeps this list equal to what it defines). ``discard()`` turns these into no-ops.
UPDATED = ("COMMIT_STATUS_TOTAL", "DB_CONNECTIONS", "DB_ERRORS", "DB_QUERY_DURATION",
           "DEPLOYMENT_DURATION", "DEPLOYMENTS_TOTAL", "DESIRED_STATE_ERRORS",
           "DESIRED_STATE_REFUSED", "DRIFT_RESOURCES", "GIT_FETCH_DURATION", "GIT_FETCH_ERRORS",
           "HEALTH_CHECK_DURATION", "HEALTH_CHECK_FAILURES", "HTTP_REFUSED", "JOB_RUNS_TOTAL",
           "LAST_SUCCESSFUL_SYNC", "LOCK_WAIT", "NOTIFICATIONS_TOTAL", "PASS_OVERRUN_LIMIT",
           "RECONCILE_AGE", "RECONCILE_DURATION", "RECONCILE_TOTAL", "RESOURCE_INFO",
           "ROLLBACKS_TOTAL", "SSH_CONNECTIONS", "WEBHOOK_REQUESTS")


class Discarded:
    """An instrument of a process that serves no metrics: every update goes nowhere."""

    rows: frozenset[tuple[str, ...]] = frozenset()

    def labels(self, *values: object, **named: object) -> Discarded:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def observe(self, value: float) -> None:
        return None

    def set(self, value: float) -> None:
        return None

    def set_to_current_time(self) -> None:
        return None

    def set_function(self, function: object) -> None:
        return None


def discard() -> None:
    """This process serves no metrics (a one-shot command: only the daemon has /metrics): its
    instruments become ``Discarded``, and prometheus_client is not imported for them."""
    globals().update(dict.fromkeys(UPDATED, Discarded()))


def __getattr__(name: str) -> object:
    """``metrics.NAME`` of an instrument: imports `instruments` (once) and binds every
    instrument here, so later uses are plain module globals."""
    from reconciler.observe import instruments

    made = {k: v for k, v in vars(instruments).items() if k.isupper()}
    if name not in made:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update({k: v for k, v in made.items() if k not in globals()})
    return made[name]


def _bound(name: str) -> Any:
    """An instrument by name from inside this module (a module's ``__getattr__`` serves only
    attribute access from outside)."""
    made = globals().get(name)
    return made if made is not None else __getattr__(name)


def publish_resources(rows: Iterable[tuple[object, ...]]) -> None:
    """Make the resource_info series the current set (one atomic swap of the snapshot)."""
    _bound("RESOURCE_INFO").rows = frozenset(
        (str(env), str(kind), str(name), str(sync), str(health))
        for env, kind, name, sync, health in rows)


DEPLOYMENT_RESULTS = ("succeeded", "failed", "rolled_back", "rollback_failed")


def init_deployment_series(provider: str, strategy: str) -> None:
    """Create every result series of a provider/strategy pair at 0, before its first deployment
    finishes, so the "deployment failed" alert sees the first failure (see instruments)."""
    for result in DEPLOYMENT_RESULTS:
        _bound("DEPLOYMENTS_TOTAL").labels(provider, strategy, result)


@contextmanager
def db_operation(backend: str, operation: str) -> Iterator[None]:
    """Time one store operation; count it in ``reconciler_db_errors_total`` when it raises.

    ``operation`` must come from a fixed set (method names), never from data.
    """
    started = time.perf_counter()
    try:
        yield
    except Exception:
        _bound("DB_ERRORS").inc()
        raise
    finally:
        elapsed = time.perf_counter() - started
        _bound("DB_QUERY_DURATION").labels(backend, operation).observe(elapsed)
