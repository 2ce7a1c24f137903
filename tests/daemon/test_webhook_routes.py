"""The webhook receiver over real HTTP on loopback (aiohttp TestServer on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from reconciler.daemon.webhook_routes import RateLimit, TokenBucket, WebhookConfig, webhook_routes
from reconciler.observe.metrics import REGISTRY
from reconciler.source.webhooks import WebhookEvent, delivery_digest
from tests.helpers import need

pytestmark = pytest.mark.timeout(30)


def _locate_webhook_samples() -> Path | None:
    """contracts/webhooks: $FRAISIER_CONTRACTS, else ../shared/contracts beside the clone."""
    candidates: list[Path] = []
    env = os.environ.get("FRAISIER_CONTRACTS")
    if env:
        candidates += [Path(env) / "webhooks", Path(env)]
    candidates.append(
        Path(__file__).resolve().parents[2] / ".." / "shared" / "contracts" / "webhooks"
    )
    for candidate in candidates:
        if (candidate / "signature-vectors.json").is_file():
            return candidate.resolve()
    return None


SAMPLES = _locate_webhook_samples()
SECRETS = {
    "github": b"gh-secret-0001-longer",
    "gitlab": b"gl-token-0002-longer",
    "gitea": b"gt-secret-0003-longer",
    "bitbucket": b"bb-secret-0004-longer",
}
WATCHED = (
    "https://github.com/Codertocat/Hello-World.git",
    "git@gitlab.com:TomaszKolek/my-awesome-project.git",
    "http://example.com/mike/diaspora",
    "http://localhost:3000/example/example.git",
    "ssh://gitea@localhost:2222/gitea/webhooks.git",
    "git@bitbucket.org:team_name/repo_name.git",
    "https://bitbucket.org/kolaszek/repository-name",
)


def sample(name: str) -> bytes:
    need(SAMPLES is not None, "contracts/webhooks not found (set FRAISIER_CONTRACTS)")
    assert SAMPLES is not None
    return (SAMPLES / name).read_bytes()


def signed_headers(
    provider: str, body: bytes, event: str, delivery: str | None = None
) -> dict[str, str]:
    """Headers a real git host would send for this body (signature computed with SECRETS)."""
    secret = SECRETS[provider]
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    delivery = delivery or str(uuid.uuid4())
    if provider == "github":
        return {
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": f"sha256={digest}",
        }
    if provider == "gitea":
        return {
            "X-Gitea-Event": event,
            "X-Gitea-Delivery": delivery,
            "X-Gitea-Signature": digest,
            "X-Hub-Signature-256": f"sha256={digest}",
        }
    if provider == "bitbucket":
        return {
            "X-Event-Key": event,
            "X-Request-UUID": "{" + delivery + "}",
            "X-Hub-Signature": f"sha256={digest}",
        }
    return {
        "X-Gitlab-Event": event,
        "Idempotency-Key": delivery,
        "X-Gitlab-Token": secret.decode(),
    }


@dataclass
class Receiver:
    """The daemon side of the contract: an enqueue function and a delivery-id register."""

    pushed: list[WebhookEvent] = field(default_factory=list)
    deliveries: list[tuple[str, str]] = field(default_factory=list)
    seen: set[tuple[str, str]] = field(default_factory=set)
    enqueue_delay: float = 0.0
    enqueue_error: Exception | None = None

    async def on_push(self, event: WebhookEvent) -> str:
        if self.enqueue_delay:
            await asyncio.sleep(self.enqueue_delay)
        if self.enqueue_error is not None:
            raise self.enqueue_error
        self.pushed.append(event)
        return f"rc-{len(self.pushed)}"

    async def seen_delivery(self, provider: str, delivery_id: str) -> bool:
        self.deliveries.append((provider, delivery_id))
        key = (provider, delivery_id)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def make_config(**overrides: Any) -> WebhookConfig:
    values: dict[str, Any] = dict(
        secrets=SECRETS, repo_urls=WATCHED, branches=("master", "name-of-branch", "develop")
    )
    values.update(overrides)
    return WebhookConfig(**values)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


async def start(config: WebhookConfig, receiver: Receiver, **kwargs: Any) -> TestClient:
    app = web.Application()
    app.add_routes(webhook_routes(config, receiver.on_push, receiver.seen_delivery, **kwargs))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[TestClient]:
    client = await start(make_config(), receiver)
    try:
        yield client
    finally:
        await client.close()


async def post(
    client: TestClient, provider: str, body: bytes | Any, headers: Mapping[str, str]
) -> ClientResponse:
    return await client.post(
        f"/webhooks/{provider}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )


# -- accepted pushes ---------------------------------------------------------------------------

ACCEPTED = [
    ("github", "github/push.new-branch.json", "push", "6113728f27ae82c7b1a177c8d03f9e96e0adf246"),
    ("gitlab", "gitlab/push.json", "Push Hook", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
    ("gitea", "gitea/push.json", "push", "67b56589a45103f891bdee7c0546e5d40bc02001"),
    ("gitea", "gitea/push.docs-example.json", "push", "bffeb74224043ba2feb48d137756c8a9331c449a"),
    (
        "bitbucket",
        "bitbucket/repo-push.json",
        "repo:push",
        "709d658dc5b6d6afcd46049c2f332ee3f515a67d",
    ),
]


@pytest.mark.parametrize(
    ("provider", "name", "event", "sha"), ACCEPTED, ids=[a[1] for a in ACCEPTED]
)
async def test_signed_matching_push_is_accepted(
    client: TestClient, receiver: Receiver, provider: str, name: str, event: str, sha: str
) -> None:
    body = sample(name)
    response = await post(client, provider, body, signed_headers(provider, body, event))
    assert response.status == 202
    assert await response.json() == {"status": "accepted", "reconcile_id": "rc-1"}
    assert len(receiver.pushed) == 1
    assert receiver.pushed[0].after == sha
    assert receiver.pushed[0].provider == provider
    assert len(receiver.deliveries) == 1


async def test_provider_path_is_case_insensitive(client: TestClient, receiver: Receiver) -> None:
    body = sample("github/push.new-branch.json")
    response = await post(client, "GitHub", body, signed_headers("github", body, "push"))
    assert response.status == 202


async def test_bitbucket_push_with_two_watched_branches_enqueues_both(receiver: Receiver) -> None:
    document = json.loads(sample("bitbucket/repo-push.json"))
    change = document["push"]["changes"][0]
    other = json.loads(json.dumps(change))
    other["new"]["name"] = "master"
    other["new"]["target"]["hash"] = "ab" * 20
    document["push"]["changes"] = [change, other]
    body = json.dumps(document).encode()
    client = await start(make_config(), receiver)
    try:
        response = await post(
            client, "bitbucket", body, signed_headers("bitbucket", body, "repo:push")
        )
        assert response.status == 202
        assert await response.json() == {
            "status": "accepted",
            "reconcile_id": "rc-1",
            "reconcile_ids": ["rc-1", "rc-2"],
        }
        assert [e.branch for e in receiver.pushed] == ["name-of-branch", "master"]
        assert [e.after for e in receiver.pushed] == [
            "709d658dc5b6d6afcd46049c2f332ee3f515a67d",
            "ab" * 20,
        ]
    finally:
        await client.close()


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name", "event", "sha"), ACCEPTED, ids=[a[1] for a in ACCEPTED]
)
async def test_bad_signature_is_401_and_nothing_else_happens(
    client: TestClient, receiver: Receiver, provider: str, name: str, event: str, sha: str
) -> None:
    body = sample(name)
    headers = signed_headers(provider, body, event)
    tampered = body.replace(sha.encode(), b"f" * 40)  # same length, other commit
    if provider == "gitlab":
        # A GitLab token does not cover the body; what can be wrong is the token itself.
        headers["X-Gitlab-Token"] = SECRETS["gitlab"].decode()[:-1] + "9"
    response = await post(client, provider, tampered, headers)
    assert response.status == 401
    assert await response.json() == {"status": "unauthorized"}
    assert receiver.pushed == [] and receiver.deliveries == []


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "bitbucket"])
async def test_unsigned_is_401(client: TestClient, receiver: Receiver, provider: str) -> None:
    response = await post(client, provider, b"{}", {})
    assert response.status == 401
    assert receiver.pushed == [] and receiver.deliveries == []


async def test_gitlab_wrong_token_is_401(client: TestClient, receiver: Receiver) -> None:
    body = sample("gitlab/push.json")
    headers = signed_headers("gitlab", body, "Push Hook")
    headers["X-Gitlab-Token"] = "gl-token-0003"
    response = await post(client, "gitlab", body, headers)
    assert response.status == 401
    assert receiver.pushed == []


async def test_signature_made_with_another_providers_secret_is_401(
    client: TestClient, receiver: Receiver
) -> None:
    body = sample("gitea/push.json")
    digest = hmac.new(SECRETS["github"], body, hashlib.sha256).hexdigest()
    response = await post(
        client, "gitea", body, {"X-Gitea-Event": "push", "X-Gitea-Signature": digest}
    )
    assert response.status == 401


# -- routing and limits ------------------------------------------------------------------------


async def test_unknown_provider_is_404(client: TestClient, receiver: Receiver) -> None:
    response = await post(client, "sourcehut", b"{}", {})
    assert response.status == 404
    assert receiver.deliveries == []


async def test_provider_without_secret_is_404(receiver: Receiver) -> None:
    client = await start(make_config(secrets={"github": SECRETS["github"]}), receiver)
    try:
        body = sample("gitlab/push.json")
        response = await post(client, "gitlab", body, signed_headers("gitlab", body, "Push Hook"))
        assert response.status == 404
        assert (await response.json())["status"] == "provider_not_enabled"
    finally:
        await client.close()


async def test_unknown_provider_is_logged_sanitised(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.daemon.webhooks")
    response = await post(client, "evil%0Aline" + "x" * 100, b"{}", {})
    assert response.status == 404
    (record,) = [r for r in caplog.records if r.name == "reconciler.daemon.webhooks"]
    assert record.provider == "evil?line" + "x" * 31


async def test_get_is_405(client: TestClient) -> None:
    response = await client.get("/webhooks/github")
    assert response.status == 405


async def test_oversized_body_is_413(receiver: Receiver) -> None:
    client = await start(make_config(max_body_bytes=4096), receiver)
    try:
        body = sample("github/push.new-branch.json")  # 8827 bytes
        assert len(body) > 4096
        response = await post(client, "github", body, signed_headers("github", body, "push"))
        assert response.status == 413
        assert (await response.json())["max_bytes"] == 4096
        assert receiver.pushed == [] and receiver.deliveries == []
    finally:
        await client.close()


async def test_oversized_chunked_body_is_413_without_reading_it_all(receiver: Receiver) -> None:
    client = await start(make_config(max_body_bytes=64 * 1024), receiver)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        # No Content-Length: the cap must be enforced while reading the stream.
        nonlocal sent
        chunk = b"x" * 16 * 1024
        for _ in range(4096):  # 64 MiB if the server read everything
            sent += len(chunk)
            yield chunk

    try:
        try:
            response = await post(client, "github", endless(), {"X-GitHub-Event": "push"})
            assert response.status == 413
        except Exception as exc:  # the server may close before the client finished sending
            assert "413" in str(exc) or isinstance(exc, OSError | ConnectionError), exc
        assert sent < 64 * 1024 * 1024
        assert receiver.deliveries == []
    finally:
        await client.close()


async def test_default_cap_is_one_mebibyte(client: TestClient, receiver: Receiver) -> None:
    body = b'{"pad": "' + b"x" * (1 << 20) + b'"}'
    response = await post(client, "github", body, signed_headers("github", body, "push"))
    assert response.status == 413
    assert (await response.json())["max_bytes"] == 1 << 20


@pytest.mark.parametrize(
    "body", [b'{"ref": "refs/heads/master", ', b"<xml/>", b"[]"], ids=["truncated", "xml", "array"]
)
async def test_malformed_signed_body_is_400(
    client: TestClient, receiver: Receiver, body: bytes
) -> None:
    response = await post(client, "github", body, signed_headers("github", body, "push"))
    assert response.status == 400
    payload = await response.json()
    assert payload["status"] == "bad_payload"
    assert "refs/heads/master" not in payload["reason"]
    assert receiver.pushed == [] and receiver.deliveries == []


async def test_missing_required_field_is_400(client: TestClient, receiver: Receiver) -> None:
    document = json.loads(sample("github/push.new-branch.json"))
    del document["after"]
    body = json.dumps(document).encode()
    response = await post(client, "github", body, signed_headers("github", body, "push"))
    assert response.status == 400
    assert "after" in (await response.json())["reason"]


def variant(name: str, n: int) -> bytes:
    """A sample made a distinct delivery: replay protection keys on the body."""
    document = json.loads(sample(name))
    document["x_test_delivery"] = n
    return json.dumps(document).encode()


async def test_rate_limit_is_429_with_retry_after_per_provider(receiver: Receiver) -> None:
    client = await start(make_config(rate_limit=RateLimit(per_second=0.1, burst=2)), receiver)
    try:
        statuses = []
        for n in range(3):
            body = variant("github/push.new-branch.json", n)
            response = await post(client, "github", body, signed_headers("github", body, "push"))
            statuses.append(response.status)
        assert statuses == [202, 202, 429]
        assert response.headers["Retry-After"].isdigit()
        assert 1 <= int(response.headers["Retry-After"]) <= 10
        assert len(receiver.pushed) == 2
        # Another provider has its own bucket.
        gl = sample("gitlab/push.json")
        response = await post(client, "gitlab", gl, signed_headers("gitlab", gl, "Push Hook"))
        assert response.status == 202
    finally:
        await client.close()


def test_token_bucket_refills_at_the_configured_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(per_second=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0
    now[0] += 100
    assert [bucket.take() for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # capped at burst


async def test_replayed_delivery_is_duplicate_and_not_triggered(
    client: TestClient, receiver: Receiver
) -> None:
    body = sample("github/push.new-branch.json")
    headers = signed_headers(
        "github", body, "push", delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    first = await post(client, "github", body, headers)
    second = await post(client, "github", body, headers)
    assert first.status == 202
    assert second.status == 200
    assert await second.json() == {"status": "duplicate"}
    assert len(receiver.pushed) == 1
    # keyed on the signed body, not on the (unsigned) delivery-id header
    assert receiver.deliveries == [("github", delivery_digest(body))] * 2


# -- ignored events ----------------------------------------------------------------------------

IGNORED = [
    ("github", "github/push.tag-deleted.json", "push", "tag deleted: refs/tags/simple-tag"),
    ("github", "github/ping.json", "ping", "ping"),
    ("gitlab", "gitlab/push.branch-deleted.json", "Push Hook", "branch deleted: tomek"),
    ("gitea", "gitea/delete.branch.json", "delete", "branch deleted: example3"),
    ("bitbucket", "bitbucket/repo-push.branch-deleted.json", "repo:push", "branch deleted: master"),
    ("github", "github/push.new-branch.json", "issues", "not a push event: issues"),
]


@pytest.mark.parametrize(
    ("provider", "name", "event", "reason"), IGNORED, ids=[i[1] + ":" + i[2] for i in IGNORED]
)
async def test_ignored_events_say_why(
    client: TestClient, receiver: Receiver, provider: str, name: str, event: str, reason: str
) -> None:
    body = sample(name)
    response = await post(client, provider, body, signed_headers(provider, body, event))
    assert response.status == 200
    assert await response.json() == {"status": "ignored", "reason": reason}
    assert receiver.pushed == []


async def test_tag_push_is_ignored(client: TestClient, receiver: Receiver) -> None:
    document = json.loads(sample("gitlab/push.json"))
    document.update(object_kind="tag_push", ref="refs/tags/v1.0.0")
    body = json.dumps(document).encode()
    response = await post(client, "gitlab", body, signed_headers("gitlab", body, "Tag Push Hook"))
    assert response.status == 200
    assert await response.json() == {"status": "ignored", "reason": "tag push: refs/tags/v1.0.0"}
    assert receiver.pushed == []


async def test_other_branch_and_other_repo_are_ignored(receiver: Receiver) -> None:
    client = await start(make_config(branches=("main",)), receiver)
    try:
        body = sample("gitea/push.docs-example.json")
        response = await post(client, "gitea", body, signed_headers("gitea", body, "push"))
        assert await response.json() == {
            "status": "ignored",
            "reason": "branch not watched: develop",
        }
    finally:
        await client.close()
    client = await start(make_config(repo_urls=("https://github.com/acme/fleet",)), receiver)
    try:
        body = sample("github/push.new-branch.json")
        response = await post(client, "github", body, signed_headers("github", body, "push"))
        assert response.status == 200
        assert await response.json() == {
            "status": "ignored",
            "reason": "repository not watched: Codertocat/Hello-World",
        }
    finally:
        await client.close()
    assert receiver.pushed == []


# -- enqueue failures, speed, logging ----------------------------------------------------------


async def test_enqueue_failure_is_503(receiver: Receiver) -> None:
    receiver.enqueue_error = RuntimeError("queue is closed")
    client = await start(make_config(), receiver)
    try:
        body = sample("github/push.new-branch.json")
        response = await post(client, "github", body, signed_headers("github", body, "push"))
        assert response.status == 503
    finally:
        await client.close()


async def test_slow_enqueue_is_cut_off(receiver: Receiver) -> None:
    receiver.enqueue_delay = 10.0
    client = await start(make_config(enqueue_timeout=0.2), receiver)
    try:
        body = sample("github/push.new-branch.json")
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await post(client, "github", body, signed_headers("github", body, "push"))
        assert response.status == 503
        assert loop.time() - started < 2.0
    finally:
        await client.close()


async def test_accepted_push_is_answered_fast(client: TestClient, receiver: Receiver) -> None:
    body = sample("github/push.new-branch.json")
    loop = asyncio.get_running_loop()
    durations = []
    for n in range(20):
        body = variant("github/push.new-branch.json", n)
        started = loop.time()
        response = await post(client, "github", body, signed_headers("github", body, "push"))
        assert response.status == 202
        durations.append(loop.time() - started)
    durations.sort()
    assert durations[len(durations) // 2] < 0.05, durations


async def test_one_structured_log_line_per_request_without_secrets(
    client: TestClient, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reconciler.daemon.webhooks")
    body = sample("github/push.new-branch.json")
    good = signed_headers("github", body, "push", delivery="aaaaaaaa-0000-4000-8000-000000000001")
    bad = dict(good, **{"X-Hub-Signature-256": "sha256=" + "0" * 64})
    gl_bad = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "gl-token-WRONG"}
    assert (await post(client, "github", body, good)).status == 202
    assert (await post(client, "github", body, bad)).status == 401
    assert (await post(client, "gitlab", sample("gitlab/push.json"), gl_bad)).status == 401

    records = [r for r in caplog.records if r.name == "reconciler.daemon.webhooks"]
    assert len(records) == 3
    accepted, rejected, gl_rejected = records
    assert accepted.levelno == logging.INFO
    assert (accepted.provider, accepted.status, accepted.outcome) == ("github", 202, "accepted")
    assert accepted.delivery_id == "aaaaaaaa-0000-4000-8000-000000000001"
    assert accepted.reconcile_id == "rc-1" and accepted.event_kind == "push"
    assert isinstance(accepted.duration_ms, float)
    assert (rejected.status, rejected.outcome, rejected.levelno) == (
        401,
        "unauthorized",
        logging.WARNING,
    )
    assert gl_rejected.reason == "gitlab: X-Gitlab-Token does not match the configured secret"

    everything = " ".join(repr(vars(r)) for r in records)
    for secret in SECRETS.values():
        assert secret.decode() not in everything
    assert good["X-Hub-Signature-256"] not in everything
    assert "gl-token-WRONG" not in everything


def test_config_repr_hides_secrets() -> None:
    config = make_config()
    assert "gh-secret" not in repr(config)
    with pytest.raises(ValueError):
        make_config(secrets={"sourcehut": b"x"})
    with pytest.raises(ValueError):
        RateLimit(per_second=0, burst=1)


@pytest.mark.parametrize("secret", [b"", b"x", b"fifteen-bytes!!", b"   padded-short   "])
def test_empty_or_short_secret_is_refused(secret: bytes) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        make_config(secrets={"github": secret})


def _count(provider: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "reconciler_webhook_requests_total", {"provider": provider, "result": result}
    )
    return value or 0.0


async def test_requests_are_counted_by_provider_and_result(client: TestClient) -> None:
    before = (
        _count("github", "accepted"),
        _count("github", "unauthorized"),
        _count("unknown", "unknown_provider"),
    )
    body = sample("github/push.new-branch.json")
    assert (
        await post(client, "github", body, signed_headers("github", body, "push"))
    ).status == 202
    assert (await post(client, "github", body, {"X-GitHub-Event": "push"})).status == 401
    assert (await post(client, "no-such-host-" + "x" * 30, b"{}", {})).status == 404
    after = (
        _count("github", "accepted"),
        _count("github", "unauthorized"),
        _count("unknown", "unknown_provider"),
    )
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
