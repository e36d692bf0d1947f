"""The policy in the ``[policy]`` table, the environment and flags (issue 8 item 8, for the
calendar rules, floors, filters, protections and the budget): values, sources, precedence,
and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retention.config import load_config, render_config
from retention.errors import ConfigError
from retention.planner import policy_from_config

from .conftest import NOW_TEXT, invoke

FULL = """
[policy]
keep_last = 3
keep_hourly = 24
keep_daily = "unlimited"
keep_weekly = 4
keep_monthly = -1
keep_yearly = 10
keep_within = "1y2m"
keep_within_hourly = "2d"
keep_within_daily = "7d"
keep_within_weekly = "1m"
keep_within_monthly = "1y"
keep_within_yearly = "75y"
keep_tags = ["release,db", ["nightly"], ""]
tags_column = "tags"
tz = "Europe/Berlin"
checkpoint = "first"
min_keep = 5
state_column = "state"
terminal_states = ["completed", "failed"]
pin_column = "preserved"
kind_column = "kind"
newest_of_kind = ["full"]
parent_column = "parent_id"
max_total_size = "50G"
size_column = "size_bytes"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "retention.toml"
    p.write_text(text)
    return p


def test_every_policy_setting_in_the_policy_table(tmp_path: Path) -> None:
    p = write(tmp_path, FULL)
    cfg = load_config(str(p), env={})
    assert (cfg.keep_last, cfg.keep_hourly, cfg.keep_daily, cfg.keep_weekly) == (3, 24, -1, 4)
    assert (cfg.keep_monthly, cfg.keep_yearly) == (-1, 10)
    assert cfg.keep_within == "1y2m" and cfg.keep_within_yearly == "75y"
    assert cfg.keep_tags == (("release", "db"), ("nightly",), ("",))
    assert cfg.max_total_size == 50 << 30
    assert all(src == f"file {p}" for f, src in cfg.sources.items() if f.startswith("keep_"))
    spec = policy_from_config(cfg)
    assert spec.keep_daily == -1 and spec.checkpoint == "first" and spec.tz == "Europe/Berlin"
    assert spec.terminal_states == ("completed", "failed")
    assert spec.pins and spec.dependencies and spec.newest_of_kind == ("full",)
    assert spec.min_keep == 5 and spec.max_total_bytes == 50 << 30
    rows = {key: (value, source) for key, value, source in render_config(cfg)}
    assert rows["policy.keep_tags"] == ("release,db; nightly; ''", f"file {p}")
    assert rows["policy.keep_daily"][0] == "-1"
    assert rows["policy.max_total_size"][0] == "53687091200"
    assert rows["policy.checkpoint"] == ("first", f"file {p}")


def test_environment_names_and_forms(tmp_path: Path) -> None:
    env = {
        "RETENTION_KEEP_DAILY": "7",
        "RETENTION_KEEP_WEEKLY": "unlimited",
        "RETENTION_KEEP_WITHIN": "30d",
        "RETENTION_KEEP_WITHIN_MONTHLY": "1y",
        "RETENTION_KEEP_TAGS": "a,b;c",
        "RETENTION_TAGS_COLUMN": "labels",
        "RETENTION_TZ": "UTC",
        "RETENTION_CHECKPOINT": "first",
        "RETENTION_MIN_KEEP": "2",
        "RETENTION_STATE_COLUMN": "status",
        "RETENTION_TERMINAL_STATES": "done,failed",
        "RETENTION_PIN_COLUMN": "pinned",
        "RETENTION_KIND_COLUMN": "kind",
        "RETENTION_NEWEST_OF_KIND": "full,diff",
        "RETENTION_PARENT_COLUMN": "parent",
        "RETENTION_MAX_TOTAL_SIZE": "512M",
        "RETENTION_SIZE_COLUMN": "bytes",
    }
    cfg = load_config(None, env=env)
    assert (cfg.keep_daily, cfg.keep_weekly, cfg.keep_within) == (7, -1, "30d")
    assert cfg.keep_tags == (("a", "b"), ("c",))
    assert cfg.terminal_states == ("done", "failed")
    assert cfg.newest_of_kind == ("full", "diff")
    assert cfg.max_total_size == 512 << 20
    assert cfg.sources["keep_daily"] == "env RETENTION_KEEP_DAILY"
    assert cfg.keep_last is None  # a rule was given: no default keep-last


def test_a_flag_replaces_only_its_own_setting(tmp_path: Path) -> None:
    p = write(tmp_path, "[policy]\nkeep_daily = 7\nkeep_weekly = 4\nkeep_tags = ['x']\n")
    cfg = load_config(
        str(p), env={"RETENTION_KEEP_WEEKLY": "5"}, overrides={"keep_daily": 3, "keep_tags": None}
    )
    assert cfg.keep_daily == 3 and cfg.sources["keep_daily"] == "flag"
    assert cfg.keep_weekly == 5 and cfg.sources["keep_weekly"] == "env RETENTION_KEEP_WEEKLY"
    assert cfg.keep_tags == (("x",),) and cfg.sources["keep_tags"] == f"file {p}"
    cfg = load_config(str(p), env={}, overrides={"keep_tags": ("a,b", "c")})
    assert cfg.keep_tags == (("a", "b"), ("c",)) and cfg.keep_daily == 7


def test_only_protections_still_get_the_default_rule(tmp_path: Path) -> None:
    p = write(tmp_path, '[policy]\nmin_keep = 3\npin_column = "p"\n')
    cfg = load_config(str(p), env={})
    assert cfg.keep_last == 100 and cfg.sources["keep_last"] == "default (no rule given)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keep_daily = -2", "policy.keep_daily (from file"),
        ("keep_daily = 'lots'", "expected a whole number >= 0, or unlimited (-1)"),
        ("keep_daily = true", "policy.keep_daily"),
        ("keep_within = '1w'", "policy.keep_within (from file"),
        ("keep_within = 7", "policy.keep_within"),
        ("keep_tags = [1]", "policy.keep_tags"),
        ("keep_tags = []", "policy.keep_tags"),
        ("tz = 'Nowhere/Special'", "unknown time zone 'Nowhere/Special'"),
        ("checkpoint = 'middle'", "expected last or first"),
        ("min_keep = -1", "policy.min_keep"),
        ("terminal_states = []", "policy.terminal_states"),
        ("max_total_size = '5 parsecs'", "invalid size '5 parsecs'"),
        ("max_total_size = 1.5", "policy.max_total_size"),
        ("keep_dayly = 3", "unknown setting 'policy.keep_dayly'"),
    ],
)
def test_bad_policy_values_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, f"[policy]\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(p), env={})
    assert message in info.value.message
    assert info.value.exit_code == 2


def test_unknown_policy_setting_suggests_the_right_one(tmp_path: Path) -> None:
    p = write(tmp_path, "[policy]\nkeep_dayly = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(p), env={})
    assert info.value.hint == "did you mean policy.keep_daily?"


@pytest.mark.parametrize(
    "text",
    [
        "keep_last = 0",
        "keep_daily = 0\nkeep_weekly = 0",
        "keep_within = '0d'",
        "keep_last = 0\nmin_keep = 10\npin_column = 'p'",  # a floor is not a rule
    ],
)
def test_an_empty_policy_from_the_file_is_refused(workspace: Path, text: str) -> None:
    write(workspace, f"[policy]\n{text}\n")
    result = invoke("plan", "--now", NOW_TEXT)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == "Error: refusing a policy that keeps nothing"
    assert result.stdout == ""


def test_retention_config_shows_the_policy_with_sources(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(workspace, '[policy]\nkeep_daily = 7\nkeep_tags = ["a,b"]\ntags_column = "strategy"\n')
    monkeypatch.setenv("RETENTION_KEEP_MONTHLY", "unlimited")
    result = invoke("config")
    assert result.exit_code == 0
    lines = {ln.split()[0]: ln for ln in result.stdout.splitlines() if ln.startswith("policy.")}
    assert lines["policy.keep_daily"].split("#")[1].strip().startswith("file ")
    assert "-1" in lines["policy.keep_monthly"]
    assert lines["policy.keep_monthly"].endswith("# env RETENTION_KEEP_MONTHLY")
    assert "a,b" in lines["policy.keep_tags"]
    assert lines["policy.keep_last"].split()[1] == "(none)"  # a rule was given
    assert lines["policy.checkpoint"].endswith("# default")
    data = json.loads(invoke("config", "--json").stdout)
    assert data["keep_daily"] == 7 and data["keep_monthly"] == -1
    assert data["keep_tags"] == [["a", "b"]]


def test_the_policy_from_the_file_plans_like_the_flags(workspace: Path) -> None:
    write(workspace, "[policy]\nkeep_monthly = 6\nkeep_weekly = 4\n")
    from_file = json.loads(invoke("plan", "--now", NOW_TEXT).stdout)["payload"]
    (workspace / "retention.toml").unlink()
    flags = ("--keep-monthly", "6", "--keep-weekly", "4", "--now", NOW_TEXT)
    from_flags = json.loads(invoke("plan", *flags).stdout)["payload"]
    assert from_file["policy"] == from_flags["policy"] == {"keep_weekly": 4, "keep_monthly": 6}
    assert from_file["entries"] == from_flags["entries"]
    assert len(from_file["entries"]) > 0


# -- groups and tiers -------------------------------------------------------------------------

TIERED = """
[policy]
group_by = ["org_id"]
tier_table = "organizations"
tier_column = "plan"
min_keep = 1

[policy.tiers.free]
days = 30

[policy.tiers.pro]
days = 365
keep_monthly = 12

[policy.tiers.enterprise]
days = -1
"""


def _tiered(tmp_path: Path, text: str = TIERED, env: dict[str, str] | None = None):
    path = tmp_path / "retention.toml"
    path.write_text(text)
    return load_config(str(path), env=env or {})


def test_each_tier_is_the_base_policy_with_its_own_settings_over_it(tmp_path: Path) -> None:
    spec = policy_from_config(_tiered(tmp_path))
    assert spec.group_by == ("org_id",)
    assert spec.tiers is not None and set(spec.tiers) == {"free", "pro", "enterprise"}
    free, pro, ent = spec.tiers["free"], spec.tiers["pro"], spec.tiers["enterprise"]
    assert (free.max_age_seconds, free.min_keep, free.keep_last) == (30 * 86400, 1, None)
    assert (pro.max_age_seconds, pro.keep_monthly) == (365 * 86400, 12)
    assert (ent.keep_last, ent.max_age_seconds) == (-1, None)  # -1 keeps forever
    assert spec.keep_last is None  # no default keep-last 100 when tiers give the rules


def test_days_from_the_environment_replace_a_tiers_days_with_their_source(tmp_path: Path) -> None:
    cfg = _tiered(tmp_path, env={"RETENTION_DAYS_FREE": "7", "RETENTION_DAYS_PRO": "-1"})
    spec = policy_from_config(cfg)
    assert spec.tiers is not None
    assert spec.tiers["free"].max_age_seconds == 7 * 86400
    assert spec.tiers["pro"].keep_last == -1
    rows = {k: (v, src) for k, v, src in render_config(cfg)}
    assert rows["policy.tiers.free.days"] == ("7", "env RETENTION_DAYS_FREE")
    assert rows["policy.tiers.pro.days"] == ("-1 (keep forever)", "env RETENTION_DAYS_PRO")
    assert rows["policy.tiers.pro.keep_monthly"][0] == "12"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            TIERED + "\n[policy.tiers.basic]\nday = 90\n",
            {},
            "policy.tiers.basic: unknown setting 'day'",
        ),
        (TIERED + "\n[policy.tiers.basic]\ndays = 0\n", {}, "expected a whole number of days >= 1"),
        (TIERED + "\n[policy.tiers.basic]\ndays = 9\nmax_age = '9d'\n", {}, "not both"),
        (TIERED, {"RETENTION_DAYS_GOLD": "5"}, "env RETENTION_DAYS_GOLD names no tier"),
        (TIERED, {"RETENTION_DAYS_FREE": "soon"}, "from env RETENTION_DAYS_FREE"),
    ],
)
def test_bad_tier_settings_are_refused_naming_the_setting(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _tiered(tmp_path, text, env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TIERED.replace('tier_column = "plan"', ""), "policy.tiers needs policy.tier_column"),
        ('[policy]\ntier_column = "plan"\n', "policy.tier_column needs"),
        (
            TIERED.replace('group_by = ["org_id"]', ""),
            "policy.tier_table needs policy.tier_join",
        ),
    ],
)
def test_incomplete_tier_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from_config(_tiered(tmp_path, text))


def test_group_by_flag_splits_on_commas(workspace: Path) -> None:
    out = invoke("config", "--json")
    assert json.loads(out.stdout)["group_by"] is None
    cfg = load_config(None, env={}, overrides={"group_by": "a, b"})
    assert cfg.group_by == ("a", "b") and cfg.sources["group_by"] == "flag"


ROWS = """
[policy]
group_by = ["tenant_id"]

[policy.rows]
table = "execution_retention_policies"
key = "tenant_id"
days = "retention_days"
enabled = "is_enabled"
"""


def test_policy_rows_are_listed_by_config_with_their_source(tmp_path: Path) -> None:
    cfg = _tiered(tmp_path, ROWS)
    rows = {k: (v, src) for k, v, src in render_config(cfg)}
    assert rows["policy.rows.table"][0] == "execution_retention_policies"
    assert rows["policy.rows.days"][0] == "retention_days"
    assert cfg.keep_last is None  # no default keep-last 100 when rows give the rules
    spec = policy_from_config(cfg)
    assert spec.tier_rows == "execution_retention_policies" and spec.tiers is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ROWS.replace('group_by = ["tenant_id"]', ""), "policy.rows needs policy.group_by"),
        (ROWS + '\n[policy.tiers.free]\ndays = 3\ntier_column = "x"\n', "unknown setting"),
        (
            ROWS.replace('days = "retention_days"', "").replace('enabled = "is_enabled"', ""),
            "name the days or min_keep column",
        ),
        (ROWS.replace('table = "execution_retention_policies"', ""), "policy.rows"),
    ],
)
def test_incomplete_policy_rows_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        policy_from_config(_tiered(tmp_path, text))
