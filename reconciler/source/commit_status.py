"""Commit statuses on GitHub, GitLab, Gitea/Forgejo and Bitbucket Cloud (one context per
environment, ``fraisier/<environment>``), sent in the background.

Configured by the operator (``--commit-status`` / ``RECONCILER_COMMIT_STATUS``), one target per
value: ``HOST:REPO,token=env:NAME|file:/path[,api=URL][,url=LINK]``. The request shapes follow
each host's published API description (tests/contracts/commit_status/README.md):

- GitHub ``POST {api}/repos/{owner}/{repo}/statuses/{sha}`` (Bearer token, api.github.com or a
  GitHub Enterprise ``https://HOST/api/v3``);
- GitLab ``POST {api}/api/v4/projects/{id}/statuses/{sha}`` (``PRIVATE-TOKEN``, the project path
  URL-encoded as its id);
- Gitea/Forgejo ``POST {api}/api/v1/repos/{owner}/{repo}/statuses/{sha}`` (``token`` scheme);
- Bitbucket Cloud ``POST {api}/2.0/repositories/{workspace}/{repo}/commit/{sha}/statuses/build``
  (Bearer; ``key`` is the context, ``url`` is always sent as Bitbucket wants a link).

``report`` only queues (one bounded queue and one sender task per target, so a pending update
is always sent before the success of the same commit, and a hanging host holds only its own
queue). A full queue drops the oldest update (counted). Transport errors, 429 and 5xx are
retried with jittered exponential backoff, a bounded number of times; other answers are final.
Errors are logged once per update with the token and URL credentials redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from reconciler.backoff import exponential, jittered
from reconciler.observe import metrics
from reconciler.observe.redact import redact
from reconciler.rollout.status_sink import CommitState, StatusUpdate
from reconciler.spec.secrets import describe_ref, resolve_secret

log = logging.getLogger("reconciler.commit_status")

CONTEXT_PREFIX = "fraisier/"


class Host(enum.Enum):
    GITHUB = "github"
    GITLAB = "gitlab"
    GITEA = "gitea"
    BITBUCKET = "bitbucket"


DEFAULT_API: dict[Host, str | None] = {
    Host.GITHUB: "https://api.github.com",
    Host.GITLAB: "https://gitlab.com",
    Host.GITEA: None,  # self-hosted only: api= is required
    Host.BITBUCKET: "https://api.bitbucket.org",
}
ALIASES = {"forgejo": Host.GITEA}

# Each host's words for our three states (its published enum).
STATES: dict[Host, dict[CommitState, str]] = {
    Host.GITHUB: {CommitState.PENDING: "pending", CommitState.SUCCESS: "success",
                  CommitState.FAILURE: "failure"},
    Host.GITLAB: {CommitState.PENDING: "pending", CommitState.SUCCESS: "success",
                  CommitState.FAILURE: "failed"},
    Host.GITEA: {CommitState.PENDING: "pending", CommitState.SUCCESS: "success",
                 CommitState.FAILURE: "failure"},
    Host.BITBUCKET: {CommitState.PENDING: "INPROGRESS", CommitState.SUCCESS: "SUCCESSFUL",
                     CommitState.FAILURE: "FAILED"},
}


class TargetError(ValueError):
    """A ``--commit-status`` value that cannot be used (the message says why)."""


@dataclass(frozen=True)
class StatusTarget:
    host: Host
    repo: str  # owner/repo, group/subgroup/project, workspace/repo_slug
    token_ref: Mapping[str, str] = field(repr=False, hash=False, compare=False)
    api_url: str = ""
    link: str | None = None  # target_url template: {commit}, {environment}, {repo}

    @property
    def label(self) -> str:
        return f"{self.host.value}:{self.repo}"


def parse_target(text: str) -> StatusTarget:
    """``HOST:REPO,token=env:NAME|file:/path[,api=URL][,url=LINK]``."""
    head, *options = [part.strip() for part in text.split(",")]
    host_name, sep, repo = head.partition(":")
    host = ALIASES.get(host_name.lower()) or next(
        (h for h in Host if h.value == host_name.lower()), None)
    if not sep or host is None:
        raise TargetError(f"{text!r}: expected HOST:REPO with HOST one of github, gitlab, "
                          "gitea (forgejo), bitbucket")
    repo = repo.strip("/")
    parts = repo.split("/")
    if len(parts) < 2 or any(not p for p in parts) or (host != Host.GITLAB and len(parts) != 2):
        raise TargetError(f"{text!r}: REPO must be OWNER/NAME"
                          + (" (or GROUP/…/PROJECT)" if host == Host.GITLAB else ""))
    values: dict[str, str] = {}
    for option in options:
        name, eq, value = option.partition("=")
        if not eq or name not in ("token", "api", "url") or not value:
            raise TargetError(f"{text!r}: unknown or empty option {name!r} (token=, api=, url=)")
        values[name] = value
    kind, colon, where = values.get("token", "").partition(":")
    if not colon or kind not in ("env", "file") or not where:
        raise TargetError(f"{text!r}: token=env:NAME or token=file:/path is required")
    api = values.get("api") or DEFAULT_API[host]
    if not api:
        raise TargetError(f"{text!r}: {host.value} needs api=URL (the server's base URL)")
    if not api.startswith(("https://", "http://")):
        raise TargetError(f"{text!r}: api= must be an http(s) URL")
    return StatusTarget(host, repo, {kind: where}, api.rstrip("/"), values.get("url"))


def build_request(target: StatusTarget, token: str,
                  update: StatusUpdate) -> tuple[str, dict[str, str], dict[str, Any]]:
    """URL, headers and JSON body of one status update, as the host's API description has it."""
    context = CONTEXT_PREFIX + update.environment
    state = STATES[target.host][update.state]
    link = (target.link.format(commit=update.commit, environment=update.environment,
                               repo=target.repo) if target.link else None)
    sha = quote(update.commit, safe="")
    headers = {"Content-Type": "application/json", "Accept": "application/json",
               "User-Agent": "fraisier-reconciler"}
    body: dict[str, Any]
    if target.host == Host.GITHUB:
        owner, repo = (quote(p, safe="") for p in target.repo.split("/"))
        url = f"{target.api_url}/repos/{owner}/{repo}/statuses/{sha}"
        headers.update({"Authorization": f"Bearer {token}",
                        "Accept": "application/vnd.github+json",
                        "X-GitHub-Api-Version": "2022-11-28"})
        body = {"state": state, "context": context, "description": update.description}
        if link:
            body["target_url"] = link
    elif target.host == Host.GITLAB:
        url = (f"{target.api_url}/api/v4/projects/{quote(target.repo, safe='')}"
               f"/statuses/{sha}")
        headers["PRIVATE-TOKEN"] = token
        body = {"state": state, "name": context, "description": update.description}
        if link:
            body["target_url"] = link
    elif target.host == Host.GITEA:
        owner, repo = (quote(p, safe="") for p in target.repo.split("/"))
        url = f"{target.api_url}/api/v1/repos/{owner}/{repo}/statuses/{sha}"
        headers["Authorization"] = f"token {token}"
        body = {"state": state, "context": context, "description": update.description}
        if link:
            body["target_url"] = link
    else:
        workspace, repo = (quote(p, safe="") for p in target.repo.split("/"))
        url = (f"{target.api_url}/2.0/repositories/{workspace}/{repo}/commit/{sha}"
               "/statuses/build")
        headers["Authorization"] = f"Bearer {token}"
        body = {"key": context, "name": context, "state": state,
                "description": update.description,
                "url": link or f"https://bitbucket.org/{target.repo}/commits/{update.commit}"}
    return url, headers, body


@dataclass
class Delivery:
    """Tuning of the background sender (bounded in every dimension)."""

    queue_size: int = 256
    attempts: int = 4
    backoff: float = 0.5  # first retry after about this (jittered x0.5..1.5), doubling
    max_backoff: float = 10.0
    timeout: float = 10.0  # per request


class _Lane:
    """One target's queue and sender task."""

    def __init__(self, target: StatusTarget, token: str, size: int) -> None:
        self.target = target
        self.token = token
        self.queue: asyncio.Queue[StatusUpdate] = asyncio.Queue(maxsize=size)
        self.task: asyncio.Task[None] | None = None
        self.dropping = False  # logged once while the queue overflows, not per update


class CommitStatusReporter:
    """A ``CommitStatusSink`` for one or more git hosts."""

    def __init__(self, targets: list[StatusTarget], *, delivery: Delivery | None = None,
                 environ: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.delivery = delivery or Delivery()
        # Tokens are the operator's own (trusted) references, resolved once at start-up: a
        # missing one stops the start with the reference named, never the value.
        self._lanes = [_Lane(t, resolve_secret(dict(t.token_ref), environ=environ, trusted=True),
                             self.delivery.queue_size) for t in targets]
        self._sent: dict[tuple[str, str, str], tuple[CommitState, str]] = {}
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.delivery.timeout),
                                         transport=transport, follow_redirects=False)

    @property
    def targets(self) -> list[StatusTarget]:
        return [lane.target for lane in self._lanes]

    def report(self, update: StatusUpdate) -> None:
        for lane in self._lanes:
            host = lane.target.host.value
            key = (lane.target.label, update.commit, update.environment)
            if self._sent.get(key) == (update.state, update.description):
                metrics.COMMIT_STATUS_TOTAL.labels(host, "skipped").inc()
                continue  # the same status again (a deferred commit, pass after pass)
            if len(self._sent) > 4096:
                self._sent.clear()
            self._sent[key] = (update.state, update.description)
            if lane.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    lane.queue.get_nowait()
                    lane.queue.task_done()
                metrics.COMMIT_STATUS_TOTAL.labels(host, "dropped").inc()
                if not lane.dropping:
                    lane.dropping = True
                    log.warning("commit status queue full: oldest updates dropped until it "
                                "drains (reconciler_commit_status_total{result=\"dropped\"})",
                                extra={"target": lane.target.label})
            lane.queue.put_nowait(update)
            if lane.task is None or lane.task.done():
                lane.task = asyncio.get_running_loop().create_task(self._run(lane))

    async def _run(self, lane: _Lane) -> None:
        while True:
            update = await lane.queue.get()
            try:
                await self._send(lane, update)
            except Exception as exc:  # a sender must outlive any one update
                log.error("commit status sender error", extra={
                    "target": lane.target.label, "error": self._redact(lane, repr(exc))})
            finally:
                lane.queue.task_done()

    def _redact(self, lane: _Lane, text: str) -> str:
        return redact(text, urls=[lane.target.api_url], secrets=[lane.token])

    async def _send(self, lane: _Lane, update: StatusUpdate) -> None:
        target, d = lane.target, self.delivery
        host = target.host.value
        url, headers, body = build_request(target, lane.token, update)
        problem = ""
        for attempt in range(1, d.attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._client.post(url, headers=headers, json=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    lane.dropping = False
                    metrics.COMMIT_STATUS_TOTAL.labels(host, "sent").inc()
                    log.info("commit status sent", extra={
                        "target": target.label, "commit": update.commit[:12],
                        "context": CONTEXT_PREFIX + update.environment,
                        "state": update.state.value})
                    return
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # refused (bad token, unknown repo or commit): retrying won't help
                header = response.headers.get("Retry-After", "")
                retry_after = float(header) if header.isdigit() else None
            if attempt == d.attempts:
                break
            metrics.COMMIT_STATUS_TOTAL.labels(host, "retried").inc()
            if retry_after is None:
                delay = exponential(attempt, first=d.backoff, cap=d.max_backoff)
                retry_after = jittered(delay, 0.5)
            await asyncio.sleep(min(retry_after, d.max_backoff))
        metrics.COMMIT_STATUS_TOTAL.labels(host, "failed").inc()
        # Not delivered: the next pass that reports the same status sends it again.
        key = (target.label, update.commit, update.environment)
        if self._sent.get(key) == (update.state, update.description):
            del self._sent[key]
        log.warning("commit status not delivered", extra={
            "target": target.label, "commit": update.commit[:12],
            "context": CONTEXT_PREFIX + update.environment, "state": update.state.value,
            "token": describe_ref(dict(target.token_ref)), "error": self._redact(lane, problem)})

    async def flush(self, grace: float) -> bool:
        """Wait (at most ``grace`` s) until every queued update was sent or given up."""
        waits = [lane.queue.join() for lane in self._lanes]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True

    async def aclose(self, grace: float = 0.0) -> None:
        """Send what is queued (for at most ``grace`` s), then stop the senders."""
        if grace > 0:
            await self.flush(grace)
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                await asyncio.gather(lane.task, return_exceptions=True)
        await self._client.aclose()


def operator_targets(values: tuple[str, ...] | list[str]) -> list[StatusTarget]:
    """The ``--commit-status`` values, parsed, with their tokens checked now (a missing one is
    a usage error at start-up, not a warning at the first pass) and put out of the config
    repo's reach (``spec.policy``: no Service may reference the reconciler's own token)."""
    from reconciler.errors import SecretError
    from reconciler.spec import policy

    targets = [parse_target(v) for v in values]
    for target in targets:
        ((kind, where),) = target.token_ref.items()
        try:
            if not resolve_secret(dict(target.token_ref), trusted=True):
                raise TargetError(f"{target.label}: token {kind}:{where} is empty")
        except SecretError as exc:
            raise TargetError(f"{target.label}: {exc.message}") from None
        if kind == "env":
            policy.protect_env(where)
        else:
            policy.protect_path(where)
        host = (urlsplit(target.api_url).hostname or "").lower()
        if target.api_url.startswith("http://") and host not in ("localhost", "127.0.0.1",
                                                                  "::1"):
            log.warning("commit status api= is plain http: the token travels unencrypted",
                        extra={"target": target.label})
    return targets
