"""Jittered delays for every timer of the daemon (polls, retries, heal, retention, leases)."""

from __future__ import annotations

import random


def jittered(seconds: float, spread: float = 0.2) -> float:
    """``seconds`` ± ``spread``: replicas and retries must not move in lock-step."""
    return max(0.05, seconds * (1 + random.uniform(-spread, spread)))
