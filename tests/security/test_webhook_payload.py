"""Issue 16, problem 9 (webhooks): a signed body the receiver cannot read is a 400, never a 500.

A form-encoded body with more than 16 fields made ``parse_qs`` raise and the daemon answer 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers import need
from tests.security.httpfront import GITHUB_SAMPLE, github_headers, github_push, request, running

pytestmark = pytest.mark.timeout(90)

FORM = "application/x-www-form-urlencoded"


def test_unreadable_signed_bodies_are_400(tmp_path: Path) -> None:
    need(GITHUB_SAMPLE.is_file(), f"webhook sample {GITHUB_SAMPLE} not found")
    payload = github_push(1).decode()
    bodies = {
        "form with 17 fields": (urlencode([("payload", payload)]
                                          + [(f"f{i}", "x") for i in range(16)]).encode(), FORM),
        "integer past the digit limit": (b'{"ref": ' + b"9" * 5000 + b"}", "application/json"),
        "unclosed IPv6 bracket in a repository URL": (
            json.dumps({**json.loads(payload), "repository": {
                **json.loads(payload)["repository"], "clone_url": "http://[::1/x.git"}}).encode(),
            "application/json"),
    }
    with running(tmp_path) as daemon:
        answers = {}
        for name, (body, content_type) in bodies.items():
            status, raw = request(daemon.port, "POST", "/webhooks/github", body,
                                  github_headers(body, content_type=content_type))
            answers[name] = status
        # the bad clone URL is skipped when matching; the payload's web URL still matches
        assert answers == {"form with 17 fields": 400, "integer past the digit limit": 400,
                           "unclosed IPv6 bracket in a repository URL": 202}, answers
        # and a form body of 16 fields or fewer is read
        body = urlencode([("payload", payload)]).encode()
        status, raw = request(daemon.port, "POST", "/webhooks/github", body,
                              github_headers(body, content_type=FORM))
        assert (status, json.loads(raw)["status"]) == (202, "accepted")
