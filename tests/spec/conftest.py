"""Fixtures for the spec-stage tests: the test fleets under tests/data/ and small builders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.spec import cache as spec_cache
from reconciler.spec import validate
from reconciler.spec.loader import SourceFile, git_blob_id

DATA = Path(__file__).resolve().parents[1] / "data"
VALID = DATA / "valid"
INVALID = DATA / "invalid"


def source(path: str, text: str | bytes) -> SourceFile:
    """An in-memory SourceFile, as the git source would build one."""
    data = text.encode() if isinstance(text, str) else text
    return SourceFile(path, git_blob_id(data), lambda: data)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def fresh_schema_caches() -> Iterator[None]:
    """Forget compiled validators and versions before and after a test that swaps schemas."""
    validate.reload_schemas()
    spec_cache.cache_version.cache_clear()
    yield
    validate.reload_schemas()
    spec_cache.cache_version.cache_clear()
