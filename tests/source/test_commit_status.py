"""The commit-status reporter against the four fakes: requests the published descriptions allow
(and the fakes refuse what they do not), bounded jittered retries, a hanging host that holds no
one, redacted failures, one request per distinct status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from reconciler.observe import metrics
from reconciler.rollout.status_sink import CommitState, StatusUpdate
from reconciler.source.commit_status import (
    CommitStatusReporter,
    Delivery,
    Host,
    TargetError,
    build_request,
    parse_target,
)
from tests.source.commit_status_fakes import FakeHosts

pytestmark = pytest.mark.timeout(60)
SHA = "0123456789abcdef0123456789abcdef01234567"
FAST = Delivery(attempts=3, backoff=0.01, max_backoff=0.05, timeout=2.0)


@pytest.fixture
def fakes() -> Iterator[FakeHosts]:
    with FakeHosts() as hosts:
        yield hosts


def reporter(fakes: FakeHosts, *names: str, delivery: Delivery = FAST) -> CommitStatusReporter:
    chosen = [f for f in fakes.flags() if f.split(":", 1)[0] in (names or fakes.hosts)]
    return CommitStatusReporter([parse_target(v) for v in chosen], delivery=delivery,
                                environ=fakes.env())


def counted(host: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value("reconciler_commit_status_total",
                                              {"host": host, "result": result})
    return value or 0.0


async def test_every_host_accepts_the_three_states(fakes: FakeHosts) -> None:
    sink = reporter(fakes)
    for state in CommitState:
        sink.report(StatusUpdate(SHA, "prod", state, f"now {state.value}"))
    assert await sink.flush(10)
    await sink.aclose()
    for name, fake in fakes.hosts.items():
        assert fake.violations == [], fake.violations
        assert fake.transitions(SHA, "fraisier/prod") == [
            ("pending", "now pending"), ("success", "now success"), ("failure", "now failure")]


async def test_the_fakes_refuse_what_the_description_does_not_allow(fakes: FakeHosts) -> None:
    update = StatusUpdate(SHA, "prod", CommitState.PENDING, "x")
    async with httpx.AsyncClient() as client:
        for name, fake in fakes.hosts.items():
            target = parse_target(f"{name}:{fake.repo()},token=env:T,api={fake.api_url}")
            url, headers, body = build_request(target, fake.token, update)
            state_field = "state"
            bad_bodies = [{**body, state_field: "deferred"},  # not in the state enum
                          {**body, "colour": "blue"}]  # a field the description lacks
            for bad in bad_bodies:
                answer = await client.post(url, headers=headers, json=bad)
                assert answer.status_code == 422, (name, bad)
            no_auth = {k: v for k, v in headers.items()
                       if k not in ("Authorization", "PRIVATE-TOKEN")}
            assert (await client.post(url, headers=no_auth, json=body)).status_code == 422
            assert (await client.put(url, headers=headers, json=body)).status_code == 422
            assert len(fake.violations) == 4, (name, fake.violations)
            assert fake.statuses == {}


async def test_retries_are_jittered_bounded_and_counted(fakes: FakeHosts) -> None:
    github = fakes.hosts["github"]
    github.faults = [500, 429]
    retried, sent = counted("github", "retried"), counted("github", "sent")
    sink = reporter(fakes, "github")
    sink.report(StatusUpdate(SHA, "prod", CommitState.SUCCESS, "ok"))
    assert await sink.flush(10)
    assert github.transitions(SHA, "fraisier/prod") == [("success", "ok")]
    assert counted("github", "retried") - retried == 2
    assert counted("github", "sent") - sent == 1

    github.faults = [503] * 10  # down for good: given up after `attempts`
    before, failed = github.requests, counted("github", "failed")
    sink.report(StatusUpdate(SHA, "prod", CommitState.FAILURE, "bad"))
    assert await sink.flush(10)
    await sink.aclose()
    assert github.requests - before == FAST.attempts
    assert counted("github", "failed") - failed == 1


async def test_a_refusal_is_final_and_logged_without_the_token(
        fakes: FakeHosts, caplog: pytest.LogCaptureFixture) -> None:
    gitea = fakes.hosts["gitea"]
    target = parse_target(f"gitea:acme/config,token=env:WRONG,api={gitea.api_url}")
    sink = CommitStatusReporter([target], delivery=FAST, environ={"WRONG": "n0t-the-t0ken"})
    with caplog.at_level(logging.WARNING, logger="reconciler.commit_status"):
        sink.report(StatusUpdate(SHA, "prod", CommitState.PENDING, "x"))
        assert await sink.flush(10)
    assert gitea.requests == 1  # 401: not retried
    sink.report(StatusUpdate(SHA, "prod", CommitState.PENDING, "x"))  # the next pass: again
    assert await sink.flush(10)
    assert gitea.requests == 2
    record = next(r for r in caplog.records if r.getMessage() == "commit status not delivered")
    assert "HTTP 401" in record.error  # type: ignore[attr-defined]
    assert record.token == "env:WRONG"  # type: ignore[attr-defined]
    assert "n0t-the-t0ken" not in caplog.text
    await sink.aclose()


async def test_a_hanging_host_blocks_neither_report_nor_the_others(fakes: FakeHosts) -> None:
    fakes.hosts["github"].hang = 30.0
    sink = reporter(fakes, "github", "gitlab",
                    delivery=Delivery(attempts=1, timeout=1.0, backoff=0.01))
    started = time.perf_counter()
    for n in range(50):
        sink.report(StatusUpdate(SHA, f"env{n}", CommitState.PENDING, "x"))
    assert time.perf_counter() - started < 0.05  # only queued
    # GitLab delivers everything while GitHub's requests time out one by one.
    deadline = time.monotonic() + 20
    while len(fakes.hosts["gitlab"].statuses) < 50 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(fakes.hosts["gitlab"].statuses) == 50
    assert len(fakes.hosts["github"].statuses) == 0
    await sink.aclose()


async def test_the_same_status_is_sent_once_and_a_full_queue_drops_the_oldest(
        fakes: FakeHosts) -> None:
    sink = reporter(fakes, "bitbucket", delivery=Delivery(queue_size=2, attempts=1))
    update = StatusUpdate(SHA, "prod", CommitState.PENDING, "deferred by sync window", True)
    sink.report(update)
    sink.report(update)
    dropped = counted("bitbucket", "dropped")
    for n in range(5):  # no await: the sender cannot run, the queue overflows
        sink.report(StatusUpdate(SHA, f"e{n}", CommitState.SUCCESS, "ok"))
    assert counted("bitbucket", "dropped") - dropped >= 3
    assert await sink.flush(10)
    await sink.aclose()
    bitbucket = fakes.hosts["bitbucket"]
    assert bitbucket.violations == []
    assert (SHA, "fraisier/e4") in bitbucket.statuses  # the newest are kept
    assert len(bitbucket.transitions(SHA, "fraisier/prod")) <= 1  # never twice


def test_targets_are_parsed_with_defaults_and_clear_errors() -> None:
    gh = parse_target("github:acme/config,token=env:GH")
    assert (gh.host, gh.api_url, gh.repo) == (Host.GITHUB, "https://api.github.com", "acme/config")
    ghe = parse_target("github:acme/config,token=file:/etc/t,api=https://ghe.example/api/v3/")
    assert ghe.api_url == "https://ghe.example/api/v3"
    assert parse_target("forgejo:a/b,token=env:X,api=https://f.example").host == Host.GITEA
    assert parse_target("gitlab:g/s/p,token=env:X").repo == "g/s/p"
    for bad, why in [("github:acme,token=env:X", "OWNER/NAME"),
                     ("svn:a/b,token=env:X", "HOST:REPO"),
                     ("github:a/b", "token=env:NAME"),
                     ("github:a/b,token=literal", "token=env:NAME"),
                     ("gitea:a/b,token=env:X", "needs api=URL"),
                     ("github:a/b,token=env:X,colour=red", "unknown or empty option")]:
        with pytest.raises(TargetError, match=why):
            parse_target(bad)


def test_the_excerpts_are_the_verbatim_upstream_fragments() -> None:
    """README.md pins each byte-exact fragment by length and sha256: an edit shows."""
    import hashlib
    import re

    from tests.source.commit_status_fakes import CONTRACTS

    rows = re.findall(r"^\| `([\w.-]+\.fragment)` \|.*\| (\d+) \| `([0-9a-f]{64})` \|$",
                      (CONTRACTS / "README.md").read_text(), re.MULTILINE)
    assert len(rows) == 5
    for name, size, digest in rows:
        raw = (CONTRACTS / name).read_bytes()
        assert (len(raw), hashlib.sha256(raw).hexdigest()) == (int(size), digest), name


def test_operator_targets_check_tokens_and_warn_on_plain_http(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from reconciler.source.commit_status import operator_targets

    monkeypatch.setenv("FRAISIER_TEST_STATUS_TOKEN", "t0k")
    monkeypatch.setenv("FRAISIER_TEST_EMPTY_TOKEN", "")
    with caplog.at_level(logging.WARNING, logger="reconciler.commit_status"):
        operator_targets(["gitea:a/b,token=env:FRAISIER_TEST_STATUS_TOKEN,api=http://127.0.0.1:1"])
        assert "plain http" not in caplog.text  # loopback
        operator_targets(["gitea:a/b,token=env:FRAISIER_TEST_STATUS_TOKEN,api=http://git.example"])
        assert "plain http: the token travels unencrypted" in caplog.text
    with pytest.raises(TargetError, match="token env:FRAISIER_TEST_EMPTY_TOKEN is empty"):
        operator_targets(["github:a/b,token=env:FRAISIER_TEST_EMPTY_TOKEN"])
    with pytest.raises(TargetError, match="file:/nonexistent/t cannot be read"):
        operator_targets(["github:a/b,token=file:/nonexistent/t"])
