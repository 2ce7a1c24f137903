"""Env sync through the envs API; secret values never reach logs, errors or state."""

from __future__ import annotations

import json
import logging

import pytest

from reconciler.providers import Release, load_provider
from reconciler.providers.coolify import CoolifyDeployFailed

from .conftest import TOKEN_ENV, captured_logs, service_resource, target_resource
from .fake_coolify import FakeCoolify

SHA_A = "a" * 40
OURS = ["FRAISIER_ENVIRONMENT", "FRAISIER_REVISION", "FRAISIER_SERVICE"]
SECRET = "sk_live_s3cr3t-value-0123456789"


def release(resource, revision: str = "rev-1", env: dict[str, str] | None = None) -> Release:
    return Release(resource=resource, revision=revision, config_commit=None, env=env or {})


def env_map(app) -> dict[str, str]:
    """The application's envs but the FRAISIER_ ones (tests/providers/coolify/
    test_fraisier_env.py covers those); their presence is checked where it matters."""
    return {e.key: e.value for e in app.envs if not e.key.startswith("FRAISIER_")}


def fraisier_keys(app) -> list[str]:
    return sorted(e.key for e in app.envs if e.key.startswith("FRAISIER_"))


@pytest.mark.timeout(20)
async def test_env_sync_with_secret_never_leaks(
    fake: FakeCoolify, make_target, ctx, monkeypatch, caplog, tmp_path
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("API_SECRET_FOR_TEST", SECRET)
    secret_file = tmp_path / "db-password"
    secret_file.write_text("file-secret-password-42\n")
    app = fake.add_app("api")
    service = service_resource(
        uuid=app.uuid,
        gitCommitSha=SHA_A,
        envs={
            "API_KEY": {"env": "API_SECRET_FOR_TEST"},
            "DB_PASSWORD": {"value": {"file": str(secret_file)}, "shownOnce": True},
            "GREETING": "hello",
            "CERT": {"value": "line1\nline2", "multiline": True, "literal": True},
        },
    )
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
        states = await provider.observe(service)
        logs = await provider.logs(service, instance)
    finally:
        await provider.close()
    assert env_map(app) == {
        "API_KEY": SECRET,
        "DB_PASSWORD": "file-secret-password-42",
        "GREETING": "hello",
        "CERT": "line1\nline2",
    }
    assert fraisier_keys(app) == OURS
    flags = {e.key: (e.is_literal, e.is_multiline, e.is_shown_once) for e in app.envs}
    assert flags["CERT"] == (True, True, False)
    assert flags["DB_PASSWORD"] == (False, False, True)
    # One bulk call, sent before the deploy.
    assert fake.calls("PATCH", "/envs/bulk") == 1
    # The deployment log has the secret in a hidden command entry: it must not come out.
    raw_logs = fake.history(app.uuid)[0].logs
    assert any(SECRET in (entry.get("command") or "") for entry in raw_logs)
    stored = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    for text in (captured_logs(caplog), repr(states), "\n".join(logs), stored):
        assert SECRET not in text
        assert "file-secret-password-42" not in text
    assert "API_KEY" in captured_logs(caplog)  # keys are logged, values are not


@pytest.mark.timeout(20)
async def test_secret_absent_from_failure_messages(
    fake: FakeCoolify, make_target, ctx, monkeypatch, caplog
) -> None:
    """A failing build that echoes an env value: the error's log tail is redacted."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("API_SECRET_FOR_TEST", SECRET)
    app = fake.add_app("api")
    fake.fail_commits.add(SHA_A)
    original_finish = fake._finish

    def finish_echoing(dep) -> None:
        original_finish(dep)
        if dep.status == "failed":
            dep.log(f"npm ERR! bad token API_KEY={SECRET}")

    fake._finish = finish_echoing  # type: ignore[method-assign]
    service = service_resource(
        uuid=app.uuid, gitCommitSha=SHA_A, envs={"API_KEY": {"env": "API_SECRET_FOR_TEST"}}
    )
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyDeployFailed) as caught:
            await provider.deploy(release(service), instance)
        logs = await provider.logs(service, instance)
    finally:
        await provider.close()
    assert "npm ERR! bad token API_KEY=***" in str(caught.value)
    assert "API_KEY=***" in logs[-1]
    for text in (str(caught.value), repr(caught.value), captured_logs(caplog), "\n".join(logs)):
        assert SECRET not in text


@pytest.mark.timeout(20)
async def test_env_update_prune_and_generic_env(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    provider = load_provider(make_target(), ctx)
    first = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "1", "B": "2"})
    try:
        [instance] = await provider.instances(first)
        await provider.deploy(release(first), instance)
        assert env_map(app) == {"A": "1", "B": "2"}
        # Someone adds a variable by hand; without pruneEnvs it stays.
        fake._upsert_env(app, {"key": "MANUAL", "value": "x"})
        second = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "10"})
        await provider.deploy(
            release(second, env={"FROM_GENERIC": "g", "A": "overridden"}), instance
        )
        assert env_map(app) == {"A": "10", "B": "2", "MANUAL": "x", "FROM_GENERIC": "g"}
        # An env change redeploys the same commit (the new value only reaches a new container).
        assert [d.commit for d in fake.history(app.uuid)] == [SHA_A, SHA_A]
        third = service_resource(
            uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "10"}, pruneEnvs=True
        )
        await provider.deploy(release(third), instance)
        assert env_map(app) == {"A": "10"}
        bulk_bodies = [
            json.loads(b)
            for (m, p, _), b in zip(fake.requests, fake.request_bodies)
            if p.endswith("/envs/bulk")
        ]
        # Unchanged values are not re-sent (the token can read values).
        # Same revision each time: the FRAISIER_ envs are written once.
        assert [sorted(i["key"] for i in body["data"]) for body in bulk_bodies] == [
            ["A", "B", *OURS],
            ["A", "FROM_GENERIC"],
        ]
        assert fake.calls("DELETE", "") == 3  # B, MANUAL and FROM_GENERIC
        assert fraisier_keys(app) == OURS  # never pruned
    finally:
        await provider.close()


@pytest.mark.timeout(20)
async def test_env_values_hidden_from_token_are_rewritten(
    fake: FakeCoolify, ctx, monkeypatch
) -> None:
    """Without read:sensitive the API hides values: the provider cannot compare, so it writes."""
    monkeypatch.setenv(TOKEN_ENV, fake.add_token({"read", "write", "deploy"}))
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "1"})
    provider = load_provider(target_resource(fake.url), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
        await provider.deploy(release(service), instance)
    finally:
        await provider.close()
    assert env_map(app) == {"A": "1"}
    assert fake.calls("PATCH", "/envs/bulk") == 2
    # A is rewritten (its value cannot be compared); the FRAISIER_ envs of an unchanged revision
    # are not (the provider remembers what it wrote).
    bulk_bodies = [
        json.loads(b)
        for (m, p, _), b in zip(fake.requests, fake.request_bodies)
        if p.endswith("/envs/bulk")
    ]
    assert [sorted(i["key"] for i in body["data"]) for body in bulk_bodies] == [
        ["A", *OURS],
        ["A"],
    ]


@pytest.mark.timeout(20)
async def test_remove_deletes_declared_envs_and_stops(fake: FakeCoolify, make_target, ctx) -> None:
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha=SHA_A, envs={"A": "1"})
    provider = load_provider(make_target(), ctx)
    try:
        [instance] = await provider.instances(service)
        await provider.deploy(release(service), instance)
        fake._upsert_env(app, {"key": "MANUAL", "value": "x"})
        await provider.remove(service, instance)
    finally:
        await provider.close()
    assert {e.key: e.value for e in app.envs} == {"MANUAL": "x"}  # FRAISIER_ ones too
    assert app.status == "exited"
    assert app.uuid in fake.apps  # the application itself is Coolify's, not ours
