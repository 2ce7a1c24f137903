"""The daemon's notification flags, as one click decorator: the command receives a
``notify: NotifySettings`` argument instead of the individual options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from reconciler.errors import ReconcilerError
from reconciler.notifications.settings import NotifySettings
from reconciler.spec.durations import parse_duration


def _seconds(text: str, param: str, *, zero_is_off: bool = False) -> float | None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param) from None
    if seconds <= 0:
        if zero_is_off:
            return None
        raise click.BadParameter(f"{text!r} must be longer than zero", param_hint=param)
    return seconds


def notify_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The daemon's flags: destinations, links, repeats, and when to say it is not converging."""
    return _options(command, stale=True)


def apply_notify_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """A one-shot command's flags (``apply``): destinations, links, repeats."""
    return _options(command, stale=False)


def _options(command: Callable[..., Any], *, stale: bool) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, notify_urls: tuple[str, ...], ui_url: str | None,
                notify_repeat: str, notify_stale_after: str = "0", **kwargs: Any) -> Any:
        repeat = _seconds(notify_repeat, "--notify-repeat")
        assert repeat is not None
        settings = NotifySettings(
            urls=list(notify_urls), ui_url=ui_url or None, repeat_s=repeat,
            stale_after_s=_seconds(notify_stale_after, "--notify-stale-after",
                                   zero_is_off=True))
        if settings.urls:  # its module (and the secrets' readers) only when there are some
            from reconciler.notifications.destinations import operator_destinations

            try:  # checked before anything runs: a bad URL is a usage error, exit 2
                operator_destinations(settings.urls)
            except ReconcilerError as exc:
                raise click.BadParameter(exc.message, param_hint="--notify") from None
        return command(*args, notify=settings, **kwargs)

    decorated: Callable[..., Any] = click.option(
        "--notify-repeat", default="4h", show_default=True, metavar="DURATION",
        help="The operator destinations are not told the same failure again before "
             "this (a Notifier sets its own repeatInterval).")(wrapper)
    if stale:
        decorated = click.option(
            "--notify-stale-after", default="30m", show_default=True, metavar="DURATION",
            help="Notify `not_converging` when no pass has converged for this long "
                 "(0: never).")(decorated)
    decorated = click.option(
        "--ui-url", envvar="RECONCILER_UI_URL", default=None, metavar="URL",
        help="Base URL for links in notifications "
             "(<URL>/resources/<env>/<kind>/<name>). Env RECONCILER_UI_URL.")(decorated)
    return click.option(
        "--notify", "notify_urls", multiple=True, envvar="RECONCILER_NOTIFY", metavar="URL",
        help="Operator destination for notifications (repeatable): an Apprise URL "
             "(slack://…, mailto://…, ntfy://…, json://…) or env:NAME / file:PATH "
             "holding one. Gets every event of every environment, platform events "
             "(refused commits, not converging) included. Env RECONCILER_NOTIFY "
             "(space-separated).")(decorated)
