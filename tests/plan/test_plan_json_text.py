"""``Plan.json_text`` (what ``diff -o json`` prints to a program) is exactly the text of
``json.dumps(plan.to_json(), default=str)``: the same keys, order, escapes and separators, for
every kind of item (random plans: every action, deferred items, field changes with values JSON
cannot encode, missing records and revisions, names and reasons with quotes, controls and
non-ASCII characters)."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.plan.diff import FieldChange
from reconciler.plan.planner import (
    BLOCKED,
    CREATE,
    DEFERRED,
    DELETE,
    DRIFT,
    ORPHAN,
    SUSPENDED,
    UNCHANGED,
    UPDATE,
    Plan,
    PlanItem,
)
from reconciler.spec.model import ResourceKey
from reconciler.state.store import ResourceRecord

ACTIONS = (UNCHANGED, UNCHANGED, UNCHANGED, CREATE, UPDATE, DELETE, ORPHAN, BLOCKED, SUSPENDED,
           DEFERRED, DRIFT)
TEXTS = ("", "api", "a-b_c.d", 'quote " and \\ slash', "tab\tnew\nline\x01", "été 🍓", "\u2028",
         "</script>")


def text(rng: random.Random) -> str:
    return rng.choice(TEXTS) + rng.choice(("", str(rng.randrange(1000))))


def value(rng: random.Random) -> Any:
    return rng.choice([None, True, 3, 2.5, text(rng), ["x", 1], {"k": text(rng)},
                       datetime(2026, 12, 6, 12, 0, tzinfo=UTC)])


def random_plan(rng: random.Random) -> Plan:
    items = []
    for n in range(rng.randrange(0, 40)):
        key = ResourceKey(text(rng) or "default", rng.choice(("Service", "Target", "Jöb")),
                          f"{text(rng)}{n}")
        action = rng.choice(ACTIONS)
        record = None
        if rng.random() < 0.8:
            record = ResourceRecord(key, str(n), applied_revision=rng.choice(
                [None, f"{rng.getrandbits(48):012x}", text(rng)]))
        changes = [FieldChange(rng.choice("+-~"), f"spec.{text(rng)}", value(rng), value(rng))
                   for _ in range(rng.choice((0, 0, 1, 3)))]
        item = PlanItem(key, action, rng.choice([None, f"{rng.getrandbits(48):012x}"]),
                        None, record, changes, text(rng))
        if action == DEFERRED:
            item.opens_at = rng.choice([None, datetime(2026, 12, 7, 3, tzinfo=UTC)
                                        + timedelta(minutes=rng.randrange(100))])
        items.append(item)
    return Plan(rng.choice([None, f"{rng.getrandbits(160):040x}"]), items,
                [[i.key for i in items]])


@pytest.mark.parametrize("seed", range(200))
def test_json_text_is_the_text_json_dumps_writes(seed: int) -> None:
    plan = random_plan(random.Random(seed))
    assert plan.json_text() == json.dumps(plan.to_json(), default=str)


def test_an_in_sync_plan_and_an_empty_one() -> None:
    key = ResourceKey("default", "Service", "api")
    record = ResourceRecord(key, "1", applied_revision="abc")
    for items in ([], [PlanItem(key, UNCHANGED, "abc", None, record)]):
        plan = Plan("c" * 40, items, [[i.key for i in items]])
        assert plan.json_text() == json.dumps(plan.to_json(), default=str)
        assert json.loads(plan.json_text())["inSync"] is True


@pytest.mark.parametrize("seed", range(40))
def test_the_pieces_diff_writes_are_that_text(seed: int) -> None:
    # `diff -o json` writes the plan piece by piece (json_pieces): any cut, one item per
    # piece to more items than the plan has, joins to the text json.dumps writes
    rng = random.Random(seed)
    plan = random_plan(rng)
    expected = json.dumps(plan.to_json(), default=str)
    for per_piece in (1, 2, 3, rng.randrange(1, 40), len(plan.items) + 1):
        assert "".join(plan.json_pieces(items_per_piece=per_piece)) == expected
