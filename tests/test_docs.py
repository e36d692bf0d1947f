"""Docs (issue 11 item 7): the generated command reference is current, the operations guide
names only options that exist, and shell completion works, `undo` completing txids."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import click
import pytest

from retention.cli import cli

from .conftest import NOW_TEXT, invoke, run_exe

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _reference_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference", ROOT / "scripts" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_what_scripts_reference_writes() -> None:
    """Regenerated from the click help, docs/reference.md is unchanged: run
    ./scripts/reference after changing a command, an option or a help text."""
    assert _reference_script().render() == (DOCS / "reference.md").read_text()


def test_reference_has_the_help_of_every_command() -> None:
    text = (DOCS / "reference.md").read_text()
    for name, cmd in cli.commands.items():
        assert f"\n## retention {name}\n" in text
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and not getattr(param, "hidden", False):
                    assert opt in text, f"retention {name} {opt}"


def test_reference_does_not_depend_on_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert _reference_script().render() == (DOCS / "reference.md").read_text()


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*getattr(p, "opts", []), *p.secondary_opts)}


def test_operations_guide_uses_only_commands_and_options_that_exist() -> None:
    """Every ``retention COMMAND --option`` in a code block of docs/operations.md is a real
    command with that option (a continued line counts as part of its command)."""
    text = (DOCS / "operations.md").read_text()
    seen = []
    for block in _code_blocks(text):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            for m in re.finditer(r"\bretention ([a-z]+)\b([^|;&#]*)", line):
                cmd = cli.commands.get(m.group(1))
                if cmd is None:
                    continue
                for opt in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", m.group(2)):
                    assert opt in _options(cmd) | _options(cli), f"retention {m.group(1)} {opt}"
                    seen.append((m.group(1), opt))
    assert ("apply", "--metrics-file") in seen
    assert ("apply", "--output-json") in seen
    assert ("plan", "-o") in seen


def test_exit_codes_in_the_operations_guide_are_the_documented_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| (\d+) \|", readme, flags=re.M))
    guide = (DOCS / "operations.md").read_text()
    table = guide[guide.index("## Exit codes to alert on") :]
    listed = set()
    for row in re.findall(r"^\| ([\d, ]+) \|", table, flags=re.M):
        listed |= {c.strip() for c in row.split(",")}
    assert listed == documented


# -- shell completion -----------------------------------------------------------------------


def _complete(workspace: Path, *words: str) -> list[str]:
    """What bash completion offers after ``retention WORDS`` (the last word incomplete)."""
    env = {
        "COMP_WORDS": " ".join(("retention", *words)),
        "COMP_CWORD": str(len(words)),
        "_RETENTION_COMPLETE": "bash_complete",
    }
    result = run_exe(cwd=workspace, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = result.stdout.decode().splitlines()
    return [line.split(",", 1)[1] for line in lines if line]


def _apply(workspace: Path) -> str:
    assert invoke("plan", "--keep-last", "30", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    result = invoke("apply", "m.json")
    assert result.exit_code == 0, result.stderr
    return str(json.loads(result.stdout)["txid"])


def test_undo_completes_the_txids_still_in_trash(workspace: Path) -> None:
    first = _apply(workspace)
    assert _complete(workspace, "undo", "") == [first]
    assert _complete(workspace, "undo", first[:4]) == [first]
    assert _complete(workspace, "undo", "zz") == []
    assert invoke("undo", first).exit_code == 0
    assert _complete(workspace, "undo", "") == []  # undone: nothing left to undo


def test_undo_completion_outside_a_workspace_completes_nothing(tmp_path: Path) -> None:
    assert _complete(tmp_path, "undo", "") == []


def test_commands_complete_and_the_bash_script_is_generated(workspace: Path) -> None:
    assert "undo" in _complete(workspace, "un")
    script = run_exe(cwd=workspace, env={"_RETENTION_COMPLETE": "bash_source"})
    assert b"_retention_completion" in script.stdout
