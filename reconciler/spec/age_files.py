"""age identities the operator gives the reconciler, and whole age-encrypted files.

The identities (``AGE-SECRET-KEY-1…`` lines, the format ``age-keygen`` writes) come from the
operator, never from the config repo: ``--age-identity FILE`` (repeatable) / the
``RECONCILER_AGE_IDENTITY`` variable (files separated by ``:``), then the variables sops itself
reads, ``SOPS_AGE_KEY_FILE`` (a file) and ``SOPS_AGE_KEY`` (the keys themselves). The files and
variables become the daemon's own credentials: no secret reference can name them.

Decryption is pyrage's (the maintained Rust ``age`` crate); this module only parses the header
to say, when a file cannot be decrypted, for how many recipients it was written.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconcilerError, SecretError

if TYPE_CHECKING:  # imported where used: every CLI start imports this module, few decrypt
    import pyrage

IDENTITY_ENV = "RECONCILER_AGE_IDENTITY"
SOPS_KEY_FILE_ENV = "SOPS_AGE_KEY_FILE"
SOPS_KEY_ENV = "SOPS_AGE_KEY"
_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
_HEADER_V1 = b"age-encryption.org/v1\n"


class IdentityFileError(ReconcilerError):
    """An age identity file the operator named cannot be used; the command does not start."""

    code = "FR112"
    hint = ("give --age-identity / RECONCILER_AGE_IDENTITY / SOPS_AGE_KEY_FILE a file written "
            "by `age-keygen` (lines AGE-SECRET-KEY-1…, # comments); see docs/sops.md")


class DecryptError(SecretError):
    """An encrypted file of the config repo cannot be decrypted or fails its integrity check."""

    code = "FR502"
    hint = ("the file must be encrypted (sops / age) for a recipient whose identity the "
            "reconciler holds (--age-identity), and must not be edited by hand; re-encrypt it "
            "with `sops updatekeys` / `sops -e` (docs/sops.md); nothing was applied")


@dataclass(frozen=True)
class Keyring:
    """The age identities the reconciler may decrypt with."""

    identities: tuple[pyrage.x25519.Identity, ...] = ()
    public_keys: tuple[str, ...] = ()  # the recipients those identities answer for
    sources: tuple[str, ...] = ()  # where they came from (files, variables): for messages
    # False for `validate` without identities: encrypted files are checked for shape only
    required: bool = True
    # the environments this process deploys (-e); empty: all. A staging reconciler holds the
    # staging key only: production's files are not its to decrypt.
    environments: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never the keys
        return f"Keyring(public_keys={self.public_keys!r}, sources={self.sources!r})"

    @property
    def described(self) -> str:
        if not self.identities:
            return ("the reconciler holds no age identity (--age-identity / "
                    f"{IDENTITY_ENV} / {SOPS_KEY_FILE_ENV})")
        return f"the reconciler holds identities for {', '.join(self.public_keys)}"


def parse_identities(text: str, source: str) -> list[pyrage.x25519.Identity]:
    """Identities of an ``age-keygen`` file; an error names the file and line, never the key."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(_pyrage().x25519.Identity.from_str(line))
        except Exception:  # pyrage's error repeats the input: it must not reach the message
            raise IdentityFileError(f"{source}:{number}: not an age identity (expected "
                                    "AGE-SECRET-KEY-1…)") from None
    if not found:
        raise IdentityFileError(f"{source}: no age identity in it")
    return found


def keyring_from(paths: Iterable[str], environ: Mapping[str, str] | None = None,
                 required: bool = True, environments: Iterable[str] = ()) -> Keyring:
    """The keyring of ``paths`` (the flag), then the variables (see the module text)."""
    env = os.environ if environ is None else environ
    files = [p for p in paths if p]
    files += [p for p in env.get(IDENTITY_ENV, "").split(os.pathsep) if p]
    if env.get(SOPS_KEY_FILE_ENV):
        files.append(env[SOPS_KEY_FILE_ENV])
    identities: list[pyrage.x25519.Identity] = []
    sources: list[str] = []
    for path in dict.fromkeys(files):
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
            raise IdentityFileError(f"{path}: cannot read the age identity file: "
                                    f"{reason}") from None
        identities += parse_identities(text, path)
        sources.append(path)
    if env.get(SOPS_KEY_ENV):
        identities += parse_identities(env[SOPS_KEY_ENV], f"${SOPS_KEY_ENV}")
        sources.append(f"${SOPS_KEY_ENV}")
    by_public = {str(i.to_public()): i for i in identities}  # one entry per key
    return Keyring(tuple(by_public.values()), tuple(by_public), tuple(sources), required,
                   frozenset(environments))


# -- process-wide state, like the policy: set once by the CLI ----------------------------------
_active = Keyring(required=False)


def install(keyring: Keyring) -> None:
    global _active
    _active = keyring


def active() -> Keyring:
    return _active


# -- age files ---------------------------------------------------------------------------------
def dearmor(data: bytes) -> bytes:
    """The binary age file of an ASCII-armored one (unchanged when not armored)."""
    text = data.strip()
    if not text.startswith(_ARMOR_BEGIN):
        return data
    if not text.endswith(_ARMOR_END):
        raise ValueError("armor without its END line")
    body = text[len(_ARMOR_BEGIN):-len(_ARMOR_END)]
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ValueError("armor that is not base64") from None


def stanza_types(data: bytes) -> list[str]:
    """The recipient stanza types of an age file's header (``X25519``, ``scrypt``, …): age
    does not record the recipients themselves, only their kind. Empty when not an age file."""
    try:
        binary = dearmor(data)
    except ValueError:
        return []
    if not binary.startswith(_HEADER_V1):
        return []
    types = []
    for line in binary[len(_HEADER_V1):].split(b"\n"):
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            parts = line[3:].split(b" ")
            types.append(parts[0].decode("ascii", "replace"))
    return types


def decrypt(data: bytes, what: str, recipients: str, keyring: Keyring | None = None) -> bytes:
    """The plaintext of the age file ``data``; ``what`` names it and ``recipients`` says who it
    was written for, in the error."""
    keyring = keyring or _active
    if not keyring.identities:
        raise DecryptError(f"{what} cannot be decrypted: {keyring.described}; it was encrypted "
                           f"for {recipients}")
    try:
        return bytes(_pyrage().decrypt(dearmor(data), list(keyring.identities)))
    except (ValueError, _pyrage().DecryptError) as exc:
        reason = ("no identity matches" if not isinstance(exc, ValueError) and stanza_types(data)
                  else "not an age file")
        raise DecryptError(f"{what} cannot be decrypted ({reason}): it was encrypted for "
                           f"{recipients}; {keyring.described}") from None


def describe_stanzas(data: bytes) -> str:
    types = stanza_types(data)
    if not types:
        return "no age recipient (not an age file)"
    counts: dict[str, int] = {}
    for kind in types:
        counts[kind] = counts.get(kind, 0) + 1
    listed = ", ".join(f"{n} {k} recipient{'s' if n > 1 else ''}" for k, n in counts.items())
    return f"{listed} (age files do not record which)"


def decrypt_file(data: bytes, path: str, keyring: Keyring | None = None) -> bytes:
    """A whole age-encrypted file of the config repo (``{age: {file: PATH}}``)."""
    return decrypt(data, f"age file {path}", describe_stanzas(data), keyring)


def _pyrage() -> Any:
    import pyrage

    return pyrage
