"""An apply's row fingerprints compared beside its renames (issue 13): a helper process
compares a large apply's runs with the plan's fingerprints while the directories move, and
the commit uses that answer only if no other connection committed since the helper began.

Every test runs the real executable on a real catalog large enough for the helper
(`beside.MIN_RUNS` runs to delete; rows only, a few directories) and checks the outcome on
disk and in the catalog."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retention.catalogs import beside
from retention.catalogs.sqlite import SqliteCatalog
from retention.config import load_config
from retention.tombstones import TombRun, TxInfo

from . import crashkit as ck

KEEP = 50
RUNS = beside.MIN_RUNS + 400 + KEEP
DIRS = 20  # the oldest runs have a directory, and the kept ones


def _build(root: Path, *, wal: bool = True) -> list[str]:
    """The default layout: RUNS runs with two metric rows each, the DIRS oldest and the
    KEEP newest with a directory. Returns the run ids, oldest first."""
    arts = root / "data/backtests"
    arts.mkdir(parents=True)
    db = sqlite3.connect(root / "data/catalog.db")
    if wal:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT);
        CREATE TABLE run_metrics (id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT, value REAL);
        CREATE INDEX run_metrics_run ON run_metrics(run_id);
        """
    )
    ids = [f"run-{i:06d}" for i in range(RUNS)]
    db.executemany(
        "INSERT INTO runs VALUES (?, ?)",
        (
            (rid, f"2025-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}")
            for i, rid in enumerate(ids)
        ),
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        ((rid, name, i / 7) for i, rid in enumerate(ids) for name in ("pnl", "sharpe")),
    )
    db.commit()
    db.close()
    for rid in ids[:DIRS] + ids[-KEEP:]:
        (arts / rid).mkdir()
        (arts / rid / "result.csv").write_bytes(b"x" * 64)
    return ids


def _rows(ws: Path) -> tuple[set[str], int]:
    db = sqlite3.connect(ws / "data/catalog.db")
    runs = {r for (r,) in db.execute("SELECT run_id FROM runs")}
    metrics = db.execute("SELECT count(*) FROM run_metrics").fetchone()[0]
    db.close()
    return runs, metrics


def _report(p: subprocess.CompletedProcess, code: int) -> dict:
    assert p.returncode == code, p.stderr.decode()
    assert b"Traceback" not in p.stderr
    return json.loads(p.stdout)


def _skipped(rep: dict) -> dict[str, str]:
    return {s["run_id"]: s["reason"] for s in rep["skipped"]}


def test_a_large_apply_on_a_wal_catalog_has_its_rows_compared_by_the_helper(
    tmp_path: Path,
) -> None:
    """The helper runs and answers (its failpoint is logged, before the catalog commit),
    and the apply deletes exactly what an apply without it deletes: every planned run, its
    rows and its directory; the kept runs whole; `check` clean."""
    ws = tmp_path / "ws"
    ids = _build(ws)
    manifest = ck.plan(ws, keep_last=KEEP)
    log = tmp_path / "fp.log"
    rep = _report(ck.run(ws, "apply", str(manifest), log=log), 0)
    hits = log.read_text().split()
    assert "beside.before_answer" in hits
    assert hits.index("beside.before_answer") < hits.index("apply.before_catalog_commit")
    assert rep["deleted_runs"] == RUNS - KEEP
    assert _rows(ws) == (set(ids[-KEEP:]), 2 * KEEP)
    assert not any((ws / "data/backtests" / rid).exists() for rid in ids[:DIRS])
    assert ck.run(ws, "check").returncode == 0


def test_rows_changed_after_the_helper_answered_are_still_caught_by_the_commit(
    tmp_path: Path,
) -> None:
    """Paused after the helper's answer and before the catalog transaction, another
    connection changes one run's metric row and deletes another run: the commit sees that
    something was committed since the helper began, compares the rows itself, and leaves
    both runs alone (the changed one's directory back at home, its rows as they are now);
    the rest is deleted."""
    ws = tmp_path / "ws"
    ids = _build(ws)
    manifest = ck.plan(ws, keep_last=KEEP)
    changed, gone = ids[0], ids[DIRS + 1]
    log = tmp_path / "fp.log"
    proc, sync = ck.start_paused(
        ws, "apply.before_catalog_commit", "apply", str(manifest), env={"FAILPOINT_LOG": str(log)}
    )
    assert "beside.before_answer" in log.read_text().split()
    db = sqlite3.connect(ws / "data/catalog.db", isolation_level=None)
    db.execute("UPDATE run_metrics SET value = 99.5 WHERE run_id = ? AND name = 'pnl'", (changed,))
    db.execute("DELETE FROM run_metrics WHERE run_id = ?", (gone,))
    db.execute("DELETE FROM runs WHERE run_id = ?", (gone,))
    db.close()
    rep = _report(ck.resume(proc, sync), 3)
    assert _skipped(rep) == {
        changed: "catalog rows changed since the plan",
        gone: "no longer in the catalog",
    }
    assert rep["deleted_runs"] == RUNS - KEEP - 2
    runs, metrics = _rows(ws)
    assert runs == {changed, *ids[-KEEP:]} and metrics == 2 * (KEEP + 1)
    assert (ws / "data/backtests" / changed / "result.csv").read_bytes() == b"x" * 64
    assert ck.run(ws, "check").returncode == 0


def test_a_helper_that_dies_before_answering_leaves_the_comparison_to_the_commit(
    tmp_path: Path,
) -> None:
    """A run's rows change between the plan and the apply, and the helper dies before it
    answers (crashed at its failpoint): the commit compares the rows itself, so the changed
    run is still left alone and the apply finishes."""
    ws = tmp_path / "ws"
    ids = _build(ws)
    manifest = ck.plan(ws, keep_last=KEEP)
    db = sqlite3.connect(ws / "data/catalog.db")
    db.execute("UPDATE run_metrics SET value = -1 WHERE run_id = ?", (ids[1],))
    db.commit()
    db.close()
    log = tmp_path / "fp.log"
    p = ck.run(ws, "apply", str(manifest), failpoint="beside.before_answer", log=log)
    assert "beside.before_answer" in log.read_text().split()  # the helper got there, and died
    rep = _report(p, 3)
    assert _skipped(rep) == {ids[1]: "catalog rows changed since the plan"}
    assert rep["deleted_runs"] == RUNS - KEEP - 1
    assert _rows(ws)[0] == {ids[1], *ids[-KEEP:]}
    assert (ws / "data/backtests" / ids[1]).is_dir()
    assert ck.run(ws, "check").returncode == 0


def test_a_rollback_journal_catalog_gets_no_helper(tmp_path: Path) -> None:
    """In rollback-journal mode a reader's lock holds the application's writers up, so the
    rows are compared inside the commit, as before: no helper runs; the same deletions."""
    ws = tmp_path / "ws"
    ids = _build(ws, wal=False)
    manifest = ck.plan(ws, keep_last=KEEP)
    log = tmp_path / "fp.log"
    rep = _report(ck.run(ws, "apply", str(manifest), log=log), 0)
    assert "beside.before_answer" not in log.read_text().split()
    assert rep["deleted_runs"] == RUNS - KEEP
    assert _rows(ws) == (set(ids[-KEEP:]), 2 * KEEP)


def test_compare_names_the_runs_gone_and_the_runs_changed() -> None:
    """The one comparison the helper and the commit both make: a run without a current
    fingerprint is gone, one whose fingerprint differs changed, the rest are unchanged."""
    found = beside.compare({"a": "1", "b": "2", 7: "x"}, ["a", "b", "c", 7], ["1", "3", "4", "x"])
    assert (found.gone, found.changed) == (["c"], ["b"])


def _commit_with(ws: Path, forged: bool, *, other_commit: bool) -> dict:
    """``commit_delete`` of the three oldest runs (their real fingerprints) given an answer
    that says the oldest changed (it did not), taken at the catalog's current
    ``data_version``; with ``other_commit``, another connection commits before the commit.
    Returns what the commit left out."""
    cfg = load_config(None, env={}, overrides={"catalog_path": str(ws / "data/catalog.db")})
    with SqliteCatalog(cfg, readonly=False) as cat:
        ids = sorted(r for (r,) in cat.conn.execute("SELECT run_id FROM runs"))[:3]
        cat.load_ids(ids)
        fps = cat.fingerprints()
        known = beside.Known(
            cat.data_version(), frozenset(), frozenset({ids[0]}) if forged else frozenset()
        )
        if other_commit:
            other = sqlite3.connect(ws / "data/catalog.db")
            other.execute("CREATE TABLE app_log (x)")  # touches no row of any run
            other.commit()
            other.close()
        info = TxInfo("a-test", "apply", "m-test", "2026-11-30T00:00:00Z", None, None)
        runs = [TombRun(rid, fps[rid], None, None, 0) for rid in ids]
        return cat.commit_delete(info, "cat-test", runs, known=known)


def test_the_commit_obeys_the_helpers_answer_while_nothing_else_committed(
    tmp_path: Path,
) -> None:
    """The answer is what the commit goes by when ``data_version`` has not moved: a run the
    answer names as changed is left out without the rows being read again (they did not
    change: only the answer says so)."""
    ws = tmp_path / "ws"
    ids = _build(ws)
    assert _commit_with(ws, True, other_commit=False) == {
        ids[0]: "catalog rows changed since the plan"
    }
    assert _rows(ws)[0] == set(ids) - set(ids[1:3])


def test_the_commit_ignores_the_answer_once_another_connection_committed(
    tmp_path: Path,
) -> None:
    """The same answer after another connection's commit (one touching no run): the commit
    compares the rows itself, finds all three unchanged and deletes them."""
    ws = tmp_path / "ws"
    ids = _build(ws)
    assert _commit_with(ws, True, other_commit=True) == {}
    assert _rows(ws)[0] == set(ids) - set(ids[:3])


def test_a_helper_that_cannot_start_leaves_the_comparison_to_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No interpreter to run (the path does not exist, or a frozen executable): no helper,
    no error; `NotBeside` answers nothing."""
    cfg = load_config(None, env={}, overrides={"catalog_path": str(tmp_path / "none.db")})
    real = sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    helper = beside.start(cfg, 1, ["a"], ["x"])
    assert isinstance(helper, beside.NotBeside) and helper.result() is None
    monkeypatch.setattr(sys, "executable", real)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert isinstance(beside.start(cfg, 1, ["a"], ["x"]), beside.NotBeside)


def test_the_helper_answers_in_process_and_a_stop_abandons_it(tmp_path: Path) -> None:
    """The helper on its own: it answers which runs are gone or changed (one deleted, one
    digest that is not the plan's), and a ``stop()`` that says stop (a signal arrived) ends
    the wait at once, with no answer and the helper reaped."""
    ws = tmp_path / "ws"
    ids = _build(ws)[:100]
    cfg = load_config(None, env={}, overrides={"catalog_path": str(ws / "data/catalog.db")})
    with SqliteCatalog(cfg, readonly=True) as cat:
        cat.load_ids(ids)
        fps = cat.fingerprints()
    db = sqlite3.connect(ws / "data/catalog.db")
    db.execute("DELETE FROM runs WHERE run_id = ?", (ids[5],))
    db.commit()
    db.close()
    wrong = [fps[r] if r != ids[7] else "0" * 64 for r in ids]
    with beside.start(cfg, 42, ids, wrong) as helper:
        known = helper.result()
    assert known == beside.Known(42, frozenset({ids[5]}), frozenset({ids[7]}))
    helper = beside.start(cfg, 42, ids, wrong)
    assert isinstance(helper, beside.Beside)
    assert helper.result(stop=lambda: True) is None
    assert helper._proc is None  # killed and reaped
