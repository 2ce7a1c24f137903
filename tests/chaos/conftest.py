"""Chaos suite: real faults on real components (see docs/reliability.md, "Chaos").

Prints the chaos report (tests/chaos/report.py) at the end of the session and writes it to an
artifact; rows recorded by tests elsewhere (``record_trial``) are included.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.report import render, trials, write_report
from tests.e2e.conftest import fleet  # noqa: F401  (the local bare-metal fleet fixture)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not trials():
        return
    path = write_report()
    terminalreporter.section("chaos report")
    for line in render().splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {path})")
