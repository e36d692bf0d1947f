"""`retention status`: journal state, trash per transaction, the undo window. Read-only:
the journal is read (never truncated) and the catalog opened ``mode=ro``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from journal import CorruptJournal, TxStatus, replay
from retention import txrecords
from retention.config import Config
from retention.durations import format_instant
from retention.layout import StateLayout
from retention.store import display, trash_problems
from retention.tombstones import (
    CatalogSpace,
    RetentionUsage,
    TrashCatalog,
    catalog_space,
    retention_usage,
)


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
    journal_error: str | None = None
    last_apply: dict[str, Any] | None = None
    trash_problems: list[str] = []  # entries of .trash that are symlinks or not directories
    # The catalog file, and how much of it retention's tables take: the tombstones live
    # in the catalog until their apply is purged (or undone).
    catalog: CatalogSpace | None = None
    catalog_usage: RetentionUsage | None = None


def unfinished_txids(state: StateLayout) -> list[str]:
    """Transactions the journal holds unfinished (read-only). Raises `CorruptJournal`."""
    return [t for t, tx in replay(state.journal).items() if tx.status is not TxStatus.DONE]


def journal_warnings(state: StateLayout) -> list[str]:
    """What a read-only command should warn about before trusting catalog and disk."""
    try:
        txids = unfinished_txids(state)
    except CorruptJournal as exc:
        return [f"the journal is corrupt ({exc}); run `retention status`"]
    return [
        f"transaction {t} was interrupted; run `retention recover` first: this plan"
        " reflects a half-finished state."
        for t in txids
    ]


def status(cfg: Config, now: datetime) -> StatusReport:
    """Everything `retention status` shows (read-only). A corrupt journal is reported, not
    raised: the trash and the undo window are still worth seeing then."""
    state = StateLayout(Path(cfg.state_dir))
    journal_error = None
    interrupted = []
    with TrashCatalog(cfg, readonly=True) as cat:
        try:
            txs = replay(state.journal)
        except CorruptJournal as exc:
            journal_error, txs = str(exc), {}
        for txid, tx in txs.items():
            if tx.status is TxStatus.DONE:
                continue
            op = txrecords.decode_begin(tx.begin).op
            if tx.status is TxStatus.ACTIVE:
                would = "roll forward" if cat.tx_row(txid) else "roll back"
            else:
                would = "roll forward" if tx.status is TxStatus.COMMITTED else "roll back"
            interrupted.append(Interrupted(txid, op, tx.status.value, would))
        left = cat.trash_by_apply()
        trash = [
            TrashTx(
                r["txid"],
                r["state"],
                *left.get(r["txid"], (0, 0)),
                r["created_at"],
                r["grace_until"],
                r["state"] == "applied",
            )
            for r in cat.applies()
            if r["state"] not in ("purged", "undone")  # nothing of it is in trash any more
        ]
        last = _last_apply(state, cat)
        space, usage = catalog_space(cat.conn, cat.path), retention_usage(cat.conn)
    live = [t for t in trash if t.undoable]
    return StatusReport(
        now=format_instant(now),
        grace_period=cfg.grace_period,
        journal=str(state.journal),
        journal_error=journal_error,
        interrupted=interrupted,
        trash=trash,
        undoable_runs=sum(t.runs for t in live),
        undoable_bytes=sum(t.bytes for t in live),
        last_apply=last,
        trash_problems=[
            f"{display(rel)} {why}" for rel, why in trash_problems(Path(cfg.artifact_root))
        ],
        catalog=space,
        catalog_usage=usage,
    )


def _last_apply(state: StateLayout, cat: TrashCatalog) -> dict[str, Any] | None:
    """The last apply's report, with what became of it since (undone, purged); None when
    there is none or the file is unreadable (it is a convenience, not a record)."""
    try:
        last = msgspec.json.decode(state.last_apply.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(last, dict):
        return None
    row = cat.tx_row(str(last.get("txid"))) if last.get("txid") else None
    last["state_now"] = row["state"] if row else None
    return last
