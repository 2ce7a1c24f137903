"""Following a Coolify deployment once queued: queueing at most one per request even when the
answer is lost, finding the deployment Coolify queued for a duplicate request, polling it to a
terminal status within the deploy timeout (cancelling it after, when configured), and checking
that the application then carries the pinned revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from reconciler.backoff import equal_jitter

from .config import GIT_SHA
from .errors import (
    CoolifyDeployFailed,
    CoolifyDeployTimeout,
    CoolifyError,
    CoolifyNotFound,
    CoolifyUnavailable,
)
from .session import ACTIVE_STATUSES, TERMINAL_STATUSES, CoolifySession, parse_deployment_logs


class DeploymentFollower:
    """Queues deployments at most once and follows them to their end."""

    def __init__(self, session: CoolifySession) -> None:
        self.session = session

    async def queue_once(
        self,
        uuid: str,
        pin: str,
        image_mode: bool,
        send: Callable[[], Awaitable[str]],
        history: list[dict[str, Any]],
        *,
        rollback: bool,
        force: bool,
    ) -> str:
        """Send a request that queues a deployment, at most one deployment per call.

        The answer can be lost after Coolify queued it (a dropped connection, a timeout, a 5xx
        from a proxy). A forced deploy and a rollback are never skipped as duplicates, so
        sending again would queue a second build: first look for a deployment of this commit
        that appeared since ``history`` was read, and follow it.
        """
        api = await self.session.api()
        known = {str(d.get("deployment_uuid")) for d in history}
        attempt = 0
        while True:
            attempt += 1
            try:
                return await send()
            except CoolifyUnavailable as exc:
                if attempt >= self.session.settings.retry.attempts:
                    raise
                reason = str(exc)
            # Give a request the server is still handling time to land before looking.
            await asyncio.sleep(api.backoff(attempt))
            landed = [
                d for d in await self.session.deployments(uuid)
                if str(d.get("deployment_uuid")) not in known
                and d.get("status") in ACTIVE_STATUSES | TERMINAL_STATUSES
                and self.session.matches(d, pin, image_mode)
                and bool(d.get("rollback")) == rollback
                and (not force or bool(d.get("force_rebuild")))
            ]
            if landed:
                deployment_uuid = str(landed[-1]["deployment_uuid"])  # the oldest new one
                self.session.log.warning(
                    "coolify queued the deployment although its answer was lost; following it",
                    extra={"application": uuid, "deployment": deployment_uuid, "revision": pin},
                )
                return deployment_uuid
            self.session.log.warning(
                "coolify deploy request failed and queued nothing; sending it again",
                extra={"application": uuid, "revision": pin, "attempt": attempt,
                       "error": reason},
            )


    async def find_running(self, uuid: str, pin: str, image_mode: bool) -> str:
        history = await self.session.deployments(uuid)
        for wanted in (ACTIVE_STATUSES, TERMINAL_STATUSES):
            for deployment in history:
                if deployment.get("status") in wanted and self.session.matches(
                    deployment, pin, image_mode
                ):
                    return str(deployment["deployment_uuid"])
        raise CoolifyDeployFailed(
            f"Coolify said a deployment of {pin} was already queued for application {uuid}, "
            "but its deployment history shows none"
        )


    async def wait_for_deployment(
        self, uuid: str, deployment_uuid: str, pin: str, image_mode: bool, limit_s: float
    ) -> dict[str, Any]:
        api = await self.session.api()
        poller = await self.session.status_api()
        deadline = time.monotonic() + limit_s
        interval = self.session.settings.poll_interval
        last_status: str | None = None
        followed_fallback = False
        while True:
            try:
                deployment = await poller.json("GET", f"/deployments/{deployment_uuid}")
            except CoolifyNotFound:
                if followed_fallback:
                    raise
                # A duplicate answer we did not recognise: its uuid was never stored.
                followed_fallback = True
                deployment_uuid = await self.find_running(uuid, pin, image_mode)
                continue
            status = str(deployment.get("status") or "")
            if status != last_status:
                self.session.log.info(
                    "coolify deployment status",
                    extra={"application": uuid, "deployment": deployment_uuid, "status": status},
                )
                last_status = status
            if status in TERMINAL_STATUSES:
                if status != "finished":
                    if "logs" not in deployment and poller is not api:
                        # Polled without the log: read it once, with the token that may.
                        deployment = await api.json("GET", f"/deployments/{deployment_uuid}")
                    tail = [
                        api.redact(x) for x in parse_deployment_logs(deployment.get("logs"))[-5:]
                    ]
                    log_note = ("; last log lines: " + " | ".join(tail)) if tail else ""
                    raise CoolifyDeployFailed(
                        f"Coolify deployment {deployment_uuid} of application {uuid} ({pin}) ended "
                        f"{status}{log_note}"
                    )
                return dict(deployment)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._cancel_after_timeout(deployment_uuid)
                raise CoolifyDeployTimeout(
                    f"Coolify deployment {deployment_uuid} of application {uuid} ({pin}) still "
                    f"{status or 'unknown'} after {limit_s:g}s"
                    + ("; it was cancelled" if self.session.settings.cancel_on_timeout else "")
                )
            delay = equal_jitter(interval)
            await asyncio.sleep(min(delay, remaining))
            interval = min(interval * 1.5, self.session.settings.poll_max_interval)


    async def _cancel_after_timeout(self, deployment_uuid: str) -> None:
        if not self.session.settings.cancel_on_timeout:
            return
        api = await self.session.api()
        try:
            await api.json("POST", f"/deployments/{deployment_uuid}/cancel")
        except CoolifyError as exc:
            # It may have ended meanwhile (400 cannot be cancelled); the timeout is still reported.
            self.session.log.warning(
                "could not cancel the timed-out coolify deployment",
                extra={"deployment": deployment_uuid, "error": str(exc)},
            )


    async def verify_active(
        self, uuid: str, deployment: Mapping[str, Any], pin: str, image_mode: bool
    ) -> None:
        app = await self.session.application(uuid)
        pinned = self.session.pinned(app, image_mode)
        if pinned != pin:
            raise CoolifyDeployFailed(
                f"Coolify deployment {deployment.get('deployment_uuid')} finished but application "
                f"{uuid} now pins {pinned!r}, not {pin!r} (changed concurrently?)"
            )
        commit = str(deployment.get("commit") or "")
        if not image_mode and pin != "HEAD" and GIT_SHA.match(commit) and commit != pin:
            raise CoolifyDeployFailed(
                f"Coolify deployment {deployment.get('deployment_uuid')} built commit "
                f"{commit}, not {pin}"
            )
        self.session.log.info(
            "coolify deployment finished",
            extra={
                "application": uuid,
                "deployment": deployment.get("deployment_uuid"),
                "revision": pin,
                "status": app.get("status"),
            },
        )
