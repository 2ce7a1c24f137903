"""Who answered a passing probe, by what the started instance listens on (``gate.answerer``);
the gate itself runs against real processes in tests/e2e/test_gates.py and over SSH in
tests/providers/bare_metal/test_ssh_gate.py."""

from __future__ import annotations

from typing import cast

from reconciler.providers import Capabilities, Instance, InstanceState, Listening, Provider
from reconciler.rollout.gate import Answerer, ProbeAnswers, answerer
from reconciler.spec.model import Resource


def test_the_instance_answered_only_when_it_holds_every_probed_port() -> None:
    assert answerer((8080,), Listening(frozenset({8080, 9090}))) is Answerer.INSTANCE
    assert answerer((8080, 9001), Listening(frozenset({8080, 9001}))) is Answerer.INSTANCE
    # it holds another socket: a local proxy may have passed the probe on
    assert answerer((8080, 9001), Listening(frozenset({8080}))) is Answerer.UNKNOWN
    assert answerer((80,), Listening(frozenset(), unix_sockets=1)) is Answerer.UNKNOWN
    assert answerer((80,), Listening(frozenset(), unknown_sockets=1)) is Answerer.UNKNOWN
    # it listens on nothing: another process answered
    assert answerer((8080,), Listening(frozenset())) is Answerer.OTHER
    # not told, or no probe of its own address
    assert answerer((8080,), None) is Answerer.UNKNOWN
    assert answerer((), Listening(frozenset())) is Answerer.UNKNOWN


class _Scripted:
    """A provider whose ``listening`` answers from a script (None: it cannot tell)."""

    capabilities = Capabilities(reports_listening=True)

    def __init__(self, answers: list[Listening | None]) -> None:
        self.answers = answers

    async def listening(self, resource: object, instance: object,
                        seen: object) -> Listening | None:
        return self.answers.pop(0)


async def test_a_read_that_fails_after_one_that_worked_does_not_let_the_time_rule_pass() -> None:
    instance = Instance("h")
    seen = InstanceState(instance, "r1", True)
    resource = cast(Resource, object())
    nothing, ours = Listening(frozenset()), Listening(frozenset({8080}))

    answers = ProbeAnswers(cast(Provider, _Scripted([None, ours])), resource, instance, seen,
                           (8080,))
    assert answers.checked
    # never read (an image without a shell): the time rule decides
    assert await answers.confirm() is None and answers.last is Answerer.UNKNOWN
    assert await answers.confirm() is None and answers.last is Answerer.INSTANCE

    answers = ProbeAnswers(cast(Provider, _Scripted([nothing, None, ours])), resource,
                           instance, seen, (8080,))
    assert "another process holds port 8080" in (await answers.confirm() or "")
    # read before, not now (the instance going): the pass is not counted
    assert "could not be read" in (await answers.confirm() or "")
    assert await answers.confirm() is None and answers.last is Answerer.INSTANCE
