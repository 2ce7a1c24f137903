"""Docker Compose provider: a Target with ``provider: compose`` is one Docker host.

``docker.host`` says how to reach it:

- ``unix:///var/run/docker.sock`` (default): this machine. The compose CLI runs through
  ``LocalTransport``; reads go to the engine API on that socket (h11, one connection per request).
- ``ssh://user@host[:port]``: another machine. The compose and docker CLIs run on that host through
  the SSH transport (strict host-key checking), where the engine socket is local.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from reconciler.errors import ProviderError
from reconciler.providers import ProviderContext
from reconciler.providers.compose.engine import CliEngine, SocketEngine
from reconciler.providers.compose.host import GO_RUNTIME_ENV, local_base_env
from reconciler.providers.compose.provider import ComposeProvider
from reconciler.spec.model import Resource
from reconciler.transport import Transport
from reconciler.transport.local import LocalTransport

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEFAULT_REMOTE_STATE_DIR = "/var/lib/fraisier/compose"

__all__ = ["ComposeProvider", "create_provider"]


def _ssh_transport(target: Resource, url: str, docker: dict[str, Any]) -> Transport:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ProviderError(f"{target.key}: docker.host {url!r} names no host")
    try:
        ssh = importlib.import_module("reconciler.transport.ssh")
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"{target.key}: docker.host {url!r} needs the SSH transport, "
            "which is not available in this build"
        ) from exc
    config = ssh.SSHHostConfig.from_spec(
        {
            "name": target.name,
            "address": parts.hostname,
            "port": parts.port or 22,
            "user": parts.username or "root",
            "identityFile": docker.get("identityFile"),
            "knownHosts": docker.get("knownHosts"),
            "hostKeys": docker.get("hostKeys"),
            "sudo": bool(docker.get("sudo", False)),
        }
    )
    transport: Transport = ssh.SSHTransport(config)
    return transport


def remote_base_env(user: str) -> dict[str, str]:
    """The compose process's environment on an SSH host: the SSH transport passes the *whole*
    environment (``env -i``), so the basics a login shell would set are given here."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root" if user == "root" else f"/home/{user}",
        **GO_RUNTIME_ENV,
    }


def create_provider(target: Resource, ctx: ProviderContext) -> ComposeProvider:
    """The provider for one compose Target."""
    docker = dict(target.spec.get("docker") or {})
    host = str(docker.get("host", DEFAULT_DOCKER_HOST))
    scheme = urlsplit(host).scheme
    if scheme == "unix":
        transport: Transport = LocalTransport(host_id=target.name, address="127.0.0.1")
        state_root = str(docker.get("stateDir") or (ctx.state_dir / "compose"))
        engine: SocketEngine | CliEngine = SocketEngine(host, target.name)
        base_env = local_base_env(host)
    elif scheme == "ssh":
        transport = _ssh_transport(target, host, docker)
        state_root = str(docker.get("stateDir") or DEFAULT_REMOTE_STATE_DIR)
        engine = CliEngine(transport, docker.get("dockerCommand") or ["docker"])
        base_env = remote_base_env(
            "root" if docker.get("sudo") else urlsplit(host).username or "root"
        )
    else:
        raise ProviderError(
            f"{target.key}: docker.host must be unix:///path or ssh://user@host[:port], "
            f"not {host!r}"
        )
    return ComposeProvider(target, ctx, transport, engine, state_root=state_root, base_env=base_env)
