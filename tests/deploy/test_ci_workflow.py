""".github/workflows/ci.yml stays a thin mirror of .ci/run (which is what CI here runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_workflow_runs_ci_run_on_debian_12_as_root() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert job["container"]["image"] == "debian:12"
    assert "--privileged" in job["container"]["options"]  # .ci/run starts its own dockerd
    runs = [step.get("run", "") for step in job["steps"]]
    assert "bash .ci/run" in [r.strip() for r in runs]
    assert (ROOT / ".ci" / "run").is_file()
    assert job["timeout-minutes"] <= 60
