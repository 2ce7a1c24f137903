"""OpenTelemetry tracing: reconcile → plan → rollout step → provider operation → DB query.

Usage (the daemon and CLI call ``setup_tracing`` once, at start-up)::

    setup_tracing("fraisier")
    with span("reconcile", commit=sha, trigger="webhook"):
        async with span("provider.deploy", resource=key, instance=instance.id):
            ...
    log.info("...", extra={"trace_id": current_trace_id()})  # or TraceLogFilter

Spans are exported over OTLP/HTTP only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, and only if the optional ``otlp`` extra is
installed. Without an exporter spans are still created, so log lines carry a trace id that ties
one reconcile pass together. The standard ``OTEL_*`` variables apply (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SDK_DISABLED``).

The current span lives in a contextvar: it follows ``await``, tasks and ``asyncio.to_thread``,
but not ``loop.run_in_executor`` (which does not copy the context), so open spans for work
handed to an executor on the event-loop side, around the ``await``.

Attribute values are never secrets by construction (resources hold secret *references* only);
as a second line of defence, attributes whose key looks like a credential are redacted.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("reconciler.observe.tracing")

TRACER_NAME = "reconciler"
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"secret|token|password|passwd|authorization|api[_-]?key|credential",
                         re.IGNORECASE)
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")

_lock = threading.Lock()
_provider: TracerProvider | None = None
# None until setup_tracing: spans are no-ops then, and OpenTelemetry is not even imported (it
# is a good part of a one-shot CLI command's start-up; only the daemon calls setup_tracing).
_tracer: trace.Tracer | None = None
_global_set = False

F = TypeVar("F", bound=Callable[..., Any])


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fraisier")
    except Exception:
        return "unknown"


def _otlp_exporter() -> SpanExporter | None:
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed; "
                    "spans are not exported (pip install 'fraisier[otlp]')")
        return None
    # Endpoint, headers, timeout and compression come from the OTEL_EXPORTER_OTLP_* variables.
    return cast("SpanExporter", OTLPSpanExporter())


def setup_tracing(service_name: str = "fraisier", *, exporter: SpanExporter | None = None) -> None:
    """Install the tracer provider (call once at start-up; a later call replaces it).

    ``exporter`` is for tests (e.g. ``InMemorySpanExporter``): it is fed synchronously. Without
    it, spans go to OTLP/HTTP when an endpoint variable is set, in batches off the event loop.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    global _provider, _tracer, _global_set
    with _lock:
        old = _provider
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            _provider, _tracer = None, trace.NoOpTracer()
        else:
            resource = Resource.create({
                SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service_name,
                SERVICE_VERSION: _version(),
            })
            provider = TracerProvider(resource=resource)
            if exporter is not None:
                provider.add_span_processor(SimpleSpanProcessor(exporter))
            else:
                otlp = _otlp_exporter()
                if otlp is not None:
                    provider.add_span_processor(BatchSpanProcessor(otlp))
            _provider = provider
            _tracer = provider.get_tracer(TRACER_NAME, _version())
            if not _global_set:
                # The global provider can be set only once per process; libraries with their
                # own OpenTelemetry instrumentation join our traces through it.
                trace.set_tracer_provider(provider)
                _global_set = True
    if old is not None:
        old.shutdown()


def shutdown_tracing() -> None:
    """Flush pending spans and stop exporting (call at daemon exit)."""
    global _provider, _tracer
    with _lock:
        provider, _provider = _provider, None
        if _tracer is not None:  # OpenTelemetry is loaded: no-op tracer, as after a disabled setup
            from opentelemetry import trace

            _tracer = trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


def tracing_enabled() -> bool:
    return _provider is not None


def _attribute(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return str(value)  # named tuples (ResourceKey) read best as their own str()
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = [v if isinstance(v, str | bool | int | float) else str(v) for v in value]
        # OpenTelemetry wants homogeneous arrays; mixed ones become strings.
        if len({type(v) for v in items}) > 1:
            items = [str(v) for v in items]
        return items
    return str(value)


def clean_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Span attributes as OpenTelemetry accepts them: None dropped, objects (ResourceKey, Path)
    as strings, credential-looking keys redacted."""
    return {k: _attribute(k, v) for k, v in attributes.items() if v is not None}


class _Unrecorded:
    """What ``with span(...) as s`` gives before ``setup_tracing``: a span that records nothing
    (as OpenTelemetry's ``INVALID_SPAN``), made without importing OpenTelemetry."""

    def is_recording(self) -> bool:
        return False

    def get_span_context(self) -> trace.SpanContext:
        from opentelemetry.trace import INVALID_SPAN_CONTEXT

        return INVALID_SPAN_CONTEXT

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None,
                  timestamp: int | None = None) -> None:
        return None

    def update_name(self, name: str) -> None:
        return None

    def set_status(self, status: Any, description: str | None = None) -> None:
        return None

    def record_exception(self, exception: BaseException, *args: Any, **kwargs: Any) -> None:
        return None

    def end(self, end_time: int | None = None) -> None:
        return None


_UNRECORDED = _Unrecorded()


class span(AbstractContextManager["trace.Span"]):  # lower-case: it reads like a function call
    """``with span("name", key=value) as s:`` or ``async with span(...)``.

    The span is the current one inside the block (contextvars, so it follows ``await`` and is
    inherited by tasks created inside). An exception marks it as an error, is recorded as an
    event, and propagates.
    """

    def __init__(self, name: str, **attributes: Any) -> None:
        self._name = name
        self._attributes = clean_attributes(attributes)
        self._cm: AbstractContextManager[trace.Span] | None = None

    def __enter__(self) -> trace.Span:
        if _tracer is None:  # not set up: nothing to record, nothing to import
            return cast("trace.Span", _UNRECORDED)
        self._cm = _tracer.start_as_current_span(self._name, attributes=self._attributes)
        return self._cm.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        cm, self._cm = self._cm, None
        return None if cm is None else cm.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> trace.Span:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        return self.__exit__(exc_type, exc, tb)


def traced(name: str, **attributes: Any) -> Callable[[F], F]:
    """Decorator: run a (sync or async) function inside ``span(name, **attributes)``."""

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with span(name, **attributes):
                    return await fn(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with span(name, **attributes):
                return fn(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def _current_span_context() -> trace.SpanContext | None:
    # No span can be current while OpenTelemetry is not even loaded (no setup_tracing, no
    # instrumented library): then log records need no lookup, and no import.
    otel = sys.modules.get("opentelemetry.trace")
    if otel is None:
        return None
    context: trace.SpanContext = otel.get_current_span().get_span_context()
    return context if context.is_valid else None


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits (what tracing backends show), or None."""
    context = _current_span_context()
    if context is None:
        return None
    from opentelemetry.trace import format_trace_id

    return format_trace_id(context.trace_id)


def current_span_id() -> str | None:
    context = _current_span_context()
    if context is None:
        return None
    from opentelemetry.trace import format_span_id

    return format_span_id(context.span_id)


class TraceLogFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` to log records made inside a span (a handler filter:
    ``handler.addFilter(TraceLogFilter())``); records outside spans are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        trace_id = current_trace_id()
        if trace_id is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id
            record.span_id = current_span_id()
        return True

