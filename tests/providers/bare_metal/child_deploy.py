"""Run as a separate Python process: deploy the tiny app with a fresh provider, then exit.

Used by the adoption test: whatever this process starts must outlive it and be found again by
another provider instance in another process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from tests.providers.bare_metal.conftest import AppSources, make_resource, new_provider


async def main(args: dict[str, str]) -> None:
    provider = new_provider(Path(args["state_dir"]))
    resource = make_resource("adopted", json.loads(args["spec"]))
    sources = AppSources(Path(args["sources"]))
    release = sources.release(resource, args["revision"], env={"GREETING": "from-child"})
    instance = (await provider.instances(resource))[0]
    await provider.deploy(release, instance)
    state = (await provider.observe(resource))[0]
    print(json.dumps({"pid": state.facts["pid"], "running": state.running}), flush=True)
    await provider.close()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
