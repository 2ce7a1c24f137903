"""What each destination is told: selectors, repeats held back within the repeat interval,
recoveries once and named after the problem they end (deferred -> released, drift -> healed),
and a Notifier's URL only as a secret reference (a literal is a validation error)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.notifications.destinations import Destination, from_notifier, label_of
from reconciler.notifications.digest import Sent, compose, remember, select
from reconciler.notifications.events import DEFAULT_EVENTS, Event, EventKind
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import ResourceKey


def ev(kind: EventKind, name: str, env: str = "prod", **labels: str) -> Event:
    key = ResourceKey(env, "Service", name)
    return Event(kind, str(key), key, tuple(sorted(labels.items())), reason="why")


def dest(**kw: object) -> Destination:
    return Destination(id="d", label="d:json", url="json://x/y", **kw)  # type: ignore[arg-type]


def test_selectors_pick_environment_kind_name_glob_and_labels() -> None:
    d = dest(environments=frozenset({"prod"}), kinds=frozenset({"Service"}),
             names=("api*",), labels=(("team", "pay"),))
    events = [ev(EventKind.FAILED, "api-1", team="pay"), ev(EventKind.FAILED, "api-2"),
              ev(EventKind.FAILED, "web", team="pay"),
              ev(EventKind.FAILED, "api-3", env="staging", team="pay")]
    chosen, _ = select(d, events, {}, 0.0)
    assert [e.subject for e in chosen] == ["prod/Service/api-1"]


def test_a_repeat_is_held_back_within_the_interval_and_told_after_it() -> None:
    d = dest(repeat_s=60.0)
    memory: dict[str, Sent] = {}
    failed = ev(EventKind.FAILED, "api")
    chosen, held = select(d, [failed], memory, 1000.0)
    remember(memory, compose(d, chosen, message_id="1", now=1000.0))
    assert (len(chosen), held) == (1, 0)
    assert select(d, [failed], memory, 1059.0) == ([], 1)
    assert len(select(d, [failed], memory, 1061.0)[0]) == 1
    # another problem of the same resource is news; its revision blocked after it is not
    assert len(select(d, [ev(EventKind.ROLLED_BACK, "api")], memory, 1001.0)[0]) == 1
    assert select(d, [ev(EventKind.BLOCKED, "api")], memory, 1002.0) == ([], 1)


def test_recoveries_are_told_once_and_named_after_the_problem() -> None:
    d = dest()
    memory: dict[str, Sent] = {}
    problems = [ev(EventKind.DEFERRED, "api"), ev(EventKind.DRIFT_DETECTED, "web")]
    remember(memory, compose(d, select(d, problems, memory, 0.0)[0], message_id="1", now=0.0))
    ok = [ev(EventKind.SUCCEEDED, "api"), ev(EventKind.SUCCEEDED, "web"),
          ev(EventKind.SUCCEEDED, "db")]  # db had no problem: plain successes are not asked for
    chosen, _ = select(d, ok, memory, 1.0)
    assert sorted((e.subject, e.kind) for e in chosen) == [
        ("prod/Service/api", EventKind.RELEASED), ("prod/Service/web", EventKind.DRIFT_HEALED)]
    message = compose(d, chosen, message_id="2", now=1.0)
    assert message.severity == "success"
    remember(memory, message)
    assert select(d, ok, memory, 2.0) == ([], 0)  # once
    # in sync again with nothing deployed (a revert) ends a failure, never a drift, and is
    # never news on its own
    memory = {"prod/Service/api": Sent("rolled_back", 0.0), "prod/Service/web":
              Sent("drift_detected", 0.0)}
    in_sync = [ev(EventKind.IN_SYNC, n) for n in ("api", "web", "db")]
    assert [e.subject for e in select(d, in_sync, memory, 1.0)[0]] == ["prod/Service/api"]
    asked = dest(events=DEFAULT_EVENTS | {EventKind.SUCCEEDED})
    assert len(select(asked, ok, {}, 0.0)[0]) == 3


def test_a_summary_counts_and_caps_its_lines() -> None:
    d = dest()
    events = [ev(EventKind.SUCCEEDED, f"s{i}") for i in range(999)] + \
        [ev(EventKind.ROLLED_BACK, "api")]
    message = compose(d, events, message_id="1", now=0.0)
    assert message.title == "Fraisier: 1 ROLLED BACK, 999 succeeded in prod"
    assert message.body.splitlines()[0].startswith("ROLLED BACK: prod/Service/api")
    assert message.body.splitlines()[-1] == "… and 960 more succeeded"
    assert message.severity == "failure"


def test_the_label_never_carries_the_url() -> None:
    assert label_of("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7", "prod/ops") \
        == "prod/ops:slack"


def test_a_notifier_url_is_a_secret_reference_only(tmp_path: Path) -> None:
    doc = {"apiVersion": "fraisier.dev/v1", "kind": "Notifier",
           "metadata": {"name": "ops", "environment": "prod"},
           "spec": {"url": "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7"}}
    (tmp_path / "n.yaml").write_text(json.dumps(doc, indent=1))
    with pytest.raises(SpecError) as caught:
        load_desired_state(files_from_directory(tmp_path))
    [problem] = caught.value.problems
    assert problem.file.endswith("n.yaml") and problem.line == 9 and "spec.url" in str(problem)
    doc["spec"] = {"url": {"env": "OPS_HOOK"}, "events": ["failed"], "repeatInterval": "30m",
                   "environments": ["*"]}
    (tmp_path / "n.yaml").write_text(json.dumps(doc))
    [notifier] = load_desired_state(files_from_directory(tmp_path)).notifiers.values()
    d = from_notifier(notifier, environ={"OPS_HOOK": "json://127.0.0.1:9/x"})
    assert (d.id, d.label, d.events, d.environments, d.repeat_s) == (
        "prod/Notifier/ops", "prod/ops:json", frozenset({EventKind.FAILED}), None, 1800.0)


def test_validate_counts_notifiers(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.cli import cli

    (tmp_path / "n.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Notifier\nmetadata: {name: ops}\n"
        "spec: {url: {env: OPS}}\n")
    result = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert result.exit_code == 0 and "1 Notifier" in result.output, result.output


def test_operator_urls_split_on_spaces_only_and_come_from_references(tmp_path: Path) -> None:
    from reconciler.notifications.destinations import operator_destinations

    (tmp_path / "url").write_text("ntfy://127.0.0.1:9/topic\n")
    dests = operator_destinations(
        ["mailto://127.0.0.1:25?from=f@example.org&to=a@example.org,b@example.org "
         f"file:{tmp_path / 'url'}", "env:OPS_URL"],
        environ={"OPS_URL": "json://127.0.0.1:9/ops"})
    assert [d.label for d in dests] == ["operator1:mailto", "operator2:ntfy", "operator3:json"]
    assert dests[0].url.endswith("to=a@example.org,b@example.org")
    assert dests[1].url == "ntfy://127.0.0.1:9/topic"  # one trailing newline dropped
