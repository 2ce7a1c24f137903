"""Tables for a terminal of any width: identifying columns whole, the rest wrapped or dropped.

At 80 columns a table of seven columns cannot show everything. Cutting every cell with an
ellipsis showed ``nu/Service…`` for two different services; here a column that identifies a
row (a resource, a deployment) or holds a short fixed value (a revision, a status) is never
cut, long free text (errors, URLs) wraps, and when even that does not fit, the columns least
needed go, in a stated order, with a line saying which (``-o json`` has everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Below this, a wrapped column is more line breaks than text.
MIN_WRAPPED = 12
# The table's free text (an error, with its URL) gets at least this much before optional
# columns are kept: it is what the reader came for.
MIN_TEXT = 30
_GAP = 2  # between columns: box.SIMPLE_HEAD with padding (0, 1)
_EDGE = 2  # one space of padding at each end of a row


@dataclass(frozen=True)
class Layout:
    """Which columns to show and how: ``whole`` ones are never cut or wrapped."""

    shown: list[int]
    whole: set[int]
    dropped: list[int]


def _minimum(header: Sequence[str], widths: list[int], whole: set[int]) -> list[int]:
    """The narrowest each column may be: whole ones as wide as their widest cell, the last
    (free text) MIN_TEXT, others MIN_WRAPPED (never more than their widest cell)."""
    last = len(header) - 1
    return [widths[i] if i in whole else
            min(widths[i], max(MIN_TEXT if i == last else MIN_WRAPPED, len(header[i])))
            for i in range(len(header))]


def layout(header: Sequence[str], rows: Sequence[Sequence[str]], width: int, *,
           whole: Sequence[int] = (0,), drop: Sequence[int] = ()) -> Layout:
    """Columns that fit in ``width``: ``drop`` lists the columns that may go, first to go
    first; a column in neither list is always shown."""
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(header)]
    keep_whole = set(whole)
    minimum = _minimum(header, widths, keep_whole)

    def need(columns: list[int]) -> int:
        return _EDGE + _GAP * (len(columns) - 1) + sum(minimum[i] for i in columns)

    shown = list(range(len(header)))
    dropped: list[int] = []
    for column in drop:
        if need(shown) <= width:
            break
        shown.remove(column)
        dropped.append(column)
    return Layout(shown, keep_whole, dropped)


def render(header: Sequence[str], rows: Sequence[Sequence[str]], width: int, *,
           whole: Sequence[int] = (0,), drop: Sequence[int] = ()) -> str:
    """The table as a terminal of ``width`` columns shows it (rich; colours left out)."""
    from io import StringIO

    from rich import box
    from rich.console import Console
    from rich.table import Table

    plan = layout(header, rows, width, whole=whole, drop=drop)
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(header)]
    minimum = _minimum(header, widths, plan.whole)
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=True, padding=(0, 1),
                  collapse_padding=True, show_edge=False)
    for i in plan.shown:
        if i in plan.whole:
            table.add_column(header[i], no_wrap=True, overflow="ignore", min_width=minimum[i])
        else:
            # no min_width: rich renders a cell at its min_width and then crops it to the
            # column's final width, losing text, when the whole table cannot fit
            table.add_column(header[i], overflow="fold")
    for row in rows:
        table.add_row(*[str(row[i]) for i in plan.shown])
    out = StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None,
            highlight=False).print(table)
    text = out.getvalue()
    if plan.dropped:
        names = ", ".join(header[i] for i in plan.dropped)
        text += f"(hidden at {width} columns: {names}; see -o json)\n"
    return text
