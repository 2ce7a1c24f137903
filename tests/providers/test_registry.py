"""The provider registry's look for plugins (``may_have_plugins``): it answers "none" only when
``importlib.metadata`` would find no entry point of the group but this package's own ones for
its built-ins, and listing providers then does not import importlib.metadata."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest

from reconciler.providers.registry import (
    ENTRY_POINT_GROUP,
    builtin_providers,
    may_have_plugins,
)

OWN = f"[console_scripts]\nreconciler = reconciler.cli:main\n\n[{ENTRY_POINT_GROUP}]\n" \
      "bare_metal = reconciler.providers.bare_metal:create_provider\n"


def dist(folder: Path, name: str, entry_points: str | None, suffix: str = ".dist-info") -> None:
    info = folder / f"{name}-1.0{suffix}"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def metadata_says(path: list[str]) -> bool:
    """What importlib.metadata finds on ``path``: an entry point of the group that is not a
    built-in's own (the distributions deduplicated by name, as ``entry_points`` does)."""
    builtins = builtin_providers()
    seen: set[str] = set()
    for found in distributions(path=path):
        name = found.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for ep in found.entry_points.select(group=ENTRY_POINT_GROUP):
            builtin = builtins.get(ep.name)
            if builtin is None or ep.value.replace(" ", "") != builtin.factory:
                return True
    return False


CASES = {
    "own entry points only": [("fraisier", OWN)],
    "other groups only": [("fraisier", OWN), ("tool", "[console_scripts]\ntool = tool:main\n")],
    "no entry points": [("fraisier", OWN), ("lib", None)],
    "group named in a comment": [("fraisier", OWN),
                                 ("lib", f"# see {ENTRY_POINT_GROUP}\n[console_scripts]\n")],
    "a plugin": [("fraisier", OWN), ("plug", f"[{ENTRY_POINT_GROUP}]\nexample = plug:info\n")],
    "a built-in replaced": [("fraisier", OWN),
                            ("plug", f"[{ENTRY_POINT_GROUP}]\nbare_metal = plug:create\n")],
    "a section of another name": [("fraisier", OWN),
                                  ("plug", f"[ {ENTRY_POINT_GROUP} ]\nexample = plug:info\n")],
    "spaces in the own entry": [("fraisier", OWN.replace(":create", " : create"))],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_look_agrees_with_importlib_metadata(tmp_path: Path, case: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in CASES[case]:
        dist(tmp_path, name, text)
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(tmp_path / "absent")])
    expected = metadata_says([str(tmp_path)])
    assert may_have_plugins(builtin_providers()) == expected
    assert expected == (case in ("a plugin", "a built-in replaced"))


def test_what_it_does_not_model_is_left_to_importlib_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dist(tmp_path / "site", "fraisier", OWN)
    # an egg's EGG-INFO and an .egg-info folder are distributions too
    egg = tmp_path / "plug-1.0.egg"
    (egg / "EGG-INFO").mkdir(parents=True)
    (egg / "EGG-INFO" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nexample = plug:info\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), str(egg)])
    assert may_have_plugins(builtin_providers())
    dist(tmp_path / "legacy", "old", f"[{ENTRY_POINT_GROUP}]\nexample = old:info\n",
         suffix=".egg-info")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), str(tmp_path / "legacy")])
    assert may_have_plugins(builtin_providers())
    # a zip archive on the path: not read here, so "maybe"
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mod.py", "")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), str(archive)])
    assert may_have_plugins(builtin_providers())


def test_listing_providers_without_plugins_leaves_importlib_metadata_unimported() -> None:
    # Fails before: all_providers() always imported importlib.metadata (~15 ms of each
    # command's start-up, docs/performance.md).
    if may_have_plugins(builtin_providers()):
        pytest.skip("a provider plugin is installed in this environment")
    code = ("import sys\nfrom reconciler.providers.registry import all_providers\n"
            "names = sorted(all_providers())\n"
            "print(names, 'importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "['bare_metal', 'compose', 'coolify'] False", out.stdout
