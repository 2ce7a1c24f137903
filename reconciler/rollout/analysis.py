"""Canary analysis: health plus Prometheus queries, measured every interval for a duration.

``strategy.steps[].analysis`` (``schemas/common.json#/$defs/strategy``)::

    analysis:
      duration: 2m          # how long the analysis runs
      interval: 10s         # time between measurements (default 5s)
      failureLimit: 1       # failed measurements tolerated (default 0)
      queries:
        - name: error-rate
          query: sum(rate(http_requests_total{service="{name}",code=~"5.."}[1m]))
                 / sum(rate(http_requests_total{service="{name}"}[1m]))
          max: 0.05

Measurements are taken at the end of each interval (the canary gets that long to show its
behaviour), the last one at ``duration``. Each round measures health (when the caller passes a
probe) and every query; each failed measurement counts, and once more than ``failureLimit`` have
failed the analysis stops and fails. A query must return exactly one sample (an instant vector of
one series, or a scalar): several samples fail with the series listed, none (or NaN, e.g. 0/0 when
there was no traffic) fails unless ``allowEmpty`` — no data proves nothing. An unreachable
Prometheus is retried with jittered backoff within the interval; if it stays unreachable the
measurement fails and says so.

``{name}``, ``{environment}`` and ``{revision}`` in a query are replaced by the caller's
``variables``, escaped for the PromQL string literal they stand in (double-quoted, single-quoted
or backtick raw string). Outside a string literal only label-safe values
(``[A-Za-z0-9_:]``) are accepted, so a value can never change the query's structure. Inside a
regex matcher (``=~``) the value is matched as a regex, as written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from reconciler.backoff import equal_jitter, exponential
from reconciler.observe.redact import redact
from reconciler.spec.durations import format_duration, parse_duration

log = logging.getLogger("reconciler.rollout.analysis")

DEFAULT_INTERVAL_S = 5.0
# {slot}: the slot a weighted canary's new revision runs in (apps label metrics with it)
PLACEHOLDERS = ("name", "environment", "revision", "slot")
_MAX_ATTEMPT_TIMEOUT_S = 10.0
_MIN_QUERY_BUDGET_S = 2.0
_STOP_POLL_S = 0.1
_BARE_SAFE = re.compile(r"^[A-Za-z0-9_:]+$")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

HealthProbe = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class Measurement:
    """One health check or query evaluation. ``value`` is None for health and for no data."""

    name: str
    value: float | None
    passed: bool
    message: str


@dataclass
class AnalysisResult:
    passed: bool
    message: str
    measurements: list[Measurement] = field(default_factory=list)
    # True when should_stop() ended the analysis before its duration (passed is then False)
    aborted: bool = False


class QueryError(ValueError):
    """A query cannot be rendered (bad placeholder use); fails the measurement."""


# --- placeholders --------------------------------------------------------------------------


def _escape(value: str, quote: str) -> str:
    """``value`` as the content of a PromQL string literal opened with ``quote``.

    PromQL strings follow Go's escapes, and inside "..." or '...' only the opening quote may be
    escaped (``\\'`` in a double-quoted string is an error), so the escaping depends on the quote.
    """
    if quote == "`":
        if "`" in value:
            raise QueryError(f"{value!r} contains a backtick and cannot stand in a `raw string`")
        return value
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + quote)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def render_query(query: str, variables: Mapping[str, str]) -> str:
    """``query`` with ``{name}``, ``{environment}``, ``{revision}`` (and ``{slot}`` for a weighted
    canary) replaced (see module doc)."""
    out: list[str] = []
    quote: str | None = None  # the quote of the string literal we are in, if any
    i = 0
    while i < len(query):
        ch = query[i]
        match = _PLACEHOLDER.match(query, i) if ch == "{" else None
        if match:
            key = match.group(1)
            if key not in variables:
                raise QueryError(f"{{{key}}} is used but no value is known for it")
            value = str(variables[key])
            if quote is None:
                if not _BARE_SAFE.match(value):
                    raise QueryError(
                        f"{{{key}}} outside a string literal must be a plain identifier, got "
                        f"{value!r}; quote it in the query"
                    )
                out.append(value)
            else:
                out.append(_escape(value, quote))
            i = match.end()
            continue
        out.append(ch)
        if quote is None:
            if ch in "\"'`":
                quote = ch
            elif ch == "#":  # a comment runs to the end of the line
                end = query.find("\n", i)
                end = len(query) if end < 0 else end
                out.append(query[i + 1:end])
                i = end
                continue
        elif ch == "\\" and quote != "`" and i + 1 < len(query):
            out.append(query[i + 1])
            i += 2
            continue
        elif ch == quote:
            quote = None
        i += 1
    return "".join(out)


# --- Prometheus ----------------------------------------------------------------------------


class _Unreachable(Exception):
    pass


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _labels(metric: Mapping[str, str]) -> str:
    name = metric.get("__name__", "")
    rest = ",".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__")
    return f"{name}{{{rest}}}"


class _Prometheus:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.shown = redact(url)
        self.url = url

    async def query(self, promql: str, deadline: float) -> dict[str, Any]:
        """The ``data`` of a successful instant query. Retries (jittered exponential backoff)
        while Prometheus is unreachable or answers 5xx, until ``deadline``; then _Unreachable.
        A rejected query (4xx / status error) raises ValueError with Prometheus's message."""
        attempt = 0
        last = ""
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Unreachable(f"{last} ({attempt - 1} attempts)")
            try:
                response = await self.client.get(
                    self.endpoint, params={"query": promql},
                    timeout=min(remaining, _MAX_ATTEMPT_TIMEOUT_S),
                )
            except httpx.TransportError as exc:
                last = (redact(f"{type(exc).__name__}: {exc}", urls=(self.url,)) if str(exc)
                        else type(exc).__name__)
            else:
                if response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {_error_of(response)}"
                else:
                    try:
                        body = response.json()
                    except ValueError:
                        raise ValueError(
                            f"HTTP {response.status_code} and no JSON from {self.shown}"
                        ) from None
                    if response.status_code != 200 or body.get("status") != "success":
                        raise ValueError(f"Prometheus rejected the query: {_error_of(response)}")
                    data = body.get("data")
                    if not isinstance(data, dict):
                        raise ValueError("Prometheus answered without data")
                    return data
            backoff = equal_jitter(exponential(attempt, first=0.1, cap=2.0))
            await asyncio.sleep(max(0.0, min(backoff, deadline - time.monotonic())))


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("error"):
        kind = body.get("errorType")
        return f"{kind}: {body['error']}" if kind else str(body["error"])
    return str(body)[:300]


def _single_value(data: Mapping[str, Any]) -> tuple[float | None, str]:
    """(value, "") for one sample; (None, why) for none; raises ValueError for the rest."""
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        return float(result[1]), ""  # type: ignore[index]
    if kind == "vector":
        samples = list(result or [])
        if not samples:
            return None, "empty result (no series matched)"
        if len(samples) > 1:
            shown = ", ".join(
                f"{_labels(s.get('metric', {}))}={s['value'][1]}" for s in samples[:5]
            )
            more = f" and {len(samples) - 5} more" if len(samples) > 5 else ""
            raise ValueError(
                f"{len(samples)} samples, expected one: {shown}{more} "
                "(aggregate them, e.g. with sum(...))"
            )
        return float(samples[0]["value"][1]), ""
    raise ValueError(f"result type {kind!r}, expected an instant vector or a scalar")


# --- the analysis --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Query:
    name: str
    query: str
    max: float | None
    min: float | None
    allow_empty: bool


def _judge(q: _Query, value: float | None, why_empty: str) -> Measurement:
    if value is None or math.isnan(value):
        why = why_empty or "NaN (no data, e.g. 0/0 without traffic)"
        if q.allow_empty:
            return Measurement(q.name, None, True, f"{q.name}: {why}; allowed (allowEmpty)")
        return Measurement(q.name, None, False,
                           f"{q.name}: {why}; no data proves nothing (set allowEmpty to accept)")
    bounds = []
    if q.min is not None:
        bounds.append(f"min {_fmt(q.min)}")
    if q.max is not None:
        bounds.append(f"max {_fmt(q.max)}")
    if q.max is not None and value > q.max:
        return Measurement(q.name, value, False,
                           f"{q.name} = {_fmt(value)}, above max {_fmt(q.max)}")
    if q.min is not None and value < q.min:
        return Measurement(q.name, value, False,
                           f"{q.name} = {_fmt(value)}, below min {_fmt(q.min)}")
    return Measurement(q.name, value, True, f"{q.name} = {_fmt(value)} ({', '.join(bounds)})")


async def _measure_query(prom: _Prometheus | None, q: _Query, variables: Mapping[str, str],
                         deadline: float) -> Measurement:
    if prom is None:
        return Measurement(q.name, None, False,
                           f"{q.name}: no Prometheus configured (strategy.prometheus.url)")
    try:
        promql = render_query(q.query, variables)
    except QueryError as exc:
        return Measurement(q.name, None, False, f"{q.name}: {exc}")
    try:
        data = await prom.query(promql, deadline)
        value, why_empty = _single_value(data)
    except _Unreachable as exc:
        return Measurement(q.name, None, False,
                           f"{q.name}: Prometheus at {prom.shown} unreachable: {exc}")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return Measurement(q.name, None, False, f"{q.name}: {exc}")
    return _judge(q, value, why_empty)


async def _measure_health(health: HealthProbe, deadline: float) -> Measurement:
    try:
        async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
            ok, message = await health()
    except TimeoutError:
        return Measurement("health", None, False, "health: no answer within the interval")
    except Exception as exc:  # the probe's own failure is a failed measurement, not a crash
        return Measurement("health", None, False, f"health: {type(exc).__name__}: {exc}")
    return Measurement("health", None, bool(ok), f"health: {message}" if message else
                       ("health: ok" if ok else "health: failing"))


def _queries(spec: Mapping[str, Any]) -> list[_Query]:
    out = []
    for q in spec.get("queries") or []:
        out.append(_Query(
            name=str(q["name"]), query=str(q["query"]),
            max=float(q["max"]) if q.get("max") is not None else None,
            min=float(q["min"]) if q.get("min") is not None else None,
            allow_empty=bool(q.get("allowEmpty", False)),
        ))
    return out


async def _sleep_until(when: float, should_stop: Callable[[], bool] | None) -> bool:
    """Sleep until ``when`` (monotonic); True when should_stop() said stop meanwhile."""
    while True:
        if should_stop is not None and should_stop():
            return True
        remaining = when - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, _STOP_POLL_S) if should_stop else remaining)


def _summary(failed: Sequence[Measurement], limit: int = 3) -> str:
    shown = "; ".join(m.message for m in failed[-limit:])
    return shown + (f" (and {len(failed) - limit} more)" if len(failed) > limit else "")


async def run_analysis(
    spec: Mapping[str, Any],
    *,
    prometheus_url: str | None,
    variables: Mapping[str, str],
    health: HealthProbe | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AnalysisResult:
    """Run one ``analysis`` step (schema-valid ``spec``) and say whether the canary passed."""
    duration = parse_duration(str(spec["duration"]))
    interval = parse_duration(str(spec.get("interval") or "5s")) or DEFAULT_INTERVAL_S
    failure_limit = int(spec.get("failureLimit") or 0)
    queries = _queries(spec)
    if not queries and health is None:
        return AnalysisResult(False, "analysis has neither queries nor a health check: "
                                     "nothing to measure")
    if queries and not prometheus_url:
        return AnalysisResult(False, "analysis has queries but no Prometheus to ask "
                                     "(set strategy.prometheus.url)")
    # measurement times, relative to the start: every interval, the last one at `duration`
    rounds = max(1, math.ceil(duration / interval - 1e-9))
    offsets = [min(duration, interval * (k + 1)) for k in range(rounds)]
    measurements: list[Measurement] = []
    failed: list[Measurement] = []
    start = time.monotonic()
    async with httpx.AsyncClient(follow_redirects=False) as client:
        prom = _Prometheus(client, prometheus_url) if prometheus_url else None
        for k, offset in enumerate(offsets):
            if await _sleep_until(start + offset, should_stop):
                return AnalysisResult(
                    False,
                    f"analysis stopped after {k} of {rounds} measurements "
                    f"({len(failed)} failed)",
                    measurements, aborted=True,
                )
            # a round may use up to one interval (at least a couple of seconds) for retries
            deadline = time.monotonic() + max(interval, _MIN_QUERY_BUDGET_S)
            tasks: list[Awaitable[Measurement]] = []
            if health is not None:
                tasks.append(_measure_health(health, deadline))
            tasks += [_measure_query(prom, q, variables, deadline) for q in queries]
            round_ = list(await asyncio.gather(*tasks))
            measurements += round_
            for m in round_:
                log.info("analysis measurement", extra={
                    "measurement": m.name, "value": m.value, "passed": m.passed,
                    "round": k + 1, "rounds": rounds})
            failed += [m for m in round_ if not m.passed]
            if len(failed) > failure_limit:
                return AnalysisResult(
                    False,
                    f"analysis failed at measurement {k + 1} of {rounds}: {len(failed)} failed "
                    f"measurement(s), failureLimit {failure_limit}: {_summary(failed)}",
                    measurements,
                )
    took = format_duration(round(time.monotonic() - start, 1))
    latest = "; ".join(m.message for m in measurements[-(len(queries) + (health is not None)):])
    tolerated = f", {len(failed)} failure(s) tolerated" if failed else ""
    return AnalysisResult(
        True, f"analysis passed: {rounds} measurement round(s) over {took}{tolerated}; "
              f"last: {latest}",
        measurements,
    )
