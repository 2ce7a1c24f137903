"""Shared test helpers (no fixtures here; see each folder's conftest.py)."""

from __future__ import annotations

import os

import pytest

REQUIRE_INTEGRATION = os.environ.get("RECONCILER_REQUIRE_INTEGRATION") == "1"


def need(available: bool, reason: str) -> None:
    """Skip when an external service is missing — or fail, when CI requires integration tests."""
    if available:
        return
    if REQUIRE_INTEGRATION:
        pytest.fail(f"required service missing (RECONCILER_REQUIRE_INTEGRATION=1): {reason}")
    pytest.skip(reason)
