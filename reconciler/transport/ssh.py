"""The SSH transport: commands and files on a remote host through asyncssh.

Security choices, on purpose:

* Host keys are always verified: against the configured ``knownHosts`` file, the pinned
  ``hostKeys`` list, or else the daemon user's ``~/.ssh/known_hosts``. An unknown or changed key
  is an ``SSHHostKeyError`` naming host:port and how to pin the right key; never a silent accept.
* Commands are argv lists. SSH only carries one string, so the argv is quoted with
  ``shlex.join`` and the remote login shell splits it back into exactly that argv. Environment
  values and the working directory travel as further quoted words (``env -i -- K=V … argv``;
  ``sh -c 'cd -- "$1" …' fraisier-cwd DIR …``), so a value is data and is never executed.
* Every call has a timeout. Commands additionally run under the remote ``timeout`` (coreutils),
  which kills the command's whole process group on the host: a client-side timeout alone would
  leave ``sleep 30`` running after the channel is gone.

One ``SSHTransport`` keeps one connection per host and reuses it (commands run as channels on
it, at most ``max_sessions`` at once, below sshd's default ``MaxSessions 10``); it reconnects
when the connection was lost in between. ``SSHPool`` hands out one transport per host for a
reconcile pass and closes them all at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import secrets
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

from reconciler.backoff import equal_jitter, exponential
from reconciler.errors import ProviderError
from reconciler.netaddr import host_port
from reconciler.observe import metrics
from reconciler.transport import CommandResult, CommandTimeout
from reconciler.transport.sftp_files import read_whole_file, write_new_file
from reconciler.transport.sftp_tree import make_dirs, upload_tree

log = logging.getLogger(__name__)

T = TypeVar("T")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TAIL_CHARS = 2000
_UPLOAD_CHUNK = 1 << 20
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_KEEPALIVE_INTERVAL_S = 5.0
# Grace on top of a command's timeout: the remote `timeout` sends TERM at the deadline and KILL
# this long after; the client waits a little longer still before giving up on the channel.
_KILL_AFTER_S = 5.0
_CLIENT_GRACE_S = _KILL_AFTER_S + 5.0
# Exit status the read script uses for "no such file" (EX_NOINPUT).
_MISSING = 66

# Remote helper scripts. They are constants of this module and get every variable part as a
# positional argument ("$1", "$2", ...), never spliced into the script text.
_CWD_SCRIPT = 'cd -- "$1" || exit 125; shift; exec "$@"'
_READ_SCRIPT = f'[ -e "$1" ] || [ -L "$1" ] || exit {_MISSING}; exec cat -- "$1"'
_LIST_SCRIPT = f'[ -d "$1" ] || exit {_MISSING}; exec ls -1A -- "$1"'
# Install $1 as $2 with mode $3: a temp file in the destination directory, fsync, rename.
_INSTALL_SCRIPT = """set -eu
src=$1 dest=$2 mode=$3
dir=$(dirname -- "$dest")
mkdir -p -- "$dir"
tmp=$(mktemp -- "$dir/.fraisier-put.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT
cat -- "$src" >"$tmp"
chmod -- "$mode" "$tmp"
sync -- "$tmp" 2>/dev/null || true
mv -f -T -- "$tmp" "$dest"
trap - EXIT
"""
# Move the staged tree $1 to $2. A new $2 appears at once (one rename); into an existing $2 each
# file is renamed over its old version, so no reader sees a half-written file. With $3 = 1 the
# tree is first copied next to $2 (it was uploaded to another filesystem, e.g. /tmp). With
# $4 = 1 an existing $2 is deleted first, so the new tree still appears with one rename.
# Ciphers in order of preference. AES-GCM first: one AEAD call per packet on AES-NI hardware,
# where asyncssh's chacha20-poly1305 builds cipher objects per packet (docs/performance.md:
# client CPU per command + SFTP write + read, same host). All are OpenSSH's defaults.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
_TREE_SCRIPT = """set -eu
src=$1 dst=$2 copy=$3 replace=${4:-0}
parent=$(dirname -- "$dst")
mkdir -p -- "$parent"
if [ "$copy" = 1 ]; then
  stage=$(mktemp -d -- "$parent/.fraisier-tree.XXXXXX")
  trap 'cd /; rm -rf -- "$stage"' EXIT
  cp -R --preserve=mode,timestamps -- "$src/." "$stage/"
  chmod --reference="$src" -- "$stage"
else
  stage=$src
  trap 'cd /; rm -rf -- "$stage"' EXIT
fi
if [ "$replace" = 1 ]; then
  rm -rf -- "$dst"
fi
if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then
  mv -T -- "$stage" "$dst"
  exit 0
fi
[ -d "$dst" ] || { echo "not a directory: $dst" >&2; exit 1; }
cd -- "$stage"
find . -mindepth 1 -type d -exec sh -c 'for d do mkdir -p -- "$0/$d"; done' "$dst" {} +
find . ! -type d -exec sh -c 'for f do mv -f -- "$f" "$0/$f"; done' "$dst" {} +
"""


class SSHError(ProviderError):
    """Something went wrong talking to a host over SSH."""

    code = "FR410"
    hint = "check that the host is up and reachable, and its SSH settings in the Target"


class SSHHostKeyError(SSHError):
    """The host presented a key that is not trusted (unknown host, or the key changed)."""

    code = "FR411"
    hint = (
        "fetch the key with `ssh-keyscan -p PORT HOST`, verify its fingerprint out of band "
        "(`ssh-keygen -lf`), then pin it in the Target's knownHosts file or hostKeys list"
    )


class SSHAuthError(SSHError):
    """The host refused the login (wrong user or key)."""

    code = "FR412"
    hint = "check the Target's user and identityFile, and the user's authorized_keys on the host"


class SSHConnectError(SSHError):
    """The host could not be reached after several attempts."""

    code = "FR413"
    hint = ("check that the host is up, the Target's address/port are right (`nc -vz HOST "
            "PORT` from the reconciler's host) and sshd runs there")


class SSHConfigError(SSHError):
    """The SSH settings themselves are unusable (missing or unreadable key, bad host key)."""

    code = "FR414"
    hint = ("fix the host in the Target: identityFile readable by the reconciler's user and "
            "without a passphrase, hostKeys entries as OpenSSH public key lines")


@dataclass(frozen=True)
class SSHHostConfig:
    """How to reach one host. ``known_hosts``/``host_keys`` unset → ``~/.ssh/known_hosts``."""

    host_id: str
    address: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None
    host_keys: tuple[str, ...] = ()
    sudo: bool = False
    # Fail-fast defaults (docs/reliability.md, "frozen host"): a frozen host is dropped after 3
    # unanswered keepalives (15 s) and a reconnect gives up after 3 logins of 5 s each, so a
    # deploy declares it down in about half a minute, not minutes.
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL_S
    keepalive_count_max: int = 3
    connect_attempts: int = 3
    retry_base_delay: float = 0.25
    retry_max_delay: float = 5.0
    io_timeout: float = 300.0
    max_sessions: int = 8

    @property
    def endpoint(self) -> str:
        return host_port(self.address, self.port)

    @classmethod
    def from_spec(cls, host: Mapping[str, Any], **overrides: Any) -> SSHHostConfig:
        """From one entry of a bare_metal Target's ``hosts`` list (already schema-valid)."""
        values: dict[str, Any] = {
            "host_id": str(host["name"]),
            "address": str(host["address"]),
            "port": int(host.get("port", 22)),
            "user": str(host.get("user", "root")),
            "identity_file": host.get("identityFile"),
            "known_hosts": host.get("knownHosts"),
            "host_keys": tuple(host.get("hostKeys") or ()),
            "sudo": bool(host.get("sudo", False)),
        }
        values.update(overrides)
        return cls(**values)


def remote_command(
    argv: Sequence[str],
    *,
    sudo: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    tag: str | None = None,
) -> str:
    """The one string SSH carries for ``argv``: every word quoted, nothing left to the shell.

    ``env``, when given, is the whole environment of the command (``env -i``), as with the local
    transport; without it the command inherits the login (or sudo) environment. ``tag`` (a
    variable name) only appears in the command line of the remote ``timeout`` process, as a
    no-op ``env -u TAG``, so that the command can be found and stopped from another channel.
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ProviderError("empty command")
    if "=" in argv[0]:
        raise ProviderError(f"command name {argv[0]!r} contains '='")
    words: list[str] = []
    if sudo:
        words += ["sudo", "-n", "--"]
    if timeout is not None:
        # The remote timeout kills the command's process group; the client cannot reach it.
        words += ["timeout", "-k", f"{_KILL_AFTER_S:g}", f"{max(timeout, 0.001):.3f}"]
    words.append("env")
    if env is not None:
        words.append("-i")
    if tag is not None:
        words += ["-u", tag]
    words.append("--")
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise ProviderError(f"invalid environment variable name {name!r}")
        words.append(f"{name}={value}")
    if cwd is not None:
        words += ["sh", "-c", _CWD_SCRIPT, "fraisier-cwd", cwd]
    return shlex.join(words + argv)


def _tail(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text if len(text) <= _TAIL_CHARS else "…" + text[-_TAIL_CHARS:]


@dataclass
class _Connection:
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient | None = None
    sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SSHTransport:
    """One remote host, as a ``Transport``. Create through ``SSHPool`` in a reconcile pass."""

    def __init__(self, config: SSHHostConfig) -> None:
        self.config = config
        self.host_id = config.host_id
        self.address = config.address
        self.connects = 0  # successful logins so far (tests and metrics read it)
        self._conn: _Connection | None = None
        self._conn_lock = asyncio.Lock()
        # sshd refuses channels beyond MaxSessions (10 by default); one is kept for SFTP.
        self._sessions = asyncio.Semaphore(max(1, config.max_sessions - 1))
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def reads_in_process(self) -> bool:
        """A read is an SFTP request unless the login reads through sudo (a command each)."""
        return not self.config.sudo

    def __repr__(self) -> str:
        return f"SSHTransport({self.host_id} {self.config.user}@{self.config.endpoint})"

    # --- connection -----------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.host_id} ({self.config.user}@{self.config.endpoint})"

    def _trusted_keys(self) -> Any:
        """The ``known_hosts`` argument for asyncssh: never None (None would accept any key)."""
        cfg = self.config
        if cfg.host_keys:
            try:
                keys = [asyncssh.import_public_key(k) for k in cfg.host_keys]
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise SSHConfigError(
                    f"{self._where()}: a pinned hostKeys entry is not a public key: {exc}"
                ) from None
            return (keys, [], [])
        path = cfg.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        if not os.path.exists(path):
            # An empty trust list: the connect fails as "unknown host", with the remediation.
            return ([], [], [])
        return path

    def _host_is_known(self) -> bool:
        """Whether any key at all is trusted for this host (to tell "changed" from "unknown")."""
        cfg = self.config
        if cfg.host_keys:
            return True
        path = cfg.known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        try:
            matched = asyncssh.read_known_hosts(path).match(cfg.address, cfg.address, cfg.port)
        except (OSError, ValueError):
            return False
        return bool(matched[0] or matched[1])

    async def _open(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        if cfg.identity_file is not None and not os.access(cfg.identity_file, os.R_OK):
            raise SSHConfigError(
                f"{self._where()}: identity file {cfg.identity_file} is not readable"
            )
        known_hosts = self._trusted_keys()
        try:
            async with asyncio.timeout(cfg.connect_timeout + 1.0):
                return await asyncssh.connect(
                    cfg.address,
                    cfg.port,
                    username=cfg.user,
                    client_keys=[cfg.identity_file] if cfg.identity_file else (),
                    known_hosts=known_hosts,
                    agent_path=None,  # only the configured key, not whatever an agent offers
                    config=None,  # ~/.ssh/config must not loosen host-key checking
                    preferred_auth="publickey",
                    connect_timeout=cfg.connect_timeout,
                    login_timeout=cfg.connect_timeout,
                    keepalive_interval=cfg.keepalive_interval,
                    keepalive_count_max=cfg.keepalive_count_max,
                    encryption_algs=CIPHERS,
                )
        except asyncssh.HostKeyNotVerifiable:
            what = (
                "presented a host key that does not match the pinned one (key changed, or "
                "another machine answers at this address)"
                if self._host_is_known()
                else "is unknown: no trusted host key is configured for it"
            )
            source = "hostKeys" if cfg.host_keys else (cfg.known_hosts or "~/.ssh/known_hosts")
            raise SSHHostKeyError(
                f"{self.host_id}: host {cfg.endpoint} {what}; trusted keys come from {source}. "
                f"Run `ssh-keyscan -p {cfg.port} {cfg.address}`, verify the fingerprint out of "
                "band, then pin the key (knownHosts file or hostKeys)",
                hint=(f"verify and pin the key: `ssh-keyscan -p {cfg.port} {cfg.address} > "
                      "host.key && ssh-keygen -lf host.key`, compare the fingerprint with the "
                      "host's console, then "
                      + ("put its key (without the host field) in the Target's hostKeys"
                         if cfg.host_keys else f"append host.key to {source}")),
            ) from None
        except asyncssh.PermissionDenied:
            key = cfg.identity_file or "default keys"
            raise SSHAuthError(
                f"{self._where()}: login refused for user {cfg.user!r} with {key}"
            ) from None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise SSHConfigError(
                f"{self._where()}: cannot load identity file {cfg.identity_file}: {exc}"
            ) from None

    async def _connect(self) -> asyncssh.SSHClientConnection:
        """Connect with bounded retries; only network trouble is retried (not keys or auth)."""
        cfg = self.config
        last: BaseException | None = None
        for attempt in range(max(1, cfg.connect_attempts)):
            if attempt:
                delay = equal_jitter(exponential(attempt, first=cfg.retry_base_delay,
                                                 cap=cfg.retry_max_delay))
                log.info("ssh %s: retrying connect in %.2fs (%s)", self.host_id, delay, last)
                await asyncio.sleep(delay)
            try:
                conn = await self._open()
            except SSHError:
                raise
            except (OSError, TimeoutError, asyncssh.Error) as exc:
                last = exc
                continue
            self.connects += 1
            metrics.SSH_CONNECTIONS.inc()
            log.debug("ssh %s: connected (#%d)", self.host_id, self.connects)
            return conn
        if last is None:
            reason = "unknown error"
        elif str(last):
            reason = f"{type(last).__name__}: {last}"
        else:  # a bare TimeoutError: the port accepted, no SSH login within the timeout
            reason = (f"{type(last).__name__} (no SSH login within connectTimeout "
                      f"{cfg.connect_timeout:g}s: the host is frozen, overloaded or filtered)")
        raise SSHConnectError(
            f"{self._where()}: cannot connect after {max(1, cfg.connect_attempts)} attempts: "
            f"{reason}"
        )

    async def _connection(self) -> _Connection:
        if self._closed:
            raise SSHError(f"{self._where()}: transport is closed")
        current = self._conn
        if current is not None and not current.conn.is_closed():
            return current
        async with self._conn_lock:
            current = self._conn
            if current is None or current.conn.is_closed():
                if current is not None:
                    log.info("ssh %s: connection lost, reconnecting", self.host_id)
                    await self._drop(current)
                current = _Connection(await self._connect())
                self._conn = current
            return current

    async def _drop(self, dead: _Connection) -> None:
        if self._conn is dead:
            self._conn = None
        if dead.sftp is not None:
            with contextlib.suppress(Exception):
                dead.sftp.exit()
        dead.conn.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await dead.conn.wait_closed()

    async def connect(self) -> None:
        """Open the connection now (it is otherwise opened by the first call)."""
        await self._connection()

    async def _sftp(self) -> asyncssh.SFTPClient:
        current = await self._connection()
        async with current.sftp_lock:
            if current.sftp is None:
                try:
                    async with asyncio.timeout(self.config.connect_timeout):
                        current.sftp = await current.conn.start_sftp_client()
                except (asyncssh.Error, OSError) as exc:  # TimeoutError is an OSError
                    raise SSHError(f"{self._where()}: cannot start SFTP: {exc}") from None
            return current.sftp

    async def _file_op(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run an SFTP operation with the I/O timeout; map errors to SSHError."""
        try:
            async with asyncio.timeout(self.config.io_timeout):
                return await op()
        except TimeoutError:
            # An abandoned SFTP request leaves the session in an unknown state: start afresh.
            if self._conn is not None:
                await self._drop(self._conn)
            raise SSHError(
                f"{self._where()}: {what} timed out after {self.config.io_timeout:g}s"
            ) from None
        except asyncssh.SFTPError as exc:
            raise SSHError(f"{self._where()}: {what} failed: {exc.reason}") from None
        except (OSError, asyncssh.Error) as exc:
            raise SSHError(f"{self._where()}: {what} failed: {exc}") from None

    # --- commands -------------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 (the Transport protocol's signature)
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run argv on the host (through ``sudo -n`` when the host config says sudo)."""
        return await self._exec(
            argv, sudo=self.config.sudo, timeout=timeout, stdin=stdin, env=env, cwd=cwd, check=check
        )

    async def _exec(
        self,
        argv: Sequence[str],
        *,
        sudo: bool,
        timeout: float,  # noqa: ASYNC109 (enforced on the host by `timeout`, and here)
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        argv = [str(a) for a in argv]
        if not argv:
            raise ProviderError(f"{self.host_id}: empty command")
        tag = f"FRAISIER_RUN_{secrets.token_hex(8)}"
        try:
            command = remote_command(argv, sudo=sudo, env=env, cwd=cwd, timeout=timeout, tag=tag)
        except ProviderError as exc:
            raise ProviderError(f"{self.host_id}: {exc.message}") from None
        name = shlex.join(argv[:1])
        started = time.monotonic()
        async with self._sessions:
            process = await self._start(command, name)
            try:
                async with asyncio.timeout(timeout + _CLIENT_GRACE_S):
                    stdout, stderr = await self._communicate(process, stdin)
            except TimeoutError:
                out, err = self._abandon(process, tag, sudo)
                raise CommandTimeout(
                    f"{self.host_id}: {name} timed out after {timeout:g}s (host not answering)",
                    stdout=out,
                    stderr=err,
                ) from None
            except (asyncssh.Error, OSError) as exc:
                self._abandon(process, tag, sudo)
                raise SSHError(f"{self._where()}: {name} failed: {exc}") from None
            except BaseException:
                self._abandon(process, tag, sudo)  # cancelled: stop the remote command too
                raise
        returncode = process.exit_status
        if returncode is None:
            # No exit status: the channel closed (connection lost) or the command was signalled.
            signalled = process.exit_signal[0] if process.exit_signal else None
            if signalled is None:
                raise SSHError(f"{self._where()}: connection lost while running {name}")
            returncode = 128 + _signal_number(signalled)
        elapsed = time.monotonic() - started
        # The remote `timeout` exits 124 (TERM sufficed) or 137 (needed KILL) at the deadline.
        if returncode in (124, 137) and elapsed >= timeout:
            raise CommandTimeout(
                f"{self.host_id}: {name} timed out after {timeout:g}s", stdout=stdout, stderr=stderr
            )
        if returncode == 127 and _not_found(stderr):
            raise ProviderError(f"{self.host_id}: cannot run {name}: {_tail(stderr)}")
        if cwd is not None and returncode == 125 and b"can't cd" in stderr:
            raise ProviderError(f"{self.host_id}: cannot run {name} in {cwd}: {_tail(stderr)}")
        result = CommandResult(returncode, stdout, stderr)
        if check and not result.ok:
            raise ProviderError(
                f"{self.host_id}: {name} exited {returncode}: {_tail(stdout + stderr)}"
            )
        return result

    async def _start(self, command: str, name: str) -> asyncssh.SSHClientProcess[bytes]:
        """Open a session channel; when the pooled connection turned out dead, reconnect once
        (nothing ran yet, so a retry cannot run the command twice)."""
        for attempt in (0, 1):
            current = await self._connection()
            try:
                async with asyncio.timeout(self.config.connect_timeout):
                    return await current.conn.create_process(command, encoding=None)
            except (
                asyncssh.ChannelOpenError,
                asyncssh.ConnectionLost,
                OSError,
                TimeoutError,
            ) as exc:
                if attempt == 0 and current.conn.is_closed():
                    await self._drop(current)
                    continue
                if isinstance(exc, TimeoutError):
                    await self._drop(current)
                raise SSHError(f"{self._where()}: cannot start {name}: {exc}") from None
        raise AssertionError("unreachable")

    @staticmethod
    async def _communicate(
        process: asyncssh.SSHClientProcess[bytes], stdin: bytes | None
    ) -> tuple[bytes, bytes]:
        if stdin:
            process.stdin.write(stdin)
        process.stdin.write_eof()  # a command that reads stdin must see EOF, not wait forever
        stdout, stderr = await process.communicate()
        return bytes(stdout or b""), bytes(stderr or b"")

    def _abandon(
        self, process: asyncssh.SSHClientProcess[bytes], tag: str, sudo: bool
    ) -> tuple[bytes, bytes]:
        """Close the channel and stop the remote command from a second channel: sshd ignores
        the SSH "signal" request, and closing a channel without a pty does not stop a command."""
        out: bytes = b""
        err: bytes = b""
        with contextlib.suppress(Exception):
            collected = process.collect_output()
            out, err = bytes(collected[0] or b""), bytes(collected[1] or b"")
        process.close()
        task = asyncio.create_task(self._kill_tagged(tag, sudo))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return out, err

    async def _kill_tagged(self, tag: str, sudo: bool) -> None:
        # TERM to the remote `timeout` (and sudo, which relays it): `timeout` passes it on to its
        # whole process group. "[F]" keeps the pattern from matching this pkill's own command line.
        pattern = f"[{tag[0]}]{tag[1:]}"
        with contextlib.suppress(ProviderError, OSError, asyncssh.Error):
            await self._exec(["pkill", "-TERM", "-f", pattern], sudo=sudo, timeout=10.0)

    # --- files ----------------------------------------------------------------------------------

    def _temp_name(self, remote: str) -> str:
        directory, name = posixpath.split(remote)
        return posixpath.join(directory or ".", f".{name}.fraisier-{secrets.token_hex(6)}.tmp")

    async def _upload_dir(self, sftp: asyncssh.SFTPClient) -> str:
        """A fresh private directory for uploads that sudo then installs (mkdir: never reused)."""
        path = f"/tmp/fraisier-upload-{secrets.token_hex(8)}"  # noqa: S108 (fresh mkdir 0700)
        await sftp.mkdir(path, asyncssh.SFTPAttrs(permissions=0o700))
        return path

    async def _cleanup(self, path: str) -> None:
        with contextlib.suppress(ProviderError):
            await self._exec(["rm", "-rf", "--", path], sudo=False, timeout=30.0)

    async def _install(self, source: str, remote: str, mode: int) -> None:
        await self._exec(
            ["sh", "-c", _INSTALL_SCRIPT, "fraisier-put", source, remote, f"{mode:o}"],
            sudo=True,
            timeout=self.config.io_timeout,
            check=True,
        )

    async def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None:
        local = Path(local)
        if not local.is_file():
            raise ProviderError(f"{self.host_id}: {local} is not a file")

        async def upload(sftp: asyncssh.SFTPClient, dest: str) -> None:
            # Streamed into a file created owner-only, like write_file: the chmod comes after.
            async with sftp.open(dest, "wb", asyncssh.SFTPAttrs(permissions=0o600)) as fh:
                with local.open("rb") as source:  # noqa: ASYNC230 (local disk, small reads)
                    while chunk := source.read(_UPLOAD_CHUNK):
                        await fh.write(chunk)
                await fh.fsync()

        await self._put(remote, mode, upload, f"upload of {remote}")

    async def write_file(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        async def write(sftp: asyncssh.SFTPClient, dest: str) -> None:
            await write_new_file(sftp, dest, data, mode=mode)

        await self._put(remote, mode, write, f"write of {remote}", upload_sets_mode=True)

    async def _put(
        self,
        remote: str,
        mode: int,
        upload: Callable[[asyncssh.SFTPClient, str], Awaitable[Any]],
        what: str,
        *,
        upload_sets_mode: bool = False,
    ) -> None:
        """``upload`` a file to a temporary name beside ``remote``, give it ``mode`` (unless
        ``upload_sets_mode``: the upload did) and rename it into place."""
        sftp = await self._sftp()
        if self.config.sudo:
            staging = await self._file_op(what, lambda: self._upload_dir(sftp))
            try:
                await self._file_op(what, lambda: upload(sftp, f"{staging}/file"))
                await self._install(f"{staging}/file", remote, mode)
            finally:
                await self._cleanup(staging)
            return
        temp = self._temp_name(remote)

        async def put_and_rename() -> None:
            try:
                try:
                    await upload(sftp, temp)
                except asyncssh.SFTPNoSuchFile:
                    # the parent is missing: create it (only when needed: the parent exists
                    # on every write but the first)
                    parent = posixpath.dirname(remote)
                    if not parent:
                        raise
                    await make_dirs(sftp, parent)
                    await upload(sftp, temp)
                if not upload_sets_mode:
                    await sftp.chmod(temp, mode)
                await sftp.posix_rename(temp, remote)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(temp)
                raise

        await self._file_op(what, put_and_rename)

    async def put_tree(self, local_dir: Path, remote_dir: str, *, replace: bool = False,
                       stage: str | None = None) -> None:
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise ProviderError(f"{self.host_id}: {local_dir} is not a directory")
        remote_dir = remote_dir.rstrip("/") or "/"
        what = f"upload of {local_dir.name}/ to {remote_dir}"
        sftp = await self._sftp()
        if self.config.sudo:
            staging = await self._file_op(what, lambda: self._upload_dir(sftp))
            try:
                await self._file_op(what,
                                    lambda: upload_tree(sftp, local_dir, f"{staging}/tree"))
                await self._exec(
                    ["sh", "-c", _TREE_SCRIPT, "fraisier-tree", f"{staging}/tree", remote_dir, "1",
                     "1" if replace else "0"],
                    sudo=True,
                    timeout=self.config.io_timeout,
                    check=True,
                )
            finally:
                await self._cleanup(staging)
            return
        # Stage next to the destination (same filesystem), so the final moves are renames.
        if stage is None:
            stage = self._temp_name(remote_dir)
        else:
            stage = posixpath.join(posixpath.dirname(remote_dir) or "/", posixpath.basename(stage))

        try:
            await self._file_op(what, lambda: upload_tree(sftp, local_dir, stage))
        except BaseException:
            await self._cleanup(stage)
            raise
        if not await self._rename_into_place(stage, remote_dir):
            await self._exec(
                ["sh", "-c", _TREE_SCRIPT, "fraisier-tree", stage, remote_dir, "0",
                 "1" if replace else "0"],
                sudo=False,
                timeout=self.config.io_timeout,
                check=True,
            )

    async def _rename_into_place(self, stage: str, remote_dir: str) -> bool:
        """The staged tree renamed to ``remote_dir`` over SFTP when nothing is there (a new
        release, the common case: no remote process). False: something is there (to merge
        or replace), left to the tree script."""
        sftp = await self._sftp()
        try:
            await self._file_op(f"rename of {stage}",
                                lambda: sftp.rename(stage, remote_dir))
        except SSHError:
            return False
        return True

    async def read_file(self, remote: str, *, limit: int | None = None) -> bytes | None:
        if self.config.sudo:
            result = await self._exec(
                ["sh", "-c", _READ_SCRIPT, "fraisier-read", remote],
                sudo=True,
                timeout=self.config.io_timeout,
            )
            if result.returncode == _MISSING:
                return None
            if not result.ok:
                raise SSHError(f"{self._where()}: cannot read {remote}: {_tail(result.stderr)}")
            return result.stdout if limit is None else result.stdout[:limit]
        sftp = await self._sftp()

        async def read() -> bytes | None:
            try:
                if limit is None:
                    return await read_whole_file(sftp, remote)
                # With a limit (a /proc file, read by a gate that may cancel it), one request in
                # this task: asyncssh's block reader runs its own tasks, which outlive a cancel
                # and end in errors nobody retrieves (asyncio logs each at exit).
                async with sftp.open(remote, "rb", block_size=0) as fh:
                    data = await fh.read(limit)
                    return data if isinstance(data, bytes) else data.encode()
            except asyncssh.SFTPNoSuchFile:
                return None

        return await self._file_op(f"read of {remote}", read)

    async def list_dir(self, remote: str) -> list[str] | None:
        """Names in directory ``remote`` (dot-files too, not ``.``/``..``); None if missing.
        Over SFTP (no remote process), through ``sudo ls`` on a sudo host."""
        if self.config.sudo:
            result = await self._exec(
                ["sh", "-c", _LIST_SCRIPT, "fraisier-ls", remote],
                sudo=True,
                timeout=self.config.io_timeout,
            )
            if result.returncode == _MISSING:
                return None
            if not result.ok:
                raise SSHError(f"{self._where()}: cannot list {remote}: {_tail(result.stderr)}")
            return [n for n in result.stdout.decode(errors="replace").splitlines() if n]
        sftp = await self._sftp()

        async def listing() -> list[str] | None:
            try:
                names = await sftp.listdir(remote)
            except asyncssh.SFTPNoSuchFile:
                return None
            return [str(n) for n in names if n not in (".", "..")]

        return await self._file_op(f"listing of {remote}", listing)

    async def close(self) -> None:
        if self._background:  # let pending remote kills finish before the connection goes
            await asyncio.wait(set(self._background), timeout=10.0)
        self._closed = True
        if self._conn is not None:
            await self._drop(self._conn)


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def _not_found(stderr: bytes) -> bool:
    """The remote `timeout`/`env` could not find or execute the command itself."""
    text = stderr.decode(errors="replace")
    return bool(
        re.search(r"^env: .*No such file or directory", text, re.MULTILINE)
        or re.search(r"^fraisier-cwd: .*exec: .*not found", text, re.MULTILINE)
    )


class SSHPool:
    """One ``SSHTransport`` per host for a reconcile pass; ``close()`` (or ``async with``)
    closes every connection at the end."""

    def __init__(self) -> None:
        self._transports: dict[SSHHostConfig, SSHTransport] = {}

    def get(self, config: SSHHostConfig) -> SSHTransport:
        transport = self._transports.get(config)
        if transport is None:
            transport = self._transports[config] = SSHTransport(config)
        return transport

    @property
    def transports(self) -> list[SSHTransport]:
        return list(self._transports.values())

    async def close(self) -> None:
        transports, self._transports = list(self._transports.values()), {}
        await asyncio.gather(*(t.close() for t in transports), return_exceptions=True)

    async def __aenter__(self) -> SSHPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
