"""Rendering, revisions and schemas of the compose provider (no Docker needed)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reconciler.errors import ProviderError
from reconciler.providers.compose.render import (
    LABEL_COMPOSE_REVISION,
    LABEL_IMAGE,
    LABEL_REVISION,
    LAYOUT_PER_REPLICA,
    LAYOUT_SCALED,
    layout,
    project_name,
    render,
    replica_document,
    replica_of_project,
    replica_project,
    replicas,
    service_names,
    volumes_to_create,
)
from reconciler.spec.model import Resource, ResourceKey
from reconciler.spec.validate import fast_errors, kind_validator


def resource(
    kind: str = "Service", name: str = "api", environment: str = "prod", **spec: Any
) -> Resource:
    key = ResourceKey(environment, kind, name)
    return Resource(key, {}, {"target": "docker", **spec}, "x.yaml")


INLINE = {
    "image": "registry.example/api:1.2@sha256:" + "a" * 64,
    "command": ["/bin/sh", "-c", "echo $HOME ${X}"],
    "environment": {"MODE": "fast", "PRICE": "5$"},
    "ports": ["127.0.0.1:8080:80", {"target": 81, "published": 8081, "hostIp": "127.0.0.1"}],
    "volumes": [
        "data:/data",
        "/etc/hosts:/etc/hosts:ro",
        {"type": "volume", "source": "cache", "target": "/c"},
    ],
    "healthcheck": {"test": ["wget", "-q", "http://127.0.0.1/"], "interval": "1s", "retries": 3},
    "resources": {"cpus": 0.5, "memory": "64m"},
    "networkMode": "host",
}


def test_project_name_is_stable_and_unambiguous() -> None:
    a = resource(compose=INLINE)
    assert project_name(a) == "fraisier_prod_service_api"
    # "a-b"/"c" and "a"/"b-c" must not share a project; neither may a Service and a Job.
    assert project_name(resource(name="c", environment="a-b", compose=INLINE)) != project_name(
        resource(name="b-c", environment="a", compose=INLINE)
    )
    assert project_name(resource("Job", compose=INLINE)) != project_name(a)
    assert project_name(resource(compose={**INLINE, "project": "custom"})) == "custom"


def test_inline_render() -> None:
    r = resource(
        compose=INLINE,
        env={"TOKEN": {"env": "API_TOKEN"}, "LEVEL": "debug"},
        stopTimeout="5s",
    )
    rendered = render(r, "rev-1")
    svc = rendered.document["services"]["api"]
    assert svc["image"] == INLINE["image"]
    assert svc["command"] == ["/bin/sh", "-c", "echo $$HOME $${X}"]  # literal, not interpolated
    assert svc["environment"] == [
        "LEVEL=debug", "MODE=fast", "PRICE=5$$", "TOKEN",
        "FRAISIER_ENVIRONMENT=prod", "FRAISIER_REVISION=rev-1", "FRAISIER_SERVICE=api",
    ]
    assert rendered.secret_env_names == ["TOKEN"]
    assert svc["healthcheck"] == {
        "test": ["CMD", "wget", "-q", "http://127.0.0.1/"],
        "interval": "1s",
        "retries": 3,
    }
    assert svc["cpus"] == 0.5 and svc["mem_limit"] == "64m"
    assert svc["network_mode"] == "host" and svc["init"] is True
    assert svc["restart"] == "unless-stopped" and svc["stop_grace_period"] == "5s"
    assert svc["pull_policy"] == "missing"
    assert svc["ports"][1] == {"target": 81, "published": "8081", "host_ip": "127.0.0.1"}
    assert rendered.document["volumes"] == {"data": {}, "cache": {}}
    assert svc["labels"][LABEL_REVISION] == "rev-1"
    assert svc["labels"][LABEL_IMAGE] == INLINE["image"]
    assert rendered.compose_revision == f"{INLINE['image']}#{rendered.document_hash[:16]}"
    assert svc["labels"][LABEL_COMPOSE_REVISION] == rendered.compose_revision
    assert yaml.safe_load(rendered.yaml()) == rendered.document


def test_the_written_document_reads_back_as_rendered_with_awkward_values() -> None:
    """Values YAML would read as something else unless quoted or escaped."""
    awkward = {"YES": "yes", "OFF": "off", "NULL": "null", "TILDE": "~", "OCTAL": "0755",
               "FLOAT": "1e3", "EMPTY": "", "SPACES": "  padded  ", "COLON": "a: b",
               "HASH": "#not a comment", "MULTI": "line 1\nline 2\n", "TAB": "a\tb",
               "UNICODE": "h\u00e9llo \u2603", "DATE": "2026-12-07", "LONG": "x " * 80}
    rendered = render(resource(compose={**INLINE, "environment": awkward}), "rev-1")
    assert yaml.safe_load(rendered.yaml()) == rendered.document
    assert yaml.safe_load(rendered.yaml(compose_v1=True))["services"]["api"]["environment"] == (
        rendered.document["services"]["api"]["environment"])


def test_compose_revision_covers_the_document_not_the_core_revision() -> None:
    base = render(resource(compose=INLINE), "r1")
    assert render(resource(compose=INLINE), "r2").compose_revision == base.compose_revision
    newer = render(resource(compose={**INLINE, "image": "registry.example/api:1.3"}), "r1")
    assert newer.compose_revision.startswith("registry.example/api:1.3#")
    assert newer.document_hash != base.document_hash
    reordered = dict(reversed(list(INLINE.items())))
    assert render(resource(compose=reordered), "r1").document_hash == base.document_hash


def test_secret_values_never_enter_the_document() -> None:
    r = resource(compose=INLINE, env={"TOKEN": {"env": "API_TOKEN"}})
    one = render(r, "r1")
    assert "TOKEN" in one.yaml() and "API_TOKEN" not in one.yaml()


def test_job_defaults() -> None:
    job = resource("Job", name="migrate", compose={"image": "x:1"}, command=["migrate", "--all"])
    svc = render(job, "j1").document["services"]["migrate"]
    assert svc["restart"] == "no" and svc["command"] == ["migrate", "--all"]
    assert replicas(job) == 1


COMPOSE_FILE = """
version: "3.8"
name: theirs
services:
  web:
    image: web:1
    depends_on: [db, cache]
    labels: [team=core, "tier=front"]
    scale: 3
  cache:
    image: cache:1
  db:
    image: db:1
volumes:
  pgdata: {}
"""


def test_file_reference_takes_listed_services_only() -> None:
    r = resource(compose={"file": "stack/compose.yaml", "services": ["web", "cache"]})
    assert service_names(r) == ["web", "cache"]
    rendered = render(r, "s1", COMPOSE_FILE)
    doc = rendered.document
    assert set(doc["services"]) == {"web", "cache"}
    assert "version" not in doc and "name" not in doc and doc["volumes"] == {"pgdata": {}}
    web = doc["services"]["web"]
    assert web["depends_on"] == ["cache"]  # db is not ours: dropped for `up --no-deps`
    assert "scale" not in web
    assert web["labels"]["team"] == "core" and web["labels"][LABEL_REVISION] == "s1"
    assert rendered.compose_revision.startswith("web:1,cache:1#")


def test_file_reference_errors() -> None:
    r = resource(compose={"file": "c.yaml", "services": ["nope"]})
    with pytest.raises(ProviderError, match="no service"):
        render(r, "s1", COMPOSE_FILE)
    with pytest.raises(ProviderError, match="release's files"):
        render(r, "s1", None)
    built = resource(compose={"file": "c.yaml", "services": ["b"]})
    with pytest.raises(ProviderError, match="image"):
        render(built, "s1", "services:\n  b:\n    build: .\n")


# -- schemas --------------------------------------------------------------------------------


def document(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "fraisier.dev/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


def valid(kind: str, spec: dict[str, Any]) -> bool:
    doc = document(kind, spec)
    slow = not list(kind_validator(kind).iter_errors(doc))
    fast = fast_errors(kind, doc) is None
    assert slow == fast, (slow, fast, spec)
    return slow


def test_workload_schema_accepts_both_shapes() -> None:
    assert valid("Service", {"target": "d", "compose": INLINE})
    assert valid(
        "Service",
        {
            "target": "d",
            "source": {"path": "stack"},
            "compose": {"file": "stack/compose.yaml", "services": ["web"], "replicas": 2},
        },
    )
    assert valid(
        "Job",
        {"target": "d", "command": ["migrate"], "compose": {"image": "x:1", "pullPolicy": "never"}},
    )
    assert valid("Service", {"target": "d", "compose": {**INLINE, "removeVolumes": True}})


@pytest.mark.parametrize(
    "compose",
    [
        {},  # neither shape
        {**INLINE, "file": "c.yaml", "services": ["a"]},  # both
        {"file": "c.yaml", "services": ["a"], "image": "x:1"},  # inline field on a file reference
        {"file": "/etc/compose.yaml", "services": ["a"]},  # outside the release
        {"file": "../c.yaml", "services": ["a"]},
        {"file": "c.yaml"},  # no services
        {**INLINE, "pullPolicy": "sometimes"},
        {**INLINE, "replicas": -1},
        {**INLINE, "waitTimeout": "soon"},
        {**INLINE, "unknown": 1},
        {**INLINE, "healthcheck": {"interval": "1s"}},
    ],
)
def test_workload_schema_rejects(compose: dict[str, Any]) -> None:
    assert not valid("Service", {"target": "d", "compose": compose})


def test_target_schema() -> None:
    assert valid("Target", {"provider": "compose"})
    assert valid(
        "Target", {"provider": "compose", "docker": {"host": "unix:///var/run/docker.sock"}}
    )
    assert valid(
        "Target",
        {
            "provider": "compose",
            "docker": {
                "host": "ssh://deploy@10.0.0.5:2222",
                "compose": "v1",
                "identityFile": "/etc/reconciler/id",
                "knownHosts": "/etc/reconciler/known_hosts",
            },
        },
    )
    assert not valid("Target", {"provider": "compose", "docker": {"host": "tcp://0.0.0.0:2375"}})
    assert not valid("Target", {"provider": "compose", "docker": {"compose": "v3"}})
    assert not valid("Target", {"provider": "compose", "hosts": []})


def test_registered_as_the_compose_provider(tmp_path) -> None:
    from reconciler.providers import Provider, ProviderContext, load_provider
    from reconciler.providers.compose import ComposeProvider

    target = Resource(
        ResourceKey("prod", "Target", "docker"), {}, {"provider": "compose"}, "t.yaml"
    )
    provider = load_provider(target, ProviderContext(state_dir=tmp_path))
    assert isinstance(provider, ComposeProvider) and isinstance(provider, Provider)
    assert provider.state_root == str(tmp_path / "compose")
    bad = Resource(target.key, {}, {"provider": "compose", "docker": {"host": "tcp://x:1"}}, "t")
    with pytest.raises(ProviderError, match=r"docker\.host"):
        load_provider(bad, ProviderContext(state_dir=tmp_path))


PER_REPLICA = {
    "image": "fraisier-tiny:1",
    "replicas": 3,
    "networkMode": "host",
    "command": ["httpd", "-f", "-p", "127.0.0.1:1900{replica}"],
    "entrypoint": ["/bin/sh", "-c", 'exec "$@" # {replica}', "--"],
    "environment": {"SLOT": "r{replica}", "PLAIN": "x"},
    "ports": ["127.0.0.1:1800{replica}:80", {"target": 81, "published": "1700{replica}"}],
    "healthcheck": {"test": ["wget", "-q", "http://127.0.0.1:1900{replica}/"]},
    "volumes": ["data:/data"],
}


def test_layout_follows_the_strategy() -> None:
    for strategy, expected in (
        (None, LAYOUT_SCALED),
        ("recreate", LAYOUT_SCALED),
        ("blue-green", LAYOUT_SCALED),
        ("rolling", LAYOUT_PER_REPLICA),
        ("canary", LAYOUT_PER_REPLICA),
    ):
        extra = {"strategy": {"type": strategy}} if strategy else {}
        assert layout(resource(compose=INLINE, **extra)) == expected, strategy
    assert layout(resource("Job", compose=INLINE, strategy={"type": "rolling"})) == LAYOUT_SCALED
    assert replica_project("fraisier_prod_service_api", 12) == "fraisier_prod_service_api_r12"
    assert replica_of_project("fraisier_prod_service_api", "fraisier_prod_service_api_r12") == 12
    assert replica_of_project("fraisier_prod_service_api", "fraisier_prod_service_api") is None
    assert replica_of_project("fraisier_prod_service_api", "fraisier_prod_service_api_rx") is None


def test_replica_documents_replace_the_placeholder() -> None:
    r = resource(
        compose=PER_REPLICA,
        strategy={"type": "rolling"},
        env={"TOKEN": {"env": "T"}, "WHO": "n{replica}"},
    )
    template = render(r, "rev1")
    assert "{replica}" in yaml.safe_dump(template.document)
    docs = [replica_document(template, n, None) for n in (1, 2)]
    assert [d.project for d in docs] == [replica_project(template.project, n) for n in (1, 2)]
    assert docs[0].compose_revision == docs[1].compose_revision == template.compose_revision
    for n, doc in zip((1, 2), docs, strict=True):
        svc = doc.document["services"]["api"]
        assert "{replica}" not in yaml.safe_dump(doc.document)
        assert svc["command"] == ["httpd", "-f", "-p", f"127.0.0.1:1900{n}"]
        assert svc["entrypoint"][2] == f'exec "$$@" # {n}'
        assert f"SLOT=r{n}" in svc["environment"] and f"WHO=n{n}" in svc["environment"]
        assert "TOKEN" in svc["environment"]  # a secret: named only
        assert svc["ports"] == [
            f"127.0.0.1:1800{n}:80",
            {"target": 81, "published": f"1700{n}"},
        ]
        assert svc["healthcheck"]["test"] == ["CMD", "wget", "-q", f"http://127.0.0.1:1900{n}/"]
        assert svc["labels"]["dev.fraisier.replica"] == str(n)
        assert svc["labels"][LABEL_REVISION] == "rev1"
        # the resource's named volume, shared by every replica (and by the scaled layout)
        assert doc.document["volumes"] == {
            "data": {"external": True, "name": f"{template.project}_data"}
        }
    assert volumes_to_create(template) == [(f"{template.project}_data", "data", {})]
    assert (
        replica_document(template, 1, "missing").document["services"]["api"]["pull_policy"]
        == "missing"
    )
    # the template is left as it was
    assert template.document["services"]["api"]["command"][-1] == "127.0.0.1:1900{replica}"


def test_placeholder_outside_rolling_and_canary() -> None:
    single = resource(compose={**PER_REPLICA, "replicas": 1})
    assert layout(single) == LAYOUT_SCALED
    assert render(single, "r").document["services"]["api"]["command"][-1] == "127.0.0.1:19001"
    # several replicas using {replica} get a project each whatever the strategy (a blue-green
    # slot's replicas on distinct ports); without it they stay one scaled project
    for strategy in ("recreate", "blue-green"):
        several = resource(compose=PER_REPLICA, strategy={"type": strategy})
        assert layout(several) == LAYOUT_PER_REPLICA
        assert "{replica}" in str(render(several, "r").document)
    only_env = resource(compose={**INLINE, "replicas": 2}, env={"ID": "{replica}"})
    assert layout(only_env) == LAYOUT_PER_REPLICA
    assert layout(resource(compose={**INLINE, "replicas": 2})) == LAYOUT_SCALED
    # a compose file is only read at deploy time: there the strategy decides
    text = "services:\n  web:\n    image: x:1\n    command: [run, '{replica}']\n"
    filed = resource(compose={"file": "c.yaml", "services": ["web"], "replicas": 2})
    assert layout(filed) == LAYOUT_SCALED
    with pytest.raises(ProviderError, match="rolling or canary"):
        render(filed, "r", text)
    rolled = resource(
        compose={"file": "c.yaml", "services": ["web"], "replicas": 2}, strategy={"type": "canary"}
    )
    doc = replica_document(render(rolled, "r", text), 2, None)
    assert doc.document["services"]["web"]["command"] == ["run", "2"]
    # no placeholder: the document (and its hash) are what they always were
    plain = {**INLINE, "replicas": 3}
    assert (
        render(resource(compose=plain), "r").document_hash
        == render(resource(compose=plain, strategy={"type": "blue-green"}), "r").document_hash
    )


def test_compose_v1_gets_the_old_name_of_the_missing_pull_policy() -> None:
    rendered = render(resource(compose={"image": "x:1"}), "r")
    assert yaml.safe_load(rendered.yaml())["services"]["api"]["pull_policy"] == "missing"
    v1 = yaml.safe_load(rendered.yaml(compose_v1=True))["services"]["api"]
    assert v1["pull_policy"] == "if_not_present"
    assert rendered.document["services"]["api"]["pull_policy"] == "missing"  # hash unchanged


def test_fraisier_variables_follow_the_revision_not_the_document_hash() -> None:
    """FRAISIER_* are stamped like the revision label: outside the document hash, so the
    compose revision (what drift is judged by) is the same for two revisions of one document,
    while compose's own config (the environment) differs and recreates the container."""
    r = resource(compose=INLINE)
    one, two = render(r, "rev-1"), render(r, "rev-2")
    assert one.compose_revision == two.compose_revision
    env_one = one.document["services"]["api"]["environment"]
    env_two = two.document["services"]["api"]["environment"]
    assert "FRAISIER_REVISION=rev-1" in env_one and "FRAISIER_REVISION=rev-2" in env_two
    # a render is deterministic: the same revision renders the same document every time
    assert render(r, "rev-1").yaml() == one.yaml()
    # a blue-green slot reports the Service's name; its project is the slot's
    slot = Resource(ResourceKey("prod", "Service", "api-blue"), {"fraisier.dev/slot": "blue"},
                    {"target": "docker", "compose": INLINE}, "x.yaml")
    env = render(slot, "rev-3").document["services"]["api-blue"]["environment"]
    assert "FRAISIER_SERVICE=api" in env and "FRAISIER_REVISION=rev-3" in env


def test_reserved_names_in_a_compose_file_are_refused() -> None:
    text = yaml.safe_dump({"services": {"web": {"image": "nginx",
                                                "environment": {"FRAISIER_REVISION": "x"}}}})
    r = resource(compose={"file": "compose.yaml", "services": ["web"]})
    with pytest.raises(ProviderError, match=r"FRAISIER_REVISION.*reserved"):
        render(r, "rev-1", text)
    listed = yaml.safe_dump({"services": {"web": {"image": "nginx", "environment": ["A=1"]}}})
    env = render(r, "rev-1", listed).document["services"]["web"]["environment"]
    assert env[0] == "A=1" and "FRAISIER_REVISION=rev-1" in env
    mapped = yaml.safe_dump({"services": {"web": {"image": "nginx", "environment": {"A": 1}}}})
    env = render(r, "rev-1", mapped).document["services"]["web"]["environment"]
    assert env == {"A": 1, "FRAISIER_ENVIRONMENT": "prod", "FRAISIER_REVISION": "rev-1",
                   "FRAISIER_SERVICE": "api"}
