"""The state of one load of the desired state (``LoadState``): the files, their parses with
marks (kept to locate problems found later), every problem, the valid records and where each
resource is defined; ``load_slowly`` is the slow path of one file (parse with marks, check
each document) and ``problem_at`` locates a problem found across files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from reconciler.errors import SpecProblem
from reconciler.spec.cache import Facts, PackedRecord, Record
from reconciler.spec.document_checks import Identity, check_document
from reconciler.spec.facts import file_facts
from reconciler.spec.files import SourceFile
from reconciler.spec.policy import Check
from reconciler.spec.validate import Path_

if TYPE_CHECKING:
    # ``yaml_parse`` (PyYAML) is imported where a file is parsed with marks: a warm load, every
    # file's records cached and no problem to locate, parses none (docs/performance.md,
    # session 11)
    from reconciler.spec.yaml_parse import Parsed

# Inside the cross-file checks identities are plain (environment, kind, name) tuples: hashing
# them is several times cheaper than hashing ResourceKey, and 10,000 resources hash a lot.
Key = tuple[str, str, str]


class LoadState:
    """State of one ``load_desired_state`` call."""

    def __init__(self, files: Sequence[SourceFile]) -> None:
        self.files = files
        self.parsed: dict[int, Parsed] = {}
        self.problems: list[SpecProblem] = []
        # (file index, record) of every valid document, in file order; packed as the spec
        # cache keeps them (spec/facts.py) or whole (just parsed, resolved, not cacheable)
        self.valid: list[tuple[int, Record | PackedRecord]] = []
        self.partial: list[Identity] = []
        # (environment, kind, name) -> (file index, document index, line) of each resource
        self.where: dict[Key, tuple[int, int, int]] = {}
        # from each file's facts (spec/facts.py): who names per-host values, what the policy
        # judges (the distinct (environment, check) pairs of the fleet)
        self.uses_vars: set[Key] = set()
        self.checks: set[tuple[str, Check]] = set()

    def add_file(self, file_index: int, records: Sequence[Record | PackedRecord],
                 facts: Facts) -> None:
        """The valid records of one file and their facts (from the cache or just computed)."""
        with_vars, checks = facts
        self.valid.extend((file_index, record) for record in records)
        self.uses_vars.update((records[i][4], records[i][2], records[i][3]) for i in with_vars)
        self.checks.update(checks)

    def add_resolved(self, written: list[tuple[int, Record | PackedRecord]]) -> None:
        """The facts of the records that shared definitions resolved into (``self.valid`` now;
        ``written``: the records as the files hold them): their values are substituted, so
        they are looked at here, not taken from the files' facts."""
        if self.valid is written:
            return
        passed = {id(record) for _, record in written}
        # resolved records are whole (only files' records are packed, spec/facts.py)
        fresh = [cast(Record, record) for _, record in self.valid if id(record) not in passed]
        if fresh:
            with_vars, checks = file_facts(fresh)
            self.uses_vars.update((fresh[i][4], fresh[i][2], fresh[i][3]) for i in with_vars)
            self.checks.update(checks)

    def parse(self, file_index: int, data: bytes | None = None) -> Parsed:
        parsed = self.parsed.get(file_index)
        if parsed is None:
            from reconciler.spec import yaml_parse

            source = self.files[file_index]
            data = source.read() if data is None else data
            parsed = yaml_parse.parse_with_marks(source.path, data)
            self.parsed[file_index] = parsed
        return parsed

    def load_slowly(self, file_index: int, data: bytes) -> list[Record]:
        from reconciler.spec.yaml_parse import UNBUILT

        path = self.files[file_index].path
        parsed = self.parse(file_index, data)
        records: list[Record] = []
        if parsed.problem is not None:
            self.problems.append(parsed.problem)
        for index, (node, value) in enumerate(parsed.documents):
            if value is None or value is UNBUILT:
                continue
            record, identity, problems = check_document(path, index, node, value)
            self.problems.extend(problems)
            if record is not None:
                records.append(record)
            elif identity is not None:
                self.partial.append(identity)
        return records

    def problem_at(
        self, file_index: int, index: int, path: Path_, message: str, at_key: bool = False
    ) -> SpecProblem:
        """A cross-file problem, located by parsing that one file with marks."""
        from reconciler.spec.yaml_parse import node_position

        source = self.files[file_index]
        documents = self.parse(file_index).documents
        if index < len(documents):
            line, col = node_position(documents[index][0], path, at_key)
        else:  # the file changed under us; still report the problem
            line, col = 1, 1
        return SpecProblem(source.path, line, col, message)
