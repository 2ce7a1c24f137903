"""The systemd sandbox of a unit: the profiles of docs/sandboxing.md as unit directives
(``Sandbox``), and what a failed start's output says about them (``sandbox_hint``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal.unit_text import unit_value
from reconciler.providers.sandbox import (
    DEFAULT_PROFILE,
    PROFILES,
    HintTable,
    diagnose,
    profile_word,
)

# Profiles of docs/sandboxing.md. `default` keeps ordinary apps working (they write to their
# StateDirectory/CacheDirectory/LogsDirectory, never to the release); `strict` adds what breaks
# some apps (JITs, outbound network, /proc beyond the process's own).
_CAPABILITY = re.compile(r"^CAP_[A-Z_]+\Z")
_FAMILY = re.compile(r"^AF_[A-Z0-9]+\Z")
_IP_RANGE = re.compile(r"^(localhost|link-local|multicast|any|[0-9a-fA-F:.]+(/[0-9]{1,3})?)\Z")
_BASE_FAMILIES = ("AF_UNIX", "AF_INET", "AF_INET6")
# Every profile but `off`: (directive, value), in unit order.
_DEFAULT_DIRECTIVES = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("ProtectProc", "invisible"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
    ("UMask", "0077"),
)


@dataclass(frozen=True)
class Sandbox:
    """A unit's sandbox: the profile and what the app declared it needs (``allow``)."""

    profile: str = DEFAULT_PROFILE
    writable_paths: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    address_families: tuple[str, ...] = ()
    ip_allow: tuple[str, ...] = ()
    jit: bool = False
    network: bool = False

    @classmethod
    def from_section(cls, profile: Any, allow: Mapping[str, Any] | None) -> Sandbox:
        text = profile_word(profile)
        if text not in PROFILES:
            raise ProviderError(f"systemd sandbox {text!r}: expected one of {PROFILES}")
        allow = dict(allow or {})
        unknown = sorted(set(allow) - {"writablePaths", "capabilities", "addressFamilies",
                                       "ipAddresses", "jit", "network"})
        if unknown:
            raise ProviderError(f"systemd allow: unknown setting(s) {unknown}")

        def words(key: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
            values = tuple(str(v) for v in allow.get(key) or ())
            for value in values:
                if not pattern.match(value):
                    raise ProviderError(f"systemd allow.{key}: {value!r} is not valid")
            return values

        paths = tuple(str(p) for p in allow.get("writablePaths") or ())
        for path in paths:
            if not path.startswith("/") or any(c.isspace() or ord(c) < 0x20 for c in path):
                raise ProviderError(f"systemd allow.writablePaths: {path!r} must be an "
                                    "absolute path without spaces")
        return cls(
            profile=text,
            writable_paths=paths,
            capabilities=words("capabilities", _CAPABILITY),
            address_families=words("addressFamilies", _FAMILY),
            ip_allow=words("ipAddresses", _IP_RANGE),
            jit=bool(allow.get("jit", False)),
            network=bool(allow.get("network", False)),
        )

    def directives(self, *, kind: str, state_name: str, has_user: bool) -> list[str]:
        """The unit lines of this sandbox for a ``kind`` unit whose per-service directories are
        named ``state_name`` (under /var/lib, /var/cache, /var/log)."""
        if self.profile == "off":
            return []
        lines = [] if has_user else ["DynamicUser=yes"]
        lines += [f"{key}={value}" for key, value in _DEFAULT_DIRECTIVES]
        caps = " ".join(self.capabilities)
        lines += [f"CapabilityBoundingSet={caps}", f"AmbientCapabilities={caps}"]
        families = dict.fromkeys((*_BASE_FAMILIES, *self.address_families))
        lines.append(f"RestrictAddressFamilies={' '.join(families)}")
        for directive in ("StateDirectory", "CacheDirectory", "LogsDirectory"):
            lines.append(f"{directive}=fraisier/{state_name}")
        if self.writable_paths:
            paths = " ".join(unit_value(p, "path") for p in self.writable_paths)
            lines.append(f"ReadWritePaths={paths}")
        if self.profile == "strict":
            lines += [
                "SystemCallFilter=~@privileged @resources",
                "ProcSubset=pid",
                "KeyringMode=private",
                "DevicePolicy=closed",
            ]
            if not self.jit:
                lines.append("MemoryDenyWriteExecute=yes")
            if kind != "Service" and not self.network:
                lines.append("PrivateNetwork=yes")  # a Job that declared no network needs none
            else:
                lines.append("IPAddressDeny=any")
                lines.append(f"IPAddressAllow={' '.join(('localhost', *self.ip_allow))}")
        return lines


# What a process of a sandboxed unit prints (or systemd's EXIT_* status) -> the setting that
# likely caused it and how to allow exactly that. Checked in order; the first match wins.
_HINTS: HintTable = (
    (re.compile(r"status=200/CHDIR|Changing to the requested working directory failed"),
     "the working directory is not readable by the unit's user (User=/DynamicUser=): "
     "releases must be readable by it (Fraisier opens them on deploy)"),
    (re.compile(r"status=226/NAMESPACE|Failed to set up mount namespacing"),
     "a mount of the sandbox failed (ProtectSystem=/ReadWritePaths=): a path listed in "
     "systemd.allow.writablePaths must exist on the host"),
    (re.compile(r"status=218/CAPABILITIES"),
     "a capability in systemd.allow.capabilities is unknown to this kernel"),
    (re.compile(r"status=217/USER"), "the unit's User= does not exist on the host"),
    (re.compile(r"Read-only file system|EROFS|errno 30\b", re.IGNORECASE),
     "ProtectSystem=strict: everything but the unit's StateDirectory ($STATE_DIRECTORY, "
     "/var/lib/fraisier/<unit>), CacheDirectory and LogsDirectory is read-only; write there, "
     "or list the path in systemd.allow.writablePaths"),
    (re.compile(r"Address family not supported|EAFNOSUPPORT", re.IGNORECASE),
     "RestrictAddressFamilies=: add the family to systemd.allow.addressFamilies"),
    (re.compile(r"Network is unreachable|ENETUNREACH", re.IGNORECASE),
     "strict: a Job or Schedule has no network (PrivateNetwork=): set "
     "systemd.allow.network: true"),
    (re.compile(r"Bad system call|SIGSYS|status=31/SYS", re.IGNORECASE),
     "SystemCallFilter=: the process made a system call outside @system-service; set "
     "systemd.sandbox: off for this resource if it really needs it"),
    (re.compile(r"Permission denied|EACCES|errno 13\b", re.IGNORECASE),
     "the unit runs as an unprivileged user (DynamicUser=/User=) without capabilities: "
     "write to $STATE_DIRECTORY, keep a capability with systemd.allow.capabilities (e.g. "
     "CAP_NET_BIND_SERVICE for a port below 1024) or open a path with "
     "systemd.allow.writablePaths"),
    (re.compile(r"Operation not permitted|EPERM|errno 1\b", re.IGNORECASE),
     "an operation the sandbox denies (CapabilityBoundingSet=, SystemCallFilter=, "
     "IPAddressDeny= in strict): allow what the app needs with systemd.allow "
     "(capabilities, ipAddresses) or set systemd.sandbox: off for this resource"),
)


def sandbox_hint(profile: str, text: str) -> str | None:
    """``diagnose`` with the systemd unit's settings: ``text`` is a process's last output lines
    and systemd's messages about it."""
    return diagnose(profile, text, _HINTS)
