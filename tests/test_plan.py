"""`retention plan` and `retention show`: deterministic, read-only, and readable output."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from retention.cli import cli
from retention.durations import format_bytes, human_instant

from .conftest import NOW_TEXT, invoke

PLAN = ("plan", "--keep-last", "10", "--max-age", "180d", "--now", NOW_TEXT)


def _plan(*args: str) -> bytes:
    result = invoke(*(args or PLAN))
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


# -- determinism -----------------------------------------------------------------------------


def test_same_catalog_state_and_now_give_a_byte_identical_manifest(workspace: Path) -> None:
    first = _plan()
    second = _plan()
    assert first == second
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    assert Path("m.json").read_bytes() == first
    assert len(json.loads(first)["payload"]["entries"]) == 30


def test_manifest_changes_with_now_policy_or_catalog(workspace: Path) -> None:
    base = json.loads(_plan())["payload"]
    later = json.loads(_plan(*PLAN[:-1], "2026-11-02T00:00:00Z"))["payload"]
    assert later["manifest_id"] != base["manifest_id"]
    other_policy = json.loads(_plan("plan", "--keep-last", "11", "--now", NOW_TEXT))["payload"]
    assert other_policy["policy_digest"] != base["policy_digest"]
    db = sqlite3.connect("data/catalog.db")
    db.execute("UPDATE run_metrics SET value = 0 WHERE run_id = 'bt-20241101-00000'")
    db.commit()
    db.close()
    changed = json.loads(_plan())["payload"]
    assert changed["manifest_id"] != base["manifest_id"]
    fps = {e["run_id"]: e["rows_fp"] for e in changed["entries"]}
    old = {e["run_id"]: e["rows_fp"] for e in base["entries"]}
    assert {k for k in fps if fps[k] != old[k]} == {"bt-20241101-00000"}


def test_manifest_changes_when_an_artifact_directory_changes(workspace: Path) -> None:
    base = json.loads(_plan())["payload"]
    f = workspace / "data/backtests/bt-20241119-00001/params.json"
    f.write_text(f.read_text() + " ")
    changed = {e["run_id"]: e for e in json.loads(_plan())["payload"]["entries"]}
    for e in base["entries"]:
        same = e["run_id"] != "bt-20241119-00001"
        assert (changed[e["run_id"]]["dir_fp"] == e["dir_fp"]) is same
        assert (changed[e["run_id"]]["bytes"] == e["bytes"]) is same


# -- read-only -------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file's content digest and mtime, every directory's mtime, under ``root``."""
    snap: dict[str, tuple] = {}
    for dirpath, _, filenames in os.walk(root):
        st = os.lstat(dirpath)
        snap[dirpath] = ("dir", st.st_mtime_ns, st.st_mode)
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            snap[p] = (digest, st.st_mtime_ns, st.st_size, st.st_mode)
    return snap


def test_plan_and_show_never_write_the_catalog_or_the_artifacts(workspace: Path) -> None:
    data = workspace / "data"
    before = _snapshot(data)
    catalog = data / "catalog.db"
    assert before[str(catalog)][0] == hashlib.sha256(catalog.read_bytes()).hexdigest()
    assert invoke(*PLAN, "-o", str(workspace / "m.json")).exit_code == 0
    assert invoke("show", "m.json").exit_code == 0
    assert invoke("show", "--json", "m.json").exit_code == 0
    after = _snapshot(data)
    assert after == before
    assert sorted(os.listdir(data)) == ["backtests", "catalog.db"]  # no -wal, -journal, -shm
    # Only the state directory was written: the key and the catalog binding.
    assert sorted(os.listdir(workspace / ".retention")) == ["catalog-id.json", "key"]


def test_plan_reads_a_wal_catalog_with_uncheckpointed_commits_and_keeps_it_wal(
    workspace: Path,
) -> None:
    catalog = workspace / "data" / "catalog.db"
    app = sqlite3.connect(catalog, isolation_level=None)  # the application, still running
    assert app.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    app.execute("PRAGMA wal_autocheckpoint=0")
    app.execute("DELETE FROM run_metrics WHERE run_id = 'bt-20241101-00000'")
    app.execute("DELETE FROM runs WHERE run_id = 'bt-20241101-00000'")  # only in the WAL yet
    main_before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    wal_before = Path(f"{catalog}-wal").read_bytes()
    artifacts_before = _snapshot(workspace / "data" / "backtests")
    try:
        payload = json.loads(_plan())["payload"]
        ids = [e["run_id"] for e in payload["entries"]]
        assert len(ids) == 29 and "bt-20241101-00000" not in ids
        assert payload["considered"] == 39
        assert hashlib.sha256(catalog.read_bytes()).hexdigest() == main_before
        assert Path(f"{catalog}-wal").read_bytes() == wal_before
        assert app.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        app.close()
    assert _snapshot(workspace / "data" / "backtests") == artifacts_before
    check = sqlite3.connect(catalog)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert check.execute("SELECT count(*) FROM runs").fetchone() == (39,)
    check.close()


def test_plan_works_on_a_closed_wal_catalog_and_leaves_its_bytes_alone(
    workspace: Path,
) -> None:
    catalog = workspace / "data" / "catalog.db"
    db = sqlite3.connect(catalog)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    assert len(json.loads(_plan())["payload"]["entries"]) == 30
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before
    db = sqlite3.connect(catalog)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


# -- what plan and show print ----------------------------------------------------------------


def test_plan_summary_states_the_policy_first_then_count_and_bytes(workspace: Path) -> None:
    result = invoke(*PLAN)
    payload = json.loads(result.stdout)["payload"]
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "Keep the newest 10 runs, and every run younger than 180d; remove a run only when no"
        " rule keeps it. Runs with no valid timestamp and protected runs are always kept."
    )
    assert lines[1] == (
        f"30 of 40 runs would be deleted, {format_bytes(payload['total_bytes'])} reclaimed"
        f" (manifest {payload['manifest_id']}, valid until"
        f" {human_instant(payload['expires_at'])})."
    )
    assert lines[2] == "Oldest candidate 2024-11-01 00:00Z, newest 2026-04-14 06:00Z."


def test_show_groups_by_reason_and_lists_the_largest_entries(workspace: Path) -> None:
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    payload = json.loads(Path("m.json").read_bytes())["payload"]
    result = invoke("show", "--top", "3", "m.json")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    total = payload["total_bytes"]
    assert lines[0] == (
        f"Manifest {payload['manifest_id']} (catalog {payload['catalog_id']}), planned at"
        f" {NOW_TEXT}, valid until {payload['expires_at']}: signature OK."
    )
    assert lines[1] == payload["policy_text"]
    assert lines[2] == f"30 runs, {format_bytes(total)}"
    assert lines[3:5] == ["", "By reason:"]
    reason = "removed: not among the newest 10 and older than 180d"
    assert lines[5] == f"  {30:>7}  {format_bytes(total):>10}  {reason}"
    largest = sorted(payload["entries"], key=lambda e: (-e["bytes"], e["run_id"]))[:3]
    assert lines[6:8] == ["", "Largest 3:"]
    # The path is shown only where it differs from the run id (not in this layout).
    assert lines[8:11] == [f"  {format_bytes(e['bytes']):>10}  {e['run_id']}" for e in largest]
    # Then every table the plan touches (tests/test_tables_listing.py), then how to apply.
    assert lines[11:13] == [
        "",
        "Tables a plan touches (2), with the rows of this manifest's 30"
        " runs / all rows in the table:",
    ]
    assert lines[-2:] == ["", "Apply with: retention apply m.json"]
    assert largest[0]["bytes"] >= largest[1]["bytes"] >= largest[2]["bytes"]


def test_show_json_is_machine_readable(workspace: Path) -> None:
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    payload = json.loads(Path("m.json").read_bytes())["payload"]
    result = invoke("show", "--json", "--top", "2", "m.json")
    assert result.exit_code == 0 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["run_ids"] == [e["run_id"] for e in payload["entries"]]
    assert report["count"] == 30 and report["total_bytes"] == payload["total_bytes"]
    assert report["by_reason"] == [
        {
            "reason": "removed: not among the newest 10 and older than 180d",
            "count": 30,
            "bytes": payload["total_bytes"],
        }
    ]
    assert [e["bytes"] for e in report["largest"]] == sorted(
        (e["bytes"] for e in payload["entries"]), reverse=True
    )[:2]


def test_show_reads_the_manifest_from_stdin(workspace: Path) -> None:
    data = _plan()
    result = invoke("show", "--json", "-", input=data)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["count"] == 30


def _commands() -> list[str]:
    return sorted(cli.commands)


@pytest.mark.parametrize("command", ["", *_commands()])
def test_every_command_has_help(command: str) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Usage: ")
    assert len(result.stdout.splitlines()) > 3
    if not command:
        assert "Exit codes:" in result.stdout
        for name in _commands():
            assert name in result.stdout


def test_entries_are_oldest_first_even_within_one_second(workspace: Path) -> None:
    # ISO text sorts "…00.5Z" before "…00Z" ('.' < 'Z'): order must follow time, not text.
    db = sqlite3.connect("data/catalog.db")
    db.executemany(
        "INSERT INTO runs (run_id, created_at) VALUES (?, ?)",
        [("a-later", "2020-01-01T00:00:00.500"), ("b-earlier", "2020-01-01T00:00:00")],
    )
    db.commit()
    db.close()
    result = invoke(*PLAN)
    entries = json.loads(result.stdout)["payload"]["entries"]
    assert [e["run_id"] for e in entries[:2]] == ["b-earlier", "a-later"]
    assert [e["time"] for e in entries[:2]] == [
        "2020-01-01T00:00:00Z",
        "2020-01-01T00:00:00.500000Z",
    ]
    assert "Oldest candidate 2020-01-01 00:00Z, newest 2026-04-14 06:00Z." in (result.stderr)


def test_show_groups_by_top_level_directory_for_nested_layouts(workspace: Path) -> None:
    import sqlite3 as _sqlite3

    arts = workspace / "data/backtests"
    c = _sqlite3.connect(workspace / "data/catalog.db")
    strategies = dict(c.execute("SELECT run_id, strategy FROM runs"))
    c.close()
    for rid, strat in strategies.items():
        (arts / strat).mkdir(exist_ok=True)
        (arts / rid).rename(arts / strat / rid)
    (workspace / "retention.toml").write_text(
        '[artifacts]\npath_template = "{strategy}/{run_id}"\n'
    )
    assert invoke("plan", "--keep-last", "10", "-o", "m.json").exit_code == 0
    report = json.loads(invoke("show", "--json", "m.json").stdout)
    groups = {g["directory"]: g["count"] for g in report["by_directory"]}
    assert sum(groups.values()) == report["count"] == 30
    assert set(groups) <= {"A", "B", "C"}
    assert "By top-level directory:" in invoke("show", "m.json").stdout


def test_show_says_when_a_manifest_was_already_applied(workspace: Path) -> None:
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    assert invoke("apply", "m.json").exit_code == 0
    result = invoke("show", "m.json")
    assert result.stdout.splitlines()[-1].startswith("Already applied by a-")
    report = json.loads(invoke("show", "--json", "m.json").stdout)
    assert report["already_applied_by"] and report["no_longer_in_catalog"] == 30
