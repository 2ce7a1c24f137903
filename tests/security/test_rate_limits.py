"""Issue 16, problem 5: anonymous requests must not starve signed deliveries.

The per-provider rate limit used to be charged before the signature check: 6 unsigned requests
a second made every signed delivery get 429. Now unsigned traffic spends its own peer's budget
(checked before verification) and the provider's budget is spent by verified deliveries only.
The attacker and the git host are distinct loopback peers (127.0.0.2 and 127.0.0.1).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import need
from tests.security.httpfront import (
    GITHUB_SAMPLE,
    github_headers,
    github_push,
    metric,
    request,
    running,
)

ATTACKER = "127.0.0.2"


@pytest.mark.timeout(90)
def test_unsigned_flood_does_not_starve_signed_deliveries(tmp_path: Path) -> None:
    need(GITHUB_SAMPLE.is_file(), f"webhook sample {GITHUB_SAMPLE} not found")
    with running(tmp_path) as daemon:
        attacker_statuses: list[int] = []
        stop = threading.Event()

        def unsigned(n: int) -> int:
            body = github_push(1000 + n)
            headers = github_headers(body)
            del headers["X-Hub-Signature-256"]
            return request(daemon.port, "POST", "/webhooks/github", body, headers,
                           source=ATTACKER)[0]

        def attack() -> None:
            n = 0
            for _ in range(25):  # a burst first: more than any bucket holds
                attacker_statuses.append(unsigned(n))
                n += 1
            while not stop.is_set():  # then 6 a second
                attacker_statuses.append(unsigned(n))
                n += 1
                time.sleep(1 / 6)

        thread = threading.Thread(target=attack)
        thread.start()
        try:
            time.sleep(1.0)
            signed: list[tuple[int, str]] = []
            for n in range(5):
                body = github_push(n)
                headers = github_headers(body, f"aaaaaaaa-0000-4000-8000-00000000000{n}")
                status, raw = request(daemon.port, "POST", "/webhooks/github", body, headers)
                signed.append((status, json.loads(raw)["status"]))
                time.sleep(0.5)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert signed == [(202, "accepted")] * 5
        assert 401 in attacker_statuses and 429 in attacker_statuses, attacker_statuses
        assert metric(daemon.port, "reconciler_http_refused_total", 'reason="rate_limited"') > 0
        # one summary line per interval for the 429s, not a line each
        assert len(daemon.log_lines('"status": 429')) == 0
