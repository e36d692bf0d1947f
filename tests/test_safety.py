"""Regressions for crash-path review findings: each test names the hazard it rules out."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from retention.catalogs import open_catalog
from retention.config import load_config

from . import crashkit as ck


def _sql(ws: Path, *statements: str) -> None:
    c = sqlite3.connect(ws / "data/catalog.db")
    for st in statements:
        c.execute(st)
    c.commit()
    c.close()


def test_our_connection_fsyncs_the_directory_after_the_rollback_journal_unlink(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=4)
    cfg = load_config(None, env={"RETENTION_CATALOG_PATH": str(ws / "data/catalog.db")})
    with open_catalog(cfg, readonly=False) as cat:
        assert cat.conn.execute("PRAGMA synchronous").fetchone()[0] == 3  # EXTRA


def test_apply_interrupted_after_commit_then_purged_does_not_wedge_recovery(
    tmp_path: Path,
) -> None:
    """An apply left COMMITTED (not DONE) must be finished before its trash is purged;
    otherwise every later recover would demand directories that no longer exist."""
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    m = ck.plan(ws)
    assert ck.crashed(ck.run(ws, "apply", str(m), failpoint="apply.after_journal_commit@1"))
    p = ck.run(ws, "purge", "--all")
    assert p.returncode == 0, p.stderr
    assert ck.run(ws, "recover").returncode == 0
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()).count("purged") == 6


def test_trash_that_cannot_be_purged_is_a_warning_not_a_failed_apply(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=12)
    env = {"RETENTION_GRACE_PERIOD": "1s"}
    first = ck.plan(ws, keep_last=8)
    p = subprocess.run(
        [ck.EXE, "apply", str(first)], cwd=ws, env={**ck.BASE_ENV, **env}, capture_output=True
    )
    assert p.returncode == 0, p.stderr
    txid = json.loads(p.stdout)["txid"]
    time.sleep(1.2)
    stuck = next((ws / "data/backtests/.trash" / txid).glob("*/plots"))
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
            pytest.skip("root, and chattr +i is not available here")
        unlock = ["chattr", "-i", str(stuck)]
    else:
        os.chmod(stuck, 0o500)
        unlock = ["chmod", "700", str(stuck)]
    try:
        second = ck.plan(ws, keep_last=4)
        p = subprocess.run(
            [ck.EXE, "apply", str(second)], cwd=ws, env={**ck.BASE_ENV, **env}, capture_output=True
        )
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert report["deleted_runs"] == 4
        assert (
            report["warnings"] and "purge of expired trash did not finish" in report["warnings"][0]
        )
        assert b"Warning: purge" in p.stderr
        # The stalled purge blocks nothing: undo of the second apply still works.
        u = ck.run(ws, "undo", report["txid"])
        assert u.returncode == 0, u.stderr
    finally:
        subprocess.run(unlock, check=True)
    assert ck.run(ws, "purge").returncode == 0
    assert ck.run(ws, "recover").returncode == 0
    assert not (ws / "data/backtests/.trash" / txid).exists()


def _path_column_workspace(tmp_path: Path) -> Path:
    ws = ck.build(tmp_path / "ws", runs=8)
    _sql(ws, "ALTER TABLE runs ADD COLUMN art TEXT", "UPDATE runs SET art = run_id")
    (ws / "retention.toml").write_text('[artifacts]\npath_column = "art"\n')
    return ws


def test_shared_or_nested_artifact_directories_are_never_moved(tmp_path: Path) -> None:
    """Two runs naming one directory, or a candidate whose directory holds a kept run's:
    moving it would take another run's artifacts along, so plan leaves it out."""
    ws = _path_column_workspace(tmp_path)
    c = sqlite3.connect(ws / "data/catalog.db")
    ids = [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY created_at")]
    c.close()
    arts = ws / "data/backtests"
    (arts / ids[3] / "kept-inside").mkdir()
    _sql(
        ws,
        f"UPDATE runs SET art = '{ids[0]}' WHERE run_id = '{ids[1]}'",  # shared by two old runs
        f"UPDATE runs SET art = '{ids[3]}/kept-inside' WHERE run_id = '{ids[7]}'",  # kept, nested
    )
    m = ck.plan(ws, keep_last=2)
    p = ck.run(ws, "show", "--json", str(m))
    planned = set(json.loads(p.stdout)["run_ids"])
    assert ids[0] not in planned and ids[1] not in planned and ids[3] not in planned
    assert {ids[2], ids[4], ids[5]} <= planned
    a = ck.run(ws, "apply", str(m))
    assert a.returncode == 0, a.stderr
    assert (arts / ids[0]).is_dir() and (arts / ids[3] / "kept-inside").is_dir()


def test_undo_of_a_row_linking_two_deleted_runs_restores_it_once(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    c = sqlite3.connect(ws / "data/catalog.db")
    a, b = [r[0] for r in c.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 2")]
    c.close()
    _sql(
        ws,
        "CREATE TABLE run_pairs (id INTEGER PRIMARY KEY, a REFERENCES runs(run_id),"
        " b REFERENCES runs(run_id))",
        f"INSERT INTO run_pairs (a, b) VALUES ('{a}', '{b}')",
    )
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws)))
    assert p.returncode == 0, p.stderr
    u = ck.run(ws, "undo", json.loads(p.stdout)["txid"])
    assert u.returncode == 0, u.stderr
    assert ck.snapshot(ws) == before
    c = sqlite3.connect(ws / "data/catalog.db")
    assert c.execute("SELECT a, b FROM run_pairs").fetchall() == [(a, b)]
    c.close()


def test_undo_never_writes_through_a_parent_symlinked_out_of_the_root(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    arts = ws / "data/backtests"
    (arts / "exp").mkdir()
    for d in list(arts.iterdir()):
        if d.name not in ("exp",):
            os.rename(d, arts / "exp" / d.name)
    (ws / "retention.toml").write_text('[artifacts]\npath_template = "exp/{run_id}"\n')
    p = ck.run(ws, "apply", str(ck.plan(ws)))
    assert p.returncode == 0, p.stderr
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(arts / "exp", arts / "exp-real")
    (arts / "exp").symlink_to(outside)
    u = ck.run(ws, "undo", json.loads(p.stdout)["txid"])
    assert u.returncode == 3, u.stderr
    assert list(outside.iterdir()) == []
    conflicts = json.loads(u.stdout)["undone"][0]["conflicts"]
    assert len(conflicts) == 4
    assert all("no longer inside the artifact root" in c["reason"] for c in conflicts)


def test_a_trash_that_is_a_symlink_is_refused_before_anything_moves(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "data/backtests/.trash").symlink_to(outside)
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws)))
    assert p.returncode == 8
    assert p.stderr.decode().startswith("Error: refusing to use the trash")
    assert list(outside.iterdir()) == []
    assert ck.snapshot(ws) == before


def test_non_utf8_artifact_paths_survive_plan_apply_and_undo(tmp_path: Path) -> None:
    """A directory name that is not UTF-8 is carried losslessly (manifest ``path_raw``,
    trash, tombstones) and comes back byte for byte."""
    ws = _path_column_workspace(tmp_path)
    arts = ws / "data/backtests"
    c = sqlite3.connect(ws / "data/catalog.db")
    oldest = c.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT 1").fetchone()[0]
    raw = b"caf\xe9-\xff-" + oldest.encode()
    c.execute("UPDATE runs SET art = ? WHERE run_id = ?", (raw, oldest))
    c.commit()
    c.close()
    os.rename(arts / oldest, os.fsencode(arts) + b"/" + raw)
    tree_before = ck.tree(Path(os.fsdecode(os.fsencode(arts) + b"/" + raw)))
    m = ck.plan(ws)
    entry = next(
        e for e in json.loads(m.read_text())["payload"]["entries"] if e["run_id"] == oldest
    )
    import base64

    assert base64.b64decode(entry["path_raw"]) == raw
    p = ck.run(ws, "apply", str(m))
    assert p.returncode == 0, p.stderr
    assert not os.path.lexists(os.fsencode(arts) + b"/" + raw)
    index = json.loads(next((arts / ".trash").glob("*/TRASH.json")).read_text())
    mine = next(e for e in index["entries"] if e["run_id"] == oldest)
    assert base64.b64decode(mine["original_raw"]) == raw
    u = ck.run(ws, "undo", json.loads(p.stdout)["txid"])
    assert u.returncode == 0, u.stderr
    back = Path(os.fsdecode(os.fsencode(arts) + b"/" + raw))
    assert back.is_dir() and ck.tree(back) == tree_before


def test_a_path_column_with_another_uri_scheme_is_refused_not_taken_as_missing(
    tmp_path: Path,
) -> None:
    """MLflow's ``mlflow-artifacts:/...`` URIs name no directory under the root: planning
    them as "missing" would let apply delete rows and orphan the real directories."""
    ws = _path_column_workspace(tmp_path)
    _sql(ws, "UPDATE runs SET art = 'mlflow-artifacts:/2/' || run_id || '/artifacts'")
    p = ck.run(ws, "plan", "--keep-last", "2", "-o", "m.json")
    assert p.returncode == 3, p.stderr
    assert b"unsupported URI scheme 'mlflow-artifacts'" in p.stderr
    assert json.loads((ws / "m.json").read_text())["payload"]["entries"] == []


def test_a_path_column_with_a_malformed_file_uri_is_refused_not_a_traceback(
    tmp_path: Path,
) -> None:
    """``file://[...`` (an unclosed IPv6 host) made the URL parser raise: plan stopped with
    a traceback (and apply did, for a signed manifest naming such a path). Now the run is
    refused with the reason, like any path that names no directory under the root."""
    ws = _path_column_workspace(tmp_path)
    _sql(ws, "UPDATE runs SET art = 'file://[' || run_id || '/artifacts'")
    p = ck.run(ws, "plan", "--keep-last", "2", "-o", "m.json")
    assert p.returncode == 3, p.stderr
    assert b"Traceback" not in p.stderr
    assert b"is not a valid file: URI" in p.stderr
    assert json.loads((ws / "m.json").read_text())["payload"]["entries"] == []


def test_an_artifact_root_written_with_dotdot_plans_and_applies(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    cfgdir = ws / "cfg"
    cfgdir.mkdir()
    (cfgdir / "retention.toml").write_text(
        '[catalog]\npath = "../data/catalog.db"\n[artifacts]\nroot = "../data/backtests"\n'
        '[state]\ndir = "../.retention"\n'
    )
    env = {**ck.BASE_ENV, "RETENTION_CONFIG": str(cfgdir / "retention.toml")}
    p = subprocess.run(
        [ck.EXE, "plan", "--keep-last", "2", "-o", "m.json"], cwd=ws, env=env, capture_output=True
    )
    assert p.returncode == 0, p.stderr
    a = subprocess.run([ck.EXE, "apply", "m.json"], cwd=ws, env=env, capture_output=True)
    assert a.returncode == 0, a.stderr


def test_status_survives_a_damaged_last_apply_file_and_a_corrupt_journal(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    assert ck.run(ws, "apply", str(ck.plan(ws))).returncode == 0
    (ws / ".retention/last-apply.json").write_text("{not json")
    s = ck.run(ws, "status", "--json")
    assert s.returncode == 0 and json.loads(s.stdout)["last_apply"] is None
    (ws / ".retention/journal.wal").write_bytes(b"garbage!" * 4)
    s = ck.run(ws, "status")
    assert s.returncode == 0, s.stderr
    assert b"The journal is corrupt" in s.stdout and b"Undoable: 4 runs" in s.stdout
