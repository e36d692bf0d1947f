"""An fsync that fails with EIO is fatal, never retried as success (issue 12, item 15).

After a failed fsync Linux may drop the dirty pages and clear the error, so a second fsync
"succeeds" while the data is gone. The fault hook in `journal.fsio` (``FAULT_FSYNC_EIO``)
fails exactly one fsync and lets every later one succeed, which is the trap: a process that
retried would carry on as if nothing had happened.

Each case runs the real executable, finds the barrier it wants in a log of every fsync and
failpoint of an unfaulted run (``FAULT_FSYNC_LOG`` and ``FAILPOINT_LOG`` in one file), then
fails that barrier in a fresh copy and asserts: exit 7 with one ``Error:`` line and no
traceback; the failed target is never fsynced again by that process; the journal does not
mark the transaction DONE; and a later ``retention recover`` (without the fault) restores
the invariants of tests/crashkit.py. The SQLite catalog's own fsyncs are SQLite's, not ours,
and are not injected.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from journal import Journal, JournalError, TxStatus, fsio, replay
from journal.errors import FsyncError
from retention import txrecords

from . import crashkit as ck

RUNS, KEEP = 8, 4  # 4 runs deleted
# Small batches so that one apply crosses a move batch and writes two intents records.
BATCH_ENV = {"RETENTION_MOVE_BATCH": "2", "RETENTION_INTENT_BATCH": "3"}


# -- the hook itself, in process -------------------------------------------------------------


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    def arm(spec: str) -> Path:
        log = tmp_path / "fsync.log"
        monkeypatch.setenv(fsio.FAULT_FSYNC_ENV, spec)
        monkeypatch.setenv(fsio.FAULT_FSYNC_LOG_ENV, str(log))
        fsio.reset_fault_hits()
        return log

    yield arm
    fsio.reset_fault_hits()


def test_the_hook_is_inert_unless_armed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(fsio.FAULT_FSYNC_ENV, raising=False)
    monkeypatch.delenv(fsio.FAULT_FSYNC_LOG_ENV, raising=False)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with open(f, "rb+") as fh:
        for _ in range(3):
            fsio.fsync_file(fh)
    fsio.fsync_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_the_nth_matching_fsync_fails_with_eio_once_and_later_ones_succeed(
    armed: Callable[[str], Path], tmp_path: Path
) -> None:
    f = tmp_path / "journal.wal"
    f.write_bytes(b"x")
    log = armed("journal.wal@2")
    fd = os.open(f, os.O_RDWR)
    try:
        fsio.fsync_dir(tmp_path)  # another target: not counted
        fsio.fsync_file(fd)  # 1st journal.wal
        with pytest.raises(FsyncError) as ei:
            fsio.fsync_file(fd)  # 2nd: the injected EIO
        assert ei.value.errno == errno.EIO
        assert isinstance(ei.value.oserror, OSError) and ei.value.oserror.errno == errno.EIO
        fsio.fsync_file(fd)  # the error is reported once, as by the kernel: a retry passes
    finally:
        os.close(fd)
    lines = log.read_text().splitlines()
    assert lines == [
        f"fsync_dir ok {tmp_path}",
        f"fsync_file ok {f}",
        f"fsync_file EIO {f}",
        f"fsync_file ok {f}",
    ]


def test_star_counts_every_fsync_and_a_bare_name_means_the_first(
    armed: Callable[[str], Path], tmp_path: Path
) -> None:
    armed("*@3")
    fsio.fsync_dir(tmp_path)
    fsio.fsync_dir(tmp_path)
    with pytest.raises(FsyncError):
        fsio.fsync_dir(tmp_path)
    armed(tmp_path.name)
    with pytest.raises(FsyncError):
        fsio.fsync_dir(tmp_path)
    fsio.fsync_dir(tmp_path)


def test_an_injected_eio_makes_the_journal_unusable_and_write_atomic_leaves_no_temp(
    armed: Callable[[str], Path], tmp_path: Path
) -> None:
    jpath = tmp_path / "journal.wal"
    with Journal.open(jpath) as j:
        armed("journal.wal@1")
        with pytest.raises(FsyncError):
            j.begin("t1")
        for again in (j.sync, lambda: j.begin("t2")):  # sticky: never a second try
            with pytest.raises(JournalError, match="unusable"):
                again()
    assert replay(jpath)["t1"].status is TxStatus.ACTIVE
    target = tmp_path / "state.json"
    armed(f".state.json.tmp-{os.getpid()}")
    with pytest.raises(FsyncError):
        fsio.write_atomic(target, b"new")
    assert not target.exists() and not list(tmp_path.glob(".state.json.tmp-*"))


@pytest.mark.parametrize("spec", ["x@0", "x@y", "@2"])
def test_a_malformed_spec_is_a_loud_error(
    armed: Callable[[str], Path], tmp_path: Path, spec: str
) -> None:
    armed(spec)
    with pytest.raises(ValueError, match="FAULT_FSYNC_EIO"):
        fsio.fsync_dir(tmp_path)


# -- the real executable ------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One line of the combined log: a failpoint hit (``name@n``) or an fsync."""

    point: str | None  # "apply.after_rename@2", or None for an fsync
    kind: str = ""  # fsync_file | fsync_dir
    result: str = ""  # ok | EIO
    target: str = ""


def events(log: Path) -> list[Event]:
    seen: Counter[str] = Counter()
    out = []
    for line in log.read_text().splitlines():
        if " " in line:
            kind, result, target = line.split(" ", 2)
            out.append(Event(None, kind, result, target))
        else:
            seen[line] += 1
            out.append(Event(f"{line}@{seen[line]}"))
    return out


def fsync_ordinal(evs: list[Event], after: str, pick: Callable[[Event], bool]) -> int:
    """1-based ordinal, among every fsync of the run, of the first fsync after failpoint hit
    ``after`` that ``pick`` accepts."""
    n, armed = 0, False
    for e in evs:
        if e.point is not None:
            armed = armed or e.point == after
            continue
        n += 1
        if armed and pick(e):
            return n
    raise AssertionError(f"no fsync after {after} matches")


def is_journal(e: Event) -> bool:
    return e.kind == "fsync_file" and e.target.endswith("/.retention/journal.wal")


def is_dir(e: Event) -> bool:
    return e.kind == "fsync_dir"


def is_trash_index(e: Event) -> bool:
    return e.kind == "fsync_file" and ".TRASH.json.tmp-" in e.target


def run(ws: Path, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    full = {**ck.BASE_ENV, **BATCH_ENV, **env}
    return subprocess.run([ck.EXE, *args], cwd=ws, env=full, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = ck.build(tmp_path_factory.mktemp("fsync-template") / "ws", runs=RUNS)
    return root, ck.snapshot(root)


# A scenario brings a fresh copy to the command that will be faulted; returns its arguments.
def _apply_args(ws: Path) -> list[str]:
    return ["apply", str(ck.plan(ws, keep_last=KEEP))]


def _crashed_apply_then_recover(ws: Path) -> list[str]:
    assert ck.crashed(run(ws, *_apply_args(ws), FAILPOINT="apply.after_rename@3"))
    return ["recover"]


def _applied_then_undo(ws: Path) -> list[str]:
    p = run(ws, *_apply_args(ws))
    assert p.returncode == 0, p.stderr
    return ["undo", json.loads(p.stdout)["txid"]]


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Callable[[Path], list[str]]
    after: str  # the failpoint hit after which the barrier comes
    pick: Callable[[Event], bool]
    op: str  # the operation whose transaction must stay unfinished
    deleted_after_recover: int  # runs in trash once `retention recover` has run


CASES = [
    Case("apply-begin", _apply_args, "journal.append.before_fsync@1", is_journal, "apply", 0),
    # two intents records (3 + 1 moves) written unsynced, then one fsync for both
    Case("apply-intents", _apply_args, "journal.append.before_fsync@3", is_journal, "apply", 0),
    Case("apply-trash-index", _apply_args, "apply.after_begin@1", is_trash_index, "apply", 0),
    # the directory fsyncs of the first move batch (2 renames), then of the last one
    Case("apply-move-batch", _apply_args, "apply.after_rename@2", is_dir, "apply", 0),
    Case("apply-last-batch", _apply_args, "apply.after_rename@4", is_dir, "apply", 0),
    # the catalog has committed: the journal's COMMITTED record fails to sync
    Case("apply-committed", _apply_args, "apply.after_commit@1", is_journal, "apply", KEEP),
    # recover of an apply killed after 3 renames: opening the journal, then its move batch
    Case("recover-open", _crashed_apply_then_recover, "", is_journal, "apply", 0),
    Case(
        "recover-reconcile",
        _crashed_apply_then_recover,
        "reconcile.after_rename@2",
        is_dir,
        "apply",
        0,
    ),
    Case("undo-move-batch", _applied_then_undo, "undo.after_rename@2", is_dir, "undo", KEEP),
]


def _fresh(template: tuple[Path, dict], dst: Path) -> Path:
    shutil.copytree(template[0], dst, symlinks=True)
    return dst


def _unfinished_op(ws: Path, op: str) -> list[TxStatus]:
    """Statuses of the journal's transactions of kind ``op`` (nothing compacted them away)."""
    txs = replay(ws / ".retention/journal.wal")
    return [t.status for t in txs.values() if txrecords.decode_begin(t.begin).op == op]


@pytest.fixture(scope="module")
def probes() -> dict[Callable[[Path], list[str]], list[Event]]:
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_an_eio_from_fsync_is_fatal_never_retried_and_recover_restores_the_invariants(
    template: tuple[Path, dict],
    probes: dict[Callable[[Path], list[str]], list[Event]],
    tmp_path: Path,
    case: Case,
) -> None:
    _, before = template
    # 1. Where is the barrier? An unfaulted run, logged (once per scenario).
    evs = probes.get(case.prepare)
    if evs is None:
        probe = _fresh(template, tmp_path / "probe")
        args = case.prepare(probe)
        log = tmp_path / "probe.log"
        p = run(probe, *args, FAILPOINT_LOG=str(log), FAULT_FSYNC_LOG=str(log))
        assert p.returncode == 0, p.stderr
        evs = probes[case.prepare] = events(log)
        shutil.rmtree(probe)
    if case.after:
        nth = fsync_ordinal(evs, case.after, case.pick)
    else:
        nth = next(i for i, e in enumerate((e for e in evs if e.point is None), 1) if case.pick(e))
    # 2. Fail exactly that fsync, in a fresh copy brought to the same point.
    ws = _fresh(template, tmp_path / "ws")
    args = case.prepare(ws)
    flog = tmp_path / "fault.log"
    f = run(
        ws, *args, FAULT_FSYNC_EIO=f"*@{nth}", FAILPOINT_LOG=str(flog), FAULT_FSYNC_LOG=str(flog)
    )
    err = f.stderr.decode()
    assert f.returncode == 7, (case.id, f.returncode, err)
    assert "Traceback" not in err, err
    errors = [x for x in err.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "fsync" in errors[0], err
    fevs = events(flog)
    fsyncs = [e for e in fevs if e.point is None]
    failed = [i for i, e in enumerate(fsyncs) if e.result == "EIO"]
    assert len(failed) == 1 and failed[0] == nth - 1, fsyncs
    bad = fsyncs[failed[0]]
    assert case.pick(bad), bad
    # never retried: that target is not fsynced again by this process (in fact nothing is)
    assert all(e.target != bad.target for e in fsyncs[failed[0] + 1 :]), fsyncs
    assert fsyncs[failed[0] + 1 :] == [], fsyncs
    # never marked DONE by this process (and so never compacted away)
    statuses = _unfinished_op(ws, case.op)
    assert statuses and statuses[-1] is not TxStatus.DONE, statuses
    later = [e.point for e in fevs[fevs.index(bad) :] if e.point is not None]
    assert not [x for x in later if ".before_done" in x or "after_fsync" in x], later
    # 3. A later recover, with the storage healthy again, restores the invariants.
    r = run(ws, "recover")
    assert r.returncode == 0, (case.id, r.stderr)
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()).count("trash") == case.deleted_after_recover, states
