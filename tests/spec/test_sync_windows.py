"""spec.syncWindows in the spec stage: accepted on every kind, each bad window a located error
(schema shape, cron, time zone, zero duration) and `reconciler validate` exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from reconciler.cli import cli
from reconciler.errors import SpecError
from reconciler.spec.fast_path import load_fast
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.sync_windows import window_problems
from tests.spec.conftest import INVALID, source

FLEET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local}
spec:
  provider: bare_metal
  syncWindows:
    - {kind: allow, schedule: "0 2 * * *", duration: 1h, timezone: Europe/Paris}
    - {kind: deny, schedule: "0 22 * * 5", duration: 60h}
---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: docker}
spec:
  provider: compose
  syncWindows: [{kind: deny, schedule: "@daily", duration: 30m}]
---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: paas}
spec:
  provider: coolify
  url: https://coolify.example.invalid
  token: {env: COOLIFY_TOKEN}
  syncWindows: [{kind: allow, schedule: "0 9 * * 1-5", duration: 8h}]
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api}
spec:
  target: local
  command: [./api]
  syncWindows: [{kind: deny, schedule: "0 12 * * *", duration: 1h30m, timezone: UTC}]
---
apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate}
spec:
  target: local
  command: [./migrate]
  syncWindows: []
---
apiVersion: fraisier.dev/v1
kind: Schedule
metadata: {name: report}
spec:
  target: local
  schedule: "0 3 * * *"
  command: [./report]
  syncWindows: [{kind: allow, schedule: "0 2 * * *", duration: 2h}]
"""


def test_windows_are_accepted_on_every_kind_and_every_provider_target() -> None:
    data = FLEET.encode()
    assert load_fast(data) is not None  # valid documents stay on the fast path
    state = load_desired_state([source("fleet.yaml", FLEET)])
    windows = {k.name: r.spec.get("syncWindows") for k, r in state.resources.items()}
    assert windows["local"][1] == {"kind": "deny", "schedule": "0 22 * * 5", "duration": "60h"}
    assert windows["migrate"] == []
    assert len(windows) == 6


def test_every_bad_window_is_located(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = INVALID / "sync-window"
    monkeypatch.chdir(folder)
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(folder.relative_to(folder)))
    lines = [str(p) for p in raised.value.problems]
    assert lines == (folder / "expected.txt").read_text().splitlines()
    assert any(line.startswith("fleet.yaml:8:30: spec.syncWindows[1].schedule:")
               for line in lines)
    assert any(line.startswith("fleet.yaml:9:69: spec.syncWindows[2].timezone: unknown time zone")
               for line in lines)


def test_validate_exits_2_with_located_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(INVALID / "sync-window")
    result = CliRunner().invoke(cli, ["validate", "."])
    assert result.exit_code == 2
    assert ("fleet.yaml:9:69: spec.syncWindows[2].timezone: unknown time zone 'Europe/Atlantis'"
            in result.output)


def test_a_window_added_to_a_valid_file_is_checked_again() -> None:
    bad = FLEET.replace("timezone: Europe/Paris", "timezone: Europe/Pariss")
    with pytest.raises(SpecError) as raised:
        load_desired_state([source("fleet.yaml", bad)])
    assert [str(p) for p in raised.value.problems] == [
        "fleet.yaml:7:68: spec.syncWindows[0].timezone: unknown time zone 'Europe/Pariss' "
        "(expected an IANA name such as UTC or Europe/Paris)"]


def test_window_problems_of_odd_values() -> None:
    assert list(window_problems(None)) == []
    assert list(window_problems([1, {"schedule": "* * * * *", "duration": "1m"}])) == []
    assert [p for p, _ in window_problems([{"schedule": "x", "duration": "0"}])] == [
        ("spec", "syncWindows", 0, "schedule"), ("spec", "syncWindows", 0, "duration")]
