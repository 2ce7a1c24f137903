"""Field-level differences between two documents (gitops-engine's ``diff``, for plain JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class FieldChange:
    """One changed leaf: ``op`` is ``+`` added, ``-`` removed, ``~`` changed."""

    op: str
    path: str
    old: Any = None
    new: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op != "+":
            out["old"] = self.old
        if self.op != "-":
            out["new"] = self.new
        return out


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def diff_documents(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """Changes turning ``old`` into ``new``, by JSON path. Lists are compared element-wise."""
    changes: list[FieldChange] = []
    _diff(old, new, path, changes)
    return changes


def _diff(old: Any, new: Any, path: str, out: list[FieldChange]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            a, b = old.get(key, _MISSING), new.get(key, _MISSING)
            sub = _join(path, key)
            if a is _MISSING:
                out.append(FieldChange("+", sub, None, b))
            elif b is _MISSING:
                out.append(FieldChange("-", sub, a, None))
            else:
                _diff(a, b, sub, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            sub = _join(path, i)
            if i >= len(old):
                out.append(FieldChange("+", sub, None, new[i]))
            elif i >= len(new):
                out.append(FieldChange("-", sub, old[i], None))
            else:
                _diff(old[i], new[i], sub, out)
        return
    if old != new or type(old) is not type(new):
        out.append(FieldChange("~", path, old, new))
