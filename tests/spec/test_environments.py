"""Shared definitions resolved per environment: revisions follow the resolved document, the
spec cache keys on what the resolution used, problems name both ends, origins."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.spec.cache import SpecCache
from reconciler.spec.environments import origins
from reconciler.spec.loader import SourceFile, load_desired_state
from reconciler.spec.model import ResourceKey, spec_hash
from tests.spec.conftest import source


def environments(production_tag: str = "1.4", staging_tag: str = "1.5-rc") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: staging}}
spec:
  values:
    tag: "{staging_tag}"
    hosts: [{{name: s1, address: 127.0.0.1}}]
    image: "registry.example/api:${{tag}}"
---
apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: production}}
spec:
  values:
    tag: "{production_tag}"
    hosts: [{{name: p1, address: 127.0.0.1}}, {{name: p2, address: 127.0.0.2}}]
    image: "registry.example/api:${{tag}}"
"""


DEFINITIONS = """apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: web
  environments: [staging, production]
spec:
  provider: bare_metal
  transport: ssh
  hosts: ${hosts}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: api
  environments: [staging, production]
  labels: {version: "${tag}"}
spec:
  target: web
  command: [./api, --image, "${image}", --literal, "$${HOME}"]
"""

PLAIN = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local, environment: staging}
spec: {provider: bare_metal, transport: local}
"""


def fleet(env_text: str, definitions: str = DEFINITIONS) -> list[SourceFile]:
    return [source("env.yaml", env_text), source("defs.yaml", definitions),
            source("plain.yaml", PLAIN)]


STAGING_API = ResourceKey("staging", "Service", "api")
PRODUCTION_API = ResourceKey("production", "Service", "api")


def test_one_definition_becomes_one_resource_per_environment() -> None:
    state = load_desired_state(fleet(environments()))
    assert set(state.resources) == {
        STAGING_API, PRODUCTION_API, ResourceKey("staging", "Target", "web"),
        ResourceKey("production", "Target", "web"), ResourceKey("staging", "Target", "local")}
    production = state.resources[PRODUCTION_API]
    # a value used inside a longer string is text; a value used in another value is resolved
    assert production.spec["command"] == ["./api", "--image", "registry.example/api:1.4",
                                          "--literal", "${HOME}"]
    assert production.labels == {"version": "1.4"}
    # a whole-string use keeps the value's type (a list of hosts)
    hosts = state.resources[ResourceKey("production", "Target", "web")].spec["hosts"]
    assert [h["name"] for h in hosts] == ["p1", "p2"]
    # the resources of two environments do not share mutable values
    staging_hosts = state.resources[ResourceKey("staging", "Target", "web")].spec["hosts"]
    assert staging_hosts is not hosts and staging_hosts[0] is not hosts[0]
    assert production.file == "defs.yaml" and production.line == 11
    # resolved records are hashed from their substituted text: the same hash as any document
    for resource in state.resources.values():
        assert resource.hash == spec_hash(resource.document()), resource.key
    assert state.resources[STAGING_API].depends_on == []


def test_a_production_value_changes_only_production_revisions(tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "cache")
    before = load_desired_state(fleet(environments("1.4")), cache=cache)
    after = load_desired_state(fleet(environments("1.5")), cache=cache)
    changed = {key for key in before.resources
               if before.resources[key].hash != after.resources[key].hash}
    assert changed == {PRODUCTION_API}
    # same values again: the resolved records come from the cache, identical
    misses = cache.misses
    again = load_desired_state(fleet(environments("1.5")), cache=cache)
    assert cache.misses == misses
    assert {k: r.hash for k, r in again.resources.items()} == \
        {k: r.hash for k, r in after.resources.items()}
    assert again.resources[PRODUCTION_API].spec["command"][2] == "registry.example/api:1.5"


def test_the_cache_never_serves_records_resolved_from_other_values(tmp_path: Path) -> None:
    """The definitions' file is unchanged (same blob) while a value changes: a cache keyed on
    the blob alone would serve the old image."""
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(fleet(environments("1.4")), cache=cache)
    state = load_desired_state(fleet(environments("2.0")), cache=cache)
    assert state.resources[PRODUCTION_API].spec["command"][2] == "registry.example/api:2.0"
    assert state.resources[STAGING_API].spec["command"][2] == "registry.example/api:1.5-rc"


def test_problems_point_at_the_use_and_the_definition() -> None:
    definitions = DEFINITIONS.replace('"${image}"', '"${image}", "${region}"')
    with pytest.raises(SpecError) as raised:
        load_desired_state(fleet(environments(), definitions))
    lines = [str(p) for p in raised.value.problems]
    assert lines == [
        "defs.yaml:19:41: spec.command[3]: ${region} is not defined for environment "
        "'production' (Environment 'production' at env.yaml:12:18 defines: hosts, image, tag)",
        "defs.yaml:19:41: spec.command[3]: ${region} is not defined for environment 'staging' "
        "(Environment 'staging' at env.yaml:3:18 defines: hosts, image, tag)",
    ]


def test_a_type_that_fails_after_substitution_names_the_value() -> None:
    env_text = environments().replace("hosts: [{name: p1, address: 127.0.0.1}, "
                                      "{name: p2, address: 127.0.0.2}]", "hosts: p1")
    with pytest.raises(SpecError) as raised:
        load_desired_state(fleet(env_text))
    [problem] = raised.value.problems
    assert (problem.file, problem.line, problem.col) == ("defs.yaml", 9, 10)
    assert "spec.hosts: expected a list" in problem.message
    assert "in environment 'production': ${hosts} = 'p1', defined at env.yaml:16:12" \
        in problem.message


def test_a_cycle_between_values_lists_each_definition() -> None:
    env_text = environments().replace('tag: "1.4"', 'tag: "${image}"')
    with pytest.raises(SpecError) as raised:
        load_desired_state(fleet(env_text))
    [problem] = raised.value.problems
    assert str(problem) == (
        "env.yaml:17:12: spec.values.image: values refer to each other in a cycle: "
        "${tag} (env.yaml:15:10) -> ${image} (env.yaml:17:12) -> ${tag} (env.yaml:15:10)")


@pytest.mark.parametrize(("change", "expected"), [
    ("environments: [staging, production]\n  labels", "metadata.environments[1]: no Environment "
     "'qa'"),
    ("labels: {version: \"${tag}\"}", "spec.command[2]: malformed reference ${not valid}"),
    ("command:", "spec.${tag}: ${...} in a key is not substituted"),
    ("escaped", "spec.$${tag}: ${...} in a key is not substituted"),
])
def test_definition_mistakes_are_located(change: str, expected: str) -> None:
    definitions = DEFINITIONS
    if change.startswith("environments"):
        definitions = definitions.replace(change, "environments: [staging, qa]\n  labels")
    elif change.startswith("labels"):
        definitions = definitions.replace('--image, "${image}"', '--image, "${not valid}"')
    elif change == "escaped":
        definitions = definitions.replace("  command:", "  $${tag}: x\n  command:")
    else:
        definitions = definitions.replace("  command:", "  ${tag}: x\n  command:")
    with pytest.raises(SpecError) as raised:
        load_desired_state(fleet(environments(), definitions))
    # reported once, not once per environment
    assert [expected in p.message for p in raised.value.problems].count(True) == 1, \
        raised.value.problems


def test_environment_and_environments_together_are_refused() -> None:
    definitions = DEFINITIONS.replace("  name: api\n", "  name: api\n  environment: staging\n")
    with pytest.raises(SpecError) as raised:
        load_desired_state(fleet(environments(), definitions))
    [problem] = raised.value.problems
    assert (problem.line, problem.message.split(":")[0]) == (15, "metadata.environment")


def test_origins_name_the_use_and_the_definition() -> None:
    found = origins(fleet(environments()))
    production = {o.path: o for o in found[("production", "Service", "api")]}
    assert str(production["spec.command[2]"]) == \
        "${image} used at defs.yaml:19:29, defined at env.yaml:17:12"
    assert str(production["metadata.labels.version"].use) == "defs.yaml:16:21"
    assert str(found[("staging", "Target", "web")][0]) == \
        "${hosts} used at defs.yaml:9:10, defined at env.yaml:7:12"
