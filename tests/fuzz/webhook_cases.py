"""Generated webhook deliveries for the fuzz tests: real payload samples from
contracts/webhooks, mutated in their bytes or their JSON structure, with headers that are
signed correctly and then sometimes tampered with."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from hypothesis import strategies as st
from multidict import CIMultiDict

from tests.fuzz.conftest import locate_webhook_samples, mutate, mutations

SAMPLES = locate_webhook_samples()
SECRETS = {
    "github": b"gh-fuzz-secret-0001",
    "gitlab": b"gl-fuzz-token-0002",
    "gitea": b"gt-fuzz-secret-0003",
    "bitbucket": b"bb-fuzz-secret-0004",
}
OTHER_SECRET = b"not-the-secret"
EVENT_HEADER = {
    "github": "X-GitHub-Event",
    "gitea": "X-Gitea-Event",
    "gitlab": "X-Gitlab-Event",
    "bitbucket": "X-Event-Key",
}
EVENTS = {
    "github": ["push", "delete", "ping", "issues", "PUSH"],
    "gitea": ["push", "delete", "create", "pull_request"],
    "gitlab": ["Push Hook", "Tag Push Hook", "System Hook", "Merge Request Hook"],
    "bitbucket": ["repo:push", "repo:fork", "pullrequest:created"],
}
# the headers that carry the signature (or token) of each provider
SIGNATURE_HEADERS = {
    "github": ("X-Hub-Signature-256",),
    "gitea": ("X-Gitea-Signature", "X-Hub-Signature-256"),
    "gitlab": ("X-Gitlab-Token",),
    "bitbucket": ("X-Hub-Signature",),
}


def samples(provider: str) -> list[tuple[str, bytes]]:
    if SAMPLES is None:
        return []
    folder = SAMPLES / provider
    return [(p.name, p.read_bytes()) for p in sorted(folder.glob("*.json"))]


def default_event(provider: str, name: str) -> str:
    if provider == "gitlab":
        return "Tag Push Hook" if "tag" in name else "Push Hook"
    if provider == "bitbucket":
        return "repo:push"
    if name.startswith("delete"):
        return "delete"
    return "ping" if name.startswith("ping") else "push"


def signature_values(provider: str, body: bytes, secret: bytes) -> dict[str, str]:
    if provider == "gitlab":
        return {"X-Gitlab-Token": secret.decode()}
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if provider == "gitea":
        return {"X-Gitea-Signature": digest, "X-Hub-Signature-256": f"sha256={digest}"}
    if provider == "bitbucket":
        return {"X-Hub-Signature": f"sha256={digest}"}
    return {"X-Hub-Signature-256": f"sha256={digest}"}


def delivery_header(provider: str) -> tuple[str, str]:
    value = str(uuid.uuid4())
    return {
        "github": ("X-GitHub-Delivery", value),
        "gitea": ("X-Gitea-Delivery", value),
        "gitlab": ("Idempotency-Key", value),
        "bitbucket": ("X-Request-UUID", "{" + value + "}"),
    }[provider]


# -- JSON-level mutation -------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from([
        "", "0" * 40, "f" * 40, "F" * 40, "0" * 64, "g" * 40, "refs/heads/master",
        "refs/heads/develop", "refs/tags/v1", "refs/heads/a\nb", "refs/heads/" + "x" * 2000,
        "master", "branch", "tag", "bookmark", "named_branch", "https://github.com/x/y.git",
        "git@gitlab.com:a/b.git", "ftp://x/y", "\x00", "é", "push", "tag_push",
    ]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
JSON_EDIT = st.tuples(
    st.sampled_from(["delete", "replace", "add", "wrap"]),
    st.integers(0, 100_000),
    st.text(max_size=8),
    JSON_VALUES,
)


def _places(node: Any, found: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        found.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _places(child, found)
    return found


def mutate_json(document: Any, edits: list[tuple[str, int, str, Any]]) -> Any:
    for op, pick, key, value in edits:
        places = _places(document, [])
        if not places:
            return value
        node = places[pick % len(places)]
        if isinstance(node, dict):
            keys = list(node)
            if op == "add" or not keys:
                node[key] = value
            elif op == "delete":
                del node[keys[pick % len(keys)]]
            elif op == "wrap":
                chosen = keys[pick % len(keys)]
                node[chosen] = [node[chosen]]
            else:
                node[keys[pick % len(keys)]] = value
        else:
            if op == "add" or not node:
                node.append(value)
            elif op == "delete":
                del node[pick % len(node)]
            else:
                node[pick % len(node)] = value
    return document


# -- headers ---------------------------------------------------------------------------------------

HEADER_EDIT = st.tuples(
    st.sampled_from([
        "drop", "duplicate", "other_secret", "garbage", "upper", "blank", "sha1", "prefix",
        "original_body", "rename", "form", "content_type", "bad_delivery", "no_event",
    ]),
    st.integers(0, 1000),
    st.one_of(st.text(max_size=40), st.sampled_from([
        "sha256=", "sha256", "sha1=abc", "=", "SHA256=00", " sha256 = x ", "é", "\u2028",
        "sha256=" + "0" * 64, "0" * 64, "{}", "a" * 300, "../x", "x\x7fy",
    ])),
)


@dataclass
class Delivery:
    provider: str
    body: bytes
    headers: CIMultiDict[str]
    tampered: bool
    """Whether a signature header was changed, added or removed after signing."""


@st.composite
def deliveries(draw: st.DrawFn, provider: str) -> Delivery:
    cases = samples(provider)
    name, original = draw(st.sampled_from(cases))
    event = draw(st.one_of(st.just(default_event(provider, name)),
                           st.sampled_from(EVENTS[provider])))
    body = original
    how = draw(st.sampled_from(["as_is", "bytes", "json", "json"]))
    if how == "bytes":
        body = mutate(original, draw(mutations()))
    elif how == "json":
        document = mutate_json(json.loads(original), draw(st.lists(JSON_EDIT, min_size=1,
                                                                    max_size=4)))
        body = json.dumps(document).encode()
    content_type = "application/json"
    if provider in ("github", "gitea") and draw(st.integers(0, 9)) == 0:
        body = urlencode({"payload": body.decode("utf-8", "replace")}).encode()
        content_type = "application/x-www-form-urlencoded"
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = content_type
    headers[EVENT_HEADER[provider]] = event
    delivery_name, delivery_value = delivery_header(provider)
    headers[delivery_name] = delivery_value
    for header, value in signature_values(provider, body, SECRETS[provider]).items():
        headers[header] = value
    tampered = False
    signature_headers = SIGNATURE_HEADERS[provider]
    for op, pick, text in draw(st.lists(HEADER_EDIT, max_size=3)):
        header = signature_headers[pick % len(signature_headers)]
        if op == "drop":
            tampered |= header in headers
            headers.popall(header, None)
        elif op == "duplicate":
            headers.add(header, text)
            tampered = True
        elif op == "other_secret":
            wrong = signature_values(provider, body, OTHER_SECRET)[header]
            if header in headers:
                headers[header] = wrong
                tampered = True
        elif op == "garbage":
            headers[header] = text
            tampered = True
        elif op == "upper" and header in headers:
            headers[header] = headers[header].upper()  # hex digits are case-insensitive
            tampered |= provider == "gitlab"  # a token is compared exactly
        elif op == "blank":
            tampered |= header in headers
            headers[header] = "   "
        elif op == "sha1" and provider in ("github", "bitbucket"):
            digest = hmac.new(SECRETS[provider], body, hashlib.sha1).hexdigest()
            headers[header] = f"sha1={digest}"
            tampered = True
        elif op == "prefix" and header in headers:
            headers[header] = text + headers[header]
            tampered |= bool(text.strip())
        elif op == "original_body" and body != original:
            value = signature_values(provider, original, SECRETS[provider]).get(header)
            if value is not None and header in headers and provider != "gitlab":
                headers[header] = value
                tampered = True
        elif op == "rename" and header in headers:
            value = headers.popall(header)[0]
            headers[header.replace("-", "_")] = value
            tampered = True
        elif op == "form":
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif op == "content_type":
            headers["Content-Type"] = text
        elif op == "bad_delivery":
            headers[delivery_name] = text
        elif op == "no_event":
            headers.popall(EVENT_HEADER[provider], None)
    return Delivery(provider, body, headers, tampered)


def samples_present() -> bool:
    return SAMPLES is not None and all(samples(p) for p in SECRETS)


def secret_free(text: str, provider: str) -> bool:
    return SECRETS[provider].decode() not in text
