"""Configuration precedence (flag > env > file > default) and validation of bad values."""

from pathlib import Path

import pytest

from retention.config import load_config
from retention.errors import ConfigError

from .conftest import invoke


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "retention.toml"
    p.write_text(text)
    return p


def test_default_layout_without_config_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, env={})
    assert cfg.config_file is None
    assert cfg.catalog_path == str(tmp_path / "data/catalog.db")
    assert cfg.artifact_root == str(tmp_path / "data/backtests")
    assert (cfg.runs_table, cfg.id_column, cfg.time_columns) == ("runs", "run_id", ("created_at",))
    assert [c.table for c in cfg.child_tables] == ["run_metrics"]
    assert cfg.path_template == "{run_id}"
    assert cfg.keep_last == 100 and cfg.max_age is None
    assert cfg.sources["keep_last"] == "default (no rule given)"
    assert cfg.state_dir == str(tmp_path / ".retention")
    assert cfg.grace_period == "24h"


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    p = write(tmp_path, '[policy]\nkeep_last = 5\nmax_age = "30d"\n[state]\ngrace_period = "48h"\n')
    cfg = load_config(str(p), env={"RETENTION_KEEP_LAST": "7"}, overrides={"keep_last": 9})
    assert cfg.keep_last == 9 and cfg.sources["keep_last"] == "flag"
    cfg = load_config(str(p), env={"RETENTION_KEEP_LAST": "7"})
    assert cfg.keep_last == 7 and cfg.sources["keep_last"] == "env RETENTION_KEEP_LAST"
    cfg = load_config(str(p), env={})
    assert cfg.keep_last == 5 and cfg.sources["keep_last"] == f"file {p}"
    assert cfg.max_age == "30d" and cfg.grace_period == "48h"
    assert cfg.sources["catalog_path"] == "default"


def test_a_rule_from_any_source_disables_the_default_keep_last(tmp_path: Path) -> None:
    cfg = load_config(None, env={"RETENTION_MAX_AGE": "10d"}, overrides={})
    assert cfg.keep_last is None and cfg.max_age == "10d"


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    p = sub / "r.toml"
    p.write_text('[catalog]\npath = "db/c.sqlite"\n[artifacts]\nroot = "/abs/art"\n')
    cfg = load_config(str(p), env={})
    assert cfg.catalog_path == str(sub / "db/c.sqlite")
    assert cfg.artifact_root == "/abs/art"
    assert cfg.state_dir == str(sub / ".retention")


def test_env_config_path_is_used(tmp_path: Path) -> None:
    p = write(tmp_path, "[policy]\nkeep_last = 3\n")
    assert load_config(None, env={"RETENTION_CONFIG": str(p)}).keep_last == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[policy]\nkeep_last = -2\n", "policy.keep_last"),  # -1 is restic's unlimited
        ('[policy]\nmax_age = "soon"\n', "policy.max_age"),
        ("[catalog]\nnope = 1\n", "unknown setting 'catalog.nope'"),
        ("[catalog\n", "not valid TOML"),
        ('[catalog]\ntime_format = "weird"\n', "catalog.time_format"),
        ("[catalog]\nchild_tables = [{table = 1}]\n", "catalog.child_tables"),
    ],
)
def test_bad_config_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(str(p), env={})
    assert message in info.value.message
    assert info.value.exit_code == 2


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"), env={})


def test_config_command_prints_values_and_sources(workspace: Path) -> None:
    write(workspace, "[policy]\nkeep_last = 12\n")
    result = invoke("config")
    assert result.exit_code == 0
    assert "policy.keep_last" in result.stdout and "12" in result.stdout
    assert "# file" in result.stdout and "retention.toml" in result.stdout
    result = invoke("config", "--json")
    assert '"keep_last":12' in result.stdout


def test_bad_config_via_cli_is_one_clear_line(workspace: Path) -> None:
    write(workspace, "[policy]\nkeep_last = -3\n")
    result = invoke("plan")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: policy.keep_last")
    assert "Traceback" not in result.stderr
