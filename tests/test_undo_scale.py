"""Undo, purge, check and status stay linear in the tombstoned rows they touch.

Two independent proofs, neither timed: every statement these commands send to SQLite is
planned without a full scan (or a scan of one whole transaction's tombstones) inside a
join, checked with ``EXPLAIN QUERY PLAN``; and the SQLite virtual-machine instructions an
undo executes grow linearly when the rows double (the self-join that made undo quadratic
on a real MLflow store grew fourfold).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retention import sample
from retention.tombstones import TXID_COL

from .conftest import NOW, NOW_TEXT, invoke

CHILD_ROWS = 20


def _build(root: Path, runs: int) -> None:
    """The default layout with CHILD_ROWS metric rows per run, and link rows joining pairs
    of runs (so undo's shared-row detection has work to do)."""
    sample.build(root, runs=runs, now=NOW)
    db = sqlite3.connect(root / "data/catalog.db")
    ids = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY created_at")]
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        ((rid, f"m{k}", k * 0.5) for rid in ids for k in range(CHILD_ROWS - 3)),
    )
    db.execute(
        "CREATE TABLE run_links (id INTEGER PRIMARY KEY, a REFERENCES runs(run_id),"
        " b REFERENCES runs(run_id))"
    )
    db.executemany(
        "INSERT INTO run_links (a, b) VALUES (?, ?)", zip(ids[0::2], ids[1::2], strict=False)
    )
    db.commit()
    db.close()


@contextmanager
def _sqlite_hooks(
    on_connect: Callable[[sqlite3.Connection], None],
) -> Iterator[None]:
    """Call ``on_connect`` on every SQLite connection opened meanwhile (SQLite's own trace
    and progress facilities; retention's code runs unchanged)."""
    real = sqlite3.connect

    def connect(*args, **kwargs):  # type: ignore[no-untyped-def]
        conn = real(*args, **kwargs)
        on_connect(conn)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = real  # type: ignore[assignment]


def _plan_and_apply(keep: int) -> str:
    plan = invoke("plan", "--keep-last", str(keep), "--now", NOW_TEXT, "-o", "m.json")
    assert plan.exit_code == 0, plan.stderr
    apply = invoke("apply", "m.json")
    assert apply.exit_code == 0, apply.stderr
    return json.loads(apply.stdout)["txid"]


def _loops(plan: list[tuple[int, int, int, str]]) -> Iterator[tuple[int, str, bool]]:
    """(parent, detail, nested) for each loop of a query plan: nested is True for every
    loop run once per row of an outer loop (a later loop of the same select, or anything
    inside a correlated subquery)."""
    parent_of = {node: parent for node, parent, _, _ in plan}
    detail_of = {node: detail for node, _, _, detail in plan}
    seen_loop: set[int] = set()
    for _, parent, _, detail in plan:
        if not detail.startswith(("SCAN ", "SEARCH ")) or detail == "SCAN CONSTANT ROW":
            continue
        nested = parent in seen_loop
        seen_loop.add(parent)
        up = parent
        while up in parent_of:
            if detail_of[up].startswith("CORRELATED"):
                nested = True
            up = parent_of[up]
        yield parent, detail, nested


def _nested_full_scans(db: Path, statements: list[str]) -> list[tuple[str, str]]:
    """Replay ``statements`` (temp tables recreated, the rest only explained) and return
    every (statement, loop) where a nested loop scans a whole table or a whole
    transaction's tombstones."""
    conn = sqlite3.connect(db)
    bad = []
    for sql in statements:
        head = sql.lstrip().split(None, 2)
        verb = head[0].upper() if head else ""
        if verb in ("CREATE", "DROP") and "TEMP" in sql.upper():
            conn.execute(sql)
            continue
        if verb not in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH"):
            continue
        try:
            plan = conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        except sqlite3.OperationalError as exc:
            assert "no such table" in str(exc), (sql, exc)
            continue
        for _, detail, nested in _loops(plan):
            if not nested:
                continue
            only_txid = detail.startswith("SEARCH ") and detail.endswith(f"({TXID_COL}=?)")
            if detail.startswith("SCAN ") or only_txid:
                bad.append((sql, detail))
    conn.close()
    return bad


def test_undo_purge_check_status_plan_no_full_scan_inside_a_join(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement of undo, status, check and purge after a real apply: no nested loop
    scans a table, or all the tombstones of a transaction, once per outer row."""
    _build(workspace / "w2", runs=60)
    monkeypatch.chdir(workspace / "w2")
    txid = _plan_and_apply(keep=10)
    statements: list[str] = []
    with _sqlite_hooks(lambda c: c.set_trace_callback(statements.append)):
        assert invoke("status").exit_code == 0
        assert invoke("check").exit_code == 0
        undo = invoke("undo", txid)
        assert undo.exit_code == 0, undo.stderr
        _plan_and_apply(keep=10)
        assert invoke("purge", "--all").exit_code == 0
    assert any("_retention_t_run_links" in s for s in statements)  # the link rows were seen
    assert _nested_full_scans(Path("data/catalog.db"), statements) == []


def _undo_instructions(root: Path, runs: int, monkeypatch: pytest.MonkeyPatch) -> int:
    _build(root, runs=runs)
    monkeypatch.chdir(root)
    txid = _plan_and_apply(keep=2)
    ticks = [0]

    def count() -> int:
        ticks[0] += 1
        return 0

    with _sqlite_hooks(lambda c: c.set_progress_handler(count, 1000)):
        undo = invoke("undo", txid)
    assert undo.exit_code == 0, undo.stderr
    assert len(json.loads(undo.stdout)["undone"][0]["restored"]) == runs - 2
    return ticks[0] * 1000


def test_undo_work_grows_linearly_with_the_rows_it_restores(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Doubling the runs (x20 child rows, half of them linked in pairs) at most doubles the
    SQLite instructions of undo, within a margin; a quadratic join would quadruple them."""
    small = _undo_instructions(workspace / "small", 150, monkeypatch)
    large = _undo_instructions(workspace / "large", 300, monkeypatch)
    assert large / small < 2.6, (small, large)  # 2.0-2.1 measured; the self-join gave 4.05
