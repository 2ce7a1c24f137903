"""deploy/compose: `docker compose config` (v2) accepts the stack, every bind mount exists in the
repo, secrets are required rather than defaulted, and Prometheus accepts its config with the
real rules next to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import ROOT
from tests.helpers import need
from tests.infra.testinfra import Infra

STACK = ROOT / "deploy" / "compose"
SECRETS = {"POSTGRES_PASSWORD": "pg-secret-value", "GRAFANA_ADMIN_PASSWORD": "gf-secret-value"}


@pytest.fixture(scope="module")
def compose_v2(testinfra: Infra) -> str:
    need(testinfra.compose_v2 is not None and Path(testinfra.compose_v2).is_file(),
         "compose v2 binary missing; run tests/infra/up.sh")
    assert testinfra.compose_v2 is not None
    return testinfra.compose_v2


def config(compose: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FRAISIER_", "POSTGRES_",
                                                                       "GRAFANA_"))}
    return subprocess.run([compose, "-f", str(STACK / "compose.yaml"), "config", "--format",
                           "json"], capture_output=True, text=True, timeout=60,
                          env={**clean, **env}, cwd=STACK)


@pytest.mark.timeout(60)
def test_compose_config_is_valid(compose_v2: str) -> None:
    result = config(compose_v2, SECRETS)
    assert result.returncode == 0, result.stderr
    stack: dict[str, Any] = json.loads(result.stdout)
    services = stack["services"]
    assert set(services) == {"postgres", "reconciler", "prometheus", "grafana"}

    reconciler = services["reconciler"]
    assert Path(reconciler["build"]["context"]) == ROOT
    assert (ROOT / "Dockerfile").is_file()
    assert reconciler["depends_on"]["postgres"]["condition"] == "service_healthy"
    db_url = reconciler["environment"]["RECONCILER_DB"]
    assert db_url.startswith("postgresql://") and SECRETS["POSTGRES_PASSWORD"] not in db_url
    assert reconciler["command"][:1] == ["daemon"]

    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback: {port}"
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).exists(), f"{name}: missing {mount['source']}"

    targets = {m["target"]: Path(m["source"]) for m in services["prometheus"]["volumes"]
               if m["type"] == "bind"}
    assert targets["/etc/prometheus/alerts.yml"] == ROOT / "deploy" / "prometheus" / "alerts.yml"
    grafana = {m["target"]: Path(m["source"]) for m in services["grafana"]["volumes"]
               if m["type"] == "bind"}
    assert grafana["/var/lib/grafana/dashboards/fraisier.json"] == \
        ROOT / "deploy" / "grafana" / "fraisier.json"
    provider = (STACK / "grafana/provisioning/dashboards/fraisier.yml").read_text()
    assert "path: /var/lib/grafana/dashboards" in provider


@pytest.mark.timeout(60)
def test_secrets_are_required_not_defaulted(compose_v2: str) -> None:
    result = config(compose_v2, {})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "GRAFANA_ADMIN_PASSWORD" in result.stderr


@pytest.mark.timeout(60)
def test_prometheus_accepts_the_stack_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool missing (apt-get install prometheus)")
    assert promtool is not None
    shutil.copy(STACK / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
