"""A sample config repository with two commits (base, head) whose change has a bit of
everything a plan shows: create, update, delete (with dependsOn), a deny window, strategies,
a changed secret reference and a credential literal. Fixed dates: fixed commit ids."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

AT = "2026-12-04T15:00:00Z"  # a Friday, 16:00 in Paris: inside staging's deny window
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmsl6Yz0tn0sKEvVbvRQW4jF9yXvWc0NRLZDGdf4rSa"
SECRET_LITERAL = "s3cr3t-literal-value"

TARGET_WEB = f"""apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: web, environment: prod}}
spec:
  provider: bare_metal
  transport: ssh
  hosts:
    - {{name: web-1, address: 127.0.0.1, port: 2222, user: deploy, hostKeys: ["{KEY}"]}}
    - {{name: web-2, address: 127.0.0.1, port: 2223, user: deploy, hostKeys: ["{KEY}"]}}
"""

BASE_PROD = TARGET_WEB + """---
apiVersion: fraisier.dev/v1
kind: Job
metadata: {name: migrate, environment: prod}
spec:
  target: web
  source: {path: app}
  command: [python3, app.py, migrate]
  env: {SCHEMA_VERSION: "3"}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: api, environment: prod}
spec:
  target: web
  dependsOn: [Job/migrate]
  source: {path: app}
  command: [python3, app.py, --port, "18081"]
  env:
    GREETING: hello
    DB_PASSWORD: {env: API_DB_PASSWORD}
  strategy: {type: rolling, maxParallel: 1}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: legacy-api, environment: prod}
spec:
  target: web
  source: {path: app}
  command: [python3, app.py, --port, "18090"]
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {name: legacy-ui, environment: prod}
spec:
  target: web
  dependsOn: [legacy-api]
  source: {path: app}
  command: [python3, app.py, --port, "18091"]
"""

HEAD_PROD = TARGET_WEB + f"""---
apiVersion: fraisier.dev/v1
kind: Job
metadata: {{name: migrate, environment: prod}}
spec:
  target: web
  source: {{path: app}}
  command: [python3, app.py, migrate]
  env: {{SCHEMA_VERSION: "4"}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api, environment: prod}}
spec:
  target: web
  dependsOn: [Job/migrate]
  source: {{path: app}}
  command: [python3, app.py, --port, "18081"]
  env:
    GREETING: hello again
    DB_PASSWORD: {{env: API_DB_PASSWORD_V2}}
    API_TOKEN: {SECRET_LITERAL}
  strategy: {{type: rolling, maxParallel: 1}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: cache, environment: prod}}
spec:
  target: web
  dependsOn: [api]
  source: {{path: app}}
  command: [python3, app.py, --port, "18082"]
  strategy: {{type: blue-green, ports: {{blue: 18083, green: 18084}}}}
"""

STAGING = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: frozen, environment: staging}}
spec:
  provider: bare_metal
  transport: local
  syncWindows:
    - {{kind: deny, schedule: "0 14 * * 5", duration: 3h, timezone: Europe/Paris}}
---
apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: shop, environment: staging}}
spec:
  target: frozen
  source: {{path: app}}
  command: [python3, app.py, --port, "18085"]
  env: {{GREETING: {greeting}}}
"""


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.org",
           "GIT_COMMITTER_NAME": "Ada", "GIT_COMMITTER_EMAIL": "ada@example.org",
           "GIT_AUTHOR_DATE": "2026-12-01T10:00:00Z", "GIT_COMMITTER_DATE": "2026-12-01T10:00:00Z"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        path = repo / name
        if text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        else:
            path.unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def build(repo: Path) -> tuple[str, str]:
    """The two commits in a new repository at ``repo``: (base, head)."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, {"app/app.py": "print('v1')\n", "fleet/prod.yaml": BASE_PROD,
                         "fleet/staging.yaml": STAGING.format(greeting="hi")}, "base")
    head = commit(repo, {"app/app.py": "print('v1')\n", "fleet/prod.yaml": HEAD_PROD,
                         "fleet/staging.yaml": STAGING.format(greeting="hello")}, "head")
    return base, head
