"""Credentials out of every message: the one redaction of URLs, DSNs and known secret values.

``redact(text, urls=(...))`` replaces with ``***``, wherever they appear in ``text``:

- the password of a URL's userinfo (``scheme://user:PASSWORD@host``; for http(s) URLs the whole
  userinfo, where tokens also travel as the user name: ``https://TOKEN@host``), also in URLs
  that do not parse (bad percent escapes, brackets, an ``@`` inside the password);
- credential query parameters (``?password=``, ``sslpassword``, ``token``, ``api_key``, …);
- credential ``key=value`` pairs of a libpq-style DSN (``host=db password='s e c' …``);
- every credential of the URLs/DSNs named in ``urls``, raw and percent-decoded, wherever it
  appears: a driver error that echoes only the password token (``invalid percent-encoded
  token: "pa%zz…"``) is covered too;
- every literal value in ``secrets``.

Used for database, git remote, artifact, Coolify and Prometheus URLs in errors and logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"

# Parameter names whose value is a credential (query strings and key=value DSNs).
_SECRET_KEYS = (
    "password", "passwd", "pwd", "pass", "sslpassword", "token", "access_token", "auth_token",
    "private_token", "api_key", "apikey", "api_token", "secret", "client_secret", "key",
    "signature", "sig",
)
_KEYS = "|".join(sorted(_SECRET_KEYS, key=len, reverse=True))
# scheme://userinfo@ — userinfo runs to the last "@" before a "/", whitespace or a quote, so a
# password holding "@", "?", "#" or "[" (which urlsplit refuses or misreads) is still covered.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^\s/'\"<>]*)@")
_QUERY = re.compile(rf"(?P<lead>[?&;](?:{_KEYS})=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE)
# libpq key=value: unquoted values end at whitespace; quoted ones take \' and \\ escapes.
_DSN = re.compile(
    rf"(?P<lead>(?<![\w.?&;/\-])(?:{_KEYS})\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*'?|(?:\\.|[^\s'\\])+)",
    re.IGNORECASE,
)
_HIDE_WHOLE_USERINFO = ("http", "https", "ftp", "ftps")


def _userinfo(match: re.Match[str]) -> str:
    scheme, info = match.group("scheme"), match.group("info")
    base = scheme[:-3].lower().rsplit("+", 1)[-1]
    if base in _HIDE_WHOLE_USERINFO:
        return f"{scheme}{MASK}@"
    user, colon, _ = info.partition(":")
    return f"{scheme}{user}:{MASK}@" if colon else match.group(0)


def _credentials(url: str) -> set[str]:
    """The credential values inside one URL or DSN, raw and decoded."""
    found: set[str] = set()
    for match in _USERINFO.finditer(url):
        scheme, info = match.group("scheme"), match.group("info")
        user, colon, password = info.partition(":")
        if colon:
            found.add(password)
        elif scheme[:-3].lower().rsplit("+", 1)[-1] in _HIDE_WHOLE_USERINFO:
            found.add(user)  # https://TOKEN@host
    for match in _QUERY.finditer(url):
        found.add(match.group("value"))
    for match in _DSN.finditer(url):
        value = match.group("value")
        if value.startswith("'"):
            value = value[1:].removesuffix("'")
            found.add(re.sub(r"\\(.)", r"\1", value))
        found.add(value)
    decoded = {unquote(v) for v in found} | {unquote_plus(v) for v in found}
    return {v for v in found | decoded if v and v != MASK}


def redact(text: str, *, urls: Iterable[str] = (), secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential replaced by ``***`` (see the module docstring)."""
    known: set[str] = {s for s in secrets if s}
    for url in urls:
        known |= _credentials(url)
    # longest first, so a secret containing another is replaced whole
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _USERINFO.sub(_userinfo, text)
    text = _QUERY.sub(lambda m: m.group("lead") + MASK, text)
    return _DSN.sub(lambda m: m.group("lead").rstrip() + MASK, text)


_CREDENTIAL_NAME = re.compile(
    r"(^|[_\-.])(password|passwd|pwd|secret|token|key|api_?key|private_?key|credentials?)($|[_\-.])",
    re.IGNORECASE)


def is_credential_name(name: str) -> bool:
    """Whether a field or variable named ``name`` holds a credential by its name
    (``DB_PASSWORD``, ``apiToken``, ``client-secret``): its literal value is not shown
    where documents are rendered for people (``diff -o markdown``)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)  # apiToken -> api_Token
    return bool(_CREDENTIAL_NAME.search(snake))
