"""`reconciler render`: the desired state of one environment as it will be applied, and where
each substituted value came from (``--show-origin``, also used by ``diff --show-origin``).

Added to the group by ``reconciler.cli``. Shared definitions and ``Environment``
values: ``reconciler/spec/environments.py``, docs/environments.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler import API_VERSION
from reconciler.cli.common import handles_errors, install_policy, policy_option

if TYPE_CHECKING:  # the loader's modules are imported by the commands that load (start-up)
    from reconciler.spec.environments import Origin
    from reconciler.spec.model import DesiredState, Resource



OriginMap = Mapping[tuple[str, str, str], Sequence["Origin"]]


def origins_under(found: OriginMap | None, key: Iterable[str], path: str) -> list[Origin]:
    """The origins of the value at ``path`` of resource ``key``, or of values inside it, or of
    the value that holds it (a whole-string ``${hosts}`` is a list: its items came from it)."""
    if not found:
        return []
    entries = found.get(tuple(key))  # type: ignore[arg-type]
    if not entries:
        return []
    return [o for o in entries if _related(o.path, path)]


def _related(origin: str, path: str) -> bool:
    if origin == path:
        return True
    shorter, longer = (origin, path) if len(origin) < len(path) else (path, origin)
    return longer.startswith(shorter) and longer[len(shorter)] in ".["


def add_origins_to_plan_json(document: dict[str, Any], found: OriginMap) -> None:
    """Each change of ``diff -o json`` gains ``origins``: [{value, use, definition}]."""
    for item in document.get("resources", []):
        key = (item["environment"], item["kind"], item["name"])
        for change in item.get("changes", []):
            related = origins_under(found, key, change["path"])
            if related:
                change["origins"] = [origin_json(o) for o in related]


def origin_json(origin: Origin) -> dict[str, Any]:
    return {"path": origin.path, "value": origin.name, "use": str(origin.use),
            "definition": str(origin.definition) if origin.definition else None}


def _document(resource: Resource) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": resource.name, "environment": resource.environment}
    if resource.labels:
        metadata["labels"] = dict(resource.labels)
    return {"apiVersion": API_VERSION, "kind": resource.kind, "metadata": metadata,
            "spec": resource.spec}


def render_state(state: DesiredState, output: str, found: OriginMap | None) -> str:
    """The resources of ``state`` as YAML documents (``--show-origin``: a comment per
    substituted value) or one JSON document."""
    import yaml

    resources = [state.resources[k] for k in sorted(state.resources)]
    if output == "json":
        items = []
        for resource in resources:
            item = _document(resource)
            if found is not None:
                item["origins"] = [origin_json(o) for o in found.get(resource.key, [])]
            items.append(item)
        return json.dumps({"resources": items}, indent=2, ensure_ascii=False)
    parts = []
    for resource in resources:
        head = f"# {resource.key}  (from {resource.file}:{resource.line})\n"
        if found is not None:
            for origin in found.get(resource.key, []):
                head += f"# {origin.path}: {origin}\n"
        body = yaml.safe_dump(_document(resource), sort_keys=False, allow_unicode=True,
                              default_flow_style=False)
        parts.append(head + body)
    return "---\n".join(parts)


@click.command()
@click.argument("path", default=".", type=click.Path(path_type=Path))
@click.option("-e", "--environment", "environments", multiple=True,
              help="Only this environment (repeatable; default: all).")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True)
@click.option("--show-origin", is_flag=True,
              help="Say where each substituted value came from: the ${NAME} written in the "
                   "definition and the Environment that defines it (file:line:col each).")
@policy_option
@handles_errors
def render(path: Path, environments: tuple[str, ...], output: str, show_origin: bool,
           policy_path: Path | None) -> None:
    """Print the desired state in PATH as it will be applied: shared definitions resolved
    for each environment (`-e production`: that one only). Checks it exactly like `validate`:
    exit 0 rendered, 2 invalid (each error as file:line:col) or no such environment."""
    from reconciler.spec.environments import origins
    from reconciler.spec.loader import files_from_directory, load_desired_state
    from reconciler.spec.tree import DirectoryTree, work_tree_of

    install_policy(policy_path, None, None, path)
    if not path.exists():
        click.echo(f"{path}: no such file or directory", err=True)
        sys.exit(2)
    files = files_from_directory(path)
    top = work_tree_of(path)
    state = load_desired_state(files, tree=DirectoryTree(top) if top is not None else None)
    check_environments(state, environments)
    state = state.only(set(environments))
    found = origins(files) if show_origin else None
    click.echo(render_state(state, output, found), nl=output == "json")


def check_environments(state: DesiredState, environments: Iterable[str]) -> None:
    """Exit 2 naming the known environments when one asked for has no resource."""
    known = sorted({key.environment for key in state.resources})
    missing = [e for e in environments if e not in known]
    if missing:
        click.echo(f"no resource in environment {', '.join(repr(m) for m in missing)} "
                   f"(environments: {', '.join(known) or 'none'})", err=True)
        sys.exit(2)
