"""reconciler.observe.tracing with the SDK's in-memory exporter, and OTLP/HTTP export to a real
loopback HTTP server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from reconciler.errors import ReconcilerError
from reconciler.observe import tracing
from reconciler.observe.logging import JSONFormatter
from reconciler.observe.tracing import (
    REDACTED,
    TraceLogFilter,
    current_trace_id,
    setup_tracing,
    shutdown_tracing,
    span,
    traced,
)
from reconciler.spec.model import ResourceKey


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    names = [s.name for s in finished]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in finished}


def parent_of(s: ReadableSpan) -> int | None:
    return s.parent.span_id if s.parent is not None else None


def test_nested_sync_spans_form_one_trace(spans: InMemorySpanExporter) -> None:
    key = ResourceKey("prod", "Service", "api")
    with span("reconcile", commit="abc123", trigger="poll") as root:
        assert root.is_recording()
        with span("plan"):
            pass
        with span("rollout.step", resource=key, step=1):
            with span("provider.deploy", provider="bare_metal", instance="local:0"):
                with span("db.query", operation="start_step"):
                    pass
    got = by_name(spans)
    assert set(got) == {"reconcile", "plan", "rollout.step", "provider.deploy", "db.query"}
    root_ctx = got["reconcile"].context
    assert root_ctx is not None
    assert {s.context.trace_id for s in got.values() if s.context} == {root_ctx.trace_id}
    assert got["reconcile"].parent is None
    assert parent_of(got["plan"]) == root_ctx.span_id
    step = got["rollout.step"]
    assert parent_of(step) == root_ctx.span_id
    assert step.context is not None
    assert parent_of(got["provider.deploy"]) == step.context.span_id
    deploy = got["provider.deploy"].context
    assert deploy is not None
    assert parent_of(got["db.query"]) == deploy.span_id
    assert dict(got["reconcile"].attributes or {}) == {"commit": "abc123", "trigger": "poll"}
    assert dict(step.attributes or {}) == {"resource": "prod/Service/api", "step": 1}
    resource = got["reconcile"].resource.attributes
    assert resource["service.name"] == "fraisier-test"


async def test_async_spans_follow_awaits_and_tasks(spans: InMemorySpanExporter) -> None:
    async def deploy(name: str) -> str | None:
        async with span(f"provider.deploy.{name}", instance=name):
            await asyncio.sleep(0.01)
            async with span(f"db.query.{name}"):
                await asyncio.sleep(0)
            return current_trace_id()

    async def one_pass(tag: str) -> tuple[str | None, list[str | None]]:
        async with span(f"reconcile.{tag}"):
            outer = current_trace_id()
            inner = await asyncio.gather(deploy(f"{tag}1"), deploy(f"{tag}2"))
            return outer, list(inner)

    (a_trace, a_inner), (b_trace, b_inner) = await asyncio.gather(one_pass("a"), one_pass("b"))
    assert a_trace and b_trace and a_trace != b_trace
    assert a_inner == [a_trace, a_trace]
    assert b_inner == [b_trace, b_trace]
    got = by_name(spans)
    for tag in ("a", "b"):
        root = got[f"reconcile.{tag}"].context
        assert root is not None
        for n in (1, 2):
            deploy_span = got[f"provider.deploy.{tag}{n}"]
            assert parent_of(deploy_span) == root.span_id
            assert deploy_span.context is not None
            assert parent_of(got[f"db.query.{tag}{n}"]) == deploy_span.context.span_id
    assert current_trace_id() is None


def test_exception_marks_span_failed_and_propagates(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ReconcilerError), span("provider.deploy", provider="bare_metal"):
        raise ReconcilerError("health check failed on local:0")
    failed = by_name(spans)["provider.deploy"]
    assert failed.status.status_code is StatusCode.ERROR
    events = [e for e in failed.events if e.name == "exception"]
    assert len(events) == 1
    assert "health check failed" in str((events[0].attributes or {})["exception.message"])


async def test_cancelled_task_still_ends_its_span(spans: InMemorySpanExporter) -> None:
    async def slow() -> None:
        async with span("rollout.step"):
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    got = by_name(spans)["rollout.step"]
    assert got.end_time is not None


def test_trace_id_only_inside_a_span(spans: InMemorySpanExporter) -> None:
    assert current_trace_id() is None
    with span("reconcile") as s:
        trace_id = current_trace_id()
        assert trace_id is not None and len(trace_id) == 32
        assert int(trace_id, 16) == s.get_span_context().trace_id
    assert current_trace_id() is None


def test_attributes_are_cleaned_and_credentials_redacted(spans: InMemorySpanExporter) -> None:
    with span("webhook", provider="github", secret="s3cr3t-value", api_token="tok-value",
              Authorization="Bearer abc", password="pw", delivery=None, path=Path("/srv/app"),
              instances=["a", "b"], mixed=[1, "x"], count=3, ok=True):
        pass
    attrs = dict(by_name(spans)["webhook"].attributes or {})
    assert attrs["provider"] == "github"
    for key in ("secret", "api_token", "Authorization", "password"):
        assert attrs[key] == REDACTED
    assert "delivery" not in attrs
    assert attrs["path"] == "/srv/app"
    assert list(attrs["instances"]) == ["a", "b"]
    assert list(attrs["mixed"]) == ["1", "x"]
    assert attrs["count"] == 3 and attrs["ok"] is True
    everything = json.dumps({k: str(v) for k, v in attrs.items()})
    for secret in ("s3cr3t-value", "tok-value", "Bearer abc"):
        assert secret not in everything


async def test_traced_decorator_sync_and_async(spans: InMemorySpanExporter) -> None:
    @traced("db.query", backend="sqlite")
    def query(x: int) -> int:
        return x * 2

    @traced("provider.observe")
    async def observe(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    with span("reconcile"):
        assert query(2) == 4
        assert await observe(2) == 3
    got = by_name(spans)
    root = got["reconcile"].context
    assert root is not None
    assert parent_of(got["db.query"]) == root.span_id
    assert parent_of(got["provider.observe"]) == root.span_id
    assert dict(got["db.query"].attributes or {}) == {"backend": "sqlite"}
    assert query.__name__ == "query" and observe.__name__ == "observe"


def test_log_filter_puts_trace_id_in_json_lines(spans: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(TraceLogFilter())
    logger = logging.getLogger("tests.observe.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("outside")
        with span("reconcile"):
            trace_id = current_trace_id()
            logger.info("inside", extra={"resource": "prod/Service/api"})
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == trace_id
    assert len(inside["span_id"]) == 16
    assert inside["resource"] == "prod/Service/api"


def test_disabled_sdk_gives_no_op_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    exporter = InMemorySpanExporter()
    setup_tracing("fraisier-test", exporter=exporter)
    try:
        assert not tracing.tracing_enabled()
        with span("reconcile") as s:
            assert not s.is_recording()
            assert current_trace_id() is None
        assert exporter.get_finished_spans() == ()
    finally:
        shutdown_tracing()


def test_without_setup_spans_are_no_ops() -> None:
    shutdown_tracing()
    with span("reconcile") as s:
        assert not s.is_recording()
    assert current_trace_id() is None


def test_service_name_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "fraisier-prod")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    exporter = InMemorySpanExporter()
    setup_tracing("fraisier", exporter=exporter)
    try:
        with span("reconcile"):
            pass
        (finished,) = exporter.get_finished_spans()
        assert finished.resource.attributes["service.name"] == "fraisier-prod"
    finally:
        shutdown_tracing()


# -- OTLP/HTTP to a real loopback collector -------------------------------------------------------
class Collector:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.got = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.requests.append((self.path, self.headers.get("Content-Type", ""),
                                           body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()
                collector.got.set()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.mark.timeout(30)
def test_otlp_export_when_endpoint_is_set(collector: Collector,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                        reason="optional extra fraisier[otlp] not installed")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    setup_tracing("fraisier-otlp")
    try:
        with span("reconcile", commit="c0ffee"), span("plan"):
            trace_id = current_trace_id()
    finally:
        shutdown_tracing()  # flushes the batch processor
    assert collector.got.wait(10)
    path, content_type, body = collector.requests[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    names, trace_ids, services = set(), set(), set()
    for resource_spans in request.resource_spans:
        for attr in resource_spans.resource.attributes:
            if attr.key == "service.name":
                services.add(attr.value.string_value)
        for scope in resource_spans.scope_spans:
            for s in scope.spans:
                names.add(s.name)
                trace_ids.add(s.trace_id.hex())
    assert names == {"reconcile", "plan"}
    assert trace_ids == {trace_id}
    assert services == {"fraisier-otlp"}


def test_no_exporter_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing._otlp_exporter() is None
