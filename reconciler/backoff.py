"""Delays between retries and between a timer's ticks: one rule for the whole project.

A retry waits ``exponential(attempt, ...)`` (doubling from ``first``, capped), drawn with jitter
so that the retries of many callers, processes or replicas do not land in lock-step:

* ``equal_jitter`` keeps half the delay fixed and draws the other half (never above the
  delay, so a deadline checked against the delay holds);
* ``jittered`` spreads a delay or a period evenly around itself (timers, polls).
"""

from __future__ import annotations

import random

# A daemon timer never fires sooner than this after the last, whatever its period: a period of
# zero (or one jittered to nearly zero) must not turn its loop into a busy one.
TIMER_FLOOR_S = 0.05


def exponential(attempt: int, *, first: float, cap: float, factor: float = 2.0) -> float:
    """The delay before retry ``attempt`` (1 for the first): ``first``, then multiplied by
    ``factor`` for each further attempt, never above ``cap``."""
    return min(cap, first * factor ** max(0, attempt - 1))


def equal_jitter(seconds: float) -> float:
    """Between half of ``seconds`` and ``seconds``, uniformly."""
    return seconds * random.uniform(0.5, 1.0)


def jittered(seconds: float, spread: float = 0.2, *, floor: float = 0.0) -> float:
    """``seconds`` ± ``spread`` of it, uniformly, and never below ``floor``."""
    return max(floor, seconds * random.uniform(1.0 - spread, 1.0 + spread))
