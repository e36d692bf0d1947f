"""`retention status`: journal state, trash per transaction, the undo window. Read-only:
the journal is read (never truncated) and the catalog opened ``mode=ro``."""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path

import msgspec

from journal import ABORTED, BEGIN, COMMITTED, DONE, CorruptJournal, read_journal
from retention import txrecords
from retention.config import Config
from retention.durations import format_instant, parse_instant
from retention.errors import RecoveryError
from retention.layout import StateLayout
from retention.tombstones import TrashCatalog


class Interrupted(msgspec.Struct):
    txid: str
    op: str
    state: str  # active | committed | aborted
    recover_would: str  # roll forward | roll back


class TrashTx(msgspec.Struct):
    txid: str
    state: str  # applied | undone | purging | purged
    runs: int
    bytes: int
    deleted_at: str
    grace_until: str | None
    undoable: bool


class StatusReport(msgspec.Struct, kw_only=True):
    version: int = 1
    now: str
    grace_period: str
    journal: str
    interrupted: list[Interrupted]
    trash: list[TrashTx]
    undoable_runs: int
    undoable_bytes: int
    last_apply: msgspec.Raw | None = None


def unfinished_txids(state: StateLayout) -> list[str]:
    """Transactions the journal holds unfinished (read-only; a corrupt journal says so)."""
    if not state.journal.exists():
        return []
    try:
        res = read_journal(state.journal)
    except CorruptJournal:
        return ["(the journal is corrupt)"]
    open_tx: dict[str, None] = {}
    for rec in res.records:
        if rec.kind == BEGIN:
            open_tx[rec.txid] = None
        elif rec.kind == DONE:
            open_tx.pop(rec.txid, None)
    return list(open_tx)


def status(cfg: Config, now: datetime) -> StatusReport:
    state = StateLayout(Path(cfg.state_dir))
    with TrashCatalog(cfg, readonly=True) as cat:
        interrupted = []
        if state.journal.exists():
            try:
                res = read_journal(state.journal)
            except CorruptJournal as exc:
                raise RecoveryError(f"the journal is corrupt: {exc}") from None
            txs: dict[str, list[str]] = {}
            for rec in res.records:
                if rec.kind == BEGIN:
                    txs[rec.txid] = [txrecords.decode_begin(rec.payload).op, "active"]
                elif rec.kind in (COMMITTED, ABORTED, DONE) and rec.txid in txs:
                    txs[rec.txid][1] = {COMMITTED: "committed", ABORTED: "aborted", DONE: "done"}[
                        rec.kind
                    ]
            for txid, (op, st) in txs.items():
                if st == "done":
                    continue
                if st == "active":
                    would = "roll forward" if cat.tx_row(txid) else "roll back"
                else:
                    would = "roll forward" if st == "committed" else "roll back"
                interrupted.append(Interrupted(txid, op, st, would))
        trash = []
        for r in cat.applies():
            if r["state"] in ("purged", "undone"):
                continue  # nothing of it is in trash any more
            # What is in trash now: `runs`/`bytes` of the row count what the apply deleted,
            # including runs a partial undo (conflicts) already brought back.
            left = [t for t in cat.tomb_runs(r["txid"]).values() if t["state"] == "trash"]
            until = r["grace_until"]
            undoable = r["state"] == "applied"
            trash.append(
                TrashTx(
                    r["txid"],
                    r["state"],
                    len(left),
                    sum(t["bytes"] for t in left),
                    r["created_at"],
                    until,
                    undoable,
                )
            )
    last = None
    with contextlib.suppress(OSError):
        last = msgspec.Raw(state.last_apply.read_bytes())
    live = [t for t in trash if t.undoable]
    return StatusReport(
        now=format_instant(now),
        grace_period=cfg.grace_period,
        journal=str(state.journal),
        interrupted=interrupted,
        trash=trash,
        undoable_runs=sum(t.runs for t in live),
        undoable_bytes=sum(t.bytes for t in live),
        last_apply=last,
    )


def expired(t: TrashTx, now: datetime) -> bool:
    return t.grace_until is not None and parse_instant(t.grace_until) <= now
