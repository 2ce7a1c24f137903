"""Typed model of the desired state: what the loader produces and every later stage reads."""

from __future__ import annotations

import hashlib
import json
import marshal
from dataclasses import dataclass, field
from typing import Any, NamedTuple

DEFAULT_ENVIRONMENT = "default"


class ResourceKey(NamedTuple):
    """Identity of a resource: (environment, kind, name). A tuple, so hashing and ordering run
    in C: plans hash and sort these tens of thousands of times for a large fleet."""

    environment: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.environment}/{self.kind}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> ResourceKey:
        environment, kind, name = text.split("/", 2)
        return cls(environment, kind, name)


_new_key = tuple.__new__


@dataclass(frozen=True)
class Mark:
    """Where a node was written: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(document: dict[str, Any]) -> str:
    """Stable hash of a document's meaning (key order and formatting do not matter)."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


@dataclass(eq=False)
class Resource:
    """One validated desired-state document."""

    key: ResourceKey
    labels: dict[str, str]
    spec: dict[str, Any]
    file: str
    line: int = 1
    hash: str = ""
    depends_on: list[ResourceKey] = field(default_factory=list)
    # keyed digest of the encrypted secrets it references (spec/encrypted.py): in its revision
    sealed_digest: str = ""

    # Equal by value whatever the class (a PackedResource equals the Resource it packs).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return self._values() == other._values()

    def _values(self) -> tuple[Any, ...]:
        return (self.key, self.labels, self.spec, self.file, self.line, self.hash,
                self.depends_on, self.sealed_digest)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the generated dataclass was

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def environment(self) -> str:
        return self.key.environment

    @property
    def target(self) -> str | None:
        """``spec.target`` when it is a name."""
        target = self.spec.get("target")
        return target if isinstance(target, str) else None

    @property
    def depends_on_refs(self) -> list[str] | None:
        """``spec.dependsOn`` as written."""
        refs: list[str] | None = self.spec.get("dependsOn")
        return refs

    def has_field(self, name: str) -> bool:
        """Whether the spec has the top-level field ``name``."""
        return name in self.spec

    @property
    def file_refs(self) -> bool | None:
        """Whether the spec may reference encrypted files, when known without looking at it
        (``spec/encrypted.py`` looks when None)."""
        return None

    @property
    def target_key(self) -> ResourceKey | None:
        target = self.target
        key = self.key
        if key[1] == "Target" or target is None:
            return None
        # tuple.__new__ directly: ResourceKey(...) goes through a Python-level __new__, and
        # a plan asks this of every resource.
        return _new_key(ResourceKey, (key[0], "Target", target))

    def document(self) -> dict[str, Any]:
        """The document as recorded (what the hash covers)."""
        return {
            "kind": self.kind,
            "metadata": {
                "name": self.name,
                "environment": self.environment,
                "labels": dict(self.labels),
            },
            "spec": self.spec,
        }


# What the loader, the revisions and the secret check read of every resource, kept beside its
# packed document in the spec cache (``spec/facts.py``): spec.target if a name, spec.dependsOn,
# the spec's top-level fields, whether it may reference encrypted files.
Links = tuple[str | None, list[str] | None, tuple[str, ...], bool]


class PackedResource(Resource):
    """A resource read from the spec cache: its labels and spec stay marshalled until first
    used. Decoding every document was most of a warm load, and a plan of a fleet reads the
    documents of the resources that change only; what it reads of every resource (target,
    dependsOn, top-level fields) comes from ``links``."""

    def __init__(self, key: ResourceKey, body: bytes, links: Links, file: str, line: int,
                 hash: str) -> None:
        self.key = key
        self.file = file
        self.line = line
        self.hash = hash
        self.depends_on = []
        # sealed_digest: the class's default ("") until the secret check sets it
        self._body = body
        self._target, self._depends_on_refs, self._fields, self._file_refs = links

    def __getattr__(self, name: str) -> Any:
        # Only reached while ``labels``/``spec`` are not decoded yet (then they are attributes).
        if name in ("labels", "spec"):
            labels, spec = marshal.loads(self._body)  # noqa: S302 - our own cache's bytes
            found = self.__dict__
            found.setdefault("labels", labels)  # setdefault: a racing thread's copy wins once
            found.setdefault("spec", spec)
            return found[name]
        raise AttributeError(name)

    @property
    def target(self) -> str | None:
        return self._target

    @property
    def depends_on_refs(self) -> list[str] | None:
        return self._depends_on_refs

    def has_field(self, name: str) -> bool:
        return name in self._fields

    @property
    def file_refs(self) -> bool | None:
        return self._file_refs


@dataclass(repr=False)
class DesiredState:
    """Every resource found under the config path at one commit."""

    resources: dict[ResourceKey, Resource]
    commit: str | None = None
    root: str = ""
    # Notifier documents: configuration of the daemon's notifications, never planned or
    # deployed, so kept out of ``resources`` (reconciler/notifications/).
    notifiers: dict[ResourceKey, Resource] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"DesiredState(commit={self.commit!r}, resources={len(self.resources)})"

    def get(self, key: ResourceKey) -> Resource | None:
        return self.resources.get(key)

    def target_of(self, resource: Resource) -> Resource | None:
        key = resource.target_key
        return self.resources.get(key) if key else None

    def only(self, environments: set[str] | None) -> DesiredState:
        """The part of the state in ``environments`` (None: everything)."""
        if not environments:
            return self
        kept = {k: r for k, r in self.resources.items() if k.environment in environments}
        notifiers = {k: r for k, r in self.notifiers.items() if k.environment in environments}
        return DesiredState(kept, commit=self.commit, root=self.root, notifiers=notifiers)

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for k, r in sorted(self.resources.items()) if k.kind == kind]
