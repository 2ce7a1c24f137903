"""Canary analysis against a real Prometheus scraping a real exporter on loopback.

One Prometheus per module (scrape_interval 1s, storage in a temp dir) scrapes a prometheus_client
exporter whose request counter (by service and status) a driver thread increments at a fixed
error rate per service, so each test picks its error rate by picking a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from reconciler.rollout.analysis import QueryError, render_query, run_analysis
from tests.helpers import free_port, need

pytestmark = pytest.mark.timeout(90)

# error rate of each service the driver feeds
ERROR_RATES = {"good": 0.01, "bad": 0.5}
ERROR_RATE = (
    'sum(rate(app_requests_total{service="{name}",status="500"}[5s]))'
    ' / sum(rate(app_requests_total{service="{name}"}[5s]))'
)


@dataclass
class Prom:
    url: str


def _query(url: str, promql: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    response.raise_for_status()
    return list(response.json()["data"]["result"])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    binary = shutil.which("prometheus")
    need(binary is not None,
         "prometheus is not installed (apt-get install -y --no-install-recommends prometheus)")
    assert binary is not None
    tmp = tmp_path_factory.mktemp("prometheus")

    registry = CollectorRegistry()
    requests = Counter("app_requests", "requests by status", ["service", "status"],
                       registry=registry)
    exporter, exporter_thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    exporter_port = exporter.server_address[1]
    stop = threading.Event()

    def drive() -> None:  # 100 requests/s per service, at its error rate
        while not stop.wait(0.1):
            for service, rate in ERROR_RATES.items():
                requests.labels(service, "500").inc(10 * rate)
                requests.labels(service, "200").inc(10 * (1 - rate))

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()

    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: app
    static_configs: [{{targets: ["127.0.0.1:{exporter_port}"]}}]
""")
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # ready, scraping, and enough samples for a 5s rate of both services (bounded wait)
        deadline = time.monotonic() + 45
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                ready = all(
                    len(_query(url, ERROR_RATE.replace("{name}", s))) == 1 for s in ERROR_RATES
                )
                if ready:
                    break
            assert time.monotonic() < deadline, (tmp / "prometheus.log").read_text()[-2000:]
            time.sleep(0.3)
        yield Prom(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        stop.set()
        driver.join(timeout=5)
        exporter.shutdown()
        exporter.server_close()
        exporter_thread.join(timeout=5)


def _vars(name: str) -> dict[str, str]:
    return {"name": name, "environment": "default", "revision": "abc123"}


def _analysis(*queries: dict, duration: str = "2s", interval: str = "1s",
              failure_limit: int | None = None) -> dict:
    spec: dict = {"duration": duration, "interval": interval, "queries": list(queries)}
    if failure_limit is not None:
        spec["failureLimit"] = failure_limit
    return spec


async def test_low_error_rate_passes(prometheus: Prom) -> None:
    result = await run_analysis(
        _analysis({"name": "error-rate", "query": ERROR_RATE, "max": 0.05}),
        prometheus_url=prometheus.url, variables=_vars("good"),
    )
    assert result.passed, result.message
    assert [m.name for m in result.measurements] == ["error-rate", "error-rate"]
    for m in result.measurements:
        assert m.passed and m.value is not None and 0.005 <= m.value <= 0.02, m
    assert "analysis passed: 2 measurement round(s)" in result.message
    assert "error-rate = 0.01" in result.message


async def test_high_error_rate_fails_early_with_the_value(prometheus: Prom) -> None:
    result = await run_analysis(
        _analysis({"name": "error-rate", "query": ERROR_RATE, "max": 0.05}, duration="5s"),
        prometheus_url=prometheus.url, variables=_vars("bad"),
    )
    assert not result.passed
    assert len(result.measurements) == 1  # stopped at the first failure (failureLimit 0)
    value = result.measurements[0].value
    assert value is not None and 0.45 <= value <= 0.55
    assert "analysis failed at measurement 1 of 5" in result.message
    assert f"error-rate = {value:.6g}, above max 0.05" in result.message


async def test_min_bound_and_scalar_result(prometheus: Prom) -> None:
    result = await run_analysis(
        _analysis({"name": "throughput", "query": 'scalar(sum(rate(app_requests_total'
                                                  '{service="{name}"}[5s])))', "min": 500},
                  duration="1s"),
        prometheus_url=prometheus.url, variables=_vars("good"),
    )
    assert not result.passed
    value = result.measurements[0].value
    assert value is not None and 50 <= value <= 150  # ~100 requests/s
    assert "below min 500" in result.message


async def test_empty_and_nan_fail_unless_allowed(prometheus: Prom) -> None:
    queries = {"empty result": 'sum(app_requests_total{service="{name}"})',
               "NaN": "vector(0) / vector(0)"}
    runs = [
        run_analysis(_analysis({"name": "q", "query": query, "max": 1, "allowEmpty": allow},
                               duration="1s"),
                     prometheus_url=prometheus.url, variables=_vars("nobody"))
        for query in queries.values() for allow in (False, True)
    ]
    results = await asyncio.gather(*runs)  # concurrently: one second in all
    for i, why in enumerate(queries):
        strict, lenient = results[2 * i], results[2 * i + 1]
        assert not strict.passed
        assert why in strict.message and "no data proves nothing" in strict.message
        assert lenient.passed, lenient.message
        assert lenient.measurements[0].value is None and "allowEmpty" in lenient.message


async def test_several_samples_fail_clearly(prometheus: Prom) -> None:
    result = await run_analysis(
        _analysis({"name": "raw", "query": 'app_requests_total{service="{name}"}', "max": 1e12},
                  duration="1s"),
        prometheus_url=prometheus.url, variables=_vars("good"),
    )
    assert not result.passed
    assert "2 samples, expected one" in result.message
    assert 'status="500"' in result.message and "sum(" in result.message


async def test_rejected_query_reports_prometheus_error(prometheus: Prom) -> None:
    result = await run_analysis(
        _analysis({"name": "broken", "query": "sum(rate(", "max": 1}, duration="1s"),
        prometheus_url=prometheus.url, variables=_vars("good"),
    )
    assert not result.passed
    assert "Prometheus rejected the query: bad_data" in result.message


async def test_prometheus_down_fails_honestly() -> None:
    url = f"http://user:s3cret@127.0.0.1:{free_port()}"
    result = await run_analysis(
        _analysis({"name": "error-rate", "query": ERROR_RATE, "max": 0.05}, duration="1s"),
        prometheus_url=url, variables=_vars("good"),
    )
    assert not result.passed
    message = result.measurements[0].message
    assert "Prometheus at http://***@127.0.0.1:" in message and "unreachable" in message
    assert "ConnectError" in message
    attempts = int(message.rsplit("(", 1)[1].split()[0])
    assert attempts >= 3  # retried with backoff within the interval
    assert "s3cret" not in result.message


async def test_failure_limit_tolerates_failed_measurements(prometheus: Prom) -> None:
    def flaky() -> Callable[[], Awaitable[tuple[bool, str]]]:
        calls = {"n": 0}

        async def health() -> tuple[bool, str]:
            calls["n"] += 1
            return (False, "503 from /healthz") if calls["n"] == 1 else (True, "200")

        return health

    spec = _analysis({"name": "error-rate", "query": ERROR_RATE, "max": 0.05},
                     duration="3s", failure_limit=1)
    tolerant, strict = await asyncio.gather(
        run_analysis(spec, prometheus_url=prometheus.url, variables=_vars("good"),
                     health=flaky()),
        run_analysis({**spec, "failureLimit": 0}, prometheus_url=prometheus.url,
                     variables=_vars("good"), health=flaky()),
    )
    assert tolerant.passed, tolerant.message
    assert len(tolerant.measurements) == 6
    assert "1 failure(s) tolerated" in tolerant.message

    assert not strict.passed
    assert "health: 503 from /healthz" in strict.message
    assert len(strict.measurements) == 2


async def test_should_stop_aborts() -> None:
    started = time.monotonic()

    async def health() -> tuple[bool, str]:
        return True, "ok"

    result = await run_analysis({"duration": "1m", "interval": "200ms"}, prometheus_url=None,
                                variables=_vars("good"), health=health,
                                should_stop=lambda: time.monotonic() - started > 0.5)
    assert not result.passed and result.aborted
    assert "analysis stopped after" in result.message
    assert 1 <= len(result.measurements) <= 4


async def test_queries_without_prometheus_fail() -> None:
    result = await run_analysis(_analysis({"name": "q", "query": "vector(1)", "max": 2}),
                                prometheus_url=None, variables=_vars("good"))
    assert not result.passed and "strategy.prometheus.url" in result.message


async def test_placeholder_values_cannot_change_the_query(prometheus: Prom) -> None:
    # unescaped, this name would turn the query into `... or vector(1000) or ...`
    evil = 'x"}) or vector(1000) or sum(app_requests_total{service="x'
    result = await run_analysis(
        _analysis({"name": "q", "query": 'sum(app_requests_total{service="{name}"})', "max": 1},
                  duration="1s"),
        prometheus_url=prometheus.url, variables=_vars(evil),
    )
    assert not result.passed
    assert "empty result" in result.message and "1000" not in result.message


async def test_render_query_round_trips_through_prometheus(prometheus: Prom) -> None:
    value = "a\"b'c\\d\ne\tf{g}"
    for template in ('label_replace(vector(1), "v", "{name}", "", "")',
                     "label_replace(vector(1), 'v', '{name}', '', '')"):
        promql = render_query(template, {"name": value})
        result = await asyncio.to_thread(_query, prometheus.url, promql)
        assert result[0]["metric"]["v"] == value, promql
    raw = render_query("label_replace(vector(1), `v`, `{name}`, ``, ``)", {"name": "r\\aw"})
    assert (await asyncio.to_thread(_query, prometheus.url, raw))[0]["metric"]["v"] == "r\\aw"


def test_render_query_rules() -> None:
    assert render_query("up{job=\"{name}\"} # {name} in a comment", {"name": "api"}) == \
        'up{job="api"} # {name} in a comment'
    assert render_query("{name}_requests_total", {"name": "api_v2"}) == "api_v2_requests_total"
    with pytest.raises(QueryError, match="outside a string literal"):
        render_query("{name}_requests_total", {"name": "api-v2"})
    with pytest.raises(QueryError, match="backtick"):
        render_query("x{a=`{name}`}", {"name": "a`b"})
    with pytest.raises(QueryError, match="no value is known"):
        render_query('x{r="{revision}"}', {"name": "api"})
    # label matchers that only look like placeholders are left alone
    assert render_query('x{name="a"}', {"name": "b"}) == 'x{name="a"}'
