"""sops/age references when a commit is loaded and when a deployment resolves them: the keyed
digest in the revision, refusals located at the reference, the operator policy on encrypted
files, the identities protected like every credential of the reconciler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.source.revisions import Revisions
from reconciler.spec import age_files, encrypted, policy
from reconciler.spec.age_files import DecryptError, keyring_from
from reconciler.spec.encrypted import SecretFileRefused
from reconciler.spec.loader import files_from_directory, load_desired_state
from reconciler.spec.model import DesiredState, ResourceKey
from reconciler.spec.policy import PolicyError, parse_policy
from reconciler.spec.refs import describe, is_secret_ref, ref_kind
from reconciler.spec.secrets import resolve_env
from reconciler.spec.tree import DirectoryTree
from tests.spec.sops_writer import age_file, generate_identity, sops_dotenv, sops_yaml

pytestmark = pytest.mark.timeout(30)

SECRET = "pl41n-value-never-shown"
API = ResourceKey("production", "Service", "api")

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {name: local, environment: production}
spec: {provider: bare_metal, transport: local}
"""


def service(env: str, environment: str = "production") -> str:
    return f"""apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api, environment: {environment}}}
spec:
  target: local
  command: [sleep, "60"]
  env:
    PLAIN: hi
{env}"""


class Repo:
    def __init__(self, root: Path, public: str) -> None:
        self.root, self.public = root, public
        (root / "fleet").mkdir(parents=True)
        (root / "secrets").mkdir()
        (root / "fleet" / "target.yaml").write_text(TARGET)

    def secret(self, value: str, name: str = "secrets/prod.yaml") -> None:
        (self.root / name).write_bytes(sops_yaml({"db": {"password": value}}, [self.public]))

    def load(self) -> DesiredState:
        return load_desired_state(files_from_directory(self.root / "fleet"),
                                  tree=DirectoryTree(self.root))


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    text, public = generate_identity()
    path = tmp_path / "operator.key"
    path.write_text(text)
    before = age_files.active()
    encrypted.install_keys([str(path)], tmp_path / "state")
    yield path, public
    age_files.install(before)
    policy.install(policy.DEFAULT_POLICY)


@pytest.fixture
def repo(tmp_path: Path, keys: tuple[Path, str]) -> Repo:
    return Repo(tmp_path / "config", keys[1])


DB_REF = "    DB_PASSWORD: {sops: {file: secrets/prod.yaml, key: db.password}}\n"


def test_one_shape_for_every_reference() -> None:
    assert [ref_kind(v) for v in ({"env": "A"}, {"file": "/x"}, {"sops": {}}, {"age": {}},
                                  {"env": "A", "file": "/x"}, {"value": 1}, "text")] == [
        "env", "file", "sops", "age", None, None, None]
    assert is_secret_ref({"sops": {"file": "s.yaml", "key": "k"}})
    assert describe({"sops": {"file": "s.yaml", "key": "a.b"}}) == "sops:s.yaml#a.b"
    # the policy judges what the resolver resolves: a sops ref out of the repo is refused by both
    bad = {"sops": {"file": "../outside.yaml", "key": "k"}}
    assert "inside the config repository" in (policy.ref_problem(bad, "default") or "")


def test_the_revision_moves_with_the_value_not_the_ciphertext(repo: Repo,
                                                              keys: tuple[Path, str]) -> None:
    (repo.root / "fleet" / "api.yaml").write_text(service(DB_REF))
    repo.secret(SECRET)
    revisions = Revisions(None, repo.root / "state")

    def revision() -> str:
        desired = repo.load()
        resource = desired.resources[API]
        assert len(resource.sealed_digest) == 16 and SECRET not in resource.sealed_digest
        return revisions.revision_of(resource, desired)

    first = revision()
    repo.secret(SECRET)  # same value, new data key and ciphertext
    assert revision() == first
    repo.secret(SECRET + "-rotated")
    assert revision() != first
    # keyed by the identities: the same identities (another process, an HA replica) give the
    # same digest; one more identity another key, so another digest for the same value
    before = repo.load().resources[API].sealed_digest
    age_files.install(keyring_from([str(keys[0])], environ={}))
    assert repo.load().resources[API].sealed_digest == before
    extra = repo.root.parent / "extra.key"
    extra.write_text(generate_identity()[0])
    age_files.install(keyring_from([str(keys[0]), str(extra)], environ={}))
    assert repo.load().resources[API].sealed_digest != before


def test_an_unusable_file_refuses_the_commit_at_the_reference(repo: Repo) -> None:
    (repo.root / "fleet" / "api.yaml").write_text(service(
        DB_REF + "    TOKEN: {age: {file: secrets/missing.age}}\n"
        "    OTHER: {sops: {file: secrets/prod.yaml, key: db.nope}}\n"))
    repo.secret(SECRET)
    data = (repo.root / "secrets" / "prod.yaml").read_text()
    (repo.root / "secrets" / "prod.yaml").write_text(
        data.replace("lastmodified: '", "lastmodified: '1"))  # the MAC's additional data
    with pytest.raises(SecretFileRefused) as raised:
        repo.load()
    text = str(raised.value)
    assert raised.value.code == "FR113"
    assert "fleet/api.yaml:9:18: env.DB_PASSWORD: sops:secrets/prod.yaml#db.password" in text
    assert f"encrypted for {repo.public}" in text and "MAC does not authenticate" in text
    assert "fleet/api.yaml:10:12: env.TOKEN: age:secrets/missing.age: secrets/missing.age: " \
           "no such file" in text
    assert "fleet/api.yaml:11:12: env.OTHER" in text and SECRET not in text


def test_validate_without_identities_checks_the_shape_only(repo: Repo, tmp_path: Path) -> None:
    (repo.root / "fleet" / "api.yaml").write_text(service(DB_REF))
    repo.secret(SECRET)
    age_files.install(keyring_from([], environ={}, required=False))
    assert repo.load().resources[API].sealed_digest == ""  # nothing decrypted
    (repo.root / "fleet" / "api.yaml").write_text(service(
        "    DB_PASSWORD: {sops: {file: secrets/prod.yaml, key: db.user}}\n"))
    with pytest.raises(SecretFileRefused, match=r"has no key 'db\.user'"):
        repo.load()
    age_files.install(keyring_from([], environ={}, required=True))  # diff, apply, daemon
    (repo.root / "fleet" / "api.yaml").write_text(service(DB_REF))
    with pytest.raises(SecretFileRefused, match="holds no age identity"):
        repo.load()


def test_the_policy_says_which_environment_may_use_which_file_and_key(repo: Repo) -> None:
    policy.install(parse_policy("""apiVersion: fraisier.dev/v1
kind: Policy
spec:
  environments:
    production:
      endpoints: {localHost: true}
      secrets: {encryptedFiles: ["secrets/prod.yaml#db.*", "secrets/shared/*"]}
    staging:
      endpoints: {localHost: true}
      secrets: {encryptedFiles: ["secrets/staging/*"]}
""", "policy.yaml"))
    repo.secret(SECRET)
    (repo.root / "fleet" / "api.yaml").write_text(service(DB_REF))
    assert repo.load().resources[API].sealed_digest
    (repo.root / "fleet" / "api.yaml").write_text(service(
        DB_REF.replace("production", "staging"), environment="staging"))
    (repo.root / "fleet" / "target.yaml").write_text(TARGET.replace("production", "staging"))
    with pytest.raises(PolicyError) as raised:
        repo.load()
    assert not isinstance(raised.value, SecretFileRefused)
    assert ("encrypted file secrets/prod.yaml#db.password is not allowed in environment "
            "'staging'") in str(raised.value)
    # the resolver asks the policy again (a rollback to a spec recorded before the policy)
    with pytest.raises(policy.SecretRefused):
        resolve_env({"X": {"sops": {"file": "secrets/prod.yaml", "key": "db.password"}}},
                    environment="staging", repo=lambda p: (repo.root / p).read_bytes())


def test_deploy_time_resolution_reads_the_repo_and_names_failures(repo: Repo,
                                                                  keys: tuple[Path, str]) -> None:
    repo.secret(SECRET)
    (repo.root / "secrets" / "t.age").write_bytes(age_file(b"tok\n", [keys[1]]))
    (repo.root / "secrets" / "r.env").write_bytes(sops_dotenv({"R": "eu"}, [keys[1]]))
    read = DirectoryTree(repo.root).read
    env = {"A": {"sops": {"file": "secrets/prod.yaml", "key": "db.password"}},
           "B": {"age": {"file": "secrets/t.age"}},
           "C": {"sops": {"file": "secrets/r.env", "key": "R"}}}
    assert resolve_env(env, environment="production", repo=read) == {
        "A": SECRET, "B": "tok", "C": "eu"}
    with pytest.raises(Exception, match="needs the config repository"):
        resolve_env(env, environment="production")
    age_files.install(keyring_from([], environ={}))
    with pytest.raises(DecryptError) as raised:
        resolve_env(env, environment="production", repo=read)
    assert raised.value.code == "FR502" and "env A" in raised.value.message
    assert keys[1] in raised.value.message and SECRET not in raised.value.message


def test_identities_are_credentials_of_the_reconciler(keys: tuple[Path, str]) -> None:
    path, _ = keys
    assert "own credentials" in (policy.file_problem(str(path), "default") or "")
    for name in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "RECONCILER_AGE_IDENTITY"):
        assert "own credentials" in (policy.env_problem(name, "default") or "")


def test_a_git_tree_reads_files_not_links(tmp_path: Path) -> None:
    from tests.e2e.conftest import git

    repo = tmp_path / "r"
    (repo / "secrets").mkdir(parents=True)
    (repo / "secrets" / "a.yaml").write_text("x")
    (repo / "secrets" / "link.yaml").symlink_to("a.yaml")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "x")
    from reconciler.source.git import GitSource

    source = GitSource(str(repo), state_dir=tmp_path / "state")
    tree = source.tree(source.sync().commit)
    assert tree.read("secrets/a.yaml") == b"x"
    assert tree.read("secrets/link.yaml") is None and tree.read("secrets/none") is None
    assert DirectoryTree(repo).read("secrets/link.yaml") is None


def test_an_identity_inside_the_config_repo_is_refused(tmp_path: Path) -> None:
    repo = tmp_path / "config"
    repo.mkdir()
    (repo / "age.key").write_text(generate_identity()[0])
    before = age_files.active()
    try:
        with pytest.raises(age_files.IdentityFileError, match="must be outside the config"):
            encrypted.install_keys([str(repo / "age.key")], tmp_path / "state", repo)
        assert age_files.active() is before  # nothing installed
    finally:
        age_files.install(before)


def test_a_reconciler_of_some_environments_decrypts_only_theirs(repo: Repo,
                                                                 keys: tuple[Path, str]) -> None:
    """One key per environment: a staging reconciler (-e staging) holds the staging key and
    must still load a commit whose production files it cannot decrypt."""
    _, production_key = generate_identity()
    (repo.root / "secrets" / "prod.yaml").write_bytes(
        sops_yaml({"db": {"password": SECRET}}, [production_key]))
    (repo.root / "fleet" / "api.yaml").write_text(service(DB_REF))
    age_files.install(keyring_from([str(keys[0])], environ={}))
    with pytest.raises(SecretFileRefused, match=f"encrypted for {production_key}"):
        repo.load()
    age_files.install(keyring_from([str(keys[0])], environ={}, environments=["staging"]))
    assert repo.load().resources[API].sealed_digest == ""  # not this reconciler's
