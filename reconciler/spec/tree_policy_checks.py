"""Checks of the desired state against what lies outside it: ``spec.source.path`` folders
against the repository tree they come from (``spec/tree.py``), and every resource against the
operator policy in force (``spec/policy.py``), checked on every load, cached files included.
"""

from __future__ import annotations

from reconciler.errors import SpecProblem
from reconciler.spec.load_state import LoadState
from reconciler.spec.model import Resource, ResourceKey
from reconciler.spec.policy import all_allowed as policy_allowed
from reconciler.spec.policy import violations as policy_violations
from reconciler.spec.tree import SourceTree, source_path_problems


def source_path_problems_in(load: LoadState, resources: dict[ResourceKey, Resource],
                            tree: SourceTree) -> None:
    """Add to ``load.problems`` each ``spec.source.path`` that is no folder of ``tree``."""
    where = load.where
    checked: dict[str, list[str]] = {}  # one look per folder, however many resources
    for key, resource in resources.items():
        if not resource.has_field("source"):
            continue  # without reading the document (a packed one stays packed)
        source = resource.spec.get("source")
        if not isinstance(source, dict) or not isinstance(source.get("path"), str):
            continue
        folder = source["path"]
        if folder not in checked:
            checked[folder] = source_path_problems(tree, folder)
        file_index, index, _ = where[key]
        for problem in checked[folder]:
            load.problems.append(load.problem_at(
                file_index, index, ("spec", "source", "path"), f"spec.source.path: {problem}"))


def policy_problems(load: LoadState, resources: dict[ResourceKey, Resource]) -> list[SpecProblem]:
    """What the operator policy refuses in ``resources``, each located at its spec path: the
    fleet's distinct checks are judged (``load.checks``, from the files' facts), and every
    document is gone through only when one of them is refused, to say where."""
    if policy_allowed(load.checks):
        return []
    return [load.problem_at(*load.where[key][:2], path, message)
            for key, path, message in policy_violations(resources.values())]
