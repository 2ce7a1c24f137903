"""Shared settings of the fuzz suite (Hypothesis).

Every fuzz test runs ``FUZZ_EXAMPLES`` generated cases (times a per-test scale for the costly
ones). The default keeps the whole folder well inside a minute on a 2-core machine, so it runs
in ``make test``; ``make fuzz`` sets FUZZ_EXAMPLES=10000 (docs/reliability.md has the figures).
Failing examples are kept in ``.hypothesis/`` and replayed first on the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(scale: float = 1.0) -> Callable[[F], F]:
    """Hypothesis settings for one fuzz target: FUZZ_EXAMPLES x ``scale`` cases, no deadline
    (the machine is shared), no health check about slow or filtered generation."""
    return settings(  # type: ignore[return-value]
        max_examples=max(1, int(FUZZ_EXAMPLES * scale)),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """A fuzz test's time grows with FUZZ_EXAMPLES: scale its timeout (default 120 s) too."""
    import pytest

    timeout = max(300, FUZZ_EXAMPLES)  # generous: about 1 s per case
    for item in items:
        if "tests/fuzz/" in item.nodeid.replace("\\", "/") or item.nodeid.startswith("fuzz/"):
            item.add_marker(pytest.mark.timeout(timeout))


def locate_webhook_samples() -> Path | None:
    """contracts/webhooks: $FRAISIER_CONTRACTS, else ../shared/contracts beside the clone."""
    candidates: list[Path] = []
    env = os.environ.get("FRAISIER_CONTRACTS")
    if env:
        candidates += [Path(env) / "webhooks", Path(env)]
    candidates.append(
        Path(__file__).resolve().parents[2] / ".." / "shared" / "contracts" / "webhooks"
    )
    for candidate in candidates:
        if (candidate / "signature-vectors.json").is_file():
            return candidate.resolve()
    return None


# -- byte-level mutation of a seed text ------------------------------------------------------

_EDIT = st.tuples(
    st.floats(min_value=0, max_value=1),
    st.sampled_from(["insert", "delete", "replace", "flip"]),
    st.integers(min_value=1, max_value=16),
    st.binary(min_size=1, max_size=8),
)


def mutations(pieces: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[list[Any]]:
    """Lists of edits for :func:`mutate`; ``pieces`` adds meaningful insertions to random bytes."""
    edit = _EDIT
    if pieces is not None:
        edit = st.tuples(
            st.floats(min_value=0, max_value=1),
            st.sampled_from(["insert", "delete", "replace", "flip"]),
            st.integers(min_value=1, max_value=16),
            st.one_of(pieces, st.binary(min_size=1, max_size=8)),
        )
    return st.lists(edit, min_size=1, max_size=6)


def mutate(data: bytes, edits: list[tuple[float, str, int, bytes]]) -> bytes:
    for where, op, length, piece in edits:
        at = int(where * len(data))
        if op == "insert":
            data = data[:at] + piece + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + length :]
        elif op == "replace":
            data = data[:at] + piece + data[at + length :]
        elif data:  # flip: xor one byte
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (length & 0xFF or 1)]) + data[at + 1 :]
    return data
