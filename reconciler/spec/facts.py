"""What the cross-file checks need of a file's documents, computed once per file content and
kept beside its records in the spec cache (``spec/cache.py``), so a warm load does not look
into every cached document again:

* which of its documents name per-host values (``{vars.NAME}``, ``spec/hostvars.py``): only
  those are checked against their Target's instances;
* the distinct (environment, check) pairs the operator policy judges in it (``spec/policy.py``
  ``facts``): the secret references and endpoints it names.

Both are functions of the file's bytes alone (the cache key). The *judgement* is not stored:
it depends on the policy file, the daemon's own credentials and, for secret files, on what
the path resolves to now; a load judges the distinct checks of the whole fleet (a few dozen,
however many documents name them) and only when one is forbidden goes through every document
to say where (``policy.violations``).
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence

from reconciler.spec.cache import Facts, PackedRecord, Record
from reconciler.spec.encrypted import may_reference_files
from reconciler.spec.environments import DEFINITION, ENVIRONMENT_KIND
from reconciler.spec.hostvars import uses_vars
from reconciler.spec.model import Links
from reconciler.spec.policy import Check
from reconciler.spec.policy import facts as policy_facts


def file_facts(records: Sequence[Record]) -> Facts:
    """(positions in ``records`` of the documents naming per-host values, the distinct
    (environment, policy check) pairs of all of them)."""
    with_vars: list[int] = []
    checks: dict[tuple[str, Check], None] = {}  # ordered, distinct
    for position, (_, _, kind, _, environment, _, spec, _) in enumerate(records):
        if kind == ENVIRONMENT_KIND or environment == DEFINITION:
            continue  # values and shared definitions: their resolved records are looked at
        if kind != "Target" and uses_vars(spec):
            with_vars.append(position)
        for _, check in policy_facts(kind, spec):
            checks[(environment, check)] = None
    return tuple(with_vars), tuple(checks)


def packed(records: Sequence[Record]) -> list[Record | PackedRecord]:
    """``records`` as a file's cache entry keeps them: each resource's labels and spec
    marshalled apart, with what every load reads of them (``model.Links``), so a warm load
    decodes only the documents something looks into (``model.PackedResource``). Environment
    and shared-definition records stay whole: they are resolved at each load."""
    out: list[Record | PackedRecord] = []
    # One object for equal kinds, environments, targets and top-level field lists of the
    # file: marshal writes a repeated object once (a reference after), so a warm load makes
    # one object for what 100 documents share instead of one each (~40 % fewer bytes
    # allocated for a file of similar Services, docs/performance.md, session 10).
    strings: dict[str, str] = {}
    field_lists: dict[tuple[str, ...], tuple[str, ...]] = {}
    same, same_fields = strings.setdefault, field_lists.setdefault
    for record in records:
        index, line, kind, name, environment, labels, spec, digest = record
        if kind == ENVIRONMENT_KIND or environment == DEFINITION:
            out.append(record)
            continue
        target = spec.get("target")
        fields = tuple(same(field, field) for field in spec)
        links: Links = (same(target, target) if isinstance(target, str) else None,
                        spec.get("dependsOn"), same_fields(fields, fields),
                        may_reference_files(spec))
        out.append((index, line, same(kind, kind), name, same(environment, environment),
                    digest, (marshal.dumps((labels, spec)), links)))
    return out
