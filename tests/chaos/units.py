"""What a Service's unit on a test host runs, as the host itself says."""

from __future__ import annotations

from typing import Any


def unit_props(host: Any, unit: str, *names: str) -> dict[str, str]:
    text = host.sh(f"systemctl show {' '.join('-p ' + n for n in names)} -p MainPID {unit}")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def process_revision(host: Any, props: dict[str, str]) -> str:
    """FRAISIER_REVISION in the environment of the unit's main process ("" when none runs)."""
    pid = int(props.get("MainPID") or 0)
    if pid <= 0:
        return ""
    raw = host.run(["cat", f"/proc/{pid}/environ"], check=False).stdout
    for item in raw.split(b"\0"):
        if item.startswith(b"FRAISIER_REVISION="):
            return item.split(b"=", 1)[1].decode()
    return ""
