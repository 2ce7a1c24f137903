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
import base64
import contextlib
import functools
import ipaddress
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ProviderError, os_error_reason
from reconciler.netaddr import url_host
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


def _expected_statuses(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int | str):
        return [int(value)]
    return [int(v) for v in value]


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The verifying TLS context of every https probe, made once: loading the CA bundle costs
    ~30 ms of CPU, which a context per probe paid on every probe (a rolling update of 20
    replicas on 2 cores spent more CPU on it than on the probes). The trust anchors httpx
    uses (certifi's bundle), not the environment's (no SSL_CERT_FILE): a committer's probe
    trusts what the operator's reconciler trusts, whatever the process environment says."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    context.set_alpn_protocols(["http/1.1"])
    return context


class _BadURL(ValueError):
    """A probe URL that cannot be requested (its text is the reason)."""


@dataclass(frozen=True)
class _Request:
    """Where an http probe connects and what it sends, from its URL."""

    tls: bool
    host: str  # to connect to: a name in IDNA, or an IP address without brackets
    port: int
    target: str
    headers: tuple[tuple[str, str], ...]


# Characters a request target keeps as they are: RFC 3986's unreserved and reserved ones and
# '%' (an escape already there); anything else (a space, non-ASCII text) is percent-encoded.
_TARGET_SAFE = "/?#[]@!$&'()*+,;=:%-._~"


def _request(url: str) -> _Request:
    """The GET an http probe sends for ``url``: credentials in it become Basic auth, as a
    browser (and httpx) sends them; its fragment is not sent."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _BadURL(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise _BadURL(f"the scheme must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise _BadURL("no host")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _BadURL(f"host {parts.hostname!r}: {exc}") from None
    default = 443 if scheme == "https" else 80
    port = default if port is None else port
    shown_host = url_host(host)
    headers = [("Host", shown_host if port == default else f"{shown_host}:{port}"),
               ("Accept", "*/*"), ("User-Agent", "fraisier-health-probe"),
               ("Connection", "close")]
    if parts.username is not None or parts.password is not None:
        pair = (f"{urllib.parse.unquote(parts.username or '')}:"
                f"{urllib.parse.unquote(parts.password or '')}")
        headers.append(("Authorization",
                        "Basic " + base64.b64encode(pair.encode()).decode("ascii")))
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Request(scheme == "https", host, port,
                    urllib.parse.quote(target, safe=_TARGET_SAFE), tuple(headers))


async def _exchange(request: _Request, needle: str | None) -> tuple[int, bytes | None]:
    """(status, the body's first ``_BODY_LIMIT`` bytes when ``needle`` asks for them) of one
    GET over a connection of its own (``transport.http1``: no redirects followed, no proxy
    from the environment)."""
    from reconciler.transport.http1 import exchange

    reader, writer = await asyncio.open_connection(
        request.host, request.port, ssl=_tls_context() if request.tls else None,
        server_hostname=request.host if request.tls else None)
    try:
        import h11

        try:
            answer = await exchange(reader, writer, "GET", request.target, request.headers,
                                    body_limit=_BODY_LIMIT, head_only=needle is None)
        except h11.LocalProtocolError as exc:
            raise _BadURL(str(exc)) from None
        return answer.status, None if needle is None else answer.body
    finally:
        writer.close()


async def _probe_http(
    spec: Mapping[str, Any], instance: Instance, limit_s: float
) -> tuple[bool, str]:
    import h11

    from reconciler.transport.http1 import NoResponse

    timeout = limit_s
    url = substitute(str(spec["url"]), url_host(instance.address), instance.vars)
    expected = _expected_statuses(spec.get("expectStatus"))
    needle = spec.get("bodyContains")
    shown = redact(url)  # a URL with user:password@ in the spec: messages end up recorded
    try:
        async with asyncio.timeout(timeout):
            status, body = await _exchange(_request(url),
                                           None if needle is None else str(needle))
    except TimeoutError:
        return False, f"{shown}: timed out after {timeout:g}s"
    except ValueError as exc:  # _BadURL, or a host the resolver refuses (a NUL in it)
        return False, redact(f"{shown}: invalid URL: {exc}", urls=(url,))
    except OSError as exc:
        return False, redact(f"{shown}: {os_error_reason(exc)}", urls=(url,))
    except NoResponse as exc:
        return False, f"{shown}: {exc}"
    except h11.RemoteProtocolError as exc:
        return False, redact(f"{shown}: not an HTTP response: {exc}", urls=(url,))
    if expected is None and not 200 <= status < 300:
        return False, f"{shown}: status {status}, expected 2xx"
    if expected is not None and status not in expected:
        want = " or ".join(str(s) for s in expected)
        return False, f"{shown}: status {status}, expected {want}"
    if needle is not None and str(needle) not in (body or b"").decode(errors="replace"):
        return False, f"{shown}: status {status}, body does not contain {str(needle)!r}"
    return True, f"{shown}: status {status}"


async def _probe_tcp(
    spec: Mapping[str, Any], instance: Instance, limit_s: float
) -> tuple[bool, str]:
    timeout = limit_s
    host = substitute(str(spec.get("host") or instance.address), instance.address, instance.vars)
    port_text = substitute_vars(str(spec["port"]), instance.vars)
    if not port_text.isdigit():
        return False, f"tcp {url_host(host)}: port {port_text!r} is not a number"
    port = int(port_text)
    where = f"tcp {url_host(host)}:{port}"
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"{where}: timed out after {timeout:g}s"
    except OSError as exc:
        return False, f"{where}: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"{where}: open"


def _same_host(host: str, address: str) -> bool:
    """Does a probe to ``host`` reach the machine at ``address`` (both as written, brackets
    or not): the same address or name, or both loopback."""
    def bare(text: str) -> str:
        return text.strip().strip("[]").lower()

    host, address = bare(host), bare(address)
    return host == address or (_loopback(host) and _loopback(address))


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probed_ports(check: Mapping[str, Any], instance: Instance) -> tuple[int, ...]:
    """The TCP ports that ``check``'s http and tcp probes connect to on the instance's own
    address (a probe of another address, a load balancer say, is not one); a URL or port
    that cannot be read gives none (its probe fails on its own)."""
    ports: list[int] = []
    http = check.get("http")
    if http is not None:
        url = substitute(str(http["url"]), url_host(instance.address), instance.vars)
        with contextlib.suppress(ValueError):
            request = _request(url)
            if _same_host(request.host, instance.address):
                ports.append(request.port)
    tcp = check.get("tcp")
    if tcp is not None:
        host = substitute(str(tcp.get("host") or instance.address), instance.address,
                          instance.vars)
        port_text = substitute_vars(str(tcp["port"]), instance.vars)
        if port_text.isdigit() and _same_host(host, instance.address):
            ports.append(int(port_text))
    return tuple(dict.fromkeys(ports))


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
            async with asyncio.timeout(timeout + 1.0):
                passed, message = await work
        except TimeoutError:
            passed, message = False, f"{kind}: timed out after {timeout:g}s"
        ok = ok and passed
        messages.append(message)
    return ProbeResult(ok, "; ".join(messages), time.monotonic() - started)
