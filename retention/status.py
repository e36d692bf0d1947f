"""`retention status`: journal state, trash per transaction, the undo window. Read-only:
the journal is read (never truncated) and the catalog opened ``mode=ro``.

An unfinished transaction in the journal is either RUNNING (a live process holds the
workspace lock: it is working on it, there is nothing to recover) or INTERRUPTED (nobody
holds the lock: its process died, and `retention recover` finishes or rolls it back); see
`observe`. The directories an unfinished transaction has moved are counted, so a trash
full of an interrupted apply's directories is never shown as empty.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from journal import CorruptJournal, TxState, TxStatus, replay
from retention import txrecords
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import format_bytes, format_instant, human_instant, parse_instant, plural
from retention.layout import StateLayout, trash_tx_rel
from retention.reports import LockHolder
from retention.store import LocalStore, display, trash_problems
from retention.tombstones import (
    CatalogSpace,
    RetentionUsage,
    TrashCatalog,
)
from retention.workspace import describe_holder, live_holder, stale_owner


class Interrupted(msgspec.Struct, kw_only=True):
    """An unfinished transaction whose process is gone: `retention recover` finishes it."""

    txid: str
    op: str
    state: str  # active | committed | aborted
    recover_would: str  # roll forward | roll back
    intents: int = 0  # directories it was to move
    in_trash: int = 0  # of those, how many are in trash now (an apply's moved, an undo's left)


class RunningTx(msgspec.Struct, kw_only=True):
    """An unfinished transaction whose process is alive (it holds the workspace lock)."""

    txid: str
    op: str
    state: str  # active | committed | aborted
    intents: int = 0
    in_trash: int = 0


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
    # The live process holding the workspace lock (pid, host, command, since), if any; its
    # unfinished transactions are `running`, not interrupted.
    holder: LockHolder | None = None
    running: list[RunningTx] = []
    # lock.owner left by the process that died holding the lock (with interrupted work).
    last_holder: LockHolder | None = None
    # Directories in trash that belong to interrupted applies the catalog does not hold
    # (recover rolls them back home): not undoable, but not nothing either.
    interrupted_trash_dirs: int = 0


class Observed:
    """The journal as one consistent look saw it, and whether its work is live (a plain
    class, not a dataclass: about 1 ms less at import)."""

    __slots__ = ("holder", "journal_error", "txs")

    def __init__(
        self,
        holder: LockHolder | None,  # the live lock holder: every unfinished transaction is its
        txs: dict[str, TxState],  # every transaction of the journal (DONE ones too)
        journal_error: str | None,
    ) -> None:
        self.holder = holder
        self.txs = txs
        self.journal_error = journal_error

    @property
    def unfinished(self) -> list[tuple[str, TxState, txrecords.Begin]]:
        return [
            (t, tx, txrecords.decode_begin(tx.begin))
            for t, tx in self.txs.items()
            if tx.status is not TxStatus.DONE
        ]


def _replay(state: StateLayout) -> tuple[dict[str, TxState], str | None]:
    try:
        return replay(state.journal), None
    except CorruptJournal as exc:
        return {}, str(exc)


def observe(state: StateLayout) -> Observed:
    """Read the journal between two probes of the workspace lock (read-only).

    Held at the second probe: a live process owns every unfinished transaction (a mutating
    command recovers what it finds before anything else), so they are running. Held at the
    first probe only: the holder finished or died meanwhile, so the journal is read again,
    now that nobody holds it. Free at both: whatever is unfinished was interrupted."""
    before = live_holder(state)
    txs, error = _replay(state)
    holder = live_holder(state)
    if holder is None and before is not None:
        txs, error = _replay(state)
    return Observed(holder, txs, error)


def count_in_trash(root: Path, tx: TxState) -> tuple[int, int]:
    """(intended moves, how many of them are in trash now) of an unfinished transaction:
    one ``lstat`` per intent, relative to the artifact root."""
    from retention.moves import moves_of  # only for an unfinished transaction

    store = LocalStore(root)
    moves = moves_of(tx)
    return len(moves), sum(os.path.lexists(store.abspath(m.trash)) for m in moves)


def unfinished_txids(state: StateLayout) -> list[str]:
    """Transactions the journal holds unfinished (read-only). Raises `CorruptJournal`."""
    return [t for t, tx in replay(state.journal).items() if tx.status is not TxStatus.DONE]


def journal_warnings(state: StateLayout) -> list[str]:
    """What a read-only command should warn about before trusting catalog and disk."""
    seen = observe(state)
    if seen.journal_error is not None:
        return [f"the journal is corrupt ({seen.journal_error}); run `retention status`"]
    if seen.holder is not None:
        return [
            f"{b.op} {t} is running ({describe_holder(seen.holder)}): this plan reflects a"
            " state it is changing; plan again when it has finished."
            for t, _, b in seen.unfinished
        ]
    return [
        f"transaction {t} was interrupted; run `retention recover` first: this plan"
        " reflects a half-finished state."
        for t, _, _ in seen.unfinished
    ]


def status(cfg: Config, now: datetime) -> StatusReport:
    """Everything `retention status` shows (read-only). A corrupt journal is reported, not
    raised: the trash and the undo window are still worth seeing then."""
    state = StateLayout(Path(cfg.state_dir))
    root = Path(cfg.artifact_root)
    interrupted = []
    running = []
    unfinished_trash = 0
    seen = observe(state)
    with open_catalog(cfg) as cat:
        for txid, tx, begin in seen.unfinished:
            intents, in_trash = count_in_trash(root, tx)
            if seen.holder is not None:
                running.append(
                    RunningTx(
                        txid=txid,
                        op=begin.op,
                        state=tx.status.value,
                        intents=intents,
                        in_trash=in_trash,
                    )
                )
                continue
            if tx.status is TxStatus.ACTIVE:
                would = "roll forward" if cat.tx_row(txid) else "roll back"
            else:
                would = "roll forward" if tx.status is TxStatus.COMMITTED else "roll back"
            interrupted.append(
                Interrupted(
                    txid=txid,
                    op=begin.op,
                    state=tx.status.value,
                    recover_would=would,
                    intents=intents,
                    in_trash=in_trash,
                )
            )
            if begin.op == "apply" and would == "roll back":
                unfinished_trash += in_trash
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
        space, usage = cat.space_report()
    live = [t for t in trash if t.undoable]
    return StatusReport(
        now=format_instant(now),
        grace_period=cfg.grace_period,
        journal=str(state.journal),
        journal_error=seen.journal_error,
        interrupted=interrupted,
        holder=seen.holder,
        running=running,
        last_holder=stale_owner(state) if interrupted else None,
        interrupted_trash_dirs=unfinished_trash,
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


# -- for people ----------------------------------------------------------------------------


def _n_dirs(n: int) -> str:
    return f"{n:,} director{'y' if n == 1 else 'ies'}"


def running_line(op: str, txid: str, holder: LockHolder, intents: int, in_trash: int) -> str:
    """``apply a-... is running (pid 1234, `retention apply m.json`, started 3.0 s ago): 10
    of 35 directories moved to trash so far; nothing to recover``."""
    if op == "apply" and intents:
        progress = f": {in_trash:,} of {_n_dirs(intents)} moved to trash so far"
    elif op == "undo" and intents:
        progress = f": {intents - in_trash:,} of {_n_dirs(intents)} moved home so far"
    else:
        progress = ""
    return f"{op} {txid} is running ({describe_holder(holder)}){progress}; nothing to recover"


def _recover_outcome(i: Interrupted) -> str:
    """What `retention recover` would do with an interrupted transaction, concretely."""
    back = i.recover_would == "roll back"
    if i.op == "apply":
        if back:
            moved = f"{_n_dirs(i.in_trash)} in its trash go back home; " if i.in_trash else ""
            return f"{moved}nothing is deleted"
        return "the deletion is finished (its runs stay in trash, undoable)"
    if i.op == "undo":
        if back:
            home = i.intents - i.in_trash
            return (f"{_n_dirs(home)} moved home go back to trash; " if home else "") + (
                "nothing is restored"
            )
        return "the restore is finished"
    if i.op == "purge":
        return "nothing is purged" if back else "the purge is finished (no undo after it)"
    return ""


def interrupted_line(i: Interrupted) -> str:
    outcome = _recover_outcome(i)
    return f"{i.txid} ({i.op}, {i.state}): recover would {i.recover_would}" + (
        f": {outcome}" if outcome else ""
    )


def status_lines(rep: StatusReport) -> list[str]:
    """`retention status` for people (stdout)."""
    now = parse_instant(rep.now)
    lines = [f"Grace period: {rep.grace_period}. Journal: {rep.journal}."]
    if rep.journal_error:
        lines.append(f"The journal is corrupt: {rep.journal_error}")
        lines.append(
            "  Keep a copy of it; `retention recover` refuses to guess. The trash below is"
            " intact and TRASH.json in each transaction lists every original path."
        )
    for problem in rep.trash_problems:
        lines.append(f"Unsafe trash entry (never followed; put the real directory back): {problem}")
    if rep.holder is not None:
        for r in rep.running:
            lines.append(
                "Running: " + running_line(r.op, r.txid, rep.holder, r.intents, r.in_trash) + "."
            )
        if not rep.running:
            lines.append(
                f"Running: a retention process holds the workspace"
                f" ({describe_holder(rep.holder)}); no transaction of it has started yet."
            )
    if rep.interrupted:
        lines.append("Interrupted transactions (run `retention recover`):")
        for i in rep.interrupted:
            lines.append(f"  {interrupted_line(i)}")
        if rep.last_holder is not None:
            lines.append(
                f"  Stopped without finishing: {describe_holder(rep.last_holder)} (gone; it"
                " no longer holds the workspace lock)."
            )
    elif rep.holder is None:
        lines.append("No interrupted transaction.")
    lines += _trash_lines(rep, now)
    last = rep.last_apply
    if last is not None:
        since = {"undone": " (undone since)", "purged": " (purged since)"}.get(
            str(last.get("state_now")), ""
        )
        lines.append(
            f"Last apply: {last.get('txid')} ({last.get('manifest_id')}),"
            f" {plural(int(last.get('deleted_runs') or 0), 'run')} deleted,"
            f" {len(last.get('skipped') or [])} skipped{since}."
        )
    return lines + catalog_lines(rep)


# The catalog file's size and free pages, as status and purge (`retention.views`, which
# imports these) say them. Here rather than in the views: those import the catalog's SQL
# layer and the manifest, which a no-op status does not need (start-up time, issue 13).


def file_size_text(space: Any) -> str:
    wal = f" (+ {format_bytes(space.wal_bytes)} WAL)" if space.wal_bytes else ""
    return format_bytes(space.file_bytes) + wal


def free_pages_text(space: Any) -> str:
    return (
        f"{format_bytes(space.free_bytes)} of free pages"
        f" ({space.free_pages:,} x {space.page_size:,} B)"
    )


def worth_vacuuming(space: Any) -> bool:
    """Free pages are a tenth of the file or more (fewer are soon reused anyway)."""
    return bool(space.free_pages) and space.free_bytes * 10 >= space.file_bytes


def vacuum_hint(space: Any) -> str:
    if space.auto_vacuum == "incremental":
        how = "PRAGMA incremental_vacuum here, as auto_vacuum is incremental: short"
    else:
        how = "a VACUUM: it rewrites the whole file under an exclusive lock"
    return f"`retention purge --vacuum` gives them back to the filesystem ({how})"


def catalog_lines(rep: Any) -> list[str]:
    """How much of the catalog file retention's tables take, and its free pages."""
    space, use = rep.catalog, rep.catalog_usage
    if space is None or use is None:
        return []
    about = "" if use.exact else "about "
    lines = [
        f"Catalog: {file_size_text(space)}; {about}{format_bytes(use.tombstone_bytes)} of it"
        " tombstones (the deleted rows kept for undo, dropped at purge),"
        f" {about}{format_bytes(use.log_bytes)} the deletion log;"
        f" {free_pages_text(space)}."
    ]
    if not use.exact:
        lines.append("  (estimated: this SQLite has no dbstat table to count pages with)")
    if worth_vacuuming(space):
        lines.append(f"  Hint: SQLite reuses free pages; {vacuum_hint(space)}")
    return lines


def _trash_lines(rep: StatusReport, now: datetime) -> list[str]:
    lines = []
    # An apply's directories that the catalog does not hold yet: running, or interrupted
    # before its commit (recover rolls them back).
    pending = [
        (r.txid, r.in_trash, "running apply") for r in rep.running if r.op == "apply" and r.in_trash
    ] + [
        (i.txid, i.in_trash, "interrupted apply")
        for i in rep.interrupted
        if i.op == "apply" and i.recover_would == "roll back" and i.in_trash
    ]
    listed = {t.txid for t in rep.trash}
    pending = [p for p in pending if p[0] not in listed]
    if rep.trash:
        lines.append("Trash:")
        rows = []
        for t in rep.trash:
            if not t.undoable:
                until = t.state
            elif t.grace_until and parse_instant(t.grace_until) <= now:
                until = (
                    f"grace over since {human_instant(t.grace_until)}: undo possible until"
                    " the next purge"
                )
            else:
                until = f"undo possible until {human_instant(t.grace_until or '')}"
            rows.append(
                (
                    t.txid,
                    plural(t.runs, "run"),
                    format_bytes(t.bytes),
                    human_instant(t.deleted_at),
                    until,
                )
            )
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            lines.append(
                f"  {r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  deleted {r[3]:<{w[3]}}  {r[4]}"
            )
    for txid, n, what in pending:
        outcome = (
            "`retention recover` puts them back home"
            if what.startswith("interrupted")
            else "not undoable until it commits"
        )
        lines.append(
            f"  {txid}  {_n_dirs(n)} of the {what} in {display(trash_tx_rel(txid))}: {outcome}"
        )
    if rep.trash:
        lines.append(
            f"Undoable: {plural(rep.undoable_runs, 'run')}, {format_bytes(rep.undoable_bytes)}."
        )
    elif pending:
        lines.insert(0, "Trash (nothing undoable):")
    else:
        lines.append("Trash is empty; nothing to undo.")
    return lines
