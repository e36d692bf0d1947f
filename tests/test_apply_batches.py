"""Batched applies (issue 9 item 2): `apply --batch-size N` commits at most N runs per
transaction, each journaled with its own tombstones and trash; a crash leaves the finished
batches done and the current one recovered; applying the manifest again continues; undo of
the first txid restores every batch. Real subprocesses, a real SQLite catalog."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest

from .crashkit import build, check_invariants, crashed, plan, run, snapshot


def batches_in_catalog(root: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(root / "data/catalog.db") as c:
        return list(
            c.execute(
                "SELECT txid, target, runs FROM _retention_tx WHERE op = 'apply' ORDER BY rowid"
            )
        )


def entries(manifest: Path) -> set[str]:
    return {e["run_id"] for e in json.loads(manifest.read_bytes())["payload"]["entries"]}


def test_each_batch_is_its_own_transaction_and_undo_of_the_first_restores_them_all(
    tmp_path: Path,
) -> None:
    root = build(tmp_path, runs=12)
    manifest = plan(root, keep_last=2)  # 10 candidates
    before = snapshot(root)
    out = run(root, "apply", manifest.name, "--batch-size", "3")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [b["runs"] for b in report["batches"]] == [3, 3, 3, 1]
    assert report["deleted_runs"] == 10 and set(report["deleted_run_ids"]) == entries(manifest)
    rows = batches_in_catalog(root)
    first = report["txid"]
    assert [t for _, t, _ in rows] == [f"batch {k}/4 of {first}" for k in range(1, 5)]
    assert [txid for txid, _, _ in rows] == [b["txid"] for b in report["batches"]]
    states = check_invariants(root, before)
    assert sorted(r for r, s in states.items() if s == "trash") == sorted(entries(manifest))
    undone = run(root, "undo", first)
    assert undone.returncode == 0, undone.stderr
    assert len(json.loads(undone.stdout)["undone"]) == 4
    assert set(check_invariants(root, before).values()) == {"home"}


@pytest.mark.parametrize("point", ["apply.before_commit@3", "apply.after_commit@3"])
def test_a_crash_in_a_later_batch_keeps_the_earlier_ones_and_apply_again_continues(
    tmp_path: Path, point: str
) -> None:
    root = build(tmp_path, runs=12)
    manifest = plan(root, keep_last=2)
    before = snapshot(root)
    killed = run(root, "apply", manifest.name, "--batch-size", "3", failpoint=point)
    assert crashed(killed), killed.stderr
    assert run(root, "recover").returncode == 0
    states = check_invariants(root, before)
    committed = 9 if point.startswith("apply.after_commit") else 6  # batch 3 forward or back
    assert sum(s == "trash" for s in states.values()) == committed
    again = run(root, "apply", manifest.name, "--batch-size", "3")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["deleted_runs"] == 10 - committed  # only what was left
    rows = batches_in_catalog(root)
    base = rows[0][0]
    assert all(t.endswith(f" of {base}") for _, t, _ in rows)  # one apply, continued
    states = check_invariants(root, before)
    assert sorted(r for r, s in states.items() if s == "trash") == sorted(entries(manifest))
    assert json.loads(run(root, "apply", manifest.name).stdout)["already_applied_by"]
    undone = run(root, "undo", base)
    assert undone.returncode == 0, undone.stderr
    assert set(check_invariants(root, before).values()) == {"home"}


def test_a_batch_size_of_zero_is_refused(tmp_path: Path) -> None:
    root = build(tmp_path, runs=4)
    manifest = plan(root, keep_last=2)
    out = run(root, "apply", manifest.name, "--batch-size", "0")
    assert out.returncode == 2
    (root / "retention.toml").write_text("[apply]\nbatch_size = 0\n")
    out = run(root, "apply", manifest.name)
    assert out.returncode == 2
    assert b"apply.batch_size" in out.stderr and b"at least 1" in out.stderr


def test_a_signal_in_a_later_batch_rolls_that_batch_back_and_keeps_the_earlier_ones(
    tmp_path: Path,
) -> None:
    from .test_interrupts import signal_and_finish, start_paused

    root = build(tmp_path / "ws", runs=12)
    manifest = plan(root, keep_last=2)
    before = snapshot(root)
    # the 7th rename is the first of batch 3 (batches of 3)
    proc, sync = start_paused(
        root, "apply.after_rename@7", "apply", manifest.name, "--batch-size", "3"
    )
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = p.stderr.decode()
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert "Interrupted (SIGINT) in batch 3 of 4: " in err
    assert "The batches before it stay applied (6 runs deleted); apply the same manifest" in err
    report = json.loads(p.stdout)  # the batches that were applied are reported
    assert report["deleted_runs"] == 6 and report["interrupted"]["exit_code"] == 130
    states = check_invariants(root, before)
    assert sum(s == "trash" for s in states.values()) == 6
    again = run(root, "apply", manifest.name, "--batch-size", "3")
    assert again.returncode == 0 and json.loads(again.stdout)["deleted_runs"] == 4
