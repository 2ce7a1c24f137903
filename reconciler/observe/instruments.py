"""The Prometheus instruments behind `reconciler.observe.metrics` (use them through it: this
module is imported on the first use of one, see there). Labels never carry secret values."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_DURATION = Histogram(
    "reconciler_reconcile_duration_seconds", "Duration of one reconcile pass.",
    registry=REGISTRY, buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
RECONCILE_TOTAL = Counter(
    "reconciler_reconcile_total", "Reconcile passes by result (converged, failed, error).",
    ["result"], registry=REGISTRY,
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
RECONCILE_AGE = Gauge(
    "reconciler_reconcile_age_seconds",
    "Age of the reconcile pass in progress (0 between passes); past --pass-overrun /readyz "
    "answers not ready.", registry=REGISTRY,
)
PASS_OVERRUN_LIMIT = Gauge(
    "reconciler_pass_overrun_limit_seconds",
    "The --pass-overrun limit: a pass in progress longer than this makes /readyz not ready.",
    registry=REGISTRY,
)
LAST_SUCCESSFUL_SYNC = Gauge(
    "reconciler_last_successful_sync_timestamp_seconds",
    "Unix time of the last reconcile pass that converged.", registry=REGISTRY,
)
COMMIT_STATUS_TOTAL = Counter(
    "reconciler_commit_status_total",
    "Commit status updates by git host and result (sent, retried, failed, dropped, skipped).",
    ["host", "result"], registry=REGISTRY,
)
DESIRED_STATE_ERRORS = Counter(
    "reconciler_desired_state_errors_total",
    "Commits whose desired state failed validation (nothing applied).", registry=REGISTRY,
)
DESIRED_STATE_REFUSED = Counter(
    "reconciler_desired_state_refused_total",
    "Commits refused as a whole (last good state kept) by reason: invalid (validation) or "
    "policy (the operator policy or the secret invariants).", ["reason"], registry=REGISTRY,
)
for _reason in ("invalid", "policy"):
    DESIRED_STATE_REFUSED.labels(_reason)
NOTIFICATIONS_TOTAL = Counter(
    "reconciler_notifications_total",
    "Notification messages by destination (who configured it and the service, never the URL), "
    "event kind in the message and result: delivered, failed (gave up after its retries), "
    "dropped (queue full) or suppressed (a repeat held back within the repeat interval).",
    ["destination", "event", "result"], registry=REGISTRY,
)
SSH_CONNECTIONS = Counter(
    "reconciler_ssh_connections_total",
    "SSH logins made (each pooled connection is reused across resources and passes, so this "
    "grows by about one per host unless connections are lost).", registry=REGISTRY,
)
JOB_RUNS_TOTAL = Counter(
    "reconciler_job_runs_total", "Job and Schedule runs by kind and result.", ["kind", "result"],
    registry=REGISTRY,
)
HTTP_REFUSED = Counter(
    "reconciler_http_refused_total",
    "HTTP connections refused or closed and requests refused by the daemon's limits, by reason.",
    ["reason"], registry=REGISTRY,
)
HTTP_REFUSED_REASONS = ("connections", "peer_connections", "fd_reserve", "evicted",
                        "header_timeout", "body_timeout", "rate_limited", "accept_failed")
WEBHOOK_REQUESTS = Counter(
    "reconciler_webhook_requests_total", "Webhook requests by provider and result.",
    ["provider", "result"], registry=REGISTRY,
)


ResourceRow = tuple[str, str, str, str, str]


class ResourceInfo(Collector):
    """``reconciler_resource_info``: one series per resource with its sync and health status,
    built from the last published snapshot when Prometheus scrapes.

    A labelled Gauge made the reconcile pass pay for the series: creating 10,000 of them
    (prometheus_client validates each label set) cost 0.1-0.2 s of a no-op pass over a large
    fleet, and keeping them in step needed a diff. Here a pass only swaps the snapshot; the
    samples are made at scrape time, off the reconcile path, and a resource that is gone simply
    is not in the next snapshot (no stale series)."""

    NAME = "reconciler_resource_info"
    DOC = "One series per resource with its sync and health status."
    LABELS = ("environment", "kind", "name", "sync_status", "health_status")

    def __init__(self) -> None:
        self.rows: frozenset[ResourceRow] = frozenset()

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, self.DOC, labels=self.LABELS)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.DOC, labels=self.LABELS)
        for row in sorted(self.rows):
            family.add_metric(row, 1)
        yield family


RESOURCE_INFO = ResourceInfo()
REGISTRY.register(RESOURCE_INFO)


# -- database and locks (issue 8 item 5) ------------------------------------------------------
DB_QUERY_DURATION = Histogram(
    "reconciler_db_query_duration_seconds", "Duration of store operations.",
    ["backend", "operation"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_ERRORS = Counter(
    "reconciler_db_errors_total", "Store operations that raised (any backend).",
    registry=REGISTRY,
)
DB_CONNECTIONS = Gauge(
    "reconciler_db_connections", "Store connections by state (open, in_use, idle).", ["state"],
    registry=REGISTRY,
)
LOCK_WAIT = Histogram(
    "reconciler_lock_wait_seconds", "Time spent waiting for a database or resource lock.",
    registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)

# process_* (CPU, RSS, open fds, start time) from the daemon's own registry: the dashboard
# shows them and the "reconcile stalled" alert uses the start time for a daemon that never
# converged since it started.
PROCESS = ProcessCollector(registry=REGISTRY)

# Known label values start at 0. A counter series that first appears already at 1 is invisible
# to increase()/rate(), so an alert on "rollbacks increased" would miss the first rollback.
for _reason in ("health", "error", "manual"):
    ROLLBACKS_TOTAL.labels(_reason)
for _result in ("converged", "failed"):
    RECONCILE_TOTAL.labels(_result)
for _provider in ("github", "gitlab", "gitea", "bitbucket"):
    WEBHOOK_REQUESTS.labels(_provider, "unauthorized")
for _reason in HTTP_REFUSED_REASONS:
    HTTP_REFUSED.labels(_reason)
