"""Git-host webhooks: signature verification, payload parsing and trigger decisions.

Pure functions, no I/O: the HTTP layer (``reconciler.daemon.webhook_routes``) reads the request
and calls :func:`verify`, then :func:`parse`, then :func:`matches`.

Providers and their schemes (see ``contracts/README.md`` section 2):

- ``github``: ``X-Hub-Signature-256: sha256=<hex>`` HMAC-SHA256 over the raw body.
- ``gitea`` (also Forgejo, same payloads): ``X-Gitea-Signature`` / ``X-Forgejo-Signature``
  lowercase hex HMAC-SHA256 with no prefix; the same digest also comes as
  ``X-Hub-Signature-256: sha256=<hex>``. Every signature header present must verify.
- ``bitbucket``: ``X-Hub-Signature: sha256=<hex>`` HMAC-SHA256 (note: not ``-256``).
- ``gitlab``: ``X-Gitlab-Token`` carries the shared secret verbatim (no HMAC).

Every comparison uses :func:`hmac.compare_digest`. Error messages never contain the secret, a
signature value or the payload.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from reconciler.errors import ReconcilerError
from reconciler.observe.printable import printable

PROVIDERS: tuple[str, ...] = ("github", "gitlab", "gitea", "bitbucket")
# Forgejo is a Gitea fork with identical payloads and signatures.
_ALIASES: dict[str, str] = {"forgejo": "gitea"}

ZERO_SHA = "0" * 40

# The shortest webhook secret the daemon starts with. An empty one made every HMAC forgeable and
# a one-byte one is guessed in 256 tries; 16 bytes is what `openssl rand -hex 8` gives at least.
MIN_SECRET_BYTES = 16

EventKind = Literal["push", "ping", "delete", "other"]

_SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# Delivery ids end up in the database; accept only what the providers actually send (GUIDs,
# Bitbucket's braced UUIDs) so a hostile header cannot smuggle anything else in.
_DELIVERY_ID_RE = re.compile(r"^[A-Za-z0-9{}._:-]{1,200}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_MAX_REF_LEN = 1024


class WebhookAuthError(ReconcilerError):
    """The request is unsigned, signed with another secret or uses an unsupported scheme."""

    code = "FR210"
    hint = ("set the same secret at the git host's webhook as behind the daemon's "
            "`--webhook-secret PROVIDER=env:NAME` (GitLab: the Secret token field; others: the "
            "HMAC secret, SHA-256)")


class WebhookPayloadError(ReconcilerError):
    """The body is not a payload we can read (malformed JSON, missing or invalid field)."""

    code = "FR211"
    hint = ("set the webhook's content type to application/json (GitHub and Gitea also send "
            "form bodies Fraisier reads) and its trigger to push events")


@dataclass(frozen=True)
class RefChange:
    """One ref update carried by a push (Bitbucket may carry several in one delivery)."""

    ref: str
    """Full ref name: ``refs/heads/<branch>`` or ``refs/tags/<tag>``."""
    branch: str | None
    """Short branch name; None for tags and other refs."""
    is_tag: bool
    deleted: bool
    created: bool
    before: str | None
    """SHA before the push; None when the ref was created (zero SHA) or unknown."""
    after: str | None
    """SHA after the push; None when the ref was deleted (zero SHA) or unknown."""


@dataclass(frozen=True)
class WebhookEvent:
    """A parsed delivery. The ref fields mirror ``changes[0]`` (None/False without changes)."""

    provider: str
    kind: EventKind
    event_name: str
    """The provider's own event name, e.g. ``push``, ``Tag Push Hook``, ``repo:push``."""
    delivery_id: str | None
    full_name: str | None = None
    clone_url: str | None = None
    """HTTP(S) clone URL."""
    ssh_url: str | None = None
    html_url: str | None = None
    ref: str | None = None
    branch: str | None = None
    is_tag: bool = False
    deleted: bool = False
    created: bool = False
    before: str | None = None
    after: str | None = None
    changes: tuple[RefChange, ...] = field(default=())

    @property
    def repository_urls(self) -> tuple[str, ...]:
        return tuple(u for u in (self.clone_url, self.ssh_url, self.html_url) if u)

    def split(self) -> tuple[WebhookEvent, ...]:
        """One event per ref change, so each can be matched and triggered on its own."""
        if len(self.changes) <= 1:
            return (self,)
        return tuple(_with_change(self, c) for c in self.changes)


def _with_change(event: WebhookEvent, change: RefChange) -> WebhookEvent:
    return replace(
        event,
        ref=change.ref,
        branch=change.branch,
        is_tag=change.is_tag,
        deleted=change.deleted,
        created=change.created,
        before=change.before,
        after=change.after,
        changes=(change,),
    )


def canonical_provider(provider: str) -> str:
    """The canonical provider name, or ValueError for one we do not serve."""
    name = provider.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in PROVIDERS:
        raise ValueError(f"unknown webhook provider: {provider[:40]!r}")
    return name


# -- headers ---------------------------------------------------------------------------------


def _header_index(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lower-cased header name → every non-empty value (a multidict may repeat a header)."""
    index: dict[str, list[str]] = {}
    for name, value in headers.items():
        stripped = value.strip()
        if stripped:
            index.setdefault(name.lower(), []).append(stripped)
    return index


def _first(index: Mapping[str, list[str]], *names: str) -> str | None:
    for name in names:
        values = index.get(name)
        if values:
            return values[0]
    return None


def check_secret(provider: str, secret: bytes) -> None:
    """ValueError when ``secret`` is too short to authenticate anything (empty included)."""
    size = len(secret.strip())  # whitespace around a secret file's value is not secret
    if size < MIN_SECRET_BYTES:
        raise ValueError(
            f"webhook secret for {provider} is {size} bytes; at least "
            f"{MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)"
        )


def delivery_digest(body: bytes) -> str:
    """What identifies a delivery for replay protection: the digest of the body the signature
    covers. Headers (the delivery id among them) are not signed, so they cannot say whether a
    delivery is new: a captured request with another id header is the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


# -- verification ----------------------------------------------------------------------------


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Authenticate a delivery or raise :class:`WebhookAuthError`.

    ``body`` must be the raw request bytes as received: the HMAC is over them, not over a
    re-serialisation.
    """
    name = canonical_provider(provider)
    if not secret:
        # An empty key makes every HMAC forgeable; refuse rather than "verify".
        raise WebhookAuthError(f"{name}: no webhook secret configured")
    index = _header_index(headers)
    if name == "gitlab":
        _verify_token(index, secret)
        return
    digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if name == "github":
        values = index.get("x-hub-signature-256", [])
        if not values:
            if index.get("x-hub-signature"):
                raise WebhookAuthError(
                    "github: only a SHA-1 X-Hub-Signature was sent; X-Hub-Signature-256 is required"
                )
            raise WebhookAuthError("github: unsigned request (no X-Hub-Signature-256)")
        for value in values:
            _check_prefixed(name, "X-Hub-Signature-256", value, digest)
    elif name == "bitbucket":
        values = index.get("x-hub-signature", [])
        if not values:
            raise WebhookAuthError("bitbucket: unsigned request (no X-Hub-Signature)")
        for value in values:
            _check_prefixed(name, "X-Hub-Signature", value, digest)
    else:  # gitea / forgejo
        checked = 0
        for header in ("x-gitea-signature", "x-forgejo-signature"):
            for value in index.get(header, []):
                _check_hex(name, header, value, digest)
                checked += 1
        for value in index.get("x-hub-signature-256", []):
            _check_prefixed(name, "X-Hub-Signature-256", value, digest)
            checked += 1
        if not checked:
            raise WebhookAuthError(
                "gitea: unsigned request (no X-Gitea-Signature, X-Forgejo-Signature"
                " or X-Hub-Signature-256)"
            )


def _verify_token(index: Mapping[str, list[str]], secret: bytes) -> None:
    values = index.get("x-gitlab-token", [])
    if not values:
        raise WebhookAuthError("gitlab: unauthenticated request (no X-Gitlab-Token)")
    for value in values:
        if not hmac.compare_digest(value.encode("utf-8", "replace"), secret):
            raise WebhookAuthError("gitlab: X-Gitlab-Token does not match the configured secret")


def _check_prefixed(provider: str, header: str, value: str, digest: str) -> None:
    scheme, sep, received = value.partition("=")
    if not sep or scheme.strip().lower() != "sha256":
        raise WebhookAuthError(f"{provider}: unsupported signature scheme in {header}")
    _compare(provider, header, received, digest)


def _check_hex(provider: str, header: str, value: str, digest: str) -> None:
    if "=" in value:
        # Gitea/Forgejo send bare hex here; a prefixed value is some other scheme.
        raise WebhookAuthError(f"{provider}: unsupported signature scheme in {header}")
    _compare(provider, header, value, digest)


def _compare(provider: str, header: str, received: str, digest: str) -> None:
    if not hmac.compare_digest(
        received.strip().lower().encode("ascii", "replace"), digest.encode()
    ):
        raise WebhookAuthError(f"{provider}: signature in {header} does not match")


# -- parsing ---------------------------------------------------------------------------------


def parse(provider: str, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
    """Read a (verified) delivery into a :class:`WebhookEvent`.

    Raises :class:`WebhookPayloadError` for a body that is not a JSON object, or when a field a
    push or delete event needs is missing or malformed. Events we do not act on (issues, pull
    requests, …) parse as kind ``other`` without further checks.
    """
    name = canonical_provider(provider)
    index = _header_index(headers)
    payload = _decode(index, body)
    delivery_id = _delivery_id(name, index)
    if name == "github":
        return _parse_github_like(name, index, payload, delivery_id, ("x-github-event",))
    if name == "gitea":
        return _parse_github_like(
            name,
            index,
            payload,
            delivery_id,
            ("x-gitea-event", "x-forgejo-event", "x-gogs-event", "x-github-event"),
        )
    if name == "gitlab":
        return _parse_gitlab(index, payload, delivery_id)
    return _parse_bitbucket(index, payload, delivery_id)


_DELIVERY_HEADERS: dict[str, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitea": ("x-gitea-delivery", "x-forgejo-delivery", "x-gogs-delivery", "x-github-delivery"),
    # Idempotency-Key is stable across GitLab's retries (17.4+); the event UUID is older.
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
    # X-Hook-UUID names the webhook itself (identical on every delivery), so it is no
    # delivery id; X-Request-UUID is per request.
    "bitbucket": ("x-request-uuid",),
}


def _delivery_id(provider: str, index: Mapping[str, list[str]]) -> str | None:
    value = _first(index, *_DELIVERY_HEADERS[provider])
    if value is None:
        return None
    if not _DELIVERY_ID_RE.fullmatch(value):
        raise WebhookPayloadError(f"{provider}: malformed delivery id header")
    return value


def _decode(index: Mapping[str, list[str]], body: bytes) -> dict[str, Any]:
    content_type = (_first(index, "content-type") or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookPayloadError("body is not UTF-8") from None
    if content_type == "application/x-www-form-urlencoded":
        # GitHub/Gitea "form" content type: the JSON document is the `payload` field.
        try:
            fields = parse_qs(text, max_num_fields=16)
        except ValueError:  # more than 16 fields: no host sends that
            raise WebhookPayloadError("form-encoded body has too many fields") from None
        payloads = fields.get("payload")
        if not payloads:
            raise WebhookPayloadError("form-encoded body has no payload field")
        text = payloads[0]
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WebhookPayloadError(
            f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise WebhookPayloadError("body is not valid JSON (nested too deeply)") from None
    except ValueError:  # e.g. an integer past Python's digit limit
        raise WebhookPayloadError("body is not valid JSON (a value is out of range)") from None
    if not isinstance(document, dict):
        raise WebhookPayloadError("body is not a JSON object")
    return document


def _get(document: Mapping[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _opt_str(document: Mapping[str, Any], path: str) -> str | None:
    value = _get(document, path)
    return value if isinstance(value, str) and value else None


def _req_str(context: str, document: Mapping[str, Any], path: str) -> str:
    value = _opt_str(document, path)
    if value is None:
        raise WebhookPayloadError(f"{context}: missing or invalid field '{path}'")
    return value


def _ref_str(context: str, document: Mapping[str, Any], path: str) -> str:
    value = _req_str(context, document, path)
    if len(value) > _MAX_REF_LEN or _CONTROL_RE.search(value):
        raise WebhookPayloadError(f"{context}: invalid ref name in '{path}'")
    return value


def _sha(context: str, document: Mapping[str, Any], path: str, *, required: bool) -> str | None:
    """A commit SHA, lower-cased; None for the zero SHA (ref created/deleted) or when absent."""
    value = _get(document, path)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value.lower()):
        raise WebhookPayloadError(f"{context}: field '{path}' is not a commit SHA")
    value = value.lower()
    return None if set(value) == {"0"} else value


def _is_zero_sha(document: Mapping[str, Any], path: str) -> bool:
    value = _get(document, path)
    return isinstance(value, str) and bool(value) and set(value) == {"0"}


def _change_from_ref(
    ref: str, *, before: str | None, after: str | None, deleted: bool, created: bool
) -> RefChange:
    branch: str | None = None
    is_tag = False
    if ref.startswith("refs/heads/"):
        branch = ref[len("refs/heads/") :]
    elif ref.startswith("refs/tags/"):
        is_tag = True
    return RefChange(
        ref=ref,
        branch=branch,
        is_tag=is_tag,
        deleted=deleted,
        created=created,
        before=before,
        after=after,
    )


def _event(
    provider: str,
    kind: EventKind,
    event_name: str,
    delivery_id: str | None,
    repo: tuple[str | None, str | None, str | None, str | None],
    changes: tuple[RefChange, ...] = (),
) -> WebhookEvent:
    full_name, clone_url, ssh_url, html_url = repo
    event = WebhookEvent(
        provider=provider,
        kind=kind,
        event_name=event_name,
        delivery_id=delivery_id,
        full_name=full_name,
        clone_url=clone_url,
        ssh_url=ssh_url,
        html_url=html_url,
        changes=changes,
    )
    if not changes:
        return event
    # Top-level ref fields mirror the first change; `changes` keeps them all.
    return replace(_with_change(event, changes[0]), changes=changes)


def _parse_github_like(
    provider: str,
    index: Mapping[str, list[str]],
    payload: Mapping[str, Any],
    delivery_id: str | None,
    event_headers: tuple[str, ...],
) -> WebhookEvent:
    event_name = _first(index, *event_headers)
    if event_name is None:
        raise WebhookPayloadError(f"{provider}: missing event header ({event_headers[0]})")
    event_name = event_name.lower()
    context = f"{provider} {event_name}"
    if event_name not in ("push", "delete"):
        kind: EventKind = "ping" if event_name == "ping" else "other"
        repo = (
            _opt_str(payload, "repository.full_name"),
            _opt_str(payload, "repository.clone_url"),
            _opt_str(payload, "repository.ssh_url"),
            _opt_str(payload, "repository.html_url"),
        )
        return _event(provider, kind, event_name, delivery_id, repo)
    repo = (
        _req_str(context, payload, "repository.full_name"),
        _opt_str(payload, "repository.clone_url"),
        _opt_str(payload, "repository.ssh_url"),
        _opt_str(payload, "repository.html_url"),
    )
    if event_name == "delete":
        # `delete` carries the short ref name plus its type, and no SHAs.
        short = _ref_str(context, payload, "ref")
        ref_type = _req_str(context, payload, "ref_type")
        if ref_type == "branch":
            ref = short if short.startswith("refs/") else f"refs/heads/{short}"
        elif ref_type == "tag":
            ref = short if short.startswith("refs/") else f"refs/tags/{short}"
        else:
            raise WebhookPayloadError(f"{context}: unknown ref_type")
        change = _change_from_ref(ref, before=None, after=None, deleted=True, created=False)
        return _event(provider, "delete", event_name, delivery_id, repo, (change,))
    ref = _ref_str(context, payload, "ref")
    after = _sha(context, payload, "after", required=True)
    before = _sha(context, payload, "before", required=False)
    # GitHub says so explicitly; Gitea only via the zero SHA.
    deleted = payload.get("deleted") is True or _is_zero_sha(payload, "after")
    created = payload.get("created") is True or _is_zero_sha(payload, "before")
    change = _change_from_ref(ref, before=before, after=after, deleted=deleted, created=created)
    return _event(provider, "push", event_name, delivery_id, repo, (change,))


def _parse_gitlab(
    index: Mapping[str, list[str]], payload: Mapping[str, Any], delivery_id: str | None
) -> WebhookEvent:
    header = _first(index, "x-gitlab-event")
    object_kind = _opt_str(payload, "object_kind")
    if header in ("Push Hook", "Tag Push Hook"):
        is_push = True
    elif header is None or header == "System Hook":
        # System hooks (and a missing header) say what they are only in the body.
        is_push = object_kind in ("push", "tag_push")
    else:
        is_push = False
    event_name = header or object_kind or "unknown"
    web_url = _opt_str(payload, "project.web_url") or _opt_str(payload, "repository.homepage")
    full_name = _opt_str(payload, "project.path_with_namespace")
    if full_name is None and web_url is not None:
        try:
            full_name = urlsplit(web_url).path.strip("/") or None
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise WebhookPayloadError("gitlab: invalid field 'project.web_url'") from None
    repo = (
        full_name,
        _opt_str(payload, "project.git_http_url") or _opt_str(payload, "repository.git_http_url"),
        _opt_str(payload, "project.git_ssh_url") or _opt_str(payload, "repository.git_ssh_url"),
        web_url,
    )
    if not is_push:
        return _event("gitlab", "other", event_name, delivery_id, repo)
    context = f"gitlab {event_name}"
    if full_name is None:
        raise WebhookPayloadError(
            f"{context}: missing or invalid field 'project.path_with_namespace'"
        )
    ref = _ref_str(context, payload, "ref")
    after = _sha(context, payload, "after", required=True)
    before = _sha(context, payload, "before", required=False)
    change = _change_from_ref(
        ref,
        before=before,
        after=after,
        deleted=_is_zero_sha(payload, "after"),
        created=_is_zero_sha(payload, "before"),
    )
    return _event("gitlab", "push", event_name, delivery_id, repo, (change,))


def _parse_bitbucket(
    index: Mapping[str, list[str]], payload: Mapping[str, Any], delivery_id: str | None
) -> WebhookEvent:
    event_name = _first(index, "x-event-key")
    if event_name is None:
        raise WebhookPayloadError("bitbucket: missing event header (x-event-key)")
    full_name = _opt_str(payload, "repository.full_name")
    # Bitbucket Cloud payloads carry no clone URL; it is derived from the full name.
    repo = (
        full_name,
        f"https://bitbucket.org/{full_name}.git" if full_name else None,
        f"git@bitbucket.org:{full_name}.git" if full_name else None,
        _opt_str(payload, "repository.links.html.href"),
    )
    if event_name != "repo:push":
        return _event("bitbucket", "other", event_name, delivery_id, repo)
    context = f"bitbucket {event_name}"
    if full_name is None:
        raise WebhookPayloadError(f"{context}: missing or invalid field 'repository.full_name'")
    raw_changes = _get(payload, "push.changes")
    if not isinstance(raw_changes, list):
        raise WebhookPayloadError(f"{context}: missing or invalid field 'push.changes'")
    changes = tuple(
        _bitbucket_change(f"{context} push.changes[{i}]", raw) for i, raw in enumerate(raw_changes)
    )
    return _event("bitbucket", "push", event_name, delivery_id, repo, changes)


def _bitbucket_change(context: str, raw: Any) -> RefChange:
    if not isinstance(raw, Mapping):
        raise WebhookPayloadError(f"{context}: not an object")
    new, old = raw.get("new"), raw.get("old")
    if new is not None and not isinstance(new, Mapping):
        raise WebhookPayloadError(f"{context}: invalid field 'new'")
    if old is not None and not isinstance(old, Mapping):
        raise WebhookPayloadError(f"{context}: invalid field 'old'")
    current = new if new is not None else old
    if current is None:
        raise WebhookPayloadError(f"{context}: neither 'new' nor 'old' is set")
    ref_type = _req_str(context, current, "type")
    name = _ref_str(context, current, "name")
    after = _sha(context, new, "target.hash", required=True) if new is not None else None
    before = _sha(context, old, "target.hash", required=True) if old is not None else None
    if ref_type in ("branch", "named_branch"):
        ref, branch, is_tag = f"refs/heads/{name}", name, False
    elif ref_type == "tag":
        ref, branch, is_tag = f"refs/tags/{name}", None, True
    else:  # Mercurial bookmarks and the like: not a git branch we could deploy.
        ref, branch, is_tag = name, None, False
    return RefChange(
        ref=ref,
        branch=branch,
        is_tag=is_tag,
        deleted=new is None,
        created=old is None,
        before=before,
        after=after,
    )


# -- trigger decision ------------------------------------------------------------------------


def normalize_repo_url(url: str) -> str | None:
    """``host/owner/repo`` for a clone or web URL; None when it is not one.

    https, ssh:// and scp-like ``git@host:owner/repo.git`` forms of one repository normalise to
    the same key: scheme, user, port and a trailing ``.git`` or ``/`` are dropped and the host is
    lower-cased. The path is case-folded too, because GitHub, GitLab, Gitea and Bitbucket all
    resolve owner/repo names case-insensitively.
    """
    text = url.strip()
    if not text or _CONTROL_RE.search(text):
        return None
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            return None
        if parts.scheme.lower() not in ("http", "https", "ssh", "git", "git+ssh", "ssh+git"):
            return None
        try:
            host = parts.hostname
        except ValueError:
            return None
        path = parts.path
    else:
        # scp-like syntax: [user@]host:path (a ':' before any '/').
        head, sep, path = text.partition(":")
        if not sep or "/" in head:
            return None
        host = head.rpartition("@")[2]
    if not host:
        return None
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[: -len(".git")].rstrip("/")
    if not path:
        return None
    return f"{host.lower()}/{path.casefold()}"


def _clip(text: str, limit: int = 120) -> str:
    """Payload-supplied text made safe for a reason string (one line, bounded, no controls or
    bidi characters)."""
    return printable(text, limit)


def matches(
    event: WebhookEvent, repo_urls: Sequence[str], branches: Sequence[str]
) -> tuple[bool, str]:
    """Whether this delivery should trigger a reconcile; ``(False, reason)`` when it should not.

    ``branches`` holds branch names or shell-style globs (``release/*``); an empty sequence
    watches every branch. ``repo_urls`` is never "everything": an empty one matches nothing.
    A multi-change push matches when any of its changes does.
    """
    if event.kind == "ping":
        return False, "ping"
    if event.kind == "delete":
        what = "tag" if event.is_tag else "branch"
        return False, f"{what} deleted: {_clip(event.branch or event.ref or '?')}"
    if event.kind != "push":
        return False, f"not a push event: {_clip(event.event_name)}"
    watched = {key for key in map(normalize_repo_url, repo_urls) if key}
    if not watched:
        return False, "no repository is watched"
    candidates = {key for key in map(normalize_repo_url, event.repository_urls) if key}
    if not candidates & watched:
        return False, f"repository not watched: {_clip(event.full_name or '?')}"
    if not event.changes:
        return False, "push carries no ref change"
    reasons: list[str] = []
    for change in event.changes:
        reason = _change_reason(change, branches)
        if reason is None:
            return True, ""
        reasons.append(reason)
    return False, "; ".join(dict.fromkeys(reasons))


def _change_reason(change: RefChange, branches: Sequence[str]) -> str | None:
    if change.is_tag:
        return f"tag {'deleted' if change.deleted else 'push'}: {_clip(change.ref)}"
    if change.branch is None:
        return f"not a branch: {_clip(change.ref)}"
    if change.deleted:
        return f"branch deleted: {_clip(change.branch)}"
    if change.after is None:
        return f"no commit after push: {_clip(change.branch)}"
    if branches and not any(fnmatch.fnmatchcase(change.branch, p) for p in branches):
        return f"branch not watched: {_clip(change.branch)}"
    return None
