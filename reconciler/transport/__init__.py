"""Transports: how commands and files reach a host (pyinfra's "connectors").

``local`` runs on this machine; ``ssh`` reaches a remote host through asyncssh with strict host-key
checking. Providers (bare metal, compose over SSH) are written against ``Transport`` only.
Arguments are argv lists; an implementation that needs a shell string (SSH) quotes every element.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.errors import ProviderError


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def text(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")


class CommandTimeout(ProviderError):
    """A command outlived its timeout and was killed; carries the output it produced so far
    (callers such as Job runs report it)."""

    code = "FR401"
    hint = ("find out why the command hangs from its attached output, or raise the limit (a "
            "Job's `timeout`, the Target's `ssh.commandTimeout` for transfers)")

    def __init__(self, message: str, *, stdout: bytes = b"", stderr: bytes = b"") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


class Transport(Protocol):
    """One host. Every call has a timeout; failures raise ``reconciler.errors.ProviderError``
    (or a subclass) with a message that names the host, never a secret."""

    host_id: str
    address: str
    @property
    def reads_in_process(self) -> bool:
        """A file read starts no process on the host (in-process here, an SFTP request over
        SSH); False where each read is a command (a sudo login): callers that read many small
        files then ask one command instead."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - per-call timeouts are the protocol
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run argv to completion. ``check`` raises on a non-zero exit."""

    async def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None:
        """Copy one local file to ``remote`` (written to a temp name, then renamed)."""

    async def put_tree(self, local_dir: Path, remote_dir: str, *, replace: bool = False,
                       stage: str | None = None) -> None:
        """Copy a local directory tree into ``remote_dir`` (created if missing). ``replace``:
        an existing ``remote_dir`` is deleted first instead of merged into. ``stage``: the name
        of the upload's staging directory beside ``remote_dir``, where a transport uses one."""

    async def write_file(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace ``remote`` with ``data``."""

    async def read_file(self, remote: str, *, limit: int | None = None) -> bytes | None:
        """Contents of ``remote``, or None when it does not exist. ``limit``: at most that many
        bytes, read without asking the file's size first (a file of /proc says 0: over SFTP
        it would read empty without one)."""

    async def list_dir(self, remote: str) -> list[str] | None:
        """Names in directory ``remote`` (hidden ones too), or None when it does not exist."""

    async def close(self) -> None: ...
