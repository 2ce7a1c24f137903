"""Turn a Service/Job/Schedule ``compose:`` section into a compose document (pure functions).

Two shapes (schemas/providers/compose-service.json):

- inline: ``image``, ``command``, ``environment``, ``ports``, ``volumes``, ``healthcheck``,
  ``resources``, ``pullPolicy``, ``replicas``, ``networkMode`` … rendered into one compose service;
- file: ``file`` (a compose file inside the release's source) + ``services: [...]``: the listed
  services are taken from that file as they are.

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
from reconciler.spec.durations import parse_duration
from reconciler.spec.model import Resource

LABEL_PREFIX = "dev.fraisier."
LABEL_REVISION = LABEL_PREFIX + "revision"  # the core's Release.revision
LABEL_COMPOSE_REVISION = LABEL_PREFIX + "compose-revision"  # image + hash of the document
LABEL_IMAGE = LABEL_PREFIX + "image"  # the image reference the service was rendered with
LABEL_RESOURCE = LABEL_PREFIX + "resource"  # environment/Kind/name

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"

PULL_POLICIES = ("always", "missing", "never")
DEFAULT_PULL_POLICY = "missing"
DEFAULT_WAIT_TIMEOUT_S = 60.0

_PROJECT_UNSAFE = re.compile(r"[^a-z0-9_-]")


def seconds(value: object, default: float) -> float:
    """A Go-style duration (``500ms``, ``1h30m``) or a number of seconds, as seconds."""
    if value is None:
        return default
    if isinstance(value, bool):
        raise ProviderError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ProviderError(str(exc)) from exc


def project_name(resource: Resource) -> str:
    """Compose project of a resource: stable across revisions, unique per (environment, kind,
    name). ``_`` separates the parts because names may contain ``-`` but never ``_``."""
    section = compose_section(resource)
    explicit = section.get("project")
    if isinstance(explicit, str) and explicit:
        return explicit
    raw = f"fraisier_{resource.environment}_{resource.kind}_{resource.name}".lower()
    return _PROJECT_UNSAFE.sub("-", raw)


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
    """A compose document ready to write, and what identifies it."""

    project: str
    services: list[str]
    document: dict[str, Any]
    images: dict[str, str]  # service -> image reference
    document_hash: str
    secret_env_names: list[str] = field(default_factory=list)

    @property
    def compose_revision(self) -> str:
        """Image reference(s) + hash of the rendered document, e.g.
        ``fraisier-tiny:2@sha256:… #3f2a9c…`` (digest only when the reference pins one)."""
        refs = ",".join(dict.fromkeys(self.images[s] for s in self.services))
        return f"{refs}#{self.document_hash[:16]}"

    def yaml(self) -> str:
        return yaml.safe_dump(self.document, sort_keys=True, default_flow_style=False)


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


def render(resource: Resource, revision: str, file_text: str | None = None) -> Rendered:
    """Render the compose document of ``resource`` stamped with ``revision`` (Release.revision).

    ``file_text`` is the referenced compose file's content (file shape only)."""
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

    # The hash covers the document as the operator described it; the labels stamped below are
    # derived from it (and from the core's revision), so they stay out of the hash.
    document_hash = _document_hash(document)
    rendered = Rendered(project, services, document, images, document_hash, secrets)
    for name in services:
        svc = document["services"][name]
        labels = dict(svc.get("labels") or {})
        labels[LABEL_REVISION] = escape(revision)
        labels[LABEL_COMPOSE_REVISION] = rendered.compose_revision
        labels[LABEL_IMAGE] = images[name]
        labels[LABEL_RESOURCE] = str(resource.key)
        svc["labels"] = labels
    return rendered
