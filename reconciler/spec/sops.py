"""SOPS files (YAML, JSON, dotenv) decrypted in process, their MAC verified.

The format (what sops 3.x writes), as far as it is used here:

* the document keeps its keys in plain text; a value sops encrypted reads
  ``ENC[AES256_GCM,data:…,iv:…,tag:…,type:str|int|float|bool]``: AES-256-GCM under the file's
  data key, with the value's path as additional data (``db:password:``; a list item keeps the
  path of its list);
* ``sops.age[]`` holds the data key once per recipient (``recipient``, ``enc``: an armored age
  file of the 32-byte key); other key services (``pgp``, ``kms``, …) are named in errors only;
* ``sops.mac`` is the upper-case hex SHA-512 of the plaintext of every leaf value in document
  order (encrypted or not, unless ``mac_only_encrypted``), itself encrypted with
  ``sops.lastmodified`` as additional data. A value edited without the data key changes it:
  the file is refused whole.
* dotenv files flatten the metadata into ``sops_*`` lines (``sops_age__list_0__map_enc``).

Crypto is ``cryptography``'s AES-GCM and hashlib's SHA-512; the data key is unwrapped by
``spec/age_files.py`` (pyrage). Errors name the file, a key path and the recipients, never a
value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from reconciler.spec import age_files
from reconciler.spec.age_files import DecryptError, Keyring

_ENC = re.compile(r"^ENC\[AES256_GCM,data:([^,]*),iv:([^,]+),tag:([^,]+),type:([a-z]+)\]$")
_LIST_PART = re.compile(r"__list_(\d+)__map_")
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"


if TYPE_CHECKING:
    import yaml


@cache
def _no_dates() -> type[yaml.CSafeLoader]:
    """Safe YAML without timestamps: sops (go-yaml) keeps ``2021-04-06`` a string, and so must
    the MAC here. Made on the first sops file read: PyYAML's import is paid by the
    commands that read one, not by every command that may (docs/performance.md, session 11)."""
    import yaml

    class NoDates(yaml.CSafeLoader):
        pass

    NoDates.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.CSafeLoader.yaml_implicit_resolvers.items()
    }
    return NoDates


@dataclass(frozen=True)
class SopsFile:
    """A parsed (still encrypted) sops file."""

    path: str
    tree: Any  # the document without its ``sops`` metadata
    metadata: dict[str, Any]

    def entries(self, name: str) -> list[dict[str, Any]]:
        """The entries of a key service's list (``age``, ``pgp``, …); malformed ones dropped."""
        found = self.metadata.get(name)
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    @property
    def recipients(self) -> list[str]:
        """Who the data key was written for: age recipients, then other services by name."""
        out = [str(entry.get("recipient")) for entry in self.entries("age")]
        for name, field in (("pgp", "fp"), ("kms", "arn"), ("gcp_kms", "resource_id"),
                            ("azure_kv", "vault_url"), ("hc_vault", "vault_address")):
            for entry in self.entries(name):
                out.append(f"{name} {entry.get(field, '?')}")
        if self.metadata.get("key_groups"):
            out.append("key groups (shamir)")
        return out

    @property
    def described_recipients(self) -> str:
        found = self.recipients
        return ", ".join(found) if found else "no recipient"

    def has_key(self, key: str) -> bool:
        try:
            self.locate(key)
        except KeyError:
            return False
        return True

    def locate(self, key: str) -> tuple[Any, list[str]]:
        """The (encrypted) leaf at dotted ``key`` and its path."""
        node: Any = self.tree
        path: list[str] = []
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
                path.append(part)
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]  # a list item keeps its list's path (sops)
            else:
                raise KeyError(key)
        if isinstance(node, dict | list):
            raise KeyError(key)
        return node, path


def file_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".env"):
        return "dotenv"
    if lower.endswith(".json"):
        return "json"
    return "yaml"


def parse(data: bytes, path: str) -> SopsFile:
    """A sops file's tree and metadata; DecryptError when it is not one."""
    import yaml

    fmt = file_format(path)
    try:
        text = data.decode("utf-8")
        if fmt == "dotenv":
            tree, metadata = _parse_dotenv(text)
        else:
            document = json.loads(text) if fmt == "json" else yaml.load(text, Loader=_no_dates())  # noqa: S506 (a SafeLoader)
            if not isinstance(document, dict) or not isinstance(document.get("sops"), dict):
                raise ValueError("no sops metadata")
            metadata = document.pop("sops")
            tree = document
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and "sops" in str(exc) else \
            f"not a {fmt} document"
        raise DecryptError(f"sops file {path} cannot be read: {reason}") from None
    return SopsFile(path, tree, metadata)


def _unescape_env(value: str) -> str:
    return value.replace("\\n", "\n")


def _parse_dotenv(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    tree: dict[str, Any] = {}
    flat: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "=" not in line:
            raise ValueError("a dotenv line without '='")
        name, value = line.split("=", 1)
        if name.startswith("sops_"):
            flat[name.removeprefix("sops_")] = _unescape_env(value)
        else:
            tree[name] = _unescape_env(value)
    if not flat:
        raise ValueError("no sops metadata")
    metadata: dict[str, Any] = {}
    for name, value in flat.items():
        parts = _LIST_PART.split(name)
        # "age__list_0__map_enc" -> ["age", "0", "enc"]: metadata["age"][0]["enc"]
        if len(parts) == 1:
            metadata[name] = value
            continue
        node: Any = metadata
        for index in range(0, len(parts) - 1, 2):
            items = node.setdefault(parts[index], [])
            position = int(parts[index + 1])
            while len(items) <= position:
                items.append({})
            node = items[position]
        node[parts[-1]] = value
    return tree, metadata


# -- decryption ------------------------------------------------------------------------------
def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def decrypt_value(token: str, key: bytes, aad: str) -> tuple[str, str]:
    """(plaintext, type) of one ``ENC[…]`` value; ValueError when it is not one or does not
    authenticate."""
    match = _ENC.match(token)
    if match is None:
        raise ValueError("not an encrypted sops value")
    data, iv, tag, kind = match.groups()
    # imported here: every CLI start imports this module, few runs decrypt anything
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        plain = AESGCM(key).decrypt(_b64(iv), _b64(data) + _b64(tag), aad.encode())
    except (binascii.Error, InvalidTag, ValueError):
        raise ValueError("does not authenticate") from None
    return plain.decode("utf-8", "surrogateescape"), kind


def _should_encrypt(path: list[str], metadata: dict[str, Any]) -> bool:
    """Whether sops encrypted the value at ``path`` (its ``*_suffix`` / ``*_regex`` rules)."""
    unencrypted_suffix = metadata.get("unencrypted_suffix")
    encrypted_suffix = metadata.get("encrypted_suffix")
    unencrypted_regex = metadata.get("unencrypted_regex")
    encrypted_regex = metadata.get("encrypted_regex")
    if not any((unencrypted_suffix, encrypted_suffix, unencrypted_regex, encrypted_regex)):
        unencrypted_suffix = DEFAULT_UNENCRYPTED_SUFFIX
    if unencrypted_suffix:
        return not any(p.endswith(unencrypted_suffix) for p in path)
    if encrypted_suffix:
        return any(p.endswith(encrypted_suffix) for p in path)
    if unencrypted_regex:
        return not any(re.search(unencrypted_regex, p) for p in path)
    return any(re.search(str(encrypted_regex), p) for p in path)


def _leaves(node: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, [*path, str(key)])
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, path)
    else:
        yield path, node


def _plain_bytes(value: Any) -> str:
    """What sops hashes for a value it did not encrypt (its ``ToBytes``)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def data_key(parsed: SopsFile, keyring: Keyring | None = None) -> bytes:
    """The file's 32-byte data key, unwrapped by whichever age identity matches."""
    keyring = keyring or age_files.active()
    what = f"sops file {parsed.path}"
    recipients = parsed.described_recipients
    entries = parsed.entries("age")
    if not entries:
        raise DecryptError(f"{what} cannot be decrypted: it has no age recipient (encrypted "
                           f"for {recipients}); only age is supported")
    # the entry of a recipient we hold first: no trial decryption against the others
    entries.sort(key=lambda e: str(e.get("recipient")) not in keyring.public_keys)
    last: DecryptError | None = None
    for entry in entries:
        try:
            key = age_files.decrypt(str(entry.get("enc", "")).encode(), what, recipients,
                                    keyring)
        except DecryptError as exc:
            last = exc
            continue
        if len(key) != 32:
            raise DecryptError(f"{what}: its data key is not 32 bytes")
        return key
    assert last is not None
    raise last


def decrypt(data: bytes, path: str, keyring: Keyring | None = None) -> dict[str, str]:
    """Every value of the sops file ``data`` as a string, by dotted key path (``db.password``;
    a list item by its index, ``hosts.0``), after the MAC matched."""
    parsed = parse(data, path)
    key = data_key(parsed, keyring)
    what = f"sops file {path} (encrypted for {parsed.described_recipients})"
    only_encrypted = parsed.metadata.get("mac_only_encrypted") in (True, "true")
    digest = hashlib.sha512()
    values: dict[str, str] = {}
    for dotted, keys, value in _walk(parsed.tree, [], []):
        try:
            encrypted = _should_encrypt(keys, parsed.metadata)
        except (re.error, TypeError):
            raise DecryptError(f"{what}: its encryption rules (sops.*_regex, sops.*_suffix) "
                               "are invalid") from None
        if encrypted:
            if not isinstance(value, str):
                raise DecryptError(f"{what}: {'.'.join(dotted)} should be encrypted but is "
                                   "not; refused (edited by hand?)")
            try:
                plain, kind = decrypt_value(value, key, ":".join(keys) + ":")
            except ValueError as exc:
                raise DecryptError(f"{what}: value {'.'.join(dotted)} {exc}; refused (edited "
                                   "by hand, or encrypted with another data key)") from None
            hashed = ("True" if plain == "true" else "False") if kind == "bool" else plain
        else:
            plain = hashed = _plain_bytes(value)
        if encrypted or not only_encrypted:
            digest.update(hashed.encode("utf-8", "surrogateescape"))
        values[".".join(dotted)] = plain
    _check_mac(parsed, key, digest.hexdigest().upper(), what)
    return values


def _walk(node: Any, dotted: list[str], keys: list[str]
          ) -> Iterator[tuple[list[str], list[str], Any]]:
    """(dotted key with list indexes, sops path without them, value) of every leaf."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, [*dotted, str(key)], [*keys, str(key)])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, [*dotted, str(index)], keys)
    else:
        yield dotted, keys, node


def _check_mac(parsed: SopsFile, key: bytes, computed: str, what: str) -> None:
    mac = parsed.metadata.get("mac")
    lastmodified = parsed.metadata.get("lastmodified")
    if not isinstance(mac, str) or not isinstance(lastmodified, str):
        raise DecryptError(f"{what}: no MAC (sops.mac, sops.lastmodified); refused")
    try:
        stored, _ = decrypt_value(mac, key, lastmodified)
    except ValueError:
        raise DecryptError(f"{what}: its MAC does not authenticate; refused (edited by "
                           "hand?)") from None
    if not hmac.compare_digest(stored.encode(), computed.encode()):
        raise DecryptError(f"{what}: MAC mismatch, a value was changed without sops; "
                           "refused")
