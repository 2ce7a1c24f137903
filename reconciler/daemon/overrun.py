"""The pass watchdog: a reconcile pass that runs longer than ``--pass-overrun`` makes the daemon
unready until it ends.

A pass that never ends starts no further pass: commits, drift and retries wait behind it, while
``/healthz`` stays green (the loop is busy, not wedged) and nothing else tells the operator.
The watchdog does not stop the pass (a long canary or a slow health gate may be legitimate);
it says so: ``/readyz`` answers 503 with the overrun and the resources still being applied
(longest first), ``reconciler_reconcile_age_seconds`` gives the age of the pass in progress,
one warning is logged when the limit is crossed and one line when the pass ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from reconciler.daemon import notify
from reconciler.spec.model import ResourceKey

log = logging.getLogger("reconciler.daemon")

MIN_LIMIT = 1800.0  # the default limit is at least 30 minutes …
INTERVALS = 10  # … and at least this many --interval
NAMED = 10  # resources named in the reason and the log line (longest first)


def default_limit(interval: float) -> float:
    """``--pass-overrun`` when not given: max(30m, 10 x --interval)."""
    return max(MIN_LIMIT, INTERVALS * interval)


@dataclass(frozen=True)
class Overrun:
    """A pass running past its limit, and what it is still applying."""

    seconds: float  # age of the pass
    limit: float
    resources: tuple[tuple[ResourceKey, float], ...]  # applying for that long, longest first
    more: int  # resources applying beyond those named

    def reason(self) -> str:
        text = (f"reconcile pass running for {self.seconds:.0f}s, over the "
                f"--pass-overrun limit of {self.limit:g}s")
        if self.resources:
            text += "; still applying " + ", ".join(
                f"{key} ({seconds:.0f}s)" for key, seconds in self.resources)
            if self.more:
                text += f" and {self.more} more"
        return text

    def as_json(self) -> dict[str, Any]:
        return {"passSeconds": round(self.seconds, 1), "limitSeconds": self.limit,
                "resources": [{"resource": str(key), "seconds": round(seconds, 1)}
                              for key, seconds in self.resources],
                "moreResources": self.more}


class PassWatch:
    """When the pass in progress started, and whether it has run past ``limit`` seconds.

    ``applying`` gives the resources being applied now with their start times (the engine's
    ``applying``, ``time.monotonic()`` values).
    """

    def __init__(self, limit: float, applying: Callable[[], Mapping[ResourceKey, float]]
                 ) -> None:
        if limit <= 0:
            raise ValueError("the pass overrun limit must be above zero")
        self.limit = limit
        self._applying = applying
        self._started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reported = False

    def age(self) -> float:
        """Seconds since the pass in progress started; 0 between passes."""
        started = self._started
        return time.monotonic() - started if started is not None else 0.0

    def overrun(self) -> Overrun | None:
        """The overrun of the pass in progress, None while within its limit (or between)."""
        age = self.age()
        if age < self.limit or self._started is None:
            return None
        now = time.monotonic()
        ongoing = sorted(((key, now - since) for key, since in self._applying().items()),
                         key=lambda pair: (-pair[1], str(pair[0])))
        return Overrun(age, self.limit, tuple(ongoing[:NAMED]), max(0, len(ongoing) - NAMED))

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around one pass (in the event loop): starts the clock and the one-shot report."""
        self._started = time.monotonic()
        self._reported = False
        self._timer = asyncio.get_running_loop().call_later(self.limit, self._report)
        try:
            yield
        finally:
            self._timer.cancel()
            self._timer = None
            seconds = self.age()
            self._started = None
            if self._reported:
                log.info("overrunning reconcile pass ended; ready again",
                         extra={"pass_s": round(seconds, 1), "limit_s": self.limit})

    def _report(self) -> None:
        overrun = self.overrun()
        if overrun is None:  # the loop's clock ran ahead of time.monotonic()'s by a hair
            self._timer = asyncio.get_running_loop().call_later(
                max(0.01, self.limit - self.age()), self._report)
            return
        self._reported = True
        log.warning("reconcile pass overrunning; /readyz answers not ready until it ends",
                    extra={"pass_s": round(overrun.seconds, 1), "limit_s": self.limit,
                           "resources": [str(key) for key, _ in overrun.resources]})
        notify.status(overrun.reason())


__all__ = ["Overrun", "PassWatch", "default_limit"]
