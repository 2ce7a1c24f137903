"""The coolify schema fragments: valid 2020-12, every property described, used by validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from reconciler.providers.coolify.config import ServiceSettings, TargetSettings
from reconciler.spec import validate
from reconciler.spec.model import Resource, ResourceKey

pytestmark = pytest.mark.timeout(30)

SCHEMAS = Path(__file__).resolve().parents[3] / "reconciler" / "providers" / "coolify" / "schema"


def undescribed(node: Any, path: str = "") -> list[str]:
    missing: list[str] = []
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            if not isinstance(sub, dict) or not sub.get("description"):
                missing.append(f"{path}/{name}")
        for key, value in node.items():
            missing += undescribed(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            missing += undescribed(value, f"{path}/{i}")
    return missing


@pytest.mark.parametrize("name", ["target.json", "workload.json"])
def test_schema_is_2020_12_and_every_property_described(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema.get("description")
    assert undescribed(schema) == []


def target_doc(**spec: Any) -> dict[str, Any]:
    base = {
        "provider": "coolify",
        "url": "https://coolify.example.com",
        "token": {"env": "COOLIFY_TOKEN"},
    }
    return {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Target",
        "metadata": {"name": "coolify"},
        "spec": {**base, **spec},
    }


def service_doc(**coolify: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fraisier.dev/v1",
        "kind": "Service",
        "metadata": {"name": "api", "environment": "prod"},
        "spec": {"target": "coolify", "coolify": coolify},
    }


def errors(kind: str, document: dict[str, Any]) -> list[str]:
    return [e.message for e in validate.kind_validator(kind).iter_errors(document)]


def test_documented_target_validates_and_loads() -> None:
    doc = target_doc(
        verifyTls=True,
        caBundle="/etc/ssl/private-ca.pem",
        requestTimeout="30s",
        connectTimeout="5s",
        deployTimeout="20m",
        pollInterval="1s",
        pollMaxInterval="10s",
        cancelOnTimeout=False,
        retry={
            "attempts": 5,
            "backoff": "250ms",
            "maxBackoff": "5s",
            "maxRetryAfter": "90s",
            "rateLimitAttempts": 3,
        },
    )
    assert errors("Target", doc) == []
    assert validate.fast_errors("Target", doc) is None
    settings = TargetSettings.from_target(
        Resource(ResourceKey("prod", "Target", "coolify"), {}, doc["spec"], "t.yaml")
    )
    assert settings.api_base == "https://coolify.example.com/api/v1"
    assert settings.retry.max_retry_after == 90
    assert settings.deploy_timeout == 1200


@pytest.mark.parametrize(
    "spec",
    [
        {"token": "plain-text-token"},  # secrets must be references
        {"url": "ftp://coolify.example.com"},
        {"url": "https://user:pw@coolify.example.com"},
        {"verifyTls": "no"},
        {"deployTimeout": "ten minutes"},
        {"retry": {"attempts": 0}},
        {"unknownField": 1},
    ],
)
def test_bad_targets_are_rejected(spec: dict[str, Any]) -> None:
    assert errors("Target", target_doc(**spec)) != []


def test_documented_services_validate_and_load() -> None:
    by_commit = service_doc(
        uuid="ck0abc123",
        gitCommitSha="0123456789abcdef0123456789abcdef01234567",
        envs={
            "PLAIN": "x",
            "PORT": 8080,
            "API_KEY": {"env": "API_KEY"},
            "CERT": {"value": {"file": "/run/secrets/cert"}, "multiline": True, "shownOnce": True},
        },
        pruneEnvs=True,
        force=False,
        autoDeploy=False,
        deployTimeout="15m",
    )
    by_image = service_doc(
        name="web", tag="prod", image={"name": "ghcr.io/acme/web", "tag": "1.4.2"}
    )
    for doc in (by_commit, by_image):
        assert errors("Service", doc) == []
        assert validate.fast_errors("Service", doc) is None
    settings = ServiceSettings.from_resource(
        Resource(ResourceKey("prod", "Service", "api"), {}, by_commit["spec"], "s.yaml")
    )
    assert settings.git_commit_sha and not settings.image_mode
    assert {e.key: e.secret for e in settings.envs} == {
        "PLAIN": False,
        "PORT": False,
        "API_KEY": True,
        "CERT": True,
    }
    image = ServiceSettings.from_resource(
        Resource(ResourceKey("prod", "Service", "web"), {}, by_image["spec"], "s.yaml")
    )
    assert image.image_mode and image.image_tag == "1.4.2"


@pytest.mark.parametrize(
    "coolify",
    [
        {},  # no application named
        {"uuid": "x", "gitCommitSha": "not-a-sha"},
        {"uuid": "x", "gitCommitSha": "a" * 40, "image": {"tag": "1"}},  # one pin kind only
        {"uuid": "x", "envs": {"1BAD": "x"}},
        {"uuid": "x", "envs": {"A": {"value": "x", "secret": True}}},
        {"uuid": "x", "envs": {"A": {"env": "X", "file": "/y"}}},
        {"uuid": "x", "image": {"tag": "has space"}},
        {"uuid": "x", "instantDeploy": True},
    ],
)
def test_bad_services_are_rejected(coolify: dict[str, Any]) -> None:
    assert errors("Service", service_doc(**coolify)) != []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(".5s", 0.5), ("1.s", 1.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5μs", 1.5e-6), ("0", 0)],
)
def test_what_validates_loads_to_the_same_duration(text: str, seconds: float) -> None:
    """Every duration the schema accepts loads, to what the spec stage's parser says (one
    parser: `.5s` passed validate and then failed at load, FR431)."""
    from reconciler.spec.durations import parse_duration

    doc = target_doc(pollInterval=text, retry={"backoff": text})
    assert errors("Target", doc) == []
    settings = TargetSettings.from_target(
        Resource(ResourceKey("prod", "Target", "coolify"), {}, doc["spec"], "t.yaml")
    )
    assert settings.poll_interval == pytest.approx(seconds) == pytest.approx(parse_duration(text))
    assert settings.retry.backoff == pytest.approx(seconds)


ABBREVIATED_FLEET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: coolify}
spec:
  provider: coolify
  url: https://coolify.example.com
  token: {env: COOLIFY_TOKEN}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api}
spec:
  target: coolify
  coolify:
    uuid: ck0abc123
    gitCommitSha: 3f1c2a9
"""


@pytest.mark.parametrize("short", ["3f1c2a9", "3f1c2a9d8b7e6f5a4c3b2a1908f7e6d5c4b3a29"])
def test_abbreviated_commit_sha_is_refused_with_its_location(
    short: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Coolify's shallow clone fetches the pinned commit by SHA; git cannot fetch an abbreviated
    one, so a 7-39 digit pin would only fail inside the build. validate refuses it, exit 2."""
    from click.testing import CliRunner

    from reconciler.cli import cli

    (tmp_path / "fleet.yaml").write_text(ABBREVIATED_FLEET.replace("3f1c2a9", short))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", "."])
    assert result.exit_code == 2, result.output
    assert f"fleet.yaml:16:19: spec.coolify.gitCommitSha: '{short}' is not a full commit SHA" in (
        result.output
    )
    with pytest.raises(Exception, match="full commit SHA"):
        ServiceSettings.from_resource(Resource(
            ResourceKey("prod", "Service", "api"), {},
            {"target": "coolify", "coolify": {"uuid": "x", "gitCommitSha": short}}, "s.yaml"))
