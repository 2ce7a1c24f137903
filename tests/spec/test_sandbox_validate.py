"""`reconciler validate` warns where a resource turns the sandbox off (docs/sandboxing.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import cli

FLEET = """\
apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: hosts, environment: prod}
spec:
  provider: bare_metal
  transport: ssh
  systemd:
    sandbox: SANDBOX
    overrides:
      legacy: {sandbox: off}
      web:
        sandbox: strict
        allow: {writablePaths: [/srv/data], capabilities: [CAP_NET_BIND_SERVICE]}
  hosts:
    - {name: h1, address: 127.0.0.1, user: root}
---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: docker, environment: prod}
spec:
  provider: compose
  sandbox: off
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: box, environment: prod}
spec:
  target: docker
  compose: {image: "busybox:1", sandbox: off}
"""


@pytest.mark.parametrize("profile", ["default", "off"])
def test_validate_warns_when_the_sandbox_is_off(profile: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET.replace("SANDBOX", profile))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", "."])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    expected = [
        "warning: fleet.yaml:1: Target hosts runs legacy unsandboxed "
        "(systemd.overrides.legacy.sandbox: off); see docs/sandboxing.md",
        "warning: fleet.yaml:17: Target docker runs its containers unsandboxed (sandbox: off); "
        "see docs/sandboxing.md",
        "warning: fleet.yaml:24: Service box runs its containers unsandboxed "
        "(compose.sandbox: off); see docs/sandboxing.md",
    ]
    if profile == "off":
        expected.insert(0, "warning: fleet.yaml:1: Target hosts runs its units unsandboxed "
                           "(systemd.sandbox: off); see docs/sandboxing.md")
    assert warnings == expected, result.output


def test_validate_rejects_an_unknown_profile(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET.replace("SANDBOX", "paranoid"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", "."])
    assert result.exit_code == 2 and "sandbox" in result.output, result.output


def test_validate_warns_that_a_local_target_is_not_sandboxed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleet.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: here}\n"
        "spec: {provider: bare_metal, systemd: {sandbox: strict}}\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["validate", "."])
    assert result.exit_code == 0, result.output
    assert ("warning: fleet.yaml:1: Target here asks for systemd.sandbox: strict, but transport: "
            "local runs processes without systemd: they are not sandboxed" in result.output)
