"""Delivery against real loopback receivers: a destination answering 500 gets exactly its
attempts and is given up (counted, logged, redacted); one that hangs holds nobody else; a full
queue drops (counted) instead of waiting; a message queued but not delivered before a stop is
sent after the restart, and one delivered is not sent again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.notifications.delivery import Deliveries
from reconciler.notifications.destinations import operator_destinations
from reconciler.notifications.digest import Message
from reconciler.notifications.events import Event, EventKind
from reconciler.notifications.settings import DeliveryLimits
from reconciler.notifications.sink import Notifications
from reconciler.observe.metrics import REGISTRY
from reconciler.spec.model import DesiredState, ResourceKey
from tests.helpers import free_port
from tests.notifications.receivers import Receiver

pytestmark = pytest.mark.timeout(30)

FAST = DeliveryLimits(attempts=3, backoff_s=0.05, timeout_s=5.0)


@pytest.fixture
async def ok() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


def failure(name: str) -> Event:
    key = ResourceKey("prod", "Service", name)
    return Event(EventKind.FAILED, str(key), key, reason="exit 3")


def counted(label: str, result: str) -> float:
    return REGISTRY.get_sample_value("reconciler_notifications_total", {
        "destination": label, "event": "failed", "result": result}) or 0.0


async def test_a_500_is_retried_attempts_times_then_given_up_and_others_flow(
        tmp_path: Path, ok: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    bad = await Receiver(status=500).start()
    hang = await Receiver(hang=20.0).start()
    try:
        dests = operator_destinations([
            f"json://127.0.0.1:{bad.port}/x?token=sekrit-token-123",
            f"json://127.0.0.1:{hang.port}/h?rto=1",
            f"json://127.0.0.1:{ok.port}/ok"])
        given_up = counted(dests[0].label, "failed")
        n = Notifications(dests, state_dir=tmp_path, limits=FAST)
        n.start()
        started = time.perf_counter()
        n.tell([failure("api")], DesiredState({}))
        assert time.perf_counter() - started < 0.01  # the caller never waits
        # the healthy one is not held up by the one that hangs
        await asyncio.wait_for(ok.arrived.wait(), 5)
        await asyncio.wait_for(hang.arrived.wait(), 5)
        assert len(ok.hits) == 1 and len(hang.hits) == 1
        with caplog.at_level(logging.WARNING, "reconciler.notifications"):
            await asyncio.wait_for(n.deliveries.drain(20), 20)
        assert len(bad.hits) == FAST.attempts  # bounded
        assert counted(dests[0].label, "failed") == given_up + 1
        assert "sekrit-token-123" not in caplog.text
        assert any(r.getMessage() == "notification not delivered; giving up"
                   for r in caplog.records)
        # not told after all: the next pass tells it again (to the failing ones only)
        n.tell([failure("api")], None)
        await asyncio.wait_for(n.intake.join(), 5)
        await asyncio.sleep(0.2)
        assert len(ok.hits) == 1 and len(bad.hits) > FAST.attempts
        await n.close(drain_s=0.1)
    finally:
        await bad.stop()
        await hang.stop()


async def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    hang = await Receiver(hang=20.0).start()
    try:
        dests = operator_destinations([f"json://127.0.0.1:{hang.port}/h?rto=5"])
        before = counted(dests[0].label, "dropped")
        n = Notifications(dests, state_dir=tmp_path,
                          limits=DeliveryLimits(queue=2, attempts=1, timeout_s=10))
        n.start()
        for i in range(5):  # distinct resources: none is a repeat
            n.tell([failure(f"svc-{i}")], DesiredState({}))
        await asyncio.wait_for(n.intake.join(), 5)
        # the router queues all five before the worker takes one: 2 queued, 3 dropped
        assert counted(dests[0].label, "dropped") == before + 3
        await n.close(drain_s=0.1)
    finally:
        await hang.stop()


async def test_what_was_queued_is_sent_after_a_restart_and_what_was_delivered_is_not(
        tmp_path: Path, ok: Receiver) -> None:
    down = await Receiver(hang=20.0).start()
    dests = operator_destinations([f"json://127.0.0.1:{down.port}/a?rto=5"])
    n = Notifications(dests, state_dir=tmp_path, limits=DeliveryLimits(attempts=1))
    n.start()
    n.tell([failure("api")], DesiredState({}))
    await asyncio.wait_for(down.arrived.wait(), 5)
    await n.close(drain_s=0.1)  # stopped mid-send: the message stays in the state file
    await down.stop()
    # the same destination label, now answering (operator1:json, the id in the state file)
    again = operator_destinations([f"json://127.0.0.1:{ok.port}/a"])
    assert again[0].id == dests[0].id
    n = Notifications(again, state_dir=tmp_path, limits=FAST)
    n.start()
    await asyncio.wait_for(ok.arrived.wait(), 5)
    await n.deliveries.drain(5)
    assert len(ok.hits) == 1 and "prod/Service/api" in ok.hits[0].json()["message"]
    await n.close()
    n = Notifications(again, state_dir=tmp_path, limits=FAST)  # delivered: not again
    n.start()
    await asyncio.sleep(0.3)
    await n.deliveries.drain(5)
    await n.close()
    assert len(ok.hits) == 1


async def test_a_stop_that_meets_a_send_as_it_ends_still_stops_the_worker(
        tmp_path: Path) -> None:
    """Stopping cancels each destination's worker. A cancel that arrived in the loop turn the
    send ended in was swallowed by asyncio.wait_for (Python 3.11): the worker went back to
    waiting for the next message and the stop waited for it for ever (a CI test run hung on
    this in its event loop's teardown; a daemon's stop would, until systemd killed it)."""
    sending = asyncio.Event()
    answered = asyncio.Event()

    async def send(_dest: Any, _message: Message) -> None:
        sending.set()
        await answered.wait()

    deliveries = Deliveries(tmp_path / "outbox.json", limits=FAST, send=send)
    dest = operator_destinations([f"json://127.0.0.1:{free_port()}/x"])[0]
    deliveries.configure([dest])
    assert deliveries.submit(Message("m1", dest.id, "t", "b", "failure", ["failed"]))
    await asyncio.wait_for(sending.wait(), 5)
    answered.set()  # the send ends in the next turn of the loop...
    await asyncio.sleep(0)
    await asyncio.wait_for(deliveries.close(), 5)  # ...the very turn the stop cancels it
    assert all(worker.done() for worker in deliveries.workers.values())
