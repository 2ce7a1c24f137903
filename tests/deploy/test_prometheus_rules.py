"""deploy/prometheus and deploy/grafana: promtool checks and unit tests, and every metric the
rules and the dashboard name is one the daemon really exports (reconciler.observe.metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.observe.metrics import REGISTRY
from tests.helpers import need

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERT_TESTS = PROM_DIR / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fraisier.json"

# Series Prometheus itself makes, not the daemon.
PROMETHEUS_SERIES = {"up"}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def exported_names() -> set[str]:
    """Every sample name the daemon's registry can expose, even for labelled metrics that have
    no series yet (collect() yields no samples for those, so names come from family + type)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (no PromQL parser in Python: strip what is not a
    metric name — strings, label matchers, ranges, grouping clauses, Grafana variables,
    numbers and durations, function names and keywords — and keep the identifiers left)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in doc["groups"] for rule in group["rules"]}


def dashboard_targets(doc: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
        for inner in panel.get("panels", []):
            out.extend((inner["title"], t["expr"]) for t in inner.get("targets", []))
    return out


def promtool() -> str:
    path = shutil.which("promtool")
    need(path is not None, "promtool not installed (Debian package `prometheus`)")
    assert path is not None
    return path


# -- the parser the metric checks rely on --------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job="fraisier"} == 0', {"up"}),
        ("absent(up{job=\"fraisier\"})", {"up"}),
        (
            'sum by (job, instance, reason) (increase(reconciler_rollbacks_total'
            '{reason!="manual"}[15m])) > 0',
            {"reconciler_rollbacks_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~\"$instance\"}"
            "[$__rate_interval])))",
            {"a_bucket"},
        ),
        (
            "(time() - process_start_time_seconds > 1800) and on (job, instance) "
            "(last_sync == 0) or vector(0) offset 5m",
            {"process_start_time_seconds", "last_sync"},
        ),
        ("count(x{a=\"b{c}\"}) or 1e3 + y * 2", {"x", "y"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)") unless on () n', {"m", "n"}),
    ],
)
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def unknown_metrics(expr: str) -> set[str]:
    return promql_metric_names(expr) - exported_names() - PROMETHEUS_SERIES


def test_a_misspelled_metric_is_caught() -> None:
    assert unknown_metrics("increase(reconciler_rollback_total[5m]) > 0") == {
        "reconciler_rollback_total"
    }
    assert unknown_metrics("rate(reconciler_deployments_count[5m])") == {
        "reconciler_deployments_count"
    }
    assert unknown_metrics("increase(reconciler_rollbacks_total[5m]) > 0") == set()


def test_exported_names_include_suffixed_series() -> None:
    names = exported_names()
    assert "reconciler_deployments_total" in names
    assert "reconciler_reconcile_duration_seconds_bucket" in names
    assert "reconciler_resource_info" in names
    assert "reconciler_deployments" not in names


# -- rules ---------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


@pytest.mark.timeout(60)
def test_promtool_check_example_config() -> None:
    proc = subprocess.run([promtool(), "check", "config", str(PROM_DIR / "prometheus.yml")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_promtool_unit_tests_pass() -> None:
    proc = subprocess.run([promtool(), "test", "rules", ALERT_TESTS.name], cwd=PROM_DIR,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@pytest.mark.timeout(60)
def test_promtool_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: alerting on manual instead of automatic rollbacks fails."""
    broken = ALERTS.read_text().replace('reason!="manual"', 'reason!="health"')
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    proc = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "FraisierRollback" in proc.stdout + proc.stderr


def test_every_rule_is_unit_tested_firing_and_not_firing() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    rules = set(rule_exprs())
    assert rules - firing == set(), "rules without a firing test"
    assert rules - silent == set(), "rules without a not-firing test"


def test_every_rule_has_severity_summary_description_runbook() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            for key in ("summary", "description", "runbook"):
                assert rule["annotations"].get(key, "").strip(), (rule["alert"], key)


def test_rules_name_only_exported_metrics() -> None:
    seen: set[str] = set()
    for alert, expr in rule_exprs().items():
        names = promql_metric_names(expr)
        assert names, f"{alert}: no metric found in {expr!r}"
        assert unknown_metrics(expr) == set(), alert
        seen |= names
    # The rules cover the list: a dropped rule shows up here.
    for metric in ("up", "reconciler_last_successful_sync_timestamp_seconds",
                   "reconciler_resource_info", "reconciler_deployments_total",
                   "reconciler_rollbacks_total", "reconciler_drift_resources",
                   "reconciler_git_fetch_errors_total", "reconciler_desired_state_errors_total",
                   "reconciler_webhook_requests_total", "reconciler_db_errors_total"):
        assert metric in seen, metric


def test_webhook_rule_uses_the_result_the_routes_emit() -> None:
    """The routes count a bad signature as result="unauthorized" (webhook_routes.respond)."""
    source = (ROOT / "reconciler" / "daemon" / "webhook_routes.py").read_text()
    assert 'respond(401, "unauthorized"' in source
    assert 'result="unauthorized"' in rule_exprs()["FraisierWebhookSignatureFailures"]


# -- dashboard -----------------------------------------------------------------------------------
def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "fraisier" and doc["title"]
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in doc["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    titles = " | ".join(p["title"] for p in doc["panels"]).lower()
    for topic in ("sync status", "health status", "reconcile", "deployments by result",
                  "rollback", "drift", "git fetch", "webhook"):
        assert topic in titles, topic


def test_dashboard_names_only_exported_metrics() -> None:
    targets = dashboard_targets(json.loads(DASHBOARD.read_text()))
    assert len(targets) >= 20
    for title, expr in targets:
        assert promql_metric_names(expr), f"{title}: no metric found in {expr!r}"
        assert unknown_metrics(expr) == set(), title
