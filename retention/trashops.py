"""Undo and purge: the trash side of the protocol, each its own journaled transaction.

Undo (txid ``u-...``) is apply in reverse: intents first, directories renamed back from
trash with a no-replace rename, then ONE catalog transaction re-inserts the rows and
records the undo txid (the decision). Recovery: catalog has the undo txid -> restored
runs end at home, others in trash; no txid -> every directory back in trash.

Purge (txid ``p-...``) only goes forward: ONE catalog transaction marks the target applies
``purging`` and records the purge txid (the decision; undo refuses from then on), then the
trash directories are removed (a missing file is fine), then they are marked ``purged``.
Recovery: catalog has the purge txid -> finish removing and marking; no txid -> nothing
happened, abort.

SIGINT and SIGTERM (`retention.workspace.SIGNALS`): an undo stops at its next safe point
before its commit (before BEGIN, after each rename, before and inside its catalog
transaction) and is rolled back in this process; the applies it undid before are kept and
reported, the rest are not started. A purge stops only before its commit (nothing purged);
once its applies are marked ``purging`` it finishes removing their trash. After a commit,
the command finishes, reports ``interrupted`` and exits 130 / 143.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from journal import FsyncError, TxState
from retention import txrecords
from retention.catalogs import open_catalog, open_catalog_file
from retention.config import Config
from retention.coordinator import (
    Recovered,
    batch_base,
    compact,
    decide,
    interruption,
    is_erasure,
    new_txid,
    recover_all,
    roll_back_now,
)
from retention.durations import format_bytes, format_instant, human_instant, parse_instant, plural
from retention.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    Interrupted,
    RecoveryError,
    RetentionError,
    StorageError,
    UndoRefused,
)
from retention.failpoints import failpoint
from retention.layout import StateLayout, trash_tx_rel
from retention.moves import (
    begin_with_intents,
    intended_moves,
    move_all,
    problems_error,
    reconcile,
)
from retention.policy import RunId
from retention.reporting import Progress
from retention.reports import Interruption
from retention.store import OutsideRoot, display
from retention.tombstones import CatalogSpace, TrashCatalog
from retention.txrecords import Begin, Move
from retention.workspace import SIGNALS, Workspace, open_workspace

# -- purge ---------------------------------------------------------------------------------


def expired_applies(ws: Workspace, now: datetime, *, everything: bool = False) -> list[str]:
    """Apply txids whose trash may be purged: grace period over (or ``everything``)."""
    return [r["txid"] for r in _purgeable(ws.catalog.applies(), now, everything=everything)]


def _purgeable(
    rows: list[dict[str, Any]], now: datetime, *, everything: bool
) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row["state"] not in ("applied", "purging"):
            continue
        until = row["grace_until"]
        if everything or until is None or parse_instant(until) <= now:
            out.append(row)
    return out


class PurgeApply(msgspec.Struct, kw_only=True):
    txid: str
    state: str  # applied | purging (a purge decided and not finished)
    deleted_at: str
    grace_until: str | None
    runs: int  # in trash now: these can no longer be undone after the purge
    bytes: int


class PurgePreview(msgspec.Struct, kw_only=True):
    """``purge --dry-run``: what a purge would remove now (nothing is changed)."""

    version: int = 1
    kind: str = "purge-preview"
    dry_run: bool = True
    everything: bool  # --all
    now: str
    applies: list[PurgeApply]
    runs: int
    bytes: int
    # Unfinished transactions of the journal: a real purge recovers them first (or waits
    # for the one running), which may change this.
    unfinished: list[str] = []
    running: bool = False  # they belong to a live process (it holds the workspace lock)


def purge_preview(cfg: Config, *, everything: bool, now: datetime | None = None) -> PurgePreview:
    """What `purge` (or `purge --all`) would purge now. Read-only: the catalog is opened
    ``mode=ro``, no lock is taken and the journal is only read."""
    from retention.status import observe

    now = now or datetime.now(UTC)
    with open_catalog(cfg) as cat:
        rows = _purgeable(cat.applies(), now, everything=everything)
        left = cat.trash_by_apply()
    seen = observe(StateLayout(Path(cfg.state_dir)))
    applies = [
        PurgeApply(
            txid=r["txid"],
            state=r["state"],
            deleted_at=r["created_at"],
            grace_until=r["grace_until"],
            runs=left.get(r["txid"], (0, 0))[0],
            bytes=left.get(r["txid"], (0, 0))[1],
        )
        for r in rows
    ]
    return PurgePreview(
        everything=everything,
        now=format_instant(now),
        applies=applies,
        runs=sum(a.runs for a in applies),
        bytes=sum(a.bytes for a in applies),
        unfinished=[t for t, _, _ in seen.unfinished],
        running=seen.holder is not None,
    )


def purge_preview_lines(rep: PurgePreview) -> list[str]:
    out = [
        f"Running: {t} (another process): a purge now would find the workspace locked."
        if rep.running
        else f"Interrupted transaction {t}: a purge recovers it first, which may change this."
        for t in rep.unfinished
    ]
    if not rep.applies:
        which = "in trash" if rep.everything else "whose grace period is over"
        return [*out, f"Dry run: nothing {which}; nothing would be purged."]
    for a in rep.applies:
        until = f", grace period until {human_instant(a.grace_until)}" if a.grace_until else ""
        out.append(
            f"  {a.txid}  deleted {human_instant(a.deleted_at)}{until}:"
            f" {plural(a.runs, 'run')}, {format_bytes(a.bytes)}"
        )
    out.append(
        f"Dry run: would purge the trash of {plural(len(rep.applies), 'apply', 'applies')}"
        f" ({plural(rep.runs, 'run')}, {format_bytes(rep.bytes)}); after that they cannot be"
        " undone. Nothing was changed."
    )
    return out


def purge_expired(
    ws: Workspace, now: datetime, *, everything: bool = False, targets: list[str] | None = None
) -> list[str]:
    """Purge every apply whose grace period is over (or ``targets``, already chosen that
    way); returns the purged apply txids."""
    if targets is None:
        targets = expired_applies(ws, now, everything=everything)
    if not targets:
        return []
    SIGNALS.begin()
    SIGNALS.stop("nothing was purged")
    ptxid = new_txid("purge", now)
    begin = Begin(
        op="purge",
        catalog_id=ws.catalog.stored_lineage() or "",
        artifact_root=str(ws.store.root),
        created_at=format_instant(now),
        targets=targets,
    )
    ws.journal.begin(ptxid, txrecords.encode(begin))
    failpoint("purge.after_begin")

    def before_commit() -> None:
        failpoint("purge.before_commit")
        SIGNALS.stop("nothing was purged")  # inside the transaction: it rolls back

    try:
        SIGNALS.stop("nothing was purged")
        ws.catalog.mark_purging(ptxid, targets, format_instant(now), before_commit=before_commit)
    except BaseException as exc:
        # Nothing was decided (the catalog rolled back): close the purge now rather than
        # leave it for the next command. Not after a failed fsync, which is never retried.
        if not isinstance(exc, FsyncError):
            with contextlib.suppress(Exception):
                ws.journal.abort(ptxid)
                ws.journal.done(ptxid)
        raise
    SIGNALS.committed()  # a purge only goes forward from here
    failpoint("purge.after_mark")
    ws.journal.commit(ptxid)
    _finish_purge(ws, ptxid, targets, now)
    return targets


def _finish_purge(ws: Workspace, ptxid: str, targets: list[str], now: datetime) -> None:
    bar = Progress("purging")
    if bar.enabled:  # on a terminal only: the count costs a read of the deletion log
        bar.total = ws.catalog.trash_totals(targets)[0]
    for t in targets:
        try:
            ws.store.purge_tx(t, advance=bar.advance if bar.enabled else None)
        except OSError as exc:
            raise StorageError(
                f"cannot remove trash {ws.store.describe(trash_tx_rel(t))}: {exc.strerror or exc}",
                hint="fix its permissions; `retention recover` finishes the purge",
            ) from None
        failpoint("purge.after_remove")
    bar.close()
    ws.store.sync_trash()
    ws.catalog.mark_purged(targets, format_instant(now))
    failpoint("purge.before_done")
    ws.journal.done(ptxid)


def _recover_purge(ws: Workspace, tx: TxState, begin: Begin, now: datetime) -> Recovered:
    committed = decide(ws, tx)
    if committed:
        _finish_purge(ws, tx.txid, begin.targets, now)
    else:
        failpoint("recover.before_done")
        ws.journal.done(tx.txid)
    return Recovered(tx.txid, "purge", "rolled forward" if committed else "rolled back", 0)


# -- undo ----------------------------------------------------------------------------------


class Conflict(msgspec.Struct):
    run_id: str | int
    reason: str


class UndoResult(msgspec.Struct, kw_only=True):
    txid: str  # the undo's own txid
    target: str  # the apply it undid
    restored: list[str | int]
    conflicts: list[Conflict]
    error: str | None = None  # this apply could not be undone at all (the others still were)
    error_code: int | None = None


def undo_targets(
    ws: Workspace, now: datetime, *, txid: str | None, within: timedelta | None
) -> list[str]:
    """The apply txids to undo, newest first; refuses purged, purging or unknown ones.

    An apply whose purge was decided but did not finish (state ``purging``: the trash it
    may not remove, or a crash) is refused as being purged, never as "already purged": the
    message names the purge and the hint says that `retention recover` finishes it."""
    rows = ws.catalog.applies()
    if txid is not None:
        match = [r for r in rows if r["txid"] == txid]
        if not match:
            raise UndoRefused(f"no committed apply with txid {txid}", hint="see `retention status`")
        r = match[0]
        if is_erasure(r):
            raise UndoRefused(_ERASURE_REFUSED.format(txid))
        base = batch_base(r["target"])
        if base is not None:  # a batched apply: undo restores every batch still applied
            live = [
                x["txid"]
                for x in rows
                if batch_base(x["target"]) == base and x["state"] == "applied"
            ]
            if len(live) > 1 or (live and live != [txid]):
                return live
        if r["state"] == "purging":
            raise UndoRefused(
                f"cannot undo {txid}: its trash is being purged ({_unfinished_purge(ws, [txid])});"
                " a purge only goes forward, so its runs cannot be brought back",
                hint=_FINISH_PURGE_HINT,
            )
        if r["state"] == "purged":
            # Not "grace period ended": `purge --all` may have emptied it before then.
            when = f" at {r['finished_at']}" if r["finished_at"] else ""
            raise UndoRefused(
                f"cannot undo {txid}: its trash was purged{when}; purged runs cannot be brought"
                " back",
                hint="see `retention status` for what is still undoable",
            )
        if r["state"] == "undone":
            raise UndoRefused(f"{txid} was already undone")
        return [txid]
    assert within is not None
    since = now - within
    chosen = [r for r in rows if parse_instant(r["created_at"]) >= since]
    live = [r["txid"] for r in chosen if r["state"] == "applied" and not is_erasure(r)]
    if not live:
        erased = [r["txid"] for r in chosen if is_erasure(r)]
        if erased:
            raise UndoRefused(_ERASURE_REFUSED.format(erased[0]))
        purging = [r["txid"] for r in chosen if r["state"] == "purging"]
        purged = [r for r in chosen if r["state"] == "purged"]
        if purging:
            also = f"; {len(purged)} more were already purged" if purged else ""
            raise UndoRefused(
                f"nothing to undo: {len(purging)} apply(s) in that window are being purged"
                f" ({_unfinished_purge(ws, purging)}){also}; a purge only goes forward, so"
                " their runs cannot be brought back",
                hint=_FINISH_PURGE_HINT,
            )
        if purged:
            raise UndoRefused(
                f"nothing to undo: {len(purged)} apply(s) in that window were already purged"
            )
    return live


_ERASURE_REFUSED = (
    "cannot undo {}: it applied an erasure request; erased runs are purged at once and"
    " never brought back"
)
_FINISH_PURGE_HINT = (
    "run `retention recover` to finish the purge; if it stops again, fix what it names"
    " (e.g. the permissions of a directory in trash) and run it again"
)


def _unfinished_purge(ws: Workspace, targets: list[str]) -> str:
    """Which purge holds ``targets`` (applies in state ``purging``), for a message."""
    txids = []
    for tx in ws.journal.unfinished():
        begin = txrecords.decode_begin(tx.begin)
        if begin.op == "purge" and set(targets) & set(begin.targets):
            txids.append(tx.txid)
    if not txids:
        return "its purge did not finish"
    return f"purge {', '.join(txids)} was decided and did not finish"


def run_targets(ws: Workspace, run_ids: list[str]) -> dict[str, list[RunId]]:
    """For ``undo --run``: the apply holding each run in trash (newest apply first), with
    the run ids as the catalog stores them. Refuses (`UndoRefused`, nothing done) a run not
    in trash: never deleted, already restored, purged or being purged, or erased."""
    out: dict[str, list[RunId]] = {}
    cat = ws.catalog
    if not isinstance(cat, TrashCatalog):  # the participant protocol has no per-run lookup
        raise UndoRefused("undo --run needs the SQLite catalog")
    for text in dict.fromkeys(run_ids):
        places = cat.run_places(text)
        if not places:
            raise UndoRefused(
                f"run {text!r} is not in trash: no recorded apply deleted it",
                hint="`retention trash` lists the runs that can be brought back",
            )
        live = [p for p in places if p["run_state"] == "trash"]
        twins = sorted({repr(p["run_id"]) for p in live})
        if len(twins) > 1:  # an untyped id column held 42 and '42': which one is meant?
            raise UndoRefused(
                f"run {text!r} names {len(twins)} runs in trash ({', '.join(twins)}),"
                " deleted as different runs",
                hint="bring back the whole apply with `retention undo TXID`"
                " (`retention trash` lists them)",
            )
        p = live[0] if live else places[0]
        txid = p["txid"]
        if is_erasure(p):
            raise UndoRefused(
                f"cannot undo run {text!r}: {txid} applied an erasure request; erased runs"
                " are purged at once and never brought back"
            )
        if p["run_state"] == "restored":
            raise UndoRefused(
                f"run {text!r} is not in trash: it was already restored"
                f" (by {p['undo_txid'] or 'an undo'} of {txid})"
            )
        if p["run_state"] == "purged" or p["state"] == "purged":
            when = f" at {p['finished_at']}" if p["finished_at"] else ""
            raise UndoRefused(
                f"cannot undo run {text!r}: the trash of {txid} was purged{when}; purged"
                " runs cannot be brought back",
                hint="see `retention trash` for what is still undoable",
            )
        if p["state"] == "purging":
            raise UndoRefused(
                f"cannot undo run {text!r}: the trash of {txid} is being purged"
                f" ({_unfinished_purge(ws, [txid])}); a purge only goes forward",
                hint=_FINISH_PURGE_HINT,
            )
        if p["state"] != "applied":
            raise UndoRefused(f"run {text!r} is not in trash ({txid} is {p['state']})")
        out.setdefault(txid, []).append(p["run_id"])
    order = {r["txid"]: n for n, r in enumerate(ws.catalog.applies())}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 0)))


def undo_one(
    ws: Workspace, target: str, now: datetime, *, only: list[RunId] | None = None
) -> UndoResult:
    """Undo one apply: restore every run it deleted, except conflicts (left in trash).

    With ``only``, just those runs (``undo --run``), each with the runs it shares a row
    with (they can only come back together); the apply stays undoable for the rest. The
    same transaction, journal and recovery as a whole undo: only the set is smaller."""
    cat, store = ws.catalog, ws.store
    runs = {rid: r for rid, r in cat.tomb_runs(target).items() if r["state"] == "trash"}
    blocked: dict[RunId, str] = {}
    dirs: dict[RunId, Move] = {}
    for rid, r in runs.items():
        if r["path"] is None:
            continue
        home, trash = bytes(r["path"]), r["trash"]
        if trash is None:  # the directory was already missing when applied
            if store.lexists(home):
                blocked[rid] = f"path {display(home)} exists again"
            continue
        trash = bytes(trash)
        try:
            store.check_contained(home)
        except OutsideRoot as exc:
            blocked[rid] = f"its home is no longer inside the artifact root: {exc}"
            continue
        if store.lexists(home):
            blocked[rid] = f"path {display(home)} exists again"
        elif not store.lexists(trash):
            blocked[rid] = f"its directory is missing from trash ({display(trash)})"
        else:
            dirs[rid] = Move(rid, home, trash)
    conflicts, groups = cat.undo_plan(target, list(runs), blocked)
    if only is not None:
        # The plan covers every run in trash, so that a requested run's group is whole
        # (a run sharing a row with one not in trash any more conflicts there already).
        wanted = set(only)
        groups = [g for g in groups if wanted.intersection(g)]
        chosen = {rid for g in groups for rid in g}
        conflicts = {rid: why for rid, why in conflicts.items() if rid in wanted or rid in chosen}
    moves = [dirs[rid] for g in groups for rid in g if rid in dirs]
    restore = [rid for g in groups for rid in g]
    utxid = new_txid("undo", now)
    SIGNALS.begin()
    SIGNALS.stop(f"stopped before anything changed; nothing of {target} was restored")
    if restore:
        begin = Begin(
            op="undo",
            catalog_id=cat.stored_lineage() or "",
            artifact_root=str(store.root),
            created_at=format_instant(now),
            targets=[target],
            moves=len(moves),
        )
        j = ws.journal
        begin_with_intents(j, utxid, begin, moves)
        failpoint("undo.after_begin")
        undone = f"nothing of {target} was restored"

        def after_rename() -> None:
            failpoint("undo.after_rename")
            SIGNALS.stop(undone)

        def before_commit() -> None:
            failpoint("undo.before_commit")
            SIGNALS.stop(undone)  # inside the transaction: it rolls back

        try:
            SIGNALS.stop(undone)
            failed = move_all(
                store,
                [(m.run_id, m.trash, m.home) for m in moves],
                label="moving back from trash",
                after_rename=after_rename,
                after_batch=lambda: failpoint("undo.after_move_batch"),
            )
            for rid, err in failed.items():
                conflicts[rid] = f"cannot move it home: {err.strerror or err}"
            # A group comes back whole or not at all (its members share rows).
            for g in groups:
                if any(rid in failed for rid in g):
                    for rid in g:
                        conflicts.setdefault(rid, "shares a row with a run that cannot be restored")
            groups = [g for g in groups if not any(rid in conflicts for rid in g)]
            SIGNALS.stop(undone)
            refused = cat.commit_restore(
                utxid, target, groups, format_instant(now), before_commit=before_commit
            )
        except BaseException as exc:
            instead = roll_back_now(
                ws,
                utxid,
                now,
                exc,
                undone if isinstance(exc, Interrupted) else "nothing was restored",
            )
            if instead is None:
                raise
            raise instead from None
        SIGNALS.committed()
        failpoint("undo.after_commit")
        conflicts.update(refused)
        restored = cat.restored_by(utxid)
        # Moves whose run the catalog did not restore go back to trash (as apply's
        # finish): the restored ones are home already, no need to look at them again.
        back = [m for m in moves if m.run_id not in restored]
        _, problems = reconcile(store, back, lambda r: True)
        if problems:
            raise problems_error(utxid, problems)
        j.commit(utxid)
        _drop_emptied_trash(ws, target)
        failpoint("undo.before_done")
        j.done(utxid)
        restore = [rid for rid in restore if rid in restored]
    return UndoResult(
        txid=utxid,
        target=target,
        restored=restore,
        conflicts=[Conflict(k, v) for k, v in conflicts.items()],
    )


def _drop_emptied_trash(ws: Workspace, target: str) -> None:
    """After the undo that brought back the last run of apply ``target`` (catalog state
    ``undone``, committed): remove its TRASH.json, then its empty directory, then fsync
    ``.trash``. Without this they stay forever (purge skips undone applies).

    Idempotent, so a recovery of the undo (COMMITTED or ACTIVE with its txid row) repeats
    it; a crash between the steps leaves a stale index or an empty directory, which the
    catalog no longer points anyone to. Anything else found in the directory is left
    alone: we remove only what we put there."""
    row = ws.catalog.tx_row(target)
    if row is None or row["state"] != "undone":
        return
    try:
        ws.store.drop_tx_dir(target)
    except OSError as exc:
        raise StorageError(
            f"cannot remove the emptied trash of {target}: {exc.strerror or exc}",
            hint="the undo itself is done; `retention recover` retries the cleanup",
        ) from None


def _moved_home_evidence(ws: Workspace, target: str) -> str | None:
    """What shows that an undo of ``target`` moved a directory: a run still tombstoned in
    trash whose directory has left trash for its home."""
    store = ws.store
    for rid, r in ws.catalog.tomb_runs(target).items():
        if r["state"] != "trash" or r["trash"] is None or r["path"] is None:
            continue
        if not store.lexists(bytes(r["trash"])) and store.lexists(bytes(r["path"])):
            return f"run {rid!r} is at home although the catalog still has it in trash"
    return None


def _recover_undo(ws: Workspace, tx: TxState, begin: Begin, now: datetime) -> Recovered:
    moves = intended_moves(tx, begin.moves, lambda: _moved_home_evidence(ws, begin.targets[0]))
    committed = decide(ws, tx)
    restored = ws.catalog.restored_by(tx.txid) if committed else set()
    moved, problems = reconcile(ws.store, moves, lambda r: r not in restored)
    if problems:
        raise problems_error(tx.txid, problems)
    if committed:
        _drop_emptied_trash(ws, begin.targets[0])
    failpoint("recover.before_done")
    ws.journal.done(tx.txid)
    return Recovered(tx.txid, "undo", "rolled forward" if committed else "rolled back", moved)


def recover(ws: Workspace, tx: TxState, begin: Begin, now: datetime) -> Recovered:
    """Recovery for undo and purge transactions (apply's is in `retention.coordinator`)."""
    if begin.op == "undo":
        return _recover_undo(ws, tx, begin, now)
    if begin.op == "purge":
        return _recover_purge(ws, tx, begin, now)
    raise RecoveryError(f"the journal holds a transaction of unknown kind {begin.op!r}")


class UndoReport(msgspec.Struct, kw_only=True):
    version: int = 1
    undone: list[UndoResult]
    recovered: list[Recovered]
    # A SIGINT/SIGTERM: the applies undone before it stay undone, the rest were not started.
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        for u in self.undone:
            if u.error_code:
                return u.error_code
        return EXIT_PARTIAL if any(u.conflicts for u in self.undone) else EXIT_OK


class Vacuum(msgspec.Struct, kw_only=True):
    """What ``purge --vacuum`` did to the catalog file after the purge."""

    how: str | None  # vacuum | incremental_vacuum | nothing to reclaim; None: it failed
    error: str | None = None  # why it failed (the purge itself is done)
    hint: str | None = None
    error_code: int | None = None


class PurgeReport(msgspec.Struct, kw_only=True):
    version: int = 1
    purged: list[str]
    runs: int  # runs whose trash was removed (they can no longer be undone)
    bytes: int
    recovered: list[Recovered]
    # The catalog file before the purge, and after it (and after --vacuum): its free pages
    # are the space the dropped tombstones took, reused by SQLite for new rows.
    catalog_before: CatalogSpace | None = None
    catalog_after: CatalogSpace | None = None
    vacuum: Vacuum | None = None  # only with --vacuum
    # A SIGINT/SIGTERM after the purge's commit: it was finished (and --vacuum skipped).
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        return (self.vacuum.error_code if self.vacuum else None) or EXIT_OK


def undo(
    cfg: Config,
    *,
    txid: str | None,
    within: timedelta | None,
    now: datetime | None = None,
    runs: list[str] | None = None,
) -> UndoReport:
    """`retention undo`: bring back the runs of one apply (TXID), of every apply younger
    than ``within`` (newest first), or just ``runs`` (``--run``: one undo transaction per
    apply holding some of them). Conflicts stay in trash and are reported."""
    now = now or datetime.now(UTC)
    with open_workspace(cfg) as ws:
        recovered = recover_all(ws, now)
        only: dict[str, list[RunId]] = {}
        if runs:
            only = run_targets(ws, runs)
            targets = list(only)
        else:
            targets = undo_targets(ws, now, txid=txid, within=within)
        results: list[UndoResult] = []
        stopped: Interruption | None = None
        for n, t in enumerate(targets):
            # One apply that cannot be undone must not hide the ones that were.
            try:
                results.append(undo_one(ws, t, now, only=only.get(t)))
            except Interrupted as exc:
                if not any(r.restored for r in results):
                    raise
                # The applies undone before the signal stay undone and are reported.
                left = ", ".join(targets[n:])
                stopped = interruption(f"{exc.message} Not undone: {left}.")
                break
            except RetentionError as exc:
                if len(targets) == 1:
                    raise
                results.append(
                    UndoResult(
                        txid="",
                        target=t,
                        restored=[],
                        conflicts=[],
                        error=exc.message,
                        error_code=exc.exit_code,
                    )
                )
        compact(ws.journal)
        if stopped is None and SIGNALS.signum is not None:
            n = sum(len(r.restored) for r in results)
            stopped = interruption(
                f"Interrupted ({SIGNALS.name}) after the commit: finished,"
                f" {n:,} run{'' if n == 1 else 's'} restored."
                if n
                else f"Interrupted ({SIGNALS.name}): nothing was restored."
            )
    return UndoReport(undone=results, recovered=recovered, interrupted=stopped)


def purge(
    cfg: Config, *, everything: bool, vacuum: bool = False, now: datetime | None = None
) -> PurgeReport:
    """`retention purge`: remove trash whose grace period is over (or all of it); with
    ``vacuum``, then give the catalog's free pages back to the filesystem (see
    `CatalogFile.reclaim`; a failure there is reported, the purge stays done)."""
    now = now or datetime.now(UTC)
    with open_workspace(cfg) as ws, open_catalog_file(cfg, readonly=not vacuum) as catalog_file:
        recovered = recover_all(ws, now)
        targets = expired_applies(ws, now, everything=everything)
        runs, nbytes = ws.catalog.trash_totals(targets)
        before = catalog_file.space()
        purged = purge_expired(ws, now, targets=targets)
        compact(ws.journal)
        done = None
        stopped = None
        if SIGNALS.signum is not None:  # after the purge's commit: it was finished
            many = "" if runs == 1 else "s"
            skipped = "; the vacuum was skipped." if vacuum else "."
            stopped = interruption(
                f"Interrupted ({SIGNALS.name}) after the commit: finished, the trash of"
                f" {plural(len(purged), 'apply', 'applies')} purged ({runs:,} run{many})" + skipped
                if purged
                else f"Interrupted ({SIGNALS.name}): nothing to purge{skipped}"
            )
            vacuum = False
        if vacuum:
            try:
                done = Vacuum(how=catalog_file.reclaim())
            except RetentionError as exc:
                done = Vacuum(how=None, error=exc.message, hint=exc.hint, error_code=exc.exit_code)
        after = catalog_file.space()
    return PurgeReport(
        purged=purged,
        runs=runs,
        bytes=nbytes,
        recovered=recovered,
        catalog_before=before,
        catalog_after=after,
        vacuum=done,
        interrupted=stopped,
    )
