"""Every provider this build knows, built-in or plugin, described the same way (``ProviderInfo``).

A provider is found by name: an entry point of the ``reconciler.providers`` group (a plugin; it
wins over a built-in of the same name), else the built-in table. An entry point names either a
``ProviderInfo`` (a self-describing plugin: capabilities and schema fragments included) or, as
before, a bare factory (then its Targets accept any fields and its workloads get no block).

Schema fragments are JSON files in the provider's own folder; ``spec/`` validates with the ones
the caller hands it (``provider_schemas()``), and imports no provider.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.machinery import PathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ProviderError
from reconciler.providers.capabilities import Capabilities, ProbeSite
from reconciler.spec.provider_schemas import ProviderSchemas

if TYPE_CHECKING:  # the contract is imported where a provider is made, not to list schemas
    from reconciler.providers.contract import Provider, ProviderContext, ProviderFactory
    from reconciler.spec.model import Resource

ENTRY_POINT_GROUP = "reconciler.providers"
_HERE = Path(__file__).resolve().parent


def fragments_in(folder: Path, workload_key: str | None, source: str = "",
                 connection_fields: tuple[str, ...] = (),
                 instance_vars: str = "") -> ProviderSchemas:
    """A provider folder's schema fragments: ``schema/target.json`` (the Target's spec fields)
    and, when the provider has a block in Services, Jobs and Schedules, ``schema/workload.json``
    (the ``<workload_key>:`` block). ``connection_fields``: the Target fields that never reach
    a host (``ProviderSchemas.connection_fields``); ``instance_vars``: where a Target lists
    each instance's own values (``ProviderSchemas.instance_vars``)."""
    target = json.loads((folder / "schema" / "target.json").read_text())
    workload = None
    if workload_key is not None:
        workload = json.loads((folder / "schema" / "workload.json").read_text())
    return ProviderSchemas(target=target, workload_key=workload_key, workload=workload,
                           source=source or folder.name + "/schema/",
                           connection_fields=connection_fields, instance_vars=instance_vars)


@dataclass(frozen=True)
class ProviderInfo:
    """What core knows of a provider before it makes one.

    ``factory``: ``"module:attribute"`` (imported on first use: validating a fleet imports no
    provider) or the callable itself. ``capabilities``: what a Target of this provider declares
    by default — the authoritative value is the made provider's ``capabilities`` attribute, which
    may differ by Target (bare_metal over SSH observes one host, probes on it, schedules with
    systemd timers). ``schemas``: the provider's schema fragments.
    """

    name: str
    factory: str | ProviderFactory
    capabilities: Capabilities = field(default_factory=Capabilities)
    schemas: ProviderSchemas = field(default_factory=ProviderSchemas)
    description: str = ""

    def make(self, target: Resource, ctx: ProviderContext) -> Provider:
        return self.load_factory()(target, ctx)

    def load_factory(self) -> ProviderFactory:
        if not isinstance(self.factory, str):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise ProviderError(
                f"provider {self.name!r} is not available in this build: {exc}"
            ) from exc
        found: ProviderFactory = getattr(module, attr)
        return found


def _builtin(name: str, workload_key: str | None, capabilities: Capabilities,
             description: str, connection_fields: tuple[str, ...] = (),
             instance_vars: str = "") -> ProviderInfo:
    return ProviderInfo(
        name=name,
        factory=f"reconciler.providers.{name}:create_provider",
        capabilities=capabilities,
        schemas=fragments_in(_HERE / name, workload_key,
                             f"reconciler/providers/{name}/schema/", connection_fields,
                             instance_vars),
        description=description,
    )


@cache
def builtin_providers() -> dict[str, ProviderInfo]:
    return {
        info.name: info
        for info in (
            _builtin("bare_metal", None, Capabilities(),
                     "releases in directories on a host, processes under the local supervisor "
                     "or systemd over SSH",
                     # how the reconciler reaches the hosts, never what runs there
                     ("ssh", "concurrency", "hosts[].identityFile", "hosts[].knownHosts",
                      "hosts[].hostKeys"),
                     "hosts[].vars"),
            _builtin("compose", "compose",
                     Capabilities(observe_one=True, exec_probes=ProbeSite.INSTANCE,
                                  rechecks=True, reports_listening=True),
                     "one Docker host, driven with the Docker Compose CLI"),
            _builtin("coolify", "coolify", Capabilities(), "a Coolify v4 instance",
                     ("token", "verifyTls", "caBundle", "requestTimeout", "connectTimeout",
                      "deployTimeout", "pollInterval", "pollMaxInterval", "cancelOnTimeout",
                      "retry")),
        )
    }


def _from_entry_point(name: str, loaded: Any) -> ProviderInfo:
    if isinstance(loaded, ProviderInfo):
        if loaded.name != name:
            raise ProviderError(
                f"entry point {name!r} of {ENTRY_POINT_GROUP} describes provider {loaded.name!r}"
            )
        return loaded
    if callable(loaded):
        return ProviderInfo(name=name, factory=loaded)
    raise ProviderError(
        f"entry point {name!r} of {ENTRY_POINT_GROUP} is neither a ProviderInfo nor a factory"
    )


# Providers registered in-process (an embedding program, a test's fake provider): after the
# entry points, so they win over both.
_registered: dict[str, ProviderInfo] = {}


def register(info: ProviderInfo) -> None:
    """Make ``info`` known in this process without an entry point (an embedding program, a
    test). Validation sees its fragments after ``spec.validate.reload_schemas()``."""
    _registered[info.name] = info
    all_providers.cache_clear()


def unregister(name: str) -> None:
    _registered.pop(name, None)
    all_providers.cache_clear()


@cache
def all_providers() -> dict[str, ProviderInfo]:
    """Every provider by name: the built-ins, then plugins (a plugin replaces a built-in), then
    the ones registered in-process."""
    found = dict(builtin_providers())
    if not may_have_plugins(found):
        found.update(_registered)
        return found
    # importlib.metadata only here: importing the contract (the health probes do) needs no
    # package metadata; listing plugins does.
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        builtin = found.get(ep.name)
        if builtin is not None and ep.value.replace(" ", "") == builtin.factory:
            continue  # this package's own entry point for a built-in
        try:
            found[ep.name] = _from_entry_point(ep.name, ep.load())
        except Exception as exc:
            # One broken plugin must not stop fleets that do not use it: its name is unknown
            # to validation, and loading it says why.
            _broken[ep.name] = (f"provider plugin {ep.name!r} ({ep.value}) failed to load: "
                                f"{type(exc).__name__}: {exc}")
            found.pop(ep.name, None)
    found.update(_registered)
    return found


_broken: dict[str, str] = {}


def may_have_plugins(builtins: Mapping[str, ProviderInfo]) -> bool:
    """Whether an installed distribution may declare a plugin: an entry point of the group
    other than this package's own ones for its ``builtins``. Read from the entry_points.txt
    files of the distributions on ``sys.path`` as ``importlib.metadata`` finds them (folders
    ending in .dist-info or .egg-info, an .egg's EGG-INFO); importing importlib.metadata and
    reading every distribution's entry points is a tenth of a warm ``diff`` of 10,000 Services
    (docs/performance.md), for the common answer "none". Whatever this look does not model (a
    zip archive on the path, a line it cannot read) answers yes: ``importlib.metadata`` then
    decides."""
    # importlib.metadata asks every finder on sys.meta_path (its protocol: an optional
    # find_distributions); only the path finder's answers are modelled here.
    if any(finder is not PathFinder and hasattr(finder, "find_distributions")
           for finder in sys.meta_path):
        return True
    for entry in sys.path:
        folder = entry or os.curdir
        if not os.path.isdir(folder):
            if os.path.exists(folder):
                return True  # a zip archive: importlib.metadata reads distributions in it
            continue
        egg = os.path.basename(folder).lower().endswith(".egg")
        try:
            children = os.listdir(folder)
        except OSError:
            continue
        for child in children:
            low = child.lower()
            if not (low.endswith((".dist-info", ".egg-info")) or (egg and low == "egg-info")):
                continue
            try:
                with open(os.path.join(folder, child, "entry_points.txt"), "rb") as handle:
                    data = handle.read()
            except OSError:
                continue  # no entry points (or an .egg-info file)
            if ENTRY_POINT_GROUP.encode() in data and _declares_plugin(data, builtins):
                return True
    return False


def _declares_plugin(data: bytes, builtins: Mapping[str, ProviderInfo]) -> bool:
    """Whether an entry_points.txt (read as importlib.metadata's ``Sectioned`` does) has an
    entry of the group that is not a built-in's own."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return True
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line.strip("[]")  # as Sectioned does: "[ x ]" names " x "
            continue
        if section != ENTRY_POINT_GROUP:
            continue
        name, sep, value = line.partition("=")
        builtin = builtins.get(name.strip())
        if not sep or builtin is None or value.replace(" ", "") != builtin.factory:
            return True
    return False


def provider_info(name: str) -> ProviderInfo:
    info = all_providers().get(name)
    if info is None and name in _broken:
        raise ProviderError(_broken[name])
    if info is None:
        known = ", ".join(sorted(all_providers()))
        raise ProviderError(f"unknown provider {name!r}; known: {known}")
    return info


def provider_schemas(*, plugins: bool = True) -> Mapping[str, ProviderSchemas]:
    """The schema fragments of every provider, for ``spec`` validation (handed in by callers).
    ``plugins=False``: the built-ins and the in-process registrations only, whatever this
    environment has installed (a hermetic test session)."""
    found = all_providers() if plugins else {**builtin_providers(), **_registered}
    return {name: info.schemas for name, info in sorted(found.items())}
