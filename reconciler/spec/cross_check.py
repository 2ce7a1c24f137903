"""Checks across the documents of one load: a resource defined twice, a ``spec.target`` that is
no Target of its environment, ``{vars.NAME}`` placeholders a Target's hosts do not define,
``dependsOn`` references that resolve to nothing or to several kinds, and ``dependsOn`` cycles
(Tarjan, iterative). Each problem is located in its file through ``LoadState.problem_at``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, cast

from reconciler.spec.cache import PackedRecord, Record
from reconciler.spec.hostvars import instance_var_maps, placeholders
from reconciler.spec.load_state import Key, LoadState
from reconciler.spec.model import PackedResource, Resource, ResourceKey
from reconciler.spec.provider_schemas import provider_schemas
from reconciler.spec.validate import Path_, format_path

# ResourceKey from a plain tuple in C (ResourceKey(...) runs a Python-level __new__).
_new_key = tuple.__new__


def _ref(key: Key) -> str:
    return f"{key[1]}/{key[2]}"


def cross_check(load: LoadState) -> dict[ResourceKey, Resource]:
    """Resources from the valid records of ``load``: duplicates, ``spec.target`` (and the
    host vars its placeholders need), ``dependsOn`` references and cycles; problems are added
    to ``load.problems``."""
    files = load.files
    # keyed by ResourceKey from the start (the loader's result as it is): a ResourceKey is
    # equal to, and hashes as, the plain tuple the other maps use
    resources: dict[ResourceKey, Resource] = {}
    where = load.where  # file index, document index, line
    path_index, path = -1, ""  # the records come file by file: each file's path read once
    for file_index, record in load.valid:
        if file_index != path_index:
            path_index, path = file_index, files[file_index].path
        if len(record) == 7:  # packed, from the spec cache (most records of a warm load)
            index, line, kind, name, environment, digest, (body, links) = cast(PackedRecord,
                                                                               record)
            key = _new_key(ResourceKey, (environment, kind, name))
            resource: Resource = PackedResource(key, body, links, path, line, digest)
        else:  # whole (just parsed, or resolved from a shared definition)
            index, line, kind, name, environment, labels, spec, digest = cast(Record, record)
            key = _new_key(ResourceKey, (environment, kind, name))
            resource = Resource(key=key, labels=labels, spec=spec, file=path, line=line,
                                hash=digest)
        first = where.get(key)
        if first is not None:
            message = (
                f"metadata.name: duplicate {kind} {name!r} in environment {environment!r} "
                f"(first defined at {files[first[0]].path}:{first[2]})"
            )
            load.problems.append(load.problem_at(file_index, index, ("metadata", "name"), message))
            continue
        resources[key] = resource
        where[key] = (file_index, index, line)
    known: set[Key] = set(resources)
    known.update(load.partial)
    # The kinds of each (environment, name): for dependsOn references and problem messages
    # only, so made when the first of them needs it (a fleet without dependsOn never does).
    by_name: dict[tuple[str, str], set[str]] | None = None

    def kinds_by_name() -> dict[tuple[str, str], set[str]]:
        nonlocal by_name
        if by_name is None:
            by_name = {}
            for environment, kind, name in known:
                by_name.setdefault((environment, name), set()).add(kind)
        return by_name

    # resolved dependsOn: resource -> [(index in dependsOn, key)]
    edges: dict[Key, list[tuple[int, Key]]] = {}
    for key, resource in resources.items():
        target = resource.target
        if (
            key[1] != "Target"
            and target is not None
            and (key[0], "Target", target) not in known
        ):
            file_index, index, _ = where[key]
            message = _target_problem(key, target, known, kinds_by_name())
            load.problems.append(load.problem_at(file_index, index, ("spec", "target"), message))
        elif key[1] != "Target" and target is not None and key in load.uses_vars:
            target_resource = resources.get(_new_key(ResourceKey, (key[0], "Target", target)))
            if target_resource is not None:
                file_index, index, _ = where[key]
                for location, undefined in _placeholder_problems(resource.spec,
                                                                 target_resource):
                    load.problems.append(load.problem_at(file_index, index, location, undefined))
        depends_on = resource.depends_on_refs
        if not depends_on:
            continue
        resolved: list[tuple[int, Key]] = []
        for position, ref in enumerate(depends_on):
            dependency, problem = _resolve(key[0], ref, known, kinds_by_name())
            if problem:
                file_index, index, _ = where[key]
                location = ("spec", "dependsOn", position)
                message = f"{format_path(location)}: {problem}"
                load.problems.append(load.problem_at(file_index, index, location, message))
            elif dependency is not None and dependency not in (d for _, d in resolved):
                resolved.append((position, dependency))
        resource.depends_on = [ResourceKey(*dependency) for _, dependency in resolved]
        edges[key] = resolved

    for cycle in _cycles(edges, where):
        start, following = cycle[0], cycle[1]
        position = next(p for p, d in edges[start] if d == following)
        file_index, index, _ = where[start]
        location = ("spec", "dependsOn", position)
        names = [_ref(k) for k in cycle]
        if len(names) > 9:  # keep a long cycle readable: its ends show where to cut it
            names = [*names[:4], f"... ({len(names) - 8} more)", *names[-4:]]
        message = f"{format_path(location)}: dependsOn cycle: " + " -> ".join(names)
        load.problems.append(load.problem_at(file_index, index, location, message))
    return resources


def _placeholder_problems(
    spec: dict[str, Any], target: Resource
) -> Iterator[tuple[Path_, str]]:
    """``{vars.NAME}`` placeholders that some instance of the Target does not define."""
    provider = str(target.spec.get("provider"))
    schemas = provider_schemas().get(provider)
    declared = schemas.instance_vars if schemas is not None else ""
    maps = instance_var_maps(target.spec, declared) if declared else None
    for location, name in placeholders(spec):
        where = format_path(location)
        if maps is None:
            yield location, (
                f"{where}: undefined placeholder {{vars.{name}}}: Target {target.name!r} gives "
                f"its instances no values (bare_metal: hosts[].vars)"
            )
            continue
        missing = [host for host, values in maps if name not in values]
        if missing:
            hosts = ", ".join(repr(h) for h in missing)
            yield location, (
                f"{where}: undefined placeholder {{vars.{name}}}: host {hosts} of Target "
                f"{target.name!r} defines no vars.{name}"
            )


def _target_problem(
    key: Key, target: str, known: set[Key], kinds_by_name: dict[tuple[str, str], set[str]]
) -> str:
    environment = key[0]
    others = sorted(kinds_by_name.get((environment, target), set()))
    if others:
        return f"spec.target: {target!r} is a {' and a '.join(others)}, not a Target"
    message = f"spec.target: no Target {target!r} in environment {environment!r}"
    elsewhere = sorted(k[0] for k in known if k[1] == "Target" and k[2] == target)
    if elsewhere:
        message += (
            f" (there is one in environment {elsewhere[0]!r}; references stay in their environment)"
        )
    return message


def _resolve(
    environment: str,
    ref: str,
    known: set[Key],
    kinds_by_name: dict[tuple[str, str], set[str]],
) -> tuple[Key | None, str | None]:
    if "/" in ref:
        kind, _, name = ref.partition("/")
        key = (environment, kind, name)
        if key in known:
            return key, None
        others = sorted(kinds_by_name.get((environment, name), set()))
        message = f"no {kind} {name!r} in environment {environment!r}"
        if others:
            message += " (there is " + ", ".join(f"{k}/{name}" for k in others) + ")"
        return None, message
    kinds = sorted(kinds_by_name.get((environment, ref), set()))
    if not kinds:
        return None, f"no resource named {ref!r} in environment {environment!r}"
    if len(kinds) > 1:
        choices = ", ".join(f"{k}/{ref}" for k in kinds)
        return None, (
            f"{ref!r} is ambiguous in environment {environment!r} ({choices}); write Kind/name"
        )
    return (environment, kinds[0], ref), None


def _cycles(
    edges: dict[Key, list[tuple[int, Key]]],
    where: dict[Key, tuple[int, int, int]],
) -> list[list[Key]]:
    """One cycle per strongly connected component that has one, starting (and ending) at the
    member written first; Tarjan's algorithm, iterative so long chains do not hit the
    recursion limit. Only resources with dependencies are nodes: nothing else can be on a cycle.
    """
    graph = {key: [d for _, d in deps if d in edges] for key, deps in edges.items()}
    order: dict[Key, int] = {}
    low: dict[Key, int] = {}
    stack: list[Key] = []
    on_stack: set[Key] = set()
    components: list[list[Key]] = []
    for start in graph:
        if start in order:
            continue
        order[start] = low[start] = len(order)
        stack.append(start)
        on_stack.add(start)
        work: list[tuple[Key, Iterator[Key]]] = [(start, iter(graph[start]))]
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in order:
                    order[successor] = low[successor] = len(order)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(graph[successor])))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], order[successor])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == order[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
    cycles = []
    for component in components:
        members = set(component)
        first = min(component, key=lambda k: where[k])
        if len(component) == 1 and first not in graph[first]:
            continue
        # shortest way back to the first member (breadth-first inside the component)
        parents: dict[Key, Key] = {}
        queue = deque([first])
        closing: Key | None = None
        while queue and closing is None:
            current = queue.popleft()
            for successor in graph[current]:
                if successor == first:
                    closing = current
                    break
                if successor in members and successor not in parents:
                    parents[successor] = current
                    queue.append(successor)
        assert closing is not None
        path = [closing]
        while path[-1] != first:
            path.append(parents[path[-1]])
        path.reverse()
        cycles.append([*path, first])
    return cycles
