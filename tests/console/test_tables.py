"""`status` and `history` at 80 and 120 columns, in a real terminal (tmux): identifying
columns whole, the error text wrapped but complete, optional columns dropped and named.

Before console/tables.py, at 80 columns both services showed as `nu/Servi…` and the
deployment number and the error URL were cut."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from reconciler.console.tables import layout, render
from reconciler.spec.model import ResourceKey
from reconciler.state import open_store
from tests.console.tmux import run_in_terminal

ERROR = ("health gate failed: GET http://10.20.30.40:18081/healthz/ready?probe=deep "
         "returned 503 after 3 attempts")
NAMES = ("payments-api-gateway", "payments-api-worker")


async def _populate(url: str) -> None:
    store = open_store(url)
    try:
        await store.migrate()
        for name in NAMES:
            key = ResourceKey("nu", "Service", name)
            failed = name.endswith("worker")
            fields = {"revision": "1a2b3c4d5e6f", "spec_hash": "h", "spec": {"kind": "Service"},
                      "config_commit": "0123456789abcdef"}
            await store.record_desired(key, **fields)
            await store.record_applied(key, **fields)
            await store.update_status(key, sync_status="Synced",
                                      health_status="Degraded" if failed else "Healthy",
                                      last_result="rolled_back" if failed else "succeeded",
                                      last_error=ERROR if failed else None)
            deployment = await store.create_deployment(
                key, from_revision="0a0a0a0a0a0a", to_revision="1a2b3c4d5e6f",
                config_commit="0123456789abcdef", strategy="rolling",
                trigger="webhook:github:3f1c2a7e-8d9b-11ef-9c1a-0242ac120002")
            await store.transition(deployment.id, "in_progress")
            await store.transition(deployment.id, "failed" if failed else "succeeded",
                                   error=ERROR if failed else None)
    finally:
        await store.close()


def column_text(screen: str, header: str) -> str:
    """What a column holds, read off the screen from its header's offset to the line's end
    (it is the last column), without the spaces wrapping added."""
    lines = screen.splitlines()
    top = next(i for i, line in enumerate(lines) if header in line)
    start = lines[top].index(header)
    body = [line[start:] for line in lines[top + 2:] if not line.startswith("(hidden")]
    return "".join("".join(body).split())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("width", [80, 120])
def test_status_and_history_keep_names_whole_and_errors_complete(
        width: int, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(_populate(url))
    reconciler = f"{sys.executable} -m reconciler --db {url}"
    screen, code, _ = run_in_terminal(f"{reconciler} status", width=width, cwd=tmp_path)
    assert code == 1, screen  # a rolled-back resource
    assert "…" not in screen
    for name in NAMES:
        assert f"nu/Service/{name}" in screen, screen
    assert column_text(screen, "NOTE") == "".join(ERROR.split()), screen
    if width == 80:
        assert "(hidden at 80 columns: DESIRED, APPLIED, LAST; see -o json)" in screen
    else:
        assert "LAST" in screen and "rolled_back" in screen

    screen, code, _ = run_in_terminal(f"{reconciler} history payments-api-worker",
                                      width=width, cwd=tmp_path)
    assert code == 0, screen
    assert "nu/Service/payments-api-worker#1" in screen and "…" not in screen
    assert column_text(screen, "ERROR") == "".join(ERROR.split()), screen


def test_layout_drops_in_order_and_never_whole_columns() -> None:
    header = ["ID", "A", "B", "TEXT"]
    rows = [["x" * 40, "a" * 12, "b" * 12, "t" * 100]]
    assert layout(header, rows, 200, whole=(0, 1, 2), drop=(2, 1)).dropped == []
    assert layout(header, rows, 100, whole=(0, 1, 2), drop=(2, 1)).dropped == [2]
    assert layout(header, rows, 60, whole=(0, 1, 2), drop=(2, 1)).dropped == [2, 1]
    text = render(header, rows, 60, whole=(0, 1, 2), drop=(2, 1))
    assert "x" * 40 in text and "(hidden at 60 columns: B, A; see -o json)" in text
