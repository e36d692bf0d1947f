"""Crash safety of apply and recover: crash at every failpoint apply passes through (the
list comes from the code itself, via FAILPOINT_LOG), recover, then the invariants
(crashkit.check_invariants). Also SIGKILL at random moments, and recover killed inside
itself."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import crashkit as ck


@pytest.fixture(scope="module", params=["rollback-journal", "wal"])
def template(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same small workspace with the catalog in each of SQLite's journal modes."""
    root = tmp_path_factory.mktemp("template") / "ws"
    return ck.build(root, runs=8, wal=request.param == "wal")


def fresh(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def apply_points(template: Path, tmp: Path) -> list[str]:
    ws = fresh(template, tmp / "enumerate")
    m = ck.plan(ws)
    log = tmp / "apply.log"
    # Backdate nothing: the purge path is exercised by its own sweep in test_trash.py.
    p = ck.run(ws, "apply", str(m), log=log)
    assert p.returncode == 0, p.stderr
    return ck.hits(log)


def test_apply_passes_through_every_apply_failpoint(template: Path, tmp_path: Path) -> None:
    names = {h.split("@")[0] for h in apply_points(template, tmp_path)}
    expected = {
        "apply.after_begin",
        "apply.after_trash_index",
        "apply.after_rename",
        "apply.after_move_batch",
        "apply.before_commit",
        "apply.after_commit",
        "apply.after_journal_commit",
        "apply.before_done",
        "journal.append.before_fsync",
    }
    assert expected <= names


@pytest.mark.slow
def test_crash_at_every_apply_failpoint_then_recover_keeps_invariants(
    template: Path, tmp_path: Path
) -> None:
    points = apply_points(template, tmp_path)
    assert len(points) >= 20
    before = ck.snapshot(template)
    outcomes = {}
    for n, point in enumerate(points):
        ws = fresh(template, tmp_path / f"ws{n}")
        m = ck.plan(ws)
        p = ck.run(ws, "apply", str(m), failpoint=point)
        assert ck.crashed(p), (point, p.returncode, p.stderr)
        r = ck.run(ws, "recover")
        assert r.returncode == 0, (point, r.stderr)
        states = ck.check_invariants(ws, before)
        # All-or-nothing per transaction: every candidate is home, or every one is in trash.
        deleted = {k for k, v in states.items() if v == "trash"}
        assert len(deleted) in (0, 6), (point, states)
        outcomes[point] = len(deleted)
        snap = (ck.dump(ws), sorted(str(p) for p in (ws / "data/backtests").rglob("*")))
        again = ck.run(ws, "recover")
        assert again.returncode == 0 and b"Nothing to recover" in again.stderr
        assert snap == (ck.dump(ws), sorted(str(p) for p in (ws / "data/backtests").rglob("*")))
        shutil.rmtree(ws)
    # Crashes before the catalog commit roll back; after it, roll forward.
    assert outcomes["apply.before_commit@1"] == 0
    assert outcomes["apply.after_commit@1"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["apply.after_rename@3", "apply.after_commit@1"])
def test_crash_inside_recover_then_recover_again_converges(
    template: Path, tmp_path: Path, crash: str
) -> None:
    before = ck.snapshot(template)
    probe = fresh(template, tmp_path / "probe")
    assert ck.crashed(ck.run(probe, "apply", str(ck.plan(probe)), failpoint=crash))
    log = tmp_path / "recover.log"
    assert ck.run(probe, "recover", log=log).returncode == 0
    points = ck.hits(log)
    # Rolling back after the third rename moves three directories home; rolling forward
    # after the commit has nothing left to move but still records and finishes.
    renames = sum(p.startswith("reconcile.after_rename") for p in points)
    assert renames == (3 if "after_rename" in crash else 0)
    assert any(p.startswith("recover.before_done") for p in points)
    for n, point in enumerate(points):
        ws = fresh(template, tmp_path / f"ws{n}")
        assert ck.crashed(ck.run(ws, "apply", str(ck.plan(ws)), failpoint=crash))
        assert ck.crashed(ck.run(ws, "recover", failpoint=point)), point
        r = ck.run(ws, "recover")
        assert r.returncode == 0, (point, r.stderr)
        ck.check_invariants(ws, before)
        shutil.rmtree(ws)


@pytest.mark.slow
def test_sigkill_at_random_moments_during_apply(tmp_path: Path) -> None:
    template = ck.build(tmp_path / "template", runs=120)
    before = ck.snapshot(template)
    rng = random.Random(1234)
    results = []
    for n in range(8):
        ws = fresh(template, tmp_path / f"ws{n}")
        m = ck.plan(ws, keep_last=10)
        proc = subprocess.Popen(
            [ck.EXE, "apply", str(m)],
            cwd=ws,
            env=ck.BASE_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.15, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        r = ck.run(ws, "recover")
        assert r.returncode == 0, r.stderr
        states = ck.check_invariants(ws, before)
        results.append(sum(v == "trash" for v in states.values()))
        shutil.rmtree(ws)
    assert set(results) <= {0, 110}


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
def test_apply_then_invariants_in_both_journal_modes(tmp_path: Path, wal: bool) -> None:
    ws = ck.build(tmp_path / "ws", runs=8, wal=wal)
    before = ck.snapshot(ws)
    p = ck.run(ws, "apply", str(ck.plan(ws)))
    assert p.returncode == 0, p.stderr
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()).count("trash") == 6
    import sqlite3

    mode = sqlite3.connect(ws / "data/catalog.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == ("wal" if wal else "delete")


@pytest.mark.slow
def test_crash_anywhere_in_an_apply_that_also_purges_expired_trash(tmp_path: Path) -> None:
    """The apply's own purge of older trash (its own transaction, after DONE) is crashed
    at each of its points too; recover then leaves the older apply purged or still whole
    in trash, and the new one committed."""
    base = ck.build(tmp_path / "base", runs=10)
    env = {**ck.BASE_ENV, "RETENTION_GRACE_PERIOD": "1s"}
    first = subprocess.run(
        [ck.EXE, "apply", str(ck.plan(base, keep_last=7))], cwd=base, env=env, capture_output=True
    )
    assert first.returncode == 0, first.stderr
    time.sleep(1.2)
    before = ck.snapshot(ck.build(tmp_path / "pristine", runs=10))

    def second(ws: Path, **kw: str) -> subprocess.CompletedProcess:
        e = dict(env)
        if "failpoint" in kw:
            e["FAILPOINT"] = kw["failpoint"]
        if "log" in kw:
            e["FAILPOINT_LOG"] = kw["log"]
        m = ck.plan(ws, keep_last=4)
        return subprocess.run([ck.EXE, "apply", str(m)], cwd=ws, env=e, capture_output=True)

    probe = fresh(base, tmp_path / "probe")
    log = tmp_path / "apply.log"
    assert second(probe, log=str(log)).returncode == 0
    points = ck.hits(log)
    assert any(p.startswith("purge.after_remove") for p in points)
    for n, point in enumerate(points):
        if not point.startswith(("purge.", "apply.before_done", "apply.after_journal_commit")):
            continue  # the rest of apply is swept above
        ws = fresh(base, tmp_path / f"ws{n}")
        assert ck.crashed(second(ws, failpoint=point)), point
        r = ck.run(ws, "recover")
        assert r.returncode == 0, (point, r.stderr)
        states = ck.check_invariants(ws, before, allow_purged=True)
        gone = sorted(v for v in states.values() if v != "home")
        assert len(gone) == 6, (point, states)
        shutil.rmtree(ws)


@pytest.mark.parametrize(
    "point", ["apply.after_begin@1", "apply.after_rename@1", "apply.after_commit@1"]
)
def test_a_directory_removed_since_the_plan_never_blocks_recovery(
    template: Path, tmp_path: Path, point: str
) -> None:
    """A candidate whose directory was removed after the plan gets no journaled intent
    (preflight looks for each directory before BEGIN): a crash anywhere in the apply is
    then recovered, rolled back or forward, with that run left alone, instead of stopping
    (exit 7) on a directory that is neither at home nor in trash."""
    ws = fresh(template, tmp_path / "ws")
    m = ck.plan(ws)
    gone = json.loads(m.read_text())["payload"]["entries"][0]["run_id"]
    shutil.rmtree(ws / "data/backtests" / gone)
    assert ck.crashed(ck.run(ws, "apply", str(m), failpoint=point))
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    st, _ = ck.status_and_check(ws)
    assert b'"interrupted":[]' in st, st
    assert gone in ck.dump(ws)  # its rows stay: its directory changed since the plan
