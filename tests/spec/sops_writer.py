"""Write sops-format files in tests (the sops binary is not installed here).

Follows the format of the real vectors in ``../shared/contracts/sops`` (what sops 3.7 writes):
``tests/spec/test_sops.py`` checks that a file written here has their structure and that the
reconciler's reader treats both alike. Only for tests: the reconciler never encrypts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pyrage
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LASTMODIFIED = "2026-12-06T04:00:00Z"


def generate_identity() -> tuple[str, str]:
    """(identity file text as age-keygen writes it, public key)."""
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    return f"# created: test\n# public key: {public}\n{identity}\n", public


def _encrypt_value(value: str, key: bytes, aad: str, kind: str = "str") -> str:
    iv = os.urandom(32)  # sops uses 32-byte nonces
    sealed = AESGCM(key).encrypt(iv, value.encode(), aad.encode())
    data, tag = sealed[:-16], sealed[-16:]
    b64 = base64.b64encode
    return (f"ENC[AES256_GCM,data:{b64(data).decode()},iv:{b64(iv).decode()},"
            f"tag:{b64(tag).decode()},type:{kind}]")


def _leaves(node: Any, path: list[str]) -> Iterator[tuple[list[str], Any, Any, Any]]:
    """(path, container, index/key, value) of every leaf, in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from _leaves(value, [*path, str(key)])
            else:
                yield [*path, str(key)], node, key, value
    elif isinstance(node, list):
        for index, value in enumerate(node):
            if isinstance(value, dict | list):
                yield from _leaves(value, path)
            else:
                yield path, node, index, value


def encrypt_tree(tree: dict[str, Any], recipients: Sequence[str],
                 encrypted_regex: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encrypted tree, sops metadata) for ``tree`` (string values) to age ``recipients``."""
    key = os.urandom(32)
    tree = json.loads(json.dumps(tree))  # a copy
    digest = hashlib.sha512()
    for path, container, index, value in _leaves(tree, []):
        text = str(value)
        digest.update(text.encode())
        should = (any(__import__("re").search(encrypted_regex, p) for p in path)
                  if encrypted_regex else not any(p.endswith("_unencrypted") for p in path))
        if should:
            container[index] = _encrypt_value(text, key, ":".join(path) + ":")
    metadata: dict[str, Any] = {
        "kms": [], "gcp_kms": [], "azure_kv": [], "hc_vault": [],
        "age": [{"recipient": r,
                 "enc": pyrage.encrypt(key, [pyrage.x25519.Recipient.from_str(r)],
                                       armored=True).decode()}
                for r in recipients],
        "lastmodified": LASTMODIFIED,
        "mac": _encrypt_value(digest.hexdigest().upper(), key, LASTMODIFIED),
        "pgp": [],
    }
    if encrypted_regex:
        metadata["encrypted_regex"] = encrypted_regex
    else:
        metadata["unencrypted_suffix"] = "_unencrypted"
    metadata["version"] = "3.7.3"
    return tree, metadata


class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


yaml.SafeDumper.add_representer(_Literal, _literal)


def sops_yaml(tree: dict[str, Any], recipients: Sequence[str],
              encrypted_regex: str | None = None) -> bytes:
    encrypted, metadata = encrypt_tree(tree, recipients, encrypted_regex)
    for entry in metadata["age"]:
        entry["enc"] = _Literal(entry["enc"])
    return yaml.safe_dump({**encrypted, "sops": metadata}, sort_keys=False, indent=4).encode()


def sops_json(tree: dict[str, Any], recipients: Sequence[str]) -> bytes:
    encrypted, metadata = encrypt_tree(tree, recipients)
    return json.dumps({**encrypted, "sops": metadata}, indent=4).encode()


def sops_dotenv(values: dict[str, str], recipients: Sequence[str]) -> bytes:
    encrypted, metadata = encrypt_tree(values, recipients)
    lines = [f"{k}={v}" for k, v in encrypted.items()]
    for index, entry in enumerate(metadata.pop("age")):
        for name in ("enc", "recipient"):
            lines.append(f"sops_age__list_{index}__map_{name}="
                         + entry[name].replace("\n", "\\n"))
    for name in ("lastmodified", "mac", "unencrypted_suffix", "version"):
        lines.append(f"sops_{name}={metadata[name]}")
    return ("\n".join(lines) + "\n").encode()


def age_file(plaintext: bytes, recipients: Sequence[str], armored: bool = False) -> bytes:
    return bytes(pyrage.encrypt(plaintext, [pyrage.x25519.Recipient.from_str(r)
                                            for r in recipients], armored=armored))
