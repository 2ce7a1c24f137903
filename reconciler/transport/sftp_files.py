"""One file read or written over SFTP in as few round trips as it takes.

An SFTP server runs a session's requests in the order they arrive (OpenSSH's ``sftp-server``
reads them from one pipe), so requests that do not need an earlier one's answer are sent back
to back and their answers awaited together: a write is ``open``, then ``write``, ``fsetstat``,
``fsync`` and ``close`` in one round trip, where awaiting each took four. Each request still
gets its own answer: an error in any of them fails the write, and the caller renames nothing.

A read of a whole file asks for the server's largest read at once. SFTP answers a read of a
normal file in full unless the file ends first (draft-ietf-secsh-filexfer-02, 6.4), so a short
answer is the end of the file; asyncssh's ``read()`` of a whole file asks the file's size
first (``fstat``), a request and a round trip more, and reads nothing of a file whose size
the server does not know (``/proc``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import cast

import asyncssh


async def _together(*requests: Awaitable[object]) -> list[object]:
    """Send ``requests`` back to back, wait for every answer, raise the first error; else
    the answers, in order."""
    results = await asyncio.gather(*requests, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


async def write_new_file(sftp: asyncssh.SFTPClient, path: str, data: bytes, *, mode: int,
                         created_mode: int = 0o600) -> None:
    """Create ``path`` (truncated if it exists) holding ``data``, durable (fsync) and with
    ``mode`` once written. It is created with ``created_mode`` (owner-only by default: the
    data may be a secret), and set to ``mode`` only after the data is in."""
    fh = await sftp.open(path, "wb", asyncssh.SFTPAttrs(permissions=created_mode),
                         block_size=0)
    try:
        step = sftp.limits.max_write_len or len(data) or 1
        writes = [fh.write(data[at:at + step], at) for at in range(0, len(data), step)]
        await _together(*writes, fh.chmod(mode), fh.fsync(), fh.close())
    finally:
        await _close_quietly(fh)


async def read_whole_file(sftp: asyncssh.SFTPClient, path: str) -> bytes:
    """The content of ``path``, a normal file: one ``read`` and the ``close`` in one round
    trip after the ``open`` for a file smaller than the server's largest read."""
    step = sftp.limits.max_read_len or 32768
    fh = await sftp.open(path, "rb", block_size=0)
    try:
        answer, _ = await _together(fh.read(step, 0), fh.close())
    finally:
        await _close_quietly(fh)
    first = _as_bytes(cast(bytes, answer))
    if len(first) < step:
        return first
    parts = [first]  # a large file: the rest, one read after the other until a short one
    async with sftp.open(path, "rb", block_size=0) as rest:
        offset = len(first)
        while True:
            chunk = _as_bytes(await rest.read(step, offset))
            parts.append(chunk)
            offset += len(chunk)
            if len(chunk) < step:
                return b"".join(parts)


def _as_bytes(data: bytes | str) -> bytes:
    """A read's answer: bytes for a file opened in binary mode (asyncssh types it either)."""
    return data if isinstance(data, bytes) else data.encode()


async def _close_quietly(fh: asyncssh.SFTPClientFile) -> None:
    """Close ``fh`` unless its close was answered already (a failed or cancelled batch):
    an error closing it would hide the batch's own."""
    try:
        await fh.close()
    except (asyncssh.Error, OSError):
        pass
