"""reconciler.backoff: the one rule for retry delays and timer jitter."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from reconciler.backoff import TIMER_FLOOR_S, equal_jitter, exponential, jittered

PACKAGE = Path(__file__).resolve().parents[1] / "reconciler"


def test_exponential_doubles_from_first_and_stops_at_the_cap() -> None:
    assert [exponential(n, first=0.5, cap=5.0) for n in range(1, 7)] == [
        0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert exponential(0, first=0.5, cap=5.0) == 0.5  # "no attempt yet" waits as the first
    assert [exponential(n, first=2.0, cap=10.0, factor=1.5) for n in (1, 2, 3)] == [
        2.0, 3.0, 4.5]


def test_equal_jitter_stays_between_half_and_the_whole() -> None:
    random.seed(7)
    draws = [equal_jitter(4.0) for _ in range(2000)]
    assert all(2.0 <= d <= 4.0 for d in draws)
    assert min(draws) < 2.05 and max(draws) > 3.95  # it spreads over the whole range


@pytest.mark.parametrize("spread", [0.1, 0.2, 0.5])
def test_jittered_spreads_evenly_around_the_value(spread: float) -> None:
    random.seed(11)
    draws = [jittered(10.0, spread) for _ in range(2000)]
    assert all(10.0 * (1 - spread) <= d <= 10.0 * (1 + spread) for d in draws)
    assert min(draws) < 10.0 * (1 - spread * 0.95) and max(draws) > 10.0 * (1 + spread * 0.95)
    assert 9.8 < sum(draws) / len(draws) < 10.2


def test_a_timer_of_period_zero_is_not_a_busy_loop() -> None:
    assert jittered(0.0, floor=TIMER_FLOOR_S) == TIMER_FLOOR_S
    assert jittered(0.0) == 0.0


def test_no_other_module_draws_its_own_delays() -> None:
    """One rule: a module that wants a jittered delay asks reconciler.backoff for it."""
    drawing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "backoff.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "random" and node.attr in {"uniform", "random"}):
                drawing.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert drawing == []
