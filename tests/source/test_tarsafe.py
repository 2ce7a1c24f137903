"""reconciler.source.tarsafe: the data-filter checks, exercised on this Python's fallback path
too (Debian 12's CPython 3.11.2 has no tarfile.data_filter)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from reconciler.errors import SourceError, UnsafeSourceError
from reconciler.source import tarsafe


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer)


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644
          ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info


@pytest.fixture(params=["native", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    return str(request.param)


def test_regular_files_and_inner_links_extract(tmp_path: Path, mode: str) -> None:
    tar = archive((entry("app/run.sh", mode=0o4755), b"#!/bin/sh\n"),
                  (entry("app/link", tarfile.SYMTYPE, "run.sh"), b""))
    tarsafe.extract_data(tar, tmp_path)
    assert (tmp_path / "app/run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "app/link").resolve() == (tmp_path / "app/run.sh").resolve()
    assert (tmp_path / "app/run.sh").stat().st_mode & 0o7777 == 0o755  # set-uid dropped


@pytest.mark.parametrize("bad", [
    entry("../escape"),
    entry("out", tarfile.SYMTYPE, "../../etc"),
    entry("abs", tarfile.SYMTYPE, "/etc/shadow"),
    entry("dev", tarfile.CHRTYPE),
])
def test_unsafe_members_are_refused(tmp_path: Path, bad: tarfile.TarInfo, mode: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    tar = archive((bad, b""))
    # The project's error on both paths: tarfile's own FilterError (native path) is not one,
    # and used to end the daemon (issue 16).
    with pytest.raises(UnsafeSourceError):
        tarsafe.extract_data(tar, dest)
    assert not (tmp_path / "escape").exists()


def test_unreadable_archive_is_a_source_error(tmp_path: Path, mode: str) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = entry("big")
        info.size = 4096
        tar.addfile(info, io.BytesIO(b"x" * 4096))
    truncated = tarfile.open(fileobj=io.BytesIO(data.getvalue()[:1024]))
    with pytest.raises(SourceError, match="archive cannot be read"):
        tarsafe.extract_data(truncated, tmp_path)
