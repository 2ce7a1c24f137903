"""Notifications at fleet scale (docs/monitoring.md): messages per destination for a pass over
1,000 resources, the time from a pass's outcome to the message's arrival, and what a hanging
or failing destination costs a pass.

The 1,000 Services run on the fake provider of the tests (tests/providers/fake.py, written
against providers/contract.py): real engine, real SQLite store, real Apprise and real loopback
receivers (an HTTP server for json:// and ntfy://, aiosmtpd for mailto://); only the hosts are
simulated, which would otherwise dominate the time of a 1,000-resource pass.

    .venv/bin/python bench/notifications.py [--resources 1000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _figures import Figure, add_json_flag, emit  # noqa: E402

from reconciler.notifications.destinations import operator_destinations  # noqa: E402
from reconciler.notifications.settings import DeliveryLimits  # noqa: E402
from reconciler.notifications.sink import Notifications  # noqa: E402
from reconciler.observe.metrics import REGISTRY  # noqa: E402
from reconciler.providers import registry  # noqa: E402
from reconciler.rollout.engine import Reconciler  # noqa: E402
from reconciler.spec.loader import files_from_directory, load_desired_state  # noqa: E402
from reconciler.spec.validate import reload_schemas  # noqa: E402
from reconciler.state import default_db_url, open_store  # noqa: E402
from tests.notifications.receivers import Mailbox, Receiver, smtp_server  # noqa: E402
from tests.providers.fake import World, fake_info  # noqa: E402


def write_fleet(root: Path, n: int, bad: str | None = None, version: int = 1) -> None:
    docs = [{"apiVersion": "fraisier.dev/v1", "kind": "Target",
             "metadata": {"name": "fleet", "environment": "prod"},
             "spec": {"provider": "fake", "instances": 1}}]
    for i in range(n):
        name = f"svc-{i:04d}"
        health = "unhealthy" if name == bad else "healthy"
        docs.append({"apiVersion": "fraisier.dev/v1", "kind": "Service",
                     "metadata": {"name": name, "environment": "prod"},
                     "spec": {"target": "fleet", "command": ["app", name],
                              "env": {"V": str(version)}, "fake": {"health": health}}})
    (root / "fleet.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))


async def run(n: int) -> list[Figure]:
    world = World()
    registry.register(fake_info(world))
    reload_schemas()
    figures: list[Figure] = []
    http = await Receiver().start()
    box = Mailbox()
    smtp = smtp_server(box)
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-"))
    root, state = tmp / "fleet", tmp / "state"
    root.mkdir()
    store = open_store(default_db_url(state))
    await store.migrate()
    # the fake provider's deploys are instant; the rest of a pass (journal, health gate) is real
    engine = Reconciler(store, state_dir=state, concurrency=64)
    urls = [f"json://127.0.0.1:{http.port}/ops", f"ntfy://127.0.0.1:{http.port}/fleet",
            f"mailto://127.0.0.1:{smtp.port}?from=f@example.org&to=ops@example.org"]
    dests = operator_destinations(urls)
    # "succeeded" asked for, so a pass deploying everything has something to say
    dests = [type(d)(**{**d.__dict__, "events": d.events | {"succeeded"}}) for d in dests]  # type: ignore[arg-type]
    notifications = Notifications(dests, state_dir=state, limits=DeliveryLimits())
    notifications.start()

    def messages() -> dict[str, int]:
        return {"json": len(http.of("/ops")), "ntfy": len([h for h in http.hits
                                                           if h.path == "/"]),
                "email": len(box.messages)}

    try:
        write_fleet(root, n)
        desired = load_desired_state(files_from_directory(root), commit="1" * 40)
        started = time.monotonic()
        result = await engine.reconcile(desired)
        print(f"pass deploying {n}: {time.monotonic() - started:.1f}s, "
              f"{sum(o.result == 'succeeded' for o in result.outcomes)} succeeded")
        notifications.pass_finished(result, desired)
        await asyncio.wait_for(notifications.intake.join(), 30)
        await notifications.deliveries.drain(30)
        first = messages()
        print("pass deploying", n, "-> messages per destination:", first)
        figures.append(Figure(f"messages per destination, pass deploying {n}",
                              max(first.values()), "", goal="1 each",
                              met=set(first.values()) == {1}))

        write_fleet(root, n, bad=f"svc-{n // 2:04d}", version=2)  # 1 of n rolls back, n-1 update
        desired = load_desired_state(files_from_directory(root), commit="2" * 40)
        http.hits.clear()
        box.messages.clear()
        result = await engine.reconcile(desired)
        rolled = [o for o in result.outcomes if o.result == "rolled_back"]
        print(f"pass: {len(rolled)} rolled back of {len(result.outcomes)}")
        outcome = time.monotonic()
        notifications.pass_finished(result, desired)
        await asyncio.wait_for(notifications.intake.join(), 30)
        await notifications.deliveries.drain(30)
        latency = time.monotonic() - outcome
        second = messages()
        print("pass rolling back 1 of", n, "-> messages per destination:", second,
              f"all arrived {latency * 1000:.0f} ms after the outcome")
        figures.append(Figure(f"messages per destination, 1 of {n} rolled back",
                              max(second.values()), "", goal="1 each",
                              met=set(second.values()) == {1}))
        figures.append(Figure("outcome -> last message arrived (json, ntfy, email)",
                              latency, "s", goal="<= 2 s", met=latency <= 2.0))

        # a destination that hangs and one that answers 500
        hang = await Receiver(hang=60.0).start()
        failing = await Receiver(status=500).start()
        bad = operator_destinations([f"json://127.0.0.1:{hang.port}/hang?rto=2",
                                     f"json://127.0.0.1:{failing.port}/err"])
        limits = DeliveryLimits(attempts=4, backoff_s=0.2, timeout_s=3.0)
        slow = Notifications(bad, state_dir=tmp / "state2", limits=limits)
        slow.start()
        try:
            write_fleet(root, n, bad=f"svc-{n // 2:04d}", version=3)
            desired = load_desired_state(files_from_directory(root), commit="3" * 40)
            t0 = time.monotonic()
            result = await engine.reconcile(desired)
            pass_s = time.monotonic() - t0
            t1 = time.perf_counter()
            slow.pass_finished(result, desired)
            call_s = time.perf_counter() - t1
            # the next pass runs while both destinations are still failing
            write_fleet(root, n, bad=f"svc-{n // 2:04d}", version=4)
            desired = load_desired_state(files_from_directory(root), commit="4" * 40)
            t2 = time.monotonic()
            result = await engine.reconcile(desired)
            pass_during_s = time.monotonic() - t2
            slow.pass_finished(result, desired)
            t3 = time.monotonic()
            await slow.deliveries.drain(120)
            gave_up = time.monotonic() - t3
            sent = sum(REGISTRY.get_sample_value("reconciler_notifications_total", {
                "destination": bad[1].label, "event": kind, "result": "failed"}) or 0
                for kind in ("rolled_back", "succeeded"))
            print(f"pass {pass_s:.2f}s before, {pass_during_s:.2f}s while a destination hangs "
                  f"and one answers 500; sink call {call_s * 1e6:.0f} µs; "
                  f"500-destination attempts: {len(failing.hits)} for {sent:g} messages, "
                  f"hanging: {len(hang.hits)}; queues empty {gave_up:.1f}s later")
            figures.append(Figure("pass while a destination hangs / answers 500",
                                  pass_during_s, "s", baseline=pass_s,
                                  baseline_label="same pass, destinations idle",
                                  goal="ratio <= 1.2", met=pass_during_s <= pass_s * 1.2))
            figures.append(Figure("sink call at the end of a pass", call_s * 1000, "ms",
                                  goal="< 50 ms", met=call_s < 0.05))
            figures.append(Figure("attempts per message, answering 500",
                                  len(failing.hits) / max(sent, 1), "", goal="= attempts (4)",
                                  met=sent > 0 and len(failing.hits) == sent * limits.attempts))
        finally:
            await slow.close(drain_s=0.1)
            await hang.stop()
            await failing.stop()
    finally:
        await notifications.close()
        await engine.close()
        await store.close()
        smtp.stop()
        await http.stop()
        registry.unregister("fake")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resources", type=int, default=1000)
    add_json_flag(parser)
    args = parser.parse_args()
    figures = asyncio.run(run(args.resources))
    for f in figures:
        print(f"{f.figure}: {f.measured:.3g} {f.unit} (goal {f.goal}: "
              f"{'met' if f.met else 'NOT met'})")
    emit("notifications", figures, resources=args.resources) if args.json else None


if __name__ == "__main__":
    main()
