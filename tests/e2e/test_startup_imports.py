"""Start-up cost guard: a one-shot CLI command imports no module it does not use.

OpenTelemetry is needed only once tracing is set up (the daemon), asyncssh only for an ``ssh``
Target, aiohttp only for the daemon's HTTP server; aiodocker is no dependency any more (the
compose provider talks to dockerd's socket with h11), so no command loads it, a compose
`apply` included. Each of them costs tens to hundreds of milliseconds of every `reconciler` run
(docs/performance.md, the compose row), so a module-level import that brings one back fails
here. A `diff` or `apply` of a local config repository needs no GitPython (commits are read with
git itself; GitPython clones and fetches), and no one-shot command loads prometheus_client: only
the daemon serves metrics, elsewhere they are discarded. An `apply` whose files' records are
all in the spec cache parses no YAML, and one without a notification destination, sync window
or Schedule loads neither notifications nor time zones.
The commands run in a real interpreter, as users run them, and the test looks at that process's
``sys.modules`` when it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Fleet, free_port, http_get, service_yaml, wait_for
from tests.infra.testinfra import Infra
from tests.providers.compose.conftest import _remove_environment, document

pytestmark = pytest.mark.timeout(120)

HEAVY = ("opentelemetry", "asyncssh", "aiodocker", "aiohttp")
LOCAL_REPO = (*HEAVY, "git", "prometheus_client")  # GitPython's package; metrics (daemon only)
DIFF = LOCAL_REPO

# Runs `reconciler ARGS...` in this interpreter, then prints the exit code and the top-level
# packages of sys.modules (one JSON line on stdout, after the command's own output).
PROBE = """
import json, runpy, sys
sys.argv = ["reconciler", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("reconciler", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
top = sorted({m.split(".")[0] for m in sys.modules})
print("\\nPROBE " + json.dumps({"exit": code, "top": top, "all": sorted(sys.modules)}))
"""
# What a `diff` does not run: other commands' modules (imported when they run) and the rollout
# engine (planning is rollout/planning.py; the engine is imported for --live only).
NOT_FOR_DIFF = ("reconciler.cli.apply", "reconciler.cli.daemon", "reconciler.cli.status",
                "reconciler.rollout.engine", "reconciler.rollout.passes",
                "reconciler.notifications.destinations",
                "tarfile",  # unpacks a source folder; a diff reads the repository only
                # the provider contract (and the transports it names): a diff reads the
                # registry for the providers' schema fragments only
                "reconciler.providers.contract", "reconciler.transport")

# What an `apply` does not run when no file needs parsing (the spec cache holds every file's
# records), with no --notify and no Notifier, no sync window and no Schedule: parsing and
# validating YAML (PyYAML, fastjsonschema and the decimal module it loads, the loader's parsing
# modules, sops files), notifications, time zones and cron tables; nor gzip (the release tree
# comes from `git archive --format=tar`). Together ~35 ms of every `apply`'s start-up
# (docs/performance.md, session 11).
NOT_FOR_A_WARM_APPLY = ("yaml", "fastjsonschema", "decimal", "zoneinfo", "gzip",
                        "reconciler.spec.yaml_parse", "reconciler.spec.fast_path",
                        "reconciler.spec.sops", "reconciler.plan.cron_table",
                        "reconciler.notifications.destinations",
                        "reconciler.notifications.events", "reconciler.notifications.sink")


def loaded(*args: str, cwd: Path | None = None, every: bool = False) -> tuple[int, set[str]]:
    """The exit code and the top-level packages loaded (``every``: every module's name)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          timeout=90, cwd=cwd)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, proc.stdout + proc.stderr
    result = json.loads(line[-1].removeprefix("PROBE "))
    return int(result["exit"] or 0), set(result["all" if every else "top"])


def python_imports(code: str) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(proc.stdout.split())


def test_the_collector_is_off_during_start_up_only(tmp_path: Path) -> None:
    # `python -m reconciler` starts with the cyclic collector off (what start-up builds lives
    # on); the command itself runs with it on, as the daemon and `apply` need.
    probe = ("import gc, runpy, sys\n"
             "sys.argv = ['reconciler', '--state-dir', sys.argv[1], 'db', 'status']\n"
             "seen = []\n"
             "import reconciler.cli.db as db\n"
             "original = db.db_status.callback\n"
             "def spy(*args, **kwargs):\n"
             "    seen.append(gc.isenabled())\n"
             "    return original(*args, **kwargs)\n"
             "db.db_status.callback = spy\n"
             "try:\n"
             "    runpy.run_module('reconciler', run_name='__main__', alter_sys=True)\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('SEEN', seen)\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert "SEEN [True]" in proc.stdout, proc.stdout + proc.stderr


def test_import_cli_pulls_no_heavy_optional_module() -> None:
    assert python_imports("import reconciler.cli").isdisjoint(HEAVY)


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    # The checks above and below can fail: the same probe sees each module once it is used.
    assert "opentelemetry" in python_imports(
        "from reconciler.observe.tracing import setup_tracing\nsetup_tracing('t')")
    assert "asyncssh" in python_imports(
        "from reconciler.providers.bare_metal import SystemdSSHProvider")
    assert "prometheus_client" in python_imports(
        "from reconciler.observe import metrics\nmetrics.RECONCILE_TOTAL")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert "git" in python_imports(
        f"from reconciler.source.git import GitSource\nGitSource({str(tmp_path)!r}).repo")


def test_the_ssh_provider_loads_croniter_for_a_cron_schedule_only() -> None:
    # A Service's deploy over SSH converts no cron expression: croniter (and dateutil, ~5 ms)
    # is imported by the conversion of a Schedule's cron, not with the provider.
    assert "croniter" not in python_imports("import reconciler.providers.bare_metal.remote")
    assert "croniter" in python_imports(
        "from reconciler.providers.bare_metal.systemd import on_calendar\n"
        "on_calendar('0 3 * * *')")


def test_help_and_validate_pull_no_heavy_module() -> None:
    # Neither runs an event loop: not even asyncio (~50 ms) is imported.
    root = Path(__file__).resolve().parents[2]
    code, modules = loaded("--help")
    assert code == 0
    assert modules.isdisjoint({*HEAVY, "asyncio"}), sorted(modules & {*HEAVY, "asyncio"})
    code, modules = loaded("--log-format", "json", "validate", str(root / "examples" / "fleet"))
    assert code == 0
    assert modules.isdisjoint({*HEAVY, "asyncio"}), sorted(modules & {*HEAVY, "asyncio"})


def test_apply_of_a_local_fleet_pulls_no_heavy_module(fleet: Fleet) -> None:
    port = free_port()
    fleet.write("api.yaml", service_yaml("api", port))
    fleet.commit()
    state = ["--state-dir", str(fleet.state), "--log-format", "json"]
    code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo)
    assert code == 0
    assert http_get(port)[0] == 200  # it did deploy, through the bare-metal provider
    assert "reconciler" in modules
    assert modules.isdisjoint(LOCAL_REPO), sorted(modules & set(LOCAL_REPO))
    code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo)  # no-op pass
    assert code == 0
    assert modules.isdisjoint(LOCAL_REPO), sorted(modules & set(LOCAL_REPO))
    code, modules = loaded(*state, "diff", *fleet.repo_args(), cwd=fleet.repo)
    assert code == 0  # in sync
    assert "reconciler" in modules
    assert modules.isdisjoint(DIFF), sorted(modules & set(DIFF))
    fleet.write("api.yaml", service_yaml("api", port, greeting="changed"))
    fleet.commit()
    code, modules = loaded(*state, "diff", *fleet.repo_args(), cwd=fleet.repo, every=True)
    assert code == 1  # a change pending: its file read from git, its plan shown
    assert {m.split(".")[0] for m in modules}.isdisjoint(DIFF), sorted(modules & set(DIFF))
    assert "reconciler.rollout.planning" in modules  # the probe sees submodules
    assert modules.isdisjoint(NOT_FOR_DIFF), sorted(modules & set(NOT_FOR_DIFF))


def test_apply_of_a_compose_service_pulls_no_docker_client_library(
    fleet: Fleet, docker_engine: Infra, compose_cli: list[str], tiny_image: str
) -> None:
    # The engine is read with h11 on the unix socket: a compose `apply` that deploys, waits for
    # Docker's health check and records loads neither aiodocker nor aiohttp (0.3-0.75 s of every
    # such run when it did), nor httpx (its import loads rich and pygments), nor httpcore and
    # anyio (its pool, which the engine client used before).
    unused = {*HEAVY, "httpx", "httpcore", "anyio", "rich", "pygments", "prometheus_client"}
    environment = f"i{uuid.uuid4().hex[:8]}"
    port = free_port()
    docker = {"host": docker_engine.docker_host, "composeCommand": compose_cli}
    fleet.write("target.yaml", document("Target", "docker", environment,
                                        {"provider": "compose", "docker": docker}))
    check = ["wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{port}/health"]
    compose = {"image": tiny_image, "pullPolicy": "never", "networkMode": "host",
               "command": ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"],
               "healthcheck": {"test": check, "interval": "200ms", "timeout": "2s", "retries": 3},
               "waitTimeout": "30s"}
    fleet.write("web.yaml", document("Service", "web", environment,
                                     {"target": "docker", "compose": compose}))
    fleet.commit()
    state = ["--state-dir", str(fleet.state), "--log-format", "json"]
    try:
        code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo)
        assert code == 0
        assert wait_for(lambda: http_get(port, "/health")[0] == 200)  # it deployed
        assert "reconciler" in modules
        assert modules.isdisjoint(unused), sorted(modules & unused)
        code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo)  # observes
        assert code == 0
        assert modules.isdisjoint(unused), sorted(modules & unused)
    finally:
        _remove_environment(docker_engine, environment)


def test_a_warm_apply_parses_no_yaml_and_loads_no_notifications(fleet: Fleet) -> None:
    # The bare-metal bench's case (bench/bare_metal.py): one Service with an exec probe, and a
    # change of its source folder only, so its file's records come from the spec cache.
    port = free_port()
    check = ("import sys, urllib.request; "
             f"urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=1)")
    fleet.write("api.yaml", service_yaml("api", port).replace(
        f'    http: {{url: "http://{{host}}:{port}/healthz"}}\n',
        f"    exec: {{command: [{sys.executable}, -c, {json.dumps(check)}]}}\n"))
    fleet.commit()
    state = ["--state-dir", str(fleet.state), "--log-format", "json"]
    code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo, every=True)
    assert code == 0
    assert {"yaml", "fastjsonschema"} <= modules  # the probe sees them: a cold load parses
    (fleet.repo / "app" / "VERSION").write_text("2\n")
    fleet.commit()
    code, modules = loaded(*state, "apply", *fleet.repo_args(), cwd=fleet.repo, every=True)
    assert code == 0
    assert "reconciler.rollout.engine" in modules
    # it deployed the new release, from the cache's records
    assert (fleet.root / "default" / "api" / "current" / "VERSION").read_text() == "2\n"
    assert http_get(port)[0] == 200
    assert modules.isdisjoint(NOT_FOR_A_WARM_APPLY), sorted(modules & set(NOT_FOR_A_WARM_APPLY))
    code, modules = loaded(*state, "apply", "--no-live", *fleet.repo_args(), cwd=fleet.repo,
                           every=True)  # nothing to do
    assert code == 0
    assert modules.isdisjoint(NOT_FOR_A_WARM_APPLY), sorted(modules & set(NOT_FOR_A_WARM_APPLY))
