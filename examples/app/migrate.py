"""Demo Job: pretend to migrate a schema, idempotently, into a file beside the release."""

import os
import pathlib

state = pathlib.Path(os.environ.get("DEMO_DATA", "/tmp/fraisier-demo-data"))
state.mkdir(parents=True, exist_ok=True)
marker = state / "schema_version"
target = os.environ.get("SCHEMA_VERSION", "1")
current = marker.read_text().strip() if marker.exists() else "0"
print(f"schema at version {current}, wanted {target}")
if current != target:
    marker.write_text(target + "\n")
    print(f"migrated schema {current} -> {target}")
