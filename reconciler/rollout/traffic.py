"""Traffic routers: point a proxy at a set of weighted backends (blue-green switch, canary weights).

``strategy.traffic`` (``schemas/common.json#/$defs/strategy``) selects one router:

* ``nginx``: render an ``upstream`` block into ``upstreamFile`` (included by the operator's nginx
  configuration), check the whole configuration, reload nginx gracefully and wait until the new
  workers serve. A failed check or reload puts the previous file back, so the file always
  describes what nginx serves.
* ``command``: run the operator's argv with ``FRAISIER_BACKENDS`` (``address:port=weight``, comma
  separated) and ``FRAISIER_SERVICE`` in its environment; exit 0 means "the proxy now serves
  exactly these backends".

Commands run through a ``reconciler.transport.Transport`` (the local one by default), as argv.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.errors import ProviderError
from reconciler.netaddr import host_port
from reconciler.transport import CommandResult, Transport

log = logging.getLogger("reconciler.rollout.traffic")

_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL_CHARS = 1500
# A backend address ends up in an nginx configuration file and in an environment variable: a
# hostname, an IPv4 address or an IPv6 address (bracketed or not), nothing that could close a
# directive (";", "{", "}", "#", whitespace, quotes).
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9_.-]+)$")
_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class TrafficError(ProviderError):
    """Switching traffic failed; the proxy still serves the previous backends."""

    code = "FR425"
    hint = ("the proxy still serves the previous backends; fix the proxy configuration or the "
            "traffic command (its output is above) and retry")


class InvalidBackend(TrafficError, ValueError):
    """A backend that cannot be written into a proxy configuration (also a ValueError)."""


@dataclass(frozen=True)
class Backend:
    """One upstream server. ``weight`` is relative to the other backends; 0 excludes it."""

    address: str
    port: int
    weight: int = 1

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address):
            raise InvalidBackend(f"invalid backend address {self.address!r}")
        if not 1 <= self.port <= 65535:
            raise InvalidBackend(f"invalid backend port {self.port!r} for {self.address}")
        if self.weight < 0:
            raise InvalidBackend(
                f"negative weight {self.weight} for {self.address}:{self.port}"
            )

    @property
    def endpoint(self) -> str:
        """``address:port``, with an IPv6 address in brackets."""
        return host_port(self.address, self.port)


class TrafficRouter(Protocol):
    async def route(self, backends: Sequence[Backend]) -> None:
        """Returns once the proxy serves exactly ``backends`` (weight 0 = not served)."""

    def describe(self) -> str:
        """One line for logs and the journal, e.g. ``nginx upstream api in /etc/…``."""


def effective_backends(backends: Sequence[Backend]) -> list[tuple[str, int]]:
    """``(endpoint, weight)`` of the backends that get traffic, in a stable order.

    Weight-0 backends are dropped; the same endpoint given twice gets the sum of its weights (it
    happens when an ``address`` override maps instances of several hosts onto one endpoint).
    Raises TrafficError when nothing would be served.
    """
    weights: dict[str, int] = {}
    for backend in backends:
        if backend.weight > 0:
            weights[backend.endpoint] = weights.get(backend.endpoint, 0) + backend.weight
    if not weights:
        listed = ", ".join(f"{b.endpoint}={b.weight}" for b in backends) or "none"
        raise TrafficError(f"no backend with a positive weight to route traffic to ({listed})")
    return sorted(weights.items())


def backends_env_value(backends: Sequence[Backend]) -> str:
    """The ``FRAISIER_BACKENDS`` value: ``address:port=weight,...`` (weight-0 ones left out)."""
    return ",".join(f"{endpoint}={weight}" for endpoint, weight in effective_backends(backends))


def render_upstream(name: str, backends: Sequence[Backend], *, service: str = "") -> str:
    """The nginx ``upstream`` block for ``backends``.

    The first line carries a digest of the block: after the configuration check, the router looks
    for it in ``nginx -T`` (which dumps every file nginx loads) to prove that the file it wrote is
    the one nginx includes (a symlinked or wrongly spelled path would otherwise pass silently).
    """
    if not _UPSTREAM_NAME.match(name):
        raise TrafficError(f"invalid nginx upstream name {name!r} (letters, digits, _ . - only)")
    servers = "".join(
        f"    server {endpoint} weight={weight};\n"
        for endpoint, weight in effective_backends(backends)
    )
    body = f"upstream {name} {{\n{servers}}}\n"
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    who = f" for Service {service}" if service and _UPSTREAM_NAME.match(service) else ""
    return (f"# fraisier-upstream {name} {digest}: written by the reconciler{who}; "
            "do not edit (replaced on every traffic switch)\n" + body)


def _marker(content: str) -> str:
    return content.split(":", 1)[0]


def _tail(result: CommandResult) -> str:
    text = result.text().strip()
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]


def _base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH") or _DEFAULT_PATH, "LANG": "C.UTF-8"}


_PID_DIRECTIVE = re.compile(r"^\s*pid\s+([^;\s]+)\s*;", re.MULTILINE)
_PID_PATH_OPTION = re.compile(r"--pid-path=(\S+)")
_PREFIX_OPTION = re.compile(r"--prefix=(\S+)")


# Children of the nginx master $1 as "PID title" lines; exit 3 when the master is gone.
_PROC_SCRIPT = r"""[ -r "/proc/$1/task/$1/children" ] || exit 3
for c in $(cat "/proc/$1/task/$1/children"); do
  t=$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null) || continue
  [ -n "$t" ] && printf '%s %s\n' "$c" "$t"
done
exit 0"""


class NginxRouter:
    """Weighted upstream in a file included by nginx; graceful reload; waits for new workers.

    ``route()`` is idempotent: when the file already holds the same block and this router put it
    there (and nginx took it), nothing runs. The first call of a new router always checks and
    reloads, in case a previous process wrote the file and died before reloading.
    """

    def __init__(
        self,
        *,
        upstream_file: str,
        upstream: str,
        service: str = "",
        config: str | None = None,
        reload_command: Sequence[str] | None = None,
        address: str | None = None,
        transport: Transport | None = None,
        nginx: str = "nginx",
        reload_timeout: float = 15.0,
        drain_timeout: float = 5.0,
        command_timeout: float = 60.0,
    ) -> None:
        if not _UPSTREAM_NAME.match(upstream):
            raise TrafficError(f"invalid nginx upstream name {upstream!r}")
        if address is not None and not _ADDRESS.match(address):
            raise TrafficError(f"invalid backend address override {address!r}")
        self.upstream_file = upstream_file
        self.upstream = upstream
        self.service = service
        self.config = config
        self.reload_command = list(reload_command) if reload_command else None
        self.address = address
        self.nginx = nginx
        self.reload_timeout = reload_timeout
        self.drain_timeout = drain_timeout
        self.command_timeout = command_timeout
        if transport is None:
            from reconciler.transport.local import LocalTransport

            transport = LocalTransport()
        self.transport: Transport = transport
        self._applied: str | None = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        where = "" if self.transport.host_id == "local" else f" on {self.transport.host_id}"
        return f"nginx upstream {self.upstream} in {self.upstream_file}{where}"

    def _nginx_argv(self, *args: str) -> list[str]:
        argv = [self.nginx]
        if self.config:
            argv += ["-c", self.config]
        return argv + list(args)

    async def _run(self, argv: Sequence[str]) -> CommandResult:
        return await self.transport.run(argv, timeout=self.command_timeout, env=_base_env())

    async def route(self, backends: Sequence[Backend]) -> None:
        if self.address is not None:
            backends = [Backend(self.address, b.port, b.weight) for b in backends]
        content = render_upstream(self.upstream, backends, service=self.service)
        async with self._lock:
            try:
                previous = await self.transport.read_file(self.upstream_file)
            except (ProviderError, OSError) as exc:
                raise TrafficError(
                    f"{self.describe()}: cannot read the upstream file: {exc}"
                ) from exc
            if self._applied == content and previous == content.encode():
                log.debug("traffic unchanged", extra={"router": self.describe()})
                return
            started = time.monotonic()
            try:
                await self._switch(content, previous)
            except TrafficError:
                raise
            except ProviderError as exc:  # nginx not found, a command timed out, ...
                raise TrafficError(
                    f"{self.describe()}: {exc}; previous upstream restored"
                ) from exc
            self._applied = content
            log.info(
                "traffic switched",
                extra={"router": self.describe(), "backends": backends_env_value(backends),
                       "seconds": round(time.monotonic() - started, 3)},
            )

    async def _switch(self, content: str, previous: bytes | None) -> None:
        try:
            await self.transport.write_file(self.upstream_file, content.encode())
        except ProviderError as exc:
            raise TrafficError(f"{self.describe()}: cannot write the upstream file: {exc}") from exc
        try:
            # -T checks like -t and also dumps every file nginx loads, which proves the include.
            check = await self._run(self._nginx_argv("-T"))
            if not check.ok:
                # stderr only: on success stdout is the dump of every configuration file, which
                # may hold credentials (on failure nginx dumps nothing, but stay on the safe side)
                errors = CommandResult(check.returncode, b"", check.stderr)
                raise TrafficError(
                    f"{self.describe()}: nginx configuration check failed, previous upstream "
                    f"restored: {_tail(errors)}"
                )
            dump = check.stdout.decode(errors="replace")
            if _marker(content) not in dump:
                conf = self.config or "nginx's default configuration"
                raise TrafficError(
                    f"{self.describe()}: nginx -T passed but {conf} does not include "
                    f"{self.upstream_file} (add `include {self.upstream_file};` in its http "
                    "block); previous upstream restored"
                )
            master = await self._master_pid(dump)
            before = await self._workers_before(master)
            reload_argv = self.reload_command or self._nginx_argv("-s", "reload")
            result = await self._run(reload_argv)
            if not result.ok:
                raise TrafficError(
                    f"{self.describe()}: {shlex.join(reload_argv)} exited {result.returncode}, "
                    f"previous upstream restored: {_tail(result)}"
                )
            await self._wait_reloaded(master, before)
        except BaseException:
            await self._restore(previous)
            raise

    async def _restore(self, previous: bytes | None) -> None:
        try:
            if previous is None:
                await self._run(["rm", "-f", "--", self.upstream_file])
            else:
                await self.transport.write_file(self.upstream_file, previous)
        except (ProviderError, OSError) as exc:  # report the first failure, not this one
            log.error("could not restore the previous upstream file",
                      extra={"router": self.describe(), "error": str(exc)})

    # --- waiting for the reload -------------------------------------------------------------
    #
    # `nginx -s reload` only sends SIGHUP to the master and returns at once. The master then
    # re-reads the configuration, starts new workers (which serve the new upstream) and tells the
    # old ones to shut down gracefully: they close their listening sockets, finish the requests in
    # flight and exit. So the switch has taken effect when (1) the master has a worker that was
    # not there before the reload, and (2) every old worker is gone or titled "is shutting down"
    # (nginx sets that title right before it closes its listening sockets). Both are read from
    # /proc through the transport: the master PID from the `pid` file, its children from
    # /proc/PID/task/PID/children, their titles from /proc/PID/cmdline. If the master started no
    # new worker within reload_timeout it rejected the configuration (e.g. a port it cannot
    # bind): that is an error and the previous file is put back. Old workers that keep long
    # requests (websockets) open are waited for up to drain_timeout only; they no longer accept
    # connections. When the PIDs cannot be read (a custom reloadCommand for an nginx in another
    # PID namespace, a /proc without task children) we fall back to a fixed, bounded wait of
    # _BLIND_WAIT_S, which is usually far more than a reload takes.

    _BLIND_WAIT_S = 2.0
    _POLL_S = 0.05

    async def _master_pid(self, dump: str) -> int | None:
        pid_file = await self._pid_file(dump)
        if pid_file is None:
            return None
        try:
            data = await self.transport.read_file(pid_file)
        except (ProviderError, OSError):
            return None
        if not data or not data.strip().isdigit():
            return None
        return int(data.strip())

    async def _pid_file(self, dump: str) -> str | None:
        # The main configuration comes first in the dump; its `pid` directive wins.
        match = _PID_DIRECTIVE.search(dump)
        if match:
            path = match.group(1).strip("\"'")
            if path == "off":
                return None
            if not path.startswith("/"):
                prefix = await self._compiled("prefix")
                path = (prefix or "/").rstrip("/") + "/" + path
            return path
        return await self._compiled("pid-path")

    async def _compiled(self, option: str) -> str | None:
        try:
            result = await self._run([self.nginx, "-V"])
        except ProviderError:
            return None
        pattern = _PID_PATH_OPTION if option == "pid-path" else _PREFIX_OPTION
        match = pattern.search(result.text())
        return match.group(1) if match else None

    async def _children(self, pid: int) -> dict[int, str] | None:
        """PID → process title of each child of ``pid``; None when /proc cannot tell (or the
        process is gone)."""
        try:
            data = await self.transport.read_file(f"/proc/{pid}/task/{pid}/children")
        except (ProviderError, OSError):
            data = None
        if data:  # a live master always has children: read their titles the same way
            children: dict[int, str] = {}
            for token in data.split():
                child = int(token)
                try:
                    cmdline = await self.transport.read_file(f"/proc/{child}/cmdline")
                except (ProviderError, OSError):
                    cmdline = None
                if cmdline:  # None or empty: it exited meanwhile
                    title = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                    children[child] = title
            return children
        # Nothing: the process is gone, or the transport cannot read /proc (SFTP reports /proc
        # files as empty, their size being 0). Ask the host itself, with one small script.
        try:
            result = await self._run(["sh", "-c", _PROC_SCRIPT, "fraisier-nginx", str(pid)])
        except ProviderError:
            return None
        if not result.ok:
            return None
        children = {}
        for line in result.stdout.decode(errors="replace").splitlines():
            pid_text, _, title = line.partition(" ")
            if pid_text.isdigit():
                children[int(pid_text)] = title.strip()
        return children

    async def _workers_before(self, master: int | None) -> dict[int, str] | None:
        """The master's children before the reload. A master that has just started may not have
        forked its workers yet; its first worker would then pass for a new one, so wait for it
        (briefly)."""
        if master is None:
            return None
        deadline = time.monotonic() + 2.0
        while True:
            children = await self._children(master)
            if children is None or any("worker process" in t for t in children.values()):
                return children
            if time.monotonic() > deadline:
                return children
            await asyncio.sleep(self._POLL_S)

    async def _wait_reloaded(self, master: int | None, before: dict[int, str] | None) -> None:
        if master is None or before is None:
            await asyncio.sleep(self._BLIND_WAIT_S)
            return
        old_workers = {pid for pid, title in before.items() if "worker process" in title}
        deadline = time.monotonic() + self.reload_timeout
        while True:
            now = await self._children(master)
            if now is None:  # the master is gone
                raise TrafficError(
                    f"{self.describe()}: the nginx master (pid {master}) exited during the "
                    "reload; see nginx's error log"
                )
            if any(pid not in before and "worker process" in t for pid, t in now.items()):
                break
            if time.monotonic() > deadline:
                raise TrafficError(
                    f"{self.describe()}: nginx (master pid {master}) started no new worker "
                    f"within {self.reload_timeout:g}s of the reload, so it kept its old "
                    "configuration; see nginx's error log. Previous upstream restored"
                )
            await asyncio.sleep(self._POLL_S)
        drain_deadline = time.monotonic() + self.drain_timeout
        while True:
            now = await self._children(master) or {}
            serving = [pid for pid in old_workers
                       if pid in now and "shutting down" not in now[pid]]
            if not serving:
                return
            if time.monotonic() > drain_deadline:
                log.warning("old nginx workers still not shutting down",
                            extra={"router": self.describe(), "pids": serving})
                return
            await asyncio.sleep(self._POLL_S)


class CommandRouter:
    """The operator's own argv switches traffic (a load-balancer API call, HAProxy, Caddy, ...).

    The command gets ``FRAISIER_BACKENDS`` (``address:port=weight,...``, weight-0 backends left
    out) and ``FRAISIER_SERVICE``, plus ``PATH`` and ``LANG`` — nothing else of the reconciler's
    environment. Exit 0 must mean the proxy now serves exactly those backends.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        service: str,
        transport: Transport | None = None,
        timeout: float = 120.0,
    ) -> None:
        if not argv:
            raise TrafficError("traffic.command is empty")
        self.argv = [str(a) for a in argv]
        self.service = service
        self.timeout = timeout
        if transport is None:
            from reconciler.transport.local import LocalTransport

            transport = LocalTransport()
        self.transport: Transport = transport

    def describe(self) -> str:
        where = "" if self.transport.host_id == "local" else f" on {self.transport.host_id}"
        return f"traffic command {shlex.join(self.argv[:1])}{where}"

    async def route(self, backends: Sequence[Backend]) -> None:
        value = backends_env_value(backends)
        env = _base_env() | {"FRAISIER_BACKENDS": value, "FRAISIER_SERVICE": self.service}
        try:
            result = await self.transport.run(self.argv, timeout=self.timeout, env=env)
        except ProviderError as exc:
            raise TrafficError(f"{self.describe()}: {exc}") from exc
        if not result.ok:
            raise TrafficError(
                f"{self.describe()} exited {result.returncode} for backends {value}: "
                f"{_tail(result) or '(no output)'}"
            )
        log.info("traffic switched", extra={"router": self.describe(), "backends": value})


def router_from_spec(
    traffic: Mapping[str, Any], *, service: str, transport: Transport | None = None
) -> TrafficRouter:
    """The router for ``strategy.traffic`` of Service ``service`` (already schema-valid)."""
    if "nginx" in traffic:
        nginx = traffic["nginx"]
        return NginxRouter(
            upstream_file=str(nginx["upstreamFile"]),
            upstream=str(nginx.get("upstream") or service),
            service=service,
            config=nginx.get("config"),
            reload_command=nginx.get("reloadCommand"),
            address=nginx.get("address"),
            transport=transport,
        )
    if "command" in traffic:
        return CommandRouter(traffic["command"], service=service, transport=transport)
    raise TrafficError(f"strategy.traffic of {service} names no router (nginx or command)")
