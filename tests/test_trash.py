"""Undo and purge through the real `retention` executable: a round trip that brings back every
row (rowid and storage class) and every tree (bytes, modes, symlinks); a crash at every
failpoint undo and purge pass through (listed by the code itself, via FAILPOINT_LOG), then
`retention recover`, then the invariants of crashkit; conflicts; grace windows on a fixed clock;
putting the trash back by hand from TRASH.json; refusals."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from retention import trashops
from retention.config import load_config
from retention.durations import format_instant, parse_instant
from retention.errors import UndoRefused
from retention.workspace import open_workspace

from . import crashkit as ck
from .conftest import NOW_TEXT

ARTS = Path("data/backtests")
TRASH = ARTS / ".trash"


def run(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`crashkit.run` with extra environment (e.g. ``RETENTION_GRACE_PERIOD``)."""
    full = {**ck.BASE_ENV, **(env or {})}
    return subprocess.run([ck.EXE, *args], cwd=ws, env=full, capture_output=True, timeout=60)


def ok(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, (p.returncode, p.stderr.decode())
    return json.loads(p.stdout)


def apply(ws: Path, keep_last: int = 2, env: dict[str, str] | None = None) -> dict:
    rep = ok(run(ws, "apply", str(ck.plan(ws, keep_last)), env=env))
    assert rep["txid"] and rep["deleted_runs"] > 0
    return rep


def status(ws: Path) -> dict:
    return ok(run(ws, "status", "--json"))


def tx_row(ws: Path, txid: str) -> dict:
    c = sqlite3.connect(ws / "data/catalog.db")
    c.row_factory = sqlite3.Row
    row = c.execute("SELECT * FROM _retention_tx WHERE txid = ?", (txid,)).fetchone()
    c.close()
    return dict(row)


def typed_dump(ws: Path) -> dict[str, list[tuple]]:
    """Every row of ``runs`` and ``run_metrics``: rowid, then (storage class, value) per
    column, so that 1 and 1.0, or b'' and NULL, never compare equal."""
    c = sqlite3.connect(ws / "data/catalog.db")
    out = {}
    for table in ("runs", "run_metrics"):
        cols = [r[1] for r in c.execute(f'PRAGMA table_info("{table}")')]
        sel = ", ".join(f'typeof("{col}"), "{col}"' for col in cols)
        out[table] = c.execute(f'SELECT rowid, {sel} FROM "{table}" ORDER BY rowid').fetchall()
    c.close()
    return out


def oddify(ws: Path) -> None:
    """Give the oldest runs (deleted by keep_last=2) values whose storage class is easy to
    lose: text in a REAL column, NULL vs empty blob, NUL bytes, extreme and inexact floats."""
    c = sqlite3.connect(ws / "data/catalog.db")
    first, second = [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY rowid LIMIT 2")]
    c.execute("UPDATE runs SET sharpe = 'n/a', strategy = 'Ü\u2028x' WHERE run_id = ?", (first,))
    c.execute("UPDATE runs SET sharpe = NULL WHERE run_id = ?", (second,))
    m = [r[0] for r in c.execute("SELECT id FROM run_metrics WHERE run_id = ?", (first,))]
    c.execute("UPDATE run_metrics SET value = NULL, blob = X'' WHERE id = ?", (m[0],))
    c.execute("UPDATE run_metrics SET value = 1e308, blob = X'00FF00' WHERE id = ?", (m[1],))
    c.execute("UPDATE run_metrics SET value = 0.1 + 0.2, blob = NULL WHERE id = ?", (m[2],))
    c.commit()
    types = {t for (t,) in c.execute("SELECT DISTINCT typeof(sharpe) FROM runs")}
    assert types == {"text", "null", "real"}
    c.close()


def fresh(template: Path, dst: Path) -> Path:
    """A copy of a workspace (catalog, artifacts, trash, state dir); the catalog keeps its
    lineage because the first apply recorded it in ``_retention_meta``."""
    shutil.copytree(template, dst, symlinks=True)
    return dst


def frozen(ws: Path) -> tuple:
    """Everything recovery could change: rows, tombstone states, every path on disk."""
    c = sqlite3.connect(ws / "data/catalog.db")
    tx = c.execute("SELECT txid, state FROM _retention_tx ORDER BY txid").fetchall()
    runs = c.execute("SELECT txid, run_id, state FROM _retention_runs ORDER BY 1, 2").fetchall()
    c.close()
    return typed_dump(ws), tx, runs, sorted(str(p) for p in (ws / ARTS).rglob("*"))


def assert_recover_is_idle(ws: Path) -> None:
    snap = frozen(ws)
    again = ck.run(ws, "recover")
    assert again.returncode == 0 and b"Nothing to recover" in again.stderr, again.stderr
    assert frozen(ws) == snap


# -- 1. round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["txid", "within"])
def test_undo_restores_every_row_with_its_storage_class_and_every_tree_byte_for_byte(
    tmp_path: Path, form: str
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    oddify(ws)
    before, rows = ck.snapshot(ws), typed_dump(ws)
    p = ck.run(ws, "plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "manifest.json")
    assert p.returncode == 0, p.stderr
    rep = ok(ck.run(ws, "apply", "manifest.json"))
    txid = rep["txid"]
    assert rep["deleted_runs"] == 6 and len(typed_dump(ws)["runs"]) == 2
    assert (ws / TRASH / txid).is_dir()

    undo = ck.run(ws, "undo", *((txid,) if form == "txid" else ("--within", "1h")))
    out = ok(undo)
    assert [u["target"] for u in out["undone"]] == [txid]
    assert sorted(out["undone"][0]["restored"]) == sorted(rep["deleted_run_ids"])
    assert out["undone"][0]["conflicts"] == []

    assert typed_dump(ws) == rows
    assert ck.snapshot(ws) == before  # content, modes, the symlink
    first = min(d for d in (ws / ARTS).iterdir() if d.name != ".trash")
    assert (first / "link-out").is_symlink()
    assert (first / "params.json").stat().st_mode & 0o777 == 0o600
    assert set(ck.check_invariants(ws, before).values()) == {"home"}
    # A full undo leaves no trash behind: no TRASH.json, no empty transaction directory.
    assert not (ws / TRASH / txid).exists()

    st = status(ws)
    assert not [t for t in st["trash"] if t["txid"] == txid and t["undoable"]]
    assert st["undoable_runs"] == 0 and st["undoable_bytes"] == 0
    assert tx_row(ws, txid)["state"] == "undone"
    again = ck.run(ws, "undo", txid)
    assert again.returncode == 9 and b"already undone" in again.stderr


# -- 2. crash sweep over undo ----------------------------------------------------------------


@pytest.fixture(scope="module")
def applied_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """A workspace after one successful apply (6 of 8 runs in trash), and the snapshot
    taken before it."""
    ws = ck.build(tmp_path_factory.mktemp("trash") / "ws", runs=8)
    before = ck.snapshot(ws)
    return ws, before, apply(ws)["txid"]


@pytest.mark.slow
def test_crash_at_every_undo_failpoint_then_recover_keeps_invariants(
    applied_template: tuple[Path, dict, str], tmp_path: Path
) -> None:
    template, before, txid = applied_template
    probe = fresh(template, tmp_path / "probe")
    log = tmp_path / "undo.log"
    ok(ck.run(probe, "undo", txid, log=log))
    points = ck.hits(log)
    names = {p.split("@")[0] for p in points}
    assert set(trashops_undo_points()) <= names, names
    assert len(points) >= 20
    outcomes = {}
    for n, point in enumerate(points):
        ws = fresh(template, tmp_path / f"ws{n}")
        p = ck.run(ws, "undo", txid, failpoint=point)
        assert ck.crashed(p), (point, p.returncode, p.stderr)
        r = ck.run(ws, "recover")
        assert r.returncode == 0, (point, r.stderr)
        states = ck.check_invariants(ws, before)
        home = sorted(k for k, v in states.items() if v == "home")
        # All or nothing: the 2 kept runs plus either none or all 6 of the apply.
        assert len(home) in (2, 8), (point, states)
        outcomes[point] = len(home)
        assert_recover_is_idle(ws)
        if len(home) == 8:
            assert tx_row(ws, txid)["state"] == "undone", point
            assert not (ws / TRASH / txid).exists(), point
        else:
            # Rolled back: the apply is still undoable, and undo now works.
            assert tx_row(ws, txid)["state"] == "applied", point
            ok(ck.run(ws, "undo", txid))
            assert set(ck.check_invariants(ws, before).values()) == {"home"}, point
        shutil.rmtree(ws)
    # Before the catalog commit an undo rolls back; after it, forward.
    assert outcomes["undo.after_begin@1"] == 2
    assert outcomes["undo.after_rename@3"] == 2
    assert outcomes["undo.before_commit@1"] == 2
    assert outcomes["undo.after_commit@1"] == 8
    assert outcomes["undo.before_done@1"] == 8


def trashops_undo_points() -> list[str]:
    from retention.failpoints import UNDO

    return list(UNDO)


def test_crash_between_trash_index_unlink_and_rmdir_is_harmless(
    applied_template: tuple[Path, dict, str], tmp_path: Path
) -> None:
    """The cleanup after a full undo (unlink TRASH.json, rmdir, fsync) has no failpoint of
    its own; the state a crash inside it leaves (committed undo, index gone, directory
    still there) is made by hand: invariants hold and recover finishes the cleanup."""
    template, before, txid = applied_template
    ws = fresh(template, tmp_path / "ws")
    assert ck.crashed(ck.run(ws, "undo", txid, failpoint="undo.after_commit@1"))
    (ws / TRASH / txid / "TRASH.json").unlink()
    assert (ws / TRASH / txid).is_dir()
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    assert set(ck.check_invariants(ws, before).values()) == {"home"}
    assert not (ws / TRASH / txid).exists()


# -- 3. crash sweep over purge ---------------------------------------------------------------


@pytest.mark.slow
def test_crash_at_every_purge_failpoint_then_recover_purges_all_or_nothing(
    applied_template: tuple[Path, dict, str], tmp_path: Path
) -> None:
    template, before, txid = applied_template
    probe = fresh(template, tmp_path / "probe")
    log = tmp_path / "purge.log"
    assert ok(ck.run(probe, "purge", "--all", log=log))["purged"] == [txid]
    points = ck.hits(log)
    from retention.failpoints import PURGE

    assert set(PURGE) <= {p.split("@")[0] for p in points}
    outcomes = {}
    for n, point in enumerate(points):
        ws = fresh(template, tmp_path / f"ws{n}")
        p = ck.run(ws, "purge", "--all", failpoint=point)
        assert ck.crashed(p), (point, p.returncode, p.stderr)
        r = ck.run(ws, "recover")
        assert r.returncode == 0, (point, r.stderr)
        states = ck.check_invariants(ws, before, allow_purged=True)
        counts = sorted(v for v in states.values() if v != "home")
        assert counts in (["purged"] * 6, ["trash"] * 6), (point, states)
        purged = counts[0] == "purged"
        outcomes[point] = purged
        assert_recover_is_idle(ws)
        if purged:
            assert tx_row(ws, txid)["state"] == "purged", point
            assert not (ws / TRASH / txid).exists(), point
            assert ck.run(ws, "undo", txid).returncode == 9, point
        else:
            assert tx_row(ws, txid)["state"] == "applied", point
            ok(ck.run(ws, "undo", txid))
            assert set(ck.check_invariants(ws, before).values()) == {"home"}, point
        shutil.rmtree(ws)
    assert outcomes["purge.after_begin@1"] is False
    assert outcomes["purge.before_commit@1"] is False
    assert outcomes["purge.after_mark@1"] is True
    assert outcomes["purge.after_remove@1"] is True


def test_an_interrupted_purge_is_finished_by_the_next_purge(
    applied_template: tuple[Path, dict, str], tmp_path: Path
) -> None:
    template, before, txid = applied_template
    ws = fresh(template, tmp_path / "ws")
    assert ck.crashed(ck.run(ws, "purge", "--all", failpoint="purge.after_remove@1"))
    assert tx_row(ws, txid)["state"] == "purging"
    [interrupted] = status(ws)["interrupted"]
    assert (interrupted["op"], interrupted["recover_would"]) == ("purge", "roll forward")
    # Plain `purge` (expired only: nothing is) still finishes the interrupted one first.
    rep = ok(ck.run(ws, "purge"))
    assert [(x["op"], x["action"]) for x in rep["recovered"]] == [("purge", "rolled forward")]
    assert rep["purged"] == []
    assert tx_row(ws, txid)["state"] == "purged"
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()).count("purged") == 6


def test_undo_refuses_a_transaction_whose_purge_is_under_way(
    applied_template: tuple[Path, dict, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partly purged (state ``purging``): refused, from the library without recovery first
    and from the CLI (which finishes the purge, then refuses)."""
    template, before, txid = applied_template
    ws = fresh(template, tmp_path / "ws")
    assert ck.crashed(ck.run(ws, "purge", "--all", failpoint="purge.after_mark@1"))
    assert tx_row(ws, txid)["state"] == "purging"
    monkeypatch.chdir(ws)
    cfg = load_config(None, env={})
    with open_workspace(cfg) as w, pytest.raises(UndoRefused, match="being purged"):
        trashops.undo_targets(w, parse_instant(NOW_TEXT), txid=txid, within=None)
    p = ck.run(ws, "undo", txid)
    assert p.returncode == 9 and b"purged" in p.stderr, p.stderr
    assert tx_row(ws, txid)["state"] == "purged"
    ck.check_invariants(ws, before, allow_purged=True)


def test_undo_refuses_the_untouched_half_of_a_partly_purged_purge(tmp_path: Path) -> None:
    """Two applies purged together; the crash comes after the first one's trash is gone.
    The second one's trash is still complete on disk, yet undo refuses it: the purge
    decision was committed, so recovery finishes it instead."""
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    first, second = apply(ws, keep_last=6)["txid"], apply(ws, keep_last=2)["txid"]
    assert ck.crashed(ck.run(ws, "purge", "--all", failpoint="purge.after_remove@1"))
    gone = [t for t in (first, second) if not (ws / TRASH / t).exists()]
    [kept] = [t for t in (first, second) if t not in gone]
    assert len(gone) == 1 and tx_row(ws, kept)["state"] == "purging"
    p = ck.run(ws, "undo", kept)
    assert p.returncode == 9 and b"purged" in p.stderr, p.stderr
    assert [tx_row(ws, t)["state"] for t in (first, second)] == ["purged", "purged"]
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()) == ["home"] * 2 + ["purged"] * 6


# -- 4. conflicts ----------------------------------------------------------------------------


def test_undo_leaves_conflicting_runs_in_trash_restores_the_rest_and_never_overwrites(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before, rows = ck.snapshot(ws), typed_dump(ws)
    rep = apply(ws)
    txid = rep["txid"]
    taken_id, taken_dir = rep["deleted_run_ids"][1], rep["deleted_run_ids"][3]
    c = sqlite3.connect(ws / "data/catalog.db")
    c.execute(
        "INSERT INTO runs (run_id, created_at, strategy, sharpe) VALUES (?, 'hand', 'Z', 42)",
        (taken_id,),
    )
    c.commit()
    hand_row = c.execute("SELECT rowid, * FROM runs WHERE run_id = ?", (taken_id,)).fetchall()
    c.close()
    (ws / ARTS / taken_dir).mkdir()
    (ws / ARTS / taken_dir / "mine.txt").write_text("made by hand\n")
    hand_tree = ck.tree(ws / ARTS / taken_dir)

    p = ck.run(ws, "undo", txid)
    assert p.returncode == 3, p.stderr
    [u] = json.loads(p.stdout)["undone"]
    assert sorted(c["run_id"] for c in u["conflicts"]) == sorted([taken_id, taken_dir])
    assert sorted(u["restored"]) == sorted(set(rep["deleted_run_ids"]) - {taken_id, taken_dir})
    assert b"Conflict" in p.stderr
    # Never overwritten: the hand-made row and directory are exactly as made.
    c = sqlite3.connect(ws / "data/catalog.db")
    assert c.execute("SELECT rowid, * FROM runs WHERE run_id = ?", (taken_id,)).fetchall() == (
        hand_row
    )
    metrics = "SELECT count(*) FROM run_metrics WHERE run_id IN (?, ?)"
    assert c.execute(metrics, (taken_id, taken_dir)).fetchone() == (0,)
    tomb = dict(c.execute("SELECT run_id, state FROM _retention_runs WHERE txid = ?", (txid,)))
    c.close()
    assert ck.tree(ws / ARTS / taken_dir) == hand_tree
    assert {k for k, v in tomb.items() if v == "trash"} == {taken_id, taken_dir}
    trash = ws / TRASH / txid
    for rid in (taken_id, taken_dir):
        [slot] = [d for d in trash.iterdir() if d.name.endswith(rid)]
        assert ck.tree(slot) == before["trees"][rid]
    assert tx_row(ws, txid)["state"] == "applied"
    [t] = status(ws)["trash"]
    assert (t["txid"], t["undoable"], t["runs"]) == (txid, True, 2)

    # Remove the conflicts: a later undo brings both back, and nothing is left in trash.
    c = sqlite3.connect(ws / "data/catalog.db")
    c.execute("DELETE FROM runs WHERE run_id = ?", (taken_id,))
    c.commit()
    c.close()
    shutil.rmtree(ws / ARTS / taken_dir)
    out = ok(ck.run(ws, "undo", txid))
    assert sorted(out["undone"][0]["restored"]) == sorted([taken_id, taken_dir])
    assert typed_dump(ws) == rows
    assert ck.snapshot(ws) == before
    assert not trash.exists()
    assert status(ws)["trash"] == []


# -- 5. grace windows on a fixed clock ---------------------------------------------------------


def later(instant: str, **delta: float) -> str:
    return format_instant(parse_instant(instant) + timedelta(**delta))


def test_purge_expired_respects_the_grace_period_and_undo_is_refused_after(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    txid = apply(ws)["txid"]
    row = tx_row(ws, txid)
    at = row["created_at"]
    assert parse_instant(row["grace_until"]) - parse_instant(at) == timedelta(hours=24)

    early = ok(ck.run(ws, "purge", "--expired", "--now", later(at, hours=23)))
    assert early["purged"] == []
    assert set(ck.check_invariants(ws, before).values()) == {"home", "trash"}
    assert ok(ck.run(ws, "purge", "--now", later(at, hours=23)))["purged"] == []

    done = ok(ck.run(ws, "purge", "--expired", "--now", later(at, hours=25)))
    assert done["purged"] == [txid]
    assert not (ws / TRASH / txid).exists()
    assert tx_row(ws, txid)["state"] == "purged"
    assert sorted(ck.check_invariants(ws, before, allow_purged=True).values()).count("purged") == 6

    p = ck.run(ws, "undo", txid)
    assert p.returncode == 9 and p.stdout == b""
    [error] = [x for x in p.stderr.decode().splitlines() if x.startswith("Error:")]
    assert error.startswith(f"Error: cannot undo {txid}: its trash was purged at "), error
    w = ck.run(ws, "undo", "--within", "48h")
    assert w.returncode == 9 and b"purged" in w.stderr, w.stderr
    st = status(ws)
    assert st["trash"] == [] and st["undoable_runs"] == 0 and st["undoable_bytes"] == 0


def test_purge_expired_removes_exactly_the_apply_whose_grace_is_over(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    short = apply(ws, keep_last=6, env={"RETENTION_GRACE_PERIOD": "1h"})
    long = apply(ws, keep_last=2, env={"RETENTION_GRACE_PERIOD": "48h"})
    assert (short["deleted_runs"], long["deleted_runs"]) == (2, 4)
    at = tx_row(ws, long["txid"])["created_at"]

    rep = ok(ck.run(ws, "purge", "--expired", "--now", later(at, hours=2)))
    assert rep["purged"] == [short["txid"]]
    assert tx_row(ws, short["txid"])["state"] == "purged"
    assert tx_row(ws, long["txid"])["state"] == "applied"
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()) == ["home"] * 2 + ["purged"] * 2 + ["trash"] * 4
    [t] = status(ws)["trash"]
    assert (t["txid"], t["undoable"], t["runs"]) == (long["txid"], True, 4)

    assert ck.run(ws, "undo", short["txid"]).returncode == 9
    out = ok(ck.run(ws, "undo", long["txid"]))
    assert sorted(out["undone"][0]["restored"]) == sorted(long["deleted_run_ids"])
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()) == ["home"] * 6 + ["purged"] * 2


# -- 7. the trash without the catalog -------------------------------------------------------------


def test_trash_index_alone_is_enough_to_put_every_tree_back_by_hand(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    rep = apply(ws)
    index = json.loads((ws / TRASH / rep["txid"] / "TRASH.json").read_bytes())
    assert index["txid"] == rep["txid"]
    assert parse_instant(index["created_at"])
    assert Path(index["artifact_root"]) == (ws / ARTS).absolute()
    assert sorted(e["run_id"] for e in index["entries"]) == sorted(rep["deleted_run_ids"])
    root = Path(index["artifact_root"])
    for e in index["entries"]:
        assert e["trash"].startswith(f".trash/{rep['txid']}/")
        (root / e["trash"]).rename(root / e["original"])
    assert ck.snapshot(ws)["trees"] == before["trees"]


# -- 8. refusals ---------------------------------------------------------------------------


def test_undo_of_an_unknown_txid_is_refused_with_one_error_line(
    applied_template: tuple[Path, dict, str], tmp_path: Path
) -> None:
    template, _, _ = applied_template
    ws = fresh(template, tmp_path / "ws")
    snap = frozen(ws)
    p = ck.run(ws, "undo", "a-20990101T000000Z-000000")
    assert p.returncode == 9 and p.stdout == b""
    errors = [x for x in p.stderr.decode().splitlines() if x.startswith("Error:")]
    assert errors == ["Error: no committed apply with txid a-20990101T000000Z-000000"]
    assert b"Traceback" not in p.stderr
    assert frozen(ws) == snap


@pytest.mark.parametrize("args", [(), ("a-x", "--within", "1h")], ids=["neither", "both"])
def test_undo_needs_exactly_one_of_txid_and_within(
    applied_template: tuple[Path, dict, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    template, _, _ = applied_template
    ws = fresh(template, tmp_path / "ws")
    snap = frozen(ws)
    p = ck.run(ws, "undo", *args)
    assert p.returncode == 2, p.stderr
    assert p.stderr.decode().startswith("Error: give either a TXID or --within")
    assert frozen(ws) == snap
