"""Moving directories under a decision: the one rename loop, the intents that precede it,
and reconcile (which brings every directory to the side the catalog decided).

Used by apply and recovery (`retention.coordinator`) and by undo (`retention.trashops`).

Test-only: ``RETENTION_MOVE_BATCH`` and ``RETENTION_INTENT_BATCH`` in the environment lower
`MOVE_BATCH` and `INTENT_BATCH` (see `_batch_size`), so crash tests cross batch boundaries
cheaply. Never set them in production.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass

from journal import Journal, TxState
from retention import txrecords
from retention.errors import RecoveryError
from retention.failpoints import failpoint
from retention.participants import ArtifactStore
from retention.policy.ids import RunId
from retention.reporting import Progress
from retention.store import OutsideRoot, display
from retention.txrecords import Begin, Move, Moves


def _batch_size(env: str, default: int) -> int:
    """``default``, or the value of the environment variable ``env``: a TEST-ONLY knob, so
    that crash sweeps can cross batch boundaries with a few dozen runs instead of 10,000
    (tests/test_crash_batches.py, which keeps one sweep at the real sizes too). Never set
    it in production: nothing but test speed depends on it. Anything but a positive
    integer raises `ValueError` at import, so that a typo never silently turns a
    batch-boundary test into a one-batch test."""
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{env}={raw!r}: expected a positive integer (test-only setting)")
    return n


# Renames per batch of directory fsyncs. Only the sync before the catalog commit is needed
# for correctness (recovery finds a directory on either side); intermediate syncs bound how
# much metadata a power loss can leave unwritten, at ~2 ms each.
MOVE_BATCH = _batch_size("RETENTION_MOVE_BATCH", 10_000)
INTENT_BATCH = _batch_size("RETENTION_INTENT_BATCH", 5000)  # moves per journal intent record


@dataclass
class Problem:
    move: Move
    text: str


def reconcile(
    store: ArtifactStore,
    moves: Iterable[Move],
    want_trash: Callable[[str | int], bool],
) -> tuple[int, list[Problem]]:
    """Bring each move's directory to the side the decision wants; returns (moves done,
    problems). Idempotent: looks before it moves; never replaces anything; the moves go
    through `move_all` (one directory fsync per touched directory per batch)."""
    problems: list[Problem] = []
    todo: list[tuple[RunId, bytes, bytes]] = []
    by_run: dict[RunId, Move] = {}
    for m in moves:
        at_home, in_trash = store.lexists(m.home), store.lexists(m.trash)
        if want_trash(m.run_id):
            if in_trash:
                continue
            if not at_home:
                problems.append(Problem(m, "directory is neither at home nor in trash"))
                continue
            todo.append((m.run_id, m.home, m.trash))
        else:
            if not in_trash:
                if not at_home:
                    problems.append(Problem(m, "directory is neither at home nor in trash"))
                continue
            if at_home:
                problems.append(Problem(m, "directory is in trash and its home is taken"))
                continue
            try:
                store.check_contained(m.home)
            except OutsideRoot as exc:
                problems.append(Problem(m, f"its home is no longer inside the root: {exc}"))
                continue
            todo.append((m.run_id, m.trash, m.home))
        by_run[m.run_id] = m
    failed = move_all(
        store,
        todo,
        label="placing directories",
        after_rename=lambda: failpoint("reconcile.after_rename"),
        after_batch=lambda: failpoint("reconcile.after_sync"),
    )
    for rid, err in failed.items():
        problems.append(Problem(by_run[rid], f"cannot move it: {err.strerror or err}"))
    return len(todo) - len(failed), problems


def begin_with_intents(journal: Journal, txid: str, begin: Begin, moves: list[Move]) -> None:
    """Journal BEGIN and every intended move, durable before anything moves (two fsyncs:
    BEGIN's own, then one for all the intent records)."""
    journal.begin(txid, txrecords.encode(begin))
    for i in range(0, len(moves), INTENT_BATCH):
        chunk = Moves(txrecords.RECORD_VERSION, moves[i : i + INTENT_BATCH])
        journal.append(txid, txrecords.KIND_MOVES, txrecords.encode(chunk), sync=False)
    journal.sync()


def move_all(
    store: ArtifactStore,
    pairs: Iterable[tuple[RunId, bytes, bytes]],
    *,
    label: str,
    after_rename: Callable[[], None],
    after_batch: Callable[[], None],
    total: int | None = None,
) -> dict[RunId, OSError]:
    """Rename each ``(run, src, dst)``; returns the runs that could not move, with why.

    ``pairs`` may be a generator that decides, pair by pair, what moves (apply checks each
    directory for drift just before its rename); ``total``, if given, is for the progress
    line. One directory fsync per touched directory per batch of `MOVE_BATCH`, and after
    the last; ``after_batch`` runs after each of those syncs. Never replaces a destination.
    An exception from ``after_rename`` (or from ``pairs``) stops the loop (the renames made
    so far are in the journaled intents, and the caller's roll-back or recovery places
    them).
    """
    failed: dict[RunId, OSError] = {}
    if total is None and isinstance(pairs, Sized):
        total = len(pairs)
    bar = Progress(label, total)
    pending = 0
    try:
        for run_id, src, dst in pairs:
            bar.advance()
            try:
                store.move(src, dst)
            except OSError as exc:
                failed[run_id] = exc
                continue
            after_rename()  # may raise (a failpoint, or `Interrupted` at this safe point)
            pending += 1
            if pending >= MOVE_BATCH:
                store.sync()
                after_batch()
                pending = 0
        store.sync()
        after_batch()
    finally:
        bar.close()
    return failed


def moves_of(tx: TxState) -> list[Move]:
    """Every distinct intended move of ``tx``, in journal order. A move journaled twice (an
    intents record replayed or duplicated) counts once: recovery is idempotent per intent."""
    out: dict[Move, None] = {}
    for rec in tx.records:
        if rec.kind == txrecords.KIND_MOVES:
            out.update(dict.fromkeys(txrecords.decode_moves(rec.payload).moves))
    return list(out)


def intended_moves(tx: TxState, announced: int, acted: Callable[[], str | None]) -> list[Move]:
    """The intents of an unfinished ``tx`` whose BEGIN announced ``announced`` moves, after
    proving that none was lost.

    Fewer readable intents than announced means the journal's tail lost them. That is a
    torn write, safe to drop, only if their fsync never returned, and then nothing acted on
    them: ``acted()`` looks at the disk for the opposite (returns what it found, or None).
    If something did act on them, the journal is damaged, not torn: `RecoveryError`
    (exit 7) before any decision is journaled or anything moves; never a guess.
    """
    moves = moves_of(tx)
    if len(moves) < announced:
        evidence = acted()
        if evidence is not None:
            raise RecoveryError(
                f"the journal of {tx.txid} is damaged: its BEGIN announced {announced} intended"
                f" moves but only {len(moves)} intents can be read, and {evidence}; recovery"
                " stopped, nothing was changed",
                hint="keep a copy of the journal; the transaction's TRASH.json lists every"
                " original path, so its directories can be put back by hand before running"
                " `retention recover` again",
            )
    return moves


def problems_error(txid: str, problems: list[Problem]) -> RecoveryError:
    first = problems[0]
    where = (
        f"home {display(first.move.home)!s}, trash {display(first.move.trash)!s}"
        " (relative to the artifact root)"
    )
    n = len(problems)
    return RecoveryError(
        f"recovery of {txid} stopped: {n} director{'y' if n == 1 else 'ies'} could not be"
        f" placed; first: run {first.move.run_id}: {first.text}; {where}",
        hint="put the directory back at one of those places (or remove what took its home),"
        " then run `retention recover`; nothing was guessed",
    )
