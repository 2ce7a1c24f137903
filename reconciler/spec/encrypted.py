"""Encrypted files of the config repo: checked when a commit is loaded, read when deployed.

``{sops: {file: secrets/prod.yaml, key: db.password}}`` and ``{age: {file: secrets/token.age}}``
name files by their path from the repository root (like ``source.path``). When a commit is
loaded every file a resource references is decrypted with the operator's age identities
(``spec/age_files.py``) and its MAC checked (``spec/sops.py``): a file that cannot be read,
decrypted or authenticated, or lacks the key, refuses the whole commit (``SecretFileRefused``;
the daemon keeps the last good state). Each resource then carries a keyed digest of the values
it references (HMAC-SHA-256 under a key derived from the age identities, ``digest_key``): it
is part of the resource's revision, so re-encrypting a new value
redeploys the resources that use it, while the digest says nothing of the value to whoever
reads the database. At deploy time the value is decrypted again from the deployed commit
(``resolve``): plaintext lives only in this process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from reconciler.errors import SecretError
from reconciler.spec import age_files, refs
from reconciler.spec.age_files import DecryptError, Keyring
from reconciler.spec.model import Resource, ResourceKey
from reconciler.spec.policy import (
    PolicyError,
    dotted_path,
    protect_env,
    protect_path,
    repo_path_problem,
)

_CACHE_LIMIT = 256  # decrypted files kept by content hash (a fleet names a few files)

Reader = Callable[[str], bytes | None]
Violation = tuple[ResourceKey, tuple[str | int, ...], str]


class SecretFileRefused(PolicyError):
    """An encrypted file the commit references cannot be used: the commit is refused."""

    code = "FR113"
    hint = ("each file:line:col above names a sops/age reference whose file cannot be read, "
            "decrypted or authenticated with the reconciler's age identities (the message names "
            "the file and its recipients); re-encrypt it for a recipient the reconciler holds "
            "(`sops updatekeys`, docs/sops.md) and commit again; nothing was applied")


# -- the digest key ----------------------------------------------------------------------------
def digest_key(keyring: Keyring | None = None) -> bytes:
    """The HMAC key of the digests: derived from the age identities the reconciler holds, so
    every process that can decrypt the secrets (HA replicas, a `diff` run by hand with another
    state directory) computes the same revisions, and no one else can."""
    keyring = keyring or age_files.active()
    material = "\n".join(sorted(str(identity) for identity in keyring.identities))
    return hmac.new(b"fraisier/secret-digest/v1", material.encode(), hashlib.sha256).digest()


def keyed_digest(pairs: Iterable[tuple[str, str]], keyring: Keyring | None = None) -> str:
    """HMAC-SHA-256 of (reference, value) pairs under the digest key: equal values give equal
    digests for this reconciler, and nothing about the value to anyone else."""
    mac = hmac.new(digest_key(keyring), digestmod=hashlib.sha256)
    for where, value in sorted(pairs):
        mac.update(f"{len(where)}:{where}{len(value)}:".encode() + value.encode())
    return mac.hexdigest()[:16]


# -- decryption, memoized by content -----------------------------------------------------------
_decrypted: dict[tuple[str, str, tuple[str, ...]], dict[str, str] | bytes] = {}


def _decrypt(kind: str, path: str, data: bytes, keyring: Keyring) -> dict[str, str] | bytes:
    memo = (hashlib.sha256(data).hexdigest(), kind + ":" + path, keyring.public_keys)
    found = _decrypted.get(memo)
    if found is None:
        from reconciler.spec import sops  # a commit that names no sops file reads none

        found = (sops.decrypt(data, path, keyring) if kind == "sops"
                 else age_files.decrypt_file(data, path, keyring))
        if len(_decrypted) >= _CACHE_LIMIT:
            _decrypted.clear()
        _decrypted[memo] = found
    return found


def _value(ref: Mapping[str, Any], data: bytes, keyring: Keyring) -> str:
    path = refs.repo_file(ref) or ""
    if refs.ref_kind(ref) == "sops":
        key = refs.sops_key(ref) or ""
        values = _decrypt("sops", path, data, keyring)
        assert isinstance(values, dict)
        if key not in values:
            raise DecryptError(f"sops file {path} has no key {key!r}")
        return values[key]
    plain = _decrypt("age", path, data, keyring)
    assert isinstance(plain, bytes)
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptError(f"age file {path} is not UTF-8 text") from None
    # like {file: …}: one trailing newline dropped
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def _read(reader: Reader, path: str) -> bytes:
    problem = repo_path_problem(path)
    if problem is not None:
        raise DecryptError(problem)
    data = reader(path)
    if data is None:
        raise DecryptError(f"{path}: no such file in the config repository (or not a regular "
                           "file)")
    return data


def resolve(ref: Mapping[str, Any], reader: Reader | None,
            keyring: Keyring | None = None) -> str:
    """The value of a ``sops``/``age`` reference, read through ``reader`` (the config repo at
    the deployed commit)."""
    if refs.repo_file(ref) is None or (refs.ref_kind(ref) == "sops" and refs.sops_key(ref) is None):
        raise SecretError(f"invalid secret reference {refs.describe(ref)}: expected "
                          "{sops: {file: PATH, key: KEY}} or {age: {file: PATH}}")
    if reader is None:
        raise SecretError(f"secret reference {refs.describe(ref)} needs the config repository "
                          "(an encrypted file is read from the deployed commit)")
    return _value(ref, _read(reader, refs.repo_file(ref) or ""), keyring or age_files.active())


# -- the load-time check -----------------------------------------------------------------------
def check(resources: Iterable[Resource], reader: Reader | None,
          keyring: Keyring | None = None) -> list[Violation]:
    """Decrypt what every resource references and set its ``sealed_digest``; the problems
    (unreadable, undecryptable, tampered files, missing keys) with their spec paths.

    Without a reader (``validate`` of a folder outside a work tree) nothing can be read: the
    references are left to the policy and schema checks. With a keyring that is not
    ``required`` and holds no identity (``validate`` in CI), files are checked for their
    shape and keys only."""
    keyring = keyring or age_files.active()
    out: list[Violation] = []
    contents: dict[str, bytes | DecryptError] = {}
    shape_only = not keyring.identities and not keyring.required
    scope = keyring.environments
    for resource in resources:
        known = resource.file_refs  # kept in the spec cache (spec/facts.py), else looked for
        if not (may_reference_files(resource.spec) if known is None else known):
            continue  # the common case, kept cheap: a fleet has thousands of resources
        if scope and resource.key.environment not in scope:
            continue  # not deployed by this process (-e): its files may be for another key
        pairs: list[tuple[str, str]] = []
        for path, ref in refs.spec_refs(resource.spec):
            if not refs.is_repo_ref(ref):
                continue
            file = refs.repo_file(ref)
            if file is None or reader is None:
                continue  # malformed refs: the schema reports them
            if file not in contents:
                try:
                    contents[file] = _read(reader, file)
                except DecryptError as exc:
                    contents[file] = exc
            data = contents[file]
            try:
                if isinstance(data, DecryptError):
                    raise data
                if shape_only:
                    _check_shape(ref, file, data)
                    continue
                pairs.append((refs.describe(ref), _value(ref, data, keyring)))
            except DecryptError as exc:
                out.append((resource.key, ("spec", *path),
                            f"{dotted_path(path)}: {refs.describe(ref)}: {exc.message}"))
        resource.sealed_digest = keyed_digest(pairs, keyring) if pairs else ""
    return out


def may_reference_files(spec: Mapping[str, Any]) -> bool:
    """Whether ``spec`` may hold a sops/age reference (a superset of ``refs.spec_refs``)."""
    if "coolify" in spec:
        return True
    env = spec.get("env")
    if not env or not isinstance(env, dict):
        return False
    for value in env.values():
        if isinstance(value, dict) and ("sops" in value or "age" in value or "value" in value):
            return True
    return False


def _check_shape(ref: Mapping[str, Any], file: str, data: bytes) -> None:
    if refs.ref_kind(ref) == "age":
        if not age_files.stanza_types(data):
            raise DecryptError(f"age file {file} is not an age-encrypted file")
        return
    from reconciler.spec import sops

    parsed = sops.parse(data, file)
    key = refs.sops_key(ref) or ""
    if not parsed.has_key(key):
        raise DecryptError(f"sops file {file} has no key {key!r}")


def install_keys(identity_paths: Iterable[str], state_dir: Path | None,
                 repo: str | os.PathLike[str] | None = None,
                 environments: Iterable[str] = ()) -> Keyring:
    """What a command starts with: the operator's age identities, protected from secret
    references like every credential of the reconciler, and never a file of the config repo
    ``repo`` (when it is a local folder). Without a state directory (``validate``) identities
    are optional."""
    keyring = age_files.keyring_from(identity_paths, required=state_dir is not None,
                                     environments=environments)
    tree = os.path.realpath(repo) if repo is not None and os.path.isdir(repo) else None
    for source in keyring.sources:
        if source.startswith("$"):
            continue
        if tree is not None and os.path.realpath(source).startswith(tree.rstrip("/") + "/"):
            # whoever can read the repo could decrypt every secret in it
            raise age_files.IdentityFileError(f"{source}: the age identity file must be outside "
                                              f"the config repository ({repo})")
        protect_path(source)
    for name in (age_files.SOPS_KEY_ENV, age_files.SOPS_KEY_FILE_ENV):
        protect_env(name)
    age_files.install(keyring)
    return keyring
