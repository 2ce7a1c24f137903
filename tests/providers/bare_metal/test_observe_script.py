"""The observation script (``systemd.OBSERVE_SCRIPT``) run by a real shell on this machine with
a stand-in ``systemctl`` first in PATH: a ``systemctl show`` that fails, or says less than it
was asked, fails the whole look (the caller gets an error) instead of reporting the units it
did not describe as stopped, which a heal would then restart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.providers.bare_metal.systemd import OBSERVE_SCRIPT

pytestmark = pytest.mark.timeout(30)

BLOCK = """Id={unit}
ActiveState=active
SubState=running
MainPID=0
NeedDaemonReload=no
"""


def fake_systemctl(bin_dir: Path, show_blocks: int, show_status: int) -> None:
    """``list-units`` knows nothing (every unit is shown); ``show`` prints the first
    ``show_blocks`` units' blocks, then exits with ``show_status``."""
    bin_dir.mkdir()
    script = bin_dir / "systemctl"
    script.write_text(f"""#!/bin/sh
case $1 in
  list-units) exit 0 ;;
  show)
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
    shift
    n=0
    for unit do
      n=$((n + 1))
      [ "$n" -le {show_blocks} ] || break
      [ "$n" -gt 1 ] && echo
      printf '{BLOCK.replace(chr(10), chr(92) + "n")}' "" | sed "s/{{unit}}/$unit/"
    done
    exit {show_status} ;;
esac
exit 1
""")
    script.chmod(0o755)


def observe(tmp_path: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    args = []
    for unit in units:
        service_dir = tmp_path / "srv" / unit
        service_dir.mkdir(parents=True)
        unit_file = tmp_path / "units" / unit
        unit_file.parent.mkdir(exist_ok=True)
        unit_file.write_text("[Service]\n")
        args += [unit, str(service_dir), str(unit_file), "", ""]
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    return subprocess.run(["sh", "-c", OBSERVE_SCRIPT, "fraisier-observe", *args],
                          capture_output=True, text=True, env=env, timeout=20)


UNITS = ["fraisier-t_a.service", "fraisier-t_b.service"]


def test_a_full_answer_describes_every_unit(tmp_path: Path) -> None:
    fake_systemctl(tmp_path / "bin", show_blocks=2, show_status=0)
    done = observe(tmp_path, UNITS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("FraisierObserved=1") == 2
    assert "Id=fraisier-t_b.service" in done.stdout


@pytest.mark.parametrize("blocks,status", [(0, 1), (1, 1), (1, 0)])
def test_a_failed_or_short_show_fails_the_look(tmp_path: Path, blocks: int,
                                               status: int) -> None:
    fake_systemctl(tmp_path / "bin", show_blocks=blocks, show_status=status)
    done = observe(tmp_path, UNITS)
    assert done.returncode != 0, done.stdout
