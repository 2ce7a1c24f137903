"""Fixtures for the real integration targets stood up by tests/infra/up.sh.

Everything here skips with a clear reason when the infrastructure is missing, or fails when
RECONCILER_REQUIRE_INTEGRATION=1 (set by .ci/run). Pick the compose flavour with
``--compose=v1|v2`` or FRAISIER_COMPOSE (default v2).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import need
from tests.infra.testinfra import UP_HINT, Infra, InfraHost, lease_all, lease_any, load
from tests.state.private_postgresql import PrivatePostgreSQL, installed


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--compose",
        choices=("v1", "v2"),
        default=os.environ.get("FRAISIER_COMPOSE", "v2"),
        help="compose implementation for compose tests (env FRAISIER_COMPOSE; default v2)",
    )


# -- the integration marker ----------------------------------------------------------------------
# A test needs a real service exactly when it uses one of these fixtures (directly or through
# another fixture), or is parametrised onto a database server: it gets the `integration` marker
# from that, so `pytest -m "not integration"` runs on a machine with no service at all.
SERVICE_FIXTURES = frozenset({
    "testinfra", "testhosts", "ssh_host", "ssh_hosts", "docker_engine", "docker_cli",
    "tiny_image", "compose_cli", "postgresql_url", "mysql_url", "postgresql_server",
    "mysql_server", "private_postgresql",
    "server_backend", "server_url", "server_db",
})
SERVER_BACKENDS = frozenset({"postgresql", "mysql"})
SERVICE_PARAMS = ("backend", "server_backend", "server_db")


def needs_service(item: pytest.Item) -> bool:
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(params.get(name) in SERVER_BACKENDS for name in SERVICE_PARAMS)


# -- parallel runs (`make test` runs the suite in pytest-xdist workers, --dist loadgroup) ---------
# Tests on the systemd+sshd test hosts run one after another in one worker: a test that leases
# every host would otherwise wait behind the other workers' single-host leases (and its wait
# counts against its timeout). Tests sharing an expensive module or session fixture (built once
# per worker) run in one worker too, so it is built once. Everything else is spread test by test.
HOST_FIXTURES = frozenset({"testhosts", "ssh_host", "ssh_hosts"})
SHARED_SETUP_FIXTURES = {
    "wheels": "wheels",  # tests/deploy: the dependency wheelhouse, the project wheel
    "image": "wheels",  # tests/deploy/test_container_image: docker build of the Dockerfile
    "prometheus": "prometheus",  # tests/rollout/test_analysis: a real Prometheus server
}
IN_WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))


def xdist_group(item: pytest.Item) -> str | None:
    """The worker group of a test (None: any worker)."""
    names = set(getattr(item, "fixturenames", ()))
    if HOST_FIXTURES & names:
        return "testhosts"
    for fixture, group in SHARED_SETUP_FIXTURES.items():
        if fixture in names:
            return group
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker, and before xdist reads groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if needs_service(item):
            item.add_marker(pytest.mark.integration)
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A worker hands its chaos trials (tests/chaos/report.py) to the controller."""
    if IN_WORKER:
        from tests.chaos.report import to_wire, trials

        session.config.workeroutput["chaos_trials"] = to_wire(trials())  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)  # an xdist hook: called in the controller of a parallel run
def pytest_testnodedown(node: Any, error: object) -> None:
    if error is None:
        from tests.chaos.report import merge

        merge(node.workeroutput.get("chaos_trials", []))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The chaos report, when any test recorded a trial (not per worker: the controller's)."""
    from tests.chaos.report import render, trials, write_report

    if IN_WORKER or not trials():
        return
    path = write_report()
    terminalreporter.section("chaos report")
    for line in render().splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {path})")


def pytest_configure(config: pytest.Config) -> None:
    """Before collection (test modules read the schemas at import): validation in this process
    knows the built-in providers (and those a test registers),
    not whatever plugins the venv has installed: expected messages list the same providers on
    every machine. The CLI run as a new process (the plugin test) sees installed plugins."""
    from reconciler.providers.registry import provider_schemas
    from reconciler.spec.provider_schemas import use_provider_schemas
    from reconciler.spec.validate import reload_schemas

    use_provider_schemas(lambda: provider_schemas(plugins=False))
    reload_schemas()


def _server_url(backend: str, tmp_path: Path) -> Iterator[str]:
    from tests.state.backends import available, throwaway_url

    ok, reason = available(backend)
    need(ok, reason)
    with throwaway_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
def postgresql_url(tmp_path: Path) -> Iterator[str]:
    """A fresh database on the PostgreSQL server (127.0.0.1:5432), dropped afterwards."""
    yield from _server_url("postgresql", tmp_path)


@pytest.fixture
def mysql_url(tmp_path: Path) -> Iterator[str]:
    """A fresh database on the MariaDB/MySQL server (127.0.0.1:3306), dropped afterwards."""
    yield from _server_url("mysql", tmp_path)


@pytest.fixture
def private_postgresql() -> Iterator[PrivatePostgreSQL]:
    """A running PostgreSQL server of this test's own, with an empty database at ``.url``: for
    the tests that stop and start the server (tests/state/private_postgresql.py says why)."""
    from tests.e2e.conftest import free_port

    ok, reason = installed()
    need(ok, reason)
    server = PrivatePostgreSQL(free_port())
    try:
        server.start()
        server.create_database()
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def testinfra() -> Infra:
    """env.json written by tests/infra/up.sh."""
    infra, reason = load()
    need(infra is not None, reason)
    assert infra is not None
    return infra


@pytest.fixture(scope="session")
def testhosts(testinfra: Infra) -> tuple[InfraHost, ...]:
    """Descriptions of every test host (not leased, not reset: read-only use)."""
    down = [f"{h.name} (127.0.0.1:{h.port})" for h in testinfra.hosts if not h.tcp_open()]
    need(bool(testinfra.hosts) and not down, f"test hosts not answering SSH: {down}; {UP_HINT}")
    return testinfra.hosts


@pytest.fixture
def ssh_host(testhosts: tuple[InfraHost, ...]) -> Iterator[InfraHost]:
    """One test host, leased for this test and reset (no fraisier-* units, no /srv/fraisier)."""
    with lease_any(testhosts) as host:
        host.reset()
        yield host


@pytest.fixture
def ssh_hosts(testhosts: tuple[InfraHost, ...]) -> Iterator[tuple[InfraHost, ...]]:
    """Every test host, leased for this test and reset."""
    with lease_all(testhosts):
        for host in testhosts:
            host.reset()
        yield testhosts


@pytest.fixture(scope="session")
def docker_engine(testinfra: Infra) -> Infra:
    """The Docker engine answers on its socket (returns the infra description)."""
    need(testinfra.docker_ok(), f"dockerd not answering on {testinfra.docker_host}; {UP_HINT}")
    return testinfra


class DockerCLI:
    """The docker CLI on the test engine: what a test does or checks by hand, independent of the
    provider's own engine client."""

    def __init__(self, infra: Infra) -> None:
        self.argv = [infra.docker_cli]
        self.env = {**os.environ, "DOCKER_HOST": infra.docker_host}

    def __call__(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=60,
                              env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}")
        return proc.stdout


@pytest.fixture
def docker_cli(docker_engine: Infra) -> DockerCLI:
    """Runs ``docker ARGS...`` on the test engine; its stdout (AssertionError if it fails)."""
    return DockerCLI(docker_engine)


@pytest.fixture(scope="session")
def tiny_image(docker_engine: Infra) -> str:
    """Name of the local busybox image (sh, httpd, wget; use compose `init: true`)."""
    name = docker_engine.tiny_image
    need(docker_engine.image_exists(name), f"image {name} missing; {UP_HINT}")
    return name


@pytest.fixture(scope="session")
def compose_version(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--compose"))


@pytest.fixture(scope="session")
def compose_cli(docker_engine: Infra, compose_version: str) -> list[str]:
    """argv prefix of the selected compose (e.g. ``[path]`` + ``["-f", file, "up", "-d"]``)."""
    argv = docker_engine.compose_argv(compose_version)
    need(argv is not None, f"compose {compose_version} not installed; {UP_HINT}")
    assert argv is not None
    return argv
