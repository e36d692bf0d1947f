"""`retention explain RUN_ID [MANIFEST]`, `plan --explain RUN_ID` and `show --kept`, on real
SQLite catalogs through the CLI.

The catalog is a small backups table (one run a day, 2026-03-22 to 2026-03-31, plus a second
run on the 31st) with a pin, a parent and a state column, so that rules, calendar periods,
protections and dependencies each read a real column.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from retention.explain import Evaluation, explain_in, reason_rule
from retention.policy import Attrs, Item, PolicySpec, evaluate

from .conftest import NOW_TEXT, invoke

NOW = "2026-04-01T00:00:00Z"

SCHEMA = """
CREATE TABLE backups (
    backup_id TEXT PRIMARY KEY,
    created_at TEXT,
    parent_id TEXT REFERENCES backups(backup_id),
    preserved INTEGER DEFAULT 0,
    state TEXT DEFAULT 'completed',
    org TEXT
);
"""

CONFIG = """
[catalog]
path = "catalog.db"
runs_table = "backups"
id_column = "backup_id"
time_columns = ["created_at"]
child_tables = []

[artifacts]
root = "backups"
path_template = "{backup_id}"
"""

# d01 ... d10: one run a day at noon, 2026-03-22 to 2026-03-31; e31: the 31st at 06:00.
DAILY = [
    {"backup_id": f"d{n:02d}", "created_at": f"2026-03-{21 + n:02d}T12:00:00Z"}
    for n in range(1, 11)
] + [{"backup_id": "e31", "created_at": "2026-03-31T06:00:00Z"}]

KEEP_LAST_1_DAILY_3 = "\n[policy]\nkeep_last = 1\nkeep_daily = 3\n"


def make(ws: Path, rows: list[dict], extra: str = "", config: str = CONFIG) -> None:
    db = sqlite3.connect(ws / "catalog.db")
    db.executescript(SCHEMA)
    for r in rows:
        cols = ", ".join(r)
        db.execute(
            f"INSERT INTO backups ({cols}) VALUES ({', '.join('?' * len(r))})", list(r.values())
        )
        d = ws / "backups" / r["backup_id"]
        d.mkdir(parents=True)
        (d / "data.bin").write_bytes(b"x" * 10)
    db.commit()
    db.close()
    (ws / "retention.toml").write_text(config + extra)


def sql(ws: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(ws / "catalog.db")
    db.execute(statement, args)
    db.commit()
    db.close()


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path


def explain_json(*args: str) -> dict:
    result = invoke("explain", "--json", *args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def explain_text(*args: str) -> list[str]:
    result = invoke("explain", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def plan_to(name: str, *args: str) -> dict:
    result = invoke("plan", "--now", NOW, "-o", name, *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(Path(name).read_bytes())["payload"]


def rules(e: dict) -> dict[str, tuple[bool, str]]:
    return {r["rule"]: (r["keeps"], r["detail"]) for r in e["rules"]}


# -- one run, the configured policy ----------------------------------------------------------


def test_a_run_kept_by_two_rules_lists_both_reasons_and_what_each_rule_saw(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    e = explain_json("d10", "--now", NOW)
    assert e["kept"] is True and e["basis"] == "config" and e["now"] == NOW
    assert e["reasons"] == ["kept: among the newest 1", "kept: daily checkpoint 2026-03-31"]
    assert e["time"] == "2026-03-31T12:00:00Z"
    assert (e["position"], e["counted"]) == (1, 11)
    assert rules(e) == {
        "keep-last 1": (
            True,
            "number 1 of the 11 runs it counts, newest first: among the newest 1",
        ),
        "keep-daily 3": (True, "slot 1 of 3, for day 2026-03-31"),
    }
    lines = explain_text("d10", "--now", NOW)
    assert lines[0] == "Run d10: kept."
    assert lines[lines.index("Reasons:") + 1 :][:2] == [
        "  kept: among the newest 1",
        "  kept: daily checkpoint 2026-03-31",
    ]
    assert "  keep-daily 3  keeps it  slot 1 of 3, for day 2026-03-31" in lines


def test_a_removed_run_says_why_and_each_rule_says_why_not(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    e = explain_json("d07", "--now", NOW)
    assert e["kept"] is False
    assert e["reasons"] == [
        "removed: not among the newest 1 and not a daily checkpoint (keep-daily 3)"
    ]
    assert rules(e) == {
        "keep-last 1": (
            False,
            "number 5 of the 11 runs it counts, newest first: past the newest 1",
        ),
        "keep-daily 3": (
            False,
            "day 2026-03-28: its 3 slots went to newer days (the last to day 2026-03-29)",
        ),
    }
    assert explain_text("d07", "--now", NOW)[0] == "Run d07: removed."


def test_a_calendar_reason_names_its_period_and_a_removed_run_names_who_holds_its_period(
    ws: Path,
) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    kept = explain_json("d09", "--now", NOW)
    assert kept["reasons"] == ["kept: daily checkpoint 2026-03-30"]
    assert rules(kept)["keep-daily 3"] == (True, "slot 2 of 3, for day 2026-03-30")
    # e31 is the older of the two runs of the 31st: d10 holds that day
    held = explain_json("e31", "--now", NOW)
    assert held["kept"] is False
    assert rules(held)["keep-daily 3"] == (
        False,
        "day 2026-03-31 is held by run d10 (newer; the rule keeps the newest of a day)",
    )


def test_a_period_is_taken_in_the_runs_recorded_offset_and_the_time_shows_both(ws: Path) -> None:
    rows = [
        {"backup_id": "a", "created_at": "2026-03-10T01:00:00+02:00"},  # the 9th in UTC
        {"backup_id": "b", "created_at": "2026-03-09T22:00:00Z"},
        {"backup_id": "c", "created_at": "2026-03-08T12:00:00Z"},
    ]
    make(ws, rows, "\n[policy]\nkeep_daily = 2\n")
    e = explain_json("a", "--now", NOW)
    assert e["time"] == "2026-03-09T23:00:00Z"
    assert e["recorded_time"] == "2026-03-10T01:00:00+02:00"
    assert e["reasons"] == ["kept: daily checkpoint 2026-03-10"]
    assert rules(explain_json("c", "--now", NOW))["keep-daily 2"] == (
        False,
        "day 2026-03-08: its 2 slots went to newer days (the last to day 2026-03-09)",
    )
    lines = explain_text("a", "--now", NOW)
    assert lines[1] == "  time: 2026-03-09T23:00:00Z (recorded as 2026-03-10T01:00:00+02:00)"


def test_a_run_in_the_future_is_younger_than_max_age(ws: Path) -> None:
    make(
        ws,
        [*DAILY, {"backup_id": "f", "created_at": "2026-04-02T12:00:00Z"}],
        '\n[policy]\nmax_age = "1d"\n',
    )
    e = explain_json("f", "--now", NOW)
    assert rules(e) == {
        "max-age 1d": (True, "1d 12h in the future at 2026-04-01T00:00:00Z: younger than 1d")
    }


def test_max_age_and_keep_within_show_the_age_and_the_cutoff(ws: Path) -> None:
    make(ws, DAILY, '\n[policy]\nmax_age = "5d"\nkeep_within = "2d"\n')
    e = explain_json("d05", "--now", NOW)
    assert e["kept"] is False
    assert rules(e) == {
        "max-age 5d": (False, "5d 12h old at 2026-04-01T00:00:00Z: not younger than 5d"),
        "keep-within 2d": (
            False,
            "2d before the newest run (2026-03-31T12:00:00Z) is 2026-03-29T12:00:00Z;"
            " this run is not after it",
        ),
    }


def test_pinned_and_dependency_reasons_and_the_parent_it_depends_on(ws: Path) -> None:
    rows = [
        {"backup_id": "full", "created_at": "2026-03-01T00:00:00Z"},
        {"backup_id": "inc1", "created_at": "2026-03-02T00:00:00Z", "parent_id": "full"},
        {"backup_id": "inc2", "created_at": "2026-03-31T00:00:00Z", "parent_id": "inc1"},
        {"backup_id": "pin", "created_at": "2026-02-01T00:00:00Z", "preserved": 1},
        {"backup_id": "old", "created_at": "2026-01-01T00:00:00Z"},
    ]
    policy = '\n[policy]\nkeep_last = 1\npin_column = "preserved"\nparent_column = "parent_id"\n'
    make(ws, rows, policy)
    inc1 = explain_json("inc1", "--now", NOW)
    assert inc1["kept"] is True
    assert inc1["reasons"] == ["kept: run inc2 depends on it"]
    assert (inc1["parent"], inc1["parent_kept"]) == ("full", True)
    assert rules(inc1)["keep-last 1"][0] is False  # no rule keeps it: the dependency does
    assert explain_json("full", "--now", NOW)["reasons"] == ["kept: run inc1 depends on it"]
    pin = explain_json("pin", "--now", NOW)
    assert pin["reasons"] == ["kept: pinned"] and pin["kept"] is True
    lines = explain_text("inc1", "--now", NOW)
    assert "  depends on run full (kept)" in lines
    old = explain_json("old", "--now", NOW)
    assert old["kept"] is False and old["parent"] is None


def test_a_budget_removal_shows_the_rule_it_overruled_and_a_non_terminal_run_is_not_counted(
    ws: Path,
) -> None:
    rows = [{**r, "state": "running" if r["backup_id"] == "d03" else "completed"} for r in DAILY]
    policy = '\n[policy]\nkeep_daily = 7\nmax_total_size = "30"\nstate_column = "state"\n'
    make(ws, rows[:10], policy)  # directories of 10 bytes each, measured on disk
    e = explain_json("d05", "--now", NOW)
    assert e["kept"] is False
    assert e["reasons"] == [
        "removed: over the size budget of 30 B",
        "overruled: daily checkpoint 2026-03-26",
    ]
    assert rules(e) == {"keep-daily 7": (True, "slot 6 of 7, for day 2026-03-26")}
    assert e["size"] == 10
    assert e["budget"] == (
        "size budget 30 B: the kept runs held 80 B before it, 30 B after it removed 5 runs"
    )
    assert (e["position"], e["counted"]) == (6, 9)  # d03 is not counted
    running = explain_json("d03", "--now", NOW)
    assert running["reasons"] == ["kept: state 'running' is not terminal"]
    assert (running["position"], running["rules"]) == (None, [])
    assert running["notes"] == ["the rules do not count it: its state 'running' is not terminal"]


def test_a_run_that_catalog_filter_leaves_out_is_not_considered_exit_0(ws: Path) -> None:
    rows = [*DAILY, {"backup_id": "busy", "created_at": "2026-01-01T00:00:00Z", "state": "running"}]
    config = CONFIG.replace(
        "child_tables = []", "child_tables = []\nfilter = \"state = 'completed'\""
    )
    make(ws, rows, KEEP_LAST_1_DAILY_3, config=config)
    e = explain_json("busy", "--now", NOW)
    assert (e["in_catalog"], e["considered"], e["kept"]) == (True, False, None)
    assert "catalog.filter does not select it" in e["notes"][0]
    assert explain_text("busy", "--now", NOW)[0] == "Run busy: not considered by the policy."


def test_a_grouped_run_is_placed_and_counted_within_its_group(ws: Path) -> None:
    rows = [
        {"backup_id": f"{org}{n}", "created_at": f"2026-03-{10 + n:02d}T00:00:00Z", "org": org}
        for org, runs in (("a", 3), ("b", 2))
        for n in range(runs)
    ]
    make(ws, rows, '\n[policy]\ngroup_by = ["org"]\nkeep_last = 1\n')
    e = explain_json("a1", "--now", NOW)
    assert (e["kept"], e["group"], e["group_label"]) == (False, ["a"], "org=a")
    assert (e["position"], e["counted"]) == (2, 3)
    assert rules(e)["keep-last 1"] == (
        False,
        "number 2 of the 3 runs it counts, newest first: past the newest 1",
    )
    lines = explain_text("a1", "--now", NOW)
    assert "  group: org=a" in lines
    assert "Position: number 2 of the 3 runs of its group the rules count, newest first." in lines
    plan_to("m.json")
    kept = json.loads(invoke("show", "--kept", "--json", "m.json").stdout)["kept"]
    assert kept["by_group"] == [
        {"group": "org=a", "considered": 3, "kept": 1, "removed": 2},
        {"group": "org=b", "considered": 2, "kept": 1, "removed": 1},
    ]
    assert [(r["run_id"], r["group"]) for r in kept["runs"]] == [("a2", ["a"]), ("b1", ["b"])]


# -- ids -------------------------------------------------------------------------------------


def test_an_unknown_run_id_is_one_error_line_and_exit_2_and_plan_writes_nothing(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    result = invoke("explain", "nope", "--now", NOW)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines()[0] == (
        "Error: run 'nope' is not in the catalog (backups.backup_id)"
    )
    assert "Traceback" not in result.stderr
    plan_to("m.json")
    assert invoke("explain", "nope", "m.json").exit_code == 2
    result = invoke("plan", "--now", NOW, "-o", "m2.json", "--explain", "nope")
    assert result.exit_code == 2
    assert not (ws / "m2.json").exists()


def test_an_integer_run_id_is_found_from_its_text(ws: Path) -> None:
    db = sqlite3.connect(ws / "catalog.db")
    db.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY, created_at TEXT)")
    for n in range(40, 45):
        db.execute("INSERT INTO runs VALUES (?, ?)", (n, f"2026-03-{n - 20:02d}T00:00:00Z"))
        (ws / "art" / str(n)).mkdir(parents=True)
    db.commit()
    db.close()
    (ws / "retention.toml").write_text(
        '[catalog]\npath = "catalog.db"\nruns_table = "runs"\nid_column = "run_id"\n'
        'time_columns = ["created_at"]\nchild_tables = []\n'
        '[artifacts]\nroot = "art"\npath_template = "{run_id}"\n[policy]\nkeep_last = 2\n'
    )
    e = explain_json("42", "--now", NOW)
    assert e["run_id"] == 42 and e["kept"] is False and e["position"] == 3
    assert explain_text("44", "--now", NOW)[0] == "Run 44: kept."
    plan_to("m.json")
    assert explain_json("42", "m.json")["manifest"]["in_manifest"] is True


def test_control_characters_in_a_run_id_are_escaped(ws: Path) -> None:
    make(ws, [*DAILY, {"backup_id": "x\x1b[2Jy", "created_at": "2026-01-01T00:00:00Z"}])
    (ws / "retention.toml").write_text(CONFIG + KEEP_LAST_1_DAILY_3)
    result = invoke("explain", "x\x1b[2Jy", "--now", NOW)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout
    assert result.stdout.splitlines()[0] == "Run x\\x1b[2Jy: removed."


# -- against a manifest ----------------------------------------------------------------------


def test_explain_with_a_manifest_uses_its_policy_and_now_and_agrees(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    plan_to("m.json")
    # The configured policy changes after the plan: the manifest's still explains it.
    (ws / "retention.toml").write_text(CONFIG + "\n[policy]\nkeep_last = 100\n")
    e = explain_json("d01", "m.json")
    assert e["basis"] == "manifest" and e["now"] == NOW and e["kept"] is False
    m = e["manifest"]
    assert m["in_manifest"] is True and m["agrees"] is True and m["expired"] is False
    assert m["entry_reason"] == e["reasons"][0]
    kept = explain_json("d10", "m.json")["manifest"]
    assert (kept["in_manifest"], kept["agrees"]) == (False, True)
    assert invoke("explain", "d01", "m.json", "--now", NOW).exit_code == 2


def test_explain_with_a_manifest_after_the_catalog_changed_says_they_disagree(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    payload = plan_to("m.json")
    assert "e31" in {x["run_id"] for x in payload["entries"]}
    sql(ws, "DELETE FROM backups WHERE backup_id IN ('d10', 'd09')")
    e = explain_json("e31", "m.json")
    # now the newest run: keep-last keeps it, though the manifest deletes it
    assert e["kept"] is True and e["reasons"][0] == "kept: among the newest 1"
    m = e["manifest"]
    assert (m["in_manifest"], m["agrees"]) == (True, False)
    assert "the catalog changed since the plan" in m["note"]
    lines = explain_text("e31", "m.json")
    assert any(line.startswith("  Warning: the manifest deletes it, but") for line in lines)
    # a run deleted since: explained from the manifest's entry, exit 0
    sql(ws, "DELETE FROM backups WHERE backup_id = 'd01'")
    gone = explain_json("d01", "m.json")
    assert (gone["in_catalog"], gone["kept"], gone["time"]) == (False, None, "2026-03-22T12:00:00Z")
    assert gone["manifest"]["in_manifest"] is True and gone["manifest"]["agrees"] is None
    assert explain_text("d01", "m.json")[0] == "Run d01: not in the catalog."


def test_explain_after_apply_names_the_apply_that_deleted_the_run(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    plan_to("m.json")
    applied = invoke("apply", "m.json")
    assert applied.exit_code == 0, applied.stderr
    txid = json.loads(applied.stdout)["txid"]
    e = explain_json("d01", "m.json")
    assert e["manifest"]["applied_by"] == [txid]
    assert e["manifest"]["note"] == f"no longer in the catalog: deleted by {txid}"


# -- plan --explain --------------------------------------------------------------------------


def test_plan_explain_writes_the_same_manifest_and_explains_after_the_summary(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    plain = invoke("plan", "--now", NOW)
    explained = invoke("plan", "--now", NOW, "--explain", "d07")
    assert explained.exit_code == 0, explained.stderr
    assert explained.stdout_bytes == plain.stdout_bytes  # the manifest is untouched
    err = explained.stderr.splitlines()
    summary = plain.stderr.splitlines()
    assert err[: len(summary)] == summary  # the summary first, whole
    rest = err[len(summary) :]
    assert rest[0] == "Run d07: removed."
    assert rest[1] == "  time: 2026-03-28T12:00:00Z"
    assert rest[2] == f"Evaluated with this plan's policy at {NOW}:"
    assert "  Agrees: it is an entry of the manifest: apply deletes it" in rest


def test_plan_explain_of_a_run_the_plan_left_out_gives_the_skip_reason(ws: Path) -> None:
    # Every run's directory is the same one ("completed"): plan leaves every candidate out.
    make(ws, DAILY, KEEP_LAST_1_DAILY_3, config=CONFIG.replace("{backup_id}", "{state}"))
    (ws / "backups" / "completed").mkdir()
    result = invoke("plan", "--now", NOW, "-o", "m.json", "--explain", "d01")
    assert result.exit_code == 3, result.stderr
    err = result.stderr.splitlines()
    warning = next(line for line in err if line.startswith("  Warning: "))
    assert warning.startswith(
        "  Warning: the policy removes it, but the plan left it out of the manifest:"
    )
    assert "directory" in warning


# -- show --kept -----------------------------------------------------------------------------


def test_show_kept_counts_per_rule_match_the_plans_kept_count(workspace: Path) -> None:
    args = ("plan", "--keep-last", "3", "--keep-monthly", "6", "--max-age", "100d")
    assert invoke(*args, "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    payload = json.loads(Path("m.json").read_bytes())["payload"]
    result = invoke("show", "--kept", "--json", "m.json")
    assert result.exit_code == 0, result.stderr
    kept = json.loads(result.stdout)["kept"]
    assert kept["kept"] == payload["kept"] == len(kept["runs"]) == 8
    assert kept["considered"] == payload["considered"] == 40
    assert kept["removed"] == len(payload["entries"])
    assert kept["agrees"] is True
    assert kept["by_rule"] == [
        {"rule": "kept: monthly checkpoint <period>", "runs": 6},
        {"rule": "kept: younger than 100d", "runs": 5},
        {"rule": "kept: among the newest 3", "runs": 3},
    ]
    times = [r["time"] for r in kept["runs"]]
    assert times == sorted(times, reverse=True)  # newest first
    lines = invoke("show", "--kept", "--top", "2", "m.json").stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Kept: "))
    assert lines[start].startswith(
        "Kept: 8 of 40 runs (the manifest holds only the runs it removes: the kept runs come"
        f" from its policy re-evaluated at its now ({NOW_TEXT}) against the catalog as it is"
        " now (read-only))."
    )
    assert lines[start + 1 : start + 5] == [
        "By rule (a run kept by several rules counts under each):",
        "        6  kept: monthly checkpoint <period>",
        "        5  kept: younger than 100d",
        "        3  kept: among the newest 3",
    ]
    assert lines[start + 5] == "Newest 2 of the 8 kept runs; --top N for more, --json for all:"
    assert lines[start + 6].startswith("  bt-20261013-00039  2026-10-13T18:00:00Z  kept: among")
    assert not any(line.startswith("Warning") for line in lines)


def test_show_kept_warns_when_the_reevaluation_differs_from_the_manifest(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    plan_to("m.json")
    sql(ws, "DELETE FROM backups WHERE backup_id IN ('d10', 'd09')")
    sql(ws, "INSERT INTO backups (backup_id, created_at) VALUES ('new', '2026-03-01T00:00:00Z')")
    report = json.loads(invoke("show", "--kept", "--json", "m.json").stdout)["kept"]
    assert report["agrees"] is False
    assert report["in_manifest_but_kept"] == ["d07", "e31"]
    assert report["removed_not_in_manifest"] == ["new"]
    lines = invoke("show", "--kept", "m.json").stdout.splitlines()
    assert any(
        line.startswith("Warning: the manifest deletes 2 runs that the re-evaluation keeps (d07,")
        for line in lines
    )
    assert any(
        line.startswith("Warning: re-evaluated now, the policy removes 1 run that is not an entry")
        for line in lines
    )


def test_json_shapes_are_versioned_and_show_without_kept_is_unchanged(ws: Path) -> None:
    make(ws, DAILY, KEEP_LAST_1_DAILY_3)
    plan_to("m.json")
    e = explain_json("d07", "m.json")
    assert e["version"] == 1
    assert set(e) == {
        "format_version", "kind", "version", "run_id", "basis", "policy", "now", "in_catalog",
        "considered", "kept", "reasons", "time", "recorded_time", "group", "group_label",
        "tier", "position", "counted", "rules", "size", "budget", "parent", "parent_kept",
        "manifest", "notes",
    }  # fmt: skip
    assert set(e["manifest"]) == {
        "manifest_id", "planned_at", "expires_at", "expired", "in_manifest", "entry_reason",
        "agrees", "applied_by", "skipped", "note",
    }  # fmt: skip
    assert set(e["rules"][0]) == {"rule", "keeps", "detail"}
    shown = json.loads(invoke("show", "--json", "m.json").stdout)
    assert "kept" not in shown
    kept = json.loads(invoke("show", "--json", "--kept", "m.json").stdout)["kept"]
    assert kept["version"] == 1
    assert set(kept) == {
        "version", "basis", "now", "considered", "kept", "removed", "by_rule", "by_group",
        "runs", "removed_not_in_manifest", "in_manifest_but_kept",
        "in_manifest_not_considered", "agrees",
    }  # fmt: skip
    assert kept["runs"][0] == {
        "run_id": "d10",
        "time": "2026-03-31T12:00:00Z",
        "reasons": ["kept: among the newest 1", "kept: daily checkpoint 2026-03-31"],
        "group": None,
        "tier": None,
    }


# -- pieces ----------------------------------------------------------------------------------


def test_reasons_that_name_a_period_or_a_run_count_under_one_rule() -> None:
    assert reason_rule("kept: daily checkpoint 2026-03-12") == "kept: daily checkpoint <period>"
    assert reason_rule("kept: hourly checkpoint 2026-03-12 09h") == (
        "kept: hourly checkpoint <period>"
    )
    assert reason_rule("kept: weekly checkpoint 2016-W53 (first of the week)") == (
        "kept: weekly checkpoint <period> (first of the week)"
    )
    assert reason_rule("kept: monthly checkpoint 2026-03 within 1y of the newest run") == (
        "kept: monthly checkpoint <period> within 1y of the newest run"
    )
    assert (
        reason_rule("kept: oldest run, yearly checkpoint 2020 (the rule had slots left)")
        == "kept: oldest run, yearly checkpoint <period> (the rule had slots left)"
    )
    assert reason_rule("kept: run f1 depends on it") == "kept: a kept run depends on it"
    assert reason_rule("kept: among the newest 3") == "kept: among the newest 3"


def test_the_position_and_rules_are_those_of_the_runs_group() -> None:
    now = datetime(2026, 4, 1, tzinfo=UTC)
    items = [
        Item.make(
            f"{org}{n}",
            datetime(2026, 3, 10 + n, tzinfo=UTC),
            attrs=Attrs(group=(org,), tier=None),
        )
        for org in ("a", "b")
        for n in range(3)
    ]
    spec = msgspec.convert({"keep_last": 1, "group_by": ["org_id"]}, PolicySpec)
    ev = Evaluation(None, spec, now, None, items, evaluate(items, spec, now))  # type: ignore[arg-type]
    e = explain_in(ev, "a1", "config")
    assert e is not None
    assert (e.kept, e.position, e.counted) == (False, 2, 3)
    assert e.group == ["a"] and e.group_label == "org_id=a"
    assert [(r.rule, r.keeps) for r in e.rules] == [("keep-last 1", False)]


def test_a_run_is_explained_with_its_tiers_policy_or_as_kept_by_a_tier_without_one() -> None:
    now = datetime(2026, 4, 1, tzinfo=UTC)
    items = [
        Item.make(
            f"{org}{n}",
            datetime(2026, 3, 10 + n, tzinfo=UTC),
            attrs=Attrs(group=(org,), tier=tier),
        )
        for org, tier in (("a", "pro"), ("b", "free"))
        for n in range(3)
    ]
    spec = msgspec.convert(
        {"group_by": ["org_id"], "tiers": {"pro": {"keep_last": 2}}, "keep_last": 1}, PolicySpec
    )
    ev = Evaluation(None, spec, now, None, items, evaluate(items, spec, now))  # type: ignore[arg-type]
    pro = explain_in(ev, "a0", "config")
    assert pro is not None and pro.kept is False and pro.tier == "pro"
    assert pro.group_label == "org_id=a, tier pro"
    assert [(r.rule, r.keeps, r.detail) for r in pro.rules] == [
        ("keep-last 2", False, "number 3 of the 3 runs it counts, newest first: past the newest 2")
    ]
    free = explain_in(ev, "b0", "config")
    assert free is not None and free.kept is True and free.rules == []
    assert free.reasons == ["kept: tier 'free' has no policy"]
