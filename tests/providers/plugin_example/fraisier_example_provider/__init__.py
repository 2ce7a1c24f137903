"""An example Fraisier provider, packaged on its own: Services run as processes of this machine.

The reconciler finds it through the ``reconciler.providers`` entry point in pyproject.toml, which
names ``INFO``: the provider's name, its factory (imported only when a Target uses it), what it
declares it can do, and its schema fragments (``schema/`` beside this file). Nothing outside this
folder names it.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.providers.contract import Capabilities
from reconciler.providers.registry import ProviderInfo, fragments_in

INFO = ProviderInfo(
    name="example",
    factory="fraisier_example_provider.provider:create_provider",
    # one instance (this machine): nothing cheaper than observe(); exec probes run here, which
    # is where the process is; Schedules are fired by the daemon
    capabilities=Capabilities(),
    schemas=fragments_in(Path(__file__).resolve().parent, "example",
                         "tests/providers/plugin_example/fraisier_example_provider/schema/"),
    description="runs each Service as a local process (an example plugin)",
)
