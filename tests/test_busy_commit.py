"""The catalog busy at the commit point (issue 12, item 4).

Another writer takes an exclusive lock on a rollback-journal catalog exactly after apply
(or undo) moved its directories and before it commits (a pausing failpoint makes that
instant exact). The commit waits ``catalog.busy_timeout``, fails, and the transaction is
rolled back in the same process: every directory back where it was, the rows unchanged,
nothing left for `recover`, and one error line saying how long it waited.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from . import crashkit as ck


def _run_paused(ws: Path, args: list[str], point: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run ``retention ARGS`` paused at ``point``; while paused, take an exclusive lock on
    the catalog and hold it until the command has finished."""
    sync = tmp / "sync"
    sync.mkdir()
    env = dict(ck.BASE_ENV)
    env.update(
        FAILPOINT_PAUSE=point,
        FAILPOINT_PAUSE_DIR=str(sync),
        RETENTION_BUSY_TIMEOUT="1s",
    )
    proc = subprocess.Popen(
        [ck.EXE, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not (sync / "paused").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    blocker = sqlite3.connect(ws / "data/catalog.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        (sync / "resume").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_busy_error(p: subprocess.CompletedProcess) -> str:
    err = p.stderr.decode()
    assert p.returncode == 4, (p.returncode, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    assert "busy" in errors[0] and "catalog.busy_timeout (1s; waited " in errors[0], errors[0]
    return errors[0]


def test_apply_busy_at_commit_rolls_back_in_process(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    manifest = ck.plan(ws, keep_last=4)
    p = _run_paused(ws, ["apply", str(manifest)], "apply.after_move_batch", tmp_path)
    line = _assert_busy_error(p)
    assert "nothing was deleted" in line or "rolled back" in line, line
    # Nothing left half-done: no interrupted transaction, every run whole at home.
    st = ck.run(ws, "status", "--json")
    assert json.loads(st.stdout)["interrupted"] == []
    states = ck.check_invariants(ws, before)
    assert set(states.values()) == {"home"}
    assert not any((ws / "data/backtests/.trash").glob("*"))


def test_undo_busy_at_commit_puts_directories_back_in_trash(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=4)))
    txid = json.loads(p.stdout)["txid"]
    u = _run_paused(ws, ["undo", txid], "undo.after_move_batch", tmp_path)
    _assert_busy_error(u)
    st = ck.run(ws, "status", "--json")
    assert json.loads(st.stdout)["interrupted"] == []
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()).count("trash") == 4
    # And once the application lets go, the undo goes through.
    u = ck.run(ws, "undo", txid)
    assert u.returncode == 0, u.stderr
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_busy_timeout_is_a_setting_with_its_source(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=4)
    env = dict(ck.BASE_ENV, RETENTION_BUSY_TIMEOUT="3s")
    p = subprocess.run([ck.EXE, "config", "--json"], cwd=ws, env=env, capture_output=True)
    assert p.returncode == 0, p.stderr
    cfg = json.loads(p.stdout)
    assert cfg["busy_timeout"] == "3s"
    assert cfg["sources"]["busy_timeout"].startswith("env")
    bad = subprocess.run(
        [ck.EXE, "config"],
        cwd=ws,
        env=dict(env, RETENTION_BUSY_TIMEOUT="soon"),
        capture_output=True,
    )
    assert bad.returncode == 2 and b"busy_timeout" in bad.stderr
    assert os.path.exists(ws / "data/catalog.db")
