"""A literal committed where a secret reference belongs (a Notifier's Apprise URL, a Coolify
token) is refused without echoing it: the value is most likely the secret itself, and the
refusal is printed, logged, audited and sent to notification destinations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LITERAL = "slack://T0SECRETA/B0SECRETB/C0SECRETC0SECRETC0SECRET/#ops"
TOKEN = "3|coolify-literal-token-value-0123456789"


@pytest.mark.timeout(60)
def test_literal_secret_is_refused_without_being_shown(tmp_path: Path) -> None:
    (tmp_path / "notifier.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Notifier\nmetadata: {name: ops}\n"
        f"spec:\n  url: \"{LITERAL}\"\n"
    )
    (tmp_path / "coolify.yaml").write_text(
        "apiVersion: fraisier.dev/v1\nkind: Target\nmetadata: {name: paas}\nspec:\n"
        "  provider: coolify\n  url: https://coolify.example.test\n"
        f"  token: \"{TOKEN}\"\n"
    )
    proc = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=50)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert f"{tmp_path / 'notifier.yaml'}:5:8: spec.url: expected a secret reference" in output
    assert "coolify.yaml:" in output and "token: expected a secret reference" in output
    for secret in (LITERAL, TOKEN, "T0SECRETA", "coolify-literal-token"):
        assert secret not in output
