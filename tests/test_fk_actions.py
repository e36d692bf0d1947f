"""Foreign keys mean what they say (issue 15, item 1).

One table per kind of reference to runs, one row of each per run:

* ``ON DELETE CASCADE`` and a reference named in ``catalog.child_tables``: the run owns the
  row (tombstoned, deleted, restored by undo);
* no ``ON DELETE`` clause (NO ACTION): owned too by default, as MLflow means it (it deletes
  those rows itself, children first); ``catalog.no_action = "blocks"`` makes it block;
* ``ON DELETE SET NULL`` / ``SET DEFAULT``: the row stays, its column is set, and undo puts
  the old value back;
* ``ON DELETE RESTRICT`` from a row that stays: the run is skipped, with the reason.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from . import crashkit as ck

TOML = """
[catalog]
path = "data/catalog.db"
child_tables = [
  { table = "run_metrics", column = "run_id" },
  { table = "c_configured", column = "run_ref" },
]
[artifacts]
root = "data/backtests"
"""


def _build(root: Path, *, no_action: str | None = None) -> tuple[Path, list[str]]:
    ws = ck.build(root, runs=8)
    extra = f'no_action = "{no_action}"\n' if no_action else ""
    (ws / "retention.toml").write_text(TOML.replace("[catalog]\n", "[catalog]\n" + extra, 1))
    db = sqlite3.connect(ws / "data/catalog.db")
    db.executescript(
        """
        CREATE TABLE c_cascade (id INTEGER PRIMARY KEY,
            run_id REFERENCES runs(run_id) ON DELETE CASCADE, v);
        CREATE TABLE c_setnull (id INTEGER PRIMARY KEY,
            run_id REFERENCES runs(run_id) ON DELETE SET NULL, v);
        CREATE TABLE c_setdefault (id INTEGER PRIMARY KEY,
            run_id TEXT DEFAULT 'orphaned' REFERENCES runs(run_id) ON DELETE SET DEFAULT, v);
        CREATE TABLE c_restrict (id INTEGER PRIMARY KEY,
            run_id REFERENCES runs(run_id) ON DELETE RESTRICT, v);
        CREATE TABLE c_noaction (id INTEGER PRIMARY KEY, run_id REFERENCES runs(run_id), v);
        CREATE TABLE c_configured (id INTEGER PRIMARY KEY, run_ref TEXT, v);
        """
    )
    ids = [r[0] for r in db.execute("SELECT run_id FROM runs ORDER BY created_at")]
    for t in ("c_cascade", "c_setnull", "c_setdefault", "c_noaction"):
        db.executemany(f"INSERT INTO {t} (run_id, v) VALUES (?, ?)", ((i, t) for i in ids))
    db.executemany("INSERT INTO c_configured (run_ref, v) VALUES (?, 'cfg')", ((i,) for i in ids))
    db.execute("INSERT INTO c_restrict (run_id, v) VALUES (?, 'blocks')", (ids[1],))
    db.commit()
    db.close()
    return ws, ids


def _rows(ws: Path, table: str, col: str = "run_id") -> dict[int, object]:
    db = sqlite3.connect(ws / "data/catalog.db")
    out = dict(db.execute(f"SELECT id, {col} FROM {table}").fetchall())
    db.close()
    return out


def _snapshot(ws: Path) -> dict[str, dict[int, object]]:
    return {
        t: _rows(ws, t, "run_ref" if t == "c_configured" else "run_id")
        for t in (
            "c_cascade",
            "c_setnull",
            "c_setdefault",
            "c_restrict",
            "c_noaction",
            "c_configured",
        )
    }


def test_each_foreign_key_action_is_honoured_through_apply_undo_apply_purge(
    tmp_path: Path,
) -> None:
    ws, ids = _build(tmp_path / "ws")
    old, blocked, kept = ids[:4], ids[1], ids[4:]
    before = _snapshot(ws)
    # Plan leaves the RESTRICT-referenced run out, with the reason.
    plan = ck.run(ws, "plan", "--keep-last", "4", "--now", "2026-11-01T00:00:00Z", "-o", "m.json")
    assert plan.returncode in (0, 3), plan.stderr
    assert f"{blocked}: referenced by c_restrict.run_id of a kept row" in plan.stderr.decode()
    p = ck.run(ws, "apply", "m.json")
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert blocked not in rep["deleted_run_ids"]
    gone = [r for r in old if r != blocked]
    after = _snapshot(ws)
    for t in ("c_cascade", "c_noaction", "c_configured"):
        assert sorted(after[t].values()) == sorted([*kept, blocked]), t
    # SET NULL / SET DEFAULT rows stay, their reference set; the others untouched.
    assert len(after["c_setnull"]) == len(ids)
    assert sorted(k for k, v in after["c_setnull"].items() if v is None) == sorted(
        k for k, v in before["c_setnull"].items() if v in gone
    )
    assert sorted(k for k, v in after["c_setdefault"].items() if v == "orphaned") == sorted(
        k for k, v in before["c_setdefault"].items() if v in gone
    )
    assert after["c_restrict"] == before["c_restrict"]
    txid = rep["txid"]
    # Undo: every row back where it was, the nulled references restored.
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 0, u.stderr
    assert _snapshot(ws) == before
    # Apply again (a new plan), then purge: the tombstones go, the nulled rows stay nulled.
    # (another --now, so that it is a new manifest, not the one already applied)
    plan = ck.run(ws, "plan", "--keep-last", "4", "--now", "2026-11-01T00:00:01Z", "-o", "m2.json")
    assert plan.returncode in (0, 3), plan.stderr
    p = ck.run(ws, "apply", "m2.json")
    assert p.returncode == 0, p.stderr
    assert ck.run(ws, "purge", "--all").returncode == 0
    final = _snapshot(ws)
    assert final == after
    db = sqlite3.connect(ws / "data/catalog.db")
    left = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_retention\\_%'"
        " ESCAPE '\\'"
    ).fetchall()
    for (name,) in left:
        if name.startswith(("_retention_t_", "_retention_n_")):
            assert db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] == 0, name
    db.close()


def test_no_action_can_be_declared_blocking(tmp_path: Path) -> None:
    ws, _ = _build(tmp_path / "ws", no_action="blocks")
    before = _snapshot(ws)
    p = ck.run(ws, "plan", "--keep-last", "4", "--now", "2026-11-01T00:00:00Z", "-o", "m.json")
    # Every old run is referenced by a c_noaction row that would stay: nothing to delete.
    assert p.returncode in (0, 3), p.stderr
    a = ck.run(ws, "apply", "m.json")
    assert json.loads(a.stdout)["deleted_runs"] == 0, a.stdout
    assert _snapshot(ws) == before
    assert b"c_noaction.run_id" in p.stderr + a.stderr


def test_a_run_whose_set_null_column_changed_since_is_restored_without_clobbering(
    tmp_path: Path,
) -> None:
    """Undo puts a nulled reference back only where the column still holds what the apply
    set: a value the application wrote since wins."""
    ws, ids = _build(tmp_path / "ws")
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    db = sqlite3.connect(ws / "data/catalog.db")
    (row,) = db.execute("SELECT id FROM c_setnull WHERE run_id IS NULL LIMIT 1").fetchone()
    db.execute("UPDATE c_setnull SET run_id = ? WHERE id = ?", (ids[-1], row))
    db.commit()
    db.close()
    assert ck.run(ws, "undo", txid).returncode == 0
    assert _rows(ws, "c_setnull")[row] == ids[-1]


def test_a_restrict_reference_added_after_the_plan_skips_the_run_at_commit(tmp_path: Path) -> None:
    ws, ids = _build(tmp_path / "ws")
    manifest = ck.plan(ws, keep_last=4)
    db = sqlite3.connect(ws / "data/catalog.db")
    db.execute("INSERT INTO c_restrict (run_id, v) VALUES (?, 'late')", (ids[0],))
    db.commit()
    db.close()
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 3, p.stderr
    skipped = {s["run_id"]: s["reason"] for s in json.loads(p.stdout)["skipped"]}
    assert "referenced by c_restrict.run_id of a kept row" in skipped[ids[0]]
    assert (ws / "data/backtests" / ids[0]).is_dir()  # moved back home
    assert ids[0] in _rows(ws, "c_cascade").values()


def test_a_run_pinned_after_the_plan_is_skipped_at_commit(tmp_path: Path) -> None:
    """Pinning a run changes its row, so the commit's fingerprint check leaves it alone."""
    ws, ids = _build(tmp_path / "ws")
    db = sqlite3.connect(ws / "data/catalog.db")
    db.execute("ALTER TABLE runs ADD COLUMN pinned INTEGER")
    db.commit()
    text = (ws / "retention.toml").read_text()
    (ws / "retention.toml").write_text(text + '\n[policy]\npin_column = "pinned"\n')
    manifest = ck.plan(ws, keep_last=4)
    db.execute("UPDATE runs SET pinned = 1 WHERE run_id = ?", (ids[0],))
    db.commit()
    db.close()
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 3, p.stderr
    skipped = {s["run_id"]: s["reason"] for s in json.loads(p.stdout)["skipped"]}
    assert skipped == {ids[0]: "catalog rows changed since the plan"}
    assert (ws / "data/backtests" / ids[0]).is_dir()
