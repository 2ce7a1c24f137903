"""Machine-readable figures of the bench scripts, collected by ``bench/run_all.py``.

Every script keeps its human output; with ``--json`` it also prints, last, one line
``BENCH-FIGURES {"bench": ..., "settings": {...}, "figures": [...]}``. A figure is a measured
value, the baseline it is compared with (measured in the same run, or a fixed reference such
as the poll interval), their ratio, the goal and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

PREFIX = "BENCH-FIGURES "


@dataclass
class Figure:
    figure: str
    measured: float
    unit: str  # "s", "ms", "%", "MB", "/s"
    baseline: float | None = None
    baseline_label: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        return self.measured / self.baseline

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        for key in ("measured", "baseline", "ratio"):
            value = data[key]
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true",
        help=f"also print one machine-readable line '{PREFIX.strip()} {{...}}' (bench/run_all.py)",
    )


def emit(bench: str, figures: list[Figure], **settings: Any) -> None:
    document = {"bench": bench, "settings": settings, "figures": [f.as_dict() for f in figures]}
    print(PREFIX + json.dumps(document, allow_nan=False), flush=True)


def at_most(ratio_or_value: float | None, limit: float) -> bool | None:
    return None if ratio_or_value is None else ratio_or_value <= limit
