"""The guides cannot rot: their YAML is a valid desired state, copies of examples/fleet match the
files, every `reconciler … --flag` they show exists, every metric and alert is documented, and
every relative link (and #anchor) resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from reconciler.errors import SpecError
from reconciler.spec.loader import files_from_directory, load_desired_state
from tests.docs.conftest import DOCS, ROOT

YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)
SHELL_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.DOTALL)
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
GENERATED = {"cli.md", "yaml-reference.md"}
# Guides whose YAML must be complete, valid fleets (each file's blocks together).
GUIDES = ["guide-bare-metal.md", "guide-compose.md", "guide-coolify.md", "strategies.md",
          "examples.md", "environments.md"]


def doc_files() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED)


def resource_blocks(text: str) -> list[str]:
    return [b for b in YAML_BLOCK.findall(text) if "apiVersion: fraisier.dev/v1" in b]


# -- YAML -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GUIDES)
def test_guide_yaml_is_a_valid_desired_state(name: str, tmp_path: Path) -> None:
    blocks = resource_blocks((DOCS / name).read_text())
    assert blocks, f"{name} has no resource YAML"
    for n, block in enumerate(blocks):
        (tmp_path / f"block{n:02d}.yaml").write_text(block)
    try:
        state = load_desired_state(files_from_directory(tmp_path))
    except SpecError as exc:
        pytest.fail(f"docs/{name}: invalid YAML (blockNN = its NNth resource block):\n{exc}")
    assert state.resources
    # What the schema cannot say about strategies (ports for slots, one canary mode, …).
    from reconciler.rollout.strategies import Strategy

    for resource in state.resources.values():
        if resource.kind == "Service" and resource.spec.get("strategy"):
            Strategy.of(resource)


def test_copies_of_the_example_fleet_are_verbatim() -> None:
    """'This is `examples/fleet/X.yaml`' introduces the file's content, minus its header
    comment."""
    copies = 0
    for path in doc_files():
        for source, block in re.findall(r"This is `(examples/fleet/[\w.-]+)`.*?```yaml\n(.*?)```",
                                        path.read_text(), re.DOTALL):
            lines = (ROOT / source).read_text().splitlines(keepends=True)
            while lines and lines[0].startswith("#"):
                lines.pop(0)
            assert block == "".join(lines), f"{path.name}: copy of {source} is out of date"
            copies += 1
    assert copies >= 2


# -- CLI invocations ---------------------------------------------------------------------------
def _invocations(text: str) -> list[str]:
    """`reconciler …` command lines shown in code spans and shell blocks."""
    found: list[str] = []
    sources = [span for span in CODE_SPAN.findall(text)]
    for block in SHELL_BLOCK.findall(text):
        sources += block.replace("\\\n", " ").splitlines()
    for source in sources:
        for match in re.finditer(r"(?<![\w./-])reconciler\s+(.+)", source):
            found.append(match.group(1))
    return found


def _tokens(rest: str) -> list[str]:
    rest = re.split(r"\s(?:\||;|&&|\|\||#|>|2>)\s", f" {rest} ", maxsplit=1)[0]
    rest = rest.replace("[", " ").replace("]", " ").replace("\\|", "|")
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def _options(cmd: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in cmd.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_invocation(root: click.Group, rest: str) -> str | None:
    """None when the command line only uses commands and options that exist; else why not."""
    tokens = _tokens(rest)
    ctx = click.Context(root, info_name="reconciler")
    cmd: click.Command = root
    global_options = _options(root)
    i = 0
    while i < len(tokens) and tokens[i].startswith("-"):  # options before the subcommand
        name = tokens[i].split("=", 1)[0]
        if name not in global_options:
            return None  # not our CLI (e.g. `journalctl -u reconciler -o cat`)
        i += 1 if "=" in tokens[i] or name in ("--version", "-h", "--help") else 2
    while isinstance(cmd, click.Group) and i < len(tokens):
        word = tokens[i]
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            return None  # a placeholder (COMMAND) or prose
        sub = cmd.get_command(ctx, word)
        if sub is None:
            return f"no command `{ctx.command_path} {word}`"
        ctx = click.Context(sub, info_name=word, parent=ctx)
        cmd = sub
        i += 1
    known = _options(cmd)
    for token in tokens[i:]:
        if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", token):
            name = token.split("=", 1)[0]
            if name not in known:
                return f"`{ctx.command_path}` has no option {name}"
    return None


def test_every_cli_invocation_in_the_docs_exists() -> None:
    from reconciler.cli import cli

    checked = 0
    problems: list[str] = []
    for path in [*doc_files(), ROOT / "README.md"]:
        for rest in _invocations(path.read_text()):
            checked += 1
            why = check_invocation(cli, rest)
            if why:
                problems.append(f"{path.name}: `reconciler {rest.strip()}`: {why}")
    assert checked > 50
    assert problems == []


def test_the_invocation_check_catches_mistakes() -> None:
    from reconciler.cli import cli

    assert check_invocation(cli, "apply --repo . --force") is None
    assert check_invocation(cli, "--db sqlite:///x.db lock status -o json | jq .") is None
    assert check_invocation(cli, "apply --forse") == "`reconciler apply` has no option --forse"
    assert check_invocation(cli, "deploy api") == "no command `reconciler deploy`"
    assert check_invocation(cli, "db migrat") == "no command `reconciler db migrat`"


def test_every_long_option_in_backticks_exists() -> None:
    """`--flag` spans in prose and tables (without `reconciler` before them) name options that
    some command has."""
    from reconciler.cli import cli

    known: set[str] = set()

    def walk(cmd: click.Command, ctx: click.Context) -> None:
        known.update(_options(cmd))
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None:
                    walk(sub, click.Context(sub, info_name=name, parent=ctx))

    walk(cli, click.Context(cli, info_name="reconciler"))
    unknown = []
    for path in [*doc_files(), ROOT / "README.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        for span in CODE_SPAN.findall(text):
            match = re.match(r"(--[a-z][\w-]*)", span)
            if match and match.group(1) not in known:
                unknown.append(f"{path.name}: `{span}`")
    assert unknown == []


# -- metrics and alerts --------------------------------------------------------------------------
def metric_names() -> set[str]:
    from reconciler.observe.metrics import REGISTRY

    names = set()
    for family in REGISTRY.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if name.startswith("reconciler_"):
            names.add(name)
    return names


def test_every_metric_is_documented() -> None:
    text = (DOCS / "monitoring.md").read_text()
    names = metric_names()
    assert len(names) >= 15
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert missing == [], "metrics missing from docs/monitoring.md"
    listed = set(re.findall(r"^\| `(reconciler_\w+)`", text, re.MULTILINE))
    assert sorted(listed - names) == [], "docs/monitoring.md lists metrics that do not exist"


def test_every_alert_is_documented() -> None:
    rules: Any = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    text = (DOCS / "monitoring.md").read_text()
    assert len(alerts) >= 10
    assert sorted(a for a in alerts if f"`{a}`" not in text) == []
    listed = set(re.findall(r"^\| `(Fraisier\w+)`", text, re.MULTILINE))
    assert sorted(listed - alerts) == []


# -- links -------------------------------------------------------------------------------------
def github_anchor(heading: str) -> str:
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    out = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    out.update(re.findall(r'<a id="([^"]+)"', text))
    return out


def test_relative_links_and_anchors_resolve() -> None:
    problems = []
    for path in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                problems.append(f"{path.name}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{path.name}: {target}: no such heading")
    assert problems == []


def test_readme_links_every_doc_and_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in sorted(DOCS.glob("*.md")):
        assert f"](docs/{path.name})" in readme, f"README.md does not link docs/{path.name}"
    first_block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c][:2] == ["make demo", "make test"]
