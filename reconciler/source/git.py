"""The config repository: resolve a ref to a commit, list its desired-state files, export folders.

Every reconcile is pinned to one commit SHA. Remote repositories are cloned (bare) into the state
dir and fetched; a fetch failure keeps the last fetched commit and is reported, never raised into
the loop (see ``GitSource.sync``).

Commits are read with the ``git`` command itself (``rev-parse``, ``ls-tree``, one ``cat-file
--batch`` process for the blobs), as GitPython did underneath; GitPython (``GitSource.repo``) is
imported only to clone and fetch and by the daemon's other uses of the repository, so a `diff` or
`apply` of a local repository does not load it (its import is a large part of their start-up,
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from reconciler.errors import SourceError
from reconciler.observe.redact import redact
from reconciler.spec.loader import SourceFile
from reconciler.spec.tree import MAX_READ, EntryKind

if TYPE_CHECKING:
    import git

log = logging.getLogger("reconciler.source")

_URL_RE = re.compile(r"^([a-z][a-z0-9+.-]*://|[^/\s]+@[^/\s:]+:)", re.IGNORECASE)
YAML_SUFFIXES = (".yaml", ".yml")
# A clone or fetch that takes longer is killed and counts as a failed fetch (the last good commit
# is kept). Without it, a remote that accepts the connection and never answers (a black-holed
# route, a wedged git server) blocks git, and the daemon's loop with it, forever: git:// and
# plain HTTP have no read timeout of their own. Override with RECONCILER_GIT_TIMEOUT (a Go
# duration, e.g. 30s).
DEFAULT_GIT_TIMEOUT_S = 120.0
GIT_TIMEOUT_ENV = "RECONCILER_GIT_TIMEOUT"


def git_timeout() -> float:
    """Seconds a clone or fetch may take: $RECONCILER_GIT_TIMEOUT, else the default."""
    raw = os.environ.get(GIT_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_GIT_TIMEOUT_S
    from reconciler.spec.durations import parse_duration

    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise SourceError(f"{GIT_TIMEOUT_ENV}: {exc}",
                          hint="set it to a duration such as 30s or 2m, or unset it") from None
    if seconds <= 0:
        raise SourceError(f"{GIT_TIMEOUT_ENV}: must be positive, not {raw!r}",
                          hint="set it to a duration such as 30s or 2m, or unset it")
    return seconds


def is_remote(repo: str) -> bool:
    """A clone URL (scheme:// or scp-like user@host:path) rather than a local path."""
    return bool(_URL_RE.match(repo))


@dataclass
class SyncResult:
    commit: str
    changed: bool
    error: str | None = None  # set when a fetch failed and the last good commit is kept
    duration_s: float = 0.0


class GitSource:
    """A config repo at ``repo`` (path or URL), following ``ref``, reading below ``path``."""

    def __init__(self, repo: str, *, ref: str | None = None, path: str = "",
                 state_dir: Path | None = None, timeout: float | None = None) -> None:
        self.url = repo
        self._archives: dict[tuple[str, str], bytes] = {}  # see _archive()
        self._archiving: dict[tuple[str, str], asyncio.Future[bytes]] = {}
        self.archives_made = 0  # `git archive` processes run (tests read it)
        self.timeout = timeout if timeout is not None else git_timeout()
        self.display_url = redact(repo)
        self.ref = ref
        self.path = str(PurePosixPath(path)) if path not in ("", ".") else ""
        self.remote = is_remote(repo)
        self.commit: str | None = None
        self._tree_ids: dict[tuple[str, str], str | None] = {}
        self._repo: git.Repo | None = None  # GitPython, opened on first use of ``repo``
        self._blobs: _Blobs | None = None
        # the work tree of a local, non-bare repository (uncommitted edits are looked for there)
        self.work_tree: Path | None = None
        if self.remote:
            if state_dir is None:
                raise SourceError("a state directory is needed to clone a remote repository")
            digest = hashlib.sha256(repo.encode()).hexdigest()[:16]
            self.checkout = state_dir / "repos" / digest
            self._cloned = False  # the first sync clones, or opens a clone left by a process
        else:
            local = Path(repo).expanduser().resolve()
            found = _discover(local)
            if found is None:
                raise SourceError(
                    f"{repo}: not a git repository (apply and diff read committed state; "
                    "`reconciler validate PATH` checks plain folders)"
                )
            self.checkout, self.work_tree, prefix = found
            self._cloned = True
            if self.work_tree is not None and self.path == "":
                # --repo pointing inside a work tree means "this folder": keep it as the path.
                self.path = prefix.rstrip("/")

    # -- repository access -------------------------------------------------------------
    @property
    def repo(self) -> git.Repo:
        """The repository through GitPython (the daemon's pins, notifications, worktree)."""
        if self._repo is None:
            import git

            self._repo = git.Repo(self.git_dir)
        return self._repo

    def _clone(self) -> None:
        import git

        if (self.checkout / "HEAD").exists():
            self._cloned = True
            return
        self.checkout.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkout.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # Not Repo.clone_from: it runs git as a process GitPython does not time out.
            git.Git.check_unsafe_protocols(self.url)
            git.Git().clone("--bare", "--", self.url, str(tmp),
                            kill_after_timeout=self.timeout)
        except git.GitCommandError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SourceError(f"cannot clone {self.display_url}: {_git_reason(exc, self.url)}",
                              hint=_git_hint(exc, self.url)) from exc
        tmp.rename(self.checkout)
        self._cloned = True

    @property
    def git_dir(self) -> Path:
        if not self._cloned:
            self._clone()
        return self.checkout

    def _fetch(self) -> None:
        # A bare clone maps remote branches straight onto local refs, so `ref` resolves as-is.
        self.repo.git.fetch("--prune", "--tags", "--force", "origin",
                            "+refs/heads/*:refs/heads/*", kill_after_timeout=self.timeout)

    def _git(self, *args: str) -> bytes | None:
        """stdout of ``git ARGS`` on the repository; None when git fails (exit code not 0)."""
        proc = subprocess.run(["git", "--git-dir", str(self.git_dir), *args],
                              capture_output=True, timeout=self.timeout, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def resolve(self, ref: str | None = None) -> str:
        """The commit SHA ``ref`` (default: the followed ref, else HEAD) points to now."""
        name = ref or self.ref or "HEAD"
        out = self._git("rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{name}^{{commit}}")
        if out is None:
            raise SourceError(f"{self.display_url}: cannot resolve ref {name!r}")
        return out.decode().strip()

    def blob_reader(self) -> _Blobs:
        if self._blobs is None:
            self._blobs = _Blobs(self.git_dir)
        return self._blobs

    def close(self) -> None:
        """Stop the blob reader's ``git cat-file`` (started again if something reads on)."""
        if self._blobs is not None:
            self._blobs.close()

    def entries_at(self, commit: str, folder: str, *,
                   sizes: bool = True) -> dict[str, _Entry] | None:
        """Every entry below ``folder`` at ``commit`` (paths relative to it), or None when
        ``folder`` is not a folder there. ``sizes=False``: without their sizes (git then does
        not look into every blob: ~40 % of the listing's CPU for 100 files)."""
        out = self._git("ls-tree", "-r", "-t", *(("-l",) if sizes else ()), "-z",
                        "--end-of-options",
                        f"{commit}:{folder}" if folder else f"{commit}^{{tree}}")
        if out is None:
            return None
        entries: dict[str, _Entry] = {}
        for line in out.split(b"\0"):
            if not line:
                continue
            meta, _, name = line.partition(b"\t")
            if sizes:
                mode, kind, sha, size_text = meta.split()
                size: int | None = int(size_text) if size_text != b"-" else 0
            else:
                (mode, kind, sha), size = meta.split(), None
            entries[name.decode("utf-8", "surrogateescape")] = _Entry(
                int(mode, 8), kind.decode(), sha.decode(), size)
        return entries

    def sync(self) -> SyncResult:
        """Fetch (remotes) and resolve the followed ref. A failed fetch keeps the last commit."""
        started = time.monotonic()
        error: str | None = None
        if self.remote:
            import git  # clone and fetch only

            try:
                if not self._cloned:
                    self._clone()
                else:
                    self._fetch()
            except (git.GitCommandError, SourceError) as exc:
                error = (_git_reason(exc, self.url) if isinstance(exc, git.GitCommandError)
                         else str(exc))
                log.warning("fetch failed, keeping last good desired state",
                            extra={"repo": self.display_url, "error": error})
                if self.commit is None and not self._cloned:
                    raise SourceError(f"cannot fetch {self.display_url}: {error}",
                                      hint=_git_hint(exc, self.url)) from exc
        commit = self.resolve()
        changed = commit != self.commit
        self.commit = commit
        return SyncResult(commit, changed, error, time.monotonic() - started)

    # -- reading -------------------------------------------------------------------------
    def files(self, commit: str) -> list[SourceFile]:
        """Desired-state YAML files below ``path`` at ``commit`` (blob ids for the spec cache)."""
        entries = self.entries_at(commit, self.path, sizes=False)  # blobs are read whole
        if entries is None:
            if self._git("cat-file", "-e", "--end-of-options", f"{commit}:{self.path}") is None:
                raise SourceError(f"{self.path}: no such folder at commit {commit[:12]}")
            raise SourceError(f"{self.path}: not a folder at commit {commit[:12]}")
        blobs = self.blob_reader()
        out: list[SourceFile] = []
        prefix = self.path + "/" if self.path else ""
        for rel, item in entries.items():
            if item.kind != "blob":
                continue
            path = prefix + rel
            if not path.endswith(YAML_SUFFIXES):
                continue
            if any(part.startswith(".") for part in PurePosixPath(path).parts):
                continue
            blob, refused = _follow_links(entries, blobs, item, rel, self.path)
            if blob is None:
                out.append(SourceFile(path=path, blob_id=item.sha, read=blobs.reader(item.sha),
                                      refused=refused))
                continue
            out.append(SourceFile(path=path, blob_id=blob.sha, read=blobs.reader(blob.sha)))
        out.sort(key=lambda f: f.path)
        return out

    def tree_id(self, commit: str, path: str) -> str | None:
        """Git tree (or blob) id of ``path`` at ``commit``: a path source's revision hangs on it."""
        cache_key = (commit, path)
        if cache_key not in self._tree_ids:
            out = self._git("rev-parse", "--verify", "--quiet", "--end-of-options",
                            f"{commit}:{path.strip('/')}")
            self._tree_ids[cache_key] = out.decode().strip() if out is not None else None
        return self._tree_ids[cache_key]

    def tree(self, commit: str) -> GitTree:
        """The repository's files at ``commit``, for the ``source.path`` checks of a load."""
        return GitTree(self, commit)

    async def export(self, commit: str, path: str, dest: Path) -> None:
        """Write the folder ``path`` of ``commit`` into ``dest`` (``git archive``, no work tree)."""
        clean = path.strip("/")
        out = await self._archive(commit, clean)
        await asyncio.to_thread(_extract, out, clean, dest)

    async def _archive(self, commit: str, clean: str) -> bytes:
        """``git archive`` of ``clean`` at ``commit``, one process for every export of it: a
        fleet's Services built from one folder (1,000 on 20 hosts) asked for it 1,000 times. A
        commit is immutable, so the bytes are kept (the last few, small ones only); concurrent
        callers share the one process in flight."""
        key = (commit, clean)
        kept = self._archives.get(key)
        if kept is not None:
            return kept
        running = self._archiving.get(key)
        if running is None:
            running = asyncio.ensure_future(self._run_archive(commit, clean))
            self._archiving[key] = running
            running.add_done_callback(lambda _: self._archiving.pop(key, None))
        out = await asyncio.shield(running)
        if len(out) <= _ARCHIVE_KEPT_BYTES:
            self._archives[key] = out
            while len(self._archives) > _ARCHIVES_KEPT:
                self._archives.pop(next(iter(self._archives)))
        return out

    async def _run_archive(self, commit: str, clean: str) -> bytes:
        self.archives_made += 1
        argv = ["git", "--git-dir", str(self.git_dir), "archive", "--format=tar", commit]
        if clean:
            argv += ["--", clean]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(300):
            out, err = await proc.communicate()
        if proc.returncode != 0:
            raise SourceError(f"cannot export {clean!r} at {commit[:12]}: {err.decode().strip()}")
        return out


_ARCHIVES_KEPT = 8  # archives of (commit, folder) kept by a GitSource
_ARCHIVE_KEPT_BYTES = 16 * 1024 * 1024  # a bigger one is shared by concurrent exports only
_LINK_MODE = 0o120000
_MAX_LINKS = 40  # as the kernel's ELOOP limit


class _Entry(NamedTuple):
    """One entry of ``git ls-tree``: mode, type (blob, tree, commit), object id, size (None
    when the listing was made without sizes)."""

    mode: int
    kind: str
    sha: str
    size: int | None


def _follow_links(entries: dict[str, _Entry], blobs: _Blobs, entry: _Entry, rel: str,
                  folder: str) -> tuple[_Entry | None, str]:
    """The blob a ``*.yaml`` entry stands for: itself, or for a symbolic link the file it
    points to when that stays inside ``entries`` (the folder read); else ``(None, why)``. The
    same rule as ``files_from_directory``, so validate on a checkout and the daemon agree."""
    shown = folder or "the repository"
    for _ in range(_MAX_LINKS):
        if entry.mode != _LINK_MODE:
            return entry, ""
        target = blobs.read(entry.sha).decode("utf-8", "surrogateescape")
        joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
        if target.startswith("/") or joined == ".." or joined.startswith("../"):
            return None, (f"symbolic link to {target!r}, outside {shown}: not read (the "
                          "desired state is read from files inside the tree only)")
        found = entries.get(joined)
        if found is None:  # missing, or through a non-folder
            return None, f"symbolic link to {target!r}: no such file in {shown}"
        if found.kind != "blob":
            return None, f"symbolic link to {target!r}: not a file"
        entry, rel = found, joined
    return None, "symbolic links nested too deeply: not read"
_TYPE_BITS = 0o170000


class GitTree:
    """``spec.tree.SourceTree`` over a commit's tree: git keeps a link as a blob whose mode
    says so and whose content is the target; nothing is followed."""

    def __init__(self, source: GitSource, commit: str) -> None:
        self._source, self._commit = source, commit
        self._entries: dict[str, _Entry] | None = None

    @property
    def entries(self) -> dict[str, _Entry]:  # listed on first use: in the loader's thread
        if self._entries is None:
            self._entries = self._source.entries_at(self._commit, "") or {}
        return self._entries

    def kind(self, path: str) -> EntryKind | None:
        entry = self.entries.get(path)
        if entry is None:
            return None
        if entry.kind == "tree":
            return "dir"
        if entry.kind != "blob":
            return None  # a submodule: git archive leaves it empty
        return "link" if entry.mode & _TYPE_BITS == _LINK_MODE else "file"

    def links(self, folder: str) -> Iterator[tuple[str, str]]:
        prefix = "" if folder == "." else folder + "/"
        blobs = self._source.blob_reader()
        for path, entry in self.entries.items():
            if (path.startswith(prefix) and entry.kind == "blob"
                    and entry.mode & _TYPE_BITS == _LINK_MODE):
                yield path, blobs.read(entry.sha).decode("utf-8", "replace")

    def read(self, path: str) -> bytes | None:
        entry = self.entries.get(path)
        if (entry is None or entry.kind != "blob" or entry.mode & _TYPE_BITS == _LINK_MODE
                or entry.size is None or entry.size > MAX_READ):
            return None
        return self._source.blob_reader().read(entry.sha)


class _Blobs:
    """Blob contents through one ``git cat-file --batch`` process, started on the first read
    and kept for the next ones (a cold load reads every file of the fleet); reads from several
    threads take turns."""

    def __init__(self, git_dir: Path) -> None:
        self.git_dir = git_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopper: weakref.finalize[Any, Any] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._stopper is not None:
                self._stopper()  # a finalizer runs once: at close or when collected
                self._stopper = None
            self._proc = None

    def reader(self, sha: str) -> Callable[[], bytes]:
        return lambda: self.read(sha)

    def read(self, sha: str) -> bytes:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._proc = subprocess.Popen(
                    ["git", "--git-dir", str(self.git_dir), "cat-file", "--batch"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                self._stopper = weakref.finalize(self, _stop, proc)
            stdin, stdout = proc.stdin, proc.stdout
            assert stdin is not None and stdout is not None
            try:
                stdin.write(sha.encode() + b"\n")
                stdin.flush()
                header = stdout.readline().split()
                if len(header) != 3:  # "<sha> missing", or git ended
                    raise SourceError(f"git object {sha} cannot be read")
                data = _read_exactly(stdout, int(header[2]))
                stdout.read(1)  # the newline after the content
            except (OSError, ValueError) as exc:
                _stop(proc)
                raise SourceError(f"git object {sha} cannot be read: {exc}") from exc
            return data


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ValueError("git cat-file ended early")
    return data


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _discover(local: Path) -> tuple[Path, Path | None, str] | None:
    """(git dir, work tree or None when bare, ``local`` relative to the work tree with a
    trailing slash or "") of the repository holding ``local``, as git finds it; None when
    there is none."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    try:
        proc = subprocess.run(["git", "-C", str(local), "rev-parse", "--absolute-git-dir",
                               "--is-inside-work-tree", "--show-prefix"],
                              capture_output=True, env=env, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.decode("utf-8", "surrogateescape").split("\n")
    if proc.returncode != 0 or len(lines) < 3:
        return None
    git_dir, inside, prefix = Path(lines[0]), lines[1] == "true", lines[2]
    if not inside:
        return git_dir, None, ""
    depth = len(PurePosixPath(prefix).parts)
    return git_dir, local.parents[depth - 1] if depth else local, prefix


def _extract(archive: bytes, folder: str, dest: Path) -> None:
    """Unpack ``folder`` of a ``git archive`` tarball into ``dest``, dropping the prefix."""
    # imported here: a command that reads the config repo without unpacking a folder
    # (`diff`) does not import tarfile (docs/performance.md, session 9)
    import tarfile

    from reconciler.source.tarsafe import extract_data

    dest.mkdir(parents=True, exist_ok=True)
    prefix = folder + "/" if folder else ""
    # "r:": `git archive --format=tar` is never compressed; the default "r:*" tries gzip first
    # and imports it for nothing
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        members = []
        for member in tar.getmembers():
            if member.name == folder or not member.name.startswith(prefix):
                continue
            member.name = member.name[len(prefix):]
            members.append(member)
        # The "data" filter refuses absolute paths, links out of dest and device files.
        extract_data(tar, dest, members)


def _ssh_endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) of an SSH clone URL (``ssh://…`` or scp-like ``user@host:path``)."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("ssh", "git+ssh", "ssh+git") or not parts.hostname:
            return None
        try:
            return parts.hostname, parts.port or 22
        except ValueError:
            return None
    match = re.match(r"^(?:[^@/\s]+@)?([^:/\s]+):(?!//)", url)
    return (match.group(1), 22) if match else None


def _git_hint(exc: BaseException, url: str) -> str | None:
    """A remediation for the usual clone/fetch failures, from git's whole stderr (the message
    only keeps its last line); None leaves SourceError's generic hint."""
    if isinstance(exc, SourceError):
        return exc.hint if "hint" in vars(exc) else None
    stderr = str(getattr(exc, "stderr", "") or "")
    endpoint = _ssh_endpoint(url)
    if endpoint and ("Host key verification failed" in stderr
                     or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr):
        host, port = endpoint
        return (f"the git server's SSH host key is not trusted by the reconciler's user: "
                f"`ssh-keyscan -p {port} {host} > host.key && ssh-keygen -lf host.key`, compare "
                "the fingerprint with the one the git host publishes, then append host.key to "
                "that user's ~/.ssh/known_hosts")
    if "Permission denied (publickey" in stderr:
        return ("the git server refused the reconciler user's SSH key: add its public key "
                "(~/.ssh/id_ed25519.pub) to the repository as a read-only deploy key")
    if "Authentication failed" in stderr or "could not read Username" in stderr:
        return ("the repository needs credentials: use an SSH URL with a deploy key, or a git "
                "credential helper for the reconciler's user (never a token inside --repo)")
    if endpoint and any(m in stderr for m in ("Connection refused", "Connection timed out",
                                              "No route to host")):
        host, port = endpoint
        return (f"nothing answers SSH at {host}:{port} from this host: check the URL's host "
                f"and port (`nc -vz {host} {port}`) and the firewall")
    if "Could not resolve host" in stderr or "Could not resolve hostname" in stderr:
        return "the git server's name does not resolve from this host: check the URL and DNS"
    return None


def _git_reason(exc: git.GitCommandError, url: str) -> str:
    """The line of git's stderr that says what went wrong (GitPython wraps it in
    ``stderr: '…'``; the last line is often only the closing quote or a generic advice)."""
    text = (exc.stderr or "").strip() or str(exc)
    # Never echo credentials embedded in a clone URL.
    lines = [line.strip().removeprefix("stderr:").strip().strip("'").strip()
             for line in redact(text, urls=(url,)).splitlines()]
    lines = [line for line in lines if line]
    for marker in ("Host key verification failed", "Permission denied", "fatal:", "error:"):
        found = next((line for line in lines if marker in line), None)
        if found is not None:
            return found
    return lines[-1] if lines else "git failed"
