"""Prometheus metrics, served by the daemon itself. Labels never carry secret values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_DURATION = Histogram(
    "reconciler_reconcile_duration_seconds", "Duration of one reconcile pass.",
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RECONCILE_TOTAL = Counter(
    "reconciler_reconcile_total", "Reconcile passes by result (converged, failed, error).",
    ["result"], registry=REGISTRY,
)
RESOURCE_INFO = Gauge(
    "reconciler_resource_info", "One series per resource with its sync and health status.",
    ["environment", "kind", "name", "sync_status", "health_status"], registry=REGISTRY,
)
DEPLOYMENTS_TOTAL = Counter(
    "reconciler_deployments_total", "Finished deployments by provider, strategy and result.",
    ["provider", "strategy", "result"], registry=REGISTRY,
)
DEPLOYMENT_DURATION = Histogram(
    "reconciler_deployment_duration_seconds", "Duration of deployments.", ["provider"],
    registry=REGISTRY, buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
ROLLBACKS_TOTAL = Counter(
    "reconciler_rollbacks_total", "Automatic and manual rollbacks by reason.", ["reason"],
    registry=REGISTRY,
)
HEALTH_CHECK_DURATION = Histogram(
    "reconciler_health_check_duration_seconds", "Duration of health gates.", registry=REGISTRY,
)
HEALTH_CHECK_FAILURES = Counter(
    "reconciler_health_check_failures_total", "Health gates that failed.", registry=REGISTRY,
)
DRIFT_RESOURCES = Gauge(
    "reconciler_drift_resources", "Resources whose live state differs from the applied one.",
    registry=REGISTRY,
)
GIT_FETCH_DURATION = Histogram(
    "reconciler_git_fetch_duration_seconds", "Duration of git fetch / ref resolution.",
    registry=REGISTRY,
)
GIT_FETCH_ERRORS = Counter(
    "reconciler_git_fetch_errors_total", "Failed git fetches (last good state kept).",
    registry=REGISTRY,
)
LAST_SUCCESSFUL_SYNC = Gauge(
    "reconciler_last_successful_sync_timestamp_seconds",
    "Unix time of the last reconcile pass that converged.", registry=REGISTRY,
)
DESIRED_STATE_ERRORS = Counter(
    "reconciler_desired_state_errors_total",
    "Commits whose desired state failed validation (nothing applied).", registry=REGISTRY,
)
JOB_RUNS_TOTAL = Counter(
    "reconciler_job_runs_total", "Job and Schedule runs by kind and result.", ["kind", "result"],
    registry=REGISTRY,
)
WEBHOOK_REQUESTS = Counter(
    "reconciler_webhook_requests_total", "Webhook requests by provider and result.",
    ["provider", "result"], registry=REGISTRY,
)


def publish_resources(rows: list[tuple[str, str, str, str, str]]) -> None:
    """Replace the resource_info series with the current set (no stale series)."""
    RESOURCE_INFO.clear()
    for environment, kind, name, sync_status, health_status in rows:
        RESOURCE_INFO.labels(environment, kind, name, sync_status, health_status).set(1)
