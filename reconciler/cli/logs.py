"""`reconciler logs`: the last lines of a resource's output on each instance, through its
provider, optionally followed (only new lines printed)."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from reconciler.cli.common import (
    Options,
    find_key,
    handles_errors,
    open_store,
    run,
    with_repo,
)
from reconciler.errors import NotFound


@click.command()
@click.argument("name")
@click.option("-n", "--lines", default=100, show_default=True)
@click.option("--host", "hosts", multiple=True, help="Only this instance/host (repeatable).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@with_repo
@click.pass_obj
@handles_errors
def logs(opts: Options, name: str, lines: int, hosts: tuple[str, ...], follow: bool,
         **_repo: Any) -> None:
    """The last lines of a resource's output on each instance (journal, container, log file)."""

    async def main() -> None:
        from reconciler.rollout.engine import Reconciler, resource_from_document, variants_of

        store = await open_store(opts)
        engine = Reconciler(store, state_dir=opts.resolved_state_dir())
        try:
            key = await find_key(store, name)
            record = await store.get_resource(key)
            assert record is not None
            resource = resource_from_document(key, record.applied_spec or record.desired_spec
                                              or {})
            target = await engine.target_from_store(resource)
            if target is None:
                raise NotFound(f"{key}: its Target is not recorded")
            provider = engine.provider_for(target)
            # blue-green / weighted canary slots run under their own names: show each
            instances = [(variant, i) for variant in variants_of(resource)
                         for i in await provider.instances(variant)
                         if not hosts or i.id in hosts]
            if hosts and not instances:
                raise NotFound(f"{key}: no instance named {', '.join(hosts)}")
            import asyncio

            seen: dict[tuple[str, str], list[str]] = {}
            while True:
                for variant, instance in instances:
                    text = await provider.logs(variant, instance, lines)
                    slot = variant.labels.get("fraisier.dev/slot")
                    label = f"{instance.id} {slot}" if slot else instance.id
                    for line in _new_lines(seen.get((variant.name, instance.id), []), text):
                        click.echo(f"[{label}] {line}")
                    seen[(variant.name, instance.id)] = text
                if not follow:
                    return
                await asyncio.sleep(1.0)
        finally:
            await engine.close()
            await store.close()

    with contextlib.suppress(KeyboardInterrupt):
        run(main())


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of ``after`` not already printed: the longest tail of ``before`` that starts
    ``after`` is skipped (both are tails of one growing log)."""
    if not before:
        return after
    for start in range(len(before)):
        overlap = before[start:]
        if after[:len(overlap)] == overlap:
            return after[len(overlap):]
    return after
