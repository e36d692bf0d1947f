"""Hostile trash and journals: a symlinked ``.trash/<txid>`` and a damaged intents frame
(issue 12, items 1, 2, 10 and the duplicated-intents part of 11).

The promise: nothing outside the artifact root is ever opened, moved or removed; recovery
never reports success while a run's row and directory disagree; when journal and disk
disagree it stops with exit 7 and never marks the transaction done.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from journal.reader import read_journal

from . import crashkit as ck


def _outside_copy_of_trash(ws: Path, txid: str, outside: Path) -> Path:
    """Replace ``.trash/<txid>`` by a symlink to a copy of it outside the root; returns the
    copy. The original is kept beside the workspace so nothing real is lost."""
    txdir = ws / "data/backtests/.trash" / txid
    shutil.copytree(txdir, outside, symlinks=True)
    txdir.rename(ws / f"kept-{txid}")
    txdir.symlink_to(outside)
    return outside


def test_undo_through_a_symlinked_trash_dir_moves_nothing_from_outside(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    assert p.returncode == 0, p.stderr
    txid = json.loads(p.stdout)["txid"]
    outside = _outside_copy_of_trash(ws, txid, tmp_path / "elsewhere")
    before_outside = ck.tree(outside)
    before_rows = ck.dump(ws)
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 8, u.stderr
    err = u.stderr.decode()
    assert "Traceback" not in err
    assert "symlink" in err and txid in err
    assert ck.tree(outside) == before_outside  # nothing moved out of it, TRASH.json still there
    assert (outside / "TRASH.json").exists()
    assert ck.dump(ws) == before_rows  # no row came back either
    homes = [d.name for d in (ws / "data/backtests").iterdir() if d.name != ".trash"]
    assert len(homes) == 4


def test_recover_stops_at_a_symlinked_trash_dir_without_a_traceback(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    manifest = ck.plan(ws, keep_last=4)
    p = ck.run(ws, "apply", str(manifest), failpoint="apply.after_rename@2")
    assert ck.crashed(p)
    txid = next(d.name for d in (ws / "data/backtests/.trash").iterdir())
    outside = _outside_copy_of_trash(ws, txid, tmp_path / "elsewhere")
    before_outside = ck.tree(outside)
    r = ck.run(ws, "recover")
    assert r.returncode in (7, 8), r.stderr
    assert "Traceback" not in r.stderr.decode()
    assert "symlink" in r.stderr.decode()
    assert ck.tree(outside) == before_outside
    # Still unfinished: a later recover, once the operator puts the directory back, finishes.
    st = ck.run(ws, "status", "--json")
    assert txid in json.loads(st.stdout)["interrupted"][0]["txid"]
    assert "symlink" in st.stdout.decode()  # status names the unsafe trash directory
    chk = ck.run(ws, "check", "--json")
    kinds = {f["kind"] for f in json.loads(chk.stdout)["findings"]}
    assert "trash_unsafe" in kinds
    (ws / "data/backtests/.trash" / txid).unlink()
    (ws / f"kept-{txid}").rename(ws / "data/backtests/.trash" / txid)
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr


def test_purge_never_removes_through_a_symlinked_trash_dir(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    outside = _outside_copy_of_trash(ws, txid, tmp_path / "elsewhere")
    before_outside = ck.tree(outside)
    r = ck.run(ws, "purge", "--all")
    assert r.returncode == 8, r.stderr
    assert "Traceback" not in r.stderr.decode() and "symlink" in r.stderr.decode()
    assert ck.tree(outside) == before_outside


def _journal(ws: Path) -> Path:
    return ws / ".retention/journal.wal"


def _crash_mid_moves(tmp_path: Path, runs: int = 12) -> tuple[Path, dict]:
    ws = ck.build(tmp_path / "ws", runs=runs)
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)), failpoint="apply.after_rename@3")
    assert ck.crashed(p)
    return ws, before


def test_a_flipped_byte_in_acknowledged_intents_stops_recovery_with_exit_7(
    tmp_path: Path,
) -> None:
    ws, before = _crash_mid_moves(tmp_path)
    jpath = _journal(ws)
    res = read_journal(jpath)
    last = res.offsets[-1]  # the intents frame: the last one written before the kill
    data = bytearray(jpath.read_bytes())
    data[last + 20] ^= 0x40
    jpath.write_bytes(bytes(data))
    r = ck.run(ws, "recover")
    assert r.returncode == 7, (r.returncode, r.stderr)
    err = r.stderr.decode()
    assert "Traceback" not in err and "intent" in err
    # Never marked done: the journal still holds the transaction (the damaged frame kept
    # beside it), nothing was moved back, and a second recover stops the same way.
    kept = ws / f".retention/journal.wal.torn-{last}"
    assert jpath.read_bytes() + kept.read_bytes() == bytes(data)
    assert ck.run(ws, "recover").returncode == 7
    txid = json.loads(ck.run(ws, "status", "--json").stdout)["interrupted"][0]["txid"]
    slots = [p for p in (ws / "data/backtests/.trash" / txid).iterdir() if p.is_dir()]
    assert len(slots) == 3 and len(ck.dump(ws)) == len(before["rows"])


def test_a_cut_short_intents_frame_after_moves_stops_recovery_with_exit_7(tmp_path: Path) -> None:
    ws, _ = _crash_mid_moves(tmp_path)
    jpath = _journal(ws)
    data = jpath.read_bytes()
    jpath.write_bytes(data[:-7])
    r = ck.run(ws, "recover")
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr.decode()
    st = json.loads(ck.run(ws, "status", "--json").stdout)
    assert [i["state"] for i in st["interrupted"]] == ["active"]  # not done, not compacted


def test_intents_torn_before_anything_moved_roll_back_cleanly(tmp_path: Path) -> None:
    """The legitimate torn tail: killed while the intents were being written, before their
    fsync returned: nothing moved, so dropping them is right."""
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    p = ck.run(
        ws, "apply", str(ck.plan(ws, keep_last=4)), failpoint="journal.append.before_fsync@2"
    )
    assert ck.crashed(p)
    jpath = _journal(ws)
    jpath.write_bytes(jpath.read_bytes()[:-5])  # the unsynced frame did not all reach disk
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    ck.check_invariants(ws, before)


def test_a_duplicated_intents_frame_recovers_idempotently(tmp_path: Path) -> None:
    ws, before = _crash_mid_moves(tmp_path)
    jpath = _journal(ws)
    res = read_journal(jpath)
    data = jpath.read_bytes()
    last = res.offsets[-1]
    jpath.write_bytes(data + data[last:])  # the intents frame, twice
    assert len(read_journal(jpath).records) == len(res.records) + 1
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    ck.check_invariants(ws, before)


def test_an_apply_whose_every_entry_is_dropped_at_commit_commits_nothing(tmp_path: Path) -> None:
    """Every planned run's rows changed after the plan: the commit keeps none of them. Then
    nothing is committed as an apply: no txid row, no undo hint, no TRASH.json listing moves
    that were undone, every directory at home."""
    import sqlite3

    ws = ck.build(tmp_path / "ws", runs=8)
    manifest = ck.plan(ws, keep_last=4)
    db = sqlite3.connect(ws / "data/catalog.db")
    db.execute("UPDATE run_metrics SET value = value + 1")
    db.commit()
    db.close()
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 3, p.stderr
    err = p.stderr.decode()
    assert "retention undo" not in err, err
    assert "nothing was deleted" in err.lower(), err
    report = json.loads(p.stdout)
    assert report["deleted_runs"] == 0 and report["txid"] is None
    assert len(report["skipped"]) == 4
    assert not list((ws / "data/backtests/.trash").glob("*"))
    st = ck.run(ws, "status", "--json")
    assert json.loads(st.stdout)["trash"] == []
    ck.check_invariants(ws, before)
