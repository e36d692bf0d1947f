"""Undo and apply at the edges a second review found: link rows, constraints, reused rowids,
filter and protect changed since the plan, non-UTF-8 conflicts, dropped tables."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from . import crashkit as ck


def _sql(ws: Path, *statements: str) -> list:
    c = sqlite3.connect(ws / "data/catalog.db")
    out = []
    for st in statements:
        out = c.execute(st).fetchall()
    c.commit()
    c.close()
    return out


def _oldest(ws: Path, n: int) -> list[str]:
    return [r[0] for r in _sql(ws, f"SELECT run_id FROM runs ORDER BY created_at LIMIT {n}")]


def test_partial_undo_never_splits_a_row_that_links_two_runs(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    a, b = _oldest(ws, 2)
    _sql(
        ws,
        "CREATE TABLE run_links (id INTEGER PRIMARY KEY, a REFERENCES runs(run_id),"
        " b REFERENCES runs(run_id))",
        f"INSERT INTO run_links (a, b) VALUES ('{a}', '{b}')",
    )
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    home = ws / "data/backtests" / a
    home.mkdir()  # a's directory exists again: a conflicts, and so must b
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 3, u.stderr
    conflicts = {c["run_id"]: c["reason"] for c in json.loads(u.stdout)["undone"][0]["conflicts"]}
    assert set(conflicts) == {a, b}
    assert "shares a row" in conflicts[b]
    assert _sql(ws, "PRAGMA foreign_key_check") == []
    home.rmdir()
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 0, u.stderr
    assert ck.snapshot(ws) == before


def test_a_unique_index_refusing_one_run_leaves_only_that_run_in_trash(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    _sql(ws, "CREATE UNIQUE INDEX runs_strategy_sharpe ON runs(strategy, sharpe)")
    victim = _oldest(ws, 1)[0]
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    _sql(
        ws,
        "INSERT INTO runs (run_id, created_at, strategy, sharpe) SELECT 'newcomer', created_at,"
        f" strategy, sharpe FROM _retention_t_runs WHERE __retention_run = '{victim}'",
    )
    (ws / "data/backtests/newcomer").mkdir()
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 3, u.stderr
    result = json.loads(u.stdout)["undone"][0]
    assert [c["run_id"] for c in result["conflicts"]] == [victim]
    assert "UNIQUE" in result["conflicts"][0]["reason"]
    assert len(result["restored"]) == 3
    assert (ws / "data/backtests/.trash" / txid).is_dir()
    chk = ck.run(ws, "check", "--json")
    assert json.loads(chk.stdout)["findings"] == [], chk.stdout


def test_undo_gives_a_new_rowid_where_a_non_key_rowid_was_reused(tmp_path: Path) -> None:
    """runs has a TEXT primary key: its rowid is nobody's reference, so a reused one is no
    conflict; run_metrics' INTEGER PRIMARY KEY must come back exactly."""
    ws = ck.build(tmp_path / "ws", runs=8)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    (rowid,) = _sql(ws, "SELECT max(__retention_rowid) FROM _retention_t_runs")[0]
    _sql(
        ws, f"INSERT INTO runs (rowid, run_id, created_at) VALUES ({rowid}, 'reuser', '2026-11-01')"
    )
    (ws / "data/backtests/reuser").mkdir()
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 0, u.stderr
    assert len(json.loads(u.stdout)["undone"][0]["restored"]) == 4
    assert _sql(ws, "SELECT count(*) FROM runs")[0][0] == 9


def test_a_run_that_left_the_filter_or_became_protected_is_skipped(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    _sql(
        ws,
        "ALTER TABLE runs ADD COLUMN archived INTEGER DEFAULT 1",
        "ALTER TABLE runs ADD COLUMN pinned INTEGER DEFAULT 0",
    )
    (ws / "retention.toml").write_text(
        '[catalog]\nfilter = "runs.archived = 1"\nprotect = "runs.pinned = 1"\n'
    )
    m = ck.plan(ws, keep_last=2)
    left, pinned = _oldest(ws, 2)
    # Changing a column changes the rows' fingerprint as well; the reason names the rule.
    _sql(ws, f"UPDATE runs SET archived = 0 WHERE run_id = '{left}'")
    _sql(ws, f"UPDATE runs SET pinned = 1 WHERE run_id = '{pinned}'")
    p = ck.run(ws, "apply", str(m))
    assert p.returncode == 3, p.stderr
    report = json.loads(p.stdout)
    assert {s["run_id"] for s in report["skipped"]} == {left, pinned}
    assert report["deleted_runs"] == 4
    assert (ws / "data/backtests" / left).is_dir() and (ws / "data/backtests" / pinned).is_dir()


def test_non_utf8_conflicts_are_reported_as_json_not_a_traceback(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    _sql(ws, "ALTER TABLE runs ADD COLUMN art BLOB")
    arts = ws / "data/backtests"
    for (rid,) in _sql(ws, "SELECT run_id FROM runs"):
        raw = b"\xff-" + rid.encode()
        _sql(ws, f"UPDATE runs SET art = X'{raw.hex()}' WHERE run_id = '{rid}'")
        os.rename(arts / rid, os.fsencode(arts) + b"/" + raw)
    (ws / "retention.toml").write_text('[artifacts]\npath_column = "art"\n')
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=2)))
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)["deleted_run_ids"][0]
    os.mkdir(os.fsencode(arts) + b"/\xff-" + first.encode())
    u = ck.run(ws, "undo", json.loads(p.stdout)["txid"])
    assert u.returncode == 3, u.stderr
    conflict = json.loads(u.stdout)["undone"][0]["conflicts"][0]
    assert conflict["reason"] == f"path \\xff-{first} exists again"
    chk = ck.run(ws, "check", "--json")
    assert chk.returncode in (0, 10) and b"Traceback" not in chk.stderr


def test_undo_after_a_child_table_was_dropped_clears_its_tombstones(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=2)))
    _sql(ws, "DROP TABLE run_metrics")
    (ws / "retention.toml").write_text("[catalog]\nchild_tables = []\n")
    u = ck.run(ws, "undo", json.loads(p.stdout)["txid"])
    assert u.returncode == 0, u.stderr
    assert _sql(ws, "SELECT count(*) FROM _retention_t_run_metrics")[0][0] == 0


def test_recover_finishes_other_transactions_before_reporting_a_stalled_purge(
    tmp_path: Path,
) -> None:
    import subprocess

    ws = ck.build(tmp_path / "ws", runs=10)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=6)))
    txid = json.loads(p.stdout)["txid"]
    stuck = next((ws / "data/backtests/.trash" / txid).glob("*/plots"))
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
        import pytest

        pytest.skip("chattr +i is not available here")
    try:
        assert ck.run(ws, "purge", "--all").returncode == 8
        m2 = ck.plan(ws, keep_last=3)
        assert ck.crashed(ck.run(ws, "apply", str(m2), failpoint="apply.after_rename@1"))
        r = ck.run(ws, "recover")
        assert r.returncode == 8
        report_lines = r.stderr.decode()
        assert "cannot remove trash" in report_lines
        # The interrupted apply was rolled back even though the purge is stuck.
        kinds = [f["kind"] for f in json.loads(ck.run(ws, "check", "--json").stdout)["findings"]]
        assert "row_without_dir" not in kinds and "trash_orphan" not in kinds
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    assert ck.run(ws, "recover").returncode == 0
    assert json.loads(ck.run(ws, "check", "--json").stdout)["findings"] == []
