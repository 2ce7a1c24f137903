"""docs/cli.md and docs/yaml-reference.md are what docs/generate.py makes of the current CLI and
schemas: a CLI option or schema field added without `make docs` fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.docs.conftest import DOCS, ROOT


@pytest.mark.parametrize("name", ["cli.md", "yaml-reference.md"])
def test_generated_reference_is_fresh(generator: ModuleType, name: str) -> None:
    fresh = {path.name: text for path, text in generator.outputs().items()}[name]
    committed = (DOCS / name).read_text() if (DOCS / name).exists() else ""
    assert committed == fresh, (
        f"docs/{name} is stale (the CLI or schemas/ changed): run `make docs` and commit it")


def test_cli_reference_covers_every_command_and_option(generator: ModuleType) -> None:
    import click

    from reconciler.cli import cli

    text = generator.generate_cli()
    for cmd, ctx in generator._walk_commands(cli, click.Context(cli, info_name="reconciler")):
        assert f"`{ctx.command_path}`" in text or cmd is cli
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in param.opts:
                    assert f"`{opt}`" in text, (ctx.command_path, opt)
    assert "## Exit codes" in text and "error[FRnnn]" in text


def test_yaml_reference_covers_every_kind_and_provider_field(generator: ModuleType) -> None:
    import json

    text = generator.generate_yaml()
    for kind in ("Target", "Service", "Job", "Schedule"):
        assert f"\n## {kind}\n" in text
    for provider_file in sorted((ROOT / "schemas" / "providers").glob("*.json")):
        schema = json.loads(provider_file.read_text())
        for field in schema.get("properties", {}):
            assert f"`{field}`" in text or f"`spec.{field}`" in text, (provider_file.name, field)
    assert "provider: bare_metal" in text and "provider: coolify" in text


def test_check_mode_names_make_docs(generator: ModuleType, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(generator, "ROOT", tmp_path)
    monkeypatch.setattr(generator, "CLI_MD", tmp_path / "cli.md")
    monkeypatch.setattr(generator, "YAML_MD", tmp_path / "yaml-reference.md")
    monkeypatch.setattr(generator, "EDITOR_SCHEMA", tmp_path / "fraisier.json")
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0
    (tmp_path / "cli.md").write_text("stale\n")
    assert generator.main(["--check"]) == 1
    assert "stale: cli.md; run `make docs`" in capsys.readouterr().err


def test_generator_runs_as_a_script() -> None:
    result = subprocess.run([sys.executable, str(DOCS / "generate.py"), "--help"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and "--check" in result.stdout
