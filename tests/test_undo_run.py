"""`retention undo --run RUN_ID` (issue 11 item 3): single runs back from whichever apply
holds them in trash, as an undo transaction of their own (journaled, crash-safe), the
apply staying undoable for the rest; refusals (exit 9) for runs not in trash, erased or
purged ones."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from . import crashkit as ck
from .conftest import NOW_TEXT, invoke
from .test_hostile_plan import bare_workspace


def _sql(ws: Path, *statements: str) -> list:
    c = sqlite3.connect(ws / "data/catalog.db")
    out: list = []
    for st in statements:
        out = c.execute(st).fetchall()
    c.commit()
    c.close()
    return out


def _apply(ws: Path, keep_last: int, out: str = "m.json") -> dict:
    r = invoke("plan", "--keep-last", str(keep_last), "--now", NOW_TEXT, "-o", out)
    assert r.exit_code == 0, r.output
    r = invoke("apply", out)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _trash(ws: Path) -> dict:
    return json.loads(invoke("trash", "--json").stdout)


def _undo_audits(ws: Path) -> list[tuple]:
    have = _sql(ws, "SELECT 1 FROM sqlite_master WHERE name = '_retention_audit'")
    if not have:
        return []
    return _sql(ws, "SELECT txid, target, runs FROM _retention_audit WHERE action = 'undo'")


def test_undo_run_restores_that_run_rows_and_directory_and_the_apply_stays_undoable(
    workspace: Path,
) -> None:
    run_id = "bt-20241101-00000"
    metrics = f"SELECT * FROM run_metrics WHERE run_id = '{run_id}' ORDER BY id"
    rows = _sql(workspace, metrics)
    rep = _apply(workspace, keep_last=10)
    assert run_id in rep["deleted_run_ids"]
    r = invoke("undo", "--run", run_id)
    assert r.exit_code == 0, r.output
    [u] = json.loads(r.stdout)["undone"]
    assert u["target"] == rep["txid"] and u["restored"] == [run_id] and not u["conflicts"]
    assert (workspace / "data/backtests" / run_id / "params.json").is_file()
    assert _sql(workspace, metrics) == rows
    # The apply keeps the other 29 runs in trash, undoable; status and trash say so.
    t = _trash(workspace)
    assert t["runs"] == 29 and run_id not in {e["run_id"] for e in t["entries"]}
    st = json.loads(invoke("status", "--json").stdout)
    assert st["undoable_runs"] == 29 and st["trash"][0]["state"] == "applied"
    assert _undo_audits(workspace) == [(u["txid"], rep["txid"], 1)]
    assert invoke("check").exit_code == 0
    # ... and the whole undo brings back the rest.
    r = invoke("undo", rep["txid"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["undone"][0]["restored"]) == 29
    assert _sql(workspace, "SELECT count(*) FROM runs") == [(40,)]
    assert _trash(workspace)["runs"] == 0


def test_undo_run_is_repeatable_and_takes_each_run_from_the_apply_holding_it(
    workspace: Path,
) -> None:
    first = _apply(workspace, keep_last=30)
    second = _apply(workspace, keep_last=20, out="m2.json")
    a, b = first["deleted_run_ids"][0], second["deleted_run_ids"][-1]
    r = invoke("undo", "--run", a, "--run", b)
    assert r.exit_code == 0, r.output
    undone = json.loads(r.stdout)["undone"]
    assert [(u["target"], u["restored"]) for u in undone] == [
        (second["txid"], [b]),
        (first["txid"], [a]),
    ]
    assert len({u["txid"] for u in undone}) == 2  # one undo transaction per apply
    assert _sql(workspace, f"SELECT count(*) FROM runs WHERE run_id IN ('{a}', '{b}')") == [(2,)]
    assert _trash(workspace)["runs"] == 18
    assert invoke("check").exit_code == 0


def test_undo_run_refuses_a_run_not_in_trash_with_exit_9_and_changes_nothing(
    workspace: Path,
) -> None:
    rep = _apply(workspace, keep_last=10)
    kept = _sql(workspace, "SELECT run_id FROM runs LIMIT 1")[0][0]
    gone = rep["deleted_run_ids"][0]
    for args, why in [
        (["--run", "no-such-run"], "no recorded apply deleted it"),
        (["--run", kept], "no recorded apply deleted it"),
        (["--run", gone, "--run", "no-such-run"], "no-such-run"),  # all or nothing
    ]:
        r = invoke("undo", *args)
        assert r.exit_code == 9, r.output
        assert why in r.stderr
    assert _trash(workspace)["runs"] == 30
    assert invoke("undo", "--run", gone).exit_code == 0
    r = invoke("undo", "--run", gone)
    assert r.exit_code == 9 and "already restored" in r.stderr


def test_undo_run_refuses_a_purged_run(workspace: Path) -> None:
    rep = _apply(workspace, keep_last=10)
    assert invoke("purge", "--all", "--yes").exit_code == 0
    r = invoke("undo", "--run", rep["deleted_run_ids"][0])
    assert r.exit_code == 9
    assert "was purged" in r.stderr


def test_undo_run_refuses_a_run_of_an_erasure(workspace: Path) -> None:
    r = invoke("plan", "--erase", "strategy=A", "--now", NOW_TEXT, "-o", "erase.json")
    assert r.exit_code == 0, r.output
    r = invoke("apply", "erase.json")
    assert r.exit_code == 0, r.output
    erased = json.loads(r.stdout)["deleted_run_ids"][0]
    r = invoke("undo", "--run", erased)
    assert r.exit_code == 9
    assert "erasure" in r.stderr


def test_undo_run_brings_back_a_run_sharing_a_row_with_it_and_no_other(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    a, b, c = (r[0] for r in _sql(ws, "SELECT run_id FROM runs ORDER BY created_at LIMIT 3"))
    _sql(
        ws,
        "CREATE TABLE run_links (id INTEGER PRIMARY KEY, a REFERENCES runs(run_id),"
        " b REFERENCES runs(run_id))",
        f"INSERT INTO run_links (a, b) VALUES ('{a}', '{b}')",
    )
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    assert p.returncode == 0, p.stderr
    u = ck.run(ws, "undo", "--run", a)
    assert u.returncode == 0, u.stderr
    assert sorted(json.loads(u.stdout)["undone"][0]["restored"]) == sorted([a, b])
    assert _sql(ws, "SELECT count(*) FROM run_links") == [(1,)]
    assert _sql(ws, f"SELECT count(*) FROM runs WHERE run_id = '{c}'") == [(0,)]
    assert _sql(ws, "PRAGMA foreign_key_check") == []
    assert ck.run(ws, "check").returncode == 0


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("undo.after_begin", False),
        ("undo.after_rename", False),
        ("undo.before_commit", False),
        ("undo.after_commit", True),
        ("undo.before_done", True),
    ],
)
def test_undo_run_killed_at_each_undo_failpoint_recovers_to_whole_runs(
    tmp_path: Path, point: str, committed: bool
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=3)))
    assert p.returncode == 0, p.stderr
    txid, deleted = json.loads(p.stdout)["txid"], json.loads(p.stdout)["deleted_run_ids"]
    victim = deleted[1]
    u = ck.run(ws, "undo", "--run", victim, failpoint=point)
    assert ck.crashed(u), u.stderr
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    states = ck.check_invariants(ws, before)
    assert states[victim] == ("home" if committed else "trash")
    assert all(states[rid] == "trash" for rid in deleted if rid != victim)
    audits = _undo_audits(ws)
    assert [(t, n) for _, t, n in audits] == ([(txid, 1)] if committed else [])
    # The apply stays undoable for what is left, and the run can still be asked for.
    left = ck.run(ws, "trash", "--json")
    assert json.loads(left.stdout)["runs"] == len(deleted) - (1 if committed else 0)
    if not committed:
        again = ck.run(ws, "undo", "--run", victim)
        assert again.returncode == 0, again.stderr
        assert ck.check_invariants(ws, before)[victim] == "home"


def test_undo_run_with_a_txid_or_within_is_a_usage_error(workspace: Path) -> None:
    rep = _apply(workspace, keep_last=10)
    gone = rep["deleted_run_ids"][0]
    for args in (["--run", gone, rep["txid"]], ["--run", gone, "--within", "1d"]):
        r = invoke("undo", *args)
        assert r.exit_code == 2, r.output
        assert "--run RUN_ID" in r.stderr
    assert _trash(workspace)["runs"] == 30


def test_undo_run_refuses_an_id_that_names_two_runs_in_trash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An untyped id column holds the integer 42 and the text '42', two runs; both deleted,
    `undo --run 42` cannot tell which is meant: exit 9, the two named, nothing restored
    (it used to bring back one of them, whichever came first)."""
    arts, db = bare_workspace(tmp_path, monkeypatch)
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id PRIMARY KEY, created_at INTEGER, dir TEXT)")
    for k, rid in enumerate([42, "42", "C", "D"]):
        c.execute("INSERT INTO runs VALUES (?, ?, ?)", (rid, 1_600_000_000 + k, f"d{k}"))
        (arts / f"d{k}").mkdir()
    c.commit()
    c.close()
    (tmp_path / "retention.toml").write_text('[artifacts]\npath_template = "{dir}"\n')
    assert invoke("plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    assert invoke("apply", "m.json").exit_code == 0
    r = invoke("undo", "--run", "42")
    assert r.exit_code == 9, r.output
    assert "run '42' names 2 runs in trash ('42', 42)" in r.stderr
    assert "Traceback" not in r.stderr
    c = sqlite3.connect(db)
    assert sorted(map(str, (v for (v,) in c.execute("SELECT run_id FROM runs")))) == ["C", "D"]
    c.close()
    assert sorted(p.name for p in arts.iterdir() if p.name != ".trash") == ["d2", "d3"]
