"""`retention log` and `retention trash`: what retention did, and what is in trash now.

Both are read-only: the catalog is opened ``mode=ro`` and only retention's own tables are
read. `log` lists every committed transaction (``_retention_tx``) newest first, with its
audit row (``_retention_audit``, written in the transaction of its effect; see
`retention.tombstones`) when it has one: a transaction committed by a version without
audit rows is listed with what ``_retention_tx`` recorded (``audited: false``).
`trash` lists every run in trash (``_retention_runs``), per apply, newest first.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import format_bytes, format_instant, human_instant, parse_instant, plural
from retention.errors import catalog_error
from retention.layout import StateLayout
from retention.store import display
from retention.tombstones import AUDIT_TABLE, TOMB_RUNS, TX_TABLE, TrashCatalog


def _is_erasure(created_at: str, grace_until: str | None) -> bool:
    return grace_until is not None and parse_instant(grace_until) <= parse_instant(created_at)


# -- log -----------------------------------------------------------------------------------


class GroupCount(msgspec.Struct):
    column: str
    value: str | None  # the group's value as text (None: NULL)
    runs: int
    bytes: int


class LogEntry(msgspec.Struct, kw_only=True):
    txid: str
    action: str  # apply | undo | purge
    at: str  # ISO-8601 UTC
    state: str  # apply: applied, undone, purging, purged. undo and purge: done
    targets: list[str]  # undo/purge: the applies acted on
    runs: int  # deleted (apply), restored (undo), made final (purge)
    bytes: int
    in_trash: int | None = None  # apply: of its runs, how many are in trash now
    undo_until: str | None = None  # apply: its grace period's end (None: an erasure)
    erasure: bool = False
    audited: bool  # False: committed before audit rows existed (no who/where/tables)
    user: str | None = None
    host: str | None = None
    manifest_id: str | None = None
    manifest_digest: str | None = None
    policy_digest: str | None = None
    tables: dict[str, int] = {}  # rows deleted / restored / made final, per table
    group_by: str | None = None
    groups: list[GroupCount] = []


class LogReport(msgspec.Struct, kw_only=True):
    version: int = 1
    kind: str = "log"
    since: str | None  # ISO-8601: only transactions from then on
    total: int  # transactions matching (before --limit)
    entries: list[LogEntry]  # newest first, at most --limit
    document: str | None = None  # a JSON-document catalog: records per kind, not runs


def read_log(cat: TrashCatalog, *, since: datetime | None = None, limit: int = 0) -> LogReport:
    """The transactions of the catalog, newest first (read-only)."""
    conn = cat.conn
    cutoff = format_instant(since) if since is not None else None
    if not cat.db.has_table(TX_TABLE):
        return LogReport(since=cutoff, total=0, entries=[])
    where = "WHERE julianday(t.created_at) >= julianday(?)" if cutoff else ""
    params: list[Any] = [cutoff] if cutoff else []
    (total,) = conn.execute(f"SELECT count(*) FROM {TX_TABLE} AS t {where}", params).fetchone()
    audited = cat.db.has_table(AUDIT_TABLE)
    cols = (
        "a.txid, a.user, a.host, a.manifest_digest, a.policy_digest, a.group_by, a.runs,"
        " a.bytes, a.tables, a.groups"
        if audited
        else "NULL" + ", NULL" * 9
    )
    join = f"LEFT JOIN {AUDIT_TABLE} AS a ON a.txid = t.txid" if audited else ""
    in_trash = (
        f"(SELECT count(*) FROM {TOMB_RUNS} AS r WHERE r.txid = t.txid AND r.state = 'trash')"
        if cat.db.has_table(TOMB_RUNS)
        else "NULL"
    )
    sql = (
        "SELECT t.txid, t.op, t.state, t.target, t.manifest_id, t.created_at, t.grace_until,"
        f" t.runs, t.bytes, {in_trash}, {cols} FROM {TX_TABLE} AS t {join} {where}"
        " ORDER BY t.created_at DESC, t.txid DESC"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    entries = []
    for row in conn.execute(sql, params).fetchall():
        (txid, op, state, target, mid, created, until, runs, nbytes, left) = row[:10]
        (atx, user, host, mdig, pdig, gby, aruns, abytes, tables, groups) = row[10:]
        apply = op == "apply"
        erasure = apply and _is_erasure(created, until)
        entries.append(
            LogEntry(
                txid=txid,
                action=op,
                at=created,
                state=state,
                targets=[t for t in (target or "").split(",") if t] if not apply else [],
                runs=int(aruns if atx is not None else runs or 0),
                bytes=int(abytes if atx is not None else nbytes or 0),
                in_trash=int(left) if apply and left is not None else None,
                undo_until=None if not apply or erasure else until,
                erasure=erasure,
                audited=atx is not None,
                user=user,
                host=host,
                manifest_id=mid,
                manifest_digest=mdig,
                policy_digest=pdig,
                tables=dict(json.loads(tables)) if tables else {},
                group_by=gby,
                groups=[GroupCount(*g) for g in json.loads(groups)] if groups else [],
            )
        )
    return LogReport(since=cutoff, total=int(total), entries=entries)


def log(cfg: Config, *, since: datetime | None = None, limit: int = 0) -> LogReport:
    """`retention log` (read-only)."""
    with open_catalog(cfg) as cat:
        try:
            return read_log(cat, since=since, limit=limit)
        except cat.Error as exc:
            raise catalog_error(exc, cat.path) from None


_VERB = {"apply": "deleted", "undo": "restored", "purge": "purged"}
GROUPS_SHOWN = 10


def log_lines(rep: LogReport) -> list[str]:
    """``git log`` for people: one block per transaction, newest first."""
    if not rep.entries:
        since = f" since {human_instant(rep.since)}" if rep.since else ""
        return [f"No transactions{since}."]
    out: list[str] = []
    for e in rep.entries:
        if out:
            out.append("")
        out.append(
            f"{e.action} {e.txid}  ({_state(e, 'run' if rep.document is None else 'record')})"
        )
        out.append(f"Date:     {human_instant(e.at)}")
        who = f"{e.user}@{e.host}" if e.audited else "(not recorded: before audit rows)"
        out.append(f"By:       {who}")
        if e.targets:
            out.append(f"Applies:  {', '.join(e.targets)}")
        if e.manifest_id:
            digests = []
            if e.manifest_digest:
                digests.append(f"sha256 {e.manifest_digest[:12]}")
            if e.policy_digest:
                digests.append(f"policy {e.policy_digest[:12]}")
            extra = f" ({', '.join(digests)})" if digests else ""
            out.append(f"Manifest: {e.manifest_id}{extra}")
        verb = _VERB.get(e.action, e.action).capitalize() + ":"
        unit = "record" if rep.document is not None else "run"
        size = f", {format_bytes(e.bytes)}" if e.bytes or rep.document is None else ""
        out.append(f"{verb:<9} {plural(e.runs, unit)}{size}")
        if e.tables:
            rows = ", ".join(f"{t} {n:,}" for t, n in sorted(e.tables.items()))
            out.append(f"{'Kinds:' if rep.document is not None else 'Rows:':<9} {rows}")
        if e.groups:
            shown = e.groups[:GROUPS_SHOWN]
            cols = sorted({g.column for g in e.groups})
            parts = [
                f"{'NULL' if g.value is None else g.value} {g.runs:,} ({format_bytes(g.bytes)})"
                for g in shown
            ]
            more = (
                f", and {len(e.groups) - len(shown):,} more" if len(e.groups) > len(shown) else ""
            )
            out.append(f"Groups:   by {', '.join(cols)}: {', '.join(parts)}{more}")
    if rep.total > len(rep.entries):
        out.append("")
        out.append(f"{len(rep.entries):,} of {rep.total:,} transactions shown (--limit 0 for all).")
    return out


def _state(e: LogEntry, unit: str = "run") -> str:
    if e.action != "apply":
        return e.state
    if e.erasure:
        return f"erasure, {e.state}"
    if e.state == "applied" and e.in_trash is not None and e.in_trash < e.runs:
        undone = e.runs - e.in_trash
        return f"applied, {plural(undone, unit)} undone since, {e.in_trash:,} in trash"
    if e.state == "applied" and e.undo_until:
        return f"applied, undo until {human_instant(e.undo_until)}"
    return e.state


# -- trash ---------------------------------------------------------------------------------


class TrashRun(msgspec.Struct, kw_only=True):
    txid: str
    run_id: str | int  # on a JSON-document catalog: the record's id
    path: str | None  # its directory's home, relative to the artifact root (None: none)
    trash: str | None  # where it lies now, relative to the artifact root
    bytes: int
    deleted_at: str
    undo_until: str | None  # None: an erasure (never undoable)
    undoable: bool  # `retention undo --run` can bring it back (now)
    target: str | None = None  # a JSON-document catalog's target (record kind)


class TrashApply(msgspec.Struct, kw_only=True):
    txid: str
    state: str  # applied | purging
    deleted_at: str
    undo_until: str | None
    runs: int  # in trash now
    bytes: int
    undoable: bool


class TrashReport(msgspec.Struct, kw_only=True):
    version: int = 1
    kind: str = "trash"
    now: str
    artifact_root: str = ""  # paths below are relative to it
    document: str | None = None  # a JSON-document catalog: records, not runs, are in trash
    runs: int  # every run in trash
    bytes: int
    applies: list[TrashApply]  # newest first
    entries: list[TrashRun]  # the runs in trash, newest apply first, by run id (--json: all)
    undoable_runs: int = 0
    # Unfinished transactions of the journal (the directories they moved are not listed):
    # interrupted ones (`retention recover` finishes them) and those running right now.
    interrupted: list[str] = []
    running: list[str] = []
    journal_error: str | None = None


def read_trash(cat: TrashCatalog, now: datetime, *, limit: int = 0) -> TrashReport:
    """The runs in trash, per apply (read-only): the totals from one grouped statement,
    then the runs of each apply, newest apply first, `READ_BATCH` per statement (no read
    lock outlives a batch), ``limit`` of them at most (0: every one)."""
    stamp = format_instant(now)
    if not cat.db.has_table(TOMB_RUNS) or not cat.db.has_table(TX_TABLE):
        return TrashReport(now=stamp, runs=0, bytes=0, applies=[], entries=[])
    left = cat.trash_by_apply()
    applies: list[TrashApply] = []
    for r in cat.applies():
        runs, nbytes = left.get(r["txid"], (0, 0))
        if r["state"] not in ("applied", "purging") or not runs:
            continue
        erasure = _is_erasure(r["created_at"], r["grace_until"])
        applies.append(
            TrashApply(
                txid=r["txid"],
                state=r["state"],
                deleted_at=r["created_at"],
                undo_until=None if erasure else r["grace_until"],
                runs=runs,
                bytes=nbytes,
                undoable=r["state"] == "applied" and not erasure,
            )
        )
    entries: list[TrashRun] = []
    for a in applies:
        for batch in cat._runs_of(a.txid, "path, trash, bytes, state"):
            for rid, path, trash, size, state in batch:
                if state != "trash":
                    continue
                if limit and len(entries) >= limit:
                    break
                entries.append(
                    TrashRun(
                        txid=a.txid,
                        run_id=rid,
                        path=None if path is None else display(bytes(path)),
                        trash=None if trash is None else display(bytes(trash)),
                        bytes=int(size),
                        deleted_at=a.deleted_at,
                        undo_until=a.undo_until,
                        undoable=a.undoable,
                    )
                )
            if limit and len(entries) >= limit:
                break
    return TrashReport(
        now=stamp,
        runs=sum(a.runs for a in applies),
        bytes=sum(a.bytes for a in applies),
        undoable_runs=sum(a.runs for a in applies if a.undoable),
        applies=applies,
        entries=entries,
    )


def trash(cfg: Config, now: datetime, *, limit: int = 0) -> TrashReport:
    """`retention trash` (read-only); ``limit``: runs listed at most (0: all)."""
    from retention.status import observe

    with open_catalog(cfg) as cat:
        try:
            rep = read_trash(cat, now, limit=limit)
        except cat.Error as exc:
            raise catalog_error(exc, cat.path) from None
    rep.artifact_root = str(cfg.artifact_root)
    seen = observe(StateLayout(Path(cfg.state_dir)))
    txids = [t for t, _, _ in seen.unfinished]
    if seen.holder is not None:
        rep.running = txids
    else:
        rep.interrupted = txids
    rep.journal_error = seen.journal_error
    return rep


def trash_lines(rep: TrashReport, limit: int = 50) -> list[str]:
    """``trash-list`` for people: per apply a summary line, then its runs (at most
    ``limit`` run lines in all; 0: every run), then the totals."""
    out: list[str] = []
    for txid in rep.interrupted:
        out.append(
            f"Interrupted transaction {txid}: the directories it moved are not listed;"
            " run `retention recover`."
        )
    for txid in rep.running:
        out.append(f"Running: {txid} (another process); the directories it moves are not listed.")
    if rep.journal_error:
        out.append(f"Journal error: {rep.journal_error} (see `retention status`).")
    if not rep.runs:
        out.append("Trash is empty; nothing to undo.")
        return out
    what = "record" if rep.document is not None else "run"
    shown = 0
    by_apply: dict[str, list[TrashRun]] = {}
    for e in rep.entries:
        by_apply.setdefault(e.txid, []).append(e)
    for a in rep.applies:
        if a.state == "purging":
            when = "being purged: `retention recover` finishes it"
        elif a.undo_until is None:
            when = "an erasure: purged, never undone"
        else:
            when = f"undo until {human_instant(a.undo_until)}"
        out.append(
            f"{a.txid}  deleted {human_instant(a.deleted_at)}  {plural(a.runs, what)}"
            f"  {format_bytes(a.bytes)}  {when}"
        )
        for e in by_apply.get(a.txid, []):
            if limit and shown >= limit:
                break
            shown += 1
            where = "(no directory)"
            if e.path is not None:
                where = str(Path(rep.artifact_root, e.path)) if rep.artifact_root else e.path
            if e.target is not None:
                where = e.target
            out.append(f"  {e.run_id}  {where}  {format_bytes(e.bytes)}")
    if shown < rep.runs:
        out.append(f"... {rep.runs - shown:,} more {what}s (--limit 0 for all)")
    how = "retention undo TXID" if rep.document is not None else "retention undo --run RUN_ID"
    out.append(
        f"Trash: {plural(rep.runs, what)}, {format_bytes(rep.bytes)} in"
        f" {plural(len(rep.applies), 'apply', 'applies')};"
        f" {rep.undoable_runs:,} undoable (`{how}`)."
    )
    return out
