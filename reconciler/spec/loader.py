"""Load the desired state: YAML files → validated, cross-checked ``Resource`` objects.

Fast path (every file not in the cache): one ``yaml.load_all`` pass (libyaml's C parser with a
lean constructor, ``FastLoader``), the compiled fastjsonschema validator of each kind, a text
scan for the line where each document starts, and a canonical-JSON hash per document. No marks
are kept and jsonschema does not run. Only a file that fails anywhere on that path is parsed
again keeping its nodes (with line/column marks) and validated by jsonschema, which yields every
violation; each is located at its node. Cross-file checks (duplicates, references, cycles) run on
the fast data and re-parse only the file involved to locate a problem. With a ``SpecCache`` a
file whose git blob is already cached is neither read nor parsed.

Every problem is collected; ``load_desired_state`` raises one ``SpecError`` carrying them all.

This module is the public entry (``load_desired_state``, ``files_from_directory``,
``SourceFile``, …); the work is done in ``files`` (reading folders), ``yaml_parse`` (YAML with
marks), ``fast_path``, ``document_checks`` (one document), ``load_state`` (one load, the slow
path), ``cross_check`` (across documents) and ``tree_policy_checks`` (the repository tree and
the operator policy).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from reconciler.errors import SpecError, SpecProblem
from reconciler.spec import environments
from reconciler.spec.cache import SpecCache
from reconciler.spec.cross_check import cross_check
from reconciler.spec.document_checks import EXPANSION_LIMIT, document_record, semantic_issues
from reconciler.spec.encrypted import SecretFileRefused
from reconciler.spec.encrypted import check as check_encrypted
from reconciler.spec.facts import file_facts, packed
from reconciler.spec.files import YAML_SUFFIXES, SourceFile, files_from_directory, git_blob_id
from reconciler.spec.load_state import LoadState
from reconciler.spec.model import DesiredState
from reconciler.spec.policy import PolicyError
from reconciler.spec.tree import SourceTree
from reconciler.spec.tree_policy_checks import policy_problems, source_path_problems_in
from reconciler.spec.validate import (
    Issue,
    fast_errors,
    fast_message_issue,
    schema_issues,
    use_code_store,
)

if TYPE_CHECKING:
    from reconciler.spec.fast_path import document_lines
    from reconciler.spec.yaml_parse import FastLoader, StrictLoader

__all__ = [
    "EXPANSION_LIMIT",
    "YAML_SUFFIXES",
    "FastLoader",
    "SourceFile",
    "StrictLoader",
    "document_lines",
    "files_from_directory",
    "git_blob_id",
    "load_desired_state",
]

# What parses YAML (``fast_path``, ``yaml_parse``: PyYAML) is imported for a file the cache does
# not hold, and these names of it on first use (PEP 562): a warm load parses nothing
# (docs/performance.md, session 11).
_PARSING = {"FastLoader": "yaml_parse", "StrictLoader": "yaml_parse",
            "document_lines": "fast_path"}


def __getattr__(name: str) -> Any:
    if name in _PARSING:
        import importlib

        value = getattr(importlib.import_module(f"reconciler.spec.{_PARSING[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_desired_state(
    files: Sequence[SourceFile],
    *,
    commit: str | None = None,
    cache: SpecCache | None = None,
    root: str = "",
    tree: SourceTree | None = None,
) -> DesiredState:
    """Parse, validate and cross-check ``files``; raise ``SpecError`` with every problem found.
    With ``tree`` (the repository the files come from), ``source.path`` folders are checked
    too (``spec/tree.py``)."""
    if cache is not None:
        use_code_store(cache)  # the compiled validators are kept beside the records
    with _gc_paused():
        return _load_desired_state(files, commit=commit, cache=cache, root=root, tree=tree)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Loading allocates ~70 objects per document and frees almost none of them; the cyclic
    collector would rescan that growing heap again and again (15-20% of a cold load)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # What a load built lives as long as the desired state: moved to the oldest
            # generation unscanned (freeze + unfreeze), else the first young collection after
            # the pause scans all of it (~60 ms of a 10,000-Service warm load of ~165 ms).
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _resolved_issues(kind: str, document: dict[str, Any]) -> list[Issue]:
    """The checks of a written document, for one resolved from a shared definition."""
    message = fast_errors(kind, document)
    if message is not None:
        return schema_issues(kind, document) or [fast_message_issue(message)]
    return semantic_issues(kind, document)


def _load_desired_state(
    files: Sequence[SourceFile], *, commit: str | None, cache: SpecCache | None, root: str,
    tree: SourceTree | None = None,
) -> DesiredState:
    load = LoadState(files)
    for file_index, source in enumerate(files):
        if source.refused is not None:
            load.problems.append(SpecProblem(source.path, 1, 1, source.refused))
            continue
        entry = cache.get_entry(source.blob_id) if cache is not None else None
        if entry is not None:
            load.add_file(file_index, *entry)
            continue
        from reconciler.spec import fast_path

        data = source.read()
        records = fast_path.load_fast(data)
        if records is None:
            before = len(load.problems)
            records = load.load_slowly(file_index, data)
            clean = len(load.problems) == before
        else:
            clean = True
        facts = file_facts(records)
        if clean and cache is not None:
            # used packed too: the next load's records, and the documents freed now
            stored = packed(records)
            cache.put_entry(source.blob_id, stored, facts)
            load.add_file(file_index, stored, facts)
        else:
            load.add_file(file_index, records, facts)
    written = load.valid
    resolved = environments.resolve(written, [f.blob_id for f in files], cache,
                                    environments.Checks(_resolved_issues, document_record,
                                                        load.problem_at))
    load.valid, load.partial = resolved.valid, load.partial + resolved.partial
    load.add_resolved(written)
    load.problems.extend(resolved.problems)
    resources = cross_check(load)
    if tree is not None:
        source_path_problems_in(load, resources, tree)
    # The operator policy is checked on every load, cached files included (the cache holds
    # what the repo says, the policy what the operator allows now).
    refused = policy_problems(load, resources)
    if load.problems:
        raise SpecError(load.problems + refused)
    if refused:
        raise PolicyError(refused)
    unusable = [load.problem_at(*load.where[key][:2], path, message) for key, path, message
                in check_encrypted(resources.values(), tree.read if tree is not None else None)]
    if unusable:
        raise SecretFileRefused(unusable)
    notifiers = {k: resources.pop(k) for k in [k for k in resources if k[1] == "Notifier"]}
    return DesiredState(resources=resources, commit=commit, root=root, notifiers=notifiers)
