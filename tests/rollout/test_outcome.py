"""Outcome kinds are fields, never read from the message text."""

from __future__ import annotations

from reconciler.rollout.outcome import SKIPPED, Outcome, ReconcileResult
from reconciler.rollout.runner import ANALYSIS, HEALTH, RolloutFailed
from reconciler.spec.model import ResourceKey
from reconciler.state import store as st

KEY = ResourceKey("prod", "Service", "api")


def test_a_message_that_starts_with_waiting_makes_no_outcome_waiting():
    # A provider's message can read "waiting for <container>: ...": what the outcome is comes
    # from its fields (on main, a skip with such a message failed the pass).
    failed = Outcome(KEY, "update", st.SUCCEEDED, "r1", "waiting for api-1: timed out")
    assert failed.ok
    failed = Outcome(KEY, "update", st.FAILED, "r1", "waiting for api-1: timed out")
    assert not failed.ok
    skipped = Outcome(KEY, "update", SKIPPED, "r1", "waiting for api-1: timed out")
    assert skipped.ok  # a skip with no waiting flag: converged as far as this pass goes
    result = ReconcileResult(commit="c", outcomes=[skipped])
    assert result.converged


def test_waiting_is_a_field():
    waiting = Outcome(KEY, "update", SKIPPED, "r1", "resource lock held by x", waiting=True)
    assert not waiting.ok
    assert not ReconcileResult(commit="c", outcomes=[waiting]).converged


def test_the_failed_gate_is_a_field_not_the_message():
    assert RolloutFailed("analysis-worker-1: health check failed: exit 1").gate == HEALTH
    assert RolloutFailed("step 2/3: failed", gate=ANALYSIS).gate == ANALYSIS
