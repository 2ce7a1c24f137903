"""Commit → first provider action latency of the daemon, against the polling interval.

A real daemon (``python -m reconciler daemon``) runs a real Service (examples/app/app.py under
the bare_metal provider's local supervisor, HTTP health check). Each commit changes the
Service's environment, so each one is a new revision to roll out. Measured per commit:

* **first action**: from the commit being in place (``git commit`` returned for the local watch;
  ``git push`` to the remote returned, i.e. the moment a git host would send its webhook) to the
  daemon's JSON log line ``phase=deploying`` for that resource (its ``ts`` field);
* **healthy**: to the log line ``phase=succeeded`` (new revision started and passed its health
  check).

Modes:

(a) ``watch``: the daemon follows the local repo; watchfiles sees the ref change. ``--interval
    30s``, so the poll cannot be what triggers.
(b) ``webhook``: the daemon follows a bare repo through a ``file://`` URL with ``--interval 1h``;
    after each push the bench sends a GitHub push webhook signed with HMAC-SHA256 (body: the
    real sample from contracts/webhooks/github when present).
(c) ``poll`` (the baseline, a few commits): the local-watch trigger cannot exist for a remote, so
    the daemon follows the ``file://`` remote with a short ``--interval`` and no webhook.

The daemon waits for one commit's pass to finish before the next commit is made, so every
measurement is of an idle daemon reacting to one change.

Usage: python bench/latency.py [--commits 50] [--baseline-interval 30] [--poll-commits 8]
       [--poll-interval 2]
Goal: p50 of (a) and (b) ≤ 1 s.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _figures import Figure, add_json_flag, emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import free_port  # noqa: E402

APP = ROOT / "examples" / "app" / "app.py"
SAMPLE = ROOT.parent / "shared" / "contracts" / "webhooks" / "github" / "push.new-branch.json"
WEBHOOK_REPO = "https://github.com/Codertocat/Hello-World.git"
SECRET = "bench-latency-webhook-secret"

SERVICE = """apiVersion: fraisier.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  target: local
  source: {{path: app}}
  command: [{python}, app.py, --port, "{port}"]
  env: {{GREETING: "{greeting}"}}
  stopTimeout: 3s
  health:
    http: {{url: "http://{{host}}:{port}/healthz"}}
    interval: 100ms
    timeout: 1s
    startPeriod: 1s
    failureThreshold: 3
"""

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata: {{name: local}}
spec: {{provider: bare_metal, transport: local, root: {root}, keepReleases: 2}}
"""




def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c",
                          "user.email=bench@example.invalid", *args],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class LogTail:
    """The daemon's stderr, parsed line by line in a thread (JSON log lines only)."""

    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, since: int, predicate: Callable[[dict[str, Any]], bool],
             timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events[since:]:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = "\n".join(json.dumps(e) for e in self.events[-15:])
                    raise SystemExit(f"timed out waiting for the daemon; last log lines:\n{tail}")
                self.cond.wait(left)


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["ts"])).timestamp()


def phase(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("phase") == name and str(e.get("resource", "")).endswith("/api")


def pass_done(commit: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("msg") == "reconcile pass done" and e.get("commit") == commit


def github_push(before: str, after: str) -> bytes:
    """A GitHub push body: the real sample re-pointed at our commits (or a minimal one)."""
    if SAMPLE.is_file():
        doc: dict[str, Any] = copy.deepcopy(json.loads(SAMPLE.read_bytes()))
    else:
        doc = {"repository": {"full_name": "Codertocat/Hello-World", "clone_url": WEBHOOK_REPO,
                              "html_url": WEBHOOK_REPO[:-4]},
               "head_commit": {"id": after}, "commits": []}
    doc.update(ref="refs/heads/main", before=before, after=after, created=False, deleted=False)
    doc["head_commit"]["id"] = after
    return json.dumps(doc).encode()


def send_webhook(port: int, body: bytes) -> None:
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks/github", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-GitHub-Event": "push",
                 "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": signature})
    with urllib.request.urlopen(request, timeout=5) as response:
        if response.status != 202:
            raise SystemExit(f"webhook answered {response.status}: {response.read()!r}")


@dataclass
class Run:
    mode: str
    interval_s: float
    first_action: list[float] = field(default_factory=list)
    healthy: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / "config"
        self.remote = work / "remote.git"
        self.root = work / "root"
        self.port = free_port()
        self.counter = 0
        (self.repo / "app").mkdir(parents=True)
        (self.repo / "fleet").mkdir()
        shutil.copy(APP, self.repo / "app" / "app.py")
        (self.repo / "fleet" / "target.yaml").write_text(TARGET.format(root=self.root))
        git(self.repo, "init", "-q", "-b", "main")
        self.commit()
        subprocess.run(["git", "clone", "-q", "--bare", str(self.repo), str(self.remote)],
                       check=True)
        git(self.repo, "remote", "add", "origin", str(self.remote))

    def commit(self) -> str:
        self.counter += 1
        (self.repo / "fleet" / "api.yaml").write_text(SERVICE.format(
            python=sys.executable, port=self.port, greeting=f"v{self.counter}"))
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", f"v{self.counter}")
        return git(self.repo, "rev-parse", "HEAD")

    def stop_services(self) -> None:
        for pidfile in self.root.rglob("*.pid"):
            try:
                os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGTERM)
            except (ValueError, KeyError, OSError):
                continue

    def run(self, mode: str, commits: int, interval_s: int) -> Run:
        state = self.work / f"state-{mode}"
        listen = free_port()
        repo_args = (["--repo", str(self.repo)] if mode == "watch"
                     else ["--repo", self.remote.as_uri()])
        hook_args = (["--webhook-secret", "github=env:BENCH_WEBHOOK_SECRET", "--webhook-repo",
                      WEBHOOK_REPO, "--webhook-branch", "main"] if mode == "webhook" else [])
        daemon = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--state-dir", str(state), "daemon",
             *repo_args, "--path", "fleet", "--listen", f"127.0.0.1:{listen}",
             "--interval", f"{interval_s}s", *hook_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "BENCH_WEBHOOK_SECRET": SECRET})
        tail = LogTail(daemon)
        tail.start()
        result = Run(mode, interval_s)
        try:
            head = git(self.repo, "rev-parse", "HEAD")
            if mode != "watch":
                git(self.repo, "push", "-q", "origin", "main")
            tail.wait(0, pass_done(head), timeout=120)  # start-up: the current commit rolled out
            for i in range(commits):
                # Not in lock-step with the daemon. A poll timer restarts after each pass, so
                # for polling the commit lands at a uniformly random point of the interval.
                time.sleep(random.uniform(0.05, 0.3) if mode != "poll"
                           else random.uniform(0.0, interval_s))
                mark = tail.mark()
                before = head
                head = self.commit()
                if mode == "watch":
                    t0 = time.time()
                else:
                    git(self.repo, "push", "-q", "origin", "main")
                    t0 = time.time()
                    if mode == "webhook":
                        send_webhook(listen, github_push(before, head))
                timeout = 60 + (result.interval_s * 1.5 if mode == "poll" else 0)
                deploying = tail.wait(mark, phase("deploying"), timeout=timeout)
                succeeded = tail.wait(mark, phase("succeeded"), timeout=60)
                tail.wait(mark, pass_done(head), timeout=60)
                result.first_action.append(ts(deploying) - t0)
                result.healthy.append(ts(succeeded) - t0)
                print(f"  {mode} {i + 1:3d}/{commits}: first action "
                      f"{result.first_action[-1]:6.3f} s, healthy {result.healthy[-1]:6.3f} s",
                      file=sys.stderr, flush=True)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            self.stop_services()
        return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=50, help="commits per mode (a) and (b)")
    parser.add_argument("--baseline-interval", type=float, default=30.0,
                        help="the polling interval to compare with, seconds (default 30)")
    parser.add_argument("--poll-commits", type=int, default=8,
                        help="commits for the measured polling mode (0: skip it)")
    parser.add_argument("--poll-interval", type=int, default=2,
                        help="--interval of the measured polling mode, seconds")
    add_json_flag(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fraisier-latency-"))
    started = time.monotonic()
    try:
        bench = Bench(work)
        runs = [bench.run("watch", args.commits, 30), bench.run("webhook", args.commits, 3600)]
        if args.poll_commits:
            runs.append(bench.run("poll", args.poll_commits, args.poll_interval))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = args.baseline_interval
    print(f"commit -> first provider action (phase=deploying) and -> healthy, "
          f"{time.monotonic() - started:.0f} s total")
    print(f"baseline: polling every {base:g} s waits U(0, {base:g}) s: "
          f"p50 {base / 2:g} s, p95 {base * 0.95:g} s")
    print(f"{'mode':34s} {'n':>3s} {'p50':>7s} {'p95':>7s} {'max':>7s} {'p50/int':>8s} "
          f"{'p50/poll p50':>12s}  healthy p50/p95")
    for run in runs:
        label = {"watch": "(a) local watch, --interval 30s",
                 "webhook": "(b) signed webhook, --interval 1h",
                 "poll": f"(c) poll only, --interval {run.interval_s:g}s"}[run.mode]
        ref = base if run.mode != "poll" else run.interval_s
        p50, p95 = pct(run.first_action, 0.50), pct(run.first_action, 0.95)
        print(f"{label:34s} {len(run.first_action):3d} {p50:7.3f} {p95:7.3f} "
              f"{max(run.first_action):7.3f} {p50 / ref:8.4f} {p50 / (ref / 2):12.4f}  "
              f"{pct(run.healthy, 0.5):.3f} / {pct(run.healthy, 0.95):.3f}")
    goal = all(pct(r.first_action, 0.5) <= 1.0 for r in runs if r.mode != "poll")
    print(f"goal p50 <= 1 s for (a) and (b): {'met' if goal else 'NOT met'}")
    if args.json:
        figures = []
        for run in runs:
            p50 = pct(run.first_action, 0.50)
            if run.mode == "poll":
                figures.append(Figure(
                    f"commit -> first action p50, poll only (--interval {run.interval_s:g}s)",
                    p50, "s", run.interval_s / 2, f"half the {run.interval_s:g} s interval",
                    "~1x (checks the baseline model)", None))
            else:
                figures.append(Figure(
                    f"commit -> first action p50, {run.mode} ({len(run.first_action)} commits)",
                    p50, "s", base / 2, f"poll every {base:g} s (expected p50)", "<= 1 s",
                    p50 <= 1.0))
        emit("latency", figures, commits=args.commits, baseline_interval=base,
             poll_commits=args.poll_commits, poll_interval=args.poll_interval)


if __name__ == "__main__":
    main()
