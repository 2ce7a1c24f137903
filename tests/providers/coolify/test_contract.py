"""The fake's OpenAPI gate itself: it must reject what the Coolify spec does not allow."""

from __future__ import annotations

import json

import httpx
import pytest

from reconciler.providers import Release, load_provider
from reconciler.providers.coolify import CoolifyProvider, CoolifyRequestError

from .conftest import service_resource
from .contract import ContractViolation, OpenAPIContract
from .fake_coolify import FakeCoolify

pytestmark = pytest.mark.timeout(30)


def test_documented_spec_gap_is_still_in_the_spec(contract: OpenAPIContract) -> None:
    """The per-app history gap is handled on purpose; if upstream fixes the spec, drop it."""
    op = contract.raw_document["paths"]["/deployments/applications/{uuid}"]["get"]
    schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"type": "array", "items": {"$ref": "#/components/schemas/Application"}}
    enum = contract.raw_document["components"]["schemas"]["Application"]["properties"][
        "build_pack"
    ]["enum"]
    assert "dockerimage" not in enum


def test_response_checks(contract: OpenAPIContract) -> None:
    history = contract.find("GET", "/deployments/applications/abc")
    good = {
        "count": 1,
        "deployments": [{"deployment_uuid": "d1", "status": "finished", "commit": "HEAD"}],
    }
    contract.check_response(history, 200, {}, json.dumps(good).encode())
    # What the spec claims (a list) is not what Coolify sends, and not what we accept.
    with pytest.raises(ContractViolation):
        contract.check_response(history, 200, {}, json.dumps(good["deployments"]).encode())
    with pytest.raises(ContractViolation, match="deployments/0/status"):
        contract.check_response(history, 200, {}, b'{"count": 1, "deployments": [{"status": 3}]}')
    app = contract.find("GET", "/applications/abc")
    contract.check_response(
        app, 200, {}, b'{"uuid": "x", "fqdn": null, "status": "running:healthy"}'
    )
    with pytest.raises(ContractViolation, match="uuid"):
        contract.check_response(app, 200, {}, b'{"uuid": null}')
    with pytest.raises(ContractViolation, match="not in the spec"):
        contract.check_response(app, 418, {}, b"{}")
    contract.check_response(app, 403, {}, b'{"success": true, "message": "API is disabled."}')
    deploy = contract.find("POST", "/deploy")
    contract.check_response(deploy, 429, {"Retry-After": "60"}, b'{"message": "queue full"}')
    with pytest.raises(ContractViolation, match="Retry-After missing"):
        contract.check_response(deploy, 429, {}, b'{"message": "queue full"}')
    with pytest.raises(ContractViolation, match="method not in the Coolify spec"):
        contract.find("GET", "/deploy")
    with pytest.raises(ContractViolation, match="no such path"):
        contract.find("GET", "/applications/abc/nope/deeper")


@pytest.mark.timeout(10)
async def test_fake_rejects_requests_the_spec_does_not_allow(fake: FakeCoolify, token: str) -> None:
    app = fake.add_app("api", git_commit_sha="HEAD")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=f"{fake.url}/api/v1", headers=headers) as client:
        wrong_type = await client.patch(f"/applications/{app.uuid}", json={"git_commit_sha": 123})
        unknown_field = await client.patch(f"/applications/{app.uuid}", json={"commit": "abc"})
        unknown_param = await client.post("/deploy", params={"uuid": app.uuid, "commit": "abc"})
        bad_boolean = await client.post("/deploy", params={"uuid": app.uuid, "force": "yes"})
        get_deploy = await client.get("/deploy", params={"uuid": app.uuid})
        get_start = await client.get(f"/applications/{app.uuid}/start")
        missing_value = await client.patch(f"/applications/{app.uuid}/envs", json={"key": "A"})
        too_small = await client.get(f"/deployments/applications/{app.uuid}", params={"take": 0})
        no_auth = await client.get(f"/applications/{app.uuid}", headers={"Authorization": ""})
        body_on_get = await client.request(
            "GET",
            f"/applications/{app.uuid}",
            content=b'{"x":1}',
            headers={"Content-Type": "application/json"},
        )
        fine = await client.post("/deploy", params={"uuid": app.uuid, "force": "true"})
    rejected = [
        wrong_type,
        unknown_field,
        unknown_param,
        bad_boolean,
        missing_value,
        too_small,
        no_auth,
        body_on_get,
    ]
    assert [r.status_code for r in rejected] == [422] * len(rejected)
    assert all(r.json()["message"].startswith("OpenAPI contract violation") for r in rejected)
    assert "git_commit_sha: 123 is not of type 'string'" in wrong_type.json()["message"]
    assert "body fields not in the spec: commit" in unknown_field.json()["message"]
    assert "'commit' is not declared" in unknown_param.json()["message"]
    # Coolify >= 4.2 answers GET on action routes with 405; the spec has no GET there either.
    for response in (get_deploy, get_start):
        assert response.status_code == 405
        assert response.headers["Allow"] == "POST"
        assert response.json() == {"message": "This endpoint has changed to a POST request."}
    assert fine.status_code == 200
    assert len(fake.violations) == len(rejected) + 2
    assert app.git_commit_sha == "HEAD"  # rejected requests changed nothing
    assert len(fake.history(app.uuid)) == 1
    fake.violations.clear()  # expected here; the fixture fails any test that leaves one


@pytest.mark.timeout(10)
async def test_a_provider_sending_an_invalid_request_fails(
    fake: FakeCoolify, make_target, ctx, monkeypatch
) -> None:
    """Prove the gate catches provider bugs: a provider adding an undeclared parameter fails."""
    app = fake.add_app("api")
    service = service_resource(uuid=app.uuid, gitCommitSha="a" * 40)
    provider = load_provider(make_target(), ctx)
    assert isinstance(provider, CoolifyProvider)
    client = await provider.api()
    original = client.request

    async def buggy(method, path, *, params=None, json=None, once=False):
        if path == "/deploy":
            params = {**(params or {}), "commit": "a" * 40}  # not a /deploy parameter
        return await original(method, path, params=params, json=json, once=once)

    monkeypatch.setattr(client, "request", buggy)
    try:
        [instance] = await provider.instances(service)
        with pytest.raises(CoolifyRequestError, match="OpenAPI contract violation"):
            await provider.deploy(Release(service, "rev-1", None), instance)
    finally:
        await provider.close()
    assert len(fake.violations) == 1 and "'commit' is not declared" in fake.violations[0]
    fake.violations.clear()
