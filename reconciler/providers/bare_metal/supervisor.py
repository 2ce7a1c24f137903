"""A process supervisor for this machine: detached processes identified by pidfiles.

A service runs in a session of its own (so it outlives the daemon and a stop reaches its whole
process group) with stdout and stderr appended to ``<service_dir>/logs/<name>.log``. The pidfile
records the pid *and* the process start time from /proc, so a later daemon — a new process that
adopts what an earlier one started — never mistakes a recycled pid for the service, and never
signals a stranger.

It does not restart a process that exits: the reconciler observes "not running" and acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal import procfs
from reconciler.providers.bare_metal.service_manager import LaunchSpec, ServiceRef, ServiceStatus
from reconciler.providers.contract import Listening
from reconciler.state.private import open_private_append, private_dir
from reconciler.transport.local import write_file_atomic

_POLL_FIRST_S = 0.005  # polls back off from here to _POLL_MAX_S: most services stop at once
_POLL_MAX_S = 0.1
_KILL_WAIT_S = 5.0
LOG_ROTATE_BYTES = 16 << 20  # one previous log (<name>.log.1) is kept

# Processes this Python process started, kept so they can be reaped (a zombie that is our child
# would otherwise look alive to kill(pid, 0)). Shared by every Supervisor in the process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
# Exit statuses collected from those children, by (pid, start time): a status can be collected
# only once, but every later observation should still say how the process ended.
_EXIT_CODES: dict[tuple[int, int], int] = {}


def pidfile_path(ref: ServiceRef) -> Path:
    return Path(ref.service_dir) / "run" / f"{ref.name}.pid"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _reap(pid: int) -> int | None:
    """Collect the exit status of ``pid`` if it is our exited child; None otherwise."""
    child = _CHILDREN.get(pid)
    if child is not None:
        code = child.poll()
        if code is not None:
            del _CHILDREN[pid]
        return code
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None  # not our child (adopted): its parent, now init, reaps it
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _read_pidfile(ref: ServiceRef) -> dict[str, Any] | None:
    try:
        data = json.loads(pidfile_path(ref).read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_ours_and_alive(pid: int, start_time: int) -> tuple[bool, str, int | None]:
    """(alive, detail, exit code when it exited and we reaped it)."""
    stat = procfs.read_stat(pid)
    if stat is None:
        code = _EXIT_CODES.get((pid, start_time))
        return False, "exited" if code is None else f"exited with status {code}", code
    if stat.start_time != start_time:
        return False, f"exited (pid {pid} now belongs to another process)", None
    if stat.dead:
        code = _reap(pid)
        if code is not None:
            _EXIT_CODES[(pid, start_time)] = code
    else:
        return True, f"running (pid {pid})", None
    code = _EXIT_CODES.get((pid, start_time))
    return False, "exited" if code is None else f"exited with status {code}", code


def _group_is_ours(pid: int, start_time: int) -> bool:
    """Is there anything of the service's process group left to stop?

    Its leader, alive with the recorded start time; or, when the leader has exited, members it
    left behind (Linux does not hand out a pid while a process group still uses it as its id,
    so those are the leader's). A live process with the pid and another start time means the pid
    was reused: that group is a stranger's, never signalled.
    """
    leader = procfs.read_stat(pid)
    if leader is not None and leader.start_time != start_time:
        return False
    if leader is not None and not leader.dead:
        return True
    if leader is not None:
        _reap(pid)
    return bool(procfs.group_members(pid))


async def _wait_group_gone(pid: int, start_time: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = _POLL_FIRST_S
    while True:
        leader_alive, _, _ = _is_ours_and_alive(pid, start_time)
        if not leader_alive and not await asyncio.to_thread(procfs.group_members, pid):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)


def _tail_lines(path: Path, count: int) -> list[str]:
    if count <= 0:
        return []
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return []
    with fh:
        fh.seek(0, os.SEEK_END)
        pos = fh.tell()
        block = 65536
        data = b""
        # Read backwards until enough newlines (one extra: the file usually ends with one).
        while pos > 0 and data.count(b"\n") <= count:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:]


# Every process the supervisor starts carries its pidfile's path in this variable, so a process
# started by a reconciler killed before it wrote the pidfile can still be found and stopped.
TAG_VARIABLE = "FRAISIER_PIDFILE"


def _tagged(tag: str) -> list[int]:
    """Pids of this user's processes whose environment carries ``TAG_VARIABLE=tag``."""
    needle = f"{TAG_VARIABLE}={tag}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read() + b"\0"
        except OSError:  # gone, or another user's
            continue
        if needle in environ and (environ.startswith(needle) or b"\0" + needle in environ):
            found.append(int(entry.name))
    return found


class Supervisor:
    """``ServiceManager`` for processes on this machine."""

    async def _stop_orphans(self, ref: ServiceRef, timeout_s: float = 5.0) -> None:
        """Stop processes of ``ref`` that no pidfile records: a reconciler killed between
        starting a process and writing its pidfile leaves one running (holding its port, so the
        next start would fail to bind while a health check passed against the orphan)."""
        orphans = await asyncio.to_thread(_tagged, str(pidfile_path(ref)))
        for pid in orphans:
            start = procfs.start_time(pid)
            if start is None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            if not await _wait_group_gone(pid, start, timeout_s):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    async def start(self, ref: ServiceRef, launch: LaunchSpec) -> ServiceStatus:
        current = await self.status(ref)
        if current.running:
            if current.revision == launch.revision:
                return current
            raise ProviderError(
                f"{ref}: revision {current.revision} is still running (pid {current.pid}); "
                "stop it first"
            )
        if not launch.argv:
            raise ProviderError(f"{ref}: no command to start")
        await self._stop_orphans(ref)
        return await asyncio.to_thread(self._start_sync, ref, launch)

    def _start_sync(self, ref: ServiceRef, launch: LaunchSpec) -> ServiceStatus:
        log_path = Path(ref.log_path)
        private_dir(log_path.parent)  # service output may carry secrets: owner-only
        with contextlib.suppress(FileNotFoundError):
            if log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        started_at = _now()
        with open_private_append(log_path) as log:
            log.write(f"[fraisier {started_at}] starting revision {launch.revision}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    launch.argv,
                    cwd=launch.cwd,
                    env={**launch.env, TAG_VARIABLE: str(pidfile_path(ref))},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise ProviderError(
                    f"{ref}: cannot start {launch.argv[0]!r} in {launch.cwd}: {exc.strerror or exc}"
                ) from exc
        _CHILDREN[child.pid] = child
        start_time = procfs.start_time(child.pid)
        if start_time is None:  # cannot happen for an unreaped child; be explicit if it does
            raise ProviderError(f"{ref}: started pid {child.pid} but /proc has no record of it")
        record = {
            "pid": child.pid,
            "start_time": start_time,
            "revision": launch.revision,
            "started_at": started_at,
            "argv0": launch.argv[0],
        }
        write_file_atomic(pidfile_path(ref), json.dumps(record).encode() + b"\n", 0o644)
        detail = f"running (pid {child.pid})"
        return ServiceStatus(True, launch.revision, child.pid, started_at, detail)

    async def status(self, ref: ServiceRef) -> ServiceStatus:
        # Inline, not in a thread: a pidfile and /proc/<pid>/stat are two small reads that do
        # not block, and the self-heal loop asks for every Service on every pass; the thread
        # hop cost more CPU than the reads (bench/idle.py, 1,000 Services).
        return self._status_sync(ref)

    def _status_sync(self, ref: ServiceRef) -> ServiceStatus:
        record = _read_pidfile(ref)
        if record is None:
            return ServiceStatus(False, detail="not started")
        try:
            pid, start_time = int(record["pid"]), int(record["start_time"])
        except (KeyError, TypeError, ValueError):
            return ServiceStatus(False, detail=f"unreadable pidfile {pidfile_path(ref)}")
        revision = record.get("revision")
        started_at = record.get("started_at")
        alive, detail, code = _is_ours_and_alive(pid, start_time)
        return ServiceStatus(
            alive,
            str(revision) if revision is not None else None,
            pid,
            str(started_at) if started_at is not None else None,
            detail,
            exit_code=code,
        )

    async def stop(self, ref: ServiceRef, timeout_s: float) -> None:
        record = _read_pidfile(ref)
        if record is None:
            await self._stop_orphans(ref, timeout_s)
            return
        try:
            pid, start_time = int(record["pid"]), int(record["start_time"])
        except (KeyError, TypeError, ValueError):
            pid = start_time = -1
        if pid > 0 and await asyncio.to_thread(_group_is_ours, pid, start_time):
            await self._terminate(ref, pid, start_time, timeout_s)
        _EXIT_CODES.pop((pid, start_time), None)
        with contextlib.suppress(FileNotFoundError):
            pidfile_path(ref).unlink()

    async def _terminate(
        self, ref: ServiceRef, pid: int, start_time: int, timeout_s: float
    ) -> None:
        # The pid is the group id: the service was started as a session (and group) leader, so
        # the signal reaches every process it started that did not leave the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if await _wait_group_gone(pid, start_time, timeout_s):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if await _wait_group_gone(pid, start_time, _KILL_WAIT_S):
            return
        raise ProviderError(f"{ref}: process group {pid} survived SIGKILL for {_KILL_WAIT_S:g}s")

    async def listening(self, ref: ServiceRef, pid: int) -> Listening | None:
        record = _read_pidfile(ref)
        try:
            ours = record is not None and int(record["pid"]) == pid
            start_time = int(record["start_time"]) if record is not None else -1
        except (KeyError, TypeError, ValueError):
            return None
        if not ours or not _is_ours_and_alive(pid, start_time)[0]:
            return None
        # the service's process group: what it started (workers, a child holding the socket)
        return await asyncio.to_thread(procfs.group_listening, pid)

    async def logs(self, ref: ServiceRef, tail: int) -> list[str]:
        return await asyncio.to_thread(_tail_lines, Path(ref.log_path), tail)

    async def remove(self, ref: ServiceRef) -> None:
        def forget() -> None:
            with contextlib.suppress(FileNotFoundError):
                pidfile_path(ref).unlink()
            with contextlib.suppress(OSError):
                pidfile_path(ref).parent.rmdir()

        await asyncio.to_thread(forget)
