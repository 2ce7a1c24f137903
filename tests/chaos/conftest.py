"""Chaos suite: real faults on real components (see docs/reliability.md, "Chaos").

The chaos report (tests/chaos/report.py) is printed and written by tests/conftest.py, which the
controller of a parallel run loads too (it collects no test folder).
"""

from __future__ import annotations

from tests.e2e.conftest import fleet  # noqa: F401  (the local bare-metal fleet fixture)
