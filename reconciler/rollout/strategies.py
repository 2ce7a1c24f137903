"""Rollout strategies as data: which instances change in which batch, and the slots of
blue-green / weighted canary rollouts. No I/O here — the engine acts on what these functions say.

* ``recreate``: one batch of every instance.
* ``rolling``: batches of ``maxParallel`` (capped by ``maxUnavailable``), health-gated each.
* ``blue-green``: the new revision in the other *slot* beside the old one. A slot is the same
  Service under the name ``<name>-<slot>`` with ``{port}`` replaced by the slot's port, so every
  provider runs it as a separate unit / release dir / compose project without knowing slots.
* ``canary``: ``setCanary`` steps move a subset of instances in place; ``setWeight`` steps run the
  new revision in the other slot and weigh traffic between the two through the router.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.providers import SLOT_LABEL, Instance
from reconciler.spec.durations import parse_duration
from reconciler.spec.model import Resource, ResourceKey, spec_hash

RECREATE = "recreate"
ROLLING = "rolling"
BLUE_GREEN = "blue-green"
CANARY = "canary"
SLOTS = ("blue", "green")
DEFAULT_SCALE_DOWN_DELAY_S = 30.0


class StrategyError(ReconcilerError):
    code = "FR420"
    hint = ("fix spec.strategy of the Service: blue-green and setWeight need ports (and "
            "traffic), analysis queries need prometheus.url (docs/strategies.md)")
    exit_code = 1


def resolve_count(value: int | str | None, total: int, default: int = 1) -> int:
    """A count or ``"N%"`` of ``total`` instances, rounded up, between 1 and ``total``."""
    if total <= 0:
        return 0
    if value is None:
        count = default
    elif isinstance(value, str) and value.endswith("%"):
        count = math.ceil(total * int(value[:-1]) / 100)
    else:
        count = int(value)
    return max(1, min(total, count))


@dataclass(frozen=True)
class Strategy:
    type: str = RECREATE
    max_parallel: int | str | None = None
    max_unavailable: int | str | None = None
    pause_s: float = 0.0
    ports: Mapping[str, int] = field(default_factory=dict)
    scale_down_delay_s: float = DEFAULT_SCALE_DOWN_DELAY_S
    traffic: Mapping[str, Any] | None = None
    steps: Sequence[Mapping[str, Any]] = ()
    prometheus_url: str | None = None

    @classmethod
    def of(cls, resource: Resource) -> Strategy:
        spec = resource.spec.get("strategy") or {}
        kind = str(spec.get("type", RECREATE))
        delay = spec.get("scaleDownDelay")
        pause = spec.get("pause")
        strategy = cls(
            type=kind,
            max_parallel=spec.get("maxParallel"),
            max_unavailable=spec.get("maxUnavailable"),
            pause_s=parse_duration(str(pause)) if pause else 0.0,
            ports=dict(spec.get("ports") or {}),
            scale_down_delay_s=(parse_duration(str(delay)) if delay is not None
                                else DEFAULT_SCALE_DOWN_DELAY_S),
            traffic=spec.get("traffic"),
            steps=list(spec.get("steps") or ()),
            prometheus_url=(spec.get("prometheus") or {}).get("url"),
        )
        strategy.check(resource.key)
        return strategy

    def check(self, key: ResourceKey) -> None:
        """What the schema cannot say: slot-based steps need ports; one canary mode per rollout."""
        if self.type == CANARY:
            modes = {k for step in self.steps for k in step if k in ("setCanary", "setWeight")}
            if modes == {"setCanary", "setWeight"}:
                raise StrategyError(f"{key}: canary steps mix setCanary and setWeight; use one")
            if "setWeight" in modes and not (self.ports and self.traffic):
                raise StrategyError(f"{key}: canary setWeight steps need strategy.ports and "
                                    "strategy.traffic (two slots and a router to weigh them)")
            if any("analysis" in s and s["analysis"].get("queries") for s in self.steps) \
                    and not self.prometheus_url:
                raise StrategyError(f"{key}: analysis queries need strategy.prometheus.url")
        if self.type == BLUE_GREEN and not self.ports:
            raise StrategyError(f"{key}: blue-green needs strategy.ports (one per slot)")

    @property
    def slotted(self) -> bool:
        """Does this rollout run the new revision in a slot beside the old one?"""
        return self.type == BLUE_GREEN or (
            self.type == CANARY and any("setWeight" in s for s in self.steps))

    def batch_size(self, total: int) -> int:
        if self.type != ROLLING:
            return max(total, 1)
        size = resolve_count(self.max_parallel, total)
        if self.max_unavailable is not None:
            size = min(size, resolve_count(self.max_unavailable, total))
        return size

    def batches(self, instances: Sequence[Instance]) -> list[list[Instance]]:
        size = self.batch_size(len(instances))
        return [list(instances[i:i + size]) for i in range(0, len(instances), size)]


def other_slot(slot: str | None) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def substitute(value: Any, variables: Mapping[str, str]) -> Any:
    """``{var}`` replaced in every string of a JSON-like value (dict keys left alone)."""
    if isinstance(value, str):
        for name, text in variables.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def slot_name(name: str, slot: str) -> str:
    return f"{name}-{slot}"


def slot_resource(resource: Resource, slot: str, port: int) -> Resource:
    """The Service as it runs in ``slot``: its own name (so its own unit, release dir, compose
    project) and ``{port}`` replaced by the slot's port everywhere but in the strategy."""
    spec = {k: v for k, v in resource.spec.items() if k != "strategy"}
    spec = substitute(copy.deepcopy(spec), {"port": str(port), "slot": slot})
    key = ResourceKey(resource.key.environment, resource.key.kind,
                      slot_name(resource.key.name, slot))
    out = Resource(key=key, labels={**resource.labels, SLOT_LABEL: slot}, spec=spec,
                   file=resource.file, line=resource.line, depends_on=list(resource.depends_on))
    out.hash = spec_hash(out.document())
    return out


def health_for(resource: Resource, instance: Instance) -> dict[str, Any] | None:
    """The Service's health section for one instance: ``{replica}`` (compose replicas) and
    ``{port}`` placeholders filled from the instance labels where they are not yet."""
    health = resource.spec.get("health")
    if not health:
        return None
    variables = {k: str(v) for k, v in instance.labels.items() if k in ("replica", "port")}
    return substitute(health, variables) if variables else dict(health)
