"""What a provider declares about itself (``Capabilities``, where its exec probes run), apart
from the rest of the contract (``contract.py`` re-exports both): the provider registry describes
the built-ins with them, and a command that only validates or plans (``diff``) reads the
registry for the providers' schema fragments without importing the contract
(docs/performance.md, session 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ProbeSite(StrEnum):
    """Where a Service's ``health.exec`` probe runs."""

    LOCAL = "local"  # on the reconciler's machine (the instance runs here, or has no shell)
    INSTANCE = "instance"  # where the instance runs: its host, its container


@dataclass(frozen=True)
class Capabilities:
    """What a provider declares about itself; core reads these, never ``getattr``.

    ``observe_one``: ``observe_instance(resource, instance)`` looks at one instance for less than
    ``observe(resource)`` costs (one host of many, one replica's containers); the health gate of
    each instance uses it. Without it core calls ``observe`` and picks the instance.
    ``schedules_natively``: a Schedule's runs are fired by the platform (a systemd timer), so the
    daemon does not fire them itself.
    ``exec_probes``: where ``health.exec`` runs; with ``INSTANCE`` the provider gives the runner
    (``probe_runner(instance, state)``).
    ``host_batching``: the provider bounds its own actions per host and commits a host's
    concurrent deploys together (one reload, one remote command): core then runs every rollout
    of the Target at once (within the pass's cap) instead of ``concurrency`` per Target, so a
    host's deploys meet in one batch.
    ``stages_ahead``: ``stage(release, instance)`` delivers a release's files to an instance
    ahead of its deploy without changing what runs there (the deploy then finds them): a
    rolling rollout stages its later batches while the first ones roll.
    ``rechecks``: ``recheck(resource, instance, seen)`` tells for much less than an observation
    whether the instance ``seen`` still runs, the same one, and how long it has run: the
    health gate's watcher and its stay-up look use it (``look_again``).
    ``reports_listening``: ``listening(resource, instance, seen)`` reads which sockets the
    instance's own processes listen on: the health gate then tells a probe answered by the
    instance from one answered by another process holding its port.
    """

    observe_one: bool = False
    schedules_natively: bool = False
    exec_probes: ProbeSite = ProbeSite.LOCAL
    host_batching: bool = False
    stages_ahead: bool = False
    rechecks: bool = False
    reports_listening: bool = False
