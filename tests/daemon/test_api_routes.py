"""The read-only API over real HTTP on loopback, backed by a real SQLite store."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from reconciler.daemon.api_routes import MAX_HISTORY_LIMIT, api_routes
from reconciler.spec.model import ResourceKey
from reconciler.state import open_store
from reconciler.state import store as st
from reconciler.state.store import Store

pytestmark = pytest.mark.timeout(30)

TOKEN = b"t0ken-for-tests-0123456789abcdef"
AUTH = {"Authorization": "Bearer " + TOKEN.decode()}
API = ResourceKey("prod", "Service", "api")
MIGRATE = ResourceKey("prod", "Job", "migrate")
WEB = ResourceKey("staging", "Service", "web")
SECRET_VALUE = "hunter2-very-secret"


async def make_store(tmp_path: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path}/db.sqlite")
    await store.migrate()
    return store


async def populate(store: Store) -> None:
    spec = {"target": "local", "env": {"DB_PASSWORD": {"env": "DB_PASSWORD"},
                                       "NOTE": SECRET_VALUE}}
    for key in (API, MIGRATE, WEB):
        await store.record_desired(key, revision="r1", spec_hash="h1", spec=spec,
                                   config_commit="c1")
    await store.record_applied(API, revision="r1", spec_hash="h1", spec=spec, config_commit="c1")
    await store.update_status(API, sync_status="Synced", health_status="Healthy",
                              last_result=st.SUCCEEDED)
    await store.update_status(MIGRATE, sync_status="OutOfSync", health_status="Degraded",
                              last_result=st.FAILED, last_error="exit code 3")
    await store.set_suspended(WEB, True)

    first = await store.create_deployment(API, from_revision=None, to_revision="r1",
                                          config_commit="c1", trigger="poll",
                                          strategy="recreate", spec=spec)
    await store.transition(first.id, st.IN_PROGRESS, message="recreate via bare_metal")
    step = await store.start_step(first.id, "deploy", "local:0", "revision r1")
    await store.finish_step(step, st.STEP_SUCCEEDED, "revision r1")
    await store.transition(first.id, st.SUCCEEDED, message="healthy")
    second = await store.create_deployment(API, from_revision="r1", to_revision="r2",
                                           config_commit="c2", trigger="webhook",
                                           strategy="recreate", spec=spec)
    await store.transition(second.id, st.IN_PROGRESS)
    await store.transition(second.id, st.FAILED, error="local:0: health check failed: 500",
                           output=f"job printed {SECRET_VALUE}")
    await store.transition(second.id, st.ROLLED_BACK, message="back to r1")


async def serve(store: Store, token: bytes | None) -> TestClient:
    app = web.Application()
    app.add_routes(api_routes(store, token))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(tmp_path)
    await populate(s)
    yield s
    await s.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    c = await serve(store, TOKEN)
    yield c
    await c.close()


async def test_status_lists_every_resource(client: TestClient) -> None:
    resp = await client.get("/api/v1/status", headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert resp.headers["Cache-Control"] == "no-store"
    doc = await resp.json()
    rows = {r["resource"]: r for r in doc["resources"]}
    assert set(rows) == {"prod/Service/api", "prod/Job/migrate", "staging/Service/web"}
    api = rows["prod/Service/api"]
    assert (api["environment"], api["kind"], api["name"]) == ("prod", "Service", "api")
    assert api["desiredRevision"] == "r1" and api["appliedRevision"] == "r1"
    assert (api["sync"], api["health"], api["lastResult"]) == ("Synced", "Healthy", "succeeded")
    assert api["suspended"] is False and api["updatedAt"]
    migrate = rows["prod/Job/migrate"]
    assert migrate["appliedRevision"] is None
    assert (migrate["sync"], migrate["lastResult"], migrate["lastError"]) == (
        "OutOfSync", "failed", "exit code 3")
    assert rows["staging/Service/web"]["suspended"] is True
    assert doc["healthy"] is False
    assert doc["count"] == 3
    assert doc["summary"]["sync"] == {"Synced": 1, "OutOfSync": 2}


async def test_status_filters(client: TestClient) -> None:
    doc = await (await client.get("/api/v1/status?environment=prod&kind=Service",
                                  headers=AUTH)).json()
    assert [r["resource"] for r in doc["resources"]] == ["prod/Service/api"]
    assert doc["healthy"] is True
    doc = await (await client.get("/api/v1/status?environment=nowhere", headers=AUTH)).json()
    assert doc["resources"] == [] and doc["count"] == 0


async def test_history_newest_first_with_events_and_steps(client: TestClient) -> None:
    resp = await client.get("/api/v1/resources/prod/Service/api/history", headers=AUTH)
    assert resp.status == 200
    doc = await resp.json()
    assert doc["resource"] == "prod/Service/api"
    newest, oldest = doc["deployments"]
    assert newest["status"] == "rolled_back" and newest["toRevision"] == "r2"
    assert newest["trigger"] == "webhook" and newest["fromRevision"] == "r1"
    assert newest["error"] == "local:0: health check failed: 500"
    assert [e["status"] for e in newest["events"]] == [
        "pending", "in_progress", "failed", "rolled_back"]
    assert oldest["status"] == "succeeded" and oldest["deployment"].endswith("#1")
    assert [(s["action"], s["instance"], s["status"]) for s in oldest["steps"]] == [
        ("deploy", "local:0", "succeeded")]
    assert oldest["finishedAt"] is not None

    limited = await (await client.get("/api/v1/resources/prod/Service/api/history?limit=1",
                                      headers=AUTH)).json()
    assert [d["toRevision"] for d in limited["deployments"]] == ["r2"]


async def test_audit_trail(client: TestClient, store: Store) -> None:
    await store.record_audit("suspend", actor="cli:ops@host", outcome="succeeded", resource=WEB)
    doc = await (await client.get("/api/v1/audit", headers=AUTH)).json()
    assert [(e["action"], e["outcome"], e["resource"]) for e in doc["events"]] == [
        ("suspend", "succeeded", "staging/Service/web"),
        ("rollback", "rolled_back", "prod/Service/api"),
        ("deploy", "failed", "prod/Service/api"),
        ("deploy", "succeeded", "prod/Service/api")]
    newest_deploy = doc["events"][1]
    assert (newest_deploy["actor"], newest_deploy["configCommit"], newest_deploy["revision"],
            newest_deploy["deployment"]) == ("webhook", "c2", "r2", "prod/Service/api#2")
    one = await (await client.get("/api/v1/audit?resource=prod/Service/api&limit=1",
                                  headers=AUTH)).json()
    assert [e["outcome"] for e in one["events"]] == ["rolled_back"]
    later = await (await client.get("/api/v1/audit?since=2999-01-01T00:00:00",
                                    headers=AUTH)).json()
    assert later["events"] == []
    for query in ("limit=0", "limit=x", "resource=api", "since=yesterday"):
        resp = await client.get(f"/api/v1/audit?{query}", headers=AUTH)
        assert resp.status == 400, query


async def test_history_errors(client: TestClient) -> None:
    missing = await client.get("/api/v1/resources/prod/Service/nope/history", headers=AUTH)
    assert missing.status == 404
    assert (await missing.json()) == {"error": "resource not found"}
    for bad in ("0", "-1", "abc", str(MAX_HISTORY_LIMIT + 1)):
        resp = await client.get(f"/api/v1/resources/prod/Service/api/history?limit={bad}",
                                headers=AUTH)
        assert resp.status == 400, bad
    empty = await client.get("/api/v1/resources/staging/Service/web/history", headers=AUTH)
    assert empty.status == 200 and (await empty.json())["deployments"] == []


async def test_nothing_secret_in_responses(client: TestClient) -> None:
    bodies = [await (await client.get(path, headers=AUTH)).text() for path in (
        "/api/v1/status", "/api/v1/resources/prod/Service/api/history", "/api/v1/audit")]
    for body in bodies:
        assert SECRET_VALUE not in body
        assert "DB_PASSWORD" not in body  # stored specs are not served at all
        assert TOKEN.decode() not in body


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-of-some-length-000"},
    {"Authorization": "Bearer " + TOKEN.decode()[:-1]},
    {"Authorization": "Bearer " + TOKEN.decode() + "x"},
    {"Authorization": "Basic " + TOKEN.decode()},
    {"Authorization": TOKEN.decode()},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer é" + TOKEN.decode()},
])
async def test_bad_or_missing_token_is_401(client: TestClient, headers: dict[str, str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reconciler.daemon.api")
    for path in ("/api/v1/status", "/api/v1/resources/prod/Service/api/history",
                 "/api/v1/audit"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.text()
        assert "resources" not in body and "deployments" not in body
    assert "refused" in caplog.text
    assert TOKEN.decode()[:12] not in caplog.text


async def test_scheme_is_case_insensitive(client: TestClient) -> None:
    resp = await client.get("/api/v1/status",
                            headers={"Authorization": "bearer " + TOKEN.decode()})
    assert resp.status == 200


async def test_read_only(client: TestClient) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = await client.request(method, "/api/v1/status", headers=AUTH)
        assert resp.status == 405, method


@pytest.mark.parametrize("token", [None, b""])
async def test_without_token_the_api_is_not_served(store: Store, token: bytes | None) -> None:
    assert api_routes(store, token) == []
    client = await serve(store, token)
    try:
        for path in ("/api/v1/status", "/api/v1/resources/prod/Service/api/history"):
            assert (await client.get(path)).status == 404
            assert (await client.get(path, headers=AUTH)).status == 404
    finally:
        await client.close()


async def test_short_token_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        api_routes(store, b"short")


async def test_store_failure_is_503_without_details(tmp_path: Path) -> None:
    unmigrated = open_store(f"sqlite:///{tmp_path}/empty.sqlite")
    client = await serve(unmigrated, TOKEN)
    try:
        for path in ("/api/v1/status", "/api/v1/resources/prod/Service/api/history"):
            resp = await client.get(path, headers=AUTH)
            assert resp.status == 503
            assert (await resp.json()) == {"error": "store unavailable"}
    finally:
        await client.close()
        await unmigrated.close()
