"""SOPS files: the real vectors written by sops decrypt, a tampered copy is refused by its MAC,
a wrong key names the recipients; the test writer produces the same structure."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from reconciler.spec import age_files, sops
from reconciler.spec.age_files import DecryptError, Keyring, keyring_from
from tests.spec.sops_writer import age_file, generate_identity, sops_dotenv, sops_json, sops_yaml

pytestmark = pytest.mark.timeout(30)


def _locate_vectors() -> Path | None:
    """contracts/sops: $FRAISIER_CONTRACTS, else ../shared/contracts beside the clone."""
    candidates: list[Path] = []
    env = os.environ.get("FRAISIER_CONTRACTS")
    if env:
        candidates.append(Path(env) / "sops")
    candidates.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "contracts" / "sops")
    for candidate in candidates:
        if (candidate / "age-test-key.txt").is_file():
            return candidate.resolve()
    return None


VECTORS = _locate_vectors()
PUBLIC = "age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29"


@pytest.fixture
def vectors() -> Path:
    if VECTORS is None:
        if os.environ.get("RECONCILER_REQUIRE_INTEGRATION") == "1":
            pytest.fail("../shared/contracts/sops is missing (the SOPS test vectors)")
        pytest.skip("../shared/contracts/sops is missing (set FRAISIER_CONTRACTS)")
    return VECTORS


@pytest.fixture
def test_key(vectors: Path) -> Keyring:
    return keyring_from([str(vectors / "age-test-key.txt")], environ={})


def test_real_vectors_decrypt_to_the_readme_plaintext(vectors: Path, test_key: Keyring) -> None:
    assert test_key.public_keys == (PUBLIC,)
    values = sops.decrypt((vectors / "secret.age.yaml").read_bytes(), "secret.age.yaml",
                          test_key)
    assert values == {"apiVersion": "v1", "kind": "Secret", "metadata.name": "sops-age",
                      "stringData.secret": "my-sops-age-secret"}
    env = sops.decrypt((vectors / "year.env").read_bytes(), "year.env", test_key)
    assert env == {"year": "2017"}


@pytest.mark.parametrize(("name", "old", "new"), [
    ("secret.age.yaml", b"name: sops-age", b"name: sops-agf"),  # a plain value (in the MAC)
    ("year.env", None, None),  # an encrypted value swapped for another ciphertext
])
def test_a_copy_with_one_edited_value_is_refused_by_the_mac(
        vectors: Path, test_key: Keyring, name: str, old: bytes | None,
        new: bytes | None) -> None:
    data = (vectors / name).read_bytes()
    if old is None:
        # re-encrypt "2018" under the file's own data key at the right path: only the MAC
        # can tell (what someone holding the data key but not using sops would do)
        parsed = sops.parse(data, name)
        key = sops.data_key(parsed, test_key)
        from tests.spec.sops_writer import _encrypt_value

        token = re.search(rb"year=(ENC\[[^\]]*\])", data)
        assert token is not None
        data = data.replace(token.group(1), _encrypt_value("2018", key, "year:").encode())
    else:
        assert new is not None and old in data
        data = data.replace(old, new)
    with pytest.raises(DecryptError, match=f"sops file {name} .*MAC mismatch") as raised:
        sops.decrypt(data, name, test_key)
    assert PUBLIC in raised.value.message
    assert "2018" not in raised.value.message and "my-sops-age-secret" not in raised.value.message


def test_an_edited_ciphertext_does_not_authenticate(vectors: Path, test_key: Keyring) -> None:
    data = (vectors / "secret.age.yaml").read_bytes().replace(
        b"data:RwzrBF8wy16SpfbQoeADeKyz", b"data:RwzrBF8wy16SpfbQoeADeKyA")
    with pytest.raises(DecryptError, match=r"value stringData\.secret does not authenticate"):
        sops.decrypt(data, "secret.age.yaml", test_key)


def test_a_wrong_key_names_the_file_and_its_recipients(vectors: Path, tmp_path: Path) -> None:
    text, public = generate_identity()
    (tmp_path / "other.txt").write_text(text)
    other = keyring_from([str(tmp_path / "other.txt")], environ={})
    with pytest.raises(DecryptError) as raised:
        sops.decrypt((vectors / "secret.age.yaml").read_bytes(), "secrets/prod.yaml", other)
    message = raised.value.message
    assert "sops file secrets/prod.yaml cannot be decrypted" in message
    assert f"encrypted for {PUBLIC}" in message and f"identities for {public}" in message
    assert "AGE-SECRET-KEY" not in message
    with pytest.raises(DecryptError, match="holds no age identity"):
        sops.decrypt((vectors / "year.env").read_bytes(), "year.env", Keyring())


def test_the_writer_matches_the_real_files_structure(vectors: Path, test_key: Keyring) -> None:
    real = yaml.safe_load((vectors / "secret.age.yaml").read_text())
    tree = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sops-age"},
            "stringData": {"secret": "my-sops-age-secret"}}
    written = sops_yaml(tree, [PUBLIC], encrypted_regex="^(data|stringData)$")
    ours = yaml.safe_load(written)
    assert ours.keys() == real.keys()
    assert set(real["sops"]) - {"mac", "lastmodified"} <= set(ours["sops"]) | {"mac"}
    assert [set(e) for e in ours["sops"]["age"]] == [set(e) for e in real["sops"]["age"]]
    shape = re.compile(r"^ENC\[AES256_GCM,data:[^,]*,iv:([^,]+),tag:([^,]+),type:str\]$")
    for token in (ours["stringData"]["secret"], ours["sops"]["mac"]):
        found, expected = shape.match(token), shape.match(real["stringData"]["secret"])
        assert found and expected and len(found.group(1)) == len(expected.group(1))
    assert ours["metadata"] == real["metadata"]  # outside encrypted_regex: plain in both
    # both read alike by the reconciler
    assert sops.decrypt(written, "w.yaml", test_key) == sops.decrypt(
        (vectors / "secret.age.yaml").read_bytes(), "r.yaml", test_key)
    env = sops_dotenv({"year": "2017"}, [PUBLIC]).decode()
    real_env = (vectors / "year.env").read_text()
    names = sorted(line.split("=", 1)[0] for line in env.splitlines())
    assert names == sorted(line.split("=", 1)[0] for line in real_env.splitlines())
    assert sops.decrypt(env.encode(), "w.env", test_key) == {"year": "2017"}


def test_json_and_nested_keys_and_lists(tmp_path: Path) -> None:
    text, public = generate_identity()
    (tmp_path / "k").write_text(text)
    keyring = keyring_from([str(tmp_path / "k")], environ={})
    tree = {"db": {"password": "pa:ss", "user_unencrypted": "app"}, "hosts": ["a", "b"]}
    values = sops.decrypt(sops_json(tree, [public]), "s.json", keyring)
    assert values == {"db.password": "pa:ss", "db.user_unencrypted": "app",
                      "hosts.0": "a", "hosts.1": "b"}
    assert b"pa:ss" not in sops_json(tree, [public])


def test_whole_age_files_and_identity_errors(tmp_path: Path) -> None:
    text, public = generate_identity()
    (tmp_path / "k").write_text(text)
    keyring = keyring_from([str(tmp_path / "k")], environ={})
    for armored in (False, True):
        data = age_file(b"token\n", [public], armored=armored)
        assert age_files.decrypt_file(data, "secrets/t.age", keyring) == b"token\n"
    _, stranger = generate_identity()
    with pytest.raises(DecryptError, match=r"age file secrets/t.age cannot be decrypted .*"
                                           r"encrypted for 1 X25519 recipient"):
        age_files.decrypt_file(age_file(b"x", [stranger]), "secrets/t.age", keyring)
    (tmp_path / "bad").write_text("# comment\nAGE-SECRET-KEY-1NOTAKEY\n")
    with pytest.raises(age_files.IdentityFileError, match=r"bad:2: not an age identity") as err:
        keyring_from([str(tmp_path / "bad")], environ={})
    assert "NOTAKEY" not in err.value.message
    # SOPS_AGE_KEY_FILE and SOPS_AGE_KEY are read like sops reads them
    both = keyring_from([], environ={"SOPS_AGE_KEY_FILE": str(tmp_path / "k"),
                                     "SOPS_AGE_KEY": generate_identity()[0]})
    assert public in both.public_keys and len(both.public_keys) == 2
    assert "AGE-SECRET-KEY" not in repr(both)


@pytest.mark.parametrize("edit", [
    (b"    age:\n", b"    age: 5\n    agex:\n"),
    (b"encrypted_regex: ^(data|stringData)$", b"encrypted_regex: '(('"),
    (b"encrypted_regex: ^(data|stringData)$", b"encrypted_regex: 5"),
    (b"iv:DuJce2Ebx1Y49DaLCOJ74OOkgiv21roxhz/sZqKCSSs=", b"iv:!!"),
    (b'lastmodified: "2021-04-06T09:07:05Z"', b"lastmodified: 5"),
    (b"    mac: ", b"    macx: "),
    (b"sops:\n", b"sops: 5\nx:\n"),
    (b"apiVersion: v1", b"\xff\xfe"),
])
def test_a_malformed_file_is_a_decrypt_error_never_a_crash(
        vectors: Path, test_key: Keyring, edit: tuple[bytes, bytes]) -> None:
    data = (vectors / "secret.age.yaml").read_bytes()
    assert edit[0] in data
    with pytest.raises(DecryptError, match=r"sops file f\.yaml"):
        sops.decrypt(data.replace(edit[0], edit[1]), "f.yaml", test_key)
