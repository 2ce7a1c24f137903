"""What a pass reports per environment about its config commit (rollout/status_sink.py)."""

from __future__ import annotations

from reconciler.plan.planner import CREATE, DEFERRED, DELETE, UNCHANGED, UPDATE, PlanItem
from reconciler.rollout.outcome import CONVERGED, SKIPPED, Outcome
from reconciler.rollout.status_sink import (
    MAX_DESCRIPTION,
    CommitState,
    StatusUpdate,
    report_finished,
    report_started,
)
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st

SHA = "a" * 40


class Sink:
    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    def report(self, update: StatusUpdate) -> None:
        self.updates.append(update)

    def seen(self) -> list[tuple[str, CommitState, str]]:
        return [(u.environment, u.state, u.description) for u in self.updates]


def item(env: str, name: str, action: str, reason: str = "") -> PlanItem:
    return PlanItem(ResourceKey(env, "Service", name), action, "rev", reason=reason)


def out(i: PlanItem, result: str, message: str = "", *, waiting: bool = False,
        code: str = "") -> Outcome:
    return Outcome(i.key, i.action, result, "rev", message, waiting=waiting, code=code)


def test_start_and_end_per_environment() -> None:
    a, b = item("prod", "a", CREATE), item("prod", "b", UPDATE)
    c = item("stage", "c", DEFERRED, "outside sync window: next opens 09:00")
    d, e = item("dev", "d", UNCHANGED), item("qa", "e", DELETE)
    items = [a, b, c, d, e]
    sink = Sink()
    report_started(sink, SHA, items)
    assert sink.seen() == [
        ("prod", CommitState.PENDING, "rollout of 2 resource(s) started"),
        ("qa", CommitState.PENDING, "rollout of 1 resource(s) started"),
        ("stage", CommitState.PENDING,
         "deferred by sync window: outside sync window: next opens 09:00"),
    ]  # dev: nothing changes, no status
    assert [u.deferred for u in sink.updates] == [False, False, True]
    sink.updates.clear()
    gate = "GET http://10.0.0.5:8080/healthz: 500"
    outcomes = {a.key: out(a, st.SUCCEEDED), b.key: out(b, st.ROLLED_BACK, gate, code="FR800"),
                c.key: out(c, SKIPPED, c.reason), d.key: out(d, CONVERGED),
                e.key: out(e, st.SUCCEEDED)}
    report_finished(sink, SHA, items, outcomes, interrupted=False)
    assert sink.seen() == [
        ("prod", CommitState.FAILURE,
         "1 of 2 failed; prod/Service/b: rolled_back (FR800)"),
        ("qa", CommitState.SUCCESS, "1 resource(s) applied"),
        ("stage", CommitState.PENDING,
         "deferred by sync window: outside sync window: next opens 09:00"),
    ]


def test_a_partly_deferred_environment_stays_pending_once_the_rest_converged() -> None:
    a, c = item("prod", "a", UPDATE), item("prod", "c", DEFERRED, "outside sync window")
    sink = Sink()
    report_started(sink, SHA, [a, c])
    report_finished(sink, SHA, [a, c], {a.key: out(a, st.SUCCEEDED), c.key: out(c, SKIPPED)},
                    interrupted=False)
    assert [(u.state, u.deferred) for u in sink.updates] == [
        (CommitState.PENDING, False), (CommitState.PENDING, True)]


def test_no_final_status_while_waiting_or_interrupted_or_without_commit() -> None:
    a = item("prod", "a", UPDATE)
    for outcomes, interrupted in [({a.key: out(a, SKIPPED, "paused", waiting=True)}, False),
                                  ({a.key: out(a, st.SUCCEEDED)}, True)]:
        sink = Sink()
        report_finished(sink, SHA, [a], outcomes, interrupted=interrupted)
        assert sink.updates == []
    sink = Sink()
    report_started(sink, None, [a])
    report_finished(sink, None, [a], {a.key: out(a, st.SUCCEEDED)}, interrupted=False)
    assert sink.updates == []


def test_only_selected_resources_and_descriptions_are_bounded() -> None:
    a, b = item("prod", "a", UPDATE), item("stage", "b", UPDATE)
    sink = Sink()
    report_started(sink, SHA, [a, b], {b.key})
    assert [u.environment for u in sink.updates] == ["stage"]
    b = PlanItem(ResourceKey("stage", "Service", "b" * 200), UPDATE, "rev")
    report_finished(sink, SHA, [a, b], {b.key: out(b, st.FAILED, "x")}, interrupted=False)
    last = sink.updates[-1]
    assert last.state == CommitState.FAILURE and len(last.description) == MAX_DESCRIPTION
    assert len(sink.updates) == 2  # prod was not part of the pass: nothing said about it
