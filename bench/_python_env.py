"""The environment every bench runs the reconciler with: byte-compiled, as an installed one (pip,
the container image) runs. A shell with PYTHONDONTWRITEBYTECODE=1 (a development session's, these
machines') would make every `python -m reconciler` compile its modules from source, a cost no
user pays; the caches go to a folder of the bench's own (written by its untimed warm-up runs)."""

from __future__ import annotations

import os
from pathlib import Path


def installed_env(cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir)
    return env
