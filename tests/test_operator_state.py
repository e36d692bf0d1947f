"""Truthful state (issue 11 item 1): `status`, `check` and `recover` tell a transaction that
is RUNNING (its process holds the workspace lock) from one that was INTERRUPTED (its
process is gone), from another process; `check` groups its findings by kind, causes first,
with counts and ``--limit``, and accounts an unfinished transaction's directories to it
(one finding) instead of calling them orphans or missing runs; `status` counts them.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import filelock
import pytest

from retention.layout import StateLayout
from retention.workspace import describe_holder, live_holder, probe_lock, stale_owner

from . import crashkit as ck
from .conftest import invoke
from .crashkit import resume, start_paused


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ck.build(tmp_path_factory.mktemp("operator") / "ws", runs=8)


def fresh(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def as_json(ws: Path, *args: str, code: int = 0) -> dict:
    p = ck.run(ws, *args, "--json")
    assert p.returncode == code, (p.returncode, p.stderr.decode())
    return json.loads(p.stdout)


def text(ws: Path, *args: str, code: int = 0) -> str:
    p = ck.run(ws, *args)
    assert p.returncode == code, (p.returncode, p.stderr.decode())
    assert b"Traceback" not in p.stderr
    return p.stdout.decode()


# -- a live apply, seen from another process -------------------------------------------------


def test_a_running_apply_is_running_not_interrupted(template: Path, tmp_path: Path) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    m = ck.plan(ws)
    proc, sync = start_paused(ws, "apply.after_rename@3", "apply", str(m))
    try:
        st = as_json(ws, "status")
        assert st["interrupted"] == [] and st["interrupted_trash_dirs"] == 0
        [r] = st["running"]
        txid = r["txid"]
        assert (r["op"], r["state"], r["intents"], r["in_trash"]) == ("apply", "active", 6, 3)
        assert st["holder"]["pid"] == proc.pid
        assert st["holder"]["command"] == f"retention apply {m}"
        assert st["last_holder"] is None
        out = text(ws, "status")
        line = f"Running: apply {txid} is running (pid {proc.pid}, `retention apply {m}`, started "
        assert line in out, out
        assert "3 of 6 directories moved to trash so far; nothing to recover." in out, out
        assert "Interrupted transactions" not in out and "No interrupted transaction" not in out
        assert "Trash is empty" not in out
        assert f"{txid}  3 directories of the running apply" in out, out

        # check: the live apply is named, its moving directories are not findings: exit 0.
        chk = as_json(ws, "check")
        assert chk["findings"] == [] and chk["counts"] == {}
        assert [x["txid"] for x in chk["running"]] == [txid]
        assert chk["holder"]["pid"] == proc.pid
        human = text(ws, "check")
        assert human.splitlines()[0].startswith(f"Running: apply {txid} is running (pid ")
        assert human.splitlines()[-1] == "8 runs checked, 0 findings."

        # recover: nothing to recover, and says who is running what (exit 6: locked).
        rec = ck.run(ws, "recover")
        assert rec.returncode == 6
        err = rec.stderr.decode()
        assert f"apply {txid} is running (pid {proc.pid}, `retention apply {m}`" in err, err
        assert err.splitlines()[0].endswith("; nothing to recover"), err
        assert rec.stdout == b""
    finally:
        done = resume(proc, sync)
    assert done.returncode == 0, done.stderr
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()) == ["home"] * 2 + ["trash"] * 6


def test_a_running_apply_after_its_commit_is_running_too(template: Path, tmp_path: Path) -> None:
    ws = fresh(template, tmp_path / "ws")
    proc, sync = start_paused(ws, "apply.after_commit", "apply", str(ck.plan(ws)))
    try:
        st = as_json(ws, "status")
        assert st["interrupted"] == [] and [r["state"] for r in st["running"]] == ["active"]
        assert [t["runs"] for t in st["trash"]] == [6]  # committed: the catalog has it
        chk = as_json(ws, "check")
        assert chk["findings"] == [] and len(chk["running"]) == 1
    finally:
        assert resume(proc, sync).returncode == 0


def test_a_running_undo_is_running_and_its_moves_are_not_findings(
    template: Path, tmp_path: Path
) -> None:
    ws = fresh(template, tmp_path / "ws")
    txid = json.loads(ck.run(ws, "apply", str(ck.plan(ws))).stdout)["txid"]
    proc, sync = start_paused(ws, "undo.after_rename@2", "undo", txid)
    try:
        chk = as_json(ws, "check")
        # Two directories are home without rows, two tombstones miss their trash: the undo's.
        assert chk["findings"] == [], chk["findings"]
        [r] = chk["running"]
        assert (r["op"], r["intents"], r["in_trash"]) == ("undo", 6, 4)
        out = text(ws, "status")
        assert f"is running (pid {proc.pid}, `retention undo {txid}`" in out, out
        assert "2 of 6 directories moved home so far; nothing to recover." in out, out
    finally:
        assert resume(proc, sync).returncode == 0
    assert as_json(ws, "check")["findings"] == []


# -- the same apply, killed ------------------------------------------------------------------


def test_a_killed_apply_is_interrupted_its_trash_counted_and_one_finding(
    template: Path, tmp_path: Path
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    m = ck.plan(ws)
    proc, _ = start_paused(ws, "apply.after_rename@3", "apply", str(m))
    kill(proc)
    assert (ws / ".retention/lock.owner").exists()  # stale: the process is gone

    st = as_json(ws, "status")
    assert st["running"] == [] and st["holder"] is None
    [i] = st["interrupted"]
    txid = i["txid"]
    assert (i["op"], i["state"], i["recover_would"]) == ("apply", "active", "roll back")
    assert (i["intents"], i["in_trash"], st["interrupted_trash_dirs"]) == (6, 3, 3)
    assert st["last_holder"]["pid"] == proc.pid
    out = text(ws, "status")
    assert "Trash is empty" not in out, out
    assert "Interrupted transactions (run `retention recover`):" in out
    assert (
        f"{txid} (apply, active): recover would roll back: 3 directories in its trash go"
        " back home; nothing is deleted"
    ) in out, out
    assert f"Stopped without finishing: pid {proc.pid}, `retention apply {m}`" in out, out
    assert f"{txid}  3 directories of the interrupted apply in .trash/{txid}" in out, out

    # check: one finding naming the transaction and `retention recover`: not 3 orphans,
    # 3 missing directories and TRASH.json.
    assert (ws / f"data/backtests/.trash/{txid}/TRASH.json").exists()
    chk = as_json(ws, "check", code=10)
    [f] = chk["findings"]
    assert f["kind"] == "interrupted" and txid in f["detail"], f
    assert "`retention recover`" in f["detail"] and "3 directories" in f["detail"], f
    assert chk["counts"] == {"interrupted": 1} and chk["running"] == []
    human = text(ws, "check", code=10)
    assert human.splitlines()[0] == "interrupted: 1 finding"
    assert human.splitlines()[-1] == "8 runs checked, 1 finding."

    assert ck.run(ws, "recover").returncode == 0
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_a_killed_apply_after_its_commit_would_roll_forward(template: Path, tmp_path: Path) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    proc, _ = start_paused(ws, "apply.after_commit", "apply", str(ck.plan(ws)))
    kill(proc)
    st = as_json(ws, "status")
    [i] = st["interrupted"]
    assert i["recover_would"] == "roll forward" and st["interrupted_trash_dirs"] == 0
    assert [t["runs"] for t in st["trash"]] == [6]
    [f] = as_json(ws, "check", code=10)["findings"]
    assert f["kind"] == "interrupted" and "recover would roll forward" in f["detail"]
    assert ck.run(ws, "recover").returncode == 0
    ck.check_invariants(ws, before)


def test_the_cause_comes_first_and_only_real_problems_follow_it(
    template: Path, tmp_path: Path
) -> None:
    """An interrupted apply and a kept run whose directory is really gone: the interrupted
    transaction first, then exactly that one run (not the three the apply moved)."""
    ws = fresh(template, tmp_path / "ws")
    assert ck.crashed(ck.run(ws, "apply", str(ck.plan(ws)), failpoint="apply.after_rename@3"))
    kept = sorted((ws / "data/backtests").glob("bt-*"))[-1]
    shutil.rmtree(kept)
    [txdir] = (ws / "data/backtests/.trash").iterdir()
    (txdir / "junk").mkdir()  # in the interrupted apply's trash, but not one of its moves
    chk = as_json(ws, "check", code=10)
    got = [(f["kind"], f["run_id"]) for f in chk["findings"]]
    assert got == [("interrupted", None), ("row_without_dir", kept.name), ("trash_orphan", None)]
    assert list(chk["counts"]) == ["interrupted", "row_without_dir", "trash_orphan"]


# -- check for people: grouped, counted, limited ----------------------------------------------


def test_check_groups_by_kind_with_counts_and_a_limit(workspace: Path) -> None:
    report = json.loads(invoke("apply", str(ck.plan(workspace, keep_last=30))).stdout)
    arts = workspace / "data/backtests"
    homes = sorted(d for d in arts.iterdir() if d.name.startswith("bt-"))
    for d in homes[:25]:
        shutil.rmtree(d)
    (arts / ".trash" / report["txid"] / "junk").mkdir()

    full = json.loads(invoke("check", "--json").stdout)
    assert len(full["findings"]) == 26  # --json: every finding
    assert full["counts"] == {"row_without_dir": 25, "trash_orphan": 1}

    result = invoke("check")
    assert result.exit_code == 10
    lines = result.stdout.splitlines()
    assert lines[0] == "row_without_dir: 25 findings (the run's artifact directory is missing)"
    assert lines[1] == f"  run {homes[0].name}"
    assert lines[21] == "  ... and 5 more (`retention check --limit 0` or --json lists every one)"
    assert lines[22] == "trash_orphan: 1 finding"
    assert lines[23] == f"  .trash/{report['txid']}/junk: no tombstone accounts for it"
    assert lines[-1] == "30 runs checked, 26 findings."
    assert "TRASH.json" not in result.stdout

    few = invoke("check", "--limit", "3").stdout.splitlines()
    assert few[4] == "  ... and 22 more (`retention check --limit 0` or --json lists every one)"
    every = invoke("check", "--limit", "0").stdout
    assert all(f"  run {d.name}" in every for d in homes[:25]) and "more (" not in every


def test_trash_json_of_an_undone_or_unknown_transaction_is_never_an_orphan(
    workspace: Path,
) -> None:
    arts = workspace / "data/backtests"
    stray = arts / ".trash/a-20990101T000000Z-abcdef"
    stray.mkdir(parents=True)
    (stray / "TRASH.json").write_text("{}")
    (stray / ".TRASH.json.tmp-123").write_text("")  # a write_atomic left over
    assert json.loads(invoke("check", "--json").stdout)["findings"] == []


# -- the lock probe ---------------------------------------------------------------------------


def test_probe_sees_a_held_lock_and_a_stale_owner_without_creating_anything(
    tmp_path: Path,
) -> None:
    state = StateLayout(tmp_path / ".retention")
    assert probe_lock(state) is False and live_holder(state) is None
    assert not state.root.exists()  # a probe creates nothing
    state.root.mkdir()
    owner = {"pid": 2**22 + 12345, "host": os.uname().nodename, "command": "retention apply m"}
    state.lock_owner.write_text(json.dumps({**owner, "since": "2026-11-01T00:00:00+00:00"}))
    # Nobody holds the lock: lock.owner is what a killed process left.
    assert live_holder(state) is None
    left = stale_owner(state)
    assert left is not None and left.pid == owner["pid"]
    with filelock.FileLock(str(state.lock), timeout=0):
        assert probe_lock(state) is True
        # Held, but lock.owner names a process that does not exist: not trusted.
        held = live_holder(state)
        assert held is not None and held.pid is None
        assert describe_holder(held) == "holder unknown"
        state.lock_owner.write_text(json.dumps({**owner, "pid": os.getpid(), "since": "x"}))
        held = live_holder(state)
        assert held is not None and held.pid == os.getpid()
        assert describe_holder(held) == f"pid {os.getpid()}, `retention apply m`, since x"
        assert stale_owner(state) is None
    assert probe_lock(state) is False


def test_a_probe_at_the_same_moment_does_not_make_an_apply_fail(
    template: Path, tmp_path: Path
) -> None:
    """`status` and `check` take the lock shared for an instant; an apply that meets it
    retries for a moment instead of failing with exit 6."""
    ws = fresh(template, tmp_path / "ws")
    assert ck.run(ws, "recover").returncode == 0  # creates .retention/lock
    fd = os.open(ws / ".retention/lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        proc = subprocess.Popen(
            [ck.EXE, "apply", str(ck.plan(ws))],
            cwd=ws,
            env=ck.BASE_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.1)
    finally:
        os.close(fd)  # releases the shared lock
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["deleted_runs"] == 6
