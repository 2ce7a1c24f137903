"""Who answered a passing probe, by what the started instance listens on (``gate.answerer``);
the gate itself runs against real processes in tests/e2e/test_gates.py and over SSH in
tests/providers/bare_metal/test_ssh_gate.py."""

from __future__ import annotations

from reconciler.providers import Listening
from reconciler.rollout.gate import Answerer, answerer


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
