"""A fake Coolify 4.3 API server (aiohttp, 127.0.0.1, random port) for contract tests.

It keeps a small but realistic state: applications (git or docker-image), their envs, a
deployment queue that moves queued -> in_progress -> finished | failed on a clock (with a
per-server concurrency limit and Coolify's duplicate-deploy rule), per-token abilities, the
API-disabled switch, Coolify's request validation (the Laravel rules of its controllers),
images kept per commit and the build-skip rule, rollback, 429 injection, dropped
connections, and 405 for GET on action routes.

Every request and every response goes through the OpenAPI contract (contract.py). A request the
spec does not allow is answered 422 "OpenAPI contract violation: …" and recorded in
``violations``; the test fixture fails any test that leaves a violation behind.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .contract import ContractViolation, OpenAPIContract

API_PREFIX = "/api/v1"

# Coolify 4.3.11's request validation (Laravel rules in its API controllers), modelled so a
# request the OpenAPI shapes allow but Coolify refuses is refused here too.
# bootstrap/helpers/api.php sharedDataApplications(): 'git_commit_sha' => ['string', 'regex:…']
GIT_REF = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._\-/]*$")
# app/Support/ValidationPatterns.php DOCKER_IMAGE_TAG_PATTERN
DOCKER_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# ApplicationsController::update_by_uuid $allowedFields (the ones a Fraisier test may send)
APP_UPDATE_FIELDS = frozenset({
    "name", "description", "is_static", "is_spa", "is_auto_deploy_enabled",
    "is_force_https_enabled", "is_preview_deployments_enabled", "domains", "git_repository",
    "git_branch", "git_commit_sha", "docker_registry_image_name", "docker_registry_image_tag",
    "build_pack", "instant_deploy", "ports_exposes", "health_check_enabled", "health_check_path",
})
ENV_BULK_FIELDS = ("key", "value", "is_preview", "is_literal", "is_multiline", "is_shown_once",
                   "is_runtime", "is_buildtime", "comment")


def _attribute(field_name: str) -> str:
    return field_name.replace("_", " ")


def laravel_errors(
    payload: dict[str, Any], rules: dict[str, tuple[str, ...]]
) -> dict[str, list[str]]:
    """Laravel's messages for the rule kinds Coolify uses on these routes."""
    errors: dict[str, list[str]] = {}
    for name, kinds in rules.items():
        if name not in payload:
            if "required" in kinds:
                errors[name] = [f"The {_attribute(name)} field is required."]
            continue
        value = payload[name]
        if value is None and "nullable" in kinds:
            continue
        for kind in kinds:
            problem = None
            if kind == "string" and not isinstance(value, str):
                problem = f"The {_attribute(name)} field must be a string."
            elif kind == "boolean" and value not in (True, False, 0, 1, "0", "1"):
                problem = f"The {_attribute(name)} field must be true or false."
            elif kind.startswith("max:") and isinstance(value, str) and len(value) > int(kind[4:]):
                problem = (f"The {_attribute(name)} field must not be greater than {kind[4:]} "
                           "characters.")
            elif kind == "git_ref" and isinstance(value, str) and not GIT_REF.match(value):
                problem = f"The {_attribute(name)} field format is invalid."
            elif (kind == "docker_tag" and isinstance(value, str)
                  and not DOCKER_IMAGE_TAG.match(value)):
                problem = f"The {_attribute(name)} field format is invalid."
            if problem:
                errors[name] = [problem]
                break
    return errors


APP_UPDATE_RULES: dict[str, tuple[str, ...]] = {
    "name": ("string", "max:255"),
    "git_branch": ("string",),
    "git_commit_sha": ("string", "git_ref"),
    "docker_registry_image_name": ("nullable", "string"),
    "docker_registry_image_tag": ("nullable", "string", "max:128", "docker_tag"),
    "is_auto_deploy_enabled": ("boolean",),
    "instant_deploy": ("boolean",),
}
ENV_BULK_RULES: dict[str, tuple[str, ...]] = {
    "key": ("required", "string"),
    "value": ("nullable", "string"),
    "is_preview": ("boolean",), "is_literal": ("boolean",), "is_multiline": ("boolean",),
    "is_shown_once": ("boolean",), "is_runtime": ("boolean",), "is_buildtime": ("boolean",),
    "comment": ("nullable", "string", "max:256"),
}


def validation_failed(errors: dict[str, list[str]]) -> web.Response:
    return web.json_response({"message": "Validation failed.", "errors": errors}, status=422)
ACTIVE = ("queued", "in_progress")
READ, WRITE, DEPLOY, SENSITIVE = "read", "write", "deploy", "read:sensitive"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_uuid() -> str:
    # Coolify uses 24-char cuid2-like lowercase ids.
    return secrets.token_hex(12)


@dataclass
class Token:
    abilities: set[str]
    team_id: int | None = 0

    def can(self, ability: str) -> bool:
        return "root" in self.abilities or ability in self.abilities


@dataclass
class FakeEnv:
    id: int
    uuid: str
    key: str
    value: str
    is_preview: bool = False
    is_literal: bool = False
    is_multiline: bool = False
    is_shown_once: bool = False
    # Coolify's defaults for a new variable (create_bulk_envs): it reaches the build (as a
    # build argument, and its value is part of the build configuration) and the container.
    is_runtime: bool = True
    is_buildtime: bool = True
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class FakeApp:
    id: int
    uuid: str
    name: str
    fqdn: str | None = None
    git_repository: str = "https://github.com/example/app"
    git_branch: str = "main"
    git_commit_sha: str = "HEAD"
    build_pack: str = "nixpacks"
    docker_registry_image_name: str | None = None
    docker_registry_image_tag: str | None = None
    status: str = "exited"
    tags: list[str] = field(default_factory=list)
    auto_deploy: bool = True
    envs: list[FakeEnv] = field(default_factory=list)
    running_commit: str | None = None
    running_image_tag: str | None = None
    # Images on the server, oldest first (`docker images` of the app's repository): the tag is
    # the commit (ApplicationDeploymentJob::generate_image_names).
    images: list[str] = field(default_factory=list)
    # The build configuration of the last finished deployment (its configuration_snapshot,
    # 'build' impact items only): the pin and every is_buildtime variable.
    applied_build: tuple[str, tuple[tuple[str, str], ...]] | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class FakeDeployment:
    id: int
    uuid: str
    app_uuid: str
    commit: str
    status: str = "queued"
    force: bool = False
    restart_only: bool = False
    image_tag: str | None = None
    rollback: bool = False
    built: bool | None = None  # None until it ran: False when the image was reused
    build_args: dict[str, str] | None = None  # what reached `docker build`
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    # The application's (non-preview) envs when the job started: what its containers got.
    envs: dict[str, str] | None = None

    def log(self, output: str, *, hidden: bool = False, command: str | None = None) -> None:
        self.logs.append(
            {
                "command": command,
                "output": output,
                "type": "stdout",
                "timestamp": now_iso(),
                "hidden": hidden,
                "batch": 1,
                "order": len(self.logs) + 1,
            }
        )


class FakeCoolify:
    def __init__(self, contract: OpenAPIContract) -> None:
        self.contract = contract
        self.tokens: dict[str, Token] = {}
        self.apps: dict[str, FakeApp] = {}
        self.deployments: list[FakeDeployment] = []
        self.api_enabled = True
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query string)
        self.request_bodies: list[bytes] = []
        # Behaviour knobs.
        self.queue_delay = 0.05
        self.run_time = 0.15
        self.concurrent_builds = 2
        self.queue_limit = 25
        self.stop_delay = 0.05
        self.fail_commits: set[str] = set()
        self.fail_tags: set[str] = set()
        self.status_after_deploy = "running:healthy"
        self.inject_429: list[tuple[str, int]] = []  # (path prefix, Retry-After seconds), FIFO
        # (path prefix, HTTP status), FIFO: 500 as Laravel answers an unhandled exception, 503
        # as it answers while Coolify is upgrading (maintenance mode). Nothing is changed.
        self.inject_5xx: list[tuple[str, int]] = []
        # (path prefix, seconds), FIFO: the answer is held that long before the request is
        # handled; like a loaded server, it is still handled after the client gave up.
        self.slow_responses: list[tuple[str, float]] = []
        self.drop_connections = 0
        self.deploy_fault_after_queue = 0  # drop the connection after queuing N /deploy calls
        self.duplicates_skipped = 0  # deploys Coolify's duplicate rule turned away
        self.images_to_keep = 3  # docker_images_to_keep (+ the running one) after cleanup
        self.log_bytes_sent = 0  # bytes of deployment `logs` sent in answers
        self._ids = 0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.port = 0
        self._tls: ssl.SSLContext | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        app = web.Application(middlewares=[self._contract_middleware])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
            self._ticker = None
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ fixtures helpers

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def add_token(self, abilities: set[str], team_id: int | None = 0) -> str:
        token = f"{self.next_id()}|{secrets.token_urlsafe(24)}"
        self.tokens[token] = Token(set(abilities), team_id)
        return token

    def add_app(self, name: str, **fields: Any) -> FakeApp:
        app = FakeApp(id=self.next_id(), uuid=new_uuid(), name=name, **fields)
        self.apps[app.uuid] = app
        return app

    def add_image_app(self, name: str, image: str, tag: str, **fields: Any) -> FakeApp:
        # What POST /applications/dockerimage creates (ApplicationsController).
        return self.add_app(
            name,
            build_pack="dockerimage",
            docker_registry_image_name=image,
            docker_registry_image_tag=tag,
            git_repository="coollabsio/coolify",
            git_branch="main",
            **fields,
        )

    def history(self, app_uuid: str) -> list[FakeDeployment]:
        rows = [d for d in self.deployments if d.app_uuid == app_uuid]
        return sorted(rows, key=lambda d: d.id, reverse=True)

    def calls(self, method: str, path_suffix: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p.endswith(path_suffix))

    # ------------------------------------------------------------------ the deployment clock

    async def _tick_forever(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(0.01)

    def tick(self) -> None:
        now = time.monotonic()
        in_progress = [d for d in self.deployments if d.status == "in_progress"]
        for dep in in_progress:
            assert dep.started_at is not None
            if now - dep.started_at >= self.run_time:
                self._finish(dep)
        running = sum(1 for d in self.deployments if d.status == "in_progress")
        for dep in sorted(
            (d for d in self.deployments if d.status == "queued"), key=lambda d: d.id
        ):
            if running >= self.concurrent_builds:
                break
            if now - dep.queued_at < self.queue_delay:
                continue
            app = self.apps[dep.app_uuid]
            # Concurrent deployments of the same application wait for each other.
            if any(
                d.status == "in_progress" and d.app_uuid == dep.app_uuid for d in self.deployments
            ):
                continue
            dep.status = "in_progress"
            dep.started_at = now
            dep.updated_at = now_iso()
            dep.image_tag = app.docker_registry_image_tag
            dep.envs = {e.key: e.value for e in app.envs if not e.is_preview and e.is_runtime}
            dep.log(f"Starting deployment of {app.name} ({dep.commit}).")
            self._build_or_reuse(app, dep)
            running += 1

    def build_config(self, app: FakeApp) -> tuple[str, tuple[tuple[str, str], ...]]:
        buildtime = tuple(sorted(
            (e.key, e.value) for e in app.envs if not e.is_preview and e.is_buildtime
        ))
        return (app.git_commit_sha or "HEAD", buildtime)

    def _build_or_reuse(self, app: FakeApp, dep: FakeDeployment) -> None:
        """check_image_locally_or_remotely + should_skip_build: an image of this commit is reused
        unless forced or a 'build' item of the configuration changed since the last finished
        deployment (pendingDeploymentConfigurationDiff()->requiresBuild())."""
        if dep.restart_only or app.build_pack == "dockerimage":
            dep.built = False
            return
        if (not dep.force and dep.commit in app.images
                and app.applied_build == self.build_config(app)):
            dep.built = False
            dep.log(f"No build configuration changed & image found ({app.uuid}:{dep.commit}) "
                    "with the same Git Commit SHA. Build step skipped.")
            return
        dep.built = True
        dep.build_args = {
            e.key: e.value for e in app.envs if not e.is_preview and e.is_buildtime
        }
        if dep.build_args:
            secrets_line = " ".join(f"--build-arg {k}={v}" for k, v in dep.build_args.items())
            dep.log("docker build", hidden=True, command=f"docker build {secrets_line} .")

    def _finish(self, dep: FakeDeployment) -> None:
        app = self.apps[dep.app_uuid]
        dep.updated_at = now_iso()
        failing = dep.commit in self.fail_commits or (
            dep.image_tag is not None and dep.image_tag in self.fail_tags
        )
        if failing and not dep.restart_only:
            dep.status = "failed"
            dep.log(f"Build of {dep.commit} failed: exit code 1.")
            dep.log("Deployment failed. Removing the new version of your application.")
            if app.running_commit is None and app.running_image_tag is None:
                app.status = "exited:unhealthy"
            return
        dep.status = "finished"
        dep.log("Rolling update completed.")
        if not dep.restart_only:
            app.running_commit = dep.commit
            app.running_image_tag = dep.image_tag
            if app.build_pack != "dockerimage":
                if dep.commit in app.images:
                    app.images.remove(dep.commit)
                app.images.append(dep.commit)
                del app.images[: -self.images_to_keep]
        app.applied_build = self.build_config(app)
        app.status = self.status_after_deploy

    def queue(
        self,
        app: FakeApp,
        *,
        force: bool = False,
        restart_only: bool = False,
        commit: str | None = None,
        rollback: bool = False,
    ) -> tuple[str, bool]:
        """Coolify's queue_application_deployment: returns (deployment uuid, created)."""
        commit = commit or app.git_commit_sha or "HEAD"
        if not force and not restart_only and not rollback:
            for dep in self.deployments:
                if dep.app_uuid == app.uuid and dep.status in ACTIVE and dep.commit == commit:
                    # Skipped as a duplicate; Coolify still hands out a fresh uuid it never stores.
                    self.duplicates_skipped += 1
                    return new_uuid(), False
        dep = FakeDeployment(
            id=self.next_id(),
            uuid=new_uuid(),
            app_uuid=app.uuid,
            commit=commit,
            force=force,
            restart_only=restart_only,
            rollback=rollback,
        )
        self.deployments.append(dep)
        return dep.uuid, True

    # ------------------------------------------------------------------ serialisation

    def app_json(self, app: FakeApp) -> dict[str, Any]:
        return {
            "id": app.id,
            "uuid": app.uuid,
            "name": app.name,
            "description": None,
            "fqdn": app.fqdn,
            "git_repository": app.git_repository,
            "git_branch": app.git_branch,
            "git_commit_sha": app.git_commit_sha,
            "git_full_url": None,
            "docker_registry_image_name": app.docker_registry_image_name,
            "docker_registry_image_tag": app.docker_registry_image_tag,
            "build_pack": app.build_pack,
            "ports_exposes": "3000",
            "ports_mappings": None,
            "base_directory": "/",
            "publish_directory": "/",
            "health_check_enabled": True,
            "health_check_path": "/",
            "health_check_port": None,
            "health_check_host": "localhost",
            "health_check_method": "GET",
            "health_check_return_code": 200,
            "health_check_scheme": "http",
            "health_check_response_text": None,
            "health_check_interval": 5,
            "health_check_timeout": 5,
            "health_check_retries": 10,
            "health_check_start_period": 5,
            "health_check_type": "http",
            "limits_memory": "0",
            "limits_cpus": "0",
            "limits_cpuset": None,
            "limits_cpu_shares": 1024,
            "status": app.status,
            "destination_type": "App\\Models\\StandaloneDocker",
            "destination_id": 1,
            "source_id": None,
            "private_key_id": None,
            "environment_id": 1,
            "custom_labels": None,
            "redirect": "both",
            "created_at": app.created_at,
            "updated_at": app.updated_at,
            "deleted_at": None,
            "compose_parsing_version": "5",
            "settings": {
                "is_static": False,
                "is_auto_deploy_enabled": app.auto_deploy,
                "is_force_https_enabled": True,
                "is_debug_enabled": False,
                "is_preview_deployments_enabled": False,
                "gpu_driver": None,
                "custom_internal_name": None,
                "stop_grace_period": None,
                "docker_images_to_keep": 2,
            },
        }

    def deployment_json(self, dep: FakeDeployment, sensitive: bool) -> dict[str, Any]:
        app = self.apps[dep.app_uuid]
        body: dict[str, Any] = {
            "id": dep.id,
            "application_id": str(app.id),
            "deployment_uuid": dep.uuid,
            "pull_request_id": 0,
            "docker_registry_image_tag": None,
            "configuration_hash": None,
            "force_rebuild": dep.force,
            "commit": dep.commit,
            "status": dep.status,
            "is_webhook": False,
            "is_api": True,
            "created_at": dep.created_at,
            "updated_at": dep.updated_at,
            "restart_only": dep.restart_only,
            "server_id": 0,
            "application_name": app.name,
            "server_name": "localhost",
            "deployment_url": (
                f"/project/p/environment/e/application/{app.uuid}/deployment/{dep.uuid}"
            ),
            "destination_id": "1",
            "only_this_server": False,
            "rollback": dep.rollback,
        }
        if sensitive:
            # DeployController::removeSensitiveData: `logs` only for read:sensitive tokens.
            body["logs"] = json.dumps(dep.logs)
            self.log_bytes_sent += len(body["logs"])
        return body

    def env_json(self, app: FakeApp, env: FakeEnv, sensitive: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": env.id,
            "uuid": env.uuid,
            "resourceable_type": "App\\Models\\Application",
            "resourceable_id": app.id,
            "is_literal": env.is_literal,
            "is_multiline": env.is_multiline,
            "is_preview": env.is_preview,
            "is_runtime": env.is_runtime,
            "is_buildtime": env.is_buildtime,
            "is_shared": False,
            "is_shown_once": env.is_shown_once,
            "key": env.key,
            "comment": None,
            "version": "4.3.11",
            "created_at": env.created_at,
            "updated_at": env.updated_at,
        }
        if sensitive:
            body["value"] = env.value
            body["real_value"] = env.value
        return body

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _contract_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        query = list(request.query.items())
        self.requests.append((request.method, path, request.query_string))
        self.request_bodies.append(body)
        if not path.startswith(API_PREFIX):
            return web.json_response({"message": "Not found."}, status=404)
        api_path = path[len(API_PREFIX) :] or "/"
        try:
            op = self.contract.find(request.method, api_path)
        except ContractViolation as exc:
            self.violations.append(str(exc))
            # GET on a POST-only action route: what Coolify >= 4.2 answers (still a violation).
            if request.method == "GET" and self._is_action_route(api_path):
                return web.json_response(
                    {"message": "This endpoint has changed to a POST request."},
                    status=405,
                    headers={"Allow": "POST"},
                )
            return web.json_response({"message": f"OpenAPI contract violation: {exc}"}, status=422)
        try:
            self.contract.check_request(request.method, api_path, query, request.headers, body)
        except ContractViolation as exc:
            self.violations.append(str(exc))
            return web.json_response({"message": f"OpenAPI contract violation: {exc}"}, status=422)
        if self.drop_connections > 0:
            # A network fault after a valid request arrived: the client sees a reset connection.
            self.drop_connections -= 1
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        response = await handler(request)
        assert isinstance(response, web.Response)
        raw = response.body if isinstance(response.body, bytes) else b""
        try:
            self.contract.check_response(op, response.status, response.headers, raw)
        except ContractViolation as exc:
            self.violations.append(f"fake server response: {exc}")
            return web.json_response(
                {"message": f"fake server broke the contract: {exc}"}, status=500
            )
        return response

    @staticmethod
    def _is_action_route(path: str) -> bool:
        parts = path.strip("/").split("/")
        if parts == ["deploy"]:
            return True
        return (
            len(parts) == 3
            and parts[0] == "applications"
            and parts[2] in ("start", "stop", "restart")
        )

    async def _dispatch(self, request: web.Request) -> web.Response:
        if not self.api_enabled:
            return web.json_response({"success": True, "message": "API is disabled."}, status=403)
        header = request.headers.get("Authorization", "")
        token = (
            self.tokens.get(header.removeprefix("Bearer ").strip())
            if header.startswith("Bearer ")
            else None
        )
        if token is None:
            return web.json_response({"message": "Unauthenticated."}, status=401)
        api_path = request.path[len(API_PREFIX) :]
        if self.inject_429:
            prefix, retry_after = self.inject_429[0]
            if api_path == prefix or api_path.startswith(prefix + "/"):
                self.inject_429.pop(0)
                return web.json_response(
                    {"message": "Deployment queue is full. Please try again later."},
                    status=429,
                    headers={"Retry-After": str(retry_after)},
                )
        slow = self._take(self.slow_responses, api_path)
        if slow is not None:
            await asyncio.sleep(slow)
        failure = self._take(self.inject_5xx, api_path)
        if failure is not None:
            message = "Service Unavailable" if failure == 503 else "Server Error"
            return web.json_response({"message": message}, status=failure)
        if token.team_id is None:
            return web.json_response({"message": "Invalid token."}, status=400)
        route = _route(request.method, api_path)
        if route is None:
            return web.json_response({"message": "Not found."}, status=404)
        name, args, ability = route
        if not token.can(ability):
            return web.json_response(
                {"message": f"Missing required permissions: {ability}"}, status=403
            )
        payload: Any = None
        raw = await request.read()
        if raw.strip():
            payload = json.loads(raw)
        handler = getattr(self, f"h_{name}")
        result: web.Response = await handler(request, token, payload, *args)
        return result

    @staticmethod
    def _take(faults: list[tuple[str, Any]], api_path: str) -> Any:
        """Pop the next injected fault if it is meant for this path (FIFO, like inject_429)."""
        if faults:
            prefix, value = faults[0]
            if api_path == prefix or api_path.startswith(prefix + "/"):
                faults.pop(0)
                return value
        return None

    # ------------------------------------------------------------------ handlers

    def _app(self, uuid: str) -> FakeApp | None:
        return self.apps.get(uuid)

    @staticmethod
    def _not_found(what: str = "Application") -> web.Response:
        return web.json_response({"message": f"{what} not found."}, status=404)

    async def h_list_apps(self, request: web.Request, token: Token, payload: Any) -> web.Response:
        tag = request.query.get("tag")
        apps = [a for a in self.apps.values() if tag is None or tag in a.tags]
        return web.json_response([self.app_json(a) for a in apps])

    async def h_get_app(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        return web.json_response(self.app_json(app)) if app else self._not_found()

    async def h_patch_app(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        if not isinstance(payload, dict) or not payload:
            return web.json_response({"message": "Invalid request.", "error": "Empty JSON."},
                                     status=400)
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        errors = laravel_errors(payload, APP_UPDATE_RULES)
        for extra in sorted(set(payload) - APP_UPDATE_FIELDS):
            errors.setdefault(extra, []).append("This field is not allowed.")
        if errors:
            return validation_failed(errors)
        for key in (
            "git_commit_sha",
            "docker_registry_image_name",
            "docker_registry_image_tag",
            "name",
        ):
            if key in payload:
                setattr(app, key, payload[key])
        if "is_auto_deploy_enabled" in payload:
            app.auto_deploy = bool(payload["is_auto_deploy_enabled"])
        if "domains" in payload:
            app.fqdn = payload["domains"]
        app.updated_at = now_iso()
        if payload.get("instant_deploy"):
            _, created = self.queue(app)
            if not created:
                return web.json_response({"message": "Deployment already queued for this commit."})
        return web.json_response({"uuid": app.uuid})

    async def h_list_envs(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        sensitive = token.can(SENSITIVE)
        return web.json_response([self.env_json(app, e, sensitive) for e in app.envs])

    def _upsert_env(self, app: FakeApp, item: dict[str, Any]) -> FakeEnv:
        preview = bool(item.get("is_preview", False))
        env = next((e for e in app.envs if e.key == item["key"] and e.is_preview == preview), None)
        if env is None:
            env = FakeEnv(id=self.next_id(), uuid=new_uuid(), key=item["key"], value=item["value"])
            app.envs.append(env)
        env.value = item["value"]
        env.is_preview = preview
        for flag in ("is_literal", "is_multiline", "is_shown_once", "is_runtime", "is_buildtime"):
            if flag in item:
                setattr(env, flag, bool(item[flag]))
        env.updated_at = now_iso()
        return env

    async def h_create_env(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        if any(
            e.key == payload.get("key") and e.is_preview == bool(payload.get("is_preview"))
            for e in app.envs
        ):
            return web.json_response(
                {"message": "Environment variable already exists. Use PATCH request to update it."},
                status=409,
            )
        env = self._upsert_env(app, payload)
        return web.json_response({"uuid": env.uuid}, status=201)

    async def h_update_env(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        if not any(e.key == payload["key"] for e in app.envs):
            return self._not_found("Environment variable")
        env = self._upsert_env(app, payload)
        return web.json_response(self.env_json(app, env, token.can(SENSITIVE)), status=201)

    async def h_bulk_envs(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        if not payload.get("data"):
            return web.json_response({"message": "Bulk data is required."}, status=400)
        items = [{k: v for k, v in item.items() if k in ENV_BULK_FIELDS}
                 for item in payload["data"]]
        for item in items:
            errors = laravel_errors(item, ENV_BULK_RULES)
            if errors:
                return validation_failed(errors)
        envs = [self._upsert_env(app, item) for item in items]
        sensitive = token.can(SENSITIVE)
        return web.json_response([self.env_json(app, e, sensitive) for e in envs], status=201)

    async def h_delete_env(
        self, request: web.Request, token: Token, payload: Any, uuid: str, env_uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        env = next((e for e in app.envs if e.uuid == env_uuid), None)
        if env is None:
            return self._not_found("Environment variable")
        app.envs.remove(env)
        return web.json_response({"message": "Environment variable deleted."})

    async def h_deploy(self, request: web.Request, token: Token, payload: Any) -> web.Response:
        uuids = [u for u in request.query.get("uuid", "").split(",") if u]
        if request.query.get("tag") and uuids:
            return web.json_response(
                {"message": "You can only use uuid or tag, not both."}, status=400
            )
        if not uuids:
            return web.json_response({"message": "You must provide uuid or tag."}, status=400)
        force = request.query.get("force", "false").lower() in ("true", "1")
        if sum(1 for d in self.deployments if d.status == "queued") >= self.queue_limit:
            return web.json_response(
                {"message": "Deployment queue is full. Please try again later."},
                status=429,
                headers={"Retry-After": "60"},
            )
        items = []
        for uuid in uuids:
            app = self._app(uuid)
            if app is None:
                continue
            deployment_uuid, created = self.queue(app, force=force)
            message = (
                f"Application {app.name} deployment queued."
                if created
                else "Deployment already queued for this commit."
            )
            items.append(
                {"message": message, "resource_uuid": uuid, "deployment_uuid": deployment_uuid}
            )
        if not items:
            return web.json_response({"message": "No resources found."}, status=404)
        if self.deploy_fault_after_queue > 0:
            # The deploy was queued but the answer is lost: the client must not double-deploy.
            self.deploy_fault_after_queue -= 1
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        return web.json_response({"deployments": items})

    async def h_start(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        force = request.query.get("force", "false").lower() in ("true", "1")
        deployment_uuid, _ = self.queue(app, force=force)
        return web.json_response(
            {"message": "Deployment request queued.", "deployment_uuid": deployment_uuid}
        )

    async def h_restart(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        deployment_uuid, _ = self.queue(app, restart_only=True)
        return web.json_response(
            {"message": "Restart request queued.", "deployment_uuid": deployment_uuid}
        )

    async def h_stop(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()

        async def stop_later() -> None:
            await asyncio.sleep(self.stop_delay)
            app.status = "exited"

        self._background.add(asyncio.get_running_loop().create_task(stop_later()))
        return web.json_response({"message": "Application stopping request queued."})

    async def h_list_deployments(
        self, request: web.Request, token: Token, payload: Any
    ) -> web.Response:
        sensitive = token.can(SENSITIVE)
        return web.json_response(
            [self.deployment_json(d, sensitive) for d in self.deployments if d.status in ACTIVE]
        )

    async def h_get_deployment(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        dep = next((d for d in self.deployments if d.uuid == uuid), None)
        if dep is None:
            return self._not_found("Deployment")
        return web.json_response(self.deployment_json(dep, token.can(SENSITIVE)))

    async def h_cancel(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        dep = next((d for d in self.deployments if d.uuid == uuid), None)
        if dep is None:
            return self._not_found("Deployment")
        if dep.status not in ACTIVE:
            return web.json_response(
                {"message": f"Deployment cannot be cancelled. Current status: {dep.status}"},
                status=400,
            )
        dep.status = "cancelled-by-user"
        dep.updated_at = now_iso()
        dep.log("Deployment cancelled by user.")
        return web.json_response(
            {
                "message": "Deployment cancelled successfully.",
                "deployment_uuid": dep.uuid,
                "status": "cancelled-by-user",
            }
        )

    async def h_app_deployments(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        if self._app(uuid) is None:
            return self._not_found()
        skip = int(request.query.get("skip", "0"))
        take = int(request.query.get("take", "10"))
        rows = self.history(uuid)
        sensitive = token.can(SENSITIVE)
        # The real shape (contracts README §1), not the spec's [Application].
        return web.json_response(
            {
                "count": len(rows),
                "deployments": [
                    self.deployment_json(d, sensitive) for d in rows[skip : skip + take]
                ],
            }
        )

    async def h_rollback_images(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        current = app.running_commit
        return web.json_response({
            "current": current,
            "images": [
                {"tag": tag, "created_at": "2026-01-01 00:00:00 +0000 UTC",
                 "is_current": tag == current}
                for tag in app.images
            ],
        })

    async def h_rollback(
        self, request: web.Request, token: Token, payload: Any, uuid: str
    ) -> web.Response:
        """ApplicationsController::rollback_by_uuid: commit required, nothing else allowed,
        validateGitRef, then a deployment with rollback=true (never skipped as a duplicate)."""
        if not isinstance(payload, dict) or not payload:
            return web.json_response({"message": "Invalid request.", "error": "Empty JSON."},
                                     status=400)
        errors = laravel_errors(payload, {"commit": ("required", "string")})
        for extra in sorted(set(payload) - {"commit"}):
            errors.setdefault(extra, []).append("This field is not allowed.")
        if errors:
            return validation_failed(errors)
        app = self._app(uuid)
        if app is None:
            return self._not_found()
        commit = payload["commit"].strip()
        if commit not in ("", "HEAD"):  # bootstrap/helpers/shared.php validateGitRef()
            if commit.startswith("-"):
                return validation_failed({"commit": [
                    "Invalid rollback commit: must not start with a hyphen."]})
            if not GIT_REF.match(commit):
                return validation_failed({"commit": [
                    "Invalid rollback commit: contains disallowed characters. Only alphanumeric "
                    "characters, dots, hyphens, underscores, and slashes are allowed."]})
        deployment_uuid, _ = self.queue(app, commit=commit, rollback=True)
        return web.json_response(
            {"message": "Rollback deployment queued.", "deployment_uuid": deployment_uuid})

    async def h_version(self, request: web.Request, token: Token, payload: Any) -> web.Response:
        return web.Response(text="4.3.11")


_ROUTES: list[tuple[str, list[str], str, str]] = [
    # method, path segments (":x" = parameter), handler, ability
    ("GET", ["applications"], "list_apps", READ),
    ("GET", ["applications", ":uuid"], "get_app", READ),
    ("PATCH", ["applications", ":uuid"], "patch_app", WRITE),
    ("GET", ["applications", ":uuid", "envs"], "list_envs", READ),
    ("POST", ["applications", ":uuid", "envs"], "create_env", WRITE),
    ("PATCH", ["applications", ":uuid", "envs"], "update_env", WRITE),
    ("PATCH", ["applications", ":uuid", "envs", "bulk"], "bulk_envs", WRITE),
    ("DELETE", ["applications", ":uuid", "envs", ":env_uuid"], "delete_env", WRITE),
    ("POST", ["applications", ":uuid", "start"], "start", DEPLOY),
    ("POST", ["applications", ":uuid", "stop"], "stop", DEPLOY),
    ("POST", ["applications", ":uuid", "restart"], "restart", DEPLOY),
    ("GET", ["applications", ":uuid", "rollback-images"], "rollback_images", READ),
    ("POST", ["applications", ":uuid", "rollback"], "rollback", DEPLOY),
    ("POST", ["deploy"], "deploy", DEPLOY),
    ("GET", ["deployments"], "list_deployments", READ),
    ("GET", ["deployments", "applications", ":uuid"], "app_deployments", READ),
    ("GET", ["deployments", ":uuid"], "get_deployment", READ),
    ("POST", ["deployments", ":uuid", "cancel"], "cancel", DEPLOY),
    ("GET", ["version"], "version", READ),
]


def _route(method: str, path: str) -> tuple[str, list[str], str] | None:
    parts = [p for p in urlsplit(path).path.split("/") if p]
    for route_method, segments, name, ability in _ROUTES:
        if route_method != method or len(segments) != len(parts):
            continue
        args: list[str] = []
        for segment, part in zip(segments, parts, strict=True):
            if segment.startswith(":"):
                args.append(part)
            elif segment != part:
                break
        else:
            return name, args, ability
    return None
