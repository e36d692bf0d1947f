"""The policy through `retention plan`: a real SQLite catalog, real directories, the CLI.

The catalog is a backups table in the shape of USERS.md scenario 3 (tags, kind, parent,
preserved, size, state columns), so every rule and protection reads a real column.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from .conftest import invoke

NOW = "2026-04-01T00:00:00Z"

SCHEMA = """
CREATE TABLE backups (
    backup_id TEXT PRIMARY KEY,
    created_at TEXT,
    kind TEXT,
    parent_id TEXT REFERENCES backups(backup_id),
    preserved INTEGER DEFAULT 0,
    size_bytes INTEGER,
    tags TEXT,
    state TEXT DEFAULT 'completed'
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


def make(ws: Path, rows: list[dict], extra: str = "") -> None:
    """A catalog with ``rows`` (created_at required), a directory of size_bytes per row."""
    db = sqlite3.connect(ws / "catalog.db")
    db.executescript(SCHEMA)
    for r in rows:
        cols = ", ".join(r)
        db.execute(
            f"INSERT INTO backups ({cols}) VALUES ({', '.join('?' * len(r))})", list(r.values())
        )
        d = ws / "backups" / r["backup_id"]
        d.mkdir(parents=True)
        (d / "data.bin").write_bytes(b"x" * int(r.get("size_bytes") or 10))
    db.commit()
    db.close()
    (ws / "retention.toml").write_text(CONFIG + extra)


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path


def plan(*args: str) -> dict:
    result = invoke("plan", "--now", NOW, *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["payload"]


def removed(*args: str) -> set[str]:
    return {e["run_id"] for e in plan(*args)["entries"]}


def fails(code: int, *args: str) -> list[str]:
    result = invoke("plan", "--now", NOW, *args)
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


# -- calendar rules --------------------------------------------------------------------------

OFFSETS = [
    # the same instant twice: 2026-03-09T23:00Z, recorded as the 10th in +02:00
    {"backup_id": "a", "created_at": "2026-03-10T01:00:00+02:00"},
    {"backup_id": "b", "created_at": "2026-03-09T22:00:00Z"},
    {"backup_id": "c", "created_at": "2026-03-08T12:00:00"},  # naive: UTC
    {"backup_id": "d", "created_at": "1772884800"},  # epoch: 2026-03-07T12:00Z
    {"backup_id": "e", "created_at": "2026-03-06T12:00:00Z"},
]


def test_keep_daily_takes_days_in_each_runs_recorded_offset(ws: Path) -> None:
    make(ws, OFFSETS)
    # a is the 10th (its own +02:00), b the 9th, c the 8th: three days, three runs
    assert removed("--keep-daily", "3") == {"d", "e"}
    # in UTC, a and b are the same day (9th): a, the newer, keeps it; c, d are next
    assert removed("--keep-daily", "3", "--tz", "UTC") == {"b", "e"}
    payload = plan("--keep-daily", "3", "--tz", "UTC")
    assert payload["policy"] == {"keep_daily": 3, "tz": "UTC"}
    assert "Calendar periods are taken in UTC." in payload["policy_text"]
    entries = {e["run_id"]: e for e in payload["entries"]}
    assert entries["b"]["reason"] == "removed: not a daily checkpoint (keep-daily 3)"
    assert entries["b"]["time"] == "2026-03-09T22:00:00Z"  # manifests stay in UTC


def test_unlimited_and_minus_one_are_the_same(ws: Path) -> None:
    make(ws, OFFSETS)
    assert removed("--keep-daily", "unlimited") == removed("--keep-daily", "-1") == set()
    assert plan("--keep-weekly", "UNLIMITED")["policy"] == {"keep_weekly": -1}


def test_keep_within_from_the_newest_run_and_checkpoint_first(ws: Path) -> None:
    make(ws, OFFSETS)
    # newest a (2026-03-09T23:00Z); 2d back: 03-07T23:00Z in a's +02:00 is the same instant
    assert removed("--keep-within", "2d") == {"d", "e"}
    # the first run of the latest two days (own offsets: a's 10th, b's 9th)
    assert removed("--keep-daily", "2", "--checkpoint", "first") == {"c", "d", "e"}


def test_keep_tag_reads_comma_text_and_json_arrays(ws: Path) -> None:
    make(
        ws,
        [
            {"backup_id": "csv", "created_at": "2026-03-01T00:00:00Z", "tags": "release, db"},
            {"backup_id": "json", "created_at": "2026-03-02T00:00:00Z", "tags": '["db","release"]'},
            {"backup_id": "one", "created_at": "2026-03-03T00:00:00Z", "tags": "db"},
            {"backup_id": "null", "created_at": "2026-03-04T00:00:00Z", "tags": None},
            {"backup_id": "broken", "created_at": "2026-03-05T00:00:00Z", "tags": '["db"'},
            {"backup_id": "new", "created_at": "2026-03-06T00:00:00Z", "tags": ""},
        ],
        '\n[policy]\ntags_column = "tags"\n',
    )
    assert removed("--keep-tag", "release,db", "--keep-last", "1") == {"one", "null"}
    # '' keeps untagged runs only (NULL and empty text)
    assert removed("--keep-tag", "", "--keep-tag", "db") == set()
    assert removed("--keep-tag", "") == {"csv", "json", "one"}
    kept_broken = plan("--keep-tag", "release")
    assert "broken" not in {e["run_id"] for e in kept_broken["entries"]}


def test_keep_tag_needs_a_tags_column(ws: Path) -> None:
    make(ws, OFFSETS)
    lines = fails(2, "--keep-tag", "release")
    assert lines[0].startswith("Error: policy.keep_tags needs policy.tags_column")


def test_a_column_that_does_not_exist_is_exit_4(ws: Path) -> None:
    make(ws, OFFSETS, '\n[policy]\ntags_column = "labels"\n')
    assert fails(4, "--keep-tag", "x") == [
        "Error: table 'backups' has no column 'labels' (named by policy.tags_column)"
    ]


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (("--keep-daily", "-2"), "Error: Invalid value for '--keep-daily': -2 is not a count"),
        (("--keep-hourly", "many"), "Error: Invalid value for '--keep-hourly': 'many' is not"),
        (("--keep-within", "1w"), "Error: policy.keep_within (from flag): invalid duration '1w'"),
        (("--keep-within-daily", "-3d"), "Error: policy.keep_within_daily (from flag): invalid"),
        (("--keep-within", "1d1d"), "Error: policy.keep_within (from flag): invalid duration"),
        (("--tz", "Mars/Olympus"), "Error: policy.tz (from flag): unknown time zone"),
        (("--checkpoint", "middle"), "Error: Invalid value for '--checkpoint'"),
        (("--keep-daily", "0"), "Error: refusing a policy that keeps nothing"),
        (("--keep-within", "0d"), "Error: refusing a policy that keeps nothing"),
    ],
)
def test_bad_calendar_flags_are_exit_2_with_one_error_line(
    ws: Path, args: tuple[str, ...], first: str
) -> None:
    make(ws, OFFSETS)
    lines = fails(2, *args)
    error = [ln for ln in lines if ln.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith(first), lines
    assert not (ws / ".retention").exists()


def test_the_within_hint_explains_restics_units(ws: Path) -> None:
    make(ws, OFFSETS)
    lines = fails(2, "--keep-within", "30min")
    assert lines[1].startswith("Hint: use restic's form: whole numbers of y (years), m (months)")


# -- floors and filters -------------------------------------------------------------------

JOBS = [
    {"backup_id": "j1", "created_at": "2026-01-01T00:00:00Z", "state": "completed"},
    {"backup_id": "j2", "created_at": "2026-01-02T00:00:00Z", "state": "failed"},
    {"backup_id": "j3", "created_at": "2026-01-03T00:00:00Z", "state": "running"},
    {"backup_id": "j4", "created_at": "2026-01-04T00:00:00Z", "state": "canceled"},
    {"backup_id": "j5", "created_at": "2026-01-05T00:00:00Z", "state": None},
    {"backup_id": "j6", "created_at": "not a time", "state": "completed"},
    {"backup_id": "j7", "created_at": "2026-03-30T00:00:00Z", "state": "completed"},
]


def test_state_filter_with_the_default_terminal_set(ws: Path) -> None:
    make(ws, JOBS, '\n[policy]\nstate_column = "state"\n')
    # a 7-day TTL: the old terminal runs go; running, NULL state and no timestamp stay
    assert removed("--max-age", "7d") == {"j1", "j2", "j4"}
    payload = plan("--max-age", "7d")
    assert payload["policy"]["terminal_states"] == ["completed", "failed", "canceled"]
    assert (
        "Only runs in a terminal state (completed, failed, canceled) may go."
        in (payload["policy_text"])
    )
    result = invoke("config")
    assert "policy.terminal_states" in result.stdout
    assert "default (policy.state_column set)" in result.stdout


def test_min_keep_flag_and_env(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(ws, JOBS, '\n[policy]\nstate_column = "state"\nterminal_states = ["completed"]\n')
    # only j1 and j7 may go; max-age keeps j7; 7 runs are more than the floor of 5 anyway
    assert removed("--max-age", "7d") == {"j1"}
    assert removed("--max-age", "7d", "--min-keep", "7") == set()
    monkeypatch.setenv("RETENTION_MIN_KEEP", "7")
    assert removed("--max-age", "7d") == set()
    assert removed("--max-age", "7d", "--min-keep", "0") == {"j1"}  # the flag wins


def test_terminal_states_need_a_state_column(ws: Path) -> None:
    make(ws, JOBS, '\n[policy]\nterminal_states = "completed,failed"\n')
    assert fails(2, "--keep-last", "1")[0].startswith(
        "Error: policy.terminal_states needs policy.state_column"
    )


def test_a_missing_state_column_is_exit_4(ws: Path) -> None:
    make(ws, JOBS, '\n[policy]\nstate_column = "status"\n')
    assert fails(4, "--keep-last", "1") == [
        "Error: table 'backups' has no column 'status' (named by policy.state_column)"
    ]


# -- protections ------------------------------------------------------------------------------

PROTECT = """
[policy]
pin_column = "preserved"
kind_column = "kind"
newest_of_kind = ["full"]
parent_column = "parent_id"
"""

CHAINS = [
    {"backup_id": "f1", "created_at": "2026-01-01T00:00:00Z", "kind": "full"},
    {"backup_id": "i1", "created_at": "2026-01-02T00:00:00Z", "kind": "inc", "parent_id": "f1"},
    {"backup_id": "f2", "created_at": "2026-02-01T00:00:00Z", "kind": "full", "preserved": 1},
    {"backup_id": "i2", "created_at": "2026-02-02T00:00:00Z", "kind": "inc", "parent_id": "f2"},
    {"backup_id": "f3", "created_at": "2026-03-01T00:00:00Z", "kind": "full"},
    {"backup_id": "i3", "created_at": "2026-03-02T00:00:00Z", "kind": "inc", "parent_id": "f3"},
    {"backup_id": "i4", "created_at": "2026-03-03T00:00:00Z", "kind": "inc", "parent_id": "i3"},
    {"backup_id": "p", "created_at": "2025-01-01T00:00:00Z", "kind": "inc", "preserved": "yes"},
]


def test_pins_newest_full_and_parent_chains(ws: Path) -> None:
    make(ws, CHAINS, PROTECT)
    payload = plan("--keep-last", "1")
    # i4 (keep-last) needs i3, which needs f3 (also the newest full); f2 and p are pinned
    assert {e["run_id"] for e in payload["entries"]} == {"f1", "i1", "i2"}
    text = payload["policy_text"]
    assert "Pinned runs are always kept." in text
    assert "The newest run of kind 'full' is always kept." in text
    assert "A run that a kept run depends on is kept." in text
    assert payload["policy"]["newest_of_kind"] == ["full"]
    assert payload["policy"]["pins"] is True and payload["policy"]["dependencies"] is True


def test_without_protections_the_same_policy_removes_more(ws: Path) -> None:
    make(ws, CHAINS)
    assert removed("--keep-last", "1") == {"f1", "i1", "f2", "i2", "f3", "i3", "p"}


def test_a_dependency_cycle_is_exit_4_naming_the_runs(ws: Path) -> None:
    rows = [dict(r) for r in CHAINS]
    rows[0]["parent_id"] = "i1"  # f1 -> i1 -> f1
    make(ws, rows, PROTECT)
    assert fails(4, "--keep-last", "1") == [
        "Error: 2 runs that depend on each other through policy.parent_column 'parent_id':"
        " f1 -> i1 -> f1",
        "Hint: a run cannot depend on itself, even through others: fix the parent column of"
        " one of them (a cycle has no oldest run to keep first)",
    ]


def test_newest_of_kind_needs_a_kind_column(ws: Path) -> None:
    make(ws, CHAINS, '\n[policy]\nnewest_of_kind = ["full"]\n')
    assert fails(2, "--keep-last", "1")[0].startswith(
        "Error: policy.newest_of_kind needs policy.kind_column"
    )


# -- the size budget ----------------------------------------------------------------------------

SIZED = [
    {"backup_id": f"s{n}", "created_at": f"2026-03-{10 + n:02d}T00:00:00Z", "size_bytes": 1000}
    for n in range(6)
]  # s0 oldest .. s5 newest; 1000 bytes each on disk, and in size_bytes


def test_budget_from_the_size_column(ws: Path) -> None:
    make(ws, SIZED, '\n[policy]\nsize_column = "size_bytes"\n')
    payload = plan("--keep-last", "6", "--max-total-size", "3500")
    entries = {e["run_id"]: e for e in payload["entries"]}
    assert set(entries) == {"s0", "s1", "s2"}
    assert entries["s0"]["reason"] == "removed: over the size budget of 3.4 KiB"
    assert payload["policy"]["max_total_bytes"] == 3500
    assert (
        "While the kept runs exceed 3.4 KiB, the oldest unprotected ones go"
        in (payload["policy_text"])
    )


def test_budget_measured_on_disk_without_a_size_column(ws: Path) -> None:
    make(ws, SIZED)
    db = sqlite3.connect(ws / "catalog.db")
    db.execute("UPDATE backups SET size_bytes = 1")  # the column lies; nobody reads it
    db.commit()
    db.close()
    (ws / "backups/s5/more.bin").write_bytes(b"y" * 4000)  # s5 holds 5000 bytes
    # kept: 5 x 1000 + 5000 = 10000; 7K budget: s0, s1, s2 go (oldest first)
    assert removed("--keep-last", "6", "--max-total-size", "7K") == {"s0", "s1", "s2"}
    payload = plan("--keep-last", "6", "--max-total-size", "7K")
    sizes = {e["run_id"]: e["bytes"] for e in payload["entries"]}
    assert sizes == {"s0": 1000, "s1": 1000, "s2": 1000}


def test_a_budget_that_cannot_be_met_is_a_warning_naming_what_holds_it(ws: Path) -> None:
    rows = [dict(r) for r in SIZED]
    rows[0]["preserved"] = 1
    make(ws, rows, '\n[policy]\nsize_column = "size_bytes"\npin_column = "preserved"\n')
    result = invoke(
        "plan", "--now", NOW, "--keep-last", "6", "--max-total-size", "1", "--min-keep", "2"
    )
    assert result.exit_code == 0, result.stderr
    assert {e["run_id"] for e in json.loads(result.stdout)["payload"]["entries"]} == {
        "s1",
        "s2",
        "s3",
        "s4",
    }
    # the floor of 2 counts the pinned s0: only s5 stays for it
    assert (
        "Warning: size budget 1 B not met: the kept runs hold 2.0 KiB, 2.0 KiB over (after"
        " removing 4 runs); held by min-keep floor: 1 run, 1000 B; pinned: 1 run, 1000 B"
    ) in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("50GB", "invalid size '50GB': GB is ambiguous"),
        ("lots", "invalid size 'lots'"),
        ("0", "invalid size '0': must be greater than zero"),
        ("-5G", "invalid size '-5G'"),
    ],
)
def test_bad_budget_is_exit_2(ws: Path, value: str, message: str) -> None:
    make(ws, SIZED)
    lines = fails(2, "--keep-last", "1", "--max-total-size", value)
    assert lines[0] == f"Error: policy.max_total_size (from flag): {message}"


def test_apply_takes_a_manifest_of_every_new_rule(ws: Path) -> None:
    make(
        ws,
        [{**r, "tags": "db" if r["backup_id"] == "p" else None} for r in CHAINS],
        PROTECT + 'tags_column = "tags"\nsize_column = "size_bytes"\nstate_column = "state"\n',
    )
    args = ("--keep-daily", "1", "--keep-within", "1d", "--keep-tag", "db", "--tz", "UTC")
    args += ("--checkpoint", "first", "--min-keep", "2", "--max-total-size", "1T", "-o", "m.json")
    result = invoke("plan", "--now", NOW, *args)
    assert result.exit_code == 0, result.stderr
    payload = json.loads((ws / "m.json").read_bytes())["payload"]
    assert {e["run_id"] for e in payload["entries"]} == {"f1", "i1", "i2"}
    shown = invoke("show", "m.json")
    assert shown.exit_code == 0, shown.stderr
    applied = invoke("apply", "m.json")
    assert applied.exit_code == 0, applied.stderr
    db = sqlite3.connect(ws / "catalog.db")
    left = {r[0] for r in db.execute("SELECT backup_id FROM backups")}
    db.close()
    assert left == {"f2", "f3", "i3", "i4", "p"}
    assert not (ws / "backups/f1").exists() and (ws / "backups/f2").exists()
