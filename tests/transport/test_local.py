"""LocalTransport against real processes and files."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal.procfs import read_stat
from reconciler.transport import CommandTimeout, Transport
from reconciler.transport.local import LocalTransport


def test_is_a_transport() -> None:
    transport: Transport = LocalTransport()
    assert transport.host_id == "local"
    assert transport.address == "127.0.0.1"


async def test_run_captures_stdout_stderr_and_exit_code() -> None:
    t = LocalTransport()
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = await t.run([sys.executable, "-c", code])
    assert result.returncode == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert not result.ok


async def test_argv_is_not_a_shell() -> None:
    result = await LocalTransport().run(["echo", "$HOME; rm -rf /", "`id`"])
    assert result.stdout == b"$HOME; rm -rf / `id`\n"


async def test_stdin_env_cwd(tmp_path: Path) -> None:
    t = LocalTransport()
    code = "import os, sys; print(sys.stdin.read().upper(), os.environ.get('X'), os.getcwd())"
    result = await t.run(
        [sys.executable, "-c", code],
        stdin=b"hello",
        env={"X": "42", "PATH": os.environ["PATH"]},
        cwd=str(tmp_path),
    )
    assert result.stdout.decode().split() == ["HELLO", "42", str(tmp_path)]


async def test_env_replaces_the_environment() -> None:
    os.environ["FRAISIER_TEST_LEAK"] = "secret"
    try:
        result = await LocalTransport().run(
            [sys.executable, "-c", "import os; print(os.environ.get('FRAISIER_TEST_LEAK'))"],
            env={"PATH": os.environ["PATH"]},
        )
    finally:
        del os.environ["FRAISIER_TEST_LEAK"]
    assert result.stdout == b"None\n"


async def test_check_raises_with_output_tail() -> None:
    with pytest.raises(ProviderError, match=r"exited 2: .*nope"):
        await LocalTransport().run(
            [sys.executable, "-c", "import sys; print('nope'); sys.exit(2)"], check=True
        )


async def test_missing_program_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="cannot run 'no-such-program-xyz'"):
        await LocalTransport().run(["no-such-program-xyz"])


@pytest.mark.timeout(20)
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The child starts a grandchild in the same group, prints, then both hang.
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "print('partial', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        await LocalTransport().run([sys.executable, "-c", code], timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert b"partial" in info.value.stdout
    assert "timed out after 1s" in info.value.message
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stat = read_stat(grandchild)
        if stat is None or stat.dead:
            break
        time.sleep(0.05)
    stat = read_stat(grandchild)
    assert stat is None or stat.dead


async def test_write_and_read_file_atomically(tmp_path: Path) -> None:
    t = LocalTransport()
    target = tmp_path / "sub" / "f.json"
    assert await t.read_file(str(target)) is None
    await t.write_file(str(target), b"one", mode=0o600)
    assert await t.read_file(str(target)) == b"one"
    assert (target.stat().st_mode & 0o777) == 0o600
    await t.write_file(str(target), b"two")
    assert target.read_bytes() == b"two"
    # no temp files left behind
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


async def test_put_file_and_put_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c.txt").write_text("c")
    (src / "top.txt").write_text("top")
    os.symlink("top.txt", src / "link")
    t = LocalTransport()
    dest = tmp_path / "dest"
    await t.put_tree(src, str(dest))
    assert (dest / "a" / "b" / "c.txt").read_text() == "c"
    assert os.readlink(dest / "link") == "top.txt"
    await t.put_tree(src, str(dest))  # into an existing directory: fine
    (dest / "stale.txt").write_text("stale")
    await t.put_tree(src, str(dest), replace=True)  # replaced, not merged
    assert not (dest / "stale.txt").exists() and (dest / "top.txt").read_text() == "top"
    assert sorted(await t.list_dir(str(dest)) or []) == ["a", "link", "top.txt"]
    assert await t.list_dir(str(tmp_path / "missing")) is None
    await t.put_file(src / "top.txt", str(tmp_path / "x" / "copy.txt"), mode=0o640)
    copy = tmp_path / "x" / "copy.txt"
    assert copy.read_text() == "top"
    assert (copy.stat().st_mode & 0o777) == 0o640
