"""Notifications end to end: a real engine (fake provider through the contract, SQLite store)
rolls back a deployment (and defers one by a sync window, then releases it); the sink's summary
reaches real loopback servers through Apprise: an SMTP server (aiosmtpd), and HTTP receivers
speaking as Slack, Discord, ntfy, Gotify and a JSON webhook, each payload checked against that
service's documented shape. Slack and Discord only post to their cloud hosts, so their Apprise
plugins' base URLs are pointed at the loopback receiver (the plugin code building the request is
Apprise's own, unchanged)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from apprise.plugins.discord import NotifyDiscord
from apprise.plugins.slack import NotifySlack

from reconciler.notifications.destinations import operator_destinations
from reconciler.notifications.settings import DeliveryLimits
from reconciler.notifications.sink import Notifications
from reconciler.observe import metrics
from reconciler.providers import registry
from reconciler.rollout.engine import Reconciler
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState
from reconciler.spec.validate import reload_schemas
from reconciler.state import default_db_url, open_store
from tests.notifications.receivers import Mailbox, Receiver, smtp_server
from tests.providers.fake import World, fake_info

pytestmark = pytest.mark.timeout(60)

SLACK_TOKENS = "T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7"
DISCORD = "417429632418316298/JHZ7lQml277CDHmQKMHI8qBe7bk2ZwO5UKjCiOAF7711o33MyqU344Qpgv7YTpadV_js"


@pytest.fixture
def world() -> Iterator[World]:
    world = World()
    registry.register(fake_info(world))
    reload_schemas()
    try:
        yield world
    finally:
        registry.unregister("fake")
        reload_schemas()


def write(root: Path, name: str, doc: dict[str, Any]) -> None:
    (root / f"{name}.yaml").write_text(json.dumps(doc))


def service(root: Path, name: str, health: str, **spec: Any) -> None:
    write(root, name, {"apiVersion": "fraisier.dev/v1", "kind": "Service",
                       "metadata": {"name": name, "environment": "prod",
                                    "labels": {"team": "pay"}},
                       "spec": {"target": "fleet", "command": ["app", name],
                                "fake": {"health": health}, **spec}})


@pytest.fixture
async def http() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def mailbox() -> AsyncIterator[Mailbox]:
    box = Mailbox()
    controller = smtp_server(box)
    box.port = controller.port  # type: ignore[attr-defined]
    yield box
    controller.stop()


async def settle(notifications: Notifications, within: float = 10.0) -> None:
    await asyncio.wait_for(notifications.intake.join(), within)
    assert await notifications.deliveries.drain(within)


@pytest.mark.timeout(60)
async def test_a_rolled_back_deploy_reaches_email_slack_discord_ntfy_and_json(
        tmp_path: Path, world: World, http: Receiver, mailbox: Mailbox,
        monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"http://127.0.0.1:{http.port}"
    monkeypatch.setattr(NotifySlack, "webhook_url", f"{base}/services")
    monkeypatch.setattr(NotifyDiscord, "notify_url", f"{base}/api/webhooks")
    monkeypatch.setenv("TEAM_HOOK", f"json://127.0.0.1:{http.port}/team")
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    write(root, "target", {"apiVersion": "fraisier.dev/v1", "kind": "Target",
                           "metadata": {"name": "fleet", "environment": "prod"},
                           "spec": {"provider": "fake", "instances": 2}})
    # a Notifier in the config repo: only Services named api*, its URL by reference
    write(root, "notifier", {"apiVersion": "fraisier.dev/v1", "kind": "Notifier",
                             "metadata": {"name": "team", "environment": "prod"},
                             "spec": {"url": {"env": "TEAM_HOOK"},
                                      "selector": {"kinds": ["Service"], "names": ["api*"]},
                                      "repeatInterval": "1h"}})
    service(root, "api", "healthy")
    service(root, "web", "healthy")
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state)
    operator = operator_destinations([
        f"mailto://127.0.0.1:{mailbox.port}?from=fraisier@example.org&to=ops@example.org",  # type: ignore[attr-defined]
        f"slack://{SLACK_TOKENS}/#ops",
        f"discord://{DISCORD}",
        f"ntfy://127.0.0.1:{http.port}/fleet",
        f"gotify://127.0.0.1:{http.port}/AgotifyAppToken1",
        f"json://127.0.0.1:{http.port}/ops",
    ])
    notifications = Notifications(operator, state_dir=state, ui_url="https://fraisier.example",
                                  limits=DeliveryLimits(backoff_s=0.05, timeout_s=10))
    notifications.start()
    try:
        first = load_desired_state(files_from_directory(root), commit="a" * 40)
        assert [str(k) for k in first.notifiers] == ["prod/Notifier/team"]
        assert all(k.kind != "Notifier" for k in first.resources)  # never planned
        notifications.pass_finished(await engine.reconcile(first), first)
        await settle(notifications)
        assert http.hits == [] and mailbox.messages == []  # successes: not by default

        service(root, "api", "unhealthy", env={"V": "2"})  # the gate fails, api rolls back
        desired: DesiredState = load_desired_state(files_from_directory(root),
                                                   commit="b" * 40)
        result = await engine.reconcile(desired)
        assert {o.key.name: o.result for o in result.outcomes if o.key.kind == "Service"} \
            == {"api": "rolled_back", "web": "converged"}
        outcome_at = time.monotonic()
        notifications.pass_finished(result, desired)
        await asyncio.wait_for(mailbox.received.wait(), 10)
        await settle(notifications)
        latency = time.monotonic() - outcome_at
        assert latency < 2.0, latency

        # email: subject says what and where; body which resource, commit, reason, link
        [mail] = mailbox.messages
        assert "1 ROLLED BACK" in mail["Subject"] and "prod" in mail["Subject"]
        text = mail.get_payload(decode=True).decode() if not mail.is_multipart() else \
            mail.get_payload(0).get_payload(decode=True).decode()
        assert "prod/Service/api" in text and "bbbbbbb" in text
        assert "https://fraisier.example/resources/prod/Service/api" in text
        # Slack incoming webhook (api.slack.com/messaging/webhooks): JSON with text/blocks or
        # attachments, posted to /services/T…/B…/X…
        [slack] = http.of("/services/")
        assert slack.path == f"/services/{SLACK_TOKENS}"
        payload = slack.json()
        assert {"text", "blocks", "attachments"} & set(payload)
        assert "prod/Service/api" in json.dumps(payload)
        # Discord execute-webhook (discord.com/developers/docs/resources/webhook): content
        # and/or embeds (title, description), at /api/webhooks/{id}/{token}
        [discord] = http.of("/api/webhooks/")
        payload = discord.json()
        assert {"content", "embeds"} & set(payload)
        assert "prod/Service/api" in json.dumps(payload)
        # ntfy JSON publishing (docs.ntfy.sh/publish/#publish-as-json): POST / with topic,
        # title, message
        [ntfy] = [h for h in http.hits if h.path == "/"]
        payload = ntfy.json()
        assert payload["topic"] == "fleet" and "ROLLED BACK" in payload["title"]
        assert "prod/Service/api" in payload["message"]
        # Gotify (gotify.net/api-docs: POST /message, app token in X-Gotify-Key, JSON title,
        # message, priority)
        [gotify] = http.of("/message")
        assert gotify.headers["X-Gotify-Key"] == "AgotifyAppToken1"
        payload = gotify.json()
        assert isinstance(payload["priority"], int) and "ROLLED BACK" in payload["title"]
        assert "prod/Service/api" in payload["message"]
        # Apprise's json:// (version, title, message, type): the operator's and the Notifier's
        [ops] = http.of("/ops")
        assert set(ops.json()) >= {"version", "title", "message", "type"}
        assert ops.json()["type"] == "failure"
        [team] = http.of("/team")
        assert "prod/Service/api" in team.json()["message"]

        # the next pass: api's rolled-back revision is blocked, the same incident: held back
        # (repeat interval); the metric counts deliveries by a label that carries no token
        http.hits.clear()
        again = await engine.reconcile(desired)
        assert [o.result for o in again.outcomes if o.key.name == "api"] == ["blocked"]
        notifications.pass_finished(again, desired)
        await settle(notifications)
        assert http.hits == []
        exposed = _exposition()
        assert 'destination="operator2:slack",event="rolled_back",result="delivered"' in exposed
        assert SLACK_TOKENS.split("/")[2] not in exposed and "JHZ7lQml" not in exposed
        saved = (state / "notifications.json").read_text()  # what survives a restart
        assert "prod/Service/api" in saved
        assert SLACK_TOKENS.split("/")[2] not in saved and "JHZ7lQml" not in saved

        # a restart: the state file keeps what was told (no repeat), and the recovery is
        # sent once
        await notifications.close()
        notifications = Notifications(operator, state_dir=state,
                                      limits=DeliveryLimits(backoff_s=0.05))
        notifications.start()
        notifications.pass_finished(result, desired)
        await settle(notifications)
        assert http.hits == []
        # the bad commit reverted: api is unchanged (it runs that revision), no deployment will
        # ever succeed, and the problem still ends: "back in sync", once
        service(root, "api", "healthy")
        fixed = load_desired_state(files_from_directory(root), commit="c" * 40)
        reverted = await engine.reconcile(fixed)
        assert [o.result for o in reverted.outcomes if o.key.name == "api"] == ["converged"]
        notifications.pass_finished(reverted, fixed)
        await settle(notifications)
        [recovered] = http.of("/ops")
        assert "1 back in sync" in recovered.json()["title"]
        assert recovered.json()["type"] == "success"
        http.hits.clear()
        notifications.pass_finished(await engine.reconcile(fixed), fixed)
        await settle(notifications)
        assert http.hits == []  # once
    finally:
        await notifications.close()
        await engine.close()
        await store.close()


def _exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()


async def test_a_change_deferred_by_a_sync_window_is_told_and_so_is_its_release(
        tmp_path: Path, world: World, http: Receiver) -> None:
    root, state = tmp_path / "fleet", tmp_path / "state"
    root.mkdir()
    write(root, "target", {"apiVersion": "fraisier.dev/v1", "kind": "Target",
                           "metadata": {"name": "fleet", "environment": "prod"},
                           "spec": {"provider": "fake", "instances": 1}})
    service(root, "api", "healthy")
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state)
    notifications = Notifications(
        operator_destinations([f"json://127.0.0.1:{http.port}/ops"]), state_dir=state)
    notifications.start()
    try:
        first = load_desired_state(files_from_directory(root), commit="a" * 40)
        await engine.reconcile(first)
        freeze = [{"kind": "deny", "schedule": "* * * * *", "duration": "1h"}]
        service(root, "api", "healthy", env={"V": "2"}, syncWindows=freeze)
        frozen = load_desired_state(files_from_directory(root), commit="b" * 40)
        result = await engine.reconcile(frozen)
        assert [o.action for o in result.outcomes if o.key.name == "api"] == ["deferred"]
        notifications.pass_finished(result, frozen)
        await settle(notifications)
        [deferred] = [h.json() for h in http.hits]
        assert "1 deferred by sync window in prod" in deferred["title"]
        assert deferred["type"] == "warning"
        http.hits.clear()
        service(root, "api", "healthy", env={"V": "2"})  # the freeze is lifted
        thawed = load_desired_state(files_from_directory(root), commit="c" * 40)
        notifications.pass_finished(await engine.reconcile(thawed), thawed)
        await settle(notifications)
        [released] = [h.json() for h in http.hits]
        assert "1 released" in released["title"] and "prod/Service/api" in released["message"]
    finally:
        await notifications.close()
        await engine.close()
        await store.close()
