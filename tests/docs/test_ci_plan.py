"""docs/ci: the GitHub Actions workflow and the GitLab job that post the plan of a pull request
run for real: their shell steps, against fakes of the two comment APIs on loopback, keep ONE
comment per pull request (found by its marker on any page, edited in place).

The fakes accept only the documented requests: GitHub REST "Issue comments" (list with
per_page <= 100 and page, create, update; JSON body ``{"body": string}``; bearer token) and
GitLab "Notes" on merge requests (list, create, update; ``PRIVATE-TOKEN``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from reconciler.plan.report import MARKER
from tests.docs.conftest import DOCS
from tests.plan.sample import build

TOKEN = "test-token-123"


class FakeCommentsAPI:
    """Comments of one pull request (GitHub) or merge request (GitLab)."""

    def __init__(self, flavour: str, others: int) -> None:
        self.flavour = flavour
        self.comments: list[dict[str, Any]] = [
            {"id": 1000 + n, "body": f"an unrelated comment {n}"} for n in range(others)]
        self.requests: list[tuple[str, str]] = []
        self.refused: list[str] = []
        if flavour == "github":
            base = r"/repos/acme/config/issues"
            self.routes = {("GET", rf"{base}/7/comments"), ("POST", rf"{base}/7/comments"),
                           ("PATCH", rf"{base}/comments/(\d+)")}
        else:
            base = r"/api/v4/projects/42/merge_requests/7/notes"
            self.routes = {("GET", base), ("POST", base), ("PUT", rf"{base}/(\d+)")}

    def handle(self, method: str, target: str, headers: Any, body: bytes
               ) -> tuple[int, Any]:
        url = urlsplit(target)
        self.requests.append((method, url.path))
        if self.flavour == "github":
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.refuse(401, "no bearer token")
            if headers.get("Accept") != "application/vnd.github+json":
                return self.refuse(415, "Accept must be application/vnd.github+json")
        elif headers.get("PRIVATE-TOKEN") != TOKEN:
            return self.refuse(401, "no PRIVATE-TOKEN")
        match = None
        for verb, pattern in self.routes:
            found = re.fullmatch(pattern, url.path)
            if verb == method and found:
                match = found
        if match is None:
            return self.refuse(404, f"{method} {url.path} is not in the API")
        if method == "GET":
            query = parse_qs(url.query)
            per_page = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            if not 1 <= per_page <= 100 or page < 1:
                return self.refuse(422, "per_page must be 1..100, page >= 1")
            return 200, self.comments[(page - 1) * per_page:page * per_page]
        try:
            doc = json.loads(body)
        except ValueError:
            return self.refuse(400, "body is not JSON")
        if not isinstance(doc, dict) or set(doc) != {"body"} or not isinstance(doc["body"], str):
            return self.refuse(422, f"body must be {{'body': string}}, got {doc!r:.80}")
        if len(doc["body"]) > 65536:
            return self.refuse(422, "body is too long (maximum is 65536 characters)")
        if method == "POST":
            comment = {"id": 5000 + len(self.comments), "body": doc["body"]}
            self.comments.append(comment)
            return 201, comment
        wanted = int(match.group(1))
        for comment in self.comments:
            if comment["id"] == wanted:
                comment["body"] = doc["body"]
                return 200, comment
        return self.refuse(404, "no such comment")

    def refuse(self, status: int, why: str) -> tuple[int, Any]:
        self.refused.append(why)
        return status, {"message": why}


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(api: FakeCommentsAPI) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                status, doc = api.handle(self.command, self.path, self.headers,
                                         self.rfile.read(length))
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def shell(script: str, cwd: Path, env: dict[str, str], sh: str = "bash"
          ) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    args = [sh, "-e", "-c", script] if sh == "bash" else [sh, "-c", script]
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": str(cwd), **env})


def github_steps() -> dict[str, dict[str, Any]]:
    workflow = yaml.safe_load((DOCS / "ci" / "github-actions-pr-plan.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}
    return {step.get("name", ""): step for step in job["steps"]}


@pytest.mark.timeout(120)
def test_github_workflow_plans_and_keeps_one_comment(serve: Any, tmp_path: Path) -> None:
    need_tools = [t for t in ("curl", "git") if shutil.which(t) is None]
    assert not need_tools, f"missing {need_tools}"
    repo = tmp_path / "config"
    base, head = build(repo)
    steps = github_steps()
    api = FakeCommentsAPI("github", others=100)  # the marked comment lands on page 2
    url = serve(api)
    out = tmp_path / "github_output"
    env = {"BASE_SHA": base, "GITHUB_OUTPUT": str(out), "RECONCILER_STATE_DIR": str(tmp_path),
           "GITHUB_API_URL": url, "GITHUB_REPOSITORY": "acme/config", "GITHUB_TOKEN": TOKEN,
           "PR": "7"}
    plan = shell(steps["Plan"]["run"], repo, env)
    assert plan.returncode == 0, plan.stderr
    assert out.read_text() == "exit=1\n"  # changes pending
    assert (repo / "plan.md").read_text().startswith(MARKER)
    post = steps["Post or update the plan comment"]["run"]
    for _ in range(2):  # a second push: the same comment is edited
        done = shell(post, repo, env)
        assert done.returncode == 0, done.stderr + str(api.refused)
    assert api.refused == []
    marked = [c for c in api.comments if MARKER in c["body"]]
    assert len(marked) == 1 and len(api.comments) == 101
    assert ("PATCH", f"/repos/acme/config/issues/comments/{marked[0]['id']}") in api.requests
    assert marked[0]["body"] == (repo / "plan.md").read_text()
    # a bad base: the Plan step fails (exit 2), nothing is posted
    env["BASE_SHA"] = "0" * 40
    assert shell(steps["Plan"]["run"], repo, env).returncode == 2
    del head


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sh", ["bash", "sh"])
def test_gitlab_job_plans_and_keeps_one_note(serve: Any, tmp_path: Path, sh: str) -> None:
    job = yaml.safe_load((DOCS / "ci" / "gitlab-pr-plan.yml").read_text())["fraisier-plan"]
    assert job["variables"]["GIT_DEPTH"] == "0"
    _, plan_script, post_script = job["script"]
    repo = tmp_path / "config"
    base, _ = build(repo)
    api = FakeCommentsAPI("gitlab", others=3)
    url = serve(api)
    env = {"CI_MERGE_REQUEST_DIFF_BASE_SHA": base, "RECONCILER_STATE_DIR": str(tmp_path),
           "CI_API_V4_URL": f"{url}/api/v4", "CI_PROJECT_ID": "42",
           "CI_MERGE_REQUEST_IID": "7", "FRAISIER_PLAN_TOKEN": TOKEN}
    plan = shell(plan_script, repo, env, sh)
    assert plan.returncode == 0, plan.stderr
    for _ in range(2):
        done = shell(post_script, repo, env, sh)
        assert done.returncode == 0, done.stderr + str(api.refused)
    assert api.refused == []
    marked = [c for c in api.comments if MARKER in c["body"]]
    assert len(marked) == 1 and len(api.comments) == 4
    assert ("PUT", f"/api/v4/projects/42/merge_requests/7/notes/{marked[0]['id']}") \
        in api.requests
