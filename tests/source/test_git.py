"""GitSource on real repositories: local paths, file:// remotes, fetch failures, export."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import SourceError
from reconciler.source.git import GitSource, is_remote

pytestmark = pytest.mark.timeout(60)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@example.invalid", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "cfg"
    (r / "fleet" / "sub").mkdir(parents=True)
    (r / "fleet" / "a.yaml").write_text("a: 1\n")
    (r / "fleet" / "sub" / "b.yml").write_text("b: 2\n")
    (r / "fleet" / "notes.txt").write_text("not yaml\n")
    (r / "app").mkdir()
    (r / "app" / "main.py").write_text("print('hi')\n")
    git(r, "init", "-q", "-b", "main")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "one")
    return r


def test_is_remote() -> None:
    assert is_remote("https://example.invalid/x.git")
    assert is_remote("git@example.invalid:owner/repo.git")
    assert is_remote("file:///srv/repo")
    assert not is_remote("/srv/repo")
    assert not is_remote("./repo")


def test_local_repo_lists_yaml_files_at_a_commit(repo: Path) -> None:
    src = GitSource(str(repo), path="fleet")
    sync = src.sync()
    assert sync.commit == git(repo, "rev-parse", "HEAD")
    files = src.files(sync.commit)
    assert [f.path for f in files] == ["fleet/a.yaml", "fleet/sub/b.yml"]
    assert files[0].read() == b"a: 1\n"
    assert files[0].blob_id == git(repo, "rev-parse", "HEAD:fleet/a.yaml")
    # Uncommitted edits are not desired state.
    (repo / "fleet" / "a.yaml").write_text("a: 2\n")
    assert src.files(sync.commit)[0].read() == b"a: 1\n"
    assert not src.sync().changed


def cat_files_running(repo: Path) -> list[int]:
    """This process's child ``git cat-file`` processes reading ``repo`` that have not exited
    (another test of this worker may have left one of its own repository running)."""
    import os

    found = []
    for pid in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if (int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"cat-file" in cmdline
                and str(repo).encode() in cmdline):
            found.append(int(pid))
    return found


def test_close_stops_the_blob_reader_and_a_later_read_starts_it_again(repo: Path) -> None:
    # `diff` closes its source once done (its process then ends without the interpreter's
    # clean-up, console/process_end.py): the git cat-file is stopped and waited for by then
    src = GitSource(str(repo), path="fleet")
    files = src.files(src.sync().commit)
    assert files[0].read() == b"a: 1\n"
    assert len(cat_files_running(repo)) == 1
    src.close()
    assert cat_files_running(repo) == []
    assert files[1].read() == b"b: 2\n"  # read on after close: a new reader
    assert len(cat_files_running(repo)) == 1
    src.close()
    src.close()  # twice: nothing left to stop
    assert cat_files_running(repo) == []


def test_repo_path_inside_work_tree_means_that_folder(repo: Path) -> None:
    src = GitSource(str(repo / "fleet"))
    assert src.path == "fleet"


def test_not_a_repo_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a git repository"):
        GitSource(str(tmp_path))


def test_unknown_ref_and_missing_path(repo: Path) -> None:
    with pytest.raises(SourceError, match="cannot resolve ref"):
        GitSource(str(repo), ref="nope").sync()
    src = GitSource(str(repo), path="missing")
    with pytest.raises(SourceError, match="no such folder"):
        src.files(src.sync().commit)


def test_remote_clone_fetch_and_fetch_failure_keeps_last_good(repo: Path, tmp_path: Path) -> None:
    url = f"file://{repo}"
    src = GitSource(url, ref="main", path="fleet", state_dir=tmp_path / "state")
    first = src.sync()
    assert first.changed and first.error is None
    (repo / "fleet" / "c.yaml").write_text("c: 3\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    second = src.sync()
    assert second.changed and second.commit == git(repo, "rev-parse", "HEAD")
    assert "fleet/c.yaml" in [f.path for f in src.files(second.commit)]
    shutil.rmtree(repo)  # the remote goes away
    third = src.sync()
    assert third.error and third.commit == second.commit and not third.changed


def test_clone_failure_without_history_is_an_error(tmp_path: Path) -> None:
    src = GitSource(f"file://{tmp_path}/absent", state_dir=tmp_path / "state")
    with pytest.raises(SourceError, match="cannot clone"):
        src.sync()


def test_credentials_never_echoed(tmp_path: Path) -> None:
    src = GitSource("https://user:s3cret@127.0.0.1:9/x.git", state_dir=tmp_path / "state")
    with pytest.raises(SourceError) as info:
        src.sync()
    assert "s3cret" not in str(info.value)


async def test_export_folder_at_commit(repo: Path, tmp_path: Path) -> None:
    src = GitSource(str(repo))
    commit = src.sync().commit
    (repo / "app" / "main.py").write_text("changed\n")  # not committed: not exported
    dest = tmp_path / "out"
    await src.export(commit, "app", dest)
    assert (dest / "main.py").read_text() == "print('hi')\n"
    whole = tmp_path / "whole"
    await src.export(commit, "", whole)
    assert (whole / "fleet" / "a.yaml").exists()
    assert src.tree_id(commit, "app") == git(repo, "rev-parse", f"{commit}:app")


async def test_exports_of_one_folder_share_one_archive_and_follow_the_commit(
        repo: Path, tmp_path: Path) -> None:
    """Many Services built from one folder: one `git archive` for all their exports, each
    export complete on its own; another commit's export is that commit's files."""
    import asyncio

    src = GitSource(str(repo))
    first = src.sync().commit
    dests = [tmp_path / f"out{i}" for i in range(20)]
    await asyncio.gather(*(src.export(first, "app", d) for d in dests))
    assert all((d / "main.py").read_text() == "print('hi')\n" for d in dests)
    assert src.archives_made == 1
    (repo / "app" / "main.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    second = src.sync().commit
    await src.export(second, "app", tmp_path / "v2")
    await src.export(first, "app", tmp_path / "v1-again")
    assert (tmp_path / "v2" / "main.py").read_text() == "print('v2')\n"
    assert (tmp_path / "v1-again" / "main.py").read_text() == "print('hi')\n"
    assert src.archives_made == 2  # the first commit's archive was kept
