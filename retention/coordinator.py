"""The coordinator: apply and recover as a small state machine over the journal.

Apply, in order: journal BEGIN + every intended move (durable) -> renames into trash, each
directory checked for drift against the plan right before its rename (measured by workers
running ahead; a changed one is skipped, its intent never acted on), with directory fsyncs
per batch -> ONE catalog transaction (tombstones, deletes, txid row: the
commit point) -> runs the catalog refused at commit go home -> journal COMMITTED -> DONE.
Purging expired trash comes after DONE, as a transaction of its own (`retention.trashops`).

Recovery of an apply: presumed abort, the decision stored in the last participant (the
catalog). The decision is journaled first, then directories are placed, then DONE.

=========================  ==================================================================
state found at start       recovery action
=========================  ==================================================================
no BEGIN                   nothing happened: nothing to do
ACTIVE, catalog has no     roll back: journal ABORTED; every intended move ends at home
txid row                   (no-replace rename back from trash); TRASH.json and the empty
                           ``.trash/<txid>`` removed; DONE
ACTIVE, catalog has the    roll forward: journal COMMITTED; runs tombstoned in trash end in
txid row                   trash, runs the commit left out end at home, runs an undo already
                           restored or a purge removed are left alone; DONE
COMMITTED (not DONE)       roll forward as above (idempotent), DONE
ABORTED (not DONE)         roll back as above, DONE
a directory in neither     stop with `RecoveryError` naming it; the journal stays unfinished
place, or in both when     so a later `recover` retries after the operator fixes it. Never a
it must go home            guess.
=========================  ==================================================================

Every step is idempotent: recovery checks where each directory is before moving it, so it
may itself be killed at any point and run again.

SIGINT and SIGTERM (`retention.workspace.SIGNALS`) stop an apply at its next safe point:
while preflight checks the entries (nothing changed), before each directory is measured
again or renamed, before the catalog
transaction and just before its COMMIT, the apply is rolled back in this process, as the
table's roll-back row says (`Interrupted`: "rolled back N directories, nothing was
deleted", exit 130 / 143). From the commit on nothing stops: the apply is finished, the
purge of expired trash that would follow it is skipped, and the report says so
(``interrupted``) with the same exit code. Recovery itself always runs to its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from journal import FsyncError, Journal, JournalError, TxState, TxStatus, fsio
from retention import txrecords
from retention.config import Config
from retention.durations import format_instant, parse_instant
from retention.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    Interrupted,
    LockedError,
    ManifestRejected,
    RecoveryError,
    RetentionError,
    from_environment,
)
from retention.failpoints import failpoint
from retention.layout import trash_slot_rel, trash_tx_rel
from retention.manifest import Entry, Payload, read_manifest_bytes, verify_for_workspace
from retention.measuring import ForkedMeasurer, OnDevice, default_workers
from retention.moves import (
    begin_with_intents,
    intended_moves,
    move_all,
    problems_error,
    reconcile,
)
from retention.participants import ArtifactStore
from retention.policy import RunId
from retention.reports import Interruption, SkippedEntry
from retention.store import OutsideRoot, ancestors, text_and_raw
from retention.tombstones import CommitRefused, NothingDeleted, TombRun, TxInfo, Writeback
from retention.txrecords import Begin, Move
from retention.workspace import SIGNALS, Workspace, open_workspace

if TYPE_CHECKING:
    from retention.catalogs.beside import Beside, NotBeside

REPORT_VERSION = 1


APPLY_TXID = re.compile(r"a-\d{8}T\d{6}Z-[0-9a-f]{6}")  # what new_txid("apply", ...) makes


def new_txid(op: str, now: datetime) -> str:
    """Sortable, unique: ``a-20261128T072650Z-3f9c1a`` (a=apply, u=undo, p=purge)."""
    return f"{op[0]}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


# -- reports -------------------------------------------------------------------------------


class Recovered(msgspec.Struct):
    txid: str
    op: str
    action: str  # "rolled forward" | "rolled back"
    moved: int


class ApplyReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    txid: str | None
    manifest_id: str
    deleted_runs: int
    deleted_run_ids: list[str | int]
    bytes_moved: int
    skipped: list[SkippedEntry]
    already_applied_by: list[str] = []
    recovered: list[Recovered] = []
    purged: list[str] = []
    warnings: list[str] = []
    undo_until: str | None = None  # end of the grace period: undo works at least until then
    duration_ms: int
    # An erasure request (plan --erase): purged at once, no grace period, no undo.
    erasure: bool = False
    # A batched apply (apply --batch-size): one transaction per batch; ``txid`` is the first.
    batches: list[BatchReport] = []
    # Runs and bytes deleted per group (the policy's first group_by column), all batches.
    groups: list[GroupDeleted] = []
    # A SIGINT/SIGTERM after the commit: the apply was finished, then the command stopped.
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        return EXIT_PARTIAL if self.skipped and not self.already_applied_by else EXIT_OK


class RecoverReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    recovered: list[Recovered]
    duration_ms: int
    interrupted: Interruption | None = None  # a signal came; recovery was finished first

    @property
    def exit_code(self) -> int:
        return self.interrupted.exit_code if self.interrupted is not None else EXIT_OK


def interruption(message: str) -> Interruption:
    """The report's record of the signal `SIGNALS` received (the command exits 128 + it)."""
    assert SIGNALS.signum is not None
    return Interruption(
        signal=SIGNALS.name, exit_code=Interrupted(SIGNALS.signum, "").exit_code, message=message
    )


def _n_dirs(n: int) -> str:
    return f"{n:,} director{'y' if n == 1 else 'ies'}"


# -- recover -----------------------------------------------------------------------------


def compact(journal: Journal) -> None:
    """Shrink the journal once every transaction is DONE. Best effort: it needs free space
    for a new file, and a full disk must not turn a finished command into a failure."""
    with contextlib.suppress(OSError, JournalError):
        journal.reset_if_idle()


def recover_all(ws: Workspace, now: datetime, *, strict: bool = False) -> list[Recovered]:
    """Finish or roll back every unfinished transaction, oldest first (see module table).

    A purge that cannot finish (trash it may not remove) only ever goes forward and blocks
    nothing else: unless ``strict`` (the `recover` command), it is reported as stalled and
    the command goes on. Anything else that cannot recover raises.
    """
    _refuse_unknown_trash(ws)
    out = []
    stalled: RetentionError | OSError | None = None
    for tx in ws.journal.unfinished():
        op = txrecords.decode_begin(tx.begin).op
        SIGNALS.phase = "recovering"  # a signal now waits for the recovery to finish
        try:
            out.append(recover_tx(ws, tx, now))
        except (RetentionError, OSError) as exc:
            if op != "purge":
                raise
            # A purge only goes forward and blocks nothing else: recover the others first.
            msg = exc.message if isinstance(exc, RetentionError) else str(exc)
            out.append(Recovered(tx.txid, op, f"stalled: {msg}", 0))
            stalled = stalled or exc
    compact(ws.journal)
    if strict and stalled is not None:
        raise stalled
    _purge_pending_erasures(ws, now)
    return out


def _purge_pending_erasures(ws: Workspace, now: datetime) -> None:
    """An erasure's trash outlives its apply only when that apply stopped between its
    commit and its purge: every command purges it first (forward only, its own
    transaction)."""
    from retention import trashops

    pending = [r["txid"] for r in ws.catalog.applies() if r["state"] == "applied" and is_erasure(r)]
    if pending:
        trashops.purge_expired(ws, now, targets=pending)


def _writeback(cfg: Config, payload: Payload, *, accumulate: bool = False) -> Writeback | None:
    """With ``[policy.rows]`` naming cleanup columns and a manifest planned from those rows:
    what its commit writes back to them (every enabled group of the plan)."""
    rows, spec = cfg.policy_rows, payload.policy
    if rows is None or spec.tier_rows != rows.table or not spec.tiers:
        return None
    if not (rows.last_cleanup_at or rows.last_cleanup_deleted_count):
        return None
    join = rows.join or (spec.group_by[0] if spec.group_by else rows.key)
    return Writeback(
        table=rows.table,
        key=rows.key,
        join=join,
        groups=tuple(sorted(spec.tiers)),
        at=rows.last_cleanup_at,
        count=rows.last_cleanup_deleted_count,
        accumulate=accumulate,
    )


def is_erasure(row: Mapping[str, Any]) -> bool:
    """An apply of an erasure manifest: its grace period ends when it starts."""
    until = row["grace_until"]
    return until is not None and parse_instant(until) <= parse_instant(row["created_at"])


def _refuse_unknown_trash(ws: Workspace) -> None:
    """Stop (exit 7) when ``.trash/<txid>`` holds moved directories of a transaction that
    neither the journal nor the catalog knows. Directories move only after their BEGIN and
    intents were fsynced, so the journal must know it until recovery finished it (and then
    the catalog does, or the directory was put back and removed): if it does not, the
    journal lost an acknowledged BEGIN. Guessing either way could orphan runs."""
    # Only names an apply of ours would have made: anything else in .trash is foreign, for
    # `retention check` to report (trash_orphan), not a reason to stop every command.
    holding = [t for t in ws.store.tx_dirs_holding_moves() if APPLY_TXID.fullmatch(t)]
    if not holding:
        return
    known = set(ws.journal.transactions()) | {r["txid"] for r in ws.catalog.applies()}
    unknown = [t for t in holding if t not in known]
    if unknown:
        where = ws.store.describe(trash_tx_rel(unknown[0]))
        raise RecoveryError(
            f"{where} holds moved directories of a transaction that neither the journal nor"
            f" the catalog knows ({len(unknown)} such); the journal is damaged (it lost an"
            " acknowledged BEGIN): recovery stopped, nothing was changed",
            hint="keep a copy of the journal; put the directories back with the TRASH.json"
            " in that directory (mv <root>/<trash> <root>/<original> per entry), remove the"
            " emptied directory, then run `retention recover`",
        )


def decide(ws: Workspace, tx: TxState) -> bool:
    """Whether an unfinished transaction committed: the journal's decision if it recorded
    one, else the catalog's (presumed abort: no txid row, no commit). A decision taken from
    the catalog is journaled (durably) before anything else is done about it."""
    if tx.status is not TxStatus.ACTIVE:
        return tx.status is TxStatus.COMMITTED
    committed = ws.catalog.tx_row(tx.txid) is not None
    failpoint("recover.before_decision")
    (ws.journal.commit if committed else ws.journal.abort)(tx.txid)
    return committed


def recover_tx(ws: Workspace, tx: TxState, now: datetime) -> Recovered:
    begin = txrecords.decode_begin(tx.begin)
    if begin.op == "apply":
        return _recover_apply(ws, tx)
    from retention import trashops

    return trashops.recover(ws, tx, begin, now)


def _recover_apply(ws: Workspace, tx: TxState) -> Recovered:
    txid = tx.txid
    tx_dir = trash_tx_rel(txid)
    moves = intended_moves(
        tx,
        txrecords.decode_begin(tx.begin).moves,
        # The trash directory is created only after the intents' fsync returned.
        lambda: f"{ws.store.describe(tx_dir)} exists" if ws.store.lexists(tx_dir) else None,
    )
    committed = decide(ws, tx)
    if committed:
        # Runs already restored by an undo or purged have nothing left to place.
        runs = ws.catalog.tomb_runs(txid)
        deleted = {rid for rid, r in runs.items() if r["state"] == "trash"}
        moves = [m for m in moves if runs.get(m.run_id, {}).get("state", "trash") == "trash"]
    else:
        deleted = set()
    moved, problems = reconcile(ws.store, moves, lambda r: r in deleted)
    if problems:
        raise problems_error(txid, problems)
    if not committed:
        ws.store.drop_tx_dir(txid)
    failpoint("recover.before_done")
    ws.journal.done(txid)
    return Recovered(txid, "apply", "rolled forward" if committed else "rolled back", moved)


def recover(cfg: Config, now: datetime | None = None) -> RecoverReport:
    """`retention recover`: finish or roll back interrupted transactions."""
    t0 = time.monotonic()
    now = now or datetime.now(UTC)
    try:
        with open_workspace(cfg) as ws:
            rec = recover_all(ws, now, strict=True)
            rep = RecoverReport(recovered=rec, duration_ms=int((time.monotonic() - t0) * 1000))
            if SIGNALS.signum is not None:
                done = ", ".join(f"{r.txid} {r.action}" for r in rec) or "nothing to recover"
                rep.interrupted = interruption(
                    f"Interrupted ({SIGNALS.name}): the recovery was finished first ({done})."
                )
            return rep
    except LockedError as exc:
        # A live process holds the workspace: whatever it has unfinished is its own work.
        raise LockedError(
            f"{exc.message}; nothing to recover",
            hint="it finishes or rolls back its own transaction (`retention status` follows"
            " it); if it dies, the lock is released and `retention recover` finishes the job",
        ) from None


# -- apply -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Check:
    """An entry that passed preflight: its directory, if it has one, is measured again and
    compared with the plan's right before its rename (`_checked_moves`)."""

    index: int
    entry: Entry
    rel: bytes | None
    move: Move | None  # the journaled intent: the plan found a directory, and it is there


@dataclass
class _Preflight:
    checks: list[_Check] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)  # the intents, journaled before any move
    refused: list[tuple[int, SkippedEntry]] = field(default_factory=list)  # (entry index, why)
    # Filled while moving (`_checked_moves`): the runs to delete and what actually moved.
    runs: list[TombRun] = field(default_factory=list)
    moved: list[Move] = field(default_factory=list)
    bytes_by_run: dict[str | int, int] = field(default_factory=dict)

    def skipped(self) -> list[SkippedEntry]:
        """Every entry refused so far, in manifest order."""
        return [why for _, why in sorted(self.refused, key=lambda r: r[0])]


MOVE_HINT = (
    "check that you may rename it (write permission on its parent directory, nothing"
    " holding it busy), then plan and apply again"
)
CHANGED = "artifact directory changed since the plan"
CHANGED_HINT = "plan again to include it"


class _Paths:
    """Each entry's artifact path checked without touching the catalog or the disk but for
    its parents' ``realpath`` (cached): ``rels[i]`` is entry ``i``'s path; entries in
    ``overlaps`` overlap another's, ``refused[i]`` says why entry ``i``'s path is one plan
    would never have written. ``jobs`` lists the accepted directories the plan found: what
    the workers measure."""

    __slots__ = ("jobs", "overlaps", "refused", "rels")

    def __init__(self, store: ArtifactStore, payload: Payload) -> None:
        root = Path(payload.artifact_root)
        if Path(os.path.abspath(root)) != store.root:
            raise ManifestRejected(
                f"manifest was planned for artifact root {root}, the configuration says"
                f" {store.root}",
                hint="apply with the configuration the manifest was planned with",
            )
        entries = payload.entries
        # A signed manifest from our planner never has overlapping paths; refuse them
        # anyway, as moving one would carry another run's directory along.
        self.rels = rels = [e.rel_path() for e in entries]
        seen: dict[bytes, int] = {}
        for r in rels:
            if r is not None:
                seen[r] = seen.get(r, 0) + 1
        nested = [r for r in seen if b"/" in r]  # (one-name paths have no ancestors)
        overlapping = {r for r in seen if seen[r] > 1}
        overlapping |= {r for r in nested if any(a in seen for a in ancestors(r))}
        overlapping |= {a for r in nested for a in ancestors(r) if a in seen}
        self.overlaps: set[int] = set()
        self.refused: dict[int, str] = {}
        self.jobs: list[tuple[int, bytes]] = []
        for index, e in enumerate(entries):
            rel = rels[index]
            if rel is None:
                continue
            if rel in overlapping:
                self.overlaps.add(index)
                continue
            try:
                e.checked_rel_path(store.root)  # plan's refusals: '..', NUL, the trash, ...
                store.check_contained(rel)
            except OutsideRoot as exc:
                self.refused[index] = f"artifact path refused: {exc}"
                continue
            if e.exists:
                self.jobs.append((index, rel))


def _preflight(ws: Workspace, payload: Payload, txid: str, paths: _Paths) -> _Preflight:
    """Check every entry against the catalog and the disk (read-only) and list the intended
    moves. Never more than the manifest: anything refused here is skipped and reported.

    Here each entry's id and path (``paths``), and whether its directory is there (one
    ``lstat``): an intent is journaled only for a directory that is, so that recovery never
    looks for one that was gone before the apply began. Whether a directory's contents
    changed is checked later, right before its rename (`_checked_moves`), with the measure
    the workers took meanwhile (they start before this, on ``paths.jobs``).
    """
    pf = _Preflight()
    store = ws.store
    ws.catalog.load_ids(e.run_id for e in payload.entries)
    existing = ws.catalog.existing_ids()
    tx_rel = trash_tx_rel(txid)
    refuse = pf.refused.append
    rels, overlaps, path_refused = paths.rels, paths.overlaps, paths.refused
    for index, e in enumerate(payload.entries):
        SIGNALS.stop("stopped before anything changed; nothing was deleted")
        rel = rels[index]
        if index in overlaps:
            refuse(
                (index, SkippedEntry(e.run_id, "artifact directory overlaps another entry's", None))
            )
            continue
        if e.run_id not in existing:
            refuse((index, SkippedEntry(e.run_id, "no longer in the catalog")))
            continue
        move = None
        if rel is not None:
            why = path_refused.get(index)
            if why is not None:
                refuse((index, SkippedEntry(e.run_id, why)))
                continue
            try:
                dev = store.device(rel)
            except OSError as exc:  # cannot even look (a parent we may not search)
                why = f"{CHANGED} (cannot look at it: {exc.strerror})"
                refuse((index, SkippedEntry(e.run_id, why, CHANGED_HINT)))
                continue
            if (dev is not None) != e.exists:
                why = CHANGED + (" (now missing)" if e.exists else "")
                refuse((index, SkippedEntry(e.run_id, why, CHANGED_HINT)))
                continue
            if dev is not None:
                if not store.same_filesystem(rel, dev):
                    # One entry that cannot be renamed into trash (a mount point, another
                    # filesystem) is that entry's problem: skip it, apply the rest.
                    why = (
                        f"artifact directory {store.describe(rel)} is a mount point or on"
                        " another filesystem than the trash"
                    )
                    refuse(
                        (
                            index,
                            SkippedEntry(
                                e.run_id,
                                why,
                                "apply moves a directory with one rename, which cannot cross"
                                " filesystems: unmount it, or move its contents onto the"
                                " artifact root's filesystem; its rows were kept",
                            ),
                        )
                    )
                    continue
                move = Move(e.run_id, rel, trash_slot_rel(txid, index, rel, tx_rel))
                pf.moves.append(move)
        pf.checks.append(_Check(index, e, rel, move))
    return pf


def _checked_moves(
    pf: _Preflight, measurer: ForkedMeasurer
) -> Iterator[tuple[RunId, bytes, bytes]]:
    """Each entry that passed preflight, in manifest order: its directory measured again
    (the workers run ahead of this loop) and compared with the plan's; one that changed
    since is skipped and reported (its rows stay, its intent is never acted on: it stays
    at home, where recovery looks first). The others are yielded to be moved (`move_all`)
    and their runs listed in ``pf.runs``. Only journaled intents are yielded."""
    for c in pf.checks:
        SIGNALS.stop("nothing was deleted")
        e, move = c.entry, c.move
        if move is not None:
            m = measurer.take(c.index, move.home)
            if not m.exists or m.fingerprint != e.dir_fp:
                why = CHANGED + ("" if m.exists else " (now missing)")
                pf.refused.append((c.index, SkippedEntry(e.run_id, why, CHANGED_HINT)))
                continue
        pf.runs.append(TombRun(e.run_id, e.rows_fp, c.rel, move.trash if move else None, e.bytes))
        pf.bytes_by_run[e.run_id] = e.bytes
        if move is not None:
            pf.moved.append(move)
            yield move.run_id, move.home, move.trash


class TrashIndexEntry(msgspec.Struct):
    run_id: str | int
    original: str
    trash: str
    original_raw: bytes | None = None


class TrashIndex(msgspec.Struct, kw_only=True):
    """``.trash/<txid>/TRASH.json``: enough to put everything back by hand without the
    catalog (``mv <root>/<trash> <root>/<original>`` per entry)."""

    format: str = "retention.trash"
    version: int = 1
    txid: str
    created_at: str
    artifact_root: str
    catalog_path: str
    manifest_id: str
    entries: list[TrashIndexEntry]


def _write_trash_index(
    ws: Workspace, txid: str, now: datetime, manifest_id: str, moves: list[Move]
) -> None:
    index = TrashIndex(
        txid=txid,
        created_at=format_instant(now),
        artifact_root=str(ws.store.root),
        catalog_path=ws.catalog.describe(),
        manifest_id=manifest_id,
        entries=[
            TrashIndexEntry(m.run_id, home, text_and_raw(m.trash)[0], home_raw)
            for m in moves
            for home, home_raw in (text_and_raw(m.home),)
        ],
    )
    data = msgspec.json.format(msgspec.json.encode(index), indent=1)
    ws.store.write_index(txid, data)


def apply_manifest(
    cfg: Config,
    manifest_path: str,
    now: datetime | None = None,
    *,
    batch_size: int | None = None,
) -> ApplyReport:
    """`retention apply`: apply exactly the manifest, crash-safely (see module docstring).

    With ``batch_size`` (or ``apply.batch_size``), the entries are applied in batches of at
    most that many runs, in manifest order (oldest first), each batch its own journaled
    transaction with its own commit and trash (`_retention_tx.target` says "batch k/n of
    <first txid>"): no catalog lock is held for long, a crash leaves the finished batches
    done and the current one recovered, and applying the same manifest again continues
    with the runs not yet deleted. Undo of the first txid restores every batch.

    Raises `ManifestRejected` (nothing changed) for a bad, expired or foreign manifest,
    `LockedError` if another process holds the workspace. Entries that changed since the
    plan, whose directory is a mount point or on another filesystem, or whose directory
    cannot be moved, are skipped and reported; their rows stay.
    """
    t0 = time.monotonic()
    now = now or datetime.now(UTC)
    size = batch_size if batch_size is not None else cfg.batch_size
    data = read_manifest_bytes(manifest_path, cfg.manifest_max_size)
    with open_workspace(cfg) as ws:
        recovered = recover_all(ws, now)
        SIGNALS.begin()
        SIGNALS.stop(_nothing_done("nothing was deleted", recovered))
        payload = verify_for_workspace(data, ws.state, ws.catalog, now=now)
        done_by = ws.catalog.applied_by_manifest(payload.manifest_id)

        def report(
            txid: str | None, deleted: list[RunId], nbytes: int, skipped: list[SkippedEntry]
        ) -> ApplyReport:
            return ApplyReport(
                txid=txid,
                manifest_id=payload.manifest_id,
                deleted_runs=len(deleted),
                deleted_run_ids=deleted,
                bytes_moved=nbytes,
                skipped=skipped,
                already_applied_by=done_by,
                recovered=recovered,
                duration_ms=int((time.monotonic() - t0) * 1000),
            )

        entries = payload.entries
        base, first_k = None, 1
        if done_by:
            resume = _unfinished_batches(ws, done_by)
            if resume is None:
                return report(None, [], 0, [])
            base, first_k, done_runs = resume
            entries = [e for e in entries if e.run_id not in done_runs]
            if not entries:
                return report(None, [], 0, [])
            done_by = []  # continuing it: not "already applied"
        lineage = payload.catalog_id  # verify_for_workspace checked it is this catalog's
        # An erasure has no grace period: the purge right after DONE takes its trash.
        erasure = payload.policy.erase is not None
        if erasure:  # deleted rows (and later their tombstones) overwritten, not just freed
            ws.catalog.overwrite_deleted()
        grace_until = now + timedelta(seconds=0 if erasure else cfg.grace_seconds)
        chunks = (
            [entries[i : i + size] for i in range(0, len(entries), size)] if size else [entries]
        )
        batched = bool(size) or base is not None
        total = first_k - 1 + len(chunks)
        deleted: list[RunId] = []
        nbytes = 0
        skipped: list[SkippedEntry] = []
        batches: list[BatchReport] = []
        stopped: Interruption | None = None
        for k, chunk in enumerate(chunks, start=first_k):
            txid = new_txid("apply", now)
            marker = f"batch {k}/{total} of {base or txid}" if batched else None
            SIGNALS.begin()  # a signal during the last batch's finish stops this one
            try:
                got = _apply_one(ws, txid, payload, chunk, data, lineage, now, grace_until, marker)
            except Interrupted as exc:
                if not deleted:
                    raise
                what = exc.message.removeprefix(f"Interrupted ({SIGNALS.name}): ")
                stopped = interruption(
                    f"Interrupted ({SIGNALS.name}) in batch {k} of {total}: {what}"
                    f" The batches before it stay applied ({len(deleted):,} runs deleted);"
                    " apply the same manifest again to continue."
                )
                break
            b_deleted, b_bytes, b_skipped = got
            skipped += b_skipped
            if b_deleted:
                base = base or txid
                deleted += b_deleted
                nbytes += b_bytes
                batches.append(BatchReport(txid=txid, runs=len(b_deleted), bytes=b_bytes))
        if not deleted:
            return report(None, [], 0, skipped)
        # Purging is its own journaled transaction, after DONE: trash it cannot remove is a
        # warning, never a failure of the apply that just committed.
        from retention import trashops

        j = ws.journal
        warnings: list[str] = []
        purge_skipped = False
        try:
            purged = [] if stopped else trashops.purge_expired(ws, now)
        except Interrupted:  # before the purge's own commit: nothing of it happened
            purged, purge_skipped = [], True
        except Exception as exc:  # trash we may not remove, a busy catalog, a full disk
            mapped = exc if isinstance(exc, RetentionError) else from_environment(exc)
            if mapped is None:
                raise  # a bug: keep its traceback
            purged = []
            warnings.append(f"purge of expired trash did not finish: {mapped.message}")
        compact(j)
        txid = base or batches[0].txid
        rep = report(txid, deleted, nbytes, skipped)
        rep.batches = batches if batched else []
        rep.groups = [
            GroupDeleted(column=c, value=v, runs=n, bytes=b)
            for c, v, n, b in ws.catalog.audit_groups([b.txid for b in batches])
        ]
        rep.purged = purged
        rep.warnings = warnings
        rep.undo_until = None if erasure else format_instant(grace_until)
        rep.erasure = erasure
        if erasure and not all(b.txid in purged for b in batches):
            warnings.append(
                f"the erased runs' trash ({txid}) is not purged yet: the next retention command"
                " purges it first (undo refuses it)"
            )
        _save_last(ws, rep)
        if stopped is not None:
            rep.interrupted = stopped
        elif SIGNALS.signum is not None:
            rep.interrupted = interruption(
                f"Interrupted ({SIGNALS.name}) after the commit: finished,"
                f" {len(deleted):,} run{'' if len(deleted) == 1 else 's'} deleted (undo with"
                f" `retention undo {txid}`)"
                + ("; the purge of expired trash was skipped." if purge_skipped else ".")
            )
        return rep


class GroupDeleted(msgspec.Struct):
    """What an apply deleted of one group (``column`` = ``value``; the value as text)."""

    column: str
    value: str | None
    runs: int
    bytes: int


class BatchReport(msgspec.Struct):
    """One batch of a batched apply: its own transaction."""

    txid: str
    runs: int
    bytes: int


def _unfinished_batches(ws: Workspace, done_by: list[str]) -> tuple[str, int, set[RunId]] | None:
    """When the applies of this manifest were batches (their `_retention_tx.target` says
    "batch k/n of <txid>"): the first txid, the next batch number and the runs already
    deleted, so that applying the manifest again continues with the rest. None for a
    manifest applied in one transaction (then it is simply already applied)."""
    rows = {r["txid"]: r for r in ws.catalog.applies()}
    marks = [rows[t]["target"] for t in done_by if t in rows and rows[t]["target"]]
    found = [m for m in (_BATCH.fullmatch(t) for t in marks) if m]
    if not found:
        return None
    base = found[0].group(3)
    next_k = max(int(m.group(1)) for m in found) + 1
    done: set[RunId] = set()
    for t in done_by:
        done |= set(ws.catalog.tomb_runs(t))
    return base, next_k, done


_BATCH = re.compile(r"batch (\d+)/(\d+) of (\S+)")


def batch_base(target: str | None) -> str | None:
    """The first txid of the batched apply an `_retention_tx.target` names, else None."""
    m = _BATCH.fullmatch(target or "")
    return m.group(3) if m else None


def _apply_one(
    ws: Workspace,
    txid: str,
    payload: Payload,
    entries: list[Entry],
    data: bytes | bytearray,
    lineage: str,
    now: datetime,
    grace_until: datetime,
    batch: str | None,
) -> tuple[list[RunId], int, list[SkippedEntry]]:
    """One apply transaction over ``entries`` (all of the manifest, or one batch)."""
    sub = (
        payload if entries is payload.entries else msgspec.structs.replace(payload, entries=entries)
    )
    paths = _Paths(ws.store, sub)
    # The workers measure the directories (the drift check) from now on (`_apply_workers`:
    # how many), while this process checks the entries against the catalog and the disk and
    # journals the intents; `_apply_phase` closes them once every directory is moved. They
    # walk the trash's filesystem only: a directory that became a mount point since the plan
    # (preflight refuses it) is not walked, so it cannot hold up the renames behind it.
    workers = _apply_workers(sub.entries, paths.jobs)
    # And the runs' rows are compared with the plan's fingerprints beside all this, where
    # the catalog allows it (`retention.catalogs.beside`), so that the commit need not.
    with (
        ForkedMeasurer(
            OnDevice(ws.store, ws.store.trash_device()), paths.jobs, workers=workers
        ) as measurer,
        ws.catalog.fingerprints_beside(
            [e.run_id for e in sub.entries], [e.rows_fp for e in sub.entries]
        ) as beside,
    ):
        pf = _preflight(ws, sub, txid, paths)
        if not pf.checks:
            return [], 0, pf.skipped()
        begin = Begin(
            op="apply",
            manifest_id=payload.manifest_id,
            manifest_digest=hashlib.sha256(data).hexdigest(),
            catalog_id=lineage,
            artifact_root=str(ws.store.root),
            created_at=format_instant(now),
            grace_until=format_instant(grace_until),
            moves=len(pf.moves),
        )
        j = ws.journal
        begin_with_intents(j, txid, begin, pf.moves)
        failpoint("apply.after_begin")
        try:
            result = _apply_phase(ws, txid, sub, pf, measurer, beside, begin, lineage, now, batch)
        except BaseException as exc:
            measurer.close()  # nothing more to measure: the roll-back has the cores
            beside.close()
            instead = roll_back_now(ws, txid, now, exc, "nothing was deleted")
            if instead is None:
                raise
            raise instead from None
    deleted, nbytes, skipped = result
    if deleted:  # else nothing committed: rolled back and closed by _apply_phase
        failpoint("apply.before_done")
        j.done(txid)
    return deleted, nbytes, skipped


# Directories with at most this many files on average (the manifest's count): apply leaves
# the main process a core of its own for the renames. Measured on two cores with 20,000
# directories: with 4 or 8 files each, one worker beside the renames was 20% and 5% faster
# than two (the rename loop is the longer part and two workers slowed it); with 16, two
# workers were 15% faster (the walk is then the longer part).
SMALL_DIR_FILES = 10


def _apply_workers(entries: list[Entry], jobs: list[tuple[int, bytes]]) -> int:
    """How many processes measure the directories during an apply: every core but the main
    process's while the renames are the longer part (small directories), every core when
    walking the directories is (`SMALL_DIR_FILES`)."""
    files = sum(entries[i].files for i, _ in jobs)
    return default_workers(reserve=1 if files <= SMALL_DIR_FILES * len(jobs) else 0)


def _apply_phase(
    ws: Workspace,
    txid: str,
    payload: Payload,
    pf: _Preflight,
    measurer: ForkedMeasurer,
    beside: Beside | NotBeside,
    begin: Begin,
    lineage: str,
    now: datetime,
    batch: str | None = None,
) -> tuple[list[RunId], int, list[SkippedEntry]]:
    store, j = ws.store, ws.journal
    SIGNALS.stop("nothing was deleted")
    if pf.moves:
        _write_trash_index(ws, txid, now, payload.manifest_id, pf.moves)
        failpoint("apply.after_trash_index")

    def after_rename() -> None:
        failpoint("apply.after_rename")
        SIGNALS.stop("nothing was deleted")

    try:
        failed = move_all(
            store,
            _checked_moves(pf, measurer),
            label="moving to trash",
            after_rename=after_rename,
            after_batch=lambda: failpoint("apply.after_move_batch"),
            total=len(pf.moves),
        )
    finally:
        measurer.close()  # every directory is moved or skipped: the commit has the cores
    moved = [m for m in pf.moved if m.run_id not in failed]
    skipped = pf.skipped()  # preflight's and the drift check's, then failed renames
    for m in pf.moved:
        if m.run_id in failed:
            exc = failed[m.run_id]
            skipped.append(
                SkippedEntry(
                    m.run_id,
                    f"cannot move {store.describe(m.home)} into trash: {exc.strerror or exc}",
                    MOVE_HINT,
                )
            )
    if len(moved) != len(pf.moves):
        # TRASH.json lists what was moved into trash: rewritten when the drift check or a
        # failed rename left some intents unmoved (before the commit: it is the list to put
        # directories back by hand; runs the commit leaves go home and stay listed).
        _write_trash_index(ws, txid, now, payload.manifest_id, moved)
    runs = [r for r in pf.runs if r.run_id not in failed]
    info = TxInfo(
        txid=txid,
        op="apply",
        manifest_id=payload.manifest_id,
        created_at=begin.created_at,
        grace_until=begin.grace_until,
        trash_dir=store.describe(trash_tx_rel(txid)),
        target=batch,
        writeback=_writeback(ws.cfg, payload, accumulate=batch is not None),
        manifest_digest=begin.manifest_digest,  # audit row (issue 11 item 3)
        policy_digest=payload.policy_digest,
        group_by=payload.policy.group_by[0] if payload.policy.group_by else None,
    )

    def before_commit() -> None:
        failpoint("apply.before_commit")
        SIGNALS.stop("nothing was deleted")  # inside the transaction: it rolls back

    SIGNALS.stop("nothing was deleted")
    try:
        if not runs:  # every move failed
            raise NothingDeleted({})
        # Waits for the helper, if it is not done yet: before the write lock, not under it.
        known = beside.result(stop=lambda: SIGNALS.signum is not None)
        SIGNALS.stop("nothing was deleted")
        failpoint("apply.before_catalog_commit")
        dropped = ws.catalog.commit_delete(
            info, lineage, runs, before_commit=before_commit, known=known
        )
    except NothingDeleted as nothing:
        # Not an apply: the catalog committed nothing, so every directory goes home and the
        # transaction is closed as rolled back (no txid row, no TRASH.json, nothing to undo).
        j.abort(txid)
        _, problems = reconcile(store, moved, lambda r: False)
        if problems:
            raise problems_error(txid, problems) from None
        store.drop_tx_dir(txid)
        j.done(txid)
        for rid, why in nothing.dropped.items():
            skipped.append(SkippedEntry(rid, why, "plan again"))
        return [], 0, skipped
    SIGNALS.committed()
    failpoint("apply.after_commit")
    # Moves whose run the catalog did not delete (changed since the plan) go back home. The
    # rest are in trash already: no need to look at 100k directories again.
    back = [m for m in moved if m.run_id in dropped]
    _, problems = reconcile(store, back, lambda r: False)
    if problems:
        raise problems_error(txid, problems)
    j.commit(txid)
    failpoint("apply.after_journal_commit")
    for rid, why in dropped.items():
        skipped.append(SkippedEntry(rid, why, "plan again"))
    ids = [r.run_id for r in runs if r.run_id not in dropped]
    return ids, sum(pf.bytes_by_run[r] for r in ids), skipped


def roll_back_now(
    ws: Workspace, txid: str, now: datetime, exc: BaseException, undone: str
) -> RetentionError | None:
    """After an error before an apply's or undo's decision: roll the transaction back now,
    in this process, and return the error to raise instead of ``exc`` (None: raise ``exc``).

    A catalog that refused the commit (`CommitRefused`) certainly did not commit, so the
    abort is journaled without asking it (it may still be locked); otherwise recovery asks
    the catalog as usual. If the roll-back cannot finish, the error says plainly that the
    transaction is interrupted and `retention recover` finishes it. Never after a failed
    fsync: that is fatal and never retried, so the next process must look afresh.
    ``undone`` says what did not happen ("nothing was deleted").
    """
    if isinstance(exc, FsyncError):
        return None
    SIGNALS.phase = "rolling back"  # a signal now waits for the roll-back to finish
    try:
        tx = ws.journal.transactions().get(txid)
        if tx is None or tx.status is TxStatus.DONE:
            return None
        if isinstance(exc, CommitRefused) and tx.status is TxStatus.ACTIVE:
            ws.journal.abort(txid)
            tx = ws.journal.transactions()[txid]
        rolled = recover_tx(ws, tx, now)
    except Exception as err:
        why = err.message if isinstance(err, RetentionError) else str(err)
        first = exc.message if isinstance(exc, RetentionError) else str(exc)
        return RecoveryError(
            f"{first}; the roll-back did not finish either ({why}): transaction {txid} is"
            " interrupted",
            hint="run `retention recover` once the cause is fixed: it finishes or rolls back"
            " the transaction, guided by the journal and the catalog",
        )
    if isinstance(exc, Interrupted):
        if rolled.action != "rolled back":  # the catalog had committed after all: finished
            return Interrupted(
                exc.signum,
                f"Interrupted ({SIGNALS.name}) at the commit: the catalog had committed, so"
                f" {txid} was finished ({rolled.action}).",
                hint="see `retention status`",
            )
        what = f"rolled back {_n_dirs(rolled.moved)}" if rolled.moved else "nothing had moved"
        return Interrupted(exc.signum, f"Interrupted ({SIGNALS.name}): {what}, {undone}.")
    if isinstance(exc, RetentionError):
        return type(exc)(f"{exc.message}; rolled back: {undone}", hint=exc.hint)
    return None


def _nothing_done(undone: str, recovered: list[Recovered]) -> str:
    """What an interrupted command reports when it stopped before its own transaction:
    ``undone``, after the interrupted transactions it recovered first, if any."""
    if not recovered:
        return f"stopped before anything changed; {undone}"
    done = ", ".join(f"{r.txid} ({r.op}) {r.action}" for r in recovered)
    return f"recovered {done} first, then stopped; {undone}"


def _save_last(ws: Workspace, rep: ApplyReport) -> None:
    # A convenience for `status`, written after DONE: a failure (a full disk, an fsync
    # error) must not turn the finished apply into a failed one.
    with contextlib.suppress(OSError, FsyncError):
        fsio.write_atomic(ws.state.last_apply, msgspec.json.encode(rep), 0o644)
