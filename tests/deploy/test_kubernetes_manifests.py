"""deploy/kubernetes: every built-in kind validated (strict: unknown fields are errors) against
the Kubernetes JSON schemas shipped inside the `kubernetes-validate` package (offline), the two
Prometheus Operator kinds checked structurally, the PrometheusRule equal to
deploy/prometheus/alerts.yml and accepted by promtool, and the pieces wired to each other.

Run as a script to regenerate prometheusrule.yaml from alerts.yml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import need

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
KUBERNETES_VERSION = "1.30"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
HEADER = """\
# Generated from deploy/prometheus/alerts.yml (tests/deploy/test_kubernetes_manifests.py
# fails when the two differ). Regenerate:
#   python3 tests/deploy/test_kubernetes_manifests.py > deploy/kubernetes/prometheusrule.yaml
"""


def prometheus_rule() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "fraisier", "labels": {"app.kubernetes.io/name": "fraisier"}},
           "spec": {"groups": groups}}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in manifests() if d["kind"] == kind]
    return doc


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "doc"), [m for m in manifests()
                                          if m[1]["kind"] not in OPERATOR_KINDS],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_builtin_kinds_match_the_kubernetes_schemas(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validator_rejects_a_wrong_manifest() -> None:
    broken = by_kind("Deployment")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    typo = by_kind("Service")
    typo["spec"]["selectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files


def test_deployment_wiring() -> None:
    deployment, config = by_kind("Deployment"), by_kind("ConfigMap")
    secret, service = by_kind("Secret"), by_kind("Service")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"]["path"] == path
    used = set(re.findall(r"\$\((\w+)\)", " ".join(container["args"])))
    assert used <= set(config["data"]), used - set(config["data"])
    assert config["data"]["RECONCILER_DB"].startswith("postgresql://")
    assert "@" in config["data"]["RECONCILER_DB"] and ":" not in \
        config["data"]["RECONCILER_DB"].split("//", 1)[1].split("@", 1)[0], "no password in URL"
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    ports = {p["name"] for p in container["ports"]}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_servicemonitor_scrapes_the_service_as_job_fraisier() -> None:
    monitor, service = by_kind("ServiceMonitor"), by_kind("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    # The operator names the job after the Service; the rules match job="fraisier".
    assert service["metadata"]["name"] == "fraisier"
    assert 'job="fraisier"' in ALERTS.read_text()


@pytest.mark.timeout(60)
def test_prometheusrule_is_alerts_yml_and_promtool_accepts_it(tmp_path: Path) -> None:
    assert (K8S / "prometheusrule.yaml").read_text() == prometheus_rule(), \
        "regenerate: python3 tests/deploy/test_kubernetes_manifests.py > " \
        "deploy/kubernetes/prometheusrule.yaml"
    promtool = shutil.which("promtool")
    need(promtool is not None, "promtool missing (apt-get install prometheus)")
    assert promtool is not None
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": by_kind("PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


if __name__ == "__main__":
    sys.stdout.write(prometheus_rule())
