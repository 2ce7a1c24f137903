"""systemd on a host reached through a ``Transport``: unit files rendered from the spec.

Everything a unit file says is *rendered here* from the resource and the Target's ``systemd``
settings; nothing from the config is ever interpolated into a shell command. Values that end up
in a unit file are escaped for systemd's own parser (``unit_text.exec_argv``: quotes, ``%``
specifiers, ``$`` expansion); the release's environment values go into an
``EnvironmentFile`` (mode 0600), never onto a command line or into the unit, and so does
``FRAISIER_REVISION`` (the unit stays the same from one revision to the next: no daemon-reload
for a release that changes only code). ``FRAISIER_SERVICE`` and ``FRAISIER_ENVIRONMENT`` (not
secret, constant) are ``Environment=`` lines.

Unit names: ``fraisier-<environment>_<name>.service`` for a Service,
``fraisier-<environment>_<name>.job.service`` for a Job, and
``fraisier-<environment>_<name>.schedule.{service,timer}`` for a Schedule. Resource names cannot
contain ``_`` or ``.``, so two resources never share a unit name.

A Service's unit runs ``<service_dir>/current`` (WorkingDirectory through the symlink): a rollback
is a switch of ``current``, the environment file's ``FRAISIER_REVISION`` and a restart (a
daemon-reload only when the unit itself differs).
The unit is rendered from the release, and the hash recorded beside it (``unit.sha256``) is the
hash of that same render, so a new revision is never mistaken for a hand edit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal.batches import LOOK_LINGER_S, RequestBatches
from reconciler.providers.bare_metal.known_processes import KnownProcess, UnitProcesses
from reconciler.providers.bare_metal.procfs import stat_of
from reconciler.providers.bare_metal.unit_sandbox import Sandbox
from reconciler.providers.bare_metal.unit_text import (
    environment_lines,
    exec_argv,
    unit_value,
)
from reconciler.spec.cron import cron_error
from reconciler.spec.durations import to_seconds
from reconciler.transport import CommandResult, Transport

UNIT_DIR = "/etc/systemd/system"
# The targets our units are installed into ([Install] WantedBy=): `systemctl enable` links a
# unit into <UNIT_DIR>/<target>.wants/, which the commit reads to tell an enabled unit.
SERVICE_INSTALL_TARGET = "multi-user.target"
TIMER_INSTALL_TARGET = "timers.target"
_SYSTEMCTL_TIMEOUT_S = 60.0
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]*[$]?\Z")
# An argv[0] systemd looks up in its own PATH (no directory part, no prefix character).
_RESTART = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always")
# Resource limits the Target may set: spec key -> unit directive. Values are validated below.
LIMITS = {
    "memoryMax": "MemoryMax",
    "memoryHigh": "MemoryHigh",
    "cpuQuota": "CPUQuota",
    "cpuWeight": "CPUWeight",
    "tasksMax": "TasksMax",
    "nofile": "LimitNOFILE",
    "nproc": "LimitNPROC",
}
_LIMIT_VALUE = re.compile(r"^(infinity|[0-9]+(\.[0-9]+)?[KMGTP%]?)\Z")

# cron day-of-week numbers (0 and 7 are Sunday) -> systemd names
_DOW = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


# -- calendar --------------------------------------------------------------------------------


def _values(items: list[Any], names: Sequence[str] | None = None, width: int = 0) -> str:
    """croniter's expanded field -> systemd component (``*``, or a list with ``a..b`` runs)."""
    if items == ["*"]:
        return "*"
    numbers = sorted({int(i) for i in items})
    if names is not None:
        return ",".join(dict.fromkeys(names[n] for n in numbers))
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        fmt = f"{{:0{width}d}}" if width else "{}"
        if prev - start >= 2:
            parts.append(f"{fmt.format(start)}..{fmt.format(prev)}")
        else:
            parts.extend(fmt.format(v) for v in range(start, prev + 1))
        if n is not None:
            start = prev = n
    return ",".join(parts)


def on_calendar(schedule: str | Mapping[str, Any], timezone: str | None = "UTC") -> list[str]:
    """``OnCalendar=`` values for a Schedule's ``schedule``.

    ``{calendar: EXPR}`` is systemd calendar syntax: checked here with our own parser (the same
    check as ``validate``) and written as is, with `` <timezone>`` appended unless it names its
    own zone. A string is a five-field cron expression (or alias) and is converted: cron fires
    when day-of-month *or* day-of-week match (both restricted); systemd requires both, so that
    case becomes two ``OnCalendar=`` lines."""
    suffix = f" {timezone}" if timezone else ""
    if isinstance(schedule, Mapping):
        from reconciler.spec.calendar import calendar_error, parse_calendar

        expression = schedule.get("calendar")
        error = calendar_error(expression)
        if error is not None:
            raise ProviderError(f"schedule: {error}")
        text = str(expression).strip()
        return [text if parse_calendar(text).has_timezone else text + suffix]
    text = str(schedule).strip()
    cron = _CRON_ALIASES.get(text.lower(), text)
    error = cron_error(cron)
    if error is not None:
        raise ProviderError(f"schedule: {error} (systemd calendar syntax is written "
                            "{calendar: EXPR})")
    from croniter import croniter  # a Schedule's cron only: a Service's deploy never needs it

    try:
        fields, _ = croniter.expand(cron)
    except (ValueError, KeyError, TypeError) as exc:
        raise ProviderError(f"cannot convert cron {text!r}: {exc}") from None
    minute, hour, dom, month, dow = fields
    if any(not isinstance(v, int) and v != "*" for f in fields for v in f):
        raise ProviderError(
            f"cron {text!r} uses a feature systemd timers lack (L, #); write it in systemd "
            "calendar syntax instead ({calendar: EXPR})"
        )
    time_part = f"{_values(hour, width=2)}:{_values(minute, width=2)}:00"
    month_part = _values(month, width=2)
    dow_part = _values(dow, _DOW)
    if dom != ["*"] and dow != ["*"]:
        return [
            f"*-{month_part}-{_values(dom, width=2)} {time_part}{suffix}",
            f"{dow_part} *-{month_part}-* {time_part}{suffix}",
        ]
    prefix = "" if dow == ["*"] else f"{dow_part} "
    return [f"{prefix}*-{month_part}-{_values(dom, width=2)} {time_part}{suffix}"]


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSettings:
    """The Target's ``systemd`` section, merged with its per-resource ``overrides``."""

    user: str | None = None
    group: str | None = None
    restart: str = "on-failure"
    restart_sec: float = 1.0
    limits: dict[str, str] = field(default_factory=dict)
    sandbox: Sandbox = field(default_factory=Sandbox)

    @classmethod
    def from_target(cls, section: Mapping[str, Any] | None, resource_name: str) -> UnitSettings:
        section = dict(section or {})
        overrides = (section.pop("overrides", None) or {}).get(resource_name) or {}
        merged = {**section, **overrides}
        limits = {**(section.get("limits") or {}), **(overrides.get("limits") or {})}
        allow = {**(section.get("allow") or {}), **(overrides.get("allow") or {})}
        for key in ("user", "group"):
            value = merged.get(key)
            if value is not None and not _USER.match(str(value)):
                raise ProviderError(f"systemd {key} {value!r} is not a valid name")
        restart = str(merged.get("restart", "on-failure"))
        if restart not in _RESTART:
            raise ProviderError(f"systemd restart {restart!r}: expected one of {_RESTART}")
        checked: dict[str, str] = {}
        for key, value in limits.items():
            if key not in LIMITS:
                raise ProviderError(f"unknown systemd limit {key!r} (known: {sorted(LIMITS)})")
            text = str(value)
            if not _LIMIT_VALUE.match(text):
                raise ProviderError(f"systemd limit {key}={text!r} is not a number/size/percent")
            checked[key] = text
        return cls(
            user=merged.get("user"),
            group=merged.get("group"),
            restart=restart,
            restart_sec=to_seconds(merged.get("restartSec"), 1.0),
            limits=checked,
            sandbox=Sandbox.from_section(merged.get("sandbox"), allow),
        )


@dataclass(frozen=True)
class UnitNames:
    base: str  # fraisier-<env>_<name>[.job|.schedule]

    @classmethod
    def of(cls, environment: str, name: str, kind: str) -> UnitNames:
        for part in (environment, name):
            if not _NAME.match(part):
                raise ProviderError(f"{part!r} cannot be part of a systemd unit name")
        suffix = "" if kind == "Service" else f".{kind.lower()}"
        return cls(f"fraisier-{environment}_{name}{suffix}")

    @property
    def service(self) -> str:
        return f"{self.base}.service"

    @property
    def timer(self) -> str:
        return f"{self.base}.timer"


def render_service_unit(
    *,
    description: str,
    argv: Sequence[str],
    working_dir: str,
    env_path: str,
    settings: UnitSettings,
    environment: Mapping[str, str] | None = None,
    oneshot: bool,
    timeout_s: float | None,
    stop_timeout_s: float,
    install: bool,
    kind: str = "Service",
    state_name: str = "",
) -> str:
    """The ``.service`` unit text (deterministic: its hash tells a hand edit)."""
    lines = [
        "# Managed by fraisier: edits are drift and are overwritten by the next deploy.",
        "[Unit]",
        f"Description={unit_value(description, 'description')}",
        "",
        "[Service]",
        f"Type={'oneshot' if oneshot else 'exec'}",
        f"ExecStart={exec_argv(argv)}",
        f"WorkingDirectory={unit_value(working_dir, 'working directory')}",
        *environment_lines(environment or {}),
        f"EnvironmentFile={unit_value(env_path, 'environment file')}",
        f"TimeoutStopSec={stop_timeout_s:g}s",
    ]
    if settings.user:
        lines.append(f"User={settings.user}")
    if settings.group:
        lines.append(f"Group={settings.group}")
    if oneshot:
        lines.append(f"TimeoutStartSec={f'{timeout_s:g}s' if timeout_s else 'infinity'}")
    else:
        lines.append(f"Restart={settings.restart}")
        lines.append(f"RestartSec={settings.restart_sec:g}s")
    for key, value in sorted(settings.limits.items()):
        lines.append(f"{LIMITS[key]}={value}")
    lines += settings.sandbox.directives(
        kind=kind, state_name=state_name, has_user=bool(settings.user)
    )
    if install:
        lines += ["", "[Install]", f"WantedBy={SERVICE_INSTALL_TARGET}"]
    return "\n".join(lines) + "\n"


def render_timer_unit(description: str, calendars: Sequence[str]) -> str:
    lines = [
        "# Managed by fraisier: edits are drift and are overwritten by the next deploy.",
        "[Unit]",
        f"Description={unit_value(description, 'description')}",
        "",
        "[Timer]",
        *(f"OnCalendar={unit_value(c, 'calendar')}" for c in calendars),
        "AccuracySec=1s",
        "",
        "[Install]",
        f"WantedBy={TIMER_INSTALL_TARGET}",
    ]
    return "\n".join(lines) + "\n"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- talking to systemd -----------------------------------------------------------------------

# Constant scripts: every variable part is a positional argument, never part of the text.
# Hashes of the installed files (or "-"), to write only what changed.
_INSPECT_SCRIPT = """for f do
  if [ -f "$f" ]; then sha256sum -- "$f" | cut -d' ' -f1; else echo -; fi
done"""
# Everything observe() needs from one host in one round trip, for many units at once. The
# arguments are groups of five (unit, service dir, unit file, timer or "", the unit's main
# process as the caller last observed it in full: "PID START", START its /proc stat field 22,
# or ""). What costs on the host is processes and PID 1's work, `systemctl show` above all (a
# GetAll of every property of every unit): one `systemctl list-units` (cheap) tells each unit's
# state, and `systemctl show` is asked only of the units whose known process is not the one
# running, active, under the unit file as loaded then (no drop-in folder that could apply to
# it) and enabled
# (``known_processes.py``: the caller also compares the unit file's hash); one `sha256sum`
# hashes every unit file, one `grep` reads every recorded hash; the link of `current`, the
# process's stat and working directory are read per unit, with builtins where they do.
# Output: each unit's properties and facts, ending with the _OBSERVED line, in the order of
# the groups (FraisierKnown=1 for a unit not shown: its known process still runs); then the
# hashes, keyed by path (FraisierSum=<hash>  <unit file>, FraisierRecorded=<file>:<hash>).
_OBSERVED = "FraisierObserved=1"
_OBSERVE_TEMPLATE = """nl='
'
listed() {
  i=0
  for a do i=$((i + 1)); [ $((i % 5)) -eq 1 ] && set -- "$@" "$a"; done
  shift "$i"
  # columns padded to their widths: one space between the fields kept, the description dropped
  systemctl list-units --all --plain --no-legend --full -- "$@" 2>/dev/null |
    while read -r unit load active sub _; do echo "$unit $load $active $sub"; done
}
# the process's /proc stat line (st), its start time (ticks) and whether it is gone (dead)
proc_stat() {
  st= ticks= dead=
  { IFS= read -r st < "/proc/$1/stat"; } 2>/dev/null
  [ -n "$st" ] || return 0
  set -- ${st##*) }
  case $1 in Z|X|x) dead=1 ;; esac
  [ "$#" -ge 20 ] && ticks=${20}
}
# no drop-in folder systemd would read for unit $1 in any of its unit folders: the unit's
# own, its dash prefixes' (fraisier-.service.d), its type's (service.d); even an empty one
no_drop_ins() {
  for root in /etc/systemd/system.control /run/systemd/system.control /etc/systemd/system \\
      /run/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system; do
    [ -d "$root" ] || continue
    [ ! -e "$root/$1.d" ] && [ ! -e "$root/${1##*.}.d" ] || return 1
    u=${1%.*} pre=
    while :; do
      case $u in *-*) ;; *) break ;; esac
      pre="$pre${u%%-*}-" u=${u#*-}
      [ ! -e "$root/$pre.${1##*.}.d" ] || return 1
    done
  done
}
# $1 unit, $2 unit file, $3 the known process ("PID START"): is it the one running, with the
# unit file as systemd loaded it then (the caller compares its hash) and the unit enabled
still_known() {
  [ -n "$3" ] || return 1
  case $states in *"$nl$1 loaded active running$nl"*) ;; *) return 1 ;; esac
  [ -L "${2%/*}/@SERVICE_WANTS@/$1" ] || return 1
  no_drop_ins "$1" || return 1
  proc_stat "${3% *}"
  [ -z "$dead" ] && [ -n "$ticks" ] && [ "$ticks" = "${3#* }" ]
}
show() {
  p=$1
  shift
  i=0
  for a do
    i=$((i + 1))
    if [ $((i % 5)) -eq 1 ]; then
      case $p in s*) set -- "$@" "$a" ;; esac
      p=${p#?}
    fi
  done
  shift "$i"
  [ "$#" -gt 0 ] || return 0
  systemctl show --no-pager -p Id -p ActiveState -p SubState -p MainPID -p ExecMainStatus \\
    -p ExecMainCode -p Result -p NRestarts -p UnitFileState -p NeedDaemonReload \\
    -p ExecMainStartTimestamp -p ExecMainExitTimestamp -p InvocationID -p UID -p GID \\
    -- "$@"
  echo
}
hashes() {
  i=0
  for a do
    i=$((i + 1))
    case $((i % 5)) in 2) set -- "$@" "$a/unit.sha256" ;; esac
  done
  shift "$i"
  grep -H '' -- "$@" 2>/dev/null | sed 's/^/FraisierRecorded=/'
}
unit_files() {
  i=0
  for a do i=$((i + 1)); [ $((i % 5)) -eq 3 ] && set -- "$@" "$a"; done
  shift "$i"
  sha256sum -- "$@" 2>/dev/null | sed 's/^/FraisierSum=/'
}
states="$nl$(listed "$@")$nl"
# c: the known process still runs (not shown), s: shown; one letter per group, in order
plan=
j=0
for a do
  j=$((j + 1))
  case $((j % 5)) in
    1) unit=$a ;;
    3) file=$a ;;
    0) if still_known "$unit" "$file" "$a"; then plan=${plan}c; else plan=${plan}s; fi ;;
  esac
done
show "$plan" "$@" | {
  p=$plan
  while [ "$#" -ge 5 ]; do
    pid= active= sub= uid= gid=
    case $p in
      c*)
        pid=${5% *} active=active sub=running
        echo FraisierKnown=1
        echo ActiveState=active
        echo SubState=running ;;
      *)
        shown=
        while IFS= read -r line && [ -n "$line" ]; do
          shown=1
          printf '%s\\n' "$line"
          case $line in
            MainPID=*) pid=${line#MainPID=} ;;
            UID=*) uid=${line#UID=} ;;
            GID=*) gid=${line#GID=} ;;
            ActiveState=*) active=${line#ActiveState=} ;;
            SubState=*) sub=${line#SubState=} ;;
          esac
        done
        # `systemctl show` failed or said less: no observation rather than units reported
        # as stopped
        [ -n "$shown" ] || exit 1 ;;
    esac
    # Shell builtins where they do (cd -P sets PWD to the physical path): a process each per
    # unit was most of what an observation cost the host.
    cur=
    cd -P -- "$2/current" 2>/dev/null && cur=$PWD
    cd /
    echo "FraisierCurrent=$cur"
    if [ -n "$pid" ] && [ "$pid" != 0 ]; then
      # the process's age by the host's own clock (two builtin reads): a gate's stay-up rule
      proc_stat "$pid"
      up=
      { read -r up _ < /proc/uptime; } 2>/dev/null
      echo "FraisierStat=$st"
      echo "FraisierUptime=$up"
      if [ -n "$5" ] && [ "$pid" = "${5% *}" ] && [ -n "$ticks" ] && [ "$ticks" = "${5#* }" ]
      then
        # the process the caller knows: its cwd is known (a gate's watcher and a drift check
        # ask again and again; a setpriv per unit was most of their cost)
        echo "FraisierCwdKnown=1"
      else
        # Root reads any process's cwd where it holds CAP_SYS_PTRACE (a host), a builtin:
        cwd=
        cd -P "/proc/$pid/cwd" 2>/dev/null && cwd=$PWD
        cd /
        if [ -z "$cwd" ]; then
          # A sandboxed process runs as another user and is not ptrace-able by a root without
          # CAP_SYS_PTRACE (a container): ask as the process's own user.
          case $uid in
            ''|'[not set]') ids=$(stat -c '%u %g' "/proc/$pid" 2>/dev/null) ;;
            *) ids="$uid $gid" ;;
          esac
          [ -n "$ids" ] && cwd=$(setpriv --reuid="${ids% *}" --regid="${ids#* }" \\
            --clear-groups readlink "/proc/$pid/cwd" 2>/dev/null)
        fi
        echo "FraisierCwd=$cwd"
      fi
    fi
    case $active/$sub in
      failed/*|*/auto-restart)
        # why it failed, for the sandbox diagnosis: systemd's own lines and the process's
        journalctl --no-pager -q -o cat -n 12 -u "$1" 2>/dev/null | sed 's/^/FraisierJournal=/' ;;
    esac
    if [ -n "$4" ]; then
      systemctl show --no-pager -p NextElapseUSecRealtime -p LastTriggerUSec \\
        -p ActiveState -- "$4" | sed 's/^/Timer/'
    fi
    echo FraisierObserved=1
    p=${p#?}
    shift 5
  done
} || exit 1
unit_files "$@"
hashes "$@"
"""
OBSERVE_SCRIPT = _OBSERVE_TEMPLATE.replace("@SERVICE_WANTS@", f"{SERVICE_INSTALL_TARGET}.wants")
# Start a oneshot unit, wait for it, report how it ended and what it printed. The journal is
# read from a cursor taken before the start (an inactive unit forgets its InvocationID), and
# only the unit's own processes (_SYSTEMD_UNIT), not systemd's messages about it. That filter
# is applied here in Python: journalctl --after-cursor with a match skips the first match.
_RUN_SCRIPT = """unit=$1
cursor=$(journalctl -n 0 --show-cursor -q 2>/dev/null | sed -n 's/^-- cursor: //p')
systemctl reset-failed -- "$unit" 2>/dev/null
systemctl start -- "$unit" 2>/dev/null
systemctl show --no-pager -p ExecMainStatus -p ExecMainCode -p Result -- "$unit"
echo "--- output"
if [ -n "$cursor" ]; then
  journalctl --no-pager -q -o json --output-fields=MESSAGE,_SYSTEMD_UNIT \
    --after-cursor="$cursor"
else
  journalctl --no-pager -q -o json --output-fields=MESSAGE,_SYSTEMD_UNIT -n 1000 \
    "_SYSTEMD_UNIT=$unit"
fi
exit 0
"""


def unit_messages(journal_json: bytes, unit: str) -> bytes:
    """The MESSAGE lines of ``unit``'s processes from ``journalctl -o json`` output."""
    lines: list[bytes] = []
    for raw in journal_json.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("_SYSTEMD_UNIT") != unit:
            continue
        message = entry.get("MESSAGE")
        if isinstance(message, str):
            lines.append(message.encode())
        elif isinstance(message, list):  # not valid UTF-8: journald gives the bytes
            lines.append(bytes(b for b in message if isinstance(b, int) and 0 <= b < 256))
    return b"".join(line + b"\n" for line in lines)


# TEST-ONLY crash point (tests/chaos/test_unit_reload.py): with this variable set to a file
# path, a deploy that has just written a unit file creates that file and waits, so a test can
# SIGKILL the reconciler exactly between the unit write and `systemctl daemon-reload`. Never
# set it in production: the deploy would never finish.
HOLD_AFTER_UNIT_WRITE_ENV = "FRAISIER_TEST_HOLD_AFTER_UNIT_WRITE"


async def _hold_after_unit_write(path: str) -> None:
    marker = os.environ.get(HOLD_AFTER_UNIT_WRITE_ENV)
    if not marker:
        return
    await asyncio.to_thread(Path(marker).write_text, path + "\n")
    await asyncio.sleep(3600)


# What ``systemctl show`` says of a unit that stands while its main process runs (kept with the
# known process; ActiveState and SubState are read again on every look).
_STANDING = ("Id", "MainPID", "ExecMainStatus", "ExecMainCode", "Result", "NRestarts",
             "UnitFileState", "NeedDaemonReload", "ExecMainStartTimestamp",
             "ExecMainExitTimestamp", "InvocationID", "UID", "GID")


def _ticks(pid: int, props: Mapping[str, str]) -> int | None:
    """The start time of process ``pid`` in the look's /proc stat line (None: not that one)."""
    stat = stat_of(pid, props.get("FraisierStat", ""))
    return stat.start_time if stat is not None and not stat.dead else None


def _known_process(props: Mapping[str, str], unit_hash: str | None) -> KnownProcess | None:
    """The unit's main process as a full look (``systemctl show``) saw it; with what stands
    while it runs when systemd had loaded the unit file whose hash is ``unit_hash`` and
    reported the unit active, running and enabled."""
    main = props.get("MainPID", "")
    pid = int(main) if main.isdigit() else 0
    cwd = props.get("FraisierCwd", "")
    start = _ticks(pid, props) if pid else None
    if start is None or not cwd:
        return None
    standing = (props.get("ActiveState") == "active" and props.get("SubState") == "running"
                and props.get("NeedDaemonReload") == "no"
                and props.get("UnitFileState") == "enabled" and unit_hash is not None)
    return KnownProcess(pid, start, cwd, unit_hash if standing else None,
                        {k: props[k] for k in _STANDING if k in props} if standing else None)


def parse_properties(text: str) -> dict[str, str]:
    """``key=value`` lines; a repeated ``FraisierJournal`` key collects its lines."""
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            if key == "FraisierJournal" and key in props:
                value = props[key] + "\n" + value
            props[key] = value
    return props


class ReloadBatcher:
    """One ``systemctl daemon-reload`` for every unit write of a host that waits for one.

    systemd reloads its whole configuration on each call (slower the more units the host has)
    and runs them one at a time, so 50 Services deployed on a host at once paid 50 reloads in
    a row. A caller asks after writing its unit; it returns once a reload that *started after*
    the request has succeeded: the first waiter runs it for everyone who asked so far, the
    others find their request covered. A failed reload covers nobody (each waiter retries).
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._requested = 0  # requests so far (a ticket number each)
        self._covered = 0  # requests that a finished reload started after
        self.reloads = 0  # reloads run (tests read it)

    async def reload(self, run: Callable[[], Awaitable[object]]) -> None:
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._covered >= ticket:
                return
            covers = self._requested  # every request made before this reload starts
            await run()
            self.reloads += 1
            self._covered = max(self._covered, covers)


# One batcher per host connection (the pool keeps one transport per host for a pass).
_BATCHERS: weakref.WeakKeyDictionary[Transport, ReloadBatcher] = weakref.WeakKeyDictionary()


def reload_batcher(transport: Transport) -> ReloadBatcher:
    batcher = _BATCHERS.get(transport)
    if batcher is None:
        batcher = _BATCHERS[transport] = ReloadBatcher()
    return batcher


Group = tuple[str, str, str, str]  # unit, service dir, unit file, timer ("": none)


class ObserveBatcher:
    """Observations of one host's units, many per remote command (``RequestBatches``: a
    request waits for the next batch that starts after it, which a health gate relies on), up
    to ``MAX_OBSERVE_BATCH``. So 50 Services gated or checked for drift at once on a host cost a
    few round trips, not 50."""

    def __init__(self) -> None:
        self._batches: RequestBatches[Group, dict[str, str]] | None = None
        # unit -> its main process as last observed in full: while it runs, its cwd and what
        # systemd said of it are not asked for again (the provider's ``KnownProcesses`` of the
        # host, kept between processes, replaces this one)
        self.known: UnitProcesses = {}
        # the provider's rechecks of this host's processes (SFTP reads of /proc) under way
        self.rechecks = 0

    @property
    def batches(self) -> int:  # remote commands run (tests read it)
        return self._batches.batches if self._batches is not None else 0

    @property
    def looking(self) -> bool:
        """Another look at this host is under way: an observation batch running or waiting,
        or a recheck. A look that joins the next batch then costs less than a recheck."""
        return self.rechecks > 0 or (self._batches is not None and self._batches.busy)

    async def observe(self, group: Group,
                      run: Callable[[Sequence[Group]], Awaitable[list[dict[str, str]]]]
                      ) -> dict[str, str]:
        # ``run`` is the same command for every caller (one transport): the first one's serves
        if self._batches is None:
            self._batches = RequestBatches(run, limit=MAX_OBSERVE_BATCH, linger=LOOK_LINGER_S)
        return await self._batches.ask(group)


MAX_OBSERVE_BATCH = 64  # units per remote command (a bounded command line)
_OBSERVERS: weakref.WeakKeyDictionary[Transport, ObserveBatcher] = weakref.WeakKeyDictionary()


def observe_batcher(transport: Transport) -> ObserveBatcher:
    batcher = _OBSERVERS.get(transport)
    if batcher is None:
        batcher = _OBSERVERS[transport] = ObserveBatcher()
    return batcher


async def _observe_on(host: weakref.ref[Transport], groups: Sequence[Group]
                      ) -> list[dict[str, str]]:
    transport = host()
    if transport is None:
        raise ProviderError("the host's connection was closed")
    return await Systemd(transport).observe_now(groups)


class Systemd:
    """systemctl/journalctl on one host (through its transport; sudo is the transport's)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def daemon_reload(self) -> None:
        """``systemctl daemon-reload``, shared with concurrent callers on the same host."""
        await reload_batcher(self.transport).reload(lambda: self.systemctl("daemon-reload"))

    async def _run(self, argv: list[str], limit_s: float = _SYSTEMCTL_TIMEOUT_S,
                   check: bool = True) -> CommandResult:
        return await self.transport.run(argv, timeout=limit_s, check=check)

    async def systemctl(self, *args: str, check: bool = True) -> CommandResult:
        return await self._run(["systemctl", *args], check=check)

    async def file_hashes(self, paths: Sequence[str]) -> list[str | None]:
        """sha256 of each file (None: missing). Read over SFTP when that needs no remote
        process (a plain SSH login: several small reads cost less than one command), else with
        one ``sha256sum`` command (sudo hosts, whose reads are commands each)."""
        if self.transport.reads_in_process:
            try:
                contents = await asyncio.gather(*(self.transport.read_file(p) for p in paths))
            except (ProviderError, OSError):
                pass  # e.g. a file this login cannot read: ask the host instead
            else:
                return [None if c is None else digest(c) for c in contents]
        result = await self._run(["sh", "-c", _INSPECT_SCRIPT, "fraisier-inspect", *paths])
        values = result.stdout.decode().split()
        return [None if v == "-" else v for v in values]

    async def check_calendar(self, calendars: Sequence[str]) -> None:
        result = await self._run(
            ["systemd-analyze", "calendar", "--", *calendars], check=False
        )
        if not result.ok:
            raise ProviderError(
                f"{self.transport.host_id}: systemd rejects the schedule {list(calendars)}: "
                f"{result.stderr.decode(errors='replace').strip()[-400:]}"
            )

    async def install(self, files: Mapping[str, tuple[bytes, int]], *,
                      reload: bool = True) -> bool:
        """Write the files that differ (path -> (content, mode)); True when a unit changed.

        systemd reloads when a unit was written, and also when systemd itself says a unit's
        file is newer than what it loaded (``NeedDaemonReload``): a reconciler killed between
        the write and the reload left identical content behind, and skipping the reload then
        would run the old unit and report drift forever.
        ``reload=False``: the caller reloads by that same rule (a batched commit does)."""
        paths = list(files)
        hashes = await self.file_hashes(paths)
        units = [posixpath.basename(p) for p in paths if p.startswith(UNIT_DIR + "/")]
        stale = [p for p, current in zip(paths, hashes, strict=True)
                 if current != digest(files[p][0])]
        # Written at once (SFTP requests pipeline on one session: one round trip, not one per
        # file); each write is atomic on its own (temp file + rename) and the reload comes after.
        await asyncio.gather(*(self.transport.write_file(p, *files[p]) for p in stale))
        changed_unit = False
        for path in stale:
            if path.startswith(UNIT_DIR + "/"):
                changed_unit = True
                await _hold_after_unit_write(path)
        if reload and (changed_unit or (units and await self.needs_reload(units))):
            await self.daemon_reload()
        return changed_unit

    async def needs_reload(self, units: Sequence[str]) -> bool:
        """systemd's own word: a unit's file changed since it was loaded."""
        result = await self.systemctl("show", "--no-pager", "-p", "NeedDaemonReload", "--",
                                      *units, check=False)
        return any(parse_properties(block).get("NeedDaemonReload") == "yes"
                   for block in result.stdout.decode(errors="replace").split("\n\n"))

    async def observe(self, unit: str, service_dir: str, unit_file: str,
                      timer: str | None = None) -> dict[str, str]:
        """One unit's properties, observed together with the other units of this host that
        are asked for meanwhile (one remote command for all of them)."""
        # The batch's command reaches the host through a weak reference: the batcher is the
        # value of a weak mapping keyed by the transport, and would keep it alive forever
        host = weakref.ref(self.transport)
        return await observe_batcher(self.transport).observe(
            (unit, service_dir, unit_file, timer or ""), lambda groups: _observe_on(host, groups))

    async def observe_now(self, groups: Sequence[Group]) -> list[dict[str, str]]:
        """The properties of ``groups`` units, in one remote command of their own."""
        result = await self._run(["sh", "-c", OBSERVE_SCRIPT, "fraisier-observe",
                                  *self.observe_args(groups)])
        return await self.settle(self.observed(result.stdout.decode(errors="replace"), groups),
                                 groups)

    def observe_args(self, groups: Sequence[Group], *, known: bool = True) -> list[str]:
        """The arguments of ``OBSERVE_SCRIPT`` for ``groups``, with each unit's known process
        (``known=False``: none, every unit observed in full)."""
        processes = observe_batcher(self.transport).known if known else {}
        keys = [processes[g[0]].key if g[0] in processes else "" for g in groups]
        return [a for group, key in zip(groups, keys, strict=True) for a in (*group, key)]

    async def settle(self, observed: list[dict[str, str] | None],
                     groups: Sequence[Group]) -> list[dict[str, str]]:
        """``observed`` with each unit it could not vouch for (None) observed in full."""
        again = [g for g, props in zip(groups, observed, strict=True) if props is None]
        if not again:
            return [props for props in observed if props is not None]
        result = await self._run(["sh", "-c", OBSERVE_SCRIPT, "fraisier-observe",
                                  *self.observe_args(again, known=False)])
        full = iter(self.observed(result.stdout.decode(errors="replace"), again))
        settled = [props if props is not None else next(full) for props in observed]
        return [props for props in settled if props is not None]

    def observed(self, output: str, groups: Sequence[Group]) -> list[dict[str, str] | None]:
        """Each group's properties from what ``OBSERVE_SCRIPT`` printed for ``groups`` (run here
        or inside another script, the batched commit's); None for a unit the script found
        running its known process whose unit file is no longer the one known (``settle``
        observes those in full)."""
        processes = observe_batcher(self.transport).known
        blocks = output.split(_OBSERVED + "\n")
        if len(blocks) != len(groups) + 1:
            raise ProviderError(f"{self.transport.host_id}: observing {len(groups)} unit(s) "
                                f"returned {len(blocks) - 1} block(s)")
        sums: dict[str, str] = {}
        recorded: dict[str, str] = {}
        for line in blocks[-1].splitlines():
            key, _, value = line.partition("=")
            if key == "FraisierSum":
                digest_text, _, path = value.partition("  ")
                sums[path] = digest_text
            elif key == "FraisierRecorded":
                path, _, digest_text = value.rpartition(":")
                recorded[path] = digest_text
        observed: list[dict[str, str] | None] = []
        for (unit, service_dir, unit_file, _), block in zip(groups, blocks[:-1], strict=True):
            props = parse_properties(block)
            unit_hash = sums.get(unit_file)
            known = processes.get(unit)
            shown = props.pop("FraisierKnown", None) is None
            if not shown:
                if (known is None or known.props is None or unit_hash != known.unit_hash
                        or _ticks(known.pid, props) != known.start):
                    observed.append(None)
                    continue
                props = {**known.props, **props}  # this look's state, current, stat, age
            if props.pop("FraisierCwdKnown", None) is not None and known is not None:
                props["FraisierCwd"] = known.cwd
            if shown:  # what systemd said now replaces what was known
                processes.pop(unit, None)
                learnt = _known_process(props, unit_hash)
                if learnt is not None:
                    processes[unit] = learnt
            if unit_hash is not None:
                props["FraisierUnitHash"] = unit_hash
            props["FraisierRecordedHash"] = recorded.get(
                posixpath.join(service_dir, "unit.sha256"), "")
            observed.append(props)
        return observed

    async def run_oneshot(self, unit: str, timeout_s: float) -> tuple[dict[str, str], bytes]:
        result = await self._run(["sh", "-c", _RUN_SCRIPT, "fraisier-run", unit],
                                 limit_s=timeout_s + 30.0)
        head, _, output = result.stdout.partition(b"--- output\n")
        return parse_properties(head.decode(errors="replace")), unit_messages(output, unit)

    async def journal(self, unit: str, lines: int) -> list[str]:
        result = await self._run(
            ["journalctl", "--no-pager", "-q", "-o", "short-iso", "-n", str(max(lines, 0)),
             "-u", unit],
        )
        return result.stdout.decode(errors="replace").splitlines()[-lines:] if lines else []

    async def remove_units(self, units: Sequence[str]) -> None:
        await self.systemctl("disable", "--now", "--", *units, check=False)
        paths = [posixpath.join(UNIT_DIR, u) for u in units]
        await self._run(["rm", "-f", "--", *paths])
        await self.daemon_reload()
        await self.systemctl("reset-failed", "--", *units, check=False)


def exit_code_of(props: Mapping[str, str]) -> int:
    """A oneshot run's exit code as a shell reports it (124: timed out, 128+N: signal N)."""
    if props.get("Result") == "timeout":
        return 124
    try:
        status = int(props.get("ExecMainStatus") or 0)
    except ValueError:
        status = 0
    code = props.get("ExecMainCode", "")
    if code in ("2", "3", "killed", "dumped"):
        return 128 + status
    if status == 0 and props.get("Result") not in ("success", None, ""):
        return 1  # failed before exec (bad user, missing directory): systemd's Result says why
    return status
