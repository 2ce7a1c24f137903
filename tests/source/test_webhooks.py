"""Webhook verification, parsing and trigger decisions, on the real samples in contracts/webhooks.

The samples are read in place (never copied): the HMAC vectors are over their exact bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from reconciler.source.webhooks import (
    WebhookAuthError,
    WebhookEvent,
    WebhookPayloadError,
    matches,
    normalize_repo_url,
    parse,
    verify,
)
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
ZERO = "0" * 40


@pytest.fixture
def samples() -> Path:
    need(SAMPLES is not None, "contracts/webhooks not found (set FRAISIER_CONTRACTS)")
    assert SAMPLES is not None
    return SAMPLES


def _sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- every sample, parsed ----------------------------------------------------------------------

# (file, provider, headers, expected fields). Sizes are the README's byte counts: a reformatted
# sample would silently break the signature vectors, so it fails here first.
EXPECTED: list[tuple[str, int, str, dict[str, str], dict[str, Any]]] = [
    (
        "github/push.new-branch.json",
        8827,
        "github",
        {"X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
        dict(
            kind="push",
            delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
            full_name="Codertocat/Hello-World",
            clone_url="https://github.com/Codertocat/Hello-World.git",
            ssh_url="git@github.com:Codertocat/Hello-World.git",
            html_url="https://github.com/Codertocat/Hello-World",
            ref="refs/heads/master",
            branch="master",
            is_tag=False,
            deleted=False,
            created=True,
            before=None,
            after="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        ),
    ),
    (
        "github/push.no-username-committer.json",
        8761,
        "github",
        {"X-GitHub-Event": "push"},
        dict(
            kind="push",
            delivery_id=None,
            full_name="Codertocat/Hello-World",
            ref="refs/heads/master",
            branch="master",
            is_tag=False,
            deleted=False,
            after="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        ),
    ),
    (
        "github/push.tag-deleted.json",
        7324,
        "github",
        {"X-GitHub-Event": "push"},
        dict(
            kind="push",
            full_name="Codertocat/Hello-World",
            ref="refs/tags/simple-tag",
            branch=None,
            is_tag=True,
            deleted=True,
            created=False,
            before="6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            after=None,
        ),
    ),
    (
        "github/ping.json",
        7633,
        "github",
        {"X-GitHub-Event": "ping"},
        dict(
            kind="ping",
            full_name="Octocoders/Hello-World",
            clone_url="https://github.com/Octocoders/Hello-World.git",
            ref=None,
            branch=None,
            after=None,
            changes=(),
        ),
    ),
    (
        "gitlab/push.json",
        2590,
        "gitlab",
        {
            "X-Gitlab-Event": "Push Hook",
            "X-Gitlab-Event-UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
        },
        dict(
            kind="push",
            event_name="Push Hook",
            delivery_id="13792a34-cac6-4fda-95a8-c58e00a3954e",
            full_name="mike/diaspora",
            clone_url="http://example.com/mike/diaspora.git",
            ssh_url="git@example.com:mike/diaspora.git",
            html_url="http://example.com/mike/diaspora",
            ref="refs/heads/master",
            branch="master",
            is_tag=False,
            deleted=False,
            created=False,
            before="95790bf891e76fee5e1747ab589903a6a1f80f22",
            after="da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        ),
    ),
    (
        "gitlab/push.branch-deleted.json",
        1707,
        "gitlab",
        {"X-Gitlab-Event": "Push Hook"},
        dict(
            kind="push",
            full_name="TomaszKolek/my-awesome-project",
            clone_url="https://gitlab.com/TomaszKolek/my-awesome-project.git",
            ssh_url="git@gitlab.com:TomaszKolek/my-awesome-project.git",
            ref="refs/heads/tomek",
            branch="tomek",
            is_tag=False,
            deleted=True,
            before="68595bc36ba5561c86c73c34ca7a3aae5a0dcfd8",
            after=None,
        ),
    ),
    (
        "gitea/push.json",
        4791,
        "gitea",
        {"X-Gitea-Event": "push", "X-Gitea-Delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473"},
        dict(
            kind="push",
            delivery_id="f6266f16-1bf3-46a5-9ea4-602e06ead473",
            full_name="example/example",
            clone_url="http://localhost:3000/example/example.git",
            ssh_url="git@localhost:example/example.git",
            html_url="http://localhost:3000/example/example",
            ref="refs/heads/master",
            branch="master",
            is_tag=False,
            deleted=False,
            created=True,
            before=None,
            after="67b56589a45103f891bdee7c0546e5d40bc02001",
        ),
    ),
    (
        "gitea/push.docs-example.json",
        2026,
        "gitea",
        {"X-Forgejo-Event": "push", "X-Forgejo-Delivery": "0123abcd-0000-4000-8000-000000000001"},
        dict(
            kind="push",
            delivery_id="0123abcd-0000-4000-8000-000000000001",
            full_name="gitea/webhooks",
            clone_url="http://localhost:3000/gitea/webhooks.git",
            ssh_url="ssh://gitea@localhost:2222/gitea/webhooks.git",
            ref="refs/heads/develop",
            branch="develop",
            is_tag=False,
            deleted=False,
            created=False,
            before="28e1879d029cb852e4844d9c718537df08844e03",
            after="bffeb74224043ba2feb48d137756c8a9331c449a",
        ),
    ),
    (
        "gitea/delete.branch.json",
        2787,
        "gitea",
        {"X-Gitea-Event": "delete"},
        dict(
            kind="delete",
            full_name="example/example",
            clone_url="http://localhost:3000/example/example.git",
            ref="refs/heads/example3",
            branch="example3",
            is_tag=False,
            deleted=True,
            before=None,
            after=None,
        ),
    ),
    (
        "bitbucket/repo-push.json",
        8032,
        "bitbucket",
        {
            "X-Event-Key": "repo:push",
            "X-Request-UUID": "{8d2e6ab6-5c6e-4c1d-a9a4-1d0b2b3c4d5e}",
            "X-Hook-UUID": "{0f0f0f0f-0000-4000-8000-000000000000}",
        },
        dict(
            kind="push",
            delivery_id="{8d2e6ab6-5c6e-4c1d-a9a4-1d0b2b3c4d5e}",
            full_name="team_name/repo_name",
            clone_url="https://bitbucket.org/team_name/repo_name.git",
            ssh_url="git@bitbucket.org:team_name/repo_name.git",
            ref="refs/heads/name-of-branch",
            branch="name-of-branch",
            is_tag=False,
            deleted=False,
            created=False,
            before="1e65c05c1d5171631d92438a13901ca7dae9618c",
            after="709d658dc5b6d6afcd46049c2f332ee3f515a67d",
        ),
    ),
    (
        "bitbucket/repo-push.branch-deleted.json",
        5391,
        "bitbucket",
        {"X-Event-Key": "repo:push"},
        dict(
            kind="push",
            full_name="kolaszek/repository-name",
            clone_url="https://bitbucket.org/kolaszek/repository-name.git",
            html_url="https://bitbucket.org/kolaszek/repository-name",
            ref="refs/heads/master",
            branch="master",
            is_tag=False,
            deleted=True,
            created=False,
            before="25f93d22b719e2d678a7ad5ee0ef0d1fcdf39c12",
            after=None,
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "size", "provider", "headers", "expected"), EXPECTED, ids=[e[0] for e in EXPECTED]
)
def test_sample_parses_to_expected_fields(
    samples: Path,
    name: str,
    size: int,
    provider: str,
    headers: dict[str, str],
    expected: dict[str, Any],
) -> None:
    body = (samples / name).read_bytes()
    assert len(body) == size, "sample is no longer byte-exact"
    event = parse(provider, headers, body)
    assert event.provider == provider
    for attr, value in expected.items():
        assert getattr(event, attr) == value, attr


def test_every_sample_is_covered(samples: Path) -> None:
    on_disk = {p.relative_to(samples).as_posix() for p in samples.glob("*/*.json")}
    assert on_disk == {e[0] for e in EXPECTED}


# -- signature vectors -------------------------------------------------------------------------


def _vectors(samples: Path) -> list[tuple[str, dict[str, str], bytes, bytes]]:
    document = json.loads((samples / "signature-vectors.json").read_bytes())
    out = []
    for vector in document["vectors"]:
        if "body_file" in vector:
            body = (samples / vector["body_file"]).read_bytes()
        else:
            body = vector["body_utf8"].encode("utf-8")
        headers = {vector["header"]: vector["expected_header_value"]}
        out.append((vector["provider"], headers, body, vector["secret"].encode("utf-8")))
    return out


def test_every_vector_verifies_and_one_byte_changes_are_rejected(samples: Path) -> None:
    vectors = _vectors(samples)
    assert len(vectors) == 8
    for provider, headers, body, secret in vectors:
        verify(provider, headers, body, secret)

        ((header, value),) = headers.items()
        # Flip the last character of the signature/token (stays the same length and alphabet).
        flipped = value[:-1] + ("0" if value[-1] != "0" else "1")
        with pytest.raises(WebhookAuthError):
            verify(provider, {header: flipped}, body, secret)

        if provider == "gitlab":
            # A shared token authenticates the sender only; it cannot protect the body.
            verify(provider, headers, body + b" ", secret)
            continue
        for position in (0, len(body) // 2, len(body) - 1):
            tampered = bytearray(body)
            tampered[position] ^= 0x01
            with pytest.raises(WebhookAuthError):
                verify(provider, headers, bytes(tampered), secret)
        with pytest.raises(WebhookAuthError):
            verify(provider, headers, body, secret + b"x")


def test_vector_headers_are_case_insensitive(samples: Path) -> None:
    for provider, headers, body, secret in _vectors(samples):
        ((header, value),) = headers.items()
        verify(provider, {header.lower(): value}, body, secret)
        verify(provider, {header.upper(): value}, body, secret)
        verify(provider, CIMultiDict({header: value}), body, secret)


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "bitbucket"])
def test_unsigned_request_is_rejected(provider: str) -> None:
    with pytest.raises(WebhookAuthError, match=r"unsigned|unauthenticated"):
        verify(provider, {"Content-Type": "application/json"}, b"{}", b"s3cret")


@pytest.mark.parametrize(
    "header", ["X-Gitea-Signature", "X-Forgejo-Signature", "X-Hub-Signature-256"]
)
def test_empty_signature_header_counts_as_unsigned(header: str) -> None:
    # Gitea sends the headers empty when no secret is set at the host.
    with pytest.raises(WebhookAuthError, match="unsigned"):
        verify("gitea", {header: ""}, b"{}", b"s3cret")


def test_github_sha1_only_is_rejected() -> None:
    body = b'{"zen": "x"}'
    sha1 = hmac.new(b"s3cret", body, hashlib.sha1).hexdigest()
    with pytest.raises(WebhookAuthError, match="SHA-1"):
        verify("github", {"X-Hub-Signature": f"sha1={sha1}"}, body, b"s3cret")


@pytest.mark.parametrize(
    ("provider", "header", "template"),
    [
        ("github", "X-Hub-Signature-256", "sha1={}"),
        ("github", "X-Hub-Signature-256", "{}"),
        ("bitbucket", "X-Hub-Signature", "sha512={}"),
        ("bitbucket", "X-Hub-Signature", "{}"),
        ("gitea", "X-Gitea-Signature", "sha256={}"),
        ("gitea", "X-Hub-Signature-256", "{}"),
    ],
)
def test_wrong_scheme_is_rejected_even_with_the_right_digest(
    provider: str, header: str, template: str
) -> None:
    body = b'{"ref": "refs/heads/main"}'
    digest = _sign(b"s3cret", body)
    with pytest.raises(WebhookAuthError, match=r"scheme|does not match"):
        verify(provider, {header: template.format(digest)}, body, b"s3cret")


def test_uppercase_hex_digest_is_accepted() -> None:
    body = b"{}"
    verify("github", {"X-Hub-Signature-256": "sha256=" + _sign(b"k", body).upper()}, body, b"k")


def test_gitea_every_present_signature_must_verify() -> None:
    body = b'{"ref": "refs/heads/main"}'
    good = _sign(b"s3cret", body)
    bad = _sign(b"other", body)
    verify(
        "gitea",
        {"X-Gitea-Signature": good, "X-Hub-Signature-256": f"sha256={good}"},
        body,
        b"s3cret",
    )
    verify("forgejo", {"X-Forgejo-Signature": good}, body, b"s3cret")
    with pytest.raises(WebhookAuthError):
        verify(
            "gitea",
            {"X-Gitea-Signature": good, "X-Hub-Signature-256": f"sha256={bad}"},
            body,
            b"s3cret",
        )


def test_repeated_signature_headers_must_all_verify() -> None:
    body = b"{}"
    headers = CIMultiDict(
        [
            ("X-Hub-Signature-256", "sha256=" + _sign(b"k", body)),
            ("X-Hub-Signature-256", "sha256=00"),
        ]
    )
    with pytest.raises(WebhookAuthError):
        verify("github", headers, body, b"k")


@pytest.mark.parametrize("token", ["wrong", "s3cre", "s3cret!", "S3CRET", "s3cret\u00e9"])
def test_gitlab_token_mismatch_is_rejected(token: str) -> None:
    with pytest.raises(WebhookAuthError, match="does not match") as info:
        verify("gitlab", {"X-Gitlab-Token": token}, b"{}", b"s3cret")
    assert "s3cret" not in str(info.value)


def test_gitlab_token_match_is_accepted() -> None:
    verify("gitlab", {"x-gitlab-token": "s3cret"}, b"{}", b"s3cret")


@pytest.mark.parametrize("provider", ["github", "gitlab", "gitea", "bitbucket"])
def test_empty_secret_is_refused(provider: str) -> None:
    body = b"{}"
    headers = {
        "X-Hub-Signature-256": "sha256=" + _sign(b"", body),
        "X-Hub-Signature": "sha256=" + _sign(b"", body),
        "X-Gitea-Signature": _sign(b"", body),
        "X-Gitlab-Token": "",
    }
    with pytest.raises(WebhookAuthError, match="no webhook secret"):
        verify(provider, headers, body, b"")


def test_auth_errors_never_echo_secret_or_signature() -> None:
    body = b"{}"
    wrong = _sign(b"other", body)
    with pytest.raises(WebhookAuthError) as info:
        verify("github", {"X-Hub-Signature-256": f"sha256={wrong}"}, body, b"topsecretvalue")
    assert wrong not in str(info.value)
    assert "topsecretvalue" not in str(info.value)


def test_unknown_provider_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        verify("sourcehut", {}, b"{}", b"k")
    with pytest.raises(ValueError):
        parse("sourcehut", {}, b"{}")


# -- parse errors and details ------------------------------------------------------------------


def _mutated(samples: Path, name: str, **changes: Any) -> bytes:
    """A sample with top-level fields changed (None deletes), built in memory only."""
    document = json.loads((samples / name).read_bytes())
    for key, value in changes.items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"ref": "refs/heads/main", "token": "MARKER-PAYLOAD',
        b"not json at all MARKER-PAYLOAD",
        b"",
        b"[1, 2, 3]",
        b'"MARKER-PAYLOAD"',
        b"\xff\xfe MARKER-PAYLOAD",
        b"[" * 100_000,
    ],
)
def test_malformed_body_is_a_short_payload_error(body: bytes) -> None:
    with pytest.raises(WebhookPayloadError) as info:
        parse("github", {"X-GitHub-Event": "push"}, body)
    message = str(info.value)
    assert "MARKER-PAYLOAD" not in message
    assert len(message) < 120
    # No chained decoder exception (its traceback could quote the payload).
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


@pytest.mark.parametrize(
    ("name", "provider", "headers", "changes", "field"),
    [
        (
            "github/push.new-branch.json",
            "github",
            {"X-GitHub-Event": "push"},
            {"after": None},
            "after",
        ),
        ("github/push.new-branch.json", "github", {"X-GitHub-Event": "push"}, {"ref": None}, "ref"),
        ("github/push.new-branch.json", "github", {"X-GitHub-Event": "push"}, {"ref": 7}, "ref"),
        (
            "github/push.new-branch.json",
            "github",
            {"X-GitHub-Event": "push"},
            {"repository": None},
            "repository.full_name",
        ),
        (
            "github/push.new-branch.json",
            "github",
            {"X-GitHub-Event": "push"},
            {"after": "zzz"},
            "after",
        ),
        (
            "github/push.new-branch.json",
            "github",
            {"X-GitHub-Event": "push"},
            {"before": "1234"},
            "before",
        ),
        (
            "github/push.new-branch.json",
            "github",
            {"X-GitHub-Event": "push"},
            {"ref": "refs/heads/a\nb"},
            "ref",
        ),
        ("gitlab/push.json", "gitlab", {"X-Gitlab-Event": "Push Hook"}, {"after": None}, "after"),
        (
            "gitlab/push.json",
            "gitlab",
            {"X-Gitlab-Event": "Push Hook"},
            {"project": None, "repository": None},
            "path_with_namespace",
        ),
        ("gitea/push.json", "gitea", {"X-Gitea-Event": "push"}, {"ref": None}, "ref"),
        (
            "gitea/delete.branch.json",
            "gitea",
            {"X-Gitea-Event": "delete"},
            {"ref_type": None},
            "ref_type",
        ),
        (
            "bitbucket/repo-push.json",
            "bitbucket",
            {"X-Event-Key": "repo:push"},
            {"push": None},
            "push.changes",
        ),
        (
            "bitbucket/repo-push.json",
            "bitbucket",
            {"X-Event-Key": "repo:push"},
            {"push": {"changes": [{"new": None, "old": None}]}},
            "neither",
        ),
        (
            "bitbucket/repo-push.json",
            "bitbucket",
            {"X-Event-Key": "repo:push"},
            {"repository": None},
            "repository.full_name",
        ),
    ],
)
def test_missing_or_invalid_required_field(
    samples: Path,
    name: str,
    provider: str,
    headers: dict[str, str],
    changes: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(WebhookPayloadError, match=field.replace(".", r"\.")):
        parse(provider, headers, _mutated(samples, name, **changes))


@pytest.mark.parametrize(
    ("provider", "headers"),
    [("github", {}), ("gitea", {}), ("bitbucket", {})],
)
def test_missing_event_header_is_a_payload_error(provider: str, headers: dict[str, str]) -> None:
    with pytest.raises(WebhookPayloadError, match="event header"):
        parse(provider, headers, b"{}")


def test_malformed_delivery_id_is_rejected() -> None:
    with pytest.raises(WebhookPayloadError, match="delivery id"):
        parse("github", {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "x'; drop table"}, b"{}")


def test_gitlab_prefers_idempotency_key_for_delivery_id(samples: Path) -> None:
    body = (samples / "gitlab/push.json").read_bytes()
    headers = {
        "X-Gitlab-Event": "Push Hook",
        "X-Gitlab-Event-UUID": "11111111-1111-4111-8111-111111111111",
        "Idempotency-Key": "22222222-2222-4222-8222-222222222222",
    }
    assert parse("gitlab", headers, body).delivery_id == "22222222-2222-4222-8222-222222222222"


def test_bitbucket_hook_uuid_is_not_a_delivery_id(samples: Path) -> None:
    body = (samples / "bitbucket/repo-push.json").read_bytes()
    headers = {"X-Event-Key": "repo:push", "X-Hook-UUID": "{0f0f0f0f-0000-4000-8000-000000000000}"}
    assert parse("bitbucket", headers, body).delivery_id is None


def test_github_form_encoded_payload(samples: Path) -> None:
    document = (samples / "github/push.new-branch.json").read_text("utf-8")
    body = urlencode({"payload": document}).encode()
    event = parse(
        "github",
        {"X-GitHub-Event": "push", "Content-Type": "application/x-www-form-urlencoded"},
        body,
    )
    assert event.after == "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def test_gitlab_tag_push_and_system_hook(samples: Path) -> None:
    body = _mutated(samples, "gitlab/push.json", ref="refs/tags/v1.0.0", object_kind="tag_push")
    tag = parse("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, body)
    assert (tag.kind, tag.is_tag, tag.branch, tag.ref) == ("push", True, None, "refs/tags/v1.0.0")
    system = parse(
        "gitlab", {"X-Gitlab-Event": "System Hook"}, (samples / "gitlab/push.json").read_bytes()
    )
    assert system.kind == "push" and system.branch == "master"
    other = parse(
        "gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, b'{"object_kind": "merge_request"}'
    )
    assert other.kind == "other" and other.event_name == "Merge Request Hook"


def test_gitea_tag_delete_event(samples: Path) -> None:
    body = _mutated(samples, "gitea/delete.branch.json", ref="v1.2", ref_type="tag")
    event = parse("gitea", {"X-Gitea-Event": "delete"}, body)
    assert (event.kind, event.ref, event.is_tag, event.deleted) == (
        "delete",
        "refs/tags/v1.2",
        True,
        True,
    )


def test_bitbucket_multi_change_push_splits(samples: Path) -> None:
    document = json.loads((samples / "bitbucket/repo-push.json").read_bytes())
    first = document["push"]["changes"][0]
    tag_change = json.loads(json.dumps(first))
    tag_change["new"]["type"] = "tag"
    tag_change["new"]["name"] = "v2"
    tag_change["old"] = None
    document["push"]["changes"] = [tag_change, first]
    event = parse("bitbucket", {"X-Event-Key": "repo:push"}, json.dumps(document).encode())
    assert len(event.changes) == 2
    assert event.is_tag and event.ref == "refs/tags/v2"  # top-level mirrors changes[0]
    parts = event.split()
    assert [p.ref for p in parts] == ["refs/tags/v2", "refs/heads/name-of-branch"]
    assert parts[1].after == "709d658dc5b6d6afcd46049c2f332ee3f515a67d"
    ok, reason = matches(event, ["https://bitbucket.org/team_name/repo_name"], ["name-of-branch"])
    assert ok, reason
    ok, reason = matches(event, ["https://bitbucket.org/team_name/repo_name"], ["main"])
    assert not ok and reason == "tag push: refs/tags/v2; branch not watched: name-of-branch"


def test_other_event_kinds_parse_without_required_fields() -> None:
    event = parse("github", {"X-GitHub-Event": "issues"}, b'{"action": "opened"}')
    assert (event.kind, event.full_name, event.changes) == ("other", None, ())
    event = parse("bitbucket", {"X-Event-Key": "pullrequest:created"}, b"{}")
    assert event.kind == "other"


# -- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://github.com/Codertocat/Hello-World.git", "github.com/codertocat/hello-world"),
        ("https://GitHub.COM/codertocat/hello-world/", "github.com/codertocat/hello-world"),
        ("git@github.com:Codertocat/Hello-World.git", "github.com/codertocat/hello-world"),
        ("ssh://git@github.com/Codertocat/Hello-World", "github.com/codertocat/hello-world"),
        ("ssh://gitea@localhost:2222/gitea/webhooks.git", "localhost/gitea/webhooks"),
        ("http://localhost:3000/gitea/webhooks", "localhost/gitea/webhooks"),
        (
            "https://user:pw@gitlab.example.com/group/sub/proj.git",
            "gitlab.example.com/group/sub/proj",
        ),
        ("", None),
        ("/srv/git/repo.git", None),
        ("file:///srv/git/repo.git", None),
        ("https://github.com/", None),
        ("git@github.com:", None),
    ],
)
def test_normalize_repo_url(url: str, key: str | None) -> None:
    assert normalize_repo_url(url) == key


def _push(**overrides: Any) -> WebhookEvent:
    from reconciler.source.webhooks import RefChange

    change = RefChange(
        ref=overrides.pop("ref", "refs/heads/main"),
        branch=overrides.pop("branch", "main"),
        is_tag=overrides.pop("is_tag", False),
        deleted=overrides.pop("deleted", False),
        created=False,
        before="a" * 40,
        after=overrides.pop("after", "b" * 40),
    )
    fields: dict[str, Any] = dict(
        provider="github",
        kind="push",
        event_name="push",
        delivery_id=None,
        full_name="acme/fleet",
        clone_url="https://github.com/acme/fleet.git",
        ssh_url="git@github.com:acme/fleet.git",
        html_url="https://github.com/acme/fleet",
        ref=change.ref,
        branch=change.branch,
        is_tag=change.is_tag,
        deleted=change.deleted,
        before=change.before,
        after=change.after,
        changes=(change,),
    )
    fields.update(overrides)
    return WebhookEvent(**fields)


REPO = ["git@github.com:ACME/fleet.git"]


@pytest.mark.parametrize(
    ("event", "repos", "branches", "expected"),
    [
        (_push(), REPO, ["main"], (True, "")),
        (_push(), ["https://github.com/acme/fleet"], ["main"], (True, "")),
        (_push(), REPO, [], (True, "")),
        (
            _push(branch="release/1.2", ref="refs/heads/release/1.2"),
            REPO,
            ["release/*"],
            (True, ""),
        ),
        (
            _push(branch="dev", ref="refs/heads/dev"),
            REPO,
            ["main"],
            (False, "branch not watched: dev"),
        ),
        (
            _push(),
            ["https://github.com/acme/other.git"],
            ["main"],
            (False, "repository not watched: acme/fleet"),
        ),
        (
            _push(),
            ["https://gitlab.com/acme/fleet.git"],
            ["main"],
            (False, "repository not watched: acme/fleet"),
        ),
        (_push(), [], ["main"], (False, "no repository is watched")),
        (
            _push(branch=None, ref="refs/tags/v1", is_tag=True),
            REPO,
            [],
            (False, "tag push: refs/tags/v1"),
        ),
        (
            _push(branch=None, ref="refs/tags/v1", is_tag=True, deleted=True, after=None),
            REPO,
            [],
            (False, "tag deleted: refs/tags/v1"),
        ),
        (_push(deleted=True, after=None), REPO, ["main"], (False, "branch deleted: main")),
        (_push(branch=None, ref="refs/notes/x"), REPO, [], (False, "not a branch: refs/notes/x")),
        (_push(kind="ping", event_name="ping", changes=()), REPO, [], (False, "ping")),
        (
            _push(kind="other", event_name="issues", changes=()),
            REPO,
            [],
            (False, "not a push event: issues"),
        ),
        (
            _push(kind="delete", event_name="delete", deleted=True, after=None),
            REPO,
            [],
            (False, "branch deleted: main"),
        ),
        (_push(changes=()), REPO, [], (False, "push carries no ref change")),
        (
            _push(branch="dev\nX", ref="refs/heads/dev\nX"),
            REPO,
            ["main"],
            (False, "branch not watched: dev?X"),
        ),
    ],
)
def test_matches_reasons(
    event: WebhookEvent, repos: list[str], branches: list[str], expected: tuple[bool, str]
) -> None:
    assert matches(event, repos, branches) == expected


def test_matches_on_samples(samples: Path) -> None:
    gitea = parse(
        "gitea", {"X-Gitea-Event": "push"}, (samples / "gitea/push.docs-example.json").read_bytes()
    )
    # The sample's ssh URL has a port; the https form of the same repo must still match.
    assert matches(gitea, ["http://LOCALHOST:3000/gitea/webhooks.git"], ["develop"]) == (True, "")
    assert matches(gitea, ["git@localhost:gitea/webhooks"], ["main"]) == (
        False,
        "branch not watched: develop",
    )
    deleted = parse(
        "gitea", {"X-Gitea-Event": "delete"}, (samples / "gitea/delete.branch.json").read_bytes()
    )
    assert matches(deleted, ["git@localhost:example/example.git"], []) == (
        False,
        "branch deleted: example3",
    )
    ping = parse("github", {"X-GitHub-Event": "ping"}, (samples / "github/ping.json").read_bytes())
    assert matches(ping, ["https://github.com/Octocoders/Hello-World"], []) == (False, "ping")


# -- robustness: hostile input only ever yields a WebhookEvent or a WebhookPayloadError ------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ref",
                    "after",
                    "before",
                    "repository",
                    "full_name",
                    "push",
                    "changes",
                    "new",
                    "old",
                    "type",
                    "name",
                    "target",
                    "hash",
                    "project",
                    "path_with_namespace",
                    "ref_type",
                    "deleted",
                    "object_kind",
                    "links",
                    "html",
                    "href",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)
_provider_headers = st.sampled_from(
    [
        ("github", {"X-GitHub-Event": "push"}),
        ("github", {"X-GitHub-Event": "delete"}),
        ("gitea", {"X-Gitea-Event": "push"}),
        ("gitea", {"X-Gitea-Event": "delete"}),
        ("gitlab", {"X-Gitlab-Event": "Push Hook"}),
        ("gitlab", {}),
        ("bitbucket", {"X-Event-Key": "repo:push"}),
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _provider_headers, st.dictionaries(st.text(max_size=8), _json_values, max_size=4) | _json_values
)
def test_parse_never_fails_any_other_way(
    provider_headers: tuple[str, dict[str, str]], document: Any
) -> None:
    provider, headers = provider_headers
    try:
        event = parse(provider, headers, json.dumps(document).encode())
    except WebhookPayloadError:
        return
    matches(event, ["https://example.com/a/b"], ["main"])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_normalize_repo_url_never_raises(url: str) -> None:
    key = normalize_repo_url(url)
    assert key is None or "/" in key
