"""The operator policy: what a config repo may reach from the reconciler host.

Whoever can commit to the config repo decides what the reconciler deploys, but not what the
reconciler itself holds. This module draws that line (docs/security.md):

* **Invariants, whatever the policy.** The daemon's own credentials (``RECONCILER_*``
  variables, libpq/MySQL password variables, the variables and files its ``--webhook-secret``
  and ``--api-token-file`` flags name, its state directory, SSH keys) are never resolvable
  from a secret reference; secret files are read only when their real path (symlinks resolved)
  is a regular file outside ``/proc``, ``/sys`` and ``/dev``; a Coolify URL (it receives the
  token) and a Prometheus URL that carries a password must be https unless loopback or
  allowed by name in the policy.
* **The policy file** (``--policy`` / ``RECONCILER_POLICY``, outside the repo) then allows, per
  environment, which secret sources may be referenced, which endpoints a Target may name and
  whether traffic switching (a command or nginx files on the reconciler host) may run. Without
  a policy file everything the invariants leave is allowed (the demo and the examples work).

A commit that breaks either is refused as a whole when it is loaded (``PolicyError``, FR110);
the secret resolver checks again when it resolves (``SecretRefused``, FR501), so a spec read back
from the database (a rollback) cannot bypass the policy either.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler.errors import ReconcilerError, SecretError, SpecError, SpecProblem
from reconciler.netaddr import url_host
from reconciler.spec import refs
from reconciler.spec.model import Resource, ResourceKey

if TYPE_CHECKING:
    # PyYAML is imported where a policy file is parsed: every command installs a policy, most
    # from no file (docs/performance.md, session 11)
    from yaml.nodes import Node

POLICY_ENV = "RECONCILER_POLICY"
API_VERSION = "fraisier.dev/v1"
ANY_ENVIRONMENT = "*"

# Variables a repo may never name: the daemon's own configuration and database credentials
# (libpq and the MySQL client read these), the SSH agent socket that holds its keys.
DAEMON_ENV_PATTERNS = ("RECONCILER_*", "PGPASSWORD", "PGPASSFILE", "MYSQL_PWD", "SSH_AUTH_SOCK")
# Pseudo file systems: the process environment (/proc/self/environ), memory, devices that
# block or never end.
FORBIDDEN_DIRS = ("/proc", "/sys", "/dev")
MAX_SECRET_FILE = 1 << 20  # a secret is small; a larger file is refused, not read into memory


class PolicyError(SpecError):
    """The commit references something the operator policy or the invariants forbid."""

    code = "FR110"
    hint = ("the operator policy (docs/security.md) forbids what each file:line:col above names; "
            "change the commit, or ask the operator to allow it in the policy file; nothing was "
            "applied")


class PolicyFileError(ReconcilerError):
    """The operator policy file cannot be read or is invalid; the command does not start."""

    code = "FR111"
    hint = ("fix the policy file named by --policy / RECONCILER_POLICY (format: "
            "docs/security.md#the-operator-policy) and start again")


class SecretRefused(SecretError):
    """A secret reference the policy forbids, caught when it was about to be resolved."""

    code = "FR501"
    hint = ("the reference names one of the reconciler's own credentials or a source the "
            "operator policy does not allow for this environment (docs/security.md); use a "
            "variable or a file under an allowed secret directory")


@dataclass(frozen=True)
class Rules:
    """What one environment may reference. ``None``: anything the invariants leave."""

    env: tuple[str, ...] | None = None
    file_dirs: tuple[str, ...] | None = None
    # config-repo files (``PATH_GLOB`` or ``PATH_GLOB#KEY_GLOB``) sops/age references may name
    encrypted_files: tuple[str, ...] | None = None
    ssh_hosts: tuple[str, ...] | None = None
    docker_hosts: tuple[str, ...] | None = None
    coolify_urls: tuple[str, ...] | None = None
    prometheus_urls: tuple[str, ...] | None = None
    local_host: bool = True
    traffic: bool = True


# An environment a policy file does not mention (and that has no "*") may reference nothing.
DENY_ALL = Rules((), (), (), (), (), (), (), local_host=False, traffic=False)


@dataclass(frozen=True)
class Policy:
    source: str | None  # the policy file; None for the built-in default
    rules: Mapping[str, Rules] = field(default_factory=lambda: {ANY_ENVIRONMENT: Rules()})

    def rules_for(self, environment: str) -> Rules:
        found = self.rules.get(environment) or self.rules.get(ANY_ENVIRONMENT)
        return found if found is not None else DENY_ALL

    @property
    def described(self) -> str:
        return f"operator policy {self.source}" if self.source else "built-in default policy"


DEFAULT_POLICY = Policy(None)

# -- process-wide state -----------------------------------------------------------------------
# The policy and the daemon's own credentials are configuration of the process (set once at
# start by the CLI), like logging: every load and every secret resolution consults them.
_active: Policy = DEFAULT_POLICY
_own_env: set[str] = set()
_own_paths: set[str] = set()  # real paths of files and directories


def install(policy: Policy) -> None:
    global _active
    _active = policy


def active() -> Policy:
    return _active


def protect_env(name: str) -> None:
    """A variable holding one of the daemon's own credentials: never resolvable from the repo."""
    _own_env.add(name)


def protect_path(path: str | os.PathLike[str]) -> None:
    """A file or directory of the daemon's own: never readable through a secret reference."""
    _own_paths.add(os.path.realpath(path))


def protect_defaults(state_dir: Path | None) -> None:
    """What every command protects: the state dir (database, clones, caches), SSH keys."""
    if state_dir is not None:
        protect_path(state_dir)
    for name in ("RECONCILER_DB_PASSWORD_FILE", "PGPASSFILE"):
        value = os.environ.get(name)
        if value:
            protect_path(value)
    protect_path(Path.home() / ".ssh")
    protect_path("/etc/ssh")


# -- checks shared by the loader and the resolver ---------------------------------------------
def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def env_problem(name: str, environment: str, policy: Policy | None = None) -> str | None:
    policy = policy or _active
    if name in _own_env or any(fnmatch.fnmatchcase(name, p) for p in DAEMON_ENV_PATTERNS):
        return (f"env:{name} is one of the reconciler's own credentials; a config repo cannot "
                "reference it")
    allowed = policy.rules_for(environment).env
    if allowed is not None and not any(fnmatch.fnmatchcase(name, p) for p in allowed):
        return (f"env:{name} is not allowed in environment {environment!r} by the "
                f"{policy.described} (secrets.env)")
    return None


def file_problem(path: str, environment: str, policy: Policy | None = None) -> str | None:
    """Why ``path`` may not be read as a secret (None: it may). Symlinks are resolved first,
    so a link inside an allowed directory cannot point out of it."""
    policy = policy or _active
    if not os.path.isabs(path):
        return f"file:{path} must be an absolute path"
    real = os.path.realpath(path)
    shown = f"file:{path}" + (f" (-> {real})" if real != os.path.normpath(path) else "")
    if any(_under(real, d) for d in FORBIDDEN_DIRS):
        return f"{shown} is under /proc, /sys or /dev; secret files cannot be read there"
    if any(_under(real, own) for own in _own_paths):
        return (f"{shown} is one of the reconciler's own credentials or state; a config repo "
                "cannot reference it")
    allowed = policy.rules_for(environment).file_dirs
    if allowed is not None and not any(_under(real, os.path.realpath(d)) for d in allowed):
        return (f"{shown} is not under a secret directory allowed in environment "
                f"{environment!r} by the {policy.described} (secrets.fileDirs)")
    return None


def repo_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a file of the config repo (None: it can)."""
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "\\" in path:
        return (f"{path} must be a relative path inside the config repository (no leading /, "
                "no ..)")
    return None


def encrypted_problem(path: str, key: str | None, environment: str,
                      policy: Policy | None = None) -> str | None:
    """Why a ``sops``/``age`` reference to ``path`` (``key`` of a sops file) may not be used in
    ``environment``: a path out of the repository, or one the policy does not list."""
    policy = policy or _active
    shown = f"{path}#{key}" if key is not None else path
    problem = repo_path_problem(path)
    if problem is not None:
        return problem
    allowed = policy.rules_for(environment).encrypted_files
    if allowed is None:
        return None
    for pattern in allowed:
        file_glob, _, key_glob = pattern.partition("#")
        if fnmatch.fnmatchcase(path, file_glob) and (
                not key_glob or key is None or fnmatch.fnmatchcase(key, key_glob)):
            return None
    return (f"encrypted file {shown} is not allowed in environment {environment!r} by the "
            f"{policy.described} (secrets.encryptedFiles)")


def ref_problem(ref: Mapping[str, Any], environment: str,
                policy: Policy | None = None) -> str | None:
    kind = refs.ref_kind(ref)
    if kind in refs.REPO_KINDS:
        path = refs.repo_file(ref)
        if path is None:
            return None  # malformed: the schema / the resolver reports it
        return encrypted_problem(path, refs.sops_key(ref), environment, policy)
    ((kind, where),) = ref.items()
    if not isinstance(where, str) or not where:
        return None  # malformed: the resolver reports it
    if kind == "env":
        return env_problem(where, environment, policy)
    return file_problem(where, environment, policy)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin(url: str) -> str:
    """``scheme://host[:port]`` (lower case, default port dropped): what the policy matches."""
    parts = urlsplit(url)
    host = url_host((parts.hostname or "").lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}"


def url_problem(url: str, allowed: tuple[str, ...] | None, *, field_name: str,
                receives_credentials: bool, environment: str,
                policy: Policy | None = None) -> str | None:
    policy = policy or _active
    parts = urlsplit(url)
    shown = origin(url)
    matching = [p for p in allowed or () if fnmatch.fnmatchcase(shown, p.rstrip("/").lower())]
    if allowed is not None and not matching:
        return (f"{shown} is not an endpoint allowed in environment {environment!r} by the "
                f"{policy.described} (endpoints.{field_name})")
    # plain http only where the operator wrote it out: a pattern like *://host does not count
    http_named = any(p.lower().startswith("http://") for p in matching)
    if (receives_credentials and parts.scheme.lower() != "https"
            and not _is_loopback(parts.hostname or "") and not http_named):
        return (f"{shown} would receive credentials over plain http; use https (plain http "
                f"only to a loopback address or an endpoint the policy lists in "
                f"endpoints.{field_name})")
    return None


def _host_problem(value: str, allowed: tuple[str, ...] | None, field_name: str,
                  environment: str, policy: Policy) -> str | None:
    if allowed is None or any(fnmatch.fnmatchcase(value, p) for p in allowed):
        return None
    return (f"{value} is not an endpoint allowed in environment {environment!r} by the "
            f"{policy.described} (endpoints.{field_name})")


Violation = tuple[ResourceKey, tuple[str | int, ...], str]


# What the policy judges in a document, as plain data (so the spec cache can keep it beside the
# document, spec/facts.py): a pure function of the document, while its judgement depends on the
# policy, the daemon's own credentials and, for secret files, the file system at the time.
#   ("ref", "env" | "file", where)            a secret reference on the reconciler host
#   ("encrypted", path, sops key | None)       a sops/age reference into the config repo
#   ("url", field_name, url, credentials)      an endpoint URL (coolifyUrls, prometheusUrls)
#   ("host", field_name, host)                 an endpoint host (sshHosts, dockerHosts)
#   ("local",)                                 a bare_metal Target on the reconciler's host
#   ("traffic",)                               traffic switching on the reconciler's host
Check = tuple[Any, ...]
Fact = tuple[tuple[str | int, ...], Check]  # (path in the spec, check)

_ALLOWED_BY_FIELD = {"coolifyUrls": "coolify_urls", "prometheusUrls": "prometheus_urls",
                     "sshHosts": "ssh_hosts", "dockerHosts": "docker_hosts"}


def facts(kind: str, spec: Mapping[str, Any]) -> list[Fact]:
    """Everything of one document the policy judges, in the order violations are reported."""
    out: list[Fact] = []
    for path, ref in refs.spec_refs(spec):
        _add_ref(out, path, ref)
    if kind == "Target":
        _target_facts(spec, out)
    strategy = spec.get("strategy")
    if isinstance(strategy, Mapping):
        if "traffic" in strategy:
            out.append((("strategy", "traffic"), ("traffic",)))
        prometheus = strategy.get("prometheus")
        if isinstance(prometheus, Mapping) and isinstance(prometheus.get("url"), str):
            url = prometheus["url"]
            parts = urlsplit(url)
            out.append((("strategy", "prometheus", "url"),
                        ("url", "prometheusUrls", url, bool(parts.username or parts.password))))
    return out


def _add_ref(out: list[Fact], path: tuple[str | int, ...], ref: Mapping[str, Any]) -> None:
    """The check of one reference (as ``ref_problem`` judges it); none when malformed (the
    schema or the resolver reports it)."""
    if len(ref) != 1:
        return
    if refs.ref_kind(ref) in refs.REPO_KINDS:
        repo_path = refs.repo_file(ref)
        if repo_path is not None:
            out.append((path, ("encrypted", repo_path, refs.sops_key(ref))))
        return
    ((kind, where),) = ref.items()
    if isinstance(where, str) and where:
        out.append((path, ("ref", str(kind), where)))


def _target_facts(spec: Mapping[str, Any], out: list[Fact]) -> None:
    provider = spec.get("provider")
    if provider == "coolify":
        if isinstance(spec.get("token"), Mapping):
            _add_ref(out, ("token",), spec["token"])
        if isinstance(spec.get("url"), str):
            out.append((("url",), ("url", "coolifyUrls", spec["url"], True)))
    elif provider == "bare_metal":
        if spec.get("transport", "local") == "local":
            out.append((("transport",), ("local",)))
        for index, host in enumerate(spec.get("hosts") or []):
            if isinstance(host, Mapping) and isinstance(host.get("address"), str):
                out.append((("hosts", index, "address"), ("host", "sshHosts", host["address"])))
    elif provider == "compose":
        found = spec.get("docker")
        docker: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        host = str(docker.get("host") or "unix:///var/run/docker.sock")
        out.append((("docker", "host") if "host" in docker else ("provider",),
                    ("host", "dockerHosts", host)))


def judge(check: Check, env: str, policy: Policy | None = None) -> str | None:
    """Why ``check`` (one of ``facts``) is forbidden in environment ``env`` (None: allowed)."""
    policy = policy or _active
    what = check[0]
    if what == "ref":
        if check[1] == "env":
            return env_problem(check[2], env, policy)
        return file_problem(check[2], env, policy)
    if what == "encrypted":
        return encrypted_problem(check[1], check[2], env, policy)
    rules = policy.rules_for(env)
    if what == "url":
        _, field_name, url, credentials = check
        return url_problem(url, getattr(rules, _ALLOWED_BY_FIELD[field_name]),
                           field_name=field_name, receives_credentials=credentials,
                           environment=env, policy=policy)
    if what == "host":
        _, field_name, host = check
        return _host_problem(host, getattr(rules, _ALLOWED_BY_FIELD[field_name]), field_name,
                             env, policy)
    if what == "local":
        return None if rules.local_host else (
            f"the local host (the reconciler's own) is not allowed in environment {env!r} by "
            f"the {policy.described} (endpoints.localHost)")
    if what == "traffic":
        return None if rules.traffic else (
            f"traffic switching runs on the reconciler host and is not allowed in environment "
            f"{env!r} by the {policy.described} (traffic)")
    raise ValueError(f"unknown policy check {what!r}")


def all_allowed(checks: Iterable[tuple[str, Check]], policy: Policy | None = None) -> bool:
    """Whether no (environment, check) of ``checks`` is forbidden: judging the distinct checks a
    fleet names (a few dozen, however many documents name them) instead of every document."""
    policy = policy or _active
    return not any(judge(check, env, policy) for env, check in checks)


def violations(resources: Iterable[Resource], policy: Policy | None = None) -> list[Violation]:
    """Everything in ``resources`` the policy (and the invariants) forbid, with the spec path."""
    policy = policy or _active
    out: list[Violation] = []
    # A fleet names the same few references thousands of times; a file check costs syscalls
    # (realpath), so each (check, environment) is judged once per call.
    judged: dict[tuple[Check, str], str | None] = {}
    for resource in resources:
        env = resource.environment
        for path, check in facts(resource.kind, resource.spec):
            memo = (check, env)
            if memo not in judged:
                judged[memo] = judge(check, env, policy)
            message = judged[memo]
            if message:
                out.append((resource.key, ("spec", *path), f"{dotted_path(path)}: {message}"))
    return out


def dotted_path(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                   for i, p in enumerate(path))


# -- the policy file --------------------------------------------------------------------------
_RULE_LISTS = {
    ("secrets", "env"): "env",
    ("secrets", "fileDirs"): "file_dirs",
    ("secrets", "encryptedFiles"): "encrypted_files",
    ("endpoints", "sshHosts"): "ssh_hosts",
    ("endpoints", "dockerHosts"): "docker_hosts",
    ("endpoints", "coolifyUrls"): "coolify_urls",
    ("endpoints", "prometheusUrls"): "prometheus_urls",
}
_RULE_FLAGS = {("endpoints", "localHost"): "local_host", ("traffic",): "traffic"}


class _Located:
    """Collects problems of the policy file at its YAML nodes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[SpecProblem] = []

    def add(self, node: Node, message: str) -> None:
        mark = node.start_mark
        self.problems.append(SpecProblem(self.path, mark.line + 1, mark.column + 1, message))


def _mapping(node: Node, where: str, located: _Located,
             known: Iterable[str]) -> dict[str, tuple[Node, Node]]:
    from yaml.nodes import MappingNode, ScalarNode

    if not isinstance(node, MappingNode):
        located.add(node, f"{where}: expected a mapping")
        return {}
    out: dict[str, tuple[Node, Node]] = {}
    allowed = set(known)
    for key, value in node.value:
        name = key.value if isinstance(key, ScalarNode) else None
        if name not in allowed:
            located.add(key, f"{where}: unknown field {name!r} (expected one of "
                             f"{', '.join(sorted(allowed))})")
            continue
        assert name is not None
        out[name] = (key, value)
    return out


def _scalar(node: Node, where: str, located: _Located) -> str | None:
    from yaml.nodes import ScalarNode

    if not isinstance(node, ScalarNode) or not node.value or node.tag != "tag:yaml.org,2002:str":
        located.add(node, f"{where}: expected a non-empty string")
        return None
    return str(node.value)


def _rules(node: Node, environment: str, located: _Located) -> Rules:
    from yaml.nodes import SequenceNode

    where = f"spec.environments.{environment}"
    top = _mapping(node, where, located, ("secrets", "endpoints", "traffic"))
    lists: dict[str, tuple[str, ...]] = {}
    flags: dict[str, bool] = {"local_host": False, "traffic": False}
    sections = {"secrets": ("env", "fileDirs", "encryptedFiles"),
                "endpoints": ("sshHosts", "dockerHosts", "coolifyUrls", "prometheusUrls",
                              "localHost")}
    for section, known in sections.items():
        if section not in top:
            continue
        for name, (_, value) in _mapping(top[section][1], f"{where}.{section}", located,
                                         known).items():
            here = f"{where}.{section}.{name}"
            if (section, name) in _RULE_FLAGS:
                flags[_RULE_FLAGS[(section, name)]] = _flag(value, here, located)
                continue
            if not isinstance(value, SequenceNode):
                located.add(value, f"{here}: expected a list of strings")
                continue
            items = [_scalar(item, here, located) for item in value.value]
            entries = tuple(i for i in items if i is not None)
            if name == "fileDirs":
                for item, text in zip(value.value, items, strict=True):
                    if text is not None and not os.path.isabs(text):
                        located.add(item, f"{here}: {text!r} must be an absolute directory")
            lists[_RULE_LISTS[(section, name)]] = entries
    if "traffic" in top:
        flags["traffic"] = _flag(top["traffic"][1], f"{where}.traffic", located)
    return Rules(env=lists.get("env", ()), file_dirs=lists.get("file_dirs", ()),
                 encrypted_files=lists.get("encrypted_files", ()),
                 ssh_hosts=lists.get("ssh_hosts", ()), docker_hosts=lists.get("docker_hosts", ()),
                 coolify_urls=lists.get("coolify_urls", ()),
                 prometheus_urls=lists.get("prometheus_urls", ()), **flags)


def _flag(node: Node, where: str, located: _Located) -> bool:
    import yaml
    from yaml.nodes import ScalarNode

    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return bool(yaml.safe_load(node.value))
    located.add(node, f"{where}: expected true or false")
    return False


def parse_policy(text: str, path: str) -> Policy:
    """A policy from its YAML text; every problem located as ``path:line:col``."""
    import yaml
    from yaml.nodes import MappingNode, ScalarNode

    located = _Located(path)
    try:
        root = yaml.compose(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PolicyFileError(f"{path}:{line}:{col}: invalid YAML: "
                              f"{getattr(exc, 'problem', None) or 'cannot parse'}") from None
    if root is None:
        raise PolicyFileError(f"{path}:1:1: the policy file is empty")
    top = _mapping(root, "policy", located, ("apiVersion", "kind", "metadata", "spec"))
    for name, expected in (("apiVersion", API_VERSION), ("kind", "Policy")):
        if name not in top:
            located.add(root, f"{name}: required ({expected})")
        elif not (isinstance(top[name][1], ScalarNode) and top[name][1].value == expected):
            located.add(top[name][1], f"{name}: must be {expected}")
    if "metadata" in top:
        _mapping(top["metadata"][1], "metadata", located, ("name", "labels"))
    rules: dict[str, Rules] = {}
    if "spec" not in top:
        located.add(root, "spec: required (spec.environments)")
    else:
        spec = _mapping(top["spec"][1], "spec", located, ("environments",))
        if "environments" not in spec:
            located.add(top["spec"][1], "spec.environments: required")
        else:
            node = spec["environments"][1]
            if not isinstance(node, MappingNode) or not node.value:
                located.add(node, "spec.environments: expected a mapping of environment "
                                  "names (or \"*\") to rules")
            else:
                for key, value in node.value:
                    env_name = _scalar(key, "spec.environments", located)
                    if env_name is not None:
                        rules[env_name] = _rules(value, env_name, located)
    if located.problems:
        raise PolicyFileError("\n".join(str(p) for p in sorted(set(located.problems))))
    return Policy(path, rules)


def load_policy(path: str | None) -> Policy:
    """The policy file at ``path`` (None: the built-in default)."""
    if path is None or path == "":
        return DEFAULT_POLICY
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8"
        raise PolicyFileError(f"{path}: cannot read the policy file: {reason}") from None
    return parse_policy(text, path)
