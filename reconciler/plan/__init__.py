"""Plan: desired vs recorded state → create / update / delete / unchanged, in dependency order."""

from reconciler.plan.diff import FieldChange, diff_documents
from reconciler.plan.planner import Plan, PlanItem, make_plan

__all__ = ["FieldChange", "Plan", "PlanItem", "diff_documents", "make_plan"]
