"""What the baselines' systemd units share with the reconciler's: its sandbox lines."""

from __future__ import annotations


def sandbox_lines(profile: str, state_name: str) -> list[str]:
    """The sandbox lines the reconciler renders for a Service's unit with ``profile`` (from its
    own renderer), for a baseline's unit: the same work on the host."""
    from reconciler.providers.bare_metal.unit_sandbox import Sandbox

    return Sandbox.from_section(profile, None).directives(
        kind="Service", state_name=state_name, has_user=False)
