"""Crash sweeps past the batch sizes (issue 12, item 15).

Apply renames in batches of `MOVE_BATCH` (one directory fsync per touched directory per
batch) and journals its intents in records of `INTENT_BATCH` moves. The sweeps in
tests/test_crash.py stay inside one batch of each; these cross the boundaries:

* at the real sizes (10,000 renames per batch, 5,000 intents per record), with a workspace
  of 10,010 runs (one tiny file each) built ONCE and copied per chain of cases (directories
  made, files hard linked): an apply killed after its first batch's sync and one rename
  after it, recoveries killed inside and at the end of their own first batch, the second
  of three intents records torn before its fsync, an undo killed one rename into its
  second batch;
* at lowered sizes (``RETENTION_MOVE_BATCH=3``, ``RETENTION_INTENT_BATCH=2``, test-only,
  read by `retention.moves`), the same boundaries swept more densely with 12 runs.

Every case ends with `retention recover` (exit 0) and the invariants: every run is whole at
home with its rows, or whole in trash and tombstoned; nothing orphaned; nothing
interrupted; `check` finds nothing. Chains run two at a time (the work is in
subprocesses), so the file stays under a minute on two quiet cores.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from journal.reader import read_journal
from retention import moves, txrecords

from . import crashkit as ck
from .conftest import NOW

REAL_MOVE_BATCH, REAL_INTENT_BATCH = 10_000, 5_000
FLAT_KEEP = 5
FLAT_RUNS = REAL_MOVE_BATCH + FLAT_KEEP + 5  # 10,005 moves: two move batches, three intents records

SMALL_ENV = {"RETENTION_MOVE_BATCH": "3", "RETENTION_INTENT_BATCH": "2"}
SMALL_RUNS, SMALL_KEEP = 12, 2  # 10 moves: move batches 3+3+3+1, intents records 2*5

WORKERS = 2


def test_the_real_batch_sizes_are_the_documented_ones() -> None:
    """The sweeps below at "real size" mean these numbers (unless the test-only environment
    variables are set, which they must not be while running the suite)."""
    assert "RETENTION_MOVE_BATCH" not in os.environ
    assert "RETENTION_INTENT_BATCH" not in os.environ
    assert (moves.MOVE_BATCH, moves.INTENT_BATCH) == (REAL_MOVE_BATCH, REAL_INTENT_BATCH)


def test_bad_test_batch_sizes_are_refused_loudly(tmp_path: Path) -> None:
    """A typo must not silently turn a batch-boundary sweep into a one-batch sweep."""
    for var, bad in (("RETENTION_MOVE_BATCH", "0"), ("RETENTION_INTENT_BATCH", "ten")):
        p = subprocess.run(
            [ck.EXE, "recover"],
            cwd=tmp_path,
            env={**ck.BASE_ENV, var: bad},
            capture_output=True,
            timeout=60,
        )
        assert p.returncode == 1 and var.encode() in p.stderr, p.stderr


# -- running cases --------------------------------------------------------------------------


def run(
    ws: Path, *args: str, env: dict[str, str] | None = None, failpoint: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    full = {**ck.BASE_ENV, **(env or {})}
    if failpoint:
        full["FAILPOINT"] = failpoint
    return subprocess.run([ck.EXE, *args], cwd=ws, env=full, capture_output=True, timeout=120)


def plan(ws: Path, keep: int) -> str:
    """`crashkit.plan`, in process (a subprocess costs more than planning 12 runs)."""
    return str(ck.plan(ws, keep_last=keep))


@dataclass(frozen=True)
class Case:
    id: str
    crash: str  # where the first command (apply, or undo after a whole apply) is killed
    op: str = "apply"
    # after the crash: change the workspace (a torn journal tail, say) or look at it
    then: Callable[[Path], None] | None = None
    recover_crash: tuple[str, ...] = ()  # recoveries killed at these points, in turn
    in_trash: int = 0  # runs in trash once recovered (all-or-nothing per transaction)


@dataclass
class Kit:
    """A built template and how to check a workspace made from it."""

    template: Path
    keep: int
    env: dict[str, str]
    copy: Callable[[Path, Path], None]
    check: Callable[[Path], dict[str, str]]
    # Remove each case's workspace when it passed (10,000 directories take longer to
    # delete than to copy on a busy disk: those are left to pytest's tmp_path cleanup).
    cleanup: bool = True
    # Run `recover` once more and expect nothing to do (tests/test_crash.py does it for
    # small workspaces; here only at the real sizes, to keep the file fast).
    recover_again: bool = False


def play(kit: Kit, case: Case, ws: Path, manifest: str) -> None:
    if case.op == "undo":
        p = run(ws, "apply", manifest, env=kit.env)
        assert p.returncode == 0, p.stderr
        p = run(ws, "undo", json.loads(p.stdout)["txid"], env=kit.env, failpoint=case.crash)
    else:
        p = run(ws, "apply", manifest, env=kit.env, failpoint=case.crash)
    assert ck.crashed(p), (case.crash, p.returncode, p.stderr[-500:])
    if case.then is not None:
        case.then(ws)
    for point in case.recover_crash:
        r = run(ws, "recover", env=kit.env, failpoint=point)
        assert ck.crashed(r), (point, r.returncode, r.stderr[-500:])
    r = run(ws, "recover", env=kit.env)
    assert r.returncode == 0, r.stderr[-500:]
    states = kit.check(ws)
    in_trash = sum(v == "trash" for v in states.values())
    assert in_trash == case.in_trash, (in_trash, case.in_trash)
    if kit.recover_again:
        again = run(ws, "recover", env=kit.env)
        assert again.returncode == 0 and b"Nothing to recover" in again.stderr, again.stderr


def sweep(kit: Kit, chains: Iterable[list[Case]], tmp: Path) -> None:
    """Play every chain of cases, two chains at a time; report every failure, not only the
    first. The cases of a chain share one copy of the template and one manifest: a case
    that ends rolled back leaves the workspace as it was before the apply (the invariants
    just proved it), so the next one starts from the same state without a new copy and
    plan, which at 10,000 runs cost more than the case itself."""
    chains = list(chains)
    for chain in chains:
        assert all(c.in_trash == 0 for c in chain[:-1]), "only the last case may keep trash"

    def one(n_chain: tuple[int, list[Case]]) -> str | None:
        n, chain = n_chain
        ws = tmp / f"chain{n}"
        case = chain[0]
        try:
            kit.copy(kit.template, ws)
            manifest = plan(ws, kit.keep)
            for case in chain:
                play(kit, case, ws, manifest)
        except Exception as exc:  # collected: one broken chain must not hide the others
            return f"{case.id}: {type(exc).__name__}: {exc}"
        if kit.cleanup:
            shutil.rmtree(ws)
        return None

    with ThreadPoolExecutor(WORKERS) as pool:
        failures = [f for f in pool.map(one, enumerate(chains)) if f is not None]
    assert not failures, "\n".join(failures)


# -- the real sizes: 10,010 runs, one tiny file each ----------------------------------------------


def build_flat(root: Path, runs: int) -> Path:
    """The default layout (``runs`` + ``run_metrics``, artifacts at data/backtests/<id>), one
    metric row and one 6-byte file per run: cheap to build, copy and compare."""
    arts = root / "data" / "backtests"
    arts.mkdir(parents=True)
    db = sqlite3.connect(root / "data" / "catalog.db")
    db.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT, strategy TEXT, sharpe REAL);
        CREATE TABLE run_metrics (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id),
            name TEXT, value REAL, blob BLOB);
        CREATE INDEX run_metrics_run ON run_metrics(run_id);
        """
    )
    start = NOW - timedelta(days=400)
    ids = [f"r{i:05d}" for i in range(runs)]
    db.executemany(
        "INSERT INTO runs VALUES (?, ?, ?, ?)",
        [
            (rid, (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S"), "A", i / 7)
            for i, rid in enumerate(ids)
        ],
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value, blob) VALUES (?, 'pnl', ?, ?)",
        [(rid, i * 0.5, bytes([i % 256])) for i, rid in enumerate(ids)],
    )
    db.commit()
    db.close()
    for rid in ids:
        d = arts / rid
        d.mkdir()
        (d / "f").write_bytes(rid.encode())
    return root


def copy_flat(src: Path, dst: Path) -> None:
    """Directories copied, their one file hard linked (retention only renames directories
    and never writes into a run's files); catalog and state copied for real."""
    (dst / "data").mkdir(parents=True)
    subprocess.run(
        ["cp", "-al", str(src / "data" / "backtests"), str(dst / "data" / "backtests")],
        check=True,
    )
    shutil.copy2(src / "data" / "catalog.db", dst / "data" / "catalog.db")
    if (src / ".retention").exists():
        shutil.copytree(src / ".retention", dst / ".retention")


def flat_invariants(ws: Path, before: dict[str, dict]) -> dict[str, str]:
    """crashkit.check_invariants for a flat workspace, comparing each run's one file
    instead of hashing trees: each run is whole at home with its exact rows, or whole in
    trash with a tombstone and no rows; nothing in trash that the catalog does not know;
    `check` finds nothing (no interrupted transaction either)."""
    c = sqlite3.connect(ws / "data/catalog.db")
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    tomb: dict[str, tuple[str, bytes, str]] = {}
    if c.execute("SELECT 1 FROM sqlite_master WHERE name = '_retention_runs'").fetchone():
        for rid, txid, trash, state in c.execute(
            "SELECT r.run_id, r.txid, r.trash, r.state FROM _retention_runs r"
            " JOIN _retention_tx t ON t.txid = r.txid WHERE r.state != 'restored'"
        ):
            tomb[rid] = (txid, trash, state)
    c.close()
    rows = ck.dump(ws)
    arts = ws / "data/backtests"
    states: dict[str, str] = {}

    def whole(d: Path, rid: str) -> bool:
        return os.listdir(d) == ["f"] and (d / "f").read_bytes() == rid.encode()

    for rid, orig in before.items():
        home = arts / rid
        if rid in rows:
            assert rows[rid] == orig, f"{rid}: rows differ from the original"
            assert home.is_dir() and whole(home, rid), f"{rid}: rows present, dir not whole"
            assert rid not in tomb, f"{rid}: present but tombstoned"
            states[rid] = "home"
        else:
            assert rid in tomb, f"{rid}: rows gone without a tombstone (orphan)"
            assert not os.path.lexists(home), f"{rid}: rows gone but directory still at home"
            _, trash, state = tomb[rid]
            assert state == "trash", f"{rid}: state {state}"
            assert whole(arts / os.fsdecode(trash), rid), f"{rid}: not whole in trash"
            states[rid] = "trash"
    known = {os.fsdecode(t[1]) for t in tomb.values() if t[2] == "trash"}
    trash_root = arts / ".trash"
    if trash_root.exists():
        for txdir in trash_root.iterdir():
            for name in os.listdir(txdir):
                if name != "TRASH.json":
                    assert f".trash/{txdir.name}/{name}" in known, f"orphan in trash: {name}"
    # `check` also reports an unfinished transaction in the journal ("interrupted")
    chk = run(ws, "check", "--json")
    assert chk.returncode == 0 and json.loads(chk.stdout)["findings"] == [], chk.stdout[-500:]
    return states


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = build_flat(tmp_path_factory.mktemp("flat") / "ws", FLAT_RUNS)
    before = ck.dump(root)
    return Kit(
        template=root,
        keep=FLAT_KEEP,
        env={},
        copy=copy_flat,
        check=lambda ws: flat_invariants(ws, before),
        cleanup=False,
        recover_again=True,
    )


def _torn_second_intents(ws: Path) -> None:
    """Killed after writing the second intents record, before its fsync: the records are
    as written (5,000 moves each, the BEGIN announcing 10,005), and a power cut may keep
    only part of the unsynced one, so cut it in its middle. Nothing has moved yet."""
    j = ws / ".retention/journal.wal"
    res = read_journal(j)
    kinds = [r.kind for r in res.records]
    assert kinds == ["begin", txrecords.KIND_MOVES, txrecords.KIND_MOVES], kinds
    assert txrecords.decode_begin(res.records[0].payload).moves == FLAT_RUNS - FLAT_KEEP
    sizes = [len(txrecords.decode_moves(r.payload).moves) for r in res.records[1:]]
    assert sizes == [REAL_INTENT_BATCH, REAL_INTENT_BATCH], sizes
    assert not (ws / "data/backtests/.trash").exists() or not any(
        (ws / "data/backtests/.trash").iterdir()
    )
    last = res.offsets[-1]
    os.truncate(j, last + (res.file_length - last) // 2)


FLAT_ALL = FLAT_RUNS - FLAT_KEEP
FLAT_CHAINS = [
    [
        # The first batch of 10,000 renames made durable (the state "after_rename@10000"
        # leaves too, since a killed process loses nothing the kernel has); recovery moves
        # them back and is killed at the last rename of its own first batch, before its sync.
        Case(
            "apply.after_move_batch@1 + reconcile.after_rename@10000",
            "apply.after_move_batch@1",
            recover_crash=("reconcile.after_rename@10000",),
        ),
        # The second of three intents records written but not synced, then torn.
        Case(
            "journal.append.before_fsync@3 (2nd intents record) torn",
            "journal.append.before_fsync@3",
            then=_torn_second_intents,
        ),
    ],
    [
        # One rename into the second batch; recovery killed once its first batch is
        # durable, with one directory still to move.
        Case(
            "apply.after_rename@10001 + reconcile.after_sync@1",
            "apply.after_rename@10001",
            recover_crash=("reconcile.after_sync@1",),
        ),
        # An undo of 10,005 directories killed one rename into its second batch.
        Case("undo.after_rename@10001", "undo.after_rename@10001", op="undo", in_trash=FLAT_ALL),
    ],
]


@pytest.mark.slow
@pytest.mark.timeout(600)  # about 20 s on two quiet cores; generous for a busy machine
def test_crashes_around_the_real_batch_boundaries_then_recover_keeps_invariants(
    flat: Kit, tmp_path: Path
) -> None:
    sweep(flat, FLAT_CHAINS, tmp_path)


# -- lowered sizes: the same boundaries, densely, with 12 runs -----------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = ck.build(tmp_path_factory.mktemp("small") / "ws", runs=SMALL_RUNS)
    before = ck.snapshot(root)
    return Kit(
        template=root,
        keep=SMALL_KEEP,
        env=SMALL_ENV,
        copy=copy_tree,
        check=lambda ws: ck.check_invariants(ws, before),
    )


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


def _five_intents_records(ws: Path) -> None:
    """Guards the lowered sizes: the environment really reached `retention.moves`."""
    res = read_journal(ws / ".retention/journal.wal")
    sizes = [
        len(txrecords.decode_moves(r.payload).moves)
        for r in res.records
        if r.kind == txrecords.KIND_MOVES
    ]
    assert sizes == [2, 2, 2, 2, 2], sizes


SMALL_ALL = SMALL_RUNS - SMALL_KEEP
SMALL_CASES = [
    Case("after_begin (5 intents records)", "apply.after_begin", then=_five_intents_records),
    # the second and the last of the five intents records written, not yet synced
    *(Case(f"before_fsync@{n}", f"journal.append.before_fsync@{n}") for n in (3, 6)),
    # renames at the batch edges (batches of 3: 1-3, 4-6, 7-9, 10) and the batch syncs
    *(Case(f"after_rename@{n}", f"apply.after_rename@{n}") for n in (3, 4, 10)),
    *(Case(f"after_move_batch@{n}", f"apply.after_move_batch@{n}") for n in (1, 4)),
    # recovery of 7 moved directories killed at its own batch edge, then recovered
    *(
        Case(f"after_rename@7 + {p}", "apply.after_rename@7", recover_crash=(p,))
        for p in ("reconcile.after_rename@3", "reconcile.after_sync@1")
    ),
    # recovery killed twice in a row, the second time one batch further on
    Case(
        "after_move_batch@3 + recover killed twice",
        "apply.after_move_batch@3",
        recover_crash=("reconcile.after_rename@4", "reconcile.after_sync@1"),
    ),
    # undo of 10 directories killed at its batch edges
    *(
        Case(f"undo {p}", p, op="undo", in_trash=SMALL_ALL)
        for p in ("undo.after_rename@4", "undo.after_move_batch@2")
    ),
]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_crashes_around_lowered_batch_boundaries_then_recover_keeps_invariants(
    small: Kit, tmp_path: Path
) -> None:
    sweep(small, [[c] for c in SMALL_CASES], tmp_path)
