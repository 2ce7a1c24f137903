"""Fuzzing the four webhook handlers (``reconciler.source.webhooks``: verify, parse, matches)
with the real payload samples of contracts/webhooks, mutated in bytes or JSON structure, and
with signed headers that are then tampered with.

Properties, per provider:
- ``verify`` returns or raises ``WebhookAuthError``, nothing else; it accepts exactly the
  deliveries an independent reading of the provider's scheme accepts (every signature header
  present verifies, at least one is present), and always accepts an untampered delivery;
- ``parse`` returns a ``WebhookEvent`` or raises ``WebhookPayloadError``; what it returns is
  sane (lower-case full SHAs or None, refs without control characters, a well-formed delivery
  id), and ``matches``/``split`` never raise on it;
- no error message carries the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from reconciler.source.webhooks import (
    PROVIDERS,
    WebhookAuthError,
    WebhookEvent,
    WebhookPayloadError,
    matches,
    parse,
    verify,
)
from tests.fuzz.conftest import fuzz
from tests.fuzz.webhook_cases import SECRETS, Delivery, deliveries, samples_present, secret_free
from tests.helpers import need

SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
DELIVERY_ID = re.compile(r"[A-Za-z0-9{}._:-]{1,200}")
WATCHED = (
    "https://github.com/Codertocat/Hello-World.git",
    "git@gitlab.com:TomaszKolek/my-awesome-project.git",
    "http://example.com/mike/diaspora",
    "http://localhost:3000/example/example.git",
    "https://bitbucket.org/kolaszek/repository-name",
)


def _values(headers: CIMultiDict[str], name: str) -> list[str]:
    return [v.strip() for v in headers.getall(name, []) if v.strip()]


def expected_to_verify(delivery: Delivery) -> bool:
    """The provider's scheme, read independently of the implementation."""
    provider, headers = delivery.provider, delivery.headers
    secret = SECRETS[provider]
    if provider == "gitlab":
        tokens = _values(headers, "X-Gitlab-Token")
        return bool(tokens) and all(t == secret.decode() for t in tokens)
    digest = hmac.new(secret, delivery.body, hashlib.sha256).hexdigest()

    def prefixed(value: str) -> bool:
        scheme, sep, rest = value.partition("=")
        return bool(sep) and scheme.strip().lower() == "sha256" and rest.strip().lower() == digest

    if provider == "github":
        values = _values(headers, "X-Hub-Signature-256")
        return bool(values) and all(map(prefixed, values))
    if provider == "bitbucket":
        values = _values(headers, "X-Hub-Signature")
        return bool(values) and all(map(prefixed, values))
    bare = _values(headers, "X-Gitea-Signature") + _values(headers, "X-Forgejo-Signature")
    hub = _values(headers, "X-Hub-Signature-256")
    return bool(bare or hub) and all(
        "=" not in v and v.lower() == digest for v in bare
    ) and all(map(prefixed, hub))


def check_event(provider: str, event: WebhookEvent) -> None:
    assert event.provider == provider
    assert event.kind in ("push", "ping", "delete", "other")
    assert event.delivery_id is None or DELIVERY_ID.fullmatch(event.delivery_id)
    for change in event.changes:
        for sha in (change.before, change.after):
            assert sha is None or SHA.fullmatch(sha), sha
        assert len(change.ref) <= 1024 + len("refs/heads/")
        assert not re.search(r"[\x00-\x1f\x7f]", change.ref)
        assert change.branch is None or change.ref.endswith(change.branch)
    for single in event.split():
        ok, reason = matches(single, WATCHED, ("master", "main", "develop", "release/*"))
        assert isinstance(ok, bool) and isinstance(reason, str)
        assert ok or reason
        assert "\n" not in reason
        if ok:
            assert single.kind == "push" and single.after is not None and not single.deleted


def run_handlers(delivery: Delivery) -> tuple[bool, WebhookEvent | None]:
    provider = delivery.provider
    try:
        verify(provider, delivery.headers, delivery.body, SECRETS[provider])
        verified = True
    except WebhookAuthError as error:
        assert secret_free(error.message, provider)
        verified = False
    assert verified == expected_to_verify(delivery), (
        f"verify {'accepted' if verified else 'rejected'} {dict(delivery.headers)!r}"
    )
    if not delivery.tampered:
        assert verified, "an untampered, correctly signed delivery was rejected"
    try:
        event = parse(provider, delivery.headers, delivery.body)
    except WebhookPayloadError as error:
        assert secret_free(error.message, provider)
        return verified, None
    check_event(provider, event)
    return verified, event


@pytest.mark.parametrize("provider", PROVIDERS)
@fuzz()
@given(data=st.data())
def test_mutated_deliveries(provider: str, data: Any) -> None:
    need(samples_present(), "contracts/webhooks not found (set FRAISIER_CONTRACTS)")
    run_handlers(data.draw(deliveries(provider)))


HEADER_NAMES = st.sampled_from([
    "X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "X-Hub-Signature",
    "X-Gitea-Event", "X-Gitea-Signature", "X-Forgejo-Signature", "X-Gitea-Delivery",
    "X-Gitlab-Event", "X-Gitlab-Token", "Idempotency-Key", "X-Gitlab-Event-UUID",
    "X-Event-Key", "X-Request-UUID", "Content-Type",
])


@pytest.mark.parametrize("provider", PROVIDERS)
@fuzz(0.5)
@given(
    body=st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)),
    headers=st.lists(st.tuples(HEADER_NAMES, st.text(max_size=80)), max_size=6),
)
def test_arbitrary_requests(provider: str, body: bytes, headers: list[tuple[str, str]]) -> None:
    multi: CIMultiDict[str] = CIMultiDict(headers)
    try:
        verify(provider, multi, body, SECRETS[provider])
    except WebhookAuthError:
        pass
    try:
        event = parse(provider, multi, body)
    except WebhookPayloadError:
        return
    check_event(provider, event)


def test_mutations_reach_every_outcome() -> None:
    """Guard against a vacuous run: untampered samples verify and parse as pushes."""
    need(samples_present(), "contracts/webhooks not found (set FRAISIER_CONTRACTS)")
    from tests.fuzz.webhook_cases import default_event, samples, signature_values

    for provider in PROVIDERS:
        pushes = 0
        for name, body in samples(provider):
            headers: CIMultiDict[str] = CIMultiDict(signature_values(provider, body,
                                                                     SECRETS[provider]))
            headers[{"github": "X-GitHub-Event", "gitea": "X-Gitea-Event",
                     "gitlab": "X-Gitlab-Event", "bitbucket": "X-Event-Key"}[provider]] = (
                default_event(provider, name))
            verified, event = run_handlers(Delivery(provider, body, headers, tampered=False))
            assert verified and event is not None
            pushes += event.kind == "push"
        assert pushes >= 1, provider
