"""What `apply` shows while it works.

On a terminal: a live table (rich), one row per resource: its phase, the instance and probe a
health gate is at, and the time since the resource started, refreshed while nothing else
happens (an 11 s health gate is 11 s of a moving clock, not of a still screen). Otherwise
(a pipe, CI logs): one plain line per change of phase, never one per probe.

Each resource's phases are remembered, so a failure can say where it happened.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.spec.model import ResourceKey

_COLOURS = {"succeeded": "green", "adopted": "green", "failed": "red", "rolled back": "yellow",
            "rollback failed": "red", "synced": "green", "health check failed": "red",
            "deferred": "blue"}
_DONE = frozenset({"succeeded", "adopted", "failed", "rolled back", "rollback failed", "synced",
                   "deleted", "deferred", "ran"})


@dataclass
class Row:
    phase: str
    detail: str
    started: float
    ended: float | None = None
    phases: list[str] = field(default_factory=list)


class Progress:
    """The ``progress`` callback of the engine (``key, phase, message``)."""

    def __init__(self, live: bool, echo: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.live = live
        self.echo = echo
        self.clock = clock
        self.rows: dict[ResourceKey, Row] = {}
        self._live: Any = None
        self._moved: list[tuple[logging.StreamHandler[Any], Any]] = []

    # -- the live table ----------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.live:
            from rich.live import Live

            # The renderable is this object: rich asks it for the table at every refresh, so
            # the elapsed times move while a gate waits.
            self._live = Live(self, refresh_per_second=4, transient=False)
            self._live.__enter__()
            # Log lines (warnings of a failed gate) written straight to the real stderr would
            # land in the middle of the table and break its redrawing: while it is live,
            # they go through rich's stderr, which prints them above the table.
            for handler in logging.getLogger().handlers:
                if (isinstance(handler, logging.StreamHandler)
                        and handler.stream is sys.__stderr__ and sys.stderr is not handler.stream):
                    self._moved.append((handler, handler.setStream(sys.stderr)))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            for handler, stream in self._moved:
                handler.setStream(stream)
            self._moved.clear()
            self._live.__exit__(*exc)
            self._live = None

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        table.add_column("RESOURCE", no_wrap=True)
        table.add_column("PHASE", no_wrap=True)
        table.add_column("TIME", no_wrap=True, justify="right")
        table.add_column("DETAIL", overflow="fold")
        now = self.clock()
        for key, row in self.rows.items():
            elapsed = (row.ended or now) - row.started
            colour = _COLOURS.get(row.phase, "cyan")
            table.add_row(str(key), f"[{colour}]{row.phase}[/]", f"{elapsed:.0f}s",
                          row.detail)
        return table

    # -- the callback ----------------------------------------------------------------------------
    def __call__(self, key: ResourceKey, phase: str, message: str) -> None:
        now = self.clock()
        row = self.rows.get(key)
        changed = row is None or row.phase != phase
        if row is None:
            row = self.rows[key] = Row(phase, message, now)
        row.phase, row.detail = phase, message
        if changed:
            row.phases.append(phase)
        row.ended = now if phase in _DONE else None
        if self._live is not None:
            self._live.refresh()
        elif changed:
            elapsed = now - row.started
            self.echo(f"{key}: {phase} [{elapsed:.0f}s]"
                      + (f" — {message}" if message and message != phase else ""))

    def phases(self, key: ResourceKey) -> list[str]:
        """The phases ``key`` went through, in order (repeats folded)."""
        row = self.rows.get(key)
        return list(row.phases) if row is not None else []

    def failed_phase(self, key: ResourceKey) -> str | None:
        """The phase the resource was in when it failed: the last one before the failure and
        whatever rollback followed it (``health check failed`` failed in ``health check``)."""
        before = [p.removesuffix(" failed") for p in self.phases(key)
                  if p not in ("failed", "rolling back", "rolled back", "rollback failed")]
        return before[-1] if before else None
