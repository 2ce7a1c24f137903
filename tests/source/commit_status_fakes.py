"""Fake GitHub, GitLab, Gitea and Bitbucket Cloud commit-status APIs (aiohttp, 127.0.0.1, random
port, in a thread of their own so CLI subprocesses can talk to them).

Every request is checked against the host's published API description, as excerpted under
tests/contracts/commit_status/ (README.md there says from where): method and path template,
path parameters, the auth header scheme, the content type, and the JSON body against the
operation's schema (jsonschema, top-level fields the schema does not name refused too). A
request the description does not allow is answered 422 and recorded in ``violations``; tests
assert there are none. Accepted statuses are kept per (sha, context) in order.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from aiohttp import web

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts" / "commit_status"


def _fragment(name: str) -> dict[str, Any]:
    """A byte-exact excerpt (``"key": {...}`` lines) as the object it is a member of."""
    return dict(json.loads("{" + (CONTRACTS / name).read_text() + "}"))


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` as JSON Schema (``type: [T, "null"]``)."""
    if isinstance(node, dict):
        out = {k: _nullable(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True and isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


@dataclass
class Contract:
    host: str
    method: str
    template: str  # with {name} path parameters
    auth: dict[str, str]  # header -> regex of an accepted value (any one header suffices)
    body: dict[str, Any]  # JSON Schema of the body
    states: dict[str, str]  # the host's state word -> pending | success | failure | other
    context_field: str  # where the status's context travels in the body
    success: int = 201  # the status the description answers an accepted request with

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "([^/]+)",
                                       re.escape(self.template)) + "$")


def github_contract() -> Contract:
    item = _fragment("github.repos-create-commit-status.json.fragment")
    ((template, ops),) = item.items()
    op = ops["post"]
    body = _nullable(op["requestBody"]["content"]["application/json"]["schema"])
    # docs.github.com/rest/authentication: "Authorization: Bearer TOKEN" (or "token TOKEN")
    return Contract("github", "POST", template, {"Authorization": r"^(Bearer|token) \S+$"},
                    body, {"pending": "pending", "success": "success", "failure": "failure",
                           "error": "failure"}, "context")


def gitea_contract() -> Contract:
    op = _fragment("gitea.repoCreateStatus.json.fragment")["post"]
    definitions = _fragment("gitea.definitions.json.fragment")
    state = definitions["CommitStatusState"]
    # The swagger declares the state a plain string and lists its values in the description.
    state["enum"] = re.findall(r'\\?"(\w+)\\?"', state["description"])
    body_param = next(p for p in op["parameters"] if p["in"] == "body")
    body = {**body_param["schema"], "definitions": definitions}
    # basePath /api/v1; securityDefinitions AuthorizationHeaderToken: "token <t>" (and Bearer)
    return Contract("gitea", "POST", "/api/v1/repos/{owner}/{repo}/statuses/{sha}",
                    {"Authorization": r"^(token|Bearer) \S+$"}, body,
                    {"pending": "pending", "success": "success", "failure": "failure",
                     "error": "failure", "warning": "other"}, "context")


def _transcribed(name: str, host: str, states: dict[str, str], context: str) -> Contract:
    doc = json.loads((CONTRACTS / name).read_text())
    return Contract(host, doc["method"], doc["path"], doc["auth_headers"], doc["body"], states,
                    context, success=doc["success"])


def _yaml_fragment(name: str) -> dict[str, Any]:
    """A byte-exact YAML excerpt (members of a mapping, indented as upstream)."""
    return dict(yaml.safe_load(textwrap.dedent((CONTRACTS / name).read_text())))


def gitlab_contract() -> Contract:
    item = _yaml_fragment("gitlab.postApiV4ProjectsIdStatusesSha.yaml.fragment")
    ((template, ops),) = item.items()
    op = ops["post"]
    definitions = _yaml_fragment("gitlab.definitions.yaml.fragment")
    body_param = next(p for p in op["parameters"] if p["in"] == "body")
    body = {**body_param["schema"], "definitions": definitions}
    # docs.gitlab.com/api/rest/authentication: PRIVATE-TOKEN, or Authorization: Bearer
    return Contract("gitlab", "POST", template,
                    {"PRIVATE-TOKEN": r"^\S+$", "Authorization": r"^Bearer \S+$"}, body,
                    {"pending": "pending", "running": "pending", "success": "success",
                     "failed": "failure", "canceled": "other", "skipped": "other"}, "name",
                    success=200)


def bitbucket_contract() -> Contract:
    return _transcribed("bitbucket.create-commit-build-status.json", "bitbucket",
                        {"INPROGRESS": "pending", "SUCCESSFUL": "success", "FAILED": "failure",
                         "STOPPED": "other"}, "key")


CONTRACT_OF = {"github": github_contract, "gitlab": gitlab_contract, "gitea": gitea_contract,
               "bitbucket": bitbucket_contract}


def check(contract: Contract, method: str, path: str, headers: dict[str, str],
          raw: bytes) -> tuple[dict[str, str], Any]:
    """(path parameters, body) of an allowed request; AssertionError naming every problem."""
    problems: list[str] = []
    match = contract.regex.match(path)
    if method != contract.method or match is None:
        raise AssertionError(f"{method} {path}: not {contract.method} {contract.template}")
    names = re.findall(r"\{([^/]+?)\}", contract.template)
    params = dict(zip(names, match.groups(), strict=True))
    if not any(re.match(rx, headers.get(h, "")) for h, rx in contract.auth.items()):
        problems.append(f"no accepted auth header ({', '.join(contract.auth)})")
    if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
        problems.append("Content-Type is not application/json")
    try:
        body = json.loads(raw)
    except ValueError:
        raise AssertionError(f"{path}: body is not JSON") from None
    validator = jsonschema.Draft202012Validator(copy.deepcopy(contract.body))
    problems += [f"body {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                 for e in validator.iter_errors(body)]
    schema = contract.body
    if "$ref" in schema:
        schema = schema["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(body, dict):
        unknown = sorted(set(body) - set(schema.get("properties", {})))
        if unknown:
            problems.append(f"body fields not in the description: {', '.join(unknown)}")
    if problems:
        raise AssertionError(f"{method} {path}: " + "; ".join(problems))
    return params, body


@dataclass
class Transition:
    state: str  # pending | success | failure | other (the host's word mapped)
    raw_state: str
    description: str
    url: str | None


@dataclass
class FakeHost:
    host: str
    contract: Contract
    token: str
    statuses: dict[tuple[str, str], list[Transition]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    faults: list[int] = field(default_factory=list)  # statuses to answer before accepting
    hang: float = 0.0  # seconds to wait before answering
    requests: int = 0
    port: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def repo(self) -> str:
        return "group/sub/project" if self.host == "gitlab" else "acme/config"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()
        if self.hang:
            await asyncio.sleep(self.hang)
        try:
            params, body = check(self.contract, request.method, request.raw_path.split("?")[0],
                                 dict(request.headers), raw)
        except AssertionError as exc:
            self.violations.append(str(exc))
            return web.json_response({"message": f"API description violation: {exc}"},
                                     status=422)
        if self.token not in " ".join(request.headers.values()):
            return web.json_response({"message": "Bad credentials"}, status=401)
        if self.faults:
            return web.json_response({"message": "injected"}, status=self.faults.pop(0))
        sha = params.get("sha") or params.get("commit") or ""
        context = str(body.get(self.contract.context_field, "default"))
        raw_state = str(body["state"])
        self.statuses.setdefault((sha, context), []).append(Transition(
            self.contract.states[raw_state], raw_state, str(body.get("description") or ""),
            body.get("target_url") or body.get("url")))
        return web.json_response({"id": self.requests, "state": raw_state, "context": context},
                                 status=self.contract.success)

    def transitions(self, sha: str, context: str) -> list[tuple[str, str]]:
        return [(t.state, t.description) for t in self.statuses.get((sha, context), [])]


class FakeHosts:
    """The four fakes, served from one background thread and event loop."""

    def __init__(self) -> None:
        self.hosts = {name: FakeHost(name, make(), f"tok-{name}-s3cr3t")
                      for name, make in CONTRACT_OF.items()}
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeHosts:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        for fake in self.hosts.values():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", fake.handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)  # a hung handler
            await runner.setup()
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            fake.port = int(sock.getsockname()[1])
            await web.SockSite(runner, sock).start()
            self._runners.append(runner)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            # handlers still asleep in ``hang`` end here, not as "Task was destroyed" noise
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def flags(self) -> list[str]:
        """``--commit-status`` values for all four, tokens from env (see :meth:`env`)."""
        return [f"{name}:{fake.repo()},token=env:FAKE_{name.upper()}_TOKEN,api={fake.api_url}"
                for name, fake in self.hosts.items()]

    def env(self) -> dict[str, str]:
        return {f"FAKE_{name.upper()}_TOKEN": fake.token for name, fake in self.hosts.items()}
