"""Jobs, Schedules, calendars, quoting and host keys on real systemd+sshd test hosts."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter

from reconciler.errors import ProviderError
from reconciler.providers import ProviderContext, Release
from reconciler.providers.bare_metal import SystemdSSHProvider, create_provider
from reconciler.providers.bare_metal.remote import DEFAULT_ROOT
from reconciler.providers.bare_metal.systemd import on_calendar
from reconciler.providers.bare_metal.unit_text import exec_argv
from reconciler.spec.cron import schedule_errors
from reconciler.transport.ssh import SSHHostKeyError
from tests.providers.bare_metal.conftest import (
    ENV,
    FolderExport,
    host_app_spec,
    make_resource,
    ssh_target_resource,
)

JOB_PY = """\
import json, os, sys
print("job says", os.environ.get("MSG", ""), flush=True)
print("ARGV", json.dumps(sys.argv[1:]), flush=True)
print("ENV", json.dumps(os.environ.get("TRICKY", "")), flush=True)
if os.environ.get("MARK"):
    with open(os.environ["MARK"], "a") as fh:
        fh.write("ran\\n")
sys.exit(int(os.environ.get("CODE", "0")))
"""

# Arguments that would each do something if any shell (or systemd's own expansion) saw them.
TRICKY = [
    "; touch /tmp/fraisier-pwned-1",
    "$(touch /tmp/fraisier-pwned-2)",
    "`touch /tmp/fraisier-pwned-3`",
    "&& touch /tmp/fraisier-pwned-4 ||",
    "| touch /tmp/fraisier-pwned-5",
    "> /tmp/fraisier-pwned-6",
    "%n %h %% %",
    "$HOME ${HOME} $$",
    "a'b\"c\\d\\",
    "line\nbreak\ttab",
    "*",
    "",
    " leading and trailing ",
    ";",
]


def job_export(tmp_path: Path, revision: str) -> FolderExport:
    folder = tmp_path / "job-src" / revision
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.py").write_text(JOB_PY)
    return FolderExport(folder)


def job_release(tmp_path: Path, resource: Any, revision: str = "r1",
                env: dict[str, str] | None = None) -> Release:
    return Release(resource=resource, revision=revision, config_commit="c0ffee",
                   export=job_export(tmp_path, revision), env=dict(env or {}))


def job_spec(**extra: Any) -> dict[str, Any]:
    return {"target": "hosts", "command": ["python3", "job.py"], "timeout": "30s", **extra}


@pytest.mark.timeout(120)
async def test_job_success_and_failure(ssh_provider: SystemdSSHProvider, tmp_path: Path,
                                       ssh_hosts: Any) -> None:
    job = make_resource("migrate", job_spec(), kind="Job")
    instances = await ssh_provider.instances(job)
    ok = await ssh_provider.run(job_release(tmp_path, job, env={"MSG": "hi"}), instances[0])
    assert ok.exit_code == 0
    assert "job says hi" in ok.output
    failing = job_release(tmp_path, job, "r2", env={"MSG": "bad", "CODE": "3"})
    result = await ssh_provider.run(failing, instances[1])
    assert result.exit_code == 3
    assert "job says bad" in result.output
    assert "job says hi" not in result.output  # only this run's journal lines
    unit = f"fraisier-{ENV}_migrate.job.service"
    host2 = ssh_hosts[1]
    text = host2.sh(f"cat /etc/systemd/system/{unit}")
    assert "Type=oneshot" in text and "TimeoutStartSec=30s" in text
    states = {s.instance.id: s for s in await ssh_provider.observe(job)}
    assert states[host2.name].revision == "r2"
    assert states[host2.name].facts["exec_main_status"] == "3"
    assert not states[host2.name].running


@pytest.mark.timeout(120)
async def test_job_timeout_is_killed(ssh_provider: SystemdSSHProvider, tmp_path: Path) -> None:
    job = make_resource("slow", job_spec(command=["sleep", "30"], timeout="1s"), kind="Job")
    instance = (await ssh_provider.instances(job))[0]
    started = time.monotonic()
    result = await ssh_provider.run(job_release(tmp_path, job), instance)
    assert result.exit_code == 124
    assert time.monotonic() - started < 15


@pytest.mark.timeout(120)
async def test_shell_metacharacters_pass_through_verbatim(
        ssh_provider: SystemdSSHProvider, tmp_path: Path, ssh_hosts: Any) -> None:
    tricky_env = "$(touch /tmp/fraisier-pwned-7) `touch /tmp/fraisier-pwned-8` \"q\" \\ %h"
    job = make_resource("quoting", job_spec(command=["python3", "job.py", *TRICKY]), kind="Job")
    instance = (await ssh_provider.instances(job))[0]
    result = await ssh_provider.run(
        job_release(tmp_path, job, env={"TRICKY": tricky_env}), instance)
    assert result.exit_code == 0, result.output
    argv_line = next(line for line in result.output.splitlines() if line.startswith("ARGV "))
    assert json.loads(argv_line[5:]) == TRICKY
    env_line = next(line for line in result.output.splitlines() if line.startswith("ENV "))
    assert json.loads(env_line[4:]) == tricky_env
    # prove nothing ran: no file any of the payloads would have created exists
    assert ssh_hosts[0].sh("ls /tmp | grep -c fraisier-pwned || true").strip() == "0"
    # names that are not resource names never reach a unit name or a path
    with pytest.raises(ProviderError):
        await ssh_provider.run(
            job_release(tmp_path, make_resource("x;touch /tmp/fraisier-pwned-9", job_spec(),
                                                kind="Job")), instance)
    bad_revision = job_release(tmp_path, job, "r1")
    bad_revision.revision = "../../etc"
    with pytest.raises(ProviderError):
        await ssh_provider.run(bad_revision, instance)
    assert ssh_hosts[0].sh("ls /tmp | grep -c fraisier-pwned || true").strip() == "0"


def test_exec_argv_refuses_prefix_characters() -> None:
    # systemd reads a leading -@:+! of the first word as flags, quoted or not
    for program in ("-rm", "@x", ":y", "+z", "!w", "rel/path"):
        with pytest.raises(ProviderError):
            exec_argv([program])
    assert exec_argv(["/bin/echo", "%h", "$X"]) == '"/bin/echo" "%%h" "$$X"'


@pytest.mark.timeout(120)
async def test_schedule_timer_really_fires(ssh_provider: SystemdSSHProvider, tmp_path: Path,
                                           ssh_hosts: Any) -> None:
    # sandboxed (the default profile): the Schedule writes to its own state directory
    mark = f"/var/lib/fraisier/{ENV}_tick.schedule/schedule-mark"
    spec = job_spec(schedule={"calendar": "*:*:0/2"})  # systemd calendar syntax, every 2 s
    assert schedule_errors(spec["schedule"]) == []  # what `reconciler validate` checks
    schedule = make_resource("tick", spec, kind="Schedule")
    release = job_release(tmp_path, schedule, env={"MARK": mark, "MSG": "tick"})
    host = ssh_hosts[0]
    host.run(["rm", "-rf", "/var/lib/fraisier", "/var/lib/private/fraisier"])  # earlier runs'
    instance = (await ssh_provider.instances(schedule))[0]
    await ssh_provider.deploy(release, instance)
    timer = f"fraisier-{ENV}_tick.schedule.timer"
    assert host.sh(f"systemctl is-active {timer}").strip() == "active"
    assert "OnCalendar=*:*:0/2 UTC\n" in host.sh(f"cat /etc/systemd/system/{timer}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # two runs: it fires again and again, not once
        if host.run(["sh", "-c", f"test $(wc -l <{mark}) -ge 2"], check=False).returncode == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the timer did not run the schedule twice")
    state = (await ssh_provider.observe(schedule))[0]
    assert state.revision == "r1" and state.facts["timer_state"] == "active"
    lines = await ssh_provider.logs(schedule, instance, 50)
    assert any("job says tick" in line for line in lines), lines
    # a run on demand works too, and stop() stops the timer
    result = await ssh_provider.run(release, instance)
    assert result.exit_code == 0 and "job says tick" in result.output
    await ssh_provider.stop(schedule, instance)
    assert host.run(["systemctl", "is-active", timer], check=False).stdout.strip() != b"active"
    await ssh_provider.remove(schedule, instance)
    assert host.run(["test", "-e", f"/etc/systemd/system/{timer}"], check=False).returncode == 1


@pytest.mark.timeout(120)
async def test_cron_conversion_agrees_with_systemd(ssh_host: Any) -> None:
    """systemd-analyze on a real host computes the same next runs as croniter does."""
    expressions = ["*/5 * * * *", "0 3 * * 1-5", "15 2 1,15 * *", "30 */6 * jan,jul *",
                   "0 9-17 * * mon", "@daily", "7 4 * * sun", "0 12 1 * 1"]
    for expr in expressions:
        calendars = on_calendar(expr, "UTC")
        out = ssh_host.run(
            ["systemd-analyze", "calendar", "--iterations=4", "--", *calendars]).stdout.decode()
        fires: set[datetime] = set()
        for match in re.finditer(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", out):
            fires.add(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC))
        assert fires, out
        first = min(fires)
        itr = croniter(expr, first - timedelta(seconds=1))
        expected = {itr.get_next(datetime).astimezone(UTC) for _ in range(4)}
        soonest = sorted(fires)[:4]
        assert soonest == sorted(expected)[: len(soonest)], (expr, calendars, out)


@pytest.mark.timeout(120)
async def test_wrong_or_unknown_host_key_is_refused(ssh_hosts: Any, state_dir: Path,
                                                    tmp_path: Path) -> None:
    h1, h2 = ssh_hosts[:2]
    resource = make_resource("api", host_app_spec())
    release = Release(resource=resource, revision="v1", config_commit=None,
                      export=job_export(tmp_path, "v1"))
    # host 1 pinned to host 2's key: a changed key
    wrong = ssh_target_resource([h1])
    wrong.spec["hosts"][0].pop("knownHosts")
    wrong.spec["hosts"][0]["hostKeys"] = [h2.host_key]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    unknown = ssh_target_resource([h1])
    unknown.spec["hosts"][0]["knownHosts"] = str(empty)
    for target, what in ((wrong, "does not match"), (unknown, "is unknown")):
        provider = create_provider(target, ProviderContext(state_dir=state_dir))
        instance = (await provider.instances(resource))[0]
        started = time.monotonic()
        with pytest.raises(SSHHostKeyError, match=what):
            await provider.deploy(release, instance)
        assert time.monotonic() - started < 5  # refused at once, never retried
        with pytest.raises(SSHHostKeyError):
            await provider.observe(resource)
        await provider.close()
    assert h1.run(["test", "-e", f"{DEFAULT_ROOT}"], check=False).returncode == 1
    # the right pinned key works
    right = ssh_target_resource([h1])
    right.spec["hosts"][0].pop("knownHosts")
    right.spec["hosts"][0]["hostKeys"] = [h1.host_key]
    provider = create_provider(right, ProviderContext(state_dir=state_dir))
    states = await provider.observe(resource)
    assert states[0].revision is None and not states[0].running
    await provider.close()


@pytest.mark.timeout(120)
async def test_sudo_user_deploys(ssh_hosts: Any, state_dir: Path, tmp_path: Path) -> None:
    h1 = ssh_hosts[0]
    target = ssh_target_resource([h1], systemd={"user": "deploy",
                                                "limits": {"memoryMax": "256M", "tasksMax": 64}})
    target.spec["hosts"][0].update(user=h1.sudo_user, sudo=True)
    provider = create_provider(target, ProviderContext(state_dir=state_dir))
    job = make_resource("whoami", job_spec(command=["sh", "-c", "id -un; cat /proc/self/cgroup"]),
                        kind="Job")
    instance = (await provider.instances(job))[0]
    try:
        result = await provider.run(job_release(tmp_path, job, env={"SECRET": "x"}), instance)
    finally:
        await provider.close()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "deploy"
    unit = h1.sh(f"cat /etc/systemd/system/fraisier-{ENV}_whoami.job.service")
    assert "User=deploy" in unit and "MemoryMax=256M" in unit and "TasksMax=64" in unit
    env_path = f"{DEFAULT_ROOT}/{ENV}/whoami.job/environment"
    assert h1.sh(f"stat -c '%a %U' {env_path}").strip() == "600 root"
