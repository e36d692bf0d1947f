"""Bounded bookkeeping (issue 15, item 2), through the real executable on real catalogs.

* `status` says how much of the catalog file the tombstones take (pages counted with
  SQLite's ``dbstat``; an estimate without it);
* `purge` drops them, reports the catalog's free pages before and after, and the space is
  reused by the next apply; `purge --vacuum` gives it back to the filesystem with VACUUM,
  or with ``PRAGMA incremental_vacuum`` where the catalog's auto_vacuum is incremental; a
  VACUUM the application keeps busy fails alone (the purge is done, exit 4);
* the deletion log (``_retention_runs``) forgets the runs of applies purged or undone
  longer ago than ``state.history``; each apply's summary row in ``_retention_tx`` stays.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention.catalogs.sqlite import estimate_usage, retention_usage
from retention.durations import format_instant

from . import crashkit as ck

CHILD_ROWS = 40


def _build(root: Path, runs: int = 24, *, journal: str = "delete", incremental: bool = False):
    ws = ck.build(root, runs=runs)
    db = sqlite3.connect(ws / "data/catalog.db", isolation_level=None)
    if incremental:
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("VACUUM")  # an existing file takes the new auto_vacuum mode on VACUUM
    ids = [r[0] for r in db.execute("SELECT run_id FROM runs")]
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value, blob) VALUES (?, ?, ?, ?)",
        ((rid, f"m{k}", k * 0.5, bytes(300)) for rid in ids for k in range(CHILD_ROWS)),
    )
    db.execute("COMMIT")
    assert db.execute(f"PRAGMA journal_mode = {journal}").fetchone()[0] == journal
    db.close()
    return ws


def _run(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ck.EXE, *args],
        cwd=ws,
        env={**ck.BASE_ENV, **(env or {})},
        capture_output=True,
        timeout=120,
    )


def _json(p: subprocess.CompletedProcess, code: int = 0) -> dict:
    assert p.returncode == code, p.stderr.decode()
    assert b"Traceback" not in p.stderr
    return json.loads(p.stdout)


def _apply(ws: Path, keep_last: int) -> str:
    return _json(_run(ws, "apply", str(ck.plan(ws, keep_last=keep_last))))["txid"]


def _file_size(ws: Path) -> int:
    return (ws / "data/catalog.db").stat().st_size


def test_status_shows_the_tombstones_purge_reports_free_pages_reused_and_vacuumed(
    tmp_path: Path,
) -> None:
    ws = _build(tmp_path / "ws")
    empty = _json(_run(ws, "status", "--json"))
    assert empty["catalog_usage"] == {"tombstone_bytes": 0, "log_bytes": 0, "exact": True}
    _apply(ws, keep_last=12)

    st = _json(_run(ws, "status", "--json"))
    use, space = st["catalog_usage"], st["catalog"]
    # 12 runs x 40 rows of > 300 bytes are in the tombstones: at least 144 KiB of pages.
    assert use["exact"] is True and use["tombstone_bytes"] >= 12 * CHILD_ROWS * 300
    assert 0 < use["log_bytes"] < use["tombstone_bytes"]
    assert space["file_bytes"] == _file_size(ws) == space["pages"] * space["page_size"]
    assert (space["auto_vacuum"], space["journal_mode"]) == ("none", "delete")
    text = _run(ws, "status").stdout.decode()
    assert "of it tombstones (the deleted rows kept for undo, dropped at purge)" in text

    # purge: the tombstones' pages become free pages, the file keeps its size.
    p = _run(ws, "purge", "--all")
    rep = _json(p)
    before, after = rep["catalog_before"], rep["catalog_after"]
    assert rep["vacuum"] is None
    assert before["file_bytes"] == after["file_bytes"] == _file_size(ws)
    assert after["free_pages"] * after["page_size"] == after["free_bytes"]
    # (the apply freed pages already: the rows it deleted from the application's tables)
    assert after["free_bytes"] >= before["free_bytes"] + 12 * CHILD_ROWS * 300
    err = p.stderr.decode()
    assert "of free pages" in err and "SQLite reuses them" in err
    assert "`retention purge --vacuum` gives them back" in err and "VACUUM" in err
    gone = _json(_run(ws, "status", "--json"))["catalog_usage"]["tombstone_bytes"]
    assert gone < use["tombstone_bytes"] / 10  # what is left: the empty tables' root pages

    # ... and reused: an apply of as many rows again does not grow the file.
    size = _file_size(ws)
    _apply(ws, keep_last=2)  # 10 more runs
    assert _file_size(ws) == size
    assert _json(_run(ws, "purge", "--all"))["catalog_after"]["file_bytes"] == size

    # purge --vacuum (nothing left to purge): the free pages go back to the filesystem.
    p = _run(ws, "purge", "--vacuum")
    rep = _json(p)
    assert rep["purged"] == [] and rep["vacuum"] == {
        "how": "vacuum",
        "error": None,
        "hint": None,
        "error_code": None,
    }
    assert rep["catalog_after"]["free_pages"] == 0
    assert rep["catalog_after"]["file_bytes"] == _file_size(ws) < size - 20 * CHILD_ROWS * 300
    assert "after it and a VACUUM." in p.stderr.decode()
    # Again: nothing to reclaim.
    rep = _json(_run(ws, "purge", "--vacuum"))
    assert rep["vacuum"]["how"] == "nothing to reclaim"
    assert ck.run(ws, "check").returncode == 0


def test_vacuum_is_incremental_where_auto_vacuum_allows_and_truncates_the_wal(
    tmp_path: Path,
) -> None:
    ws = _build(tmp_path / "ws", journal="wal", incremental=True)
    _apply(ws, keep_last=4)
    p = _run(ws, "purge", "--all", "--vacuum")
    rep = _json(p)
    before, after = rep["catalog_before"], rep["catalog_after"]
    assert (after["auto_vacuum"], after["journal_mode"]) == ("incremental", "wal")
    assert rep["vacuum"]["how"] == "incremental_vacuum"
    assert after["free_pages"] == 0 and after["wal_bytes"] == 0
    assert after["file_bytes"] < before["file_bytes"] + before["wal_bytes"]
    assert "PRAGMA incremental_vacuum" in p.stderr.decode()


def test_a_vacuum_the_application_keeps_busy_fails_alone(tmp_path: Path) -> None:
    """A reader of the application holds the catalog once the purge is done: VACUUM
    (which needs the catalog to itself) waits catalog.busy_timeout and gives up; the purge
    is done and reported, exit 4."""
    ws = _build(tmp_path / "ws")
    txid = _apply(ws, keep_last=12)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {
        **ck.BASE_ENV,
        "RETENTION_BUSY_TIMEOUT": "1s",
        "FAILPOINT_PAUSE": "purge.before_done",
        "FAILPOINT_PAUSE_DIR": str(sync),
    }
    proc = subprocess.Popen(
        [ck.EXE, "purge", "--all", "--vacuum"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (sync / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    reader = sqlite3.connect(ws / "data/catalog.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchone()  # a shared lock, held
    try:
        (sync / "resume").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        reader.execute("ROLLBACK")
        reader.close()
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    rep = _json(p, code=4)
    assert rep["purged"] == [txid]
    assert rep["vacuum"]["how"] is None and rep["vacuum"]["error_code"] == 4
    assert "busy longer than catalog.busy_timeout (1s" in rep["vacuum"]["error"]
    err = p.stderr.decode()
    assert "Warning: the catalog was not vacuumed (the purge itself is done)" in err
    assert "when the application is idle" in err
    assert rep["catalog_after"]["free_pages"] > 0  # nothing changed
    assert ck.run(ws, "check").returncode == 0


def _log(ws: Path) -> tuple[dict[str, int], dict[str, tuple[str, int, int]]]:
    """Runs kept in the deletion log per apply, and every apply's summary row."""
    db = sqlite3.connect(ws / "data/catalog.db")
    runs = dict(db.execute("SELECT txid, count(*) FROM _retention_runs GROUP BY txid").fetchall())
    tx = {
        t: (s, n, b)
        for t, s, n, b in db.execute(
            "SELECT txid, state, runs, bytes FROM _retention_tx WHERE op = 'apply'"
        )
    }
    db.close()
    return runs, tx


def test_the_deletion_log_forgets_runs_purged_or_undone_longer_ago_than_history(
    tmp_path: Path,
) -> None:
    ws = _build(tmp_path / "ws", runs=16)
    undone = _apply(ws, keep_last=12)
    _json(_run(ws, "undo", undone))
    purged = _apply(ws, keep_last=10)
    _json(_run(ws, "purge", "--all"))
    runs, tx = _log(ws)
    assert runs == {undone: 4, purged: 6}
    summary = dict(tx)

    # A purge 89 days later (here: of a third apply) keeps them all ...
    later = datetime.now(UTC) + timedelta(days=89)
    third = _apply(ws, keep_last=8)
    _json(_run(ws, "purge", "--all", "--now", format_instant(later)))
    assert _log(ws)[0] == {undone: 4, purged: 6, third: 2}
    # ... and one more than 90 days (state.history) after forgets the runs of the first two.
    fourth = _apply(ws, keep_last=7)
    _json(_run(ws, "purge", "--all", "--now", format_instant(later + timedelta(days=2))))
    runs, tx = _log(ws)
    assert runs == {third: 2, fourth: 1}
    # Every apply's summary (state, runs, bytes) stays.
    assert {t: tx[t] for t in summary} == summary and len(tx) == 4
    assert tx[undone][0] == "undone" and tx[purged][0] == "purged"
    # Undo still refuses them, with the same reasons; check and status are clean.
    assert b"already undone" in _run(ws, "undo", undone).stderr
    assert b"was purged at" in _run(ws, "undo", purged).stderr
    assert ck.run(ws, "check").returncode == 0
    assert _json(_run(ws, "status", "--json"))["interrupted"] == []


def test_state_history_follows_the_setting_conventions(tmp_path: Path) -> None:
    ws = _build(tmp_path / "ws", runs=2)
    cfg = _json(_run(ws, "config", "--json"))
    assert (cfg["history"], cfg["sources"]["history"]) == ("90d", "default")
    cfg = _json(_run(ws, "config", "--json", env={"RETENTION_HISTORY": "30d"}))
    assert (cfg["history"], cfg["sources"]["history"]) == ("30d", "env RETENTION_HISTORY")
    (ws / "retention.toml").write_text('[state]\nhistory = "1y"\n')
    assert _json(_run(ws, "config", "--json"))["history"] == "1y"
    p = _run(ws, "config", env={"RETENTION_HISTORY": "90"})
    assert p.returncode == 2 and b"state.history (from env RETENTION_HISTORY)" in p.stderr


def test_the_estimate_without_dbstat_is_near_the_pages_counted(tmp_path: Path) -> None:
    ws = _build(tmp_path / "ws")
    _apply(ws, keep_last=6)
    db = sqlite3.connect(ws / "data/catalog.db")
    exact, guess = retention_usage(db), estimate_usage(db)
    db.close()
    assert exact.exact and not guess.exact
    assert 0.6 < guess.tombstone_bytes / exact.tombstone_bytes < 1.5, (guess, exact)
    assert 0.3 < guess.log_bytes / exact.log_bytes < 3, (guess, exact)
