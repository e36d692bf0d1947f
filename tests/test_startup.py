"""Start-up: what `retention --help` and a no-op `retention status` import (issue 13: both
under 150 ms). Pinned by module names, not by time: a fresh interpreter runs the command
and lists `sys.modules` at its end. No timed assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from retention import sample

_RUN = """
import json, sys
sys.argv = ["retention", *sys.argv[1:]]
from retention.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
"""

# Never needed by --help: the config (msgspec, tomllib), the durations, the journal's reader
# and writer (msgspec, ctypes), sqlite3, shell completion, and every library module.
NOT_FOR_HELP = {
    "msgspec",
    "tomllib",
    "sqlite3",
    "ctypes",
    "filelock",
    "click.shell_completion",
    "journal.reader",
    "journal.record",
    "journal.writer",
    "journal.fsio",
    "retention.config",
    "retention.durations",
    "retention.catalogs",
    "retention.catalog",
    "retention.catalogs.sqlite",
    "retention.policy",
    "retention.planner",
    "retention.views",
    "retention.workspace",
    "retention.status",
    "retention.store",
    "retention.tombstones",
    "retention.manifest",
}

# Never needed by a status with nothing to report: the planner and the views (the manifest,
# the explain), the policy engine, the mutating commands, directory moves, ctypes
# (renameat2), the file lock, shutil (with it bz2 and lzma; only the vacuum needs it).
NOT_FOR_STATUS = {
    "ctypes",
    "shutil",
    "filelock",
    "click.shell_completion",
    "retention.planner",
    "retention.views",
    "retention.explain",
    "retention.manifest",
    "retention.identity",
    "retention.moves",
    "retention.coordinator",
    "retention.trashops",
    "retention.jobstore",
    "retention.onboarding",
    "retention.metrics",
    "retention.policy.core",  # (the policy engine: status names run ids only)
    "retention.policy.rules",
    "retention.policy.calendar",
}


def _modules(cwd: Path, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    line = done.stderr.rsplit("MODULES ", 1)[1]
    return set(json.loads(line))


def test_help_imports_click_and_the_cli_only(tmp_path: Path) -> None:
    loaded = _modules(tmp_path, "--help")
    assert "retention.cli" in loaded and "click" in loaded
    assert not loaded & NOT_FOR_HELP


def test_a_no_op_status_imports_neither_the_planner_nor_the_views(tmp_path: Path) -> None:
    sample.build(tmp_path, runs=5)
    loaded = _modules(tmp_path, "status")
    assert "retention.status" in loaded and "journal.writer" in loaded  # it did run
    assert not loaded & NOT_FOR_STATUS
    assert "tomllib" not in loaded  # no config file here: nothing parses TOML
