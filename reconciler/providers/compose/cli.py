"""The compose command line (v2 ``docker compose`` or v1 ``docker-compose``), as argv lists.

Which binary: ``docker.compose`` on the Target — ``auto`` (default: the compose plugin when it
answers, its binary run standalone from where the docker CLI finds it, else ``docker-compose``),
``v2`` or ``v1`` — or an explicit argv prefix in ``docker.composeCommand``. The major version is
read from ``version --short``, not guessed from the name: a standalone ``docker-compose`` binary
may well be v2.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.errors import ProviderError
from reconciler.transport import Transport

_VERSION_TIMEOUT_S = 15.0
CANDIDATES: dict[str, list[list[str]]] = {
    "v2": [["docker", "compose"], ["docker-compose"]],
    "v1": [["docker-compose"]],
}
PLUGIN = ("docker", "compose")
# Where the docker CLI looks for the compose plugin on Linux, after $DOCKER_CONFIG/cli-plugins
# (default ~/.docker/cli-plugins), in its order.
SYSTEM_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


@dataclass(frozen=True)
class ComposeCLI:
    command: tuple[str, ...]
    version: str

    @property
    def major(self) -> int:
        head = self.version.lstrip("v").split(".", 1)[0]
        return int(head) if head.isdigit() else 0

    @property
    def is_v2(self) -> bool:
        return self.major >= 2

    def argv(
        self, project: str, file: str | None, project_dir: str | None, *args: str
    ) -> list[str]:
        argv = [*self.command, "--ansi", "never", "-p", project]
        if file is not None:
            argv += ["-f", file]
        if project_dir is not None:
            argv += ["--project-directory", project_dir]
        return [*argv, *args]

    def describe(self) -> str:
        return f"{shlex.join(self.command)} {self.version}"


async def _version(
    transport: Transport, command: Sequence[str], env: Mapping[str, str]
) -> str | None:
    try:
        result = await transport.run(
            [*command, "version", "--short"], timeout=_VERSION_TIMEOUT_S, env=env
        )
    except ProviderError:  # not installed, not executable
        return None
    if not result.ok:
        return None
    text = result.stdout.decode(errors="replace").strip()
    return text.splitlines()[-1].strip() if text else None


def _config_dir(env: Mapping[str, str]) -> str | None:
    """The docker CLI's configuration folder."""
    return env.get("DOCKER_CONFIG") or (
        posixpath.join(env["HOME"], ".docker") if env.get("HOME") else None
    )


def _plugin_paths(env: Mapping[str, str]) -> list[str]:
    dirs = list(SYSTEM_PLUGIN_DIRS)
    config = _config_dir(env)
    if config:
        dirs.insert(0, posixpath.join(config, "cli-plugins"))
    return [posixpath.join(d, "docker-compose") for d in dirs]


async def _extra_plugin_dirs(transport: Transport, env: Mapping[str, str]) -> bool:
    """Whether the docker CLI's config.json names plugin folders of its own
    (``cliPluginsExtraDirs``, searched after the config folder's and before the system ones);
    an unreadable one counts as naming some."""
    config = _config_dir(env)
    if not config:
        return False
    try:
        raw = await transport.read_file(posixpath.join(config, "config.json"))
    except ProviderError:
        return True
    if raw is None:
        return False
    try:
        data = json.loads(raw)
    except ValueError:
        return True
    return not isinstance(data, dict) or bool(data.get("cliPluginsExtraDirs"))


def _plugin_binary(plugins: Sequence[tuple[str, str | None]]) -> ComposeCLI | None:
    """The compose plugin's binary the docker CLI would run for ``docker compose``, run
    standalone, found without starting the docker CLI (its start-up, ~60 ms, comes before
    the first deploy of every ``apply``): the first place in the docker CLI's order
    (``plugins``) with a binary that answers, when it answers a v2 version."""
    for path, version in plugins:
        if version is not None:
            cli = ComposeCLI((path,), version)
            return cli if cli.is_v2 else None
    return None


async def _plugin_versions(
    transport: Transport, env: Mapping[str, str]
) -> list[tuple[str, str | None]]:
    """Each place the docker CLI looks the compose plugin up, in its order, with the version
    its binary answers there (None: none there, or it does not answer)."""
    paths = _plugin_paths(env)
    versions = await asyncio.gather(*(_version(transport, [path], env) for path in paths))
    return list(zip(paths, versions, strict=True))


def _standalone(version: str, plugins: Sequence[tuple[str, str | None]]) -> tuple[str, ...]:
    """The compose plugin's own binary, run standalone (as a ``docker-compose`` v2 binary is),
    when it answers the version ``docker compose`` did; else ``docker compose`` itself.

    ``docker compose`` starts the docker CLI, which looks its plugins up and then runs the
    plugin: about 60 ms of CPU per call on top of compose's own 40 ms. A rolling update runs one
    ``up`` per replica, five at once with maxParallel 5, so on a small Docker host that start-up
    was a good part of the time. The binary is the same, and compose v2 runs the same code
    standalone (that is how the ``docker-compose`` v2 binary works)."""
    for path, answered in plugins:
        if answered == version:
            return (path,)
    return PLUGIN


async def _standalone_plugin(
    transport: Transport, version: str, env: Mapping[str, str]
) -> tuple[str, ...]:
    """``_standalone`` with a lookup of its own (``detect`` reuses the one it made)."""
    return _standalone(version, await _plugin_versions(transport, env))


async def detect(
    transport: Transport,
    preference: str,
    explicit: Sequence[str] | None,
    env: Mapping[str, str],
) -> ComposeCLI:
    """Find the compose CLI on the Docker host the transport reaches."""
    if explicit:
        version = await _version(transport, explicit, env)
        if version is None:
            raise ProviderError(
                f"{transport.host_id}: compose command {shlex.join(explicit)!r} does not answer "
                "`version --short`",
                hint="install Docker Compose or fix docker.composeCommand on the Target",
            )
        return ComposeCLI(tuple(explicit), version)
    if preference == "auto":
        candidates = [*CANDIDATES["v2"], *CANDIDATES["v1"]]
    elif preference in CANDIDATES:
        candidates = CANDIDATES[preference]
    else:
        raise ProviderError(f"docker.compose must be auto, v2 or v1, not {preference!r}")
    tried: list[str] = []
    for command in candidates:
        if shlex.join(command) in tried:
            continue
        tried.append(shlex.join(command))
        plugins: Sequence[tuple[str, str | None]] = ()
        if tuple(command) == PLUGIN:
            extra, plugins = await asyncio.gather(
                _extra_plugin_dirs(transport, env), _plugin_versions(transport, env))
            # with plugin folders of its own in its config, which only the docker CLI reads,
            # `docker compose` says which plugin it runs
            binary = None if extra else _plugin_binary(plugins)
            if binary is not None:
                return binary
        version = await _version(transport, command, env)
        if version is None:
            continue
        cli = ComposeCLI(tuple(command), version)
        if preference == "auto" or (preference == "v2") == cli.is_v2:
            if cli.command == PLUGIN and cli.is_v2:
                cli = ComposeCLI(_standalone(version, plugins), version)
            return cli
    raise ProviderError(
        f"{transport.host_id}: no Docker Compose {preference} found (tried {', '.join(tried)})",
        hint="install Docker Compose v2 (`docker compose`) or v1 (`docker-compose`), or set "
        "docker.composeCommand on the Target",
    )
