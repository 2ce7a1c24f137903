from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from reconciler.observe import tracing


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing set up with the in-memory exporter; torn down after the test."""
    for name in ("OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", *tracing.ENDPOINT_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    exporter = InMemorySpanExporter()
    tracing.setup_tracing("fraisier-test", exporter=exporter)
    yield exporter
    tracing.shutdown_tracing()
