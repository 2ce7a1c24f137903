"""The fast path of the loader: one ``yaml.load_all`` pass with ``FastLoader``, the compiled
validator of each kind, a text scan for the line where each document starts
(``document_lines``) and a record per document. ``load_fast`` returns None at the first doubt
(anything invalid, unusual or not locatable by the scan); the slow path then reports it.
"""

from __future__ import annotations

import re

import yaml

from reconciler.spec import environments
from reconciler.spec.cache import Record
from reconciler.spec.document_checks import (
    control_issues,
    document_record,
    expands_beyond,
    semantic_issues,
)
from reconciler.spec.validate import API_VERSION, KIND_SCHEMAS, fast_errors
from reconciler.spec.yaml_parse import FastLoader

_MARKER_TOKENS = (b"---", b"...")
_MARKER_END = frozenset(b" \t\r\n")
_CONTENT = re.compile(rb"^[ \t]*[^ \t\r\n#]", re.M)
_ODD_LINE_BREAKS = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")  # NEL, LS, PS: YAML 1.1 breaks


def document_lines(data: bytes, count: int) -> list[int] | None:
    """1-based line where each document's content starts (the line compose would mark), found
    by scanning the text; None when the text has constructs the scan does not model (directives,
    unusual line breaks, byte order marks, UTF-16) or when the scan disagrees with ``count``."""
    if count == 0:
        return []
    if (
        data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf", b"%"))
        or b"\n%" in data
        or (b"\r" in data and data.count(b"\r") != data.count(b"\r\n"))
        or any(odd in data for odd in _ODD_LINE_BREAKS)
    ):
        return None
    lines: list[int] = []
    line_at = _LineCounter(data)
    is_open = False
    content_line: int | None = None
    marker_line = 1

    def content_in(start: int, end: int) -> None:
        nonlocal is_open, content_line, marker_line
        if content_line is not None:
            return
        match = _CONTENT.search(data, start, end)
        if match is None:
            return
        content_line = line_at(match.start())
        if not is_open:
            is_open, marker_line = True, content_line

    def close() -> None:
        nonlocal is_open, content_line
        if is_open:
            lines.append(content_line if content_line is not None else marker_line)
        is_open, content_line = False, None

    position = 0
    for start, token in _markers(data):
        content_in(position, start)
        close()
        end_of_line = data.find(b"\n", start + 3)
        end_of_line = len(data) if end_of_line < 0 else end_of_line
        if token == b"---":
            is_open, marker_line = True, line_at(start)
            rest = data[start + 3 : end_of_line].strip()
            if rest and not rest.startswith(b"#"):
                content_line = marker_line
        position = end_of_line
    content_in(position, len(data))
    close()
    return lines if len(lines) == count else None


def _markers(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, token) of each document marker: ``---`` or ``...`` at the start of a line,
    followed by a blank or the end of the text (bytes.find runs far faster than a ^-regex)."""
    found: list[tuple[int, bytes]] = []
    size = len(data)
    for token in _MARKER_TOKENS:
        needle = b"\n" + token
        starts = [0] if data.startswith(token) else []
        position = data.find(needle)
        while starts or position >= 0:
            if starts:
                start = starts.pop()
            else:
                start = position + 1
                position = data.find(needle, start + 3)
            after = start + 3
            if after >= size or data[after] in _MARKER_END:
                found.append((start, token))
    found.sort()
    return found


class _LineCounter:
    """Line number of increasing byte offsets, counting only the new part each time."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0
        self.line = 1

    def __call__(self, offset: int) -> int:
        if offset < self.offset:
            self.offset, self.line = 0, 1
        self.line += self.data.count(b"\n", self.offset, offset)
        self.offset = offset
        return self.line



# are not. Scanning with bytes.find visits only the asterisks (a regex costs 7% of a load).
_BEFORE_ALIAS = frozenset(b" \t\r\n[{,:")
_NOT_ALIAS_NAME = frozenset(b" \t\r\n]},*/'\"")


def _may_have_aliases(data: bytes) -> bool:
    position = data.find(b"*")
    while position >= 0:
        after = position + 1
        if (
            (position == 0 or data[position - 1] in _BEFORE_ALIAS)
            and after < len(data)
            and data[after] not in _NOT_ALIAS_NAME
        ):
            return True
        position = data.find(b"*", after)
    return False




def load_fast(data: bytes) -> list[Record] | None:
    """Records of every document of a file that is entirely valid; None at the first doubt."""
    try:
        documents = list(yaml.load_all(data, Loader=FastLoader))
    except Exception:
        # anything the loader can raise (syntax, bad timestamps, nesting): the slow path
        # parses again and reports it with its location
        return None
    lines = document_lines(data, len(documents))
    if lines is None:
        return None
    if _may_have_aliases(data) and any(expands_beyond(d) for d in documents):
        return None
    if b"\\" in data and any(control_issues(d) for d in documents):
        return None  # control characters only come from escapes: the slow path locates them
    records: list[Record] = []
    for index, (document, line) in enumerate(zip(documents, lines, strict=True)):
        if document is None:
            continue
        if type(document) is not dict:
            return None
        kind = document.get("kind")
        if document.get("apiVersion") != API_VERSION or not isinstance(kind, str):
            return None
        if kind in KIND_SCHEMAS and environments.is_definition(document):
            if environments.definition_issues(kind, document, thorough=False):
                return None
            record = environments.definition_record(index, line, kind, document)
            if record is None:
                return None
            records.append(record)
            continue
        if kind not in KIND_SCHEMAS or fast_errors(kind, document) is not None:
            return None
        if semantic_issues(kind, document):
            return None
        record = document_record(index, line, kind, document)
        if record is None:
            return None
        records.append(record)
    return records
