"""Issue 16, problem 4: a captured signed delivery must never be accepted twice.

The delivery-id headers are not covered by the signature, so replay protection is keyed on what
is: the body. Real daemon, real sockets, the real GitHub and GitLab payload samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import need
from tests.security.httpfront import (
    GITHUB_SAMPLE,
    GITLAB_TOKEN,
    github_headers,
    github_push,
    gitlab_push,
    request,
    running,
)

pytestmark = pytest.mark.timeout(90)


def status_of(answer: tuple[int, bytes]) -> tuple[int, str]:
    return answer[0], str(json.loads(answer[1]).get("status"))


def test_changed_removed_or_recased_delivery_id_is_still_a_replay(tmp_path: Path) -> None:
    need(GITHUB_SAMPLE.is_file(), f"webhook sample {GITHUB_SAMPLE} not found")
    body = github_push(1)
    delivery = "5f1c2d3e-0a1b-11ef-9a2b-0242ac120002"
    with running(tmp_path) as daemon:
        def post(headers: dict[str, str]) -> tuple[int, str]:
            return status_of(request(daemon.port, "POST", "/webhooks/github", body, headers))

        assert post(github_headers(body, delivery)) == (202, "accepted")
        replays = {
            "same id": github_headers(body, delivery),
            "changed id": github_headers(body, "5f1c2d3e-0a1b-11ef-9a2b-0242ac129999"),
            "no id": github_headers(body, None),
            "upper-cased id": github_headers(body, delivery.upper()),
        }
        answers = {name: post(headers) for name, headers in replays.items()}
        assert answers == dict.fromkeys(replays, (200, "duplicate"))
        # a new delivery (another body) is still accepted
        other = github_push(2)
        assert status_of(request(daemon.port, "POST", "/webhooks/github", other,
                                 github_headers(other, delivery))) == (202, "accepted")


def test_gitlab_delivery_without_idempotency_key_is_deduplicated(tmp_path: Path) -> None:
    body = gitlab_push(1)
    headers = {"Content-Type": "application/json", "X-Gitlab-Event": "Push Hook",
               "X-Gitlab-Token": GITLAB_TOKEN}
    with running(tmp_path) as daemon:
        first = request(daemon.port, "POST", "/webhooks/gitlab", body, headers)
        again = request(daemon.port, "POST", "/webhooks/gitlab", body, headers)
        assert status_of(first) == (202, "accepted"), first
        assert status_of(again) == (200, "duplicate"), again
