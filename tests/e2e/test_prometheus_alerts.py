"""A real Prometheus scrapes a running ``reconciler daemon``: failed deployments and a health
rollback show up as alerts through Prometheus' HTTP API, every rule evaluates cleanly on the real
series, the dashboard's queries return data, and stopping the daemon raises "daemon down".

The rules are deploy/prometheus/alerts.yml with only the ``for:`` durations shortened (a test
copy); the expressions, thresholds and 15m look-back windows are the shipped ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_prometheus_rules import (
    PROMETHEUS_SERIES,
    dashboard_targets,
    promql_metric_names,
    rule_exprs,
)
from tests.e2e.conftest import Fleet, free_port, service_yaml, wait_for
from tests.helpers import need

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "fraisier.json"
DEADLINE_S = 85.0


def get_json(url: str, timeout: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")
    except (OSError, ValueError):
        return None


def ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def alerts(self) -> list[dict[str, Any]]:
        doc = get_json(self.base + "/api/v1/alerts")
        return list(doc["data"]["alerts"]) if doc and doc.get("status") == "success" else []

    def alert(self, alertname: str, **labels: str) -> dict[str, Any] | None:
        for alert in self.alerts():
            got = alert["labels"]
            if got.get("alertname") == alertname and all(
                got.get(k) == v for k, v in labels.items()
            ):
                return alert
        return None

    def query(self, expr: str) -> dict[str, Any]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        doc = get_json(url)
        assert doc is not None, expr
        return dict(doc)

    def rules(self) -> list[dict[str, Any]]:
        doc = get_json(self.base + "/api/v1/rules")
        return [rule for group in doc["data"]["groups"] for rule in group["rules"]]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Signal the process group we started; SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; all are stopped at the end, whatever happens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in reversed(procs):
        stop(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM, wait=5)


def served_names(exposition: str) -> set[str]:
    """Sample names a /metrics page can carry: families from ``# TYPE`` (present even before a
    labelled metric has a series) with their type's suffixes, plus every sample line."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + suffix for suffix in suffixes.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def short_for_rules(target: Path) -> None:
    text = ALERTS.read_text()
    shortened, count = re.subn(r"(?m)^(\s+for:\s*)\S+$", r"\g<1>2s", text)
    assert count >= 5
    target.write_text(shortened)


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"))
            out.append((panel["title"], expr))
    return out


@pytest.mark.timeout(150)
def test_failed_deployment_and_rollback_fire_alerts(fleet: Fleet, tmp_path: Path,
                                                    started: list[subprocess.Popen[bytes]]
                                                    ) -> None:
    prometheus_bin = shutil.which("prometheus")
    need(prometheus_bin is not None, "prometheus not installed (Debian package `prometheus`)")
    assert prometheus_bin is not None
    t0 = time.monotonic()

    def left() -> float:
        return max(1.0, DEADLINE_S - (time.monotonic() - t0))

    api_port, worker_port, listen, prom_port = free_port(), free_port(), free_port(), free_port()
    fleet.write("api.yaml", service_yaml("api", api_port, greeting="one"))
    fleet.commit("api one")

    daemon_log = (tmp_path / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "--state-dir", str(fleet.state), "daemon",
         *fleet.repo_args(), "--listen", f"127.0.0.1:{listen}", "--interval", "30s"],
        stdout=daemon_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=fleet.repo)
    started.append(daemon)

    rules = tmp_path / "alerts.yml"
    short_for_rules(rules)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: fraisier
    static_configs:
      - targets: ["127.0.0.1:{listen}"]
""")
    prom_log = (tmp_path / "prometheus.log").open("wb")
    prometheus = subprocess.Popen(
        [prometheus_bin, f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=prom_log, stderr=subprocess.STDOUT, start_new_session=True)
    started.append(prometheus)
    prom = Prometheus(f"http://127.0.0.1:{prom_port}")

    def logs() -> str:
        daemon_log.flush()
        prom_log.flush()
        return ("--- daemon\n" + (tmp_path / "daemon.log").read_text(errors="replace")[-3000:]
                + "\n--- prometheus\n"
                + (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:])

    try:
        wait_for(lambda: ok(f"http://127.0.0.1:{listen}/readyz"), timeout=min(40, left()),
                 step=0.2)
        wait_for(lambda: ok(prom.base + "/-/ready"), timeout=min(20, left()), step=0.2)
        # The first good deployment, as Prometheus sees it.
        wait_for(lambda: prom.query(
            'reconciler_deployments_total{job="fraisier", result="succeeded"} > 0'
        )["data"]["result"], timeout=min(30, left()), step=0.25)
        assert prom.alert("FraisierRollback") is None
        assert prom.alert("FraisierDeploymentFailed") is None
        assert prom.alert("FraisierDaemonDown") is None

        # api: a new revision whose health check fails → rolled back to "one".
        # worker: broken from its first revision → nothing to roll back to → failed (retried).
        fleet.write("api.yaml", service_yaml("api", api_port, greeting="two", fail=True))
        fleet.write("worker.yaml", service_yaml("worker", worker_port, fail=True))
        fleet.commit("api two (broken), worker (broken)")
        changed = time.monotonic()

        rollback = wait_for(
            lambda: (a := prom.alert("FraisierRollback", reason="health")) is not None
            and a["state"] in ("pending", "firing") and a,
            timeout=min(40, left()), step=0.25)
        print(f"commit -> FraisierRollback {rollback['state']}: "
              f"{time.monotonic() - changed:.1f}s")
        assert rollback["labels"]["severity"] == "warning"
        assert rollback["labels"]["job"] == "fraisier"
        assert "health" in rollback["annotations"]["description"]

        failed = wait_for(
            lambda: (a := prom.alert("FraisierDeploymentFailed", result="failed")) is not None
            and a["state"] in ("pending", "firing") and a,
            timeout=min(40, left()), step=0.25)
        print(f"commit -> FraisierDeploymentFailed {failed['state']}: "
              f"{time.monotonic() - changed:.1f}s")
        assert failed["labels"]["severity"] == "critical"
        assert failed["labels"]["provider"] == "bare_metal"

        # The broken worker is degraded and out of sync; with `for` shortened those fire too.
        degraded = wait_for(lambda: prom.alert("FraisierResourceDegraded", name="worker"),
                            timeout=min(15, left()), step=0.25)
        assert degraded["labels"]["kind"] == "Service"

        # Every shipped rule evaluated on the real series without an error.
        for rule in prom.rules():
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        # Every dashboard query is valid PromQL on this Prometheus; the core panels have data.
        empty = []
        for title, expr in dashboard_exprs():
            doc = prom.query(expr)
            assert doc["status"] == "success", (title, expr, doc.get("error"))
            if not doc["data"]["result"]:
                empty.append(title)
        for title in ("Daemon up", "Resources", "Resources by sync status",
                      "Resources by health status", "Rollbacks by reason",
                      "Resources needing attention"):
            assert title not in empty, title

        # Every metric the rules and the dashboard name is served by this running daemon.
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/metrics", timeout=5) as resp:
            served = served_names(resp.read().decode()) | PROMETHEUS_SERIES
        named: set[str] = set()
        for expr in [*rule_exprs().values(),
                     *(e for _, e in dashboard_targets(json.loads(DASHBOARD.read_text())))]:
            named |= promql_metric_names(expr)
        assert named - served == set()

        # Stop the daemon: the scrape fails, up == 0, "daemon down" follows.
        stop(daemon, signal.SIGTERM, wait=min(20, left()))
        down = wait_for(lambda: prom.alert("FraisierDaemonDown"), timeout=min(15, left()),
                        step=0.25)
        assert down["labels"]["instance"] == f"127.0.0.1:{listen}"
        assert down["state"] in ("pending", "firing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{logs()}") from exc
    finally:
        stop(daemon)
        stop(prometheus)
        daemon_log.close()
        prom_log.close()
    assert time.monotonic() - t0 < 90
