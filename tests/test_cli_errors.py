"""Bad input through the CLI: one clear ``Error:`` line, a documented exit code, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from .conftest import NOW_TEXT, invoke

PLAN = ("plan", "--keep-last", "10", "--now", NOW_TEXT)


def error_line(result, code: int) -> str:
    """The one ``Error:`` line of a failed command (asserting exit code and no traceback)."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def hint_line(result) -> str:
    hints = [line.strip() for line in result.stderr.splitlines() if "Hint: " in line]
    assert len(hints) == 1, result.stderr
    return hints[0]


def _runs(path: Path, ddl: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript(ddl)
    db.commit()
    db.close()


# -- the catalog (exit 4) ------------------------------------------------------------------


def test_missing_catalog_is_exit_4_with_a_hint(workspace: Path) -> None:
    shutil.rmtree("data")
    result = invoke(*PLAN)
    assert result.stderr.splitlines()[0] == (
        f"Error: catalog {workspace / 'data' / 'catalog.db'} does not exist"
        " (no retention.toml here, so the built-in default layout applies)"
    )
    assert error_line(result, 4)
    assert hint_line(result).startswith("Hint: run from the workspace directory, or pass --config")
    assert result.stdout == ""
    assert not Path(".retention").exists()  # a plan that fails writes nothing
    # `show` needs the catalog too.
    Path("m.json").write_text("{}")
    assert "does not exist" in error_line(invoke("show", "m.json"), 4)


def test_catalog_that_is_a_directory_is_exit_4(workspace: Path) -> None:
    result = invoke(*PLAN, "--catalog", "data")
    assert error_line(result, 4) == (
        f"Error: catalog {workspace / 'data'} is a directory, not an SQLite file"
    )


def test_catalog_that_is_not_a_database_is_exit_4(workspace: Path) -> None:
    Path("data/catalog.db").write_bytes(b"this is not SQLite\n" * 100)
    result = invoke(*PLAN)
    assert error_line(result, 4) == (
        f"Error: cannot open catalog {workspace / 'data' / 'catalog.db'}: file is not a database"
    )
    assert result.stderr.splitlines()[0].startswith("Error: ")


def test_missing_runs_table_is_exit_4_and_names_the_table(workspace: Path) -> None:
    os.unlink("data/catalog.db")
    _runs(workspace / "data/catalog.db", "CREATE TABLE experiments (id TEXT);")
    result = invoke(*PLAN)
    assert result.stderr.splitlines()[0] == (
        f"Error: catalog {workspace / 'data' / 'catalog.db'} has no table 'runs'"
    )
    error_line(result, 4)
    monkey = invoke(*PLAN, "--catalog", "data/catalog.db")
    assert "has no table 'runs'" in error_line(monkey, 4)


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        (
            "CREATE TABLE runs (id TEXT PRIMARY KEY, created_at TEXT);",
            "Error: table 'runs' has no column 'run_id' (named by catalog.id_column)",
        ),
        (
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, started TEXT);",
            "Error: table 'runs' has no column 'created_at' (named by catalog.time_columns)",
        ),
    ],
    ids=["id-column", "time-column"],
)
def test_missing_column_is_exit_4_and_names_the_column(
    workspace: Path, ddl: str, message: str
) -> None:
    os.unlink("data/catalog.db")
    _runs(workspace / "data/catalog.db", ddl + "CREATE TABLE run_metrics (run_id TEXT);")
    result = invoke(*PLAN)
    assert result.stderr.splitlines()[0] == message
    error_line(result, 4)


# -- usage (exit 2) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", "invalid duration '5x'"),
        ("-3d", "invalid duration '-3d'"),
        ("180", "invalid duration '180'"),
        ("d", "invalid duration 'd'"),
        ("0d", "invalid duration '0d': must be greater than zero"),
        ("", "the value is empty"),  # not silently "no rule given" (keep-last 100)
        ("  ", "the value is empty"),
    ],
)
def test_bad_max_age_is_exit_2_one_error_line_first(
    workspace: Path, value: str, message: str
) -> None:
    result = invoke("plan", "--max-age", value, "--now", NOW_TEXT)
    assert result.stderr.splitlines()[0] == f"Error: policy.max_age (from flag): {message}"
    error_line(result, 2)
    assert result.stdout == ""
    assert not Path(".retention").exists()  # nothing was written


def test_bad_max_age_flag_gets_the_unit_hint(workspace: Path) -> None:
    result = invoke("plan", "--max-age", "5x", "--now", NOW_TEXT)
    assert result.stderr.splitlines() == [
        "Error: policy.max_age (from flag): invalid duration '5x'",
        "Hint: use a number and a unit: s, min, h, d, w, mo or y (e.g. 180d, 12h, 2w, 6mo, 1y)",
    ]
    assert result.exit_code == 2


def test_bad_max_age_from_environment_is_exit_2_with_the_unit_hint(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_MAX_AGE", "5x")
    result = invoke("plan", "--now", NOW_TEXT)
    assert result.stderr.splitlines() == [
        "Error: policy.max_age (from env RETENTION_MAX_AGE): invalid duration '5x'",
        "Hint: use a number and a unit: s, min, h, d, w, mo or y (e.g. 180d, 12h, 2w, 6mo, 1y)",
    ]
    error_line(result, 2)


@pytest.mark.parametrize("value", ["-2", "-100", "ten", "1.5"])  # -1 is restic's unlimited
def test_bad_keep_last_is_exit_2(workspace: Path, value: str) -> None:
    result = invoke("plan", "--keep-last", value, "--now", NOW_TEXT)
    line = error_line(result, 2)
    assert line.startswith("Error: Invalid value for '--keep-last': ")
    if value.startswith("-"):
        assert line == (
            f"Error: Invalid value for '--keep-last': {value} is not a count:"
            " give N >= 0, or unlimited (-1)"
        )


def test_keep_last_zero_alone_keeps_nothing_and_is_refused(workspace: Path) -> None:
    result = invoke("plan", "--keep-last", "0", "--now", NOW_TEXT)
    assert result.stderr.splitlines() == [
        "Error: refusing a policy that keeps nothing",
        "Hint: give a rule that keeps something: --keep-last N, --keep-hourly/daily/weekly/"
        "monthly/yearly N, --keep-within D, --keep-within-daily D (and the like), --keep-tag"
        " TAGS or --max-age D",
    ]
    error_line(result, 2)
    assert "keeps nothing" in result.stderr
    # With a max age next to it, it is a real policy.
    assert invoke("plan", "--keep-last", "0", "--max-age", "180d", "--now", NOW_TEXT).exit_code == 0


def test_plan_removing_every_run_is_refused_unless_allowed(workspace: Path) -> None:
    result = invoke("plan", "--max-age", "1d", "--now", NOW_TEXT)
    assert result.stderr.splitlines() == [
        "Error: refusing to remove every run: all 40 runs in 'runs'",
        "Hint: pass --allow-remove-all (or set policy.allow_remove_all = true)"
        " if that is really intended",
    ]
    error_line(result, 2)
    assert result.stdout == ""
    result = invoke("plan", "--max-age", "1d", "--now", NOW_TEXT, "--allow-remove-all")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["payload"]["entries"]) == 40


def test_bad_now_is_exit_2(workspace: Path) -> None:
    result = invoke("plan", "--keep-last", "10", "--now", "next week")
    assert result.stderr.splitlines() == [
        "Error: invalid time 'next week'",
        "Hint: use ISO-8601, e.g. 2026-03-01T12:00:00Z",
    ]
    error_line(result, 2)


def test_unknown_option_is_exit_2(workspace: Path) -> None:
    result = invoke("plan", "--keep-newest", "3")
    assert error_line(result, 2) == (
        "Error: No such option '--keep-newest'. (Did you mean one of: '--keep-last',"
        " '--keep-tag', '--keep-within'?)"
    )


# -- unreadable artifact directories (exit 3, the run left out, a hint) ----------------------


def _plan_skipping(candidate: str) -> tuple[dict, list[str]]:
    result = invoke(*PLAN)
    assert result.exit_code == 3, result.stderr
    assert "Traceback" not in result.stderr
    payload = json.loads(result.stdout)["payload"]
    ids = [e["run_id"] for e in payload["entries"]]
    assert candidate not in ids and len(ids) == 29
    assert payload["kept"] == 11
    lines = result.stderr.splitlines()
    skip = [n for n, line in enumerate(lines) if line.startswith(f"Skipped {candidate}: ")]
    assert len(skip) == 1, result.stderr
    assert "artifact directory unreadable: " in lines[skip[0]]
    assert lines[skip[0] + 1].startswith("  Hint: fix its permissions (e.g. chmod -R u+rwX ")
    return payload, lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 directory anyway")
def test_unreadable_subdirectory_leaves_the_run_out_with_exit_3_and_a_hint(
    workspace: Path,
) -> None:
    candidate = "bt-20241207-00002"
    sub = workspace / "data" / "backtests" / candidate / "plots"
    os.chmod(sub, 0)
    try:
        _, lines = _plan_skipping(candidate)
        assert any(f"cannot read {sub}: Permission denied" in line for line in lines)
    finally:
        os.chmod(sub, 0o755)


def _deep_tree(top: Path, levels: int = 18) -> None:
    """A subdirectory so deep that its full path exceeds PATH_MAX (built with dir fds)."""
    name = "d" * 250
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def test_a_subdirectory_deeper_than_path_max_is_measured_not_called_unreadable(
    workspace: Path,
) -> None:
    # Its full path exceeds PATH_MAX, but one rename moves it: plan measures it through
    # directory descriptors and keeps the run in (issue 12 item 11; tests/test_hostile_edges.py
    # takes such a run through apply, undo and purge).
    candidate = "bt-20241207-00002"
    _deep_tree(workspace / "data" / "backtests" / candidate / "plots")
    result = invoke(*PLAN)
    assert result.exit_code == 0, result.stderr
    assert "unreadable" not in result.stderr and "File name too long" not in result.stderr
    entries = {e["run_id"]: e for e in json.loads(result.stdout)["payload"]["entries"]}
    assert entries[candidate]["exists"] and len(entries) == 30
