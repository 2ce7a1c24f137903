"""Issue 16, problem 6: `reconciler validate PATH` runs on untrusted pull requests in CI; a
``*.yaml`` symbolic link out of the tree must not be read, so the start of the file it points
to (a token, a credentials line) never reaches the CI log. The daemon's reading of a git tree
applies the same rule. Also: a tree with no YAML document is an error (exit 2), not "valid".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ghp_Zq8TOKENs3cr3t4f1d2e"
CREDENTIALS = "machine git.example login bob password hunter2hunter2"

TARGET = """apiVersion: fraisier.dev/v1
kind: Target
metadata:
  name: local
spec:
  provider: bare_metal
  transport: local
  root: /srv/fraisier
"""

pytestmark = pytest.mark.timeout(60)


def reconciler(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "--state-dir",
                           str(cwd.parent / "state"), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid",
                    *args], check=True, capture_output=True)


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """Files outside the checkout, as on a CI runner: a token and a .netrc."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "token").write_text(TOKEN + "\n")
    (home / ".netrc").write_text(CREDENTIALS + "\n")
    return home


@pytest.fixture
def checkout(tmp_path: Path, secrets: Path) -> Path:
    """A pull request's tree: one real Target, links out of it (relative and absolute), a link
    inside it, and a link to a folder."""
    repo = tmp_path / "checkout"
    (repo / "fleet" / "shared").mkdir(parents=True)
    (repo / "fleet" / "shared" / "target.yaml").write_text(TARGET)
    os.symlink("../../home/token", repo / "fleet" / "token.yaml")
    os.symlink(secrets / ".netrc", repo / "fleet" / "netrc.yml")
    os.symlink("../../../home/token", repo / "fleet" / "shared" / "inner-escape.yaml")
    os.symlink("/dev/zero", repo / "fleet" / "zero.yaml")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pr")
    return repo


def test_validate_never_reads_a_link_out_of_the_tree(checkout: Path) -> None:
    proc = reconciler(checkout, "validate", "fleet")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert TOKEN not in out and "hunter2" not in out and "machine" not in out, out
    for name in ("token.yaml", "netrc.yml", "shared/inner-escape.yaml", "zero.yaml"):
        assert f"fleet/{name}:1:1: symbolic link to" in out, out
    assert "outside fleet: not read" in out


def test_validate_follows_a_link_inside_the_tree(checkout: Path) -> None:
    for name in ("token.yaml", "netrc.yml", "shared/inner-escape.yaml", "zero.yaml"):
        (checkout / "fleet" / name).unlink()
    os.symlink("shared/target.yaml", checkout / "fleet" / "alias.yaml")
    proc = reconciler(checkout, "validate", "fleet")
    # the same Target twice: read through the link, so reported as a duplicate
    assert proc.returncode == 2 and "duplicate Target 'local'" in proc.stderr, proc.stderr
    # a hidden file is not read by itself: only through the link
    (checkout / "fleet" / "shared" / "target.yaml").rename(checkout / "fleet" / ".base.yaml")
    (checkout / "fleet" / "alias.yaml").unlink()
    os.symlink("../.base.yaml", checkout / "fleet" / "shared" / "alias.yaml")
    proc = reconciler(checkout, "validate", "fleet")
    assert proc.returncode == 0 and "1 Target" in proc.stdout, proc.stderr


def test_validate_refuses_a_symlinked_path(checkout: Path, secrets: Path) -> None:
    """PATH itself (or a folder of it) being a link would make the tree wherever it points."""
    (secrets / "x.yaml").write_text(TOKEN + "\n")
    os.symlink(secrets, checkout / "deploy")
    for path in ("deploy", "deploy/x.yaml"):
        proc = reconciler(checkout, "validate", path)
        assert proc.returncode == 2, proc.stdout
        assert TOKEN not in proc.stdout + proc.stderr
        assert "deploy: is a symbolic link" in proc.stderr, proc.stderr


def test_git_tree_links_follow_the_same_rule(checkout: Path) -> None:
    """apply/diff/the daemon read the committed tree: a link blob is refused by the same rule
    (not parsed as YAML text), one inside the folder is followed."""
    proc = reconciler(checkout, "diff", "--repo", ".", "--path", "fleet")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert TOKEN not in out
    assert "fleet/token.yaml:1:1: symbolic link to '../../home/token', outside fleet" in out
    assert "fleet/zero.yaml:1:1: symbolic link to '/dev/zero', outside fleet" in out
    for name in ("token.yaml", "netrc.yml", "shared/inner-escape.yaml", "zero.yaml"):
        (checkout / "fleet" / name).unlink()
    (checkout / "fleet" / "shared" / "target.yaml").rename(checkout / "fleet" / "real.yaml")
    os.symlink("../real.yaml", checkout / "fleet" / "shared" / "alias.yaml")
    (checkout / "fleet" / "real.yaml").rename(checkout / "fleet" / ".hidden.yaml")
    os.symlink(".hidden.yaml", checkout / "fleet" / "real.yaml")
    (checkout / "fleet" / "shared" / "alias.yaml").unlink()
    git(checkout, "add", "-A")
    git(checkout, "commit", "-q", "-m", "in-tree link")
    proc = reconciler(checkout, "diff", "--repo", ".", "--path", "fleet")
    assert proc.returncode in (0, 1), proc.stderr
    assert "Target/local" in proc.stdout, proc.stdout


@pytest.mark.parametrize("content", [None, "", "# only a comment\n", "---\n...\n"])
def test_validate_without_documents_exits_2(tmp_path: Path, content: str | None) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    if content is not None:
        (tree / "empty.yaml").write_text(content)
    (tree / "README.md").write_text("not yaml\n")
    proc = reconciler(tmp_path, "validate", "tree")
    assert proc.returncode == 2, proc.stdout
    assert "valid" not in proc.stdout
    assert "no *.yaml" in proc.stderr or "no YAML document" in proc.stderr, proc.stderr
