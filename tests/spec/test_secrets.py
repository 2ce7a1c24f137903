from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SecretError
from reconciler.spec.secrets import describe_ref, is_secret_ref, resolve_env, resolve_secret

SECRET = "s3cr3t-value-never-printed"


def test_literals_and_references_resolve(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    env = {
        "GREETING": "hello",
        "PORT": 8081,
        "RATIO": 0.5,
        "API_TOKEN": {"env": "FRAISIER_TEST_TOKEN"},
        "DB_PASSWORD": {"file": str(token_file)},
    }
    resolved = resolve_env(env, environ={"FRAISIER_TEST_TOKEN": SECRET})
    assert resolved == {
        "GREETING": "hello",
        "PORT": "8081",
        "RATIO": "0.5",
        "API_TOKEN": SECRET,
        "DB_PASSWORD": SECRET,
    }


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAISIER_TEST_TOKEN", SECRET)
    assert resolve_env({"T": {"env": "FRAISIER_TEST_TOKEN"}}) == {"T": SECRET}


def test_file_content_keeps_inner_newlines_and_drops_one_trailing(tmp_path: Path) -> None:
    path = tmp_path / "cert"
    path.write_text("line1\nline2\n\n")
    assert resolve_secret({"file": str(path)}) == "line1\nline2\n"
    path.write_bytes(b"windows\r\n")
    assert resolve_secret({"file": str(path)}) == "windows"


def test_missing_env_reference_names_the_reference_not_a_value() -> None:
    with pytest.raises(SecretError) as raised:
        resolve_env({"API_TOKEN": {"env": "FRAISIER_MISSING_VAR"}}, environ={"OTHER": SECRET})
    message = str(raised.value)
    assert "env:FRAISIER_MISSING_VAR" in message and "API_TOKEN" in message
    assert SECRET not in message
    assert raised.value.code == "FR500"


def test_missing_file_reference_names_the_reference(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SecretError, match=f"file:{missing} cannot be read: No such file"):
        resolve_env({"DB_PASSWORD": {"file": str(missing)}})


def test_unreadable_file_reference(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot be read"):
        resolve_secret({"file": str(tmp_path)})  # a directory


def test_malformed_values_are_rejected_without_echoing_them() -> None:
    for value in (True, None, ["x"], {"env": "A", "file": "b"}, {"vault": "x"}, {"env": ""}):
        with pytest.raises(SecretError) as raised:
            resolve_env({"X": value}, environ={"A": SECRET})
        assert SECRET not in str(raised.value)


def test_describe_ref_is_safe_to_log() -> None:
    assert describe_ref({"env": "API_TOKEN"}) == "env:API_TOKEN"
    assert describe_ref({"file": "/run/secret"}) == "file:/run/secret"
    assert describe_ref(SECRET) == "<literal>"
    assert is_secret_ref({"env": "X"}) and not is_secret_ref({"env": "X", "file": "y"})
