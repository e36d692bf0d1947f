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
from retention.errors import ConfigError

from .conftest import NOW_TEXT, invoke, run_exe

# -- unknown RETENTION_* variables ----------------------------------------------------------


def test_misspelt_environment_variable_is_refused_with_did_you_mean(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_KEEPLAST", "5")
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "Error: unknown environment variable RETENTION_KEEPLAST; did you mean RETENTION_KEEP_LAST?"
    )
    assert not Path("m.json").exists()


def test_unknown_environment_variable_without_a_close_name_lists_what_is_read() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"RETENTION_FROBNICATE": "1"})
    assert info.value.message == "unknown environment variable RETENTION_FROBNICATE"
    assert info.value.exit_code == 2
    assert "RETENTION_<SETTING>" in (info.value.hint or "")


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
            "postgresql+psycopg://app:s3cret@db.internal:5432/runs",
            "Error: catalog.path 'postgresql+psycopg://app:***@db.internal:5432/runs' is an"
            " SQLAlchemy URL (postgresql+psycopg://)",
        ),
        (
            "mysql+pymysql://db/runs",
            "Error: catalog.path 'mysql+pymysql://db/runs' is a MySQL URL: MySQL catalogs are"
            " not supported (SQLite and PostgreSQL only)",
        ),
        (
            "redis://cache/0",
            "Error: catalog.path 'redis://cache/0' is a redis:// URL: only SQLite files and"
            " PostgreSQL URLs are supported",
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


# -- config --check: every problem at once ---------------------------------------------------

MLFLOW_LIKE = """
CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, end_time INTEGER, lifecycle_stage TEXT,
                   status TEXT);
CREATE TABLE metrics (run_uuid TEXT REFERENCES runs(run_uuid), key TEXT, value REAL);
CREATE TABLE params (run_uuid TEXT REFERENCES runs(run_uuid), key TEXT, value TEXT);
CREATE TABLE latest_metrics (run_uuid TEXT, key TEXT);
"""
# 2026-10-01T00:00:00Z, in milliseconds (as MLflow stores times)
MS = 1_790_812_800_000


@pytest.fixture
def mlflow_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Six runs with millisecond times, as the current directory with its artifacts."""
    db = sqlite3.connect(tmp_path / "mlruns.db")
    db.executescript(MLFLOW_LIKE)
    for i in range(6):
        run = f"{i:032x}"
        stage = "deleted" if i < 4 else "active"
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, 'FINISHED')", (run, MS + i * 86_400_000, stage)
        )
        db.execute("INSERT INTO metrics VALUES (?, 'loss', 0.5)", (run,))
        (tmp_path / "mlartifacts" / run).mkdir(parents=True)
    db.commit()
    db.close()
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path


def _toml(**catalog: str) -> str:
    settings = {
        "path": '"mlruns.db"',
        "runs_table": '"runs"',
        "id_column": '"run_uuid"',
        "time_columns": '["end_time"]',
        "time_format": '"epoch_ms"',
        "filter": "\"lifecycle_stage = 'deleted'\"",
        "child_tables": '[{ table = "latest_metrics", column = "run_uuid" }]',
        **catalog,
    }
    body = "".join(f"{k} = {v}\n" for k, v in settings.items())
    return (
        f'[catalog]\n{body}[artifacts]\nroot = "mlartifacts"\npath_template = "{{run_uuid}}"\n'
        '[policy]\nmax_age = "7d"\nallow_remove_all = true\n'
    )


def test_config_check_is_clean_on_a_matching_configuration(mlflow_like: Path) -> None:
    Path("retention.toml").write_text(_toml())
    result = invoke("config", "--check")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    assert "Tables a plan touches (4), with the rows of the 4 runs selected by" in result.stdout
    assert "Timestamps (end_time, time_format epoch_ms): 4 of 4 considered runs read." in (
        result.stdout
    )


def test_config_check_on_a_catalog_with_three_mistakes_reports_all_three(
    mlflow_like: Path,
) -> None:
    """A misspelt child table, a misspelt id column and seconds where the data is in
    milliseconds: one run of `config --check` names all three, each on its own line."""
    Path("retention.toml").write_text(
        _toml(
            id_column='"run_id"',
            time_format='"epoch_s"',
            child_tables='[{ table = "latest_metric", column = "run_uuid" }]',
        )
    )
    result = invoke("config", "--check")
    assert result.exit_code == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: table 'runs' has no column 'run_id' (named by catalog.id_column)",
        "Error: catalog has no table 'latest_metric' (named in catalog.child_tables)",
        "Error: catalog.time_format = 'epoch_s': 0 of 4 timestamps of end_time can be read;"
        f" not read: {MS}, {MS + 86_400_000}, {MS + 2 * 86_400_000}",
    ]
    hints = [line for line in result.stderr.splitlines() if line.startswith("Hint: ")]
    assert hints == [
        "Hint: did you mean 'run_uuid'? columns: run_uuid, end_time, lifecycle_stage, status",
        "Hint: did you mean 'latest_metrics'? tables: latest_metrics, metrics, params, runs",
        f'Hint: time_format = "epoch_ms" reads them ({MS} is 2026-10-01T00:00:00Z)',
    ]
    assert result.stderr.splitlines()[-1] == (
        "3 problems: fix them, then run retention config --check again."
    )
    # The configuration is still shown, and what could be found is listed.
    assert "catalog.id_column" in result.stdout
    assert "Tables found through declared foreign keys: metrics, params." in result.stdout

    report = json.loads(invoke("config", "--check", "--json").stdout)
    assert [p["setting"] for p in report["check"]["problems"]] == [
        "catalog.id_column",
        "catalog.child_tables",
        "catalog.time_format",
    ]
    assert report["check"]["timestamps"]["suggestion"] == "epoch_ms"
    assert report["tables"] is None


def test_config_check_reports_a_missing_runs_table_with_the_others(mlflow_like: Path) -> None:
    Path("retention.toml").write_text(
        _toml(runs_table='"run"', filter='"stage = 1"')
        + 'state_column = "state"\ntier_table = "plans"\ntier_column = "tier"\n'
        + 'group_by = ["org"]\n[policy.tiers.free]\ndays = 3\n'
    )
    result = invoke("config", "--check")
    assert result.exit_code == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors[0] == f"Error: catalog {mlflow_like / 'mlruns.db'} has no table 'run'"
    assert "Error: catalog has no table 'plans' (named by policy.tier_table)" in errors
    assert len(errors) == 2  # the runs table's columns and the filter cannot be checked


def test_config_check_reports_bad_filter_and_policy_columns(mlflow_like: Path) -> None:
    Path("retention.toml").write_text(
        _toml(filter='"lifecycle = 1"', protect="\"tags LIKE '%keep%'\"")
        + 'state_column = "state"\npin_column = "pinned"\n'
    )
    result = invoke("config", "--check")
    assert result.exit_code == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: table 'runs' has no column 'state' (named by policy.state_column)",
        "Error: table 'runs' has no column 'pinned' (named by policy.pin_column)",
        "Error: catalog.filter 'lifecycle = 1' is not valid SQL here: no such column: lifecycle",
        "Error: catalog.protect \"tags LIKE '%keep%'\" is not valid SQL here: no such column: tags",
    ]


def test_config_check_suggests_epoch_s_for_seconds_read_as_milliseconds(
    mlflow_like: Path,
) -> None:
    """epoch_ms on data in seconds reads every run as January 1970: all of them would look
    ancient. Named as a problem, with the format that reads them."""
    db = sqlite3.connect("mlruns.db")
    db.execute("UPDATE runs SET end_time = end_time / 1000")
    db.commit()
    db.close()
    Path("retention.toml").write_text(_toml())
    result = invoke("config", "--check")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[1] == (
        f'Hint: time_format = "epoch_s" reads them ({MS // 1000} is 2026-10-01T00:00:00Z)'
    )


def test_config_check_warns_of_a_few_unreadable_timestamps_without_failing(
    mlflow_like: Path,
) -> None:
    db = sqlite3.connect("mlruns.db")
    db.execute("UPDATE runs SET end_time = 'n/a' WHERE run_uuid = ?", (f"{0:032x}",))
    db.commit()
    db.close()
    Path("retention.toml").write_text(_toml())
    result = invoke("config", "--check")
    assert result.exit_code == 0, result.stderr
    assert (
        "Warning: catalog.time_format = 'epoch_ms': 3 of 4 timestamps of end_time can be read;"
        " not read: 'n/a' (those runs are always kept)"
    ) in result.stdout


# -- plan when no timestamp can be read --------------------------------------------------------


def test_plan_with_seconds_format_on_millisecond_data_warns_and_exits_3(
    mlflow_like: Path,
) -> None:
    Path("retention.toml").write_text(_toml(time_format='"epoch_s"'))
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert (
        f"Warning: no timestamp of the 4 considered runs could be read as epoch_s"
        f" (catalog.time_format), e.g. {MS} in end_time: every run is kept"
    ) in lines
    assert (
        f'  Hint: time_format = "epoch_ms" reads them ({MS} is 2026-10-01T00:00:00Z);'
        " see retention config --check"
    ) in lines
    payload = json.loads(Path("m.json").read_text())["payload"]  # the manifest is written
    assert (payload["considered"], payload["entries"]) == (4, [])


def test_plan_that_reads_its_timestamps_exits_0(mlflow_like: Path) -> None:
    Path("retention.toml").write_text(_toml())
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 0, result.stderr
    assert "no timestamp" not in result.stderr


def test_plan_whose_time_column_is_always_null_warns_and_exits_3(mlflow_like: Path) -> None:
    db = sqlite3.connect("mlruns.db")
    db.execute("UPDATE runs SET end_time = NULL")
    db.commit()
    db.close()
    Path("retention.toml").write_text(_toml())
    result = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 3
    assert result.stderr.splitlines()[0] == (
        "Warning: none of the 4 considered runs has a timestamp (end_time NULL for every"
        " one): every run is kept"
    )
    check = invoke("config", "--check")
    assert check.exit_code == 4
    assert check.stderr.splitlines()[0] == (
        "Error: catalog.time_columns (end_time): every one of the 4 runs considered has NULL"
        " there, so every plan keeps them all"
    )


def test_erasure_plan_does_not_warn_about_timestamps(mlflow_like: Path) -> None:
    Path("retention.toml").write_text(_toml(time_format='"epoch_s"'))
    result = invoke("plan", "--erase", f"run_uuid={0:032x}", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 0, result.stderr
    assert "Warning: no timestamp" not in result.stderr


def test_config_check_on_a_missing_catalog_reports_it_and_the_policy_problems(
    mlflow_like: Path,
) -> None:
    Path("retention.toml").write_text(_toml(path='"nope.db"') + 'terminal_states = ["done"]\n')
    result = invoke("config", "--check")
    assert result.exit_code == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors[0].startswith(f"Error: catalog {mlflow_like / 'nope.db'} does not exist")
    assert errors[1].startswith("Error: policy.terminal_states needs policy.state_column")
    assert len(errors) == 2
