"""Turn a Service/Job/Schedule ``compose:`` section into a compose document (pure functions).

Two shapes (schema/workload.json beside this module):

- inline: ``image``, ``command``, ``environment``, ``ports``, ``volumes``, ``healthcheck``,
  ``resources``, ``pullPolicy``, ``replicas``, ``networkMode`` … rendered into one compose service;
- file: ``file`` (a compose file inside the release's source) + ``services: [...]``: the listed
  services are taken from that file as they are.

Two layouts of a Service's replicas (``layout``):

- ``scaled`` (strategies recreate and blue-green): one compose project for the resource, every
  service scaled to ``compose.replicas`` — compose replaces all replicas of a service together;
- ``per-replica`` (strategies rolling and canary, and any Service with several replicas whose
  inline fields use ``{replica}``): one compose project per replica,
  ``<project>_r<n>`` (names and environments never contain ``_``, so no resource's own project can
  be called that), each rendered with one container per service from one *template* per release
  (``replica_document``): replica ``n`` is deployed, stopped and removed on its own while the
  others keep running, and ``{replica}`` in command, entrypoint, environment, healthcheck.test and
  ports becomes ``n``. Named volumes stay the resource's (``<project>_<volume>``), shared by the
  replicas as they are by scaled replicas, so a strategy change keeps the data.

The *compose revision* is the image reference(s) plus a hash of the rendered document. Secret
environment values never enter the document: a secret is listed by name only and compose takes
its value from the environment of the compose process at ``up``/``run`` time, so the files on
disk, the hash and the labels hold no secret.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.errors import ProviderError
from reconciler.providers import RESERVED_ENV_PREFIX, placement_of, workload_env
from reconciler.providers.sandbox import PROFILES, HintTable, diagnose, profile_word
from reconciler.spec.durations import to_seconds
from reconciler.spec.model import Resource

LABEL_PREFIX = "dev.fraisier."
LABEL_REVISION = LABEL_PREFIX + "revision"  # the core's Release.revision
LABEL_COMPOSE_REVISION = LABEL_PREFIX + "compose-revision"  # image + hash of the document
LABEL_IMAGE = LABEL_PREFIX + "image"  # the image reference the service was rendered with
LABEL_RESOURCE = LABEL_PREFIX + "resource"  # environment/Kind/name
LABEL_REPLICA = LABEL_PREFIX + "replica"  # replica number, per-replica layout only

PROJECT_LABEL = "com.docker.compose.project"
VOLUME_LABEL = "com.docker.compose.volume"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"

PULL_POLICIES = ("always", "missing", "never")
DEFAULT_PULL_POLICY = "missing"
DEFAULT_WAIT_TIMEOUT_S = 60.0

_PROJECT_UNSAFE = re.compile(r"[^a-z0-9_-]")

REPLICA_PLACEHOLDER = "{replica}"
LAYOUT_SCALED = "scaled"
LAYOUT_PER_REPLICA = "per-replica"


def seconds(value: object, default: float) -> float:
    """A Go-style duration (``500ms``, ``1h30m``) or a number of seconds, as seconds (the spec
    stage's parser; a ProviderError when it is not one)."""
    try:
        return to_seconds(value, default)
    except ValueError as exc:
        raise ProviderError(str(exc)) from exc


def project_name(resource: Resource) -> str:
    """Compose project of a resource: stable across revisions, unique per (environment, kind,
    name). ``_`` separates the parts because names may contain ``-`` but never ``_``."""
    section = compose_section(resource)
    explicit = section.get("project")
    if isinstance(explicit, str) and explicit:
        # a slot of a blue-green/canary pair runs beside the other: its own project
        return explicit + placement_of(resource).name_suffix
    raw = f"fraisier_{resource.environment}_{resource.kind}_{resource.name}".lower()
    return _PROJECT_UNSAFE.sub("-", raw)


def layout(resource: Resource) -> str:
    """How a Service's replicas map to compose projects (see the module docstring): one project
    per replica when core places the instances independently (rolling, canary), and for several
    replicas whose inline fields use ``{replica}`` (a blue-green slot's replicas on distinct host
    ports, say)."""
    if resource.kind != "Service":
        return LAYOUT_SCALED
    if placement_of(resource).independent_instances:
        return LAYOUT_PER_REPLICA
    if replicas(resource) > 1 and _inline_uses_placeholder(resource):
        return LAYOUT_PER_REPLICA
    return LAYOUT_SCALED


def _inline_uses_placeholder(resource: Resource) -> bool:
    section = compose_section(resource)
    if is_file_reference(section):
        return False  # the file is only read at deploy time: the strategy decides
    health = section.get("healthcheck")
    fields = [
        section.get("command", resource.spec.get("command")),
        section.get("entrypoint"),
        section.get("environment"),
        resource.spec.get("env"),
        section.get("ports"),
        health.get("test") if isinstance(health, dict) else None,
    ]
    return REPLICA_PLACEHOLDER in json.dumps(fields, default=str)


def replica_project(base: str, number: int) -> str:
    """The compose project of replica ``number`` in the per-replica layout."""
    return f"{base}_r{number}"


def replica_of_project(base: str, project: str) -> int | None:
    """``n`` when ``project`` is ``replica_project(base, n)``."""
    prefix = f"{base}_r"
    if not project.startswith(prefix):
        return None
    tail = project[len(prefix) :]
    return int(tail) if tail.isdigit() and not tail.startswith("0") else None


def compose_section(resource: Resource) -> dict[str, Any]:
    section = resource.spec.get("compose")
    if not isinstance(section, dict):
        raise ProviderError(f"{resource.key}: the compose provider needs a `compose:` section")
    return section


def is_file_reference(section: Mapping[str, Any]) -> bool:
    return "file" in section


def service_names(resource: Resource) -> list[str]:
    """The compose services this resource owns, in the order given."""
    section = compose_section(resource)
    if is_file_reference(section):
        names = section.get("services")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ProviderError(f"{resource.key}: compose.services must list the services to run")
        return list(dict.fromkeys(names))
    name = section.get("service", resource.name)
    return [str(name)]


def replicas(resource: Resource) -> int:
    """Containers per compose service (Jobs and Schedules: one run at a time)."""
    if resource.kind != "Service":
        return 1
    value = compose_section(resource).get("replicas", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProviderError(f"{resource.key}: compose.replicas must be a whole number >= 0")
    return value


def pull_policy(resource: Resource) -> str:
    value = compose_section(resource).get("pullPolicy", DEFAULT_PULL_POLICY)
    if value not in PULL_POLICIES:
        raise ProviderError(
            f"{resource.key}: compose.pullPolicy must be one of {', '.join(PULL_POLICIES)}"
        )
    return str(value)


def escape(value: Any) -> Any:
    """Escape compose interpolation (``$`` → ``$$``) in every string: inline values are literal."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [escape(v) for v in value]
    if isinstance(value, dict):
        return {k: escape(v) for k, v in value.items()}
    return value


@dataclass
class Rendered:
    """A compose document ready to write, and what identifies it.

    In the per-replica layout ``render`` returns the *template* (``{replica}`` left in place,
    ``project`` the resource's); ``replica_document`` derives each replica's document from it."""

    project: str
    services: list[str]
    document: dict[str, Any]
    images: dict[str, str]  # service -> image reference
    document_hash: str
    secret_env_names: list[str] = field(default_factory=list)
    replica: int | None = None  # set on a per-replica document
    sandbox: str = "off"  # the profile its services were hardened with

    @property
    def compose_revision(self) -> str:
        """Image reference(s) + hash of the rendered document, e.g.
        ``fraisier-tiny:2@sha256:… #3f2a9c…`` (digest only when the reference pins one)."""
        refs = ",".join(dict.fromkeys(self.images[s] for s in self.services))
        return f"{refs}#{self.document_hash[:16]}"

    def yaml(self, compose_v1: bool = False) -> str:
        """The document as written for the compose CLI. Compose v1 (1.29) knows the pull
        policy ``missing`` only by its older name ``if_not_present`` (the hash keeps ``missing``).
        """
        document = self.document
        if compose_v1:
            services = {
                name: {**svc, "pull_policy": "if_not_present"}
                if svc.get("pull_policy") == "missing"
                else svc
                for name, svc in document["services"].items()
            }
            document = {**document, "services": services}
        # libyaml's emitter: the same YAML as PyYAML's own, at a seventh of its CPU (one
        # document per replica of a rolling update)
        return yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=True,
                         default_flow_style=False)


def _document_hash(document: Mapping[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _environment(resource: Resource, section: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``KEY=value`` entries for literal values, bare ``KEY`` for secrets (value from the compose
    process environment). spec.env wins over compose.environment for the same key."""
    merged: dict[str, str | None] = {}
    for key, value in (section.get("environment") or {}).items():
        merged[str(key)] = str(value)
    secrets: list[str] = []
    for key, value in (resource.spec.get("env") or {}).items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            merged[str(key)] = str(value)
        else:  # {env: NAME} / {file: PATH}: resolved by the core into Release.env
            merged[str(key)] = None
            secrets.append(str(key))
    entries = [
        key if value is None else f"{key}={escape(value)}" for key, value in sorted(merged.items())
    ]
    return entries, secrets


def _stamp_environment(resource: Resource, name: str, svc: dict[str, Any], revision: str) -> None:
    """Add FRAISIER_REVISION, FRAISIER_SERVICE and FRAISIER_ENVIRONMENT to a rendered service's
    environment. Like the labels, they derive from the core's revision and stay out of the
    document hash; compose's own config hash sees them, so a new revision recreates the
    container. The schemas keep the names out of spec.env and compose.environment; a compose
    file that sets one is refused rather than silently overridden."""
    stamped = workload_env(resource, revision)
    current = svc.get("environment")
    if isinstance(current, dict):
        names = [str(k) for k in current]
    else:
        names = [str(e).partition("=")[0] for e in current or []]
    taken = sorted(n for n in names if n.startswith(RESERVED_ENV_PREFIX))
    if taken:
        raise ProviderError(
            f"{resource.key}: service {name} sets {', '.join(taken)}; names starting with "
            f"{RESERVED_ENV_PREFIX} are reserved (Fraisier sets {', '.join(sorted(stamped))})",
            hint="rename the variable in the compose file",
        )
    if isinstance(current, dict):
        svc["environment"] = {**current, **{k: escape(v) for k, v in stamped.items()}}
    else:
        svc["environment"] = [*(current or []),
                              *(f"{k}={escape(v)}" for k, v in sorted(stamped.items()))]


def _named_volume(source: str) -> bool:
    return bool(source) and not source.startswith(("/", ".", "~", "$"))


def _volumes(section: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    rendered: list[Any] = []
    named: dict[str, Any] = {}
    for entry in section.get("volumes") or []:
        if isinstance(entry, str):
            source = entry.split(":", 1)[0] if ":" in entry else ""
            if _named_volume(source):
                named[source] = {}
            rendered.append(escape(entry))
            continue
        kind = entry.get("type", "volume")
        long: dict[str, Any] = {"type": kind, "target": entry["target"]}
        if "source" in entry:
            long["source"] = entry["source"]
            if kind == "volume":
                named[str(entry["source"])] = {}
        if entry.get("readOnly"):
            long["read_only"] = True
        rendered.append(escape(long))
    return rendered, named


def _ports(section: Mapping[str, Any]) -> list[Any]:
    rendered: list[Any] = []
    for entry in section.get("ports") or []:
        if isinstance(entry, str | int):
            rendered.append(str(entry))
            continue
        long: dict[str, Any] = {"target": entry["target"]}
        if "published" in entry:
            long["published"] = str(entry["published"])
        if "hostIp" in entry:
            long["host_ip"] = entry["hostIp"]
        if "protocol" in entry:
            long["protocol"] = entry["protocol"]
        rendered.append(long)
    return rendered


def _healthcheck(spec: Mapping[str, Any]) -> dict[str, Any]:
    if spec.get("disable"):
        return {"disable": True}
    test = spec["test"]
    rendered: dict[str, Any] = {
        "test": ["CMD", *escape([str(a) for a in test])]
        if isinstance(test, list)
        else ["CMD-SHELL", escape(str(test))]
    }
    for ours, theirs in (
        ("interval", "interval"),
        ("timeout", "timeout"),
        ("startPeriod", "start_period"),
    ):
        if ours in spec:
            rendered[theirs] = str(spec[ours])
    if "retries" in spec:
        rendered["retries"] = int(spec["retries"])
    return rendered


def _inline_service(
    resource: Resource, section: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    image = section.get("image")
    if not isinstance(image, str) or not image:
        raise ProviderError(f"{resource.key}: compose.image is required (or compose.file)")
    svc: dict[str, Any] = {"image": image, "pull_policy": pull_policy(resource)}
    command = section.get("command", resource.spec.get("command"))
    if command is not None:
        svc["command"] = escape([str(a) for a in command])
    if "entrypoint" in section:
        svc["entrypoint"] = escape([str(a) for a in section["entrypoint"]])
    working_dir = section.get("workingDir")
    if working_dir:
        svc["working_dir"] = escape(str(working_dir))
    if section.get("user"):
        svc["user"] = escape(str(section["user"]))
    environment, secrets = _environment(resource, section)
    if environment:
        svc["environment"] = environment
    ports = _ports(section)
    if ports:
        svc["ports"] = ports
    volumes, named = _volumes(section)
    if volumes:
        svc["volumes"] = volumes
    if "healthcheck" in section:
        svc["healthcheck"] = _healthcheck(section["healthcheck"])
    resources = section.get("resources") or {}
    if "cpus" in resources:
        svc["cpus"] = float(resources["cpus"])
    if "memory" in resources:
        svc["mem_limit"] = str(resources["memory"])
    if section.get("networkMode"):
        svc["network_mode"] = str(section["networkMode"])
    # init defaults to on: a PID 1 without a signal handler (busybox sh, many scripts) ignores
    # SIGTERM, so every stop would wait out the grace period and end in SIGKILL.
    svc["init"] = bool(section.get("init", True))
    default_restart = "unless-stopped" if resource.kind == "Service" else "no"
    svc["restart"] = str(section.get("restart", default_restart))
    grace = section.get("stopGracePeriod", resource.spec.get("stopTimeout"))
    if grace is not None:
        svc["stop_grace_period"] = str(grace)
    user_labels = {str(k): escape(str(v)) for k, v in (section.get("labels") or {}).items()}
    if user_labels:
        svc["labels"] = user_labels
    return svc, named, secrets


def _labels_as_dict(labels: Any) -> dict[str, str]:
    if isinstance(labels, dict):
        return {str(k): "" if v is None else str(v) for k, v in labels.items()}
    result: dict[str, str] = {}
    for entry in labels or []:
        key, _, value = str(entry).partition("=")
        result[key] = value
    return result


def _from_file(
    resource: Resource, section: Mapping[str, Any], file_text: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The listed services of a compose file (plus its top-level volumes/networks/...)."""
    try:
        loaded = yaml.safe_load(file_text)
    except yaml.YAMLError as exc:
        raise ProviderError(f"{resource.key}: compose file {section['file']}: {exc}") from exc
    if not isinstance(loaded, dict) or not isinstance(loaded.get("services"), dict):
        raise ProviderError(f"{resource.key}: compose file {section['file']} has no `services:`")
    wanted = service_names(resource)
    missing = [s for s in wanted if s not in loaded["services"]]
    if missing:
        raise ProviderError(
            f"{resource.key}: compose file {section['file']} has no service(s) {', '.join(missing)}"
        )
    document = {k: v for k, v in loaded.items() if k not in ("services", "name", "version")}
    services: dict[str, Any] = {}
    images: dict[str, str] = {}
    for name in wanted:
        svc = dict(loaded["services"][name] or {})
        if "image" not in svc:
            raise ProviderError(
                f"{resource.key}: service {name} in {section['file']} needs an `image:` "
                "(builds are not run on the Docker host)"
            )
        if "pullPolicy" in section:
            svc["pull_policy"] = pull_policy(resource)
        # `up --no-deps` of a subset: a dependency outside the subset would be undefined.
        deps = svc.get("depends_on")
        if isinstance(deps, list):
            kept_list = [d for d in deps if d in wanted]
            svc["depends_on"] = kept_list
            if not kept_list:
                del svc["depends_on"]
        elif isinstance(deps, dict):
            kept_map = {d: c for d, c in deps.items() if d in wanted}
            svc["depends_on"] = kept_map
            if not kept_map:
                del svc["depends_on"]
        svc.pop("scale", None)  # replicas come from compose.replicas (also what instances() sees)
        if "labels" in svc:
            svc["labels"] = _labels_as_dict(svc["labels"])
        services[name] = svc
        images[name] = str(svc["image"])
    document["services"] = services
    return document, images


# Sandbox profiles (docs/sandboxing.md), the same words as bare_metal's systemd units.
NOBODY = "65534:65534"


def sandbox_profile(section: Mapping[str, Any], target_profile: Any = None) -> str:
    """The workload's ``compose.sandbox``, else its Target's ``sandbox``, else default."""
    profile = profile_word(section.get("sandbox", target_profile))
    if profile not in PROFILES:
        raise ProviderError(f"compose.sandbox {profile!r}: expected one of {PROFILES}")
    return profile


def _harden(svc: dict[str, Any], section: Mapping[str, Any], target_profile: Any) -> None:
    """Least privilege for one compose service: no new privileges, every capability dropped but
    the declared ones (``compose.capabilities``, or the file's own ``cap_add``), a read-only root
    filesystem with ``compose.writablePaths`` as tmpfs mounts when asked for (always in strict),
    and in strict a non-root user unless one is declared. Settings the service states itself
    (``cap_drop``, ``read_only``, ``user``) are kept: they are the declaration."""
    profile = sandbox_profile(section, target_profile)
    if profile == "off":
        return
    options = [str(o) for o in svc.get("security_opt") or []]
    if not any(o.replace("=", ":").startswith("no-new-privileges") for o in options):
        options.append("no-new-privileges:true")
    svc["security_opt"] = options
    svc.setdefault("cap_drop", ["ALL"])
    declared = [str(c).removeprefix("CAP_") for c in section.get("capabilities") or []]
    if declared:
        svc["cap_add"] = list(dict.fromkeys([*(svc.get("cap_add") or []), *declared]))
    if section.get("readOnly", profile == "strict"):
        svc.setdefault("read_only", True)
        mounts = [str(p) for p in section.get("writablePaths") or ["/tmp"]]  # noqa: S108 (in the container)
        tmpfs = [str(t) for t in svc.get("tmpfs") or []]
        svc["tmpfs"] = list(dict.fromkeys([*tmpfs, *mounts]))
    if profile == "strict":
        svc.setdefault("user", NOBODY)


# What a container of a sandboxed service prints -> the compose setting of ``_harden`` that
# likely caused it and how to allow exactly that (docs/sandboxing.md). First match wins.
_HINTS: HintTable = (
    (re.compile(r"Read-only file system|EROFS|errno 30\b", re.IGNORECASE),
     "the root filesystem is read-only (compose.readOnly; always in strict): write to a path "
     "listed in compose.writablePaths (a tmpfs, default [/tmp]) or to a volume, or add the path "
     "to compose.writablePaths"),
    (re.compile(r"must be suid|no new privileges|effective uid is not 0", re.IGNORECASE),
     "no-new-privileges: a setuid program cannot gain privileges; run the container as the "
     "user it needs (compose.user) or set compose.sandbox: off for this resource"),
    (re.compile(r"Permission denied|EACCES|errno 13\b", re.IGNORECASE),
     "the container runs without capabilities (cap_drop: ALL), and in strict as nobody "
     "(65534) unless compose.user is set: set compose.user to the user the image expects, keep "
     "a capability with compose.capabilities (e.g. NET_BIND_SERVICE for a port below 1024, "
     "DAC_OVERRIDE for root writing files it does not own) or write to "
     "compose.writablePaths or a volume"),
    (re.compile(r"Operation not permitted|EPERM|errno 1\b", re.IGNORECASE),
     "every capability is dropped (cap_drop: ALL) but those in compose.capabilities: add the "
     "one the app needs (e.g. CHOWN, FOWNER, SETUID, SETGID, KILL, NET_RAW) to "
     "compose.capabilities, or set compose.sandbox: off for this resource"),
)


def sandbox_hint(profile: str, output: str) -> str | None:
    """``diagnose`` with the compose settings: ``output`` is a container's last output lines."""
    return diagnose(profile, output, _HINTS)


# Where ``{replica}`` is replaced: the per-replica fields of a compose service.
_REPLICA_FIELDS = ("command", "entrypoint", "environment", "ports")


def _substitute(value: Any, number: str) -> Any:
    if isinstance(value, str):
        return value.replace(REPLICA_PLACEHOLDER, number)
    if isinstance(value, list):
        return [_substitute(v, number) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, number) for k, v in value.items()}
    return value


def _substitute_service(svc: dict[str, Any], number: str) -> dict[str, Any]:
    """A copy of a rendered service with ``{replica}`` replaced in its per-replica fields."""
    out = dict(svc)
    for key in _REPLICA_FIELDS:
        if key in out:
            out[key] = _substitute(out[key], number)
    health = out.get("healthcheck")
    if isinstance(health, dict) and "test" in health:
        out["healthcheck"] = {**health, "test": _substitute(health["test"], number)}
    return out


def _uses_placeholder(svc: Mapping[str, Any]) -> bool:
    return _substitute_service(dict(svc), "") != dict(svc)


def replica_document(template: Rendered, number: int, pull_policy_override: str | None) -> Rendered:
    """Replica ``number``'s document from a per-replica template: ``{replica}`` replaced, the
    replica's own project, its number as a label, named volumes referring to the resource's.

    The document hash (so the compose revision) stays the template's: every replica of a release
    carries the same compose revision. ``pull_policy_override`` replaces the services' pull
    policy (the provider pulls once per release rather than once per replica)."""
    n = str(number)
    base = template.project
    document = dict(template.document)
    services: dict[str, Any] = {}
    for name, svc in template.document["services"].items():
        one = _substitute_service(svc, n)
        one["labels"] = {**one.get("labels", {}), LABEL_REPLICA: n}
        if pull_policy_override is not None:
            one["pull_policy"] = pull_policy_override
        services[name] = one
    document["services"] = services
    volumes = template.document.get("volumes")
    if isinstance(volumes, dict):
        document["volumes"] = {
            name: {"external": True, "name": shared_volume_name(base, name, config)}
            for name, config in volumes.items()
        }
    return Rendered(
        replica_project(base, number),
        template.services,
        document,
        template.images,
        template.document_hash,
        template.secret_env_names,
        number,
        template.sandbox,
    )


def shared_volume_name(base: str, name: str, config: Any) -> str:
    """The engine name of a named volume of project ``base`` (compose's own naming), or the
    explicit ``name:``/external name the file gives."""
    if isinstance(config, dict) and config.get("name"):
        return str(config["name"])
    if isinstance(config, dict) and isinstance(config.get("external"), dict):
        ext = config["external"]
        if ext.get("name"):
            return str(ext["name"])
    if isinstance(config, dict) and config.get("external"):
        return name
    return f"{base}_{name}"


def volumes_to_create(template: Rendered) -> list[tuple[str, str, dict[str, Any]]]:
    """(engine name, compose volume name, config) of the named volumes the provider creates for
    a per-replica template (external ones are the operator's)."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for name, config in (template.document.get("volumes") or {}).items():
        config = config if isinstance(config, dict) else {}
        if config.get("external"):
            continue
        out.append((shared_volume_name(template.project, name, config), str(name), config))
    return out


def render(resource: Resource, revision: str, file_text: str | None = None,
           target_sandbox: Any = None) -> Rendered:
    """Render the compose document of ``resource`` stamped with ``revision`` (Release.revision).

    ``file_text`` is the referenced compose file's content (file shape only). In the per-replica
    layout this is the template (``{replica}`` kept); in the scaled layout ``{replica}`` is 1 for
    a single replica and an error for more (they share one definition). ``target_sandbox``:
    the Target's ``sandbox`` profile, used when the workload names none."""
    section = compose_section(resource)
    project = project_name(resource)
    services = service_names(resource)
    secrets: list[str] = []
    if is_file_reference(section):
        if file_text is None:
            raise ProviderError(f"{resource.key}: compose.file needs the release's files")
        document, images = _from_file(resource, section, file_text)
    else:
        svc, named, secrets = _inline_service(resource, section)
        document = {"services": {services[0]: svc}}
        if named:
            document["volumes"] = named
        images = {services[0]: svc["image"]}

    if layout(resource) == LAYOUT_SCALED:
        placeholders = [n for n in services if _uses_placeholder(document["services"][n])]
        if placeholders and replicas(resource) > 1:
            raise ProviderError(
                f"{resource.key}: {REPLICA_PLACEHOLDER} in the compose file's services needs one "
                f"compose project per replica (strategy rolling or canary); with this strategy "
                f"the {replicas(resource)} replicas share one definition",
                hint="use strategy.type: rolling (or canary), or a single replica",
            )
        for name in placeholders:
            document["services"][name] = _substitute_service(document["services"][name], "1")
    for name in services:
        _harden(document["services"][name], section, target_sandbox)
    # The hash covers the document as the operator described it; the labels stamped below are
    # derived from it (and from the core's revision), so they stay out of the hash.
    document_hash = _document_hash(document)
    rendered = Rendered(project, services, document, images, document_hash, secrets,
                        sandbox=sandbox_profile(section, target_sandbox))
    for name in services:
        svc = document["services"][name]
        _stamp_environment(resource, name, svc, revision)
        labels = dict(svc.get("labels") or {})
        labels[LABEL_REVISION] = escape(revision)
        labels[LABEL_COMPOSE_REVISION] = rendered.compose_revision
        labels[LABEL_IMAGE] = images[name]
        labels[LABEL_RESOURCE] = str(resource.key)
        svc["labels"] = labels
    return rendered
