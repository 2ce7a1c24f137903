"""Sandbox profiles, one vocabulary for every provider that runs processes (docs/sandboxing.md).

``off``: what the host gives (no hardening); ``default``: least privilege that keeps ordinary
apps working; ``strict``: adds what breaks some apps. ``bare_metal`` reads the profile from its
Target's ``systemd`` section (per resource under ``overrides``); ``compose`` from a workload's
``compose`` section. ``validate`` warns about every place that turns the sandbox off.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reconciler.spec.model import Resource

PROFILES = ("off", "default", "strict")
DEFAULT_PROFILE = "default"


def profile_word(value: object) -> str:
    """The profile a setting names. YAML 1.1 reads an unquoted ``off`` as ``false``: that is
    ``off`` too (the schema accepts both)."""
    if value is None:
        return DEFAULT_PROFILE
    if value is False:
        return "off"
    return str(value)


# What a sandboxed process prints (or its supervisor says of it) -> the setting that likely
# caused it and how to allow exactly that. Each provider has its own table (its own settings);
# checked in order, the first match wins.
HintTable = tuple[tuple[re.Pattern[str], str], ...]


def diagnose(profile: str, text: str, table: HintTable) -> str | None:
    """Which sandbox setting most likely made a process fail, judging by ``text`` (its last
    output lines and its supervisor's messages about it), and how to allow it; None when
    sandboxing is off or nothing in ``text`` points at it."""
    if profile == "off":
        return None
    for pattern, hint in table:
        if pattern.search(text):
            return f"sandbox {profile!r} likely caused this: {hint} (docs/sandboxing.md)"
    return None


def sandbox_off_warnings(resources: Iterable[Resource]) -> list[str]:
    """``file:line: …`` for each Target or workload whose settings turn the sandbox off."""
    warnings: list[str] = []
    for resource in resources:
        where = f"{resource.file}:{resource.line}"
        spec = resource.spec
        if resource.kind == "Target" and spec.get("provider") == "bare_metal":
            section = spec.get("systemd") or {}
            if not isinstance(section, dict):
                continue
            if spec.get("transport", "local") == "local" and section.get("sandbox") not in (
                    None, False, "off"):
                warnings.append(f"{where}: Target {resource.name} asks for systemd.sandbox: "
                                f"{section.get('sandbox')}, but transport: local runs processes "
                                "without systemd: they are not sandboxed")
            if profile_word(section.get("sandbox")) == "off":
                warnings.append(f"{where}: Target {resource.name} runs its units unsandboxed "
                                "(systemd.sandbox: off)")
            for name, override in sorted((section.get("overrides") or {}).items()):
                if isinstance(override, dict) and profile_word(override.get("sandbox")) == "off":
                    warnings.append(f"{where}: Target {resource.name} runs {name} unsandboxed "
                                    f"(systemd.overrides.{name}.sandbox: off)")
        if resource.kind == "Target" and spec.get("provider") == "compose" and profile_word(
                spec.get("sandbox")) == "off":
            warnings.append(f"{where}: Target {resource.name} runs its containers unsandboxed "
                            "(sandbox: off)")
        compose = spec.get("compose")
        if isinstance(compose, dict) and profile_word(compose.get("sandbox")) == "off":
            warnings.append(f"{where}: {resource.kind} {resource.name} runs its containers "
                            "unsandboxed (compose.sandbox: off)")
    return warnings
