"""The additive parts of reconciler.observe.metrics: store metrics, zero-initialised series."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from reconciler.errors import StoreError
from reconciler.observe import metrics
from reconciler.observe.metrics import REGISTRY


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_db_operation_times_and_counts_errors() -> None:
    count = "reconciler_db_query_duration_seconds_count"
    before_ok = value(count, backend="sqlite", operation="test_op") or 0.0
    before_errors = value("reconciler_db_errors_total") or 0.0
    with metrics.db_operation("sqlite", "test_op"):
        pass
    with pytest.raises(StoreError), metrics.db_operation("sqlite", "test_op"):
        raise StoreError("database is locked")
    assert value(count, backend="sqlite", operation="test_op") == before_ok + 2
    assert value("reconciler_db_errors_total") == before_errors + 1


def test_known_label_values_start_at_zero() -> None:
    """increase() ignores a series' first sample, so these must exist before the first event."""
    text = generate_latest(REGISTRY).decode()
    for reason in ("health", "error", "manual"):
        assert f'reconciler_rollbacks_total{{reason="{reason}"}}' in text
    for provider in ("github", "gitlab", "gitea", "bitbucket"):
        assert (f'reconciler_webhook_requests_total{{provider="{provider}",'
                f'result="unauthorized"}}') in text
    assert "reconciler_db_errors_total" in text


def test_init_deployment_series() -> None:
    metrics.init_deployment_series("test_provider", "canary")
    for result in metrics.DEPLOYMENT_RESULTS:
        assert value("reconciler_deployments_total", provider="test_provider",
                     strategy="canary", result=result) == 0.0


def test_process_metrics_are_served() -> None:
    text = generate_latest(REGISTRY).decode()
    assert "process_start_time_seconds" in text
    assert "process_resident_memory_bytes" in text


def test_published_resources_are_exactly_the_last_snapshot() -> None:
    def published() -> set[tuple[str, ...]]:
        return {(s.labels["environment"], s.labels["kind"], s.labels["name"],
                 s.labels["sync_status"], s.labels["health_status"])
                for m in REGISTRY.collect() if m.name == "reconciler_resource_info"
                for s in m.samples if s.value == 1}

    a = ("prod", "Service", "api", "Synced", "Healthy")
    b = ("prod", "Job", "etl", "Synced", "Healthy")
    b_failed = ("prod", "Job", "etl", "OutOfSync", "Degraded")
    metrics.publish_resources([a, b])
    assert published() == {a, b}
    metrics.publish_resources([a, b_failed])  # a status change replaces its series
    assert published() == {a, b_failed}
    metrics.publish_resources([b])  # a resource gone from the records: no stale series
    assert published() == {b}
    metrics.publish_resources([])
    assert published() == set()
    text = generate_latest(REGISTRY).decode()  # described even when empty (alert rules use it)
    assert "# TYPE reconciler_resource_info gauge" in text
    metrics.publish_resources([("prod", "Service", "web", "Synced", "Healthy")])
    text = generate_latest(REGISTRY).decode()
    assert ('reconciler_resource_info{environment="prod",health_status="Healthy",kind="Service",'
            'name="web",sync_status="Synced"} 1.0') in text


def test_discard_covers_every_instrument_a_command_updates() -> None:
    """`metrics.UPDATED` is what instruments.py defines, less the registry, the process
    collector and constants; a one-shot command's discarded instruments take every update the
    code makes (checked in a fresh interpreter: discard() rebinds this module's globals)."""
    import subprocess
    import sys

    from reconciler.observe import instruments, metrics

    defined = {name for name, value in vars(instruments).items()
               if name.isupper() and name not in ("REGISTRY", "PROCESS")
               and not isinstance(value, tuple)}
    assert set(metrics.UPDATED) == defined
    code = (
        "import sys\n"
        "from reconciler.observe import metrics\n"
        "metrics.discard()\n"
        "metrics.RECONCILE_TOTAL.labels('default', 'ok').inc()\n"
        "metrics.DEPLOYMENT_DURATION.labels('p').observe(1.0)\n"
        "metrics.LAST_SUCCESSFUL_SYNC.set_to_current_time()\n"
        "metrics.DRIFT_RESOURCES.set(3)\n"
        "metrics.RECONCILE_AGE.set_function(lambda: 0.0)\n"
        "metrics.publish_resources([('default', 'Service', 'api', 'Synced', 'Healthy')])\n"
        "metrics.init_deployment_series('bare_metal', 'recreate')\n"
        "with metrics.db_operation('sqlite', 'get'):\n"
        "    pass\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "False"
