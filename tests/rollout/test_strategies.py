"""Strategy arithmetic: batch sizes, counts and percentages, slots and placeholders."""

from __future__ import annotations

import pytest

from reconciler.providers import Instance, Placement, placement_of
from reconciler.rollout.strategies import (
    Strategy,
    StrategyError,
    health_for,
    other_slot,
    resolve_count,
    slot_resource,
)
from reconciler.spec.model import Resource, ResourceKey


def service(strategy: dict, **spec: object) -> Resource:
    return Resource(ResourceKey("prod", "Service", "api"), {}, {"target": "t",
                    "strategy": strategy, **spec}, "api.yaml")


def ids(batches: list[list[Instance]]) -> list[list[str]]:
    return [[i.id for i in b] for b in batches]


INSTANCES = [Instance(f"h{n}") for n in range(1, 8)]


@pytest.mark.parametrize(("value", "total", "expected"), [
    (None, 7, 1), (2, 7, 2), (10, 7, 7), ("25%", 7, 2), ("100%", 7, 7), ("1%", 7, 1),
    ("50%", 4, 2), (3, 0, 0),
])
def test_resolve_count(value: object, total: int, expected: int) -> None:
    assert resolve_count(value, total) == expected  # type: ignore[arg-type]


def test_recreate_is_one_batch_rolling_batches_by_max_parallel() -> None:
    assert ids(Strategy.of(service({"type": "recreate"})).batches(INSTANCES)) == [
        [i.id for i in INSTANCES]]
    rolling = Strategy.of(service({"type": "rolling", "maxParallel": 3}))
    assert ids(rolling.batches(INSTANCES)) == [["h1", "h2", "h3"], ["h4", "h5", "h6"], ["h7"]]
    capped = Strategy.of(service({"type": "rolling", "maxParallel": "50%",
                                  "maxUnavailable": 2, "pause": "2s"}))
    assert [len(b) for b in capped.batches(INSTANCES)] == [2, 2, 2, 1]
    assert capped.pause_s == 2.0
    assert ids(Strategy.of(service({"type": "rolling"})).batches(INSTANCES[:2])) == [
        ["h1"], ["h2"]]


def test_slot_resource_renames_and_fills_port() -> None:
    res = service({"type": "blue-green", "ports": {"blue": 9001, "green": 9002}},
                  command=["app", "--port", "{port}"], env={"SLOT": "{slot}"},
                  health={"http": {"url": "http://{host}:{port}/healthz"}},
                  compose={"project": "shop"})
    green = slot_resource(res, "green", 9002)
    assert green.key == ResourceKey("prod", "Service", "api-green")
    assert green.spec["command"] == ["app", "--port", "9002"]
    assert green.spec["env"] == {"SLOT": "green"}
    assert green.spec["health"]["http"]["url"] == "http://{host}:9002/healthz"
    # provider fields are the provider's: it gets the slot through the placement
    assert green.spec["compose"]["project"] == "shop"
    assert placement_of(green) == Placement(independent_instances=False, slot="green")
    assert placement_of(green).name_suffix == "-green"
    assert "strategy" not in green.spec
    assert res.spec["command"] == ["app", "--port", "{port}"]  # the original is untouched
    assert green.hash and green.hash != slot_resource(res, "blue", 9001).hash
    assert other_slot("blue") == "green" and other_slot("green") == "blue"
    assert other_slot(None) == "blue"


def test_health_for_fills_replica_placeholders() -> None:
    res = service({"type": "rolling"}, health={"http": {"url": "http://{host}:1900{replica}/"}})
    one = health_for(res, Instance("web-3", labels={"replica": "3"}))
    assert one is not None and one["http"]["url"] == "http://{host}:19003/"
    assert health_for(service({"type": "rolling"}), Instance("x")) is None


@pytest.mark.parametrize(("strategy", "message"), [
    ({"type": "blue-green"}, "needs strategy.ports"),
    ({"type": "canary", "steps": [{"setCanary": 1}, {"setWeight": 20}]}, "mix"),
    ({"type": "canary", "steps": [{"setWeight": 20}]}, "need strategy.ports"),
    ({"type": "canary", "steps": [{"analysis": {"duration": "1s", "queries": [
        {"name": "e", "query": "up", "max": 1}]}}]}, "prometheus.url"),
])
def test_inconsistent_strategies_are_refused(strategy: dict, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        Strategy.of(service(strategy))


def test_slotted() -> None:
    assert Strategy.of(service({"type": "blue-green", "ports": {"blue": 1, "green": 2}})).slotted
    weighted = {"type": "canary", "ports": {"blue": 1, "green": 2},
                "traffic": {"command": ["true"]}, "steps": [{"setWeight": 10}]}
    assert Strategy.of(service(weighted)).slotted
    assert not Strategy.of(service({"type": "canary", "steps": [{"setCanary": 1}]})).slotted
