"""Notifications under ``daemon --ha``: three replicas (three sinks, each with a store of its own
and a state dir of its own) share one real PostgreSQL / MariaDB database (and SQLite file). A
refused commit, which every replica sees, reaches a loopback JSON receiver (Apprise json://)
once; again within the repeat interval, not at all; again after it, once. And three real
`reconciler daemon --ha` processes on PostgreSQL send a refused commit once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.notifications.destinations import operator_destinations
from reconciler.notifications.digest import Message
from reconciler.notifications.settings import DeliveryLimits
from reconciler.notifications.sink import Notifications
from reconciler.state import open_store
from reconciler.state.notices import Claim
from reconciler.state.store import Store
from tests.e2e.conftest import Fleet, free_port, git, http_get
from tests.helpers import need
from tests.notifications.receivers import Receiver
from tests.state.backends import available, throwaway_url

pytestmark = pytest.mark.timeout(60)

REPEAT_S = 3.0
REPLICAS = 3


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    ok, reason = available(str(request.param))
    need(ok, reason)
    with throwaway_url(str(request.param), tmp_path) as url:
        opened = [open_store(url) for _ in range(REPLICAS)]
        await opened[0].migrate()
        try:
            yield opened
        finally:
            for store in opened:
                await store.close()


async def _round(sinks: list[Notifications], receiver: Receiver, commit: str) -> int:
    """Every replica sees the same refused commit; the messages that reached the receiver."""
    before = len(receiver.hits)
    for sink in sinks:
        sink.desired_refused(commit, "invalid", "deploy/api.yaml:3:1: unknown field 'imgae'")
    for sink in sinks:  # every queue drained: whatever was to be sent has been
        await asyncio.wait_for(sink.intake.join(), 10)
        assert await sink.deliveries.drain(10)
    return len(receiver.hits) - before


async def test_a_refused_commit_is_sent_once_by_the_replicas_sharing_a_database(
        stores: list[Store], tmp_path: Path) -> None:
    receiver = await Receiver().start()
    url = f"json://127.0.0.1:{receiver.port}/ops"
    limits = DeliveryLimits(attempts=2, backoff_s=0.05, timeout_s=5)
    sinks = [Notifications(operator_destinations([url], repeat_s=REPEAT_S),
                           state_dir=tmp_path / f"replica{n}", limits=limits, claims=store)
             for n, store in enumerate(stores)]
    for sink in sinks:
        sink.start()
    try:
        started = time.monotonic()
        assert await _round(sinks, receiver, "a" * 40) == 1
        body = receiver.hits[-1].json()
        assert "commit refused" in body["title"] and "unknown field" in body["message"]
        assert await _round(sinks, receiver, "a" * 40) == 0  # within the repeat interval
        await asyncio.sleep(max(0.0, REPEAT_S + 0.2 - (time.monotonic() - started)))
        first = {m for s in sinks for m in s.deliveries.delivered}
        assert await _round(sinks, receiver, "a" * 40) == 1  # after it: once again
        # Delivered claims are recorded: a restarted replica's queued copy is not sent again.
        told = [m for s in sinks for m in s.deliveries.delivered if m not in first]
        assert len(first) == 1 and len(told) == 1
        dest = sinks[0].notifiers.operator[0].id
        assert await stores[1].claim_notice(dest, "commits", "refused", told[-1],
                                            REPEAT_S) is Claim.DONE
        # A replica that crashed after sending, before its state file said so, finds the
        # message in its outbox at restart: the database says it was delivered; not re-sent.
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        again = Message(told[-1], dest, "Fraisier: 1 commit refused", "commit aaaaaaa",
                        "failure", ["refused"], {"commits": "refused"}, [], time.time())
        (crashed / "notifications.json").write_text(json.dumps({"outbox": [again.to_json()]}))
        before = len(receiver.hits)
        restarted = Notifications(operator_destinations([url], repeat_s=REPEAT_S),
                                  state_dir=crashed, limits=limits, claims=stores[2])
        assert await restarted.deliveries.drain(10)
        assert len(receiver.hits) == before and restarted.deliveries.outbox == {}
        await restarted.close(drain_s=1)
    finally:
        for sink in sinks:
            await sink.close(drain_s=1)
        await receiver.stop()


async def test_claims_between_stores(stores: list[Store]) -> None:
    """The rules by themselves: one winner, a changed problem is news, a continuation is not,
    a recovery is the remover's, an undelivered claim is released."""
    a, b, _ = stores
    won = await asyncio.gather(*(s.claim_notice("ops", "prod/Service/api", "rolled_back",
                                                f"m{n}", 3600) for n, s in enumerate(stores)))
    assert sorted(won) == sorted([Claim.WON, Claim.HELD, Claim.HELD])
    assert await a.claim_notice("ops", "prod/Service/api", "blocked", "m9", 3600,
                                continues={"rolled_back", "failed"}) is Claim.HELD
    assert await b.claim_notice("ops", "prod/Service/api", "drift_detected", "m10",
                                3600) is Claim.WON
    assert await a.release_notice("m10") == 1  # not delivered: the next pass tells it again
    assert await a.claim_notice("ops", "prod/Service/api", "drift_detected", "m11",
                                3600) is Claim.WON
    await a.notice_delivered("m11")
    assert await a.release_notice("m11") == 0
    assert [await a.close_notice("ops", "prod/Service/api"),
            await b.close_notice("ops", "prod/Service/api")] == [True, False]



def _told(port: int) -> float:
    """Refused-commit messages a daemon replica delivered or held back (from its /metrics)."""
    try:
        _, text = http_get(port, "/metrics")
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("reconciler_notifications_total{")
               and 'event="refused"' in line
               and ('result="delivered"' in line or 'result="suppressed"' in line))


@pytest.mark.timeout(120)
async def test_three_daemon_replicas_send_a_refused_commit_once(tmp_path: Path) -> None:
    """The same with real `reconciler daemon --ha` processes on one PostgreSQL database."""
    ok, reason = available("postgresql")
    need(ok, reason)
    receiver = await Receiver().start()
    repo = tmp_path / "config"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    fleet = Fleet(repo, tmp_path / "state", tmp_path / "root")
    fleet.write("target.yaml", f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {tmp_path / 'root'}}}
""")
    fleet.commit("target")
    ports = [free_port() for _ in range(REPLICAS)]
    procs: list[subprocess.Popen[bytes]] = []
    with throwaway_url("postgresql", tmp_path) as db:
        try:
            for n, port in enumerate(ports):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "reconciler", "--db", db, "--state-dir",
                     str(tmp_path / f"state{n}"), "daemon", *fleet.repo_args(), "--listen",
                     f"127.0.0.1:{port}", "--interval", "1s", "--ha", "--shard-ttl", "3s",
                     "--notify", f"json://127.0.0.1:{receiver.port}/ops"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True))
            fleet.write("api.yaml", "apiVersion: fraisier.dev/v1\nkind: Service\n"
                                    "metadata: {name: api}\nspec: {target: local, imgae: x}\n")
            bad = fleet.commit("typo")
            deadline = time.monotonic() + 60
            # every replica saw the commit and settled its message: delivered or held back
            while sum(_told(p) for p in ports) < REPLICAS:
                assert time.monotonic() < deadline, [_told(p) for p in ports]
                assert all(p.poll() is None for p in procs)
                await asyncio.sleep(0.2)
            assert len(receiver.hits) == 1, [h.json() for h in receiver.hits]
            assert bad[:7] in receiver.hits[0].json()["message"]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=20)
            await receiver.stop()
