"""A real nginx on loopback for strategy tests, and a request loop that counts failures."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import need


@dataclass
class Nginx:
    dir: Path
    port: int
    upstream_file: Path
    config: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        subprocess.run(["nginx", "-c", str(self.config), "-s", "stop"], capture_output=True,
                       timeout=10)


def start_nginx(tmp: Path, port: int, upstream: str, first_backend: int) -> Nginx:
    need(shutil.which("nginx") is not None, "nginx is not installed (apt-get install nginx)")
    tmp.mkdir(parents=True, exist_ok=True)
    upstream_file = tmp / "upstream.conf"
    upstream_file.write_text(f"upstream {upstream} {{ server 127.0.0.1:{first_backend}; }}\n")
    config = tmp / "nginx.conf"
    config.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  include {upstream_file};
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://{upstream}; proxy_next_upstream error timeout; }}
  }}
}}
""")
    subprocess.run(["nginx", "-c", str(config)], check=True, capture_output=True, timeout=20)
    return Nginx(tmp, port, upstream_file, config)


@dataclass
class RequestLoop:
    """GETs ``url`` back to back in a thread; every non-200 or transport error is recorded."""

    url: str
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # A new connection per request: nginx's graceful reload serves every request it has
        # accepted, but closes idle keep-alive connections, and a request racing that close is
        # one HTTP/1.1 clients retry (RFC 9112 9.3.1) and httpx does not. tests/rollout/
        # test_traffic.py covers keep-alive clients with that retry.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.ok += 1
                        if not self.bodies or self.bodies[-1] != response.text:
                            self.bodies.append(response.text)
                    else:
                        self.errors.append(f"status {response.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.005)

    def stop(self) -> RequestLoop:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return self


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_prometheus(tmp: Path, port: int, targets: list[str]) -> Prometheus:
    """A real Prometheus (Debian's package) scraping ``targets`` every second."""
    binary = shutil.which("prometheus")
    need(binary is not None, "prometheus is not installed (apt-get install prometheus)")
    assert binary is not None
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "prometheus.yml"
    config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: app
    static_configs: [{{targets: {targets!r}}}]
""".replace("'", '"'))
    log = (tmp / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    prom = Prometheus(process, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            # ready, and every target scraped once (the first scrape comes seconds after
            # start-up; an analysis before it would see no series at all)
            answer = httpx.get(f"{prom.url}/api/v1/query", params={"query": "up"}, timeout=1,
                               trust_env=False)
            if answer.status_code == 200 and len(answer.json()["data"]["result"]) == len(
                    targets):
                return prom
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    prom.stop()
    output = (tmp / "prometheus.log").read_text()[-2000:]
    raise AssertionError(f"prometheus did not become ready: {output}")
