"""A tiny HTTP service for the demo fleet (standard library only).

GET /         -> a greeting (env GREETING)
GET /healthz  -> 200 "ok", or 500 when env FAIL_HEALTH=1 (to watch a rollback happen)
GET /metrics   -> Prometheus text: app_requests_total{code, greeting, slot} (slot: env SLOT)
SLOW_START=N  -> wait N seconds before listening
ERROR_RATE=F  -> answer GET / with 500 for a fraction F of requests (to watch a canary analysis
                 fail on its error-rate query)
"""

import argparse
import json
import os
import signal
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
REQUESTS: dict[int, int] = {}
LOCK = threading.Lock()


def count(code: int) -> None:
    with LOCK:
        REQUESTS[code] = REQUESTS.get(code, 0) + 1


def metrics() -> str:
    greeting = os.environ.get("GREETING", "hello").replace("\\", "").replace('"', "")
    slot = os.environ.get("SLOT", "").replace("\\", "").replace('"', "")
    lines = ["# HELP app_requests_total Requests to / by status code.",
             "# TYPE app_requests_total counter"]
    with LOCK:
        codes = dict(REQUESTS) or {200: 0}
    for code, n in sorted(codes.items()):
        lines.append(f'app_requests_total{{code="{code}",greeting="{greeting}",slot="{slot}"}} '
                     f"{n}")
    return "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    def _send(self, status: int, body: str, ctype: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path == "/healthz":
            if os.environ.get("FAIL_HEALTH") == "1":
                self._send(500, "unhealthy on purpose\n")
            else:
                self._send(200, "ok\n")
        elif self.path == "/metrics":
            self._send(200, metrics(), "text/plain; version=0.0.4")
        elif self.path == "/":
            if random.random() < float(os.environ.get("ERROR_RATE", "0")):
                count(500)
                self._send(500, "failing on purpose\n")
                return
            count(200)
            body = {"service": os.environ.get("SERVICE_NAME", "app"),
                    "greeting": os.environ.get("GREETING", "hello"),
                    "uptime_s": round(time.time() - STARTED, 1)}
            self._send(200, json.dumps(body) + "\n", "application/json")
        else:
            self._send(404, "not found\n")

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "18081")))
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    # SLOW_START: seconds to wait before listening (to watch a health gate hold a rollout).
    time.sleep(float(os.environ.get("SLOW_START", "0")))
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    # SystemExit unwinds serve_forever(); server.shutdown() from this thread would deadlock.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
