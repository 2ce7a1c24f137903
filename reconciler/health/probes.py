"""One health probe: http, tcp or exec, bounded by the check's ``timeout``.

``check`` is a Service's ``health`` mapping (or any mapping with one or more of ``http``, ``tcp``,
``exec`` and an optional ``timeout``). When several probe kinds are present, all must pass.

http: ``url`` with ``{host}`` replaced by the instance address and ``{vars.NAME}`` by the
instance's own value (``Instance.vars``; also in tcp ``host``/``port`` and exec ``command``).
``expectStatus`` is one status code or a list of them; when it is unset any 2xx passes
(redirects are not followed, so a 3xx fails: a health endpoint that redirects is usually a
login page). ``bodyContains`` is an optional substring of the body.
tcp: connect to ``host`` (default: the instance address; ``{host}`` is replaced too) and ``port``.
exec: run ``command`` (argv) through the given runner (default: this machine) in ``cwd`` — the
release's working directory, ``InstanceState.working_dir`` — and exit 0 passes. Which runner is
the provider's declared ``Capabilities.exec_probes`` (``contract.probe_site``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ProviderError
from reconciler.observe.redact import redact
from reconciler.providers.contract import CommandRunner, Instance
from reconciler.spec.durations import to_seconds
from reconciler.spec.hostvars import substitute, substitute_vars

DEFAULT_TIMEOUT_S = 2.0
PROBE_KINDS = ("http", "tcp", "exec")
_BODY_LIMIT = 1 << 20  # bodyContains looks at the first MiB; health bodies are small


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str
    duration_s: float


def _host_for_url(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _expected_statuses(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int | str):
        return [int(value)]
    return [int(v) for v in value]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context of every http probe, made once: loading the CA bundle costs
    ~30 ms of CPU, which a client per probe paid on every probe (a rolling update of 20
    replicas on 2 cores spent more CPU on it than on the probes). Same settings as the
    client's own default with ``trust_env=False``."""
    import httpx

    return httpx.create_ssl_context(verify=True, trust_env=False)


@functools.cache
def _no_tls_context() -> ssl.SSLContext:
    """The context of a probe of an ``http://`` URL, which never does TLS (redirects are not
    followed): verifying, without trust anchors, so the CA bundle is not loaded for it."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _is_https(url: str) -> bool:
    return url.lstrip()[:8].lower() == "https://"


async def _probe_http(
    spec: Mapping[str, Any], instance: Instance, limit_s: float
) -> tuple[bool, str]:
    import httpx  # on first http probe: it costs ~10% of the CLI's start-up otherwise

    timeout = limit_s
    url = substitute(str(spec["url"]), _host_for_url(instance.address), instance.vars)
    expected = _expected_statuses(spec.get("expectStatus"))
    needle = spec.get("bodyContains")
    shown = redact(url)  # a URL with user:password@ in the spec: messages end up recorded
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=False, trust_env=False,
                verify=_tls_context() if _is_https(url) else _no_tls_context(),
            ) as client,
            client.stream("GET", url) as response,
        ):
            status = response.status_code
            if expected is None and not 200 <= status < 300:
                return False, f"{shown}: status {status}, expected 2xx"
            if expected is not None and status not in expected:
                want = " or ".join(str(s) for s in expected)
                return False, f"{shown}: status {status}, expected {want}"
            if needle is not None:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _BODY_LIMIT:
                        break
                if str(needle) not in body.decode(errors="replace"):
                    return False, (f"{shown}: status {status}, body does not contain "
                                   f"{str(needle)!r}")
            return True, f"{shown}: status {status}"
    except (TimeoutError, httpx.TimeoutException):
        return False, f"{shown}: timed out after {timeout:g}s"
    except httpx.InvalidURL as exc:
        return False, redact(f"{shown}: invalid URL: {exc}", urls=(url,))
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        return False, redact(f"{shown}: {reason}", urls=(url,))


async def _probe_tcp(
    spec: Mapping[str, Any], instance: Instance, limit_s: float
) -> tuple[bool, str]:
    timeout = limit_s
    host = substitute(str(spec.get("host") or instance.address), instance.address, instance.vars)
    port_text = substitute_vars(str(spec["port"]), instance.vars)
    if not port_text.isdigit():
        return False, f"tcp {_host_for_url(host)}: port {port_text!r} is not a number"
    port = int(port_text)
    where = f"tcp {_host_for_url(host)}:{port}"
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return False, f"{where}: timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"{where}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"{where}: open"


async def _probe_exec(
    spec: Mapping[str, Any], limit_s: float, transport: CommandRunner | None, cwd: str | None
) -> tuple[bool, str]:
    timeout = limit_s
    command: Sequence[str] = [str(a) for a in spec["command"]]
    if transport is None:
        from reconciler.transport.local import LocalTransport

        transport = LocalTransport()
    name = f"exec {command[0]}" if command else "exec"
    try:
        result = await transport.run(command, timeout=timeout, cwd=cwd)
    except ProviderError as exc:
        return False, f"{name}: {exc.message}"
    if result.ok:
        return True, f"{name}: exit 0"
    tail = result.text().strip().splitlines()[-1:] if result.text().strip() else []
    suffix = f": {tail[0][:200]}" if tail else ""
    return False, f"{name}: exit {result.returncode}{suffix}"


async def probe(
    check: Mapping[str, Any],
    instance: Instance,
    *,
    transport: CommandRunner | None = None,
    cwd: str | None = None,
) -> ProbeResult:
    """Run every probe kind present in ``check`` once; ok when all pass."""
    timeout = to_seconds(check.get("timeout"), DEFAULT_TIMEOUT_S)
    kinds = [k for k in PROBE_KINDS if check.get(k) is not None]
    if not kinds:
        raise ValueError("health check has none of http, tcp, exec")
    started = time.monotonic()
    messages: list[str] = []
    ok = True
    for kind in kinds:
        spec = check[kind]
        try:
            # Each kind bounds itself by `timeout` and says where it timed out; this outer bound,
            # with a little slack so the inner one wins the race, is a safety net.
            if kind == "http":
                work = _probe_http(spec, instance, timeout)
            elif kind == "tcp":
                work = _probe_tcp(spec, instance, timeout)
            else:
                command = [substitute_vars(str(a), instance.vars) for a in spec["command"]]
                work = _probe_exec({**spec, "command": command}, timeout, transport, cwd)
            passed, message = await asyncio.wait_for(work, timeout + 1.0)
        except TimeoutError:
            passed, message = False, f"{kind}: timed out after {timeout:g}s"
        ok = ok and passed
        messages.append(message)
    return ProbeResult(ok, "; ".join(messages), time.monotonic() - started)
