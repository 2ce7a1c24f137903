"""The last step of the deploys of one host, many per remote command.

A deploy on a host has two halves: staging (the release uploaded, unit and environment files
written) and the commit (``systemctl daemon-reload`` when a unit changed, ``current`` switched,
the unit enabled and restarted). Staging is per Service; the commit is where a host's deploys
meet. systemd reloads its whole configuration on each ``daemon-reload`` and every remote command
is a login session and a few processes on the host, so fifty Services deployed at once on a host
cost fifty of each when committed one by one. ``HostCommits`` commits them together: one remote
command reloads once, switches every release, restarts every unit with one ``systemctl`` (systemd
runs the jobs concurrently), and reports each one's result on its own.

A batch starts once no deploy of the host is still staging (or waiting for a staging slot), so
it takes every deploy in flight there; a deploy that keeps arriving never holds the others back
for longer than ``MAX_LINGER_S``. A deploy alone on its host (one change) commits at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal.batches import RequestBatches
from reconciler.providers.bare_metal.releases import SWITCH_COMMANDS, SWITCH_LINK, SWITCH_MODES
from reconciler.providers.bare_metal.systemd import (
    OBSERVE_SCRIPT,
    SERVICE_INSTALL_TARGET,
    TIMER_INSTALL_TARGET,
    UNIT_DIR,
    Group,
    Systemd,
)
from reconciler.transport import Transport

MAX_LINGER_S = 5.0  # the longest a staged deploy waits for the host's other deploys
# Deploys per remote command. The command reaches the host's shell as one argument (at most
# 128 KiB on Linux): 64 deploys with their observations, names of 50 characters, are ~52 KB.
MAX_BATCH = 64
COMMIT_TIMEOUT_S = 180.0  # reload + switches + the parallel restarts (each bounded by systemd)
_OUTPUT_LIMIT = 2000  # bytes of a failed step's output kept (one line each, written whole)

# Constant script, every variable part a positional argument. $1: 1 when a unit file was
# written (reload), else 0 (reload only if systemd says a listed unit's file changed since it was
# loaded: a reconciler killed between a write and the reload); $2: N; $3: K; then N unit names to
# ask that of; then K groups of five: release (relative to the service dir), a temporary link
# name, the `current` link, the service dir, the unit to enable and restart ("" for none); then
# the groups of the units to observe once every restart is done (``OBSERVE_SCRIPT``'s). Output:
# one line per group, "S <i> <output>" (the switch failed) or "R <i> <exit> <output>" (switched;
# the restart's exit status), or one "L <output>" line if the reload failed; outputs are base64;
# then, when units are observed, a line "O" and what ``OBSERVE_SCRIPT`` prints for them.
_COMMIT_SCRIPT = f"""reload=$1 n=$2 k=$3
shift 3
encode() {{ [ -n "$1" ] && printf '%s' "$1" | tail -c {_OUTPUT_LIMIT} | base64 | tr -d '\\n'; }}
stale() {{
  k=$1; shift; i=0
  for a do [ "$i" -lt "$k" ] && set -- "$@" "$a"; i=$((i + 1)); done
  shift "$i"
  [ "$#" -gt 0 ] || return 1
  systemctl show --no-pager -p NeedDaemonReload -- "$@" | grep -qx 'NeedDaemonReload=yes'
}}
# systemd refuses a unit's sixth start in 10 s (its start limit, which a daemon-reload used to
# reset); a deploy's restart is not a crash restart: the count of every unit about to be
# restarted is reset first, in one command (crash loops between deploys are still limited)
reset_failed() {{
  k=$1; shift; i=0
  for a do
    i=$((i + 1))
    [ "$i" -le $((k * 5)) ] && [ $((i % 5)) -eq 0 ] && [ -n "$a" ] && set -- "$@" "$a"
  done
  shift "$i"
  [ "$#" -eq 0 ] || systemctl reset-failed -- "$@" 2>/dev/null
}}
daemon_reload() {{
  out=$(systemctl daemon-reload 2>&1) && return 0
  printf 'L %s\\n' "$(encode "$out")"
  exit 0
}}
groups=$k
if [ "$reload" = 1 ]; then
  daemon_reload
  shift "$n"
  reset_failed "$groups" "$@"
else
  # systemd's word on stale units is asked while the restart counts are reset (two systemctl
  # calls at once, not one after the other); a reload it calls for comes before any restart
  stale "$n" "$@" &
  checking=$!
  shift "$n"
  reset_failed "$groups" "$@"
  if wait "$checking"; then daemon_reload; fi
fi
# Every unit is restarted by one systemctl (systemd runs the jobs concurrently, and a process
# and a bus connection per unit were most of the commit's cost on the host); enabled first when
# not enabled yet. Each unit's result is still its own: after a failed call, a unit whose start
# failed has a Result other than "success" (a start resets it), one systemd cannot load a
# LoadState other than "loaded"; its output is the call's lines that name it.
units() {{ for e do printf '%s ' "${{e#*,}}"; done; }}
restart_all() {{
  keep=$restart
  if [ -n "$enable" ] &&
      ! systemctl enable --quiet --no-reload -- $(units $enable) >/dev/null 2>&1; then
    keep=
    for e in $restart; do
      case " $enable " in
        *" $e "*)
          if ! out=$(systemctl enable --quiet --no-reload -- "${{e#*,}}" 2>&1); then
            printf 'R %s 1 %s\\n' "${{e%%,*}}" "$(encode "$out")"
            continue
          fi ;;
      esac
      keep="$keep $e"
    done
  fi
  [ -n "$keep" ] || return 0
  out=$(systemctl restart -- $(units $keep) 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ]; then
    for e in $keep; do printf 'R %s 0 \\n' "${{e%%,*}}"; done
    return 0
  fi
  systemctl show --no-pager -p LoadState -p Result -- $(units $keep) 2>/dev/null | {{
    for e in $keep; do
      load= result=
      while IFS= read -r line && [ -n "$line" ]; do
        case $line in
          LoadState=*) load=${{line#*=}} ;;
          Result=*) result=${{line#*=}} ;;
        esac
      done
      if [ "$load" = loaded ] && [ "$result" = success ]; then
        printf 'R %s 0 \\n' "${{e%%,*}}"
      else
        mine=$(printf '%s\\n' "$out" | grep -F -e "${{e#*,}}")
        printf 'R %s %s %s\\n' "${{e%%,*}}" "$rc" "$(encode "$mine")"
      fi
    done
  }}
}}
# The folders of every group's switch get their modes from one chmod, not a process per group;
# if it fails, each group's switch does its own.
modes_all() {{
  k=$1; shift; i=0
  for a do
    i=$((i + 1))
    if [ "$i" -le $((k * 5)) ]; then
      case $((i % 5)) in 1) release=$a ;; 4) set -- "$@" "$a" "$a/releases" "$a/$release" ;; esac
    fi
  done
  shift "$i"
  chmod -- go+rx,go-w "$@" >/dev/null 2>&1
}}
modes=
modes_all "$groups" "$@" && modes=1
i=0 restart= enable=
while [ "$i" -lt "$groups" ]; do
  i=$((i + 1))
  # No subshell when the switch works (its output is only wanted when it fails: the switch
  # is run again, and what it prints kept)
  if {{ [ -n "$modes" ] || {SWITCH_MODES}; }} >/dev/null 2>&1 &&
      {{ {SWITCH_LINK}; }} >/dev/null 2>&1 || out=$({{ {SWITCH_COMMANDS}; }} 2>&1); then
    if [ -n "$5" ]; then
      restart="$restart $i,$5"
      # `enable` only when not enabled yet, and with --no-reload: the unit is loaded already,
      # enabling adds the symlink read at boot (an implicit reload per new unit was costly).
      # Enabled is that symlink being there: a builtin test (`systemctl is-enabled` was one
      # more process per unit restarted)
      case $5 in
        *.timer) wants={UNIT_DIR}/{TIMER_INSTALL_TARGET}.wants ;;
        *) wants={UNIT_DIR}/{SERVICE_INSTALL_TARGET}.wants ;;
      esac
      [ -L "$wants/$5" ] || enable="$enable $i,$5"
    else
      printf 'R %s 0 \\n' "$i"
    fi
  else
    printf 'S %s %s\\n' "$i" "$(encode "$out")"
  fi
  shift 5
done
[ -z "$restart" ] || restart_all
[ "$#" -gt 0 ] || exit 0
echo O
observe "$@"
"""
# The observation's functions, defined ahead of the commit (the units it started are observed
# in the same remote command: the health gate's first look at them costs no round trip).
_COMMIT_SCRIPT = "observe() {\n" + OBSERVE_SCRIPT + "\n}\n" + _COMMIT_SCRIPT


@dataclass(frozen=True)
class CommitRequest:
    """One deploy's commit: ``switch`` is ``ReleaseStore.switch_args()``; ``restart`` the unit
    to enable and restart after it (None: a Job, only switched)."""

    switch: tuple[str, str, str, str]
    restart: str | None
    unit_written: bool  # a unit file of this deploy was written: the host must reload
    units: tuple[str, ...]  # this deploy's units (asked NeedDaemonReload when none was written)
    observe: Group | None = None  # the restarted unit, observed once every restart is done


@dataclass(frozen=True)
class CommitResult:
    switched: bool
    returncode: int  # the restart's exit status (0 without a restart)
    output: str  # what the failed step printed (empty on success)
    observed: dict[str, str] | None = None  # the ``observe`` unit's properties (Systemd.observed)

    @property
    def ok(self) -> bool:
        return self.switched and self.returncode == 0


class HostCommits:
    """The commits of one host's deploys, batched (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        # weakly: the batches are the value of a weak mapping keyed by the transport
        self._transport = weakref.ref(transport)
        self._staging = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._batches: RequestBatches[CommitRequest, CommitResult] = RequestBatches(
            self._run, limit=MAX_BATCH, ready=self._staged)

    @property
    def transport(self) -> Transport:
        transport = self._transport()
        if transport is None:
            raise ProviderError("the host's connection was closed")
        return transport

    @property
    def batches(self) -> int:  # remote commands run (tests read it)
        return self._batches.batches

    @contextlib.asynccontextmanager
    async def staging(self, slot: asyncio.Semaphore) -> AsyncIterator[None]:
        """Hold one of the host's staging slots; counted from the wait on, so a batch waits
        for deploys queued for a slot too."""
        self._staging += 1
        self._idle.clear()
        try:
            async with slot:
                yield
        finally:
            self._staging -= 1
            if self._staging == 0:
                self._idle.set()

    async def commit(self, request: CommitRequest) -> CommitResult:
        return await self._batches.ask(request)

    async def _staged(self) -> None:
        """Until no deploy of the host is staging, at most MAX_LINGER_S."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MAX_LINGER_S):
                await self._idle.wait()

    async def _run(self, requests: Sequence[CommitRequest]) -> list[CommitResult]:
        transport = self.transport
        reload = any(r.unit_written for r in requests)
        check = [] if reload else [u for r in requests for u in r.units]
        args = ["1" if reload else "0", str(len(check)), str(len(requests)), *check]
        for request in requests:
            args += [*request.switch, request.restart or ""]
        systemd = Systemd(transport)
        watched = [r.observe for r in requests if r.observe is not None]
        args += systemd.observe_args(watched)
        result = await transport.run(
            ["sh", "-c", _COMMIT_SCRIPT, "fraisier-commit", *args],
            timeout=COMMIT_TIMEOUT_S, check=True,
        )
        text = result.stdout.decode(errors="replace")
        head, marker, tail = text.partition("\nO\n")
        found: dict[int, CommitResult] = {}
        for line in head.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "L":
                raise ProviderError(f"{transport.host_id}: systemctl daemon-reload failed: "
                                    f"{_decode(rest)}")
            if kind == "S":
                index, _, output = rest.partition(" ")
                found[int(index)] = CommitResult(False, 0, _decode(output))
            elif kind == "R":
                index, _, rest = rest.partition(" ")
                code, _, output = rest.partition(" ")
                found[int(index)] = CommitResult(True, int(code), _decode(output))
        missing = [i for i in range(1, len(requests) + 1) if i not in found]
        if missing:
            raise ProviderError(f"{transport.host_id}: committing {len(requests)} "
                                f"deploy(s) reported no result for {len(missing)}")
        if watched and not marker:
            raise ProviderError(f"{transport.host_id}: committing {len(requests)} "
                                "deploy(s) printed no observation of the restarted units")
        observations = iter(await systemd.settle(systemd.observed(tail, watched), watched)
                            if watched else [])
        return [replace(found[i], observed=next(observations))
                if request.observe is not None else found[i]
                for i, request in enumerate(requests, 1)]


def _decode(text: str) -> str:
    text = text.strip()
    return base64.b64decode(text).decode(errors="replace") if text else ""


# One per host connection (the pool keeps one transport per host for a pass).
_COMMITS: weakref.WeakKeyDictionary[Transport, HostCommits] = weakref.WeakKeyDictionary()


def host_commits(transport: Transport) -> HostCommits:
    commits = _COMMITS.get(transport)
    if commits is None:
        commits = _COMMITS[transport] = HostCommits(transport)
    return commits
