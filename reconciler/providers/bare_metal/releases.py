"""Releases of one service on one host, Capistrano/Kamal style, driven through a ``Transport``.

    <service_dir>/releases/<revision>/   exported files (+ build output), never changed afterwards
    <service_dir>/current -> releases/<revision>   switched atomically (symlink + rename)
    <service_dir>/releases.json          which releases are complete, and the order they went live

A release directory only counts once ``releases.json`` lists it: an export or build that was
interrupted leaves a directory that the next deploy deletes and redoes. Every file-system step is
a coreutils command or a Transport file call, so the same code drives a remote host over SSH.
"""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import re
import secrets
import shlex
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers import Release
from reconciler.transport import CommandResult, CommandTimeout, Transport
from reconciler.transport.local import LocalTransport, output_tail

_SAFE_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_FS_TIMEOUT_S = 60.0
STATE_FILE = "releases.json"
# Constant scripts, every variable part a positional argument (never spliced into the text).
# The switch, over the four arguments of ``switch_args()`` (a script that switches several
# releases, commit.py, uses it too): the service directory ($4), ``releases`` and the release
# itself readable by the unit's own identity (a ``User=`` or a ``DynamicUser=``, which no chown
# can name) and writable by root only: a release created 0700 by an older Fraisier is opened on
# the next switch (no recursive walk); then the link, renamed over ``current``.
# $1: the release (relative to the service dir), $2: a temporary link name, $3: the `current`
# link, $4: the service dir. The folders on the way to the release are made enterable (a unit
# may run as a dynamic user); then the link is replaced by a rename.
SWITCH_MODES = 'chmod -- go+rx,go-w "$4" "$4/releases" "$4/$1"'
SWITCH_LINK = 'ln -sfn -- "$1" "$2" && mv -fT -- "$2" "$3"'
SWITCH_COMMANDS = f"{SWITCH_MODES} && {SWITCH_LINK}"
_SWITCH_SCRIPT = SWITCH_COMMANDS
# A new release: every directory enterable and every file readable, nothing writable but by root.
_PUBLISH_SCRIPT = 'chmod -R -- u+rwX,go+rX,go-w "$1"'
_FRESH_SCRIPT = 'rm -rf -- "$1" && mkdir -p -- "$2"'


def check_revision(revision: str) -> str:
    """Revisions become directory names: refuse anything that could escape ``releases/``."""
    if not _SAFE_REVISION.match(revision) or revision in (".", ".."):
        raise ProviderError(f"revision {revision!r} cannot name a release directory")
    return revision


def publish_modes(root: Path) -> None:
    """``chmod -R u+rwX,go+rX,go-w`` of a local tree (what _PUBLISH_SCRIPT does on a host)."""
    for folder, _, files in os.walk(root):
        # world-readable on purpose: the unit's own (dynamic) user reads the release
        os.chmod(folder, (os.stat(folder).st_mode | 0o755) & 0o7755)  # noqa: S103
        for name in files:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue  # a link's own mode means nothing; its target is in the tree or not
            execute = 0o111 if mode & 0o111 else 0
            os.chmod(path, (mode | 0o644 | execute) & 0o7755)


def within(base: str, relative: str | None) -> str:
    """``base/relative``, refusing absolute paths and ``..`` escapes (workingDir)."""
    if not relative or relative == ".":
        return base
    normal = posixpath.normpath(relative)
    if posixpath.isabs(normal) or normal == ".." or normal.startswith("../"):
        raise ProviderError(f"workingDir {relative!r} must stay inside the release directory")
    return posixpath.join(base, normal)


class ReleaseStore:
    def __init__(self, transport: Transport, service_dir: str, label: str) -> None:
        self.transport = transport
        self.service_dir = service_dir
        self.releases_dir = posixpath.join(service_dir, "releases")
        self.label = label  # "<env>/<name>" for messages
        # The state file as last read or written by this store. A store lives for one operation
        # (a deploy, a rollback) under the provider's per-service-and-host lock, so it is the
        # only writer meanwhile: read once, not once per step (each read is a round trip).
        self._state: dict[str, Any] | None = None
        self._unsaved = False  # _state holds a change not yet written (ensure(record=False),
        # switched())

    def path(self, revision: str) -> str:
        return posixpath.join(self.releases_dir, check_revision(revision))

    async def _fs(self, *argv: str, check: bool = True) -> CommandResult:
        return await self.transport.run(list(argv), timeout=_FS_TIMEOUT_S, check=check)

    # -- state -------------------------------------------------------------------------------

    async def load_state(self) -> dict[str, Any]:
        if self._state is not None:
            return self._state
        raw = await self.transport.read_file(posixpath.join(self.service_dir, STATE_FILE))
        state: dict[str, Any] = {}
        if raw:
            try:
                loaded = json.loads(raw)
                if isinstance(loaded, dict):
                    state = loaded
            except ValueError:
                state = {}  # a torn or edited file: releases get re-exported, nothing worse
        state.setdefault("releases", {})
        state.setdefault("history", [])
        self._state = state
        return state

    async def save_state(self, state: Mapping[str, Any]) -> None:
        data = json.dumps(state, indent=1, sort_keys=True).encode() + b"\n"
        self._state = None  # if the write fails, read the file again next time
        await self.transport.write_file(posixpath.join(self.service_dir, STATE_FILE), data)
        self._state = dict(state)
        self._unsaved = False

    # -- releases ----------------------------------------------------------------------------

    async def has(self, revision: str) -> bool:
        """The state file records ``revision`` complete and its directory is there (a listing
        of the releases: an SFTP request over SSH, no command on the host)."""
        state = await self.load_state()
        if revision not in state["releases"]:
            return False
        return check_revision(revision) in (await self.list_dirs())

    async def ensure(
        self,
        release: Release,
        *,
        build: Sequence[str] | None,
        working_dir: str | None,
        env: Mapping[str, str],
        build_timeout_s: float,
        tree: Callable[[], AbstractAsyncContextManager[Path]] | None = None,
        record: bool = True,
    ) -> tuple[str, bool]:
        """The release's directory, exported (and built) unless it is already complete.
        Returns ``(path, created)``. ``tree``: lends a local directory holding the release's
        files with their modes published (a provider's export, shared by every host and
        Service that ships the same files), uploaded as it is; else the release is exported
        into a temporary directory first. ``record``: write the state file saying it is
        complete now; False for a deploy, whose switch is recorded next: the record is kept
        for that write (``switched()`` then ``flush()`` or ``prune()``), one write instead of
        two. Until then a crash leaves the release unrecorded, and the next deploy of it
        uploads it again."""
        revision = check_revision(release.revision)
        final = self.path(revision)
        if await self.has(revision):
            return final, False
        if release.export is None:
            raise ProviderError(
                f"{self.label}: release {revision} is not on {self.transport.host_id} "
                "and the release has no export"
            )
        if isinstance(self.transport, LocalTransport):
            await self._export_local(release, revision, final)
        else:
            # A remote host: the transport stages the upload next to ``final`` and renames it
            # into place, replacing whatever an interrupted attempt left there: one command.
            stage = f".staging-{revision}-{secrets.token_hex(4)}"
            try:
                if tree is not None:
                    async with tree() as local:
                        await self.transport.put_tree(local, final, replace=True, stage=stage)
                else:
                    with tempfile.TemporaryDirectory(prefix="fraisier-export-") as tmp:
                        await release.export(Path(tmp))
                        # published here, before the upload (which keeps modes): no remote chmod
                        await asyncio.to_thread(publish_modes, Path(tmp))
                        await self.transport.put_tree(Path(tmp), final, replace=True,
                                                      stage=stage)
            except (ProviderError, OSError) as exc:
                raise ProviderError(f"{self.label}: export of {revision} failed: {exc}") from exc
        # Build in place (after the rename) so absolute paths it records — virtualenvs,
        # compiled caches — stay valid; the release only counts once the state file says so.
        if build:
            await self._build(
                revision, final, list(build), within(final, working_dir), env, build_timeout_s
            )
        if build or isinstance(self.transport, LocalTransport):
            await self._fs("sh", "-c", _PUBLISH_SCRIPT, "fraisier-publish", final)
        state = await self.load_state()
        state["releases"][revision] = {
            "config_commit": release.config_commit,
            "ready_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if record:
            await self.save_state(state)
        else:
            self._unsaved = True
        return final, True

    async def _export_local(self, release: Release, revision: str, final: str) -> None:
        """Same machine: export straight into a staging directory (no extra copy), then rename
        it to ``final``."""
        assert release.export is not None
        await self._fs("sh", "-c", _FRESH_SCRIPT, "fraisier-fresh", final, self.releases_dir)
        staging = posixpath.join(self.releases_dir, f".staging-{revision}-{secrets.token_hex(4)}")
        try:
            await self._fs("mkdir", "-p", "--", staging)
            await release.export(Path(staging))
            await self._fs("mv", "-T", "--", staging, final)
        except BaseException as exc:
            await self._fs("rm", "-rf", "--", staging, check=False)
            if isinstance(exc, ProviderError | OSError):
                raise ProviderError(f"{self.label}: export of {revision} failed: {exc}") from exc
            raise

    async def _build(
        self,
        revision: str,
        final: str,
        argv: list[str],
        cwd: str,
        env: Mapping[str, str],
        timeout_s: float,
    ) -> None:
        try:
            result = await self.transport.run(argv, timeout=timeout_s, env=env, cwd=cwd)
        except CommandTimeout as exc:
            await self._fs("rm", "-rf", "--", final, check=False)
            raise ProviderError(
                f"{self.label}: build {shlex.join(argv)} of {revision} timed out after "
                f"{timeout_s:g}s: {output_tail(exc.stdout + exc.stderr)}"
            ) from None
        except ProviderError:
            await self._fs("rm", "-rf", "--", final, check=False)
            raise
        if not result.ok:
            await self._fs("rm", "-rf", "--", final, check=False)
            raise ProviderError(
                f"{self.label}: build {shlex.join(argv)} of {revision} failed with exit "
                f"{result.returncode}: {output_tail(result.stdout + result.stderr)}"
            )

    async def current(self) -> str | None:
        link = posixpath.join(self.service_dir, "current")
        if isinstance(self.transport, LocalTransport):
            # In-process on this machine: the self-heal loop asks for every Service on every
            # pass, and a readlink subprocess each time dominated an idle daemon's CPU.
            try:
                target = os.readlink(link)
            except OSError:
                return None
            return posixpath.basename(target.rstrip("/")) or None
        result = await self._fs(
            "readlink", "--", posixpath.join(self.service_dir, "current"), check=False
        )
        if not result.ok:
            return None
        target = result.stdout.decode(errors="replace").strip()
        return posixpath.basename(target.rstrip("/")) or None

    def switch_args(self, revision: str) -> tuple[str, str, str, str]:
        """What a switch script takes: the release relative to the service dir, a fresh
        temporary link name, the ``current`` link, the service dir."""
        return (posixpath.join("releases", check_revision(revision)),
                posixpath.join(self.service_dir, f".current-{secrets.token_hex(4)}"),
                posixpath.join(self.service_dir, "current"), self.service_dir)

    async def switched(self, revision: str) -> None:
        """Record ``revision`` as the newest deploy after a switch made by someone else (a
        batched commit): kept in memory, written by the next ``prune`` or state write."""
        state = await self.load_state()
        state["history"] = [r for r in state["history"] if r != revision] + [revision]
        self._unsaved = True

    async def flush(self) -> None:
        """Write what ``switched()`` recorded, if nothing has written it since."""
        if self._unsaved and self._state is not None:
            await self.save_state(self._state)

    async def switch(self, revision: str) -> None:
        """Point ``current`` at ``revision`` atomically and record it as the newest deploy."""
        relative, tmp, link, service_dir = self.switch_args(revision)
        # mv -T renames the symlink itself over `current` (rename(2)): no moment without one.
        await self._fs("sh", "-c", _SWITCH_SCRIPT, "fraisier-switch", relative, tmp, link,
                       service_dir)
        await self.switched(revision)
        await self.flush()

    async def previous(self) -> str | None:
        """The release that was live before the current one."""
        state = await self.load_state()
        current = await self.current()
        for revision in reversed(state["history"]):
            if revision != current:
                return str(revision)
        return None

    async def list_dirs(self) -> list[str]:
        return sorted(await self.transport.list_dir(self.releases_dir) or [])

    async def prune(self, keep: int, current: str | None = None) -> list[str]:
        """Delete all but the ``keep`` most recently deployed releases; the current and the
        previous release are always kept. Leftover staging directories go too. ``current``:
        the release ``current`` points at, when the caller just switched it (else read)."""
        state = await self.load_state()
        if current is None:
            current = await self.current()
        history: list[str] = [str(r) for r in state["history"]]
        previous = next((r for r in reversed(history) if r != current), None)
        recency = {revision: i for i, revision in enumerate(history)}
        names = await self.list_dirs()
        leftovers = [n for n in names if n.startswith(".")]
        releases = sorted(
            (n for n in names if not n.startswith(".")),
            key=lambda n: recency.get(n, -1),
            reverse=True,
        )
        kept = set(releases[: max(keep, 0)]) | {r for r in (current, previous) if r}
        doomed = [n for n in releases if n not in kept]
        if doomed or leftovers:  # one command for all of them
            await self._fs("rm", "-rf", "--",
                           *(posixpath.join(self.releases_dir, n) for n in doomed + leftovers))
        if doomed:
            for name in doomed:
                state["releases"].pop(name, None)
            state["history"] = [r for r in history if r not in doomed]
        if doomed or self._unsaved:
            await self.save_state(state)
        return doomed
