"""Each folder of tests/data/invalid/ is a small fleet with one kind of error; its expected.txt
holds the exact `file:line:col: message` lines the loader must report (all of them, sorted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SpecError, SpecProblem
from reconciler.spec.loader import files_from_directory, load_desired_state
from tests.spec.conftest import INVALID

CASES = sorted(p.name for p in INVALID.iterdir() if p.is_dir())


def test_every_error_kind_has_a_case() -> None:
    assert set(CASES) >= {
        "yaml-syntax",
        "not-a-mapping",
        "unknown-api-version",
        "unknown-kind",
        "schema",
        "missing-target",
        "target-not-a-target",
        "depends-on-missing",
        "duplicate",
        "cycle",
        "cron",
        "calendar",
        "non-json-values",
        "encoding",
        "duplicate-key",
        "alias-bomb",
        "env-undefined-value",  # shared definitions: use and definition both located
        "env-value-cycle",
        "env-type-after-substitution",
    }


@pytest.mark.parametrize("case", CASES)
def test_invalid_fleet_reports_exact_problems(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = INVALID / case
    expected = (folder / "expected.txt").read_text().splitlines()
    assert expected, f"{case}/expected.txt is empty"
    monkeypatch.chdir(folder)  # paths are shown as given: relative to the case folder
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(Path(".")))
    lines = [str(problem) for problem in raised.value.problems]
    assert lines == expected
    assert str(raised.value).splitlines() == expected


@pytest.mark.parametrize("case", CASES)
def test_problems_are_sorted_unique_and_located(case: str) -> None:
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(INVALID / case))
    problems = raised.value.problems
    assert problems == sorted(set(problems))
    for problem in problems:
        assert isinstance(problem, SpecProblem)
        assert problem.line >= 1 and problem.col >= 1
        assert problem.file.startswith(str(INVALID / case))


def test_paths_are_shown_as_the_user_gave_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(INVALID.parent)
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(Path("invalid/cycle")))
    assert str(raised.value.problems[0]).startswith("invalid/cycle/fleet.yaml:9:55: ")
