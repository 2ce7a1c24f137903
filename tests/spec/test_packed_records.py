"""Records packed in the spec cache (spec/facts.py ``packed``, model.PackedResource): a warm load
decodes only the documents something reads, and gives the same desired state, the same
problems and the same plan as a load that parses every file (random fleets and changes,
references across files included)."""

from __future__ import annotations

import asyncio
import json
import marshal
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ReconcilerError, SpecError
from reconciler.rollout.engine import Reconciler
from reconciler.rollout.planning import plan_against_store
from reconciler.source.git import GitSource
from reconciler.source.revisions import Revisions
from reconciler.spec.cache import SpecCache
from reconciler.spec.loader import load_desired_state
from reconciler.spec.model import DesiredState, PackedResource, ResourceKey
from reconciler.state import default_db_url, open_store
from tests.plan.test_layers import reference as reference_layers

pytestmark = pytest.mark.timeout(300)

TARGETS = """\
apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: {local}, environment: {env}}}
spec: {{provider: bare_metal, transport: local}}
---
apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: hosts, environment: {env}}}
spec:
  provider: bare_metal
  transport: ssh
  hosts:
    - {{name: web1, address: 127.0.0.1, user: {user}, vars: {{port: "8081"}}}}
"""
ENVIRONMENTS = ("default", "prod")
FILES = 4


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@invalid",
                    *args], check=True, capture_output=True)


def service(name: str, env: str, rng: random.Random, names: list[str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": rng.choice(["local", "local", "hosts"]),
                            "command": ["/bin/server", "--port", str(rng.randrange(2000, 9000))],
                            "env": {"GREETING": rng.choice(["hi", "hello"])}}
    if spec["target"] == "hosts" and rng.random() < 0.5:
        spec["env"]["PORT"] = "{vars.port}"
    if rng.random() < 0.3:
        spec["syncWindows"] = [{"kind": "deny", "schedule": "0 3 1 1 *", "duration": "1h"}]
    if rng.random() < 0.2:
        spec["source"] = {"path": "app"}
    others = [n for n in names if n != name]
    if others and rng.random() < 0.4:
        spec["dependsOn"] = rng.sample(others, min(len(others), rng.randint(1, 2)))
    return {"name": name, "env": env, "labels": {"team": rng.choice("abc")}, "spec": spec}


def render(doc: dict[str, Any]) -> str:
    return ("apiVersion: fraisier.dev/v1\nkind: Service\nmetadata: "
            + json.dumps({"name": doc["name"], "environment": doc["env"],
                          "labels": doc["labels"]})
            + "\nspec: " + json.dumps(doc["spec"]) + "\n")


class RandomFleet:
    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.repo = root / "repo"
        (self.repo / "fleet").mkdir(parents=True)
        (self.repo / "app").mkdir()
        (self.repo / "app" / "main.py").write_text("print('hi')\n")
        self.local = {env: "local" for env in ENVIRONMENTS}
        self.user = {env: "root" for env in ENVIRONMENTS}  # of the "hosts" Target
        names = [f"svc-{n}" for n in range(24)]
        self.files: list[list[dict[str, Any]]] = [[] for _ in range(FILES)]
        for n, name in enumerate(names):
            env = ENVIRONMENTS[n % 2]
            # dependencies on earlier names only: the first commit loads (no cycle)
            earlier = [m for i, m in enumerate(names[:n]) if ENVIRONMENTS[i % 2] == env]
            self.files[n % FILES].append(service(name, env, self.rng, earlier))
        git(self.repo, "init", "-q", "-b", "main")

    def write(self) -> None:
        fleet = self.repo / "fleet"
        for env in ENVIRONMENTS:
            (fleet / f"targets-{env}.yaml").write_text(
                TARGETS.format(local=self.local[env], env=env, user=self.user[env]))
        for number, docs in enumerate(self.files):
            path = fleet / f"services-{number}.yaml"
            if docs:
                path.write_text("---\n".join(render(d) for d in docs))
            elif path.exists():
                path.unlink()
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "--allow-empty", "-m", "change")

    def simplify(self) -> None:
        """Every Service on its environment's local Target, with no dependencies: it loads."""
        for file in self.files:
            for doc in file:
                doc["spec"].pop("dependsOn", None)
                doc["spec"]["env"].pop("PORT", None)
                doc["spec"]["target"] = "local"

    def mutate(self) -> str:
        """One random change, often one that breaks or mends a reference in another file."""
        rng = self.rng
        docs = [d for file in self.files for d in file]
        doc = rng.choice(docs)
        what = rng.choice(["command", "retarget", "depends", "rename-target", "move",
                           "delete", "duplicate", "cycle", "windows", "vars", "source",
                           "target-field"])
        spec = doc["spec"]
        if what == "command":
            spec["command"][-1] = str(rng.randrange(2000, 9000))
        elif what == "retarget":
            spec["target"] = rng.choice(["local", "hosts", "gone"])
        elif what == "depends":
            spec["dependsOn"] = [rng.choice([d["name"] for d in docs] + ["nobody"])]
        elif what == "rename-target":  # every cached Service on it now names no Target
            env = rng.choice(ENVIRONMENTS)
            self.local[env] = "local" if self.local[env] != "local" else "local2"
        elif what == "target-field":  # a new revision of every Service on "hosts"
            env = rng.choice(ENVIRONMENTS)
            self.user[env] = "root" if self.user[env] != "root" else "deploy"
        elif what == "move":
            for file in self.files:
                if doc in file:
                    file.remove(doc)
            rng.choice(self.files).append(doc)
        elif what == "delete":
            for file in self.files:
                if doc in file:
                    file.remove(doc)
        elif what == "duplicate":
            copy = json.loads(json.dumps(doc))
            rng.choice(self.files).append(copy)
        elif what == "cycle":
            other = rng.choice([d for d in docs if d["env"] == doc["env"]])
            spec["dependsOn"] = [other["name"]]
            if other is not doc:
                other["spec"]["dependsOn"] = [doc["name"]]
        elif what == "windows":
            if "syncWindows" in spec:
                del spec["syncWindows"]
            else:
                spec["syncWindows"] = [{"kind": "deny", "schedule": "0 3 1 1 *",
                                        "duration": "2h"}]
        elif what == "vars":
            spec["env"]["PORT"] = "{vars.port}"
        else:
            spec["source"] = {"path": rng.choice(["app", "missing"])}
        return what


def load(fleet: RandomFleet, cache: SpecCache | None) -> tuple[DesiredState | None, Any]:
    source = GitSource(str(fleet.repo), path="fleet")
    commit = source.sync().commit
    try:
        return load_desired_state(source.files(commit), commit=commit, cache=cache,
                                  tree=source.tree(commit)), None
    except ReconcilerError as exc:
        problems = [str(p) for p in exc.problems] if isinstance(exc, SpecError) else []
        return None, (type(exc).__name__, str(exc), problems)


async def plan_json(fleet: RandomFleet, state: Path, desired: DesiredState) -> Any:
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state, source=GitSource(str(fleet.repo), path="fleet"))
    try:
        return (await engine.plan(desired, prune=True)).to_json()
    finally:
        await engine.close()
        await store.close()


async def plan_texts(fleet: RandomFleet, state: Path, cold: DesiredState, warm: DesiredState,
                     cache: SpecCache, redeploy: set[ResourceKey]) -> tuple[str, str]:
    """The JSON text of the plan as a pass makes it from ``cold`` (the light listing, the
    revisions computed), and as ``diff`` makes it from ``warm`` (the plan listing, the
    revision memo kept in ``cache`` by the previous diff)."""
    store = open_store(default_db_url(state))
    await store.migrate()
    source = GitSource(str(fleet.repo), path="fleet")
    engine = Reconciler(store, state_dir=state, source=source)
    try:
        cold_plan = await engine.plan(cold, prune=True, redeploy=redeploy)
        warm_plan = await plan_against_store(
            store, warm, Revisions(source, state, kept=cache), prune=True, redeploy=redeploy,
            plan_rows=True)
        # the order by the rule itself (tests/plan/test_layers.py), not by the planner's code
        # that both plans share
        depends = {k: r.depends_on for k, r in warm.resources.items() if r.depends_on}
        keys = [*warm.resources, *(i.key for i in warm_plan.items if i.resource is None)]
        assert warm_plan.order == cold_plan.order == reference_layers(keys, depends)
        return json.dumps(cold_plan.to_json(), default=str), warm_plan.json_text()
    finally:
        await engine.close()
        await store.close()


async def disturb_records(state: Path, rng: random.Random) -> set[ResourceKey]:
    """Random recorded states, as a fleet's history leaves them: suspended, rolled back at the
    revision git now wants (blocked), deployed at an older revision, failed, deleted; and a
    few resources to redeploy (drift healing)."""
    store = open_store(default_db_url(state))
    await store.migrate()
    try:
        records = await store.list_resources(with_specs=False)
        for record in rng.sample(records, min(len(records), 6)):
            what = rng.choice(["suspend", "resume", "blocked", "older", "failed", "deleted"])
            if what in ("suspend", "resume"):
                await store.set_suspended(record.key, what == "suspend")
            elif what == "blocked" and record.applied_revision is not None:
                await store.update_status(record.key, last_result="rolled_back",
                                          failed_revision=record.desired_revision)
            elif what == "older":
                await store.record_applied(record.key, revision="000000000000",
                                           spec_hash="old", spec={"kind": record.key.kind},
                                           config_commit=None)
            elif what == "failed":
                await store.update_status(record.key, last_result="failed")
            else:
                await store.mark_deleted(record.key)
        return {r.key for r in rng.sample(records, min(len(records), 2))}
    finally:
        await store.close()


async def record_applied(fleet: RandomFleet, state: Path, desired: DesiredState) -> None:
    store = open_store(default_db_url(state))
    await store.migrate()
    engine = Reconciler(store, state_dir=state, source=GitSource(str(fleet.repo), path="fleet"))
    try:
        for resource in desired.resources.values():
            revision = engine.revision_of(resource, desired)
            for record in (store.record_desired, store.record_applied):
                await record(resource.key, revision=revision, spec_hash=resource.hash,
                             spec=resource.document(), config_commit=desired.commit)
    finally:
        await engine.close()
        await store.close()


@pytest.mark.parametrize("seed", range(6))
def test_a_warm_load_plans_and_fails_as_a_load_that_parses_everything(
        tmp_path: Path, seed: int) -> None:
    fleet = RandomFleet(tmp_path, seed)
    if seed >= 4:  # no dependsOn until a step adds one: planned as most fleets are
        fleet.simplify()
    fleet.write()
    state = tmp_path / "state"
    cache = SpecCache(tmp_path / "cache")
    first, problem = load(fleet, cache)
    assert first is not None, problem
    asyncio.run(record_applied(fleet, state, first))
    outcomes = set()
    good = json.dumps([fleet.files, fleet.local, fleet.user])  # the last state that loaded
    for step in range(12):
        what = fleet.mutate()
        if step % 4 == 3:  # and a new revision of every Service on an environment's "hosts"
            env = fleet.rng.choice(ENVIRONMENTS)
            fleet.user[env] = "root" if fleet.user[env] != "root" else "deploy"
            what += f", hosts user in {env}"
        fleet.write()
        cold, cold_problem = load(fleet, None)
        # a fresh cache object: what another process (a later `diff`) reads from disk
        warm, warm_problem = load(fleet, SpecCache(tmp_path / "cache"))
        context = f"seed {seed}, step {step}: {what}"
        assert warm_problem == cold_problem, context
        if cold is None or warm is None:
            assert cold is None and warm is None, context
            outcomes.add("error")
            if fleet.rng.random() < 0.7:  # mostly back to the last state that loaded
                fleet.files, fleet.local, fleet.user = json.loads(good)
                fleet.write()
            continue
        outcomes.add("loaded")
        good = json.dumps([fleet.files, fleet.local, fleet.user])
        assert warm.resources == cold.resources, context
        assert warm.notifiers == cold.notifiers, context
        assert ({k: r.document() for k, r in warm.resources.items()}
                == {k: r.document() for k, r in cold.resources.items()}), context
        assert asyncio.run(plan_json(fleet, state, warm)) == asyncio.run(
            plan_json(fleet, state, cold)), context
        # what `diff` prints (its plan listing, the revisions kept by the previous step's
        # plan) against a pass's plan, over random recorded states
        redeploy = asyncio.run(disturb_records(state, fleet.rng))
        cold_text, warm_text = asyncio.run(plan_texts(
            fleet, state, cold, warm, SpecCache(tmp_path / "cache"), redeploy))
        assert warm_text == cold_text, context
        outcomes.add("planned")
    assert "planned" in outcomes  # the steps ran, and some loaded


def test_a_warm_plan_decodes_only_the_documents_that_change(tmp_path: Path) -> None:
    # Fails on the code before packed records: every cached document was decoded by a load.
    fleet = RandomFleet(tmp_path, 7)
    fleet.simplify()
    fleet.write()
    state = tmp_path / "state"
    first, problem = load(fleet, SpecCache(tmp_path / "cache"))
    assert first is not None, problem
    asyncio.run(record_applied(fleet, state, first))
    changed = fleet.files[1][0]
    changed["spec"]["command"][-1] = "1234"
    fleet.write()
    warm, problem = load(fleet, SpecCache(tmp_path / "cache"))
    assert warm is not None, problem
    plan = asyncio.run(plan_json(fleet, state, warm))
    acting = {i["name"] for i in plan["resources"] if i["action"] != "unchanged"}
    assert acting == {changed["name"]}
    packed = [r for r in warm.resources.values() if isinstance(r, PackedResource)]
    # the files from the cache, and the changed one as the cache now keeps it
    assert len(packed) == len(warm.resources)
    decoded = {r.name for r in packed if "spec" in vars(r)}
    # read for revisions: the Targets, a source's path, the document without its windows
    read = {d["name"] for file in fleet.files for d in file
            if "source" in d["spec"] or "syncWindows" in d["spec"]}
    assert decoded - read == {"local", changed["name"]}, decoded  # and the update's diff
    assert len(decoded) < len(packed) / 2


def test_kept_revisions_are_reused_and_follow_a_target_change(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    # Fails before the revision memo was kept: every process computed every revision.
    fleet = RandomFleet(tmp_path, 5)
    fleet.simplify()
    for file in fleet.files:
        for doc in file[::2]:
            doc["spec"]["target"] = "hosts"
    fleet.write()
    state, cache = tmp_path / "state", SpecCache(tmp_path / "cache")
    first, problem = load(fleet, cache)
    assert first is not None, problem
    asyncio.run(record_applied(fleet, state, first))
    calls: list[str] = []
    computed = Revisions._revision

    def counted(self: Revisions, resource: Any, *args: Any, **kwargs: Any) -> str:
        calls.append(resource.name)
        return computed(self, resource, *args, **kwargs)

    monkeypatch.setattr(Revisions, "_revision", counted)
    cold_text, warm_text = asyncio.run(plan_texts(fleet, state, first, first, cache, set()))
    assert warm_text == cold_text
    assert json.loads(warm_text)["inSync"]
    calls.clear()
    # a later process computes only what no memo can hold (a source's tree id)
    kept = Revisions(None, state, kept=SpecCache(tmp_path / "cache")).resolve(first)
    with_source = sorted(d["name"] for file in fleet.files for d in file if "source" in d["spec"])
    assert sorted(calls) == with_source
    assert kept == Revisions(None, state).resolve(first)
    for env in ENVIRONMENTS:
        fleet.user[env] = "deploy"  # every Service on "hosts" gets a new revision
    fleet.write()
    cold, _ = load(fleet, None)
    warm, _ = load(fleet, SpecCache(tmp_path / "cache"))
    assert cold is not None and warm is not None
    cold_text, warm_text = asyncio.run(plan_texts(fleet, state, cold, warm,
                                                  SpecCache(tmp_path / "cache"), set()))
    assert warm_text == cold_text
    updated = {i["name"] for i in json.loads(warm_text)["resources"] if i["action"] == "update"}
    on_hosts = {d["name"] for file in fleet.files for d in file if d["spec"]["target"] == "hosts"}
    assert updated == on_hosts | {"hosts"} and len(on_hosts) >= 4
    # the memo kept is the fleet's: one entry per resource without a source, none of the
    # revisions the Target's old document gave
    [kept_file] = (SpecCache(tmp_path / "cache").root / "memo").glob("revisions-*")
    memo = marshal.loads(kept_file.read_bytes())
    assert len(memo) == len(cold.resources) - len(with_source)
    assert set(memo.values()) <= {i["revision"] for i in json.loads(warm_text)["resources"]}


def test_diff_prints_the_same_from_a_warm_cache_as_from_none(tmp_path: Path) -> None:
    """The CLI contract end to end: output and exit code of ``diff`` from packed records and
    from a fresh parse, for a clean change and for one that breaks a reference in another
    (cached) file."""
    fleet = RandomFleet(tmp_path, 11)
    fleet.simplify()
    fleet.write()
    state = tmp_path / "state"
    first, problem = load(fleet, SpecCache(state / "cache" / "spec"))
    assert first is not None, problem
    asyncio.run(record_applied(fleet, state, first))

    def diff(*extra: str) -> tuple[int, str, str]:
        out = subprocess.run([sys.executable, "-m", "reconciler", "--state-dir", str(state),
                              "diff", "--repo", str(fleet.repo), "--path", "fleet", *extra],
                             capture_output=True, text=True, timeout=120)
        return out.returncode, out.stdout, out.stderr

    def cold_and_warm(*extra: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        warm_first = diff(*extra)  # fills the cache for this commit
        warm = diff(*extra)
        assert warm == warm_first
        for entry in (state / "cache" / "spec").iterdir():
            subprocess.run(["rm", "-rf", str(entry)], check=True)
        return diff(*extra), warm

    fleet.files[0][0]["spec"]["env"]["GREETING"] = "changed"
    fleet.write()
    for extra in ((), ("-o", "json")):
        cold, warm = cold_and_warm(*extra)
        assert cold == warm and cold[0] == 1, cold
    fleet.local["default"] = "local2"  # every default Service, in every file, loses its Target
    fleet.write()
    cold, warm = cold_and_warm()
    assert cold == warm and cold[0] == 2 and "no Target 'local'" in cold[2], cold
