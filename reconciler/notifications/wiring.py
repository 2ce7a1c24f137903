"""What the daemon's notifications are built from (its flags) and how they are plugged into a
running daemon: commits read from its config repo, hosts from its providers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    # Imported where notifications are started: an `apply` with no destination (no --notify,
    # no Notifier) loads none of them (docs/performance.md, session 11).
    from reconciler.notifications.events import CommitInfo
    from reconciler.notifications.settings import NotifySettings
    from reconciler.notifications.sink import EventSink, Notifications
    from reconciler.rollout.engine import Reconciler
    from reconciler.source.git import GitSource
    from reconciler.spec.model import DesiredState, ResourceKey
    from reconciler.state.store import Store

log = logging.getLogger("reconciler.notifications")


class DaemonLike(Protocol):
    """What notifications read of the daemon (daemon/loop.py ``Daemon``)."""

    source: GitSource
    engine: Reconciler
    desired: DesiredState | None
    last_error: str | None
    events: EventSink | None
    store: Store  # what was told, shared by the replicas of `daemon --ha`


def commit_reader(source: GitSource) -> Callable[[str], CommitInfo]:
    """Subject and author of a commit of ``source``'s repository."""

    def commit_info(sha: str) -> CommitInfo:
        import git  # a Repo of its own: the daemon's is used from other threads

        from reconciler.notifications.events import CommitInfo

        # read here, not at start: a remote repo is cloned by the first fetch, which may fail
        commit = git.Repo(source.git_dir).commit(sha)
        return CommitInfo(sha, str(commit.summary), str(commit.author.name or ""))

    return commit_info


def hosts_reader(engine: Reconciler, desired_of: Callable[[], DesiredState | None]
                 ) -> Callable[[ResourceKey], Awaitable[list[str]]]:
    """The instances a resource runs on, named for a message."""

    async def hosts_of(key: ResourceKey) -> list[str]:
        desired = desired_of()
        resource = desired.get(key) if desired is not None else None
        target = desired.target_of(resource) if desired is not None and resource else None
        if resource is None or target is None:
            return []
        provider = engine.provider_for(target)
        return [i.id if i.address in (i.id, "127.0.0.1") else f"{i.id} ({i.address})"
                for i in await provider.instances(resource)]

    return hosts_of


def start_notifications(daemon: DaemonLike, settings: NotifySettings,
                        state_dir: Path) -> Notifications:
    """Notifications for ``daemon``, started and set as its event sink."""
    from reconciler.notifications.destinations import operator_destinations
    from reconciler.notifications.sink import Notifications

    notifications = Notifications(
        operator_destinations(settings.urls, settings.repeat_s),
        state_dir=state_dir, ui_url=settings.ui_url, stale_after_s=settings.stale_after_s,
        commit_info=commit_reader(daemon.source),
        hosts_of=hosts_reader(daemon.engine, lambda: daemon.desired),
        last_error=lambda: daemon.last_error, limits=settings.limits, claims=daemon.store)
    notifications.start()
    daemon.events = notifications
    return notifications


def start_apply_notifications(settings: NotifySettings, desired: DesiredState,
                              source: GitSource, engine: Reconciler,
                              store: Store) -> Notifications | None:
    """Notifications of a one-shot ``apply`` (None when it has no destination): no state file
    (a daemon may share the state dir), what was told is the database's, like the daemon's;
    the caller waits for delivery at exit (``close``)."""
    if not settings.urls and not desired.notifiers:
        return None
    from reconciler.notifications.destinations import operator_destinations
    from reconciler.notifications.sink import Notifications

    notifications = Notifications(
        operator_destinations(settings.urls, settings.repeat_s), state_dir=None,
        ui_url=settings.ui_url, stale_after_s=None, commit_info=commit_reader(source),
        hosts_of=hosts_reader(engine, lambda: desired), limits=settings.limits, claims=store)
    notifications.start()
    return notifications
