"""Artifact sources: a file or archive at a URL, verified against its sha256 before use."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import httpx

from reconciler.errors import SourceError
from reconciler.observe.redact import redact
from reconciler.source.tarsafe import extract_data


def _copy_local(src: Path, local: Path, digest: Any) -> None:
    if not src.is_file():
        raise SourceError(f"artifact {src}: no such file")
    with src.open("rb") as fin, local.open("wb") as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            digest.update(chunk)
            fout.write(chunk)


def _unpack(local: Path, name: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if tarfile.is_tarfile(local):
        with tarfile.open(local) as tar:
            # The "data" filter refuses absolute paths, links out of dest and device files.
            extract_data(tar, dest)
    elif zipfile.is_zipfile(local):
        with zipfile.ZipFile(local) as zf:
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise SourceError(f"artifact {name}: unsafe path {info.filename!r}")
            zf.extractall(dest)  # noqa: S202 - every member was checked above
    else:
        shutil.copy2(local, dest / name)


async def fetch_artifact(url: str, sha256: str, dest: Path, *,
                         timeout: float = 300.0) -> None:  # noqa: ASYNC109
    """Download (``file://``, ``http(s)://``) and verify ``url``, then unpack it into ``dest``
    (tar or zip archives) or place it there as a single file. File work runs in a thread."""
    parsed = urlparse(url)
    shown = redact(f"{parsed.scheme}://{parsed.netloc}{parsed.path}", urls=(url,))
    with tempfile.TemporaryDirectory() as tmp:
        name = PurePosixPath(unquote(parsed.path)).name or "artifact"
        local = Path(tmp) / name
        digest = hashlib.sha256()
        if parsed.scheme == "file":
            await asyncio.to_thread(_copy_local, Path(unquote(parsed.path)), local, digest)
        elif parsed.scheme in ("http", "https"):
            try:
                async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client, \
                        client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise SourceError(f"artifact {shown}: HTTP {resp.status_code}")
                    with local.open("wb") as fout:
                        async for chunk in resp.aiter_bytes():
                            digest.update(chunk)
                            fout.write(chunk)
            except httpx.HTTPError as exc:
                raise SourceError(f"artifact {shown}: {type(exc).__name__}") from exc
        else:
            raise SourceError(f"artifact {shown}: unsupported scheme {parsed.scheme!r}")
        if not hmac.compare_digest(digest.hexdigest(), sha256.lower()):
            raise SourceError(f"artifact {name}: sha256 mismatch (got {digest.hexdigest()})")
        await asyncio.to_thread(_unpack, local, name, dest)
