"""The local transport: commands and files on this machine.

Commands run with ``asyncio.create_subprocess_exec`` (argv, never a shell) in a session of their
own, so a timeout kills the whole process group — a command's children included — and not just
the direct child. Files are written to a temporary name in the destination directory and renamed
over the target, so a reader never sees a half-written file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.errors import ProviderError
from reconciler.transport import CommandResult, CommandTimeout

# After a kill, how long to wait for the pipes to close; a grandchild that left the process
# group could hold them open forever.
_DRAIN_AFTER_KILL_S = 2.0
_TAIL_CHARS = 2000


def output_tail(data: bytes, limit: int = _TAIL_CHARS) -> str:
    """The end of a command's output, for error messages."""
    text = data.decode(errors="replace").strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _read_all(stream: asyncio.StreamReader | None, sink: bytearray) -> None:
    if stream is None:
        return
    while chunk := await stream.read(65536):
        sink += chunk


class LocalTransport:
    """This machine, as a ``Transport``.

    ``env``, when given, is the *whole* environment of the command (nothing is inherited): callers
    build it on purpose so that the daemon's own variables do not leak into services.
    """

    reads_in_process = True

    def __init__(self, host_id: str = "local", address: str = "127.0.0.1") -> None:
        self.host_id = host_id
        self.address = address

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
        if not argv:
            raise ProviderError(f"{self.host_id}: empty command")
        argv = [str(a) for a in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            where = f" in {cwd}" if cwd else ""
            raise ProviderError(
                f"{self.host_id}: cannot run {argv[0]!r}{where}: {exc.strerror or exc}"
            ) from exc

        stdout, stderr = bytearray(), bytearray()
        readers = asyncio.gather(_read_all(proc.stdout, stdout), _read_all(proc.stderr, stderr))

        async def feed_and_wait() -> int:
            if stdin is not None and proc.stdin is not None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(stdin)
                    await proc.stdin.drain()
                proc.stdin.close()
            # shield: a timeout cancels this coroutine, but the readers must keep what they have
            await asyncio.shield(readers)
            return await proc.wait()

        try:
            async with asyncio.timeout(timeout):
                returncode = await feed_and_wait()
        except TimeoutError:
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DRAIN_AFTER_KILL_S):
                    await asyncio.shield(readers)
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readers
            await proc.wait()
            raise CommandTimeout(
                f"{self.host_id}: {shlex.join(argv[:1])} timed out after {timeout:g}s",
                stdout=bytes(stdout),
                stderr=bytes(stderr),
            ) from None
        except BaseException:
            # Cancelled by the caller: do not leave the command running behind our back.
            _kill_group(proc.pid)
            readers.cancel()
            raise

        result = CommandResult(returncode, bytes(stdout), bytes(stderr))
        if check and not result.ok:
            raise ProviderError(
                f"{self.host_id}: {shlex.join(argv[:1])} exited {returncode}: "
                f"{output_tail(result.stdout + result.stderr)}"
            )
        return result

    async def put_file(self, local: Path, remote: str, mode: int = 0o644) -> None:
        try:
            await asyncio.to_thread(_copy_file_atomic, Path(local), Path(remote), mode)
        except OSError as exc:
            raise ProviderError(f"{self.host_id}: copying to {remote} failed: {exc}") from exc

    async def put_tree(self, local_dir: Path, remote_dir: str, *, replace: bool = False,
                       stage: str | None = None) -> None:
        try:
            if replace:
                await asyncio.to_thread(shutil.rmtree, remote_dir, True)
            await asyncio.to_thread(_copy_tree, Path(local_dir), Path(remote_dir))
        except OSError as exc:
            raise ProviderError(f"{self.host_id}: copying into {remote_dir} failed: {exc}") from exc

    async def write_file(self, remote: str, data: bytes, mode: int = 0o644) -> None:
        try:
            await asyncio.to_thread(write_file_atomic, Path(remote), data, mode)
        except OSError as exc:
            raise ProviderError(f"{self.host_id}: writing {remote} failed: {exc}") from exc

    async def read_file(self, remote: str, *, limit: int | None = None) -> bytes | None:
        try:
            data = await asyncio.to_thread(Path(remote).read_bytes)
            return data if limit is None else data[:limit]
        except FileNotFoundError:
            return None

    async def list_dir(self, remote: str) -> list[str] | None:
        try:
            return await asyncio.to_thread(os.listdir, remote)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ProviderError(f"{self.host_id}: listing {remote} failed: {exc}") from exc

    async def close(self) -> None:
        """Nothing to release: every command is its own process."""


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file next to ``path``, fsync it, and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy_file_atomic(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy ``src`` into ``dest``, replacing what is there; symlinks are copied as symlinks
    (a symlink in ``dest`` is replaced, never written through)."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(src):
        target = dest / entry.name
        if entry.is_symlink():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            tmp = dest / f".{entry.name}.{os.getpid()}.tmp-link"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(os.readlink(entry.path), tmp)
            os.replace(tmp, target)
        elif entry.is_dir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                os.unlink(target)
            _copy_tree(Path(entry.path), target)
        else:
            if target.is_symlink():
                os.unlink(target)
            elif target.is_dir():
                shutil.rmtree(target)
            shutil.copy2(entry.path, target)
    shutil.copystat(src, dest)
