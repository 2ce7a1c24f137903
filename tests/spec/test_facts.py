"""The facts kept beside each cached file (spec/facts.py): a warm load judges the operator
policy and per-host values from them without looking into every cached document again, and
still sees a changed policy, a secret file that now resolves elsewhere, and a Target that no
longer defines a value a cached Service names."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import SpecError
from reconciler.spec import facts as spec_facts
from reconciler.spec import policy
from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.policy import PolicyError, parse_policy

TARGET = """\
apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: hosts
spec:
  provider: bare_metal
  transport: ssh
  hosts:
    - name: web1
      address: 127.0.0.1
      user: root
      vars: {{port: 8081{extra}}}
"""

SERVICE = """\
---
apiVersion: fraisier.dev/v1
kind: Service
metadata:
  name: svc-{n}
spec:
  target: hosts
  command: [python3, app.py]
  env:
    PORT: "{{vars.port}}"
    TOKEN: {{env: API_TOKEN}}
    DB: {{file: {secret}}}
"""


def write_fleet(root: Path, secret: Path, services: int = 20) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "target.yaml").write_text(TARGET.format(extra=""))
    # two files of Services, so one can stay cached while the other changes
    half = services // 2
    for name, numbers in (("a", range(half)), ("b", range(half, services))):
        (root / f"services-{name}.yaml").write_text(
            "".join(SERVICE.format(n=n, secret=secret) for n in numbers))


def policy_text(file_dir: Path, env: str = '["*"]') -> str:
    return ("apiVersion: fraisier.dev/v1\nkind: Policy\nmetadata: {name: test}\nspec:\n"
            "  environments:\n    default:\n      secrets:\n"
            f"        env: {env}\n        fileDirs: [{file_dir}]\n"
            '      endpoints:\n        sshHosts: ["127.0.0.*"]\n')


@pytest.fixture
def restore_policy() -> Any:
    before = policy.active()
    yield
    policy.install(before)


def count_document_walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every document the policy's fact finder looks into (cold: each; warm: none cached)."""
    walked: list[str] = []
    real = policy.facts

    def counting(kind: str, spec: Any) -> Any:
        walked.append(kind)
        return real(kind, spec)

    monkeypatch.setattr(policy, "facts", counting)
    monkeypatch.setattr(spec_facts, "policy_facts", counting)
    return walked


def test_a_warm_load_judges_from_the_facts_and_sees_a_new_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_policy: None
) -> None:
    secret = tmp_path / "secrets" / "db"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    fleet = tmp_path / "fleet"
    write_fleet(fleet, secret)
    cache = SpecCache(tmp_path / "cache")
    walked = count_document_walks(monkeypatch)
    cold = load_desired_state(files_from_directory(fleet), cache=cache)
    assert len(cold.resources) == 21 and len(walked) == 21
    walked.clear()
    warm = load_desired_state(files_from_directory(fleet), cache=cache)
    assert cache.hits == 3 and walked == []  # no cached document looked into again
    assert {str(k): r.hash for k, r in warm.resources.items()} == {
        str(k): r.hash for k, r in cold.resources.items()}

    # the operator forbids the variable: the same cached files are now refused, each place named
    policy.install(parse_policy(policy_text(secret.parent, env="[OTHER_*]"), "p.yaml"))
    with pytest.raises(PolicyError) as refused:
        load_desired_state(files_from_directory(fleet), cache=cache)
    problems = refused.value.problems
    assert len(problems) == 20 and cache.hits == 6
    assert {p.message for p in problems} == {
        "env.TOKEN: env:API_TOKEN is not allowed in environment 'default' by the "
        "operator policy p.yaml (secrets.env)"}
    first = min(problems, key=lambda p: (p.file, p.line))
    assert (Path(first.file).name, first.line, first.col) == ("services-a.yaml", 11, 12)


def test_a_cached_secret_file_that_now_leaves_the_allowed_tree_is_refused(
    tmp_path: Path, restore_policy: None
) -> None:
    allowed = tmp_path / "secrets"
    allowed.mkdir()
    secret = allowed / "db"
    secret.write_text("s3cret")
    fleet = tmp_path / "fleet"
    write_fleet(fleet, secret)
    policy.install(parse_policy(policy_text(allowed), "p.yaml"))
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    # the same path, unchanged in the repo, now resolves out of the allowed directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("other")
    secret.unlink()
    secret.symlink_to(elsewhere)
    with pytest.raises(PolicyError) as refused:
        load_desired_state(files_from_directory(fleet), cache=cache)
    assert cache.hits == 3
    assert len(refused.value.problems) == 20
    assert all("is not under a secret directory allowed" in p.message
               and str(elsewhere) in p.message for p in refused.value.problems)


def test_a_changed_target_is_checked_against_cached_services_per_host_values(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "db"
    secret.write_text("s3cret")
    fleet = tmp_path / "fleet"
    write_fleet(fleet, secret)
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files_from_directory(fleet), cache=cache)
    # a second host without the value the (cached) Services name
    (fleet / "target.yaml").write_text(TARGET.format(extra="") + (
        "    - name: web2\n      address: 127.0.0.2\n      user: root\n      vars: {other: 1}\n"))
    with pytest.raises(SpecError) as raised:
        load_desired_state(files_from_directory(fleet), cache=cache)
    assert cache.hits == 2  # both Service files came from the cache
    problems = raised.value.problems
    assert len(problems) == 20
    assert all("vars.port" in p.message and "web2" in p.message for p in problems), problems


def test_an_entry_of_the_old_format_is_a_miss(tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("s3cret")
    fleet = tmp_path / "fleet"
    write_fleet(fleet, secret)
    files = files_from_directory(fleet)
    cache = SpecCache(tmp_path / "cache")
    load_desired_state(files, cache=cache)
    entry = cache.get_entry(files[0].blob_id)
    assert entry is not None
    import marshal

    # a version-3 entry (records only) left in the same namespace: re-parsed, not misread
    path = cache.root / files[0].blob_id[:2] / files[0].blob_id
    path.write_bytes(marshal.dumps(entry[0]))
    misses = cache.misses
    assert cache.get_entry(files[0].blob_id) is None and cache.misses == misses + 1


def test_a_load_leaves_what_it_built_out_of_the_young_generation(tmp_path: Path) -> None:
    # Otherwise the first young collection after the load scans every object of the desired
    # state (~60 ms of a warm load of 10,000 Services, docs/performance.md).
    secret = tmp_path / "db"
    secret.write_text("s3cret")
    fleet = tmp_path / "fleet"
    write_fleet(fleet, secret, services=400)
    gc.collect()
    assert gc.isenabled()
    state = load_desired_state(files_from_directory(fleet))
    assert len(state.resources) == 401
    assert gc.isenabled()
    # thousands of tracked objects were built: none is left in a young generation (without
    # the promotion, a young collection has just scanned them all into generation 1)
    young = len(gc.get_objects(generation=0)) + len(gc.get_objects(generation=1))
    assert young < 200, young
    gc.disable()  # a collector someone else turned off stays off
    try:
        load_desired_state(files_from_directory(fleet))
        assert not gc.isenabled()
    finally:
        gc.enable()


SHARED = """apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: staging}}
spec:
  values: {{secret: "{good}"}}
---
apiVersion: fraisier.dev/v1
kind: Environment
metadata: {{name: production}}
spec:
  values: {{secret: "{bad}"}}
---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local, environments: [staging, production]}}
spec: {{provider: bare_metal, transport: local}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api, environments: [staging, production]}}
spec:
  target: local
  command: [./api]
  env:
    DB: {{file: "${{secret}}"}}
"""


def test_a_secret_path_a_shared_definition_substitutes_is_judged_per_environment(
    tmp_path: Path, restore_policy: None
) -> None:
    # The files' facts skip shared definitions: the records they resolve into (values
    # substituted) are looked at, on a cold load and on a warm one alike.
    allowed = tmp_path / "secrets"
    allowed.mkdir()
    (allowed / "db").write_text("s3cret")
    outside = tmp_path / "outside"
    outside.write_text("other")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "shared.yaml").write_text(SHARED.format(good=allowed / "db", bad=outside))
    policy.install(parse_policy(
        "apiVersion: fraisier.dev/v1\nkind: Policy\nmetadata: {name: test}\nspec:\n"
        "  environments:\n    \"*\":\n      secrets:\n"
        f"        fileDirs: [{allowed}]\n      endpoints:\n        localHost: true\n",
        "p.yaml"))
    cache = SpecCache(tmp_path / "cache")
    for _ in range(2):  # cold, then from the cache
        with pytest.raises(PolicyError) as refused:
            load_desired_state(files_from_directory(fleet), cache=cache)
        messages = [p.message for p in refused.value.problems]
        assert len(messages) == 1 and str(outside) in messages[0], messages
        assert "environment 'production'" in messages[0], messages
    assert cache.hits >= 1
