"""A plan rendered for people: text for a terminal, Markdown for a pull request comment.

Secrets are never shown. Documents hold secret *references* (``{env: NAME}``), never values,
but a literal under a credential's name (``DB_PASSWORD: hunter2``) is a value: a change that
touches either is shown as changed, without what it was or became. Everything rendered also
goes through ``observe.redact`` (a URL's password).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.observe.printable import printable
from reconciler.observe.redact import is_credential_name, redact
from reconciler.plan.compare import Placement, placement
from reconciler.plan.diff import FieldChange, diff_documents
from reconciler.plan.planner import DEFERRED, SYMBOLS, UNCHANGED, Plan, PlanItem
from reconciler.plan.windows import iso
from reconciler.spec.model import DesiredState
from reconciler.spec.secrets import is_secret_ref

MARKER = "<!-- fraisier-plan -->"  # the CI jobs find (and update) their comment by it
DEFAULT_MAX_CHARS = 60_000  # GitHub refuses comments over 65,536 characters
HIDDEN = "(secret: value not shown)"
_SEGMENT = re.compile(r"[^.\[\]]+")
_ACTION_WORDS = {"create": "🆕 create", "update": "🔄 update", "delete": "🗑️ delete",
                 "orphan": "🗑️ orphan", "deferred": "⏸️ deferred", "blocked": "⛔ blocked",
                 "suspended": "💤 suspended", "drift": "🔄 drift"}


@dataclass
class PlanReport:
    """A plan and what it was made from."""

    plan: Plan
    head: DesiredState
    base: DesiredState | None = None  # diff --base: the commit the change starts from
    base_commit: str | None = None
    against: str = "base"  # "base" (the base commit) or "database" (recorded state)
    warnings: list[str] = field(default_factory=list)

    def acting(self) -> list[PlanItem]:
        return [i for i in self.plan.items if not i.in_sync]

    def placement(self, item: PlanItem) -> Placement:
        return placement(item, *[d for d in (self.head, self.base) if d is not None])

    def to_json(self) -> dict[str, Any]:
        doc = self.plan.to_json()
        doc["base"] = self.base_commit
        doc["against"] = self.against
        doc["warnings"] = list(self.warnings)
        for entry, item in zip(doc["resources"], self.plan.items, strict=True):
            entry.update(self.placement(item).to_json())
            entry["dependsOn"] = [str(k) for k in _depends(item)]
            entry["changes"] = [_safe_change_json(c, _documents(item)) for c in item.changes]
        return doc


# -- secrets ----------------------------------------------------------------------------------
def _documents(item: PlanItem) -> tuple[dict[str, Any], ...]:
    docs = []
    if item.resource is not None:
        docs.append(item.resource.document())
    if item.record is not None:
        docs.append(item.record.applied_spec or item.record.desired_spec or {})
    return tuple(docs)


def _at(doc: Any, segments: list[str]) -> Any:
    for segment in segments:
        if isinstance(doc, Mapping):
            doc = doc.get(segment)
        elif isinstance(doc, list) and segment.isdigit() and int(segment) < len(doc):
            doc = doc[int(segment)]
        else:
            return None
    return doc


def is_secret_change(change: FieldChange, documents: Iterable[Mapping[str, Any]]) -> bool:
    """Whether ``change`` touches a secret: a reference, a field inside one, or a value under
    a credential's name."""
    segments = _SEGMENT.findall(change.path)
    if any(is_credential_name(s) for s in segments if not s.isdigit()):
        return True
    if is_secret_ref(change.old) or is_secret_ref(change.new):
        return True
    parent = segments[:-1]
    return bool(parent) and any(is_secret_ref(_at(d, parent)) for d in documents)


def masked(value: Any, name: str = "") -> Any:
    """``value`` with every secret reference and credential-named value hidden."""
    if is_secret_ref(value) or (name and is_credential_name(name)):
        return HIDDEN
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def _safe_change_json(change: FieldChange, documents: tuple[dict[str, Any], ...]
                      ) -> dict[str, Any]:
    doc = change.to_json()
    if is_secret_change(change, documents):
        doc.update({k: HIDDEN for k in ("old", "new") if k in doc}, secret=True)
    else:
        doc.update({k: masked(doc[k]) for k in ("old", "new") if k in doc})
    return doc


def change_line(change: FieldChange, documents: tuple[dict[str, Any], ...]) -> str:
    """One line per changed field: ``~ spec.image: "a" -> "b"``, secrets hidden."""
    if is_secret_change(change, documents):
        return f"{change.op} {change.path}: {HIDDEN}" if change.op != "-" else \
            f"- {change.path}"
    old, new = (json.dumps(masked(v), sort_keys=True, default=str)
                for v in (change.old, change.new))
    if change.op == "~":
        return f"~ {change.path}: {old} -> {new}"
    if change.op == "+":
        return f"+ {change.path}: {new}"
    return f"- {change.path}"


def _depends(item: PlanItem) -> list[Any]:
    return list(item.resource.depends_on) if item.resource is not None else []


def _why(item: PlanItem) -> str:
    reason = item.reason
    if item.action == DEFERRED and item.opens_at is not None and iso(item.opens_at) not in reason:
        reason += f"; opens {iso(item.opens_at)}"
    return reason


def shown_changes(item: PlanItem) -> list[FieldChange]:
    """The changes to show: a whole new (or removed) document field by field, one level
    below ``spec``, rather than as one line holding all of it."""
    record = item.record
    old = (record.applied_spec or record.desired_spec) if record is not None else None
    new = item.resource.document() if item.resource is not None else None
    if (old is None) == (new is None):
        return item.changes
    doc = new if new is not None else old
    assert doc is not None
    meta = doc.get("metadata") or {}
    skeleton: dict[str, Any] = {"kind": doc.get("kind"), "spec": {},
                "metadata": {"name": meta.get("name"), "environment": meta.get("environment"),
                             "labels": {}}}
    return diff_documents(skeleton, doc) if new is not None else diff_documents(doc, skeleton)


def _where(p: Placement) -> str:
    parts = [p.target] if p.target else []
    hosts = ", ".join(p.hosts[:5]) + (f" +{len(p.hosts) - 5}" if len(p.hosts) > 5 else "")
    inner = " ".join(x for x in (p.provider or "", hosts and f"[{hosts}]") if x)
    return " ".join(parts + ([f"({inner})"] if inner else [])) or "-"


def _clean(text: str) -> str:
    return redact(printable(text, lines=True))


def _summary(plan: Plan) -> str:
    counts = plan.counts()
    acting = ", ".join(f"{n} {a}" for a, n in counts.items() if a != UNCHANGED)
    return acting or "no change"


# -- text ---------------------------------------------------------------------------------------
def render_text(report: PlanReport) -> list[str]:
    plan = report.plan
    head = (plan.commit or "?")[:12]
    if report.against == "base":
        title = f"Plan of {(report.base_commit or '?')[:12]}..{head}"
    else:
        title = f"Plan at commit {head} against the recorded state"
    lines = [f"{title}: {_summary(plan)}"]
    for n, item in enumerate(report.acting(), 1):
        p = report.placement(item)
        how = f", {p.strategy}" if p.strategy and item.key.kind == "Service" else ""
        lines.append(_clean(f"{n:>3}. {SYMBOLS.get(item.action, '?')} {item.key}  "
                            f"({item.action}: {_why(item)}) on {_where(p)}{how}"))
        after = _depends(item)
        if after:
            lines.append(f"       after: {', '.join(str(k) for k in after)}")
        docs = _documents(item)
        changes = shown_changes(item)
        for change in changes[:50]:
            lines.append(_clean(f"       {change_line(change, docs)}"))
        if len(changes) > 50:
            lines.append(f"       … {len(changes) - 50} more changes")
    if plan.in_sync:
        lines.append("No change.")
    return lines


# -- markdown -----------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return _clean(text).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _cell(text).replace("`", "'") + "`"


def _row(n: int, item: PlanItem, p: Placement) -> str:
    after = ", ".join(f"{k.kind}/{k.name}" for k in _depends(item)) or "-"
    return (f"| {n} | {_ACTION_WORDS.get(item.action, item.action)} | "
            f"{_code(f'{item.key.kind}/{item.key.name}')} | {_cell(_where(p))} | "
            f"{_cell(p.strategy or '-')} | {_cell(after)} | {_cell(_why(item))} |")


def _details(item: PlanItem) -> str:
    docs = _documents(item)
    changes = shown_changes(item)
    body = "\n".join(_clean(change_line(c, docs)) for c in changes[:200])
    if len(changes) > 200:
        body += f"\n… {len(changes) - 200} more changes"
    body = body.replace("```", "'''")
    what = f"{len(changes)} field{'s' if len(changes) != 1 else ''}"
    return (f"<details><summary><code>{_cell(f'{item.key.kind}/{item.key.name}')}</code> — "
            f"{item.action}: {what}</summary>\n\n```diff\n{body}\n```\n\n</details>\n")


def render_markdown(report: PlanReport, *, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The plan as a pull request comment: a summary, then per environment a table of what
    acts (in apply order) and each resource's field changes in a collapsed ``<details>``.
    Longer than ``max_chars``: what does not fit is left out and counted."""
    plan = report.plan
    head = (plan.commit or "?")[:12]
    if report.against == "base":
        title = f"### Fraisier plan: `{(report.base_commit or '?')[:12]}` → `{head}`"
        against = "against the base commit (no database, no host contacted)"
    else:
        title = f"### Fraisier plan at `{head}`"
        against = "against the recorded state (database, read-only)"
    head_lines = [MARKER, title, "", f"**{_summary(plan)}** — {against}", ""]
    head_lines += [f"> ⚠️ {_clean(w)}" for w in report.warnings]
    if report.warnings:
        head_lines.append("")
    by_env: dict[str, list[tuple[int, PlanItem]]] = {}
    for item in report.acting():  # numbered in apply order within each environment
        items = by_env.setdefault(item.key.environment, [])
        items.append((len(items) + 1, item))
    footer_reserve = 400
    budget = max_chars - footer_reserve
    out = "\n".join(head_lines) + "\n"
    if not by_env:
        return out + "No change: applying this commit would do nothing.\n"
    # Tables first (every environment), then the details while they fit: what acts is
    # always listed before how each field changes.
    tables: list[tuple[str, list[str]]] = []
    for env, items in sorted(by_env.items()):
        counts: dict[str, int] = {}
        for _, item in items:
            counts[item.action] = counts.get(item.action, 0) + 1
        what = ", ".join(f"{n} {a}" for a, n in counts.items())
        header = (f"#### Environment {_code(env)} — {what}\n\n"
                  "| # | action | resource | target (hosts) | strategy | after | why |\n"
                  "|---|---|---|---|---|---|---|\n")
        tables.append((header, [_row(n, item, report.placement(item)) + "\n"
                                for n, item in items]))
    left_rows = left_details = 0
    sections: list[list[str]] = []
    for header, rows in tables:
        part = [header]
        size = len(out) + sum(len(x) for s in sections for x in s)
        if size + len(header) > budget:
            left_rows += len(rows)
            sections.append([])
            continue
        size += len(header)
        for row in rows:
            if size + len(row) > budget:
                left_rows += 1
                continue
            part.append(row)
            size += len(row)
        sections.append(part)
    size = len(out) + sum(len(x) for s in sections for x in s)
    for (env, items), part in zip(sorted(by_env.items()), sections, strict=True):
        if not part:
            left_details += sum(1 for _, i in items if shown_changes(i))
            continue
        part.append("\n")
        size += 1
        for _, item in items:
            if not shown_changes(item):
                continue
            block = _details(item)
            if size + len(block) > budget:
                left_details += 1
                continue
            part.append(block)
            size += len(block)
        del env
    out += "".join(x for s in sections for x in s)
    if left_rows or left_details:
        out += (f"\n_Left out to stay under {max_chars:,} characters: {left_rows} "
                f"resource row(s) and {left_details} change detail(s). Run `reconciler diff "
                "--base …` for the whole plan._\n")
    return out
