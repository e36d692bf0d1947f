"""The catalog's write side: tombstones, THE commit point of an apply, and txid lookups.

Tables we add to the catalog (all named ``_retention_*``, created inside our own
transaction, never touching the application's tables' schema):

* ``_retention_meta``: the lineage id (see `retention.identity`);
* ``_retention_tx``: one row per committed transaction: the txid is the decision record
  that recovery asks for (presumed abort: no row, no commit);
* ``_retention_runs``: each deleted run with its original path and its place in trash,
  until ``state.history`` after its apply was purged or undone (`compact_history`);
* ``_retention_t_<table>``: the deleted rows of each involved table, untyped columns so
  every value keeps its exact storage class, with the txid, run id and original rowid;
* ``_retention_n_<table>``: for rows that stay but reference a deleted row through a
  ``SET NULL`` / ``SET DEFAULT`` foreign key: the column, its old value and the value set
  (undo puts the old one back where the column still holds the value set);
* ``_retention_audit``: one row per apply, undo and purge, written in the transaction of
  its effect (`AUDIT_TABLE`): who, when, where, what (counts and bytes per table and per
  group, manifest and policy digests), never row data. Kept forever: it is the record of
  what retention did, a few hundred bytes a transaction, and nothing reads it to decide.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from retention.catalog import IDS_TABLE, SqliteCatalog, q
from retention.config import Config
from retention.durations import (
    format_bytes,
    format_duration,
    format_instant,
    parse_duration,
    parse_instant,
)
from retention.errors import CatalogError, StorageError, catalog_error
from retention.policy import RunId
from retention.reporting import Progress

TX_TABLE = "_retention_tx"
TOMB_RUNS = "_retention_runs"
TOMB_PREFIX = "_retention_t_"
NULLS_PREFIX = "_retention_n_"  # columns an apply set (SET NULL / SET DEFAULT), for undo
AUDIT_TABLE = "_retention_audit"
TXID_COL = "__retention_txid"
RUN_COL = "__retention_run"
ROWID_COL = "__retention_rowid"

# Reads that plan an undo or a purge go READ_BATCH runs per statement, each statement read
# to its end before anything else happens: a statement in progress holds a read lock, and in
# a rollback-journal catalog that keeps the application's writers from committing. So they
# wait for one batch at most, never for a whole plan, and never across directory moves.
READ_BATCH = 1000
# Purge drops tombstones, and compaction the deletion log, WRITE_BATCH rows per transaction:
# the application's writers wait for one such transaction at most.
WRITE_BATCH = 20_000

_DDL = f"""
CREATE TABLE IF NOT EXISTS _retention_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS {TX_TABLE} (
    txid TEXT PRIMARY KEY,      -- journal transaction id
    op TEXT NOT NULL,           -- apply | undo | purge
    state TEXT NOT NULL,        -- apply: applied, undone, purging, purged. undo and purge: done
    target TEXT,                -- undo/purge: the apply txid(s) acted on
    manifest_id TEXT,
    created_at TEXT NOT NULL,   -- ISO-8601 UTC
    grace_until TEXT,           -- apply: trash may be purged after this instant
    runs INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    trash_dir TEXT,             -- apply: <artifact root>/.trash/<txid>
    finished_at TEXT            -- purge/undo of this apply: when
);
CREATE TABLE IF NOT EXISTS {TOMB_RUNS} (
    txid TEXT NOT NULL,
    run_id NOT NULL,
    path BLOB,                  -- artifact dir relative to the root (NULL: none on disk)
    trash BLOB,                 -- where it lies in trash, relative to the root
    bytes INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'trash',  -- trash, restored or purged
    undo_txid TEXT,             -- the undo that restored it
    PRIMARY KEY (txid, run_id)
);
CREATE TABLE IF NOT EXISTS _retention_audit (
    txid TEXT PRIMARY KEY,      -- the transaction (its row in _retention_tx: same txid)
    action TEXT NOT NULL,       -- apply | undo | purge
    at TEXT NOT NULL,           -- ISO-8601 UTC, the transaction's time
    target TEXT,                -- undo/purge: the apply txid(s) acted on
    user TEXT NOT NULL,         -- who ran it (login name, or uid N)
    host TEXT NOT NULL,
    manifest_id TEXT,           -- apply: the manifest, its sha256 and its policy's digest
    manifest_digest TEXT,
    policy_digest TEXT,
    group_by TEXT,              -- apply: the policy's first group_by column (groups counted by)
    runs INTEGER NOT NULL,      -- runs deleted, restored or purged
    bytes INTEGER NOT NULL,     -- their artifact bytes
    tables TEXT NOT NULL,       -- JSON object: table name to rows deleted/restored/purged
    groups TEXT                 -- JSON [[column, value, runs, bytes], ...] (value as text)
);
"""


class CommitRefused(CatalogError):
    """The catalog refused the transaction, and certainly did not commit it (it was rolled
    back before COMMIT, or COMMIT itself was refused as busy): the caller may roll back
    its own side without asking the catalog, which may still be locked."""


class NothingDeleted(Exception):
    """`WritableCatalog.commit_delete` kept none of its runs, so it committed nothing (an
    apply that deletes nothing is not an apply: no txid row, nothing to undo)."""

    def __init__(self, dropped: dict[RunId, str]) -> None:
        super().__init__(f"{len(dropped)} runs dropped at commit, none deleted")
        self.dropped = dropped


@dataclass(frozen=True)
class TombRun:
    """A run about to be deleted: its expected row fingerprint and where its directory goes."""

    run_id: RunId
    rows_fp: str
    path: bytes | None
    trash: bytes | None
    bytes: int


@dataclass(frozen=True)
class TxInfo:
    txid: str
    op: str
    manifest_id: str | None
    created_at: str
    grace_until: str | None
    trash_dir: str | None
    target: str | None = None
    writeback: Writeback | None = None
    # For the audit row: the manifest's sha256, its policy digest, and the first group_by
    # column of its policy (the audit counts runs and bytes per value of it).
    manifest_digest: str | None = None
    policy_digest: str | None = None
    group_by: str | None = None


@dataclass(frozen=True)
class Writeback:
    """An apply's cleanup written back to the policy rows (``[policy.rows]``), in its
    commit transaction: for each enabled group (the ``key`` of ``table``, as text), when it
    ran (``at``) and how many of its runs it deleted (``count``, 0 included)."""

    table: str
    key: str
    join: str  # the runs table's column holding each run's group
    groups: tuple[str, ...]
    at: str | None
    count: str | None
    accumulate: bool = False  # a later batch of the same apply: add to the count


def _ensure_tomb(conn: sqlite3.Connection, table: str, columns: list[str]) -> str:
    tomb = TOMB_PREFIX + table
    have = [r[1] for r in conn.execute(f"PRAGMA table_info({q(tomb)})")]
    if not have:
        # Untyped columns (BLOB affinity): values keep their exact storage class.
        cols = ", ".join(q(c) for c in columns)
        conn.execute(
            f"CREATE TABLE {q(tomb)} ({q(TXID_COL)} TEXT NOT NULL, {q(RUN_COL)},"
            f" {q(ROWID_COL)} INTEGER, {cols})"
        )
        conn.execute(f"CREATE INDEX {q(tomb + '_tx')} ON {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)})")
    else:
        for c in columns:
            if c not in have:  # the application added a column since the last apply
                conn.execute(f"ALTER TABLE {q(tomb)} ADD COLUMN {q(c)}")
    return tomb


OLD_COL, NEW_COL, COL_COL = "__retention_old", "__retention_new", "__retention_col"


def _ensure_nulls(conn: sqlite3.Connection, table: str) -> str:
    name = NULLS_PREFIX + table
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {q(name)} ({q(TXID_COL)} TEXT NOT NULL, {q(RUN_COL)},"
        f" {q(ROWID_COL)} INTEGER, {q(COL_COL)} TEXT, {q(OLD_COL)}, {q(NEW_COL)})"
    )
    conn.execute(
        f"CREATE INDEX IF NOT EXISTS {q(name + '_tx')} ON {q(name)} ({q(TXID_COL)}, {q(RUN_COL)})"
    )
    return name


def _default_value(conn: sqlite3.Connection, table: str, column: str) -> Any:
    """The value ``column``'s declared DEFAULT gives now (None without one)."""
    for row in conn.execute(f"PRAGMA table_info({q(table)})"):
        if row[1] == column and row[4] is not None:
            return conn.execute(f"SELECT {row[4]}").fetchone()[0]
    return None


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        is not None
    )


# -- the audit row: one per apply, undo and purge, in the transaction of its effect --------


def current_user() -> str:
    """Who runs this process, never failing: the login name (``getpass``, then the password
    database), else ``uid N``."""
    with contextlib.suppress(Exception):
        return getpass.getuser()
    uid = os.getuid()
    with contextlib.suppress(Exception):
        import pwd

        return pwd.getpwuid(uid).pw_name
    return f"uid {uid}"


def current_host() -> str:
    with contextlib.suppress(Exception):
        return socket.gethostname()
    return ""


@dataclass(frozen=True)
class AuditRow:
    txid: str
    action: str
    at: str
    runs: int
    bytes: int
    tables: dict[str, int]
    groups: list[tuple[str, str | None, int, int]] | None = None
    target: str | None = None
    manifest_id: str | None = None
    manifest_digest: str | None = None
    policy_digest: str | None = None
    group_by: str | None = None


def _ensure_audit(conn: sqlite3.Connection) -> None:
    stmt = _DDL[_DDL.index(f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE}") :]
    conn.execute(stmt.strip().rstrip(";"))


def _write_audit(conn: sqlite3.Connection, a: AuditRow) -> None:
    """Inside the caller's transaction: the audit row of ``a.txid``."""
    _ensure_audit(conn)
    conn.execute(
        f"INSERT INTO {AUDIT_TABLE} (txid, action, at, target, user, host, manifest_id,"
        " manifest_digest, policy_digest, group_by, runs, bytes, tables, groups)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            a.txid,
            a.action,
            a.at,
            a.target,
            current_user(),
            current_host(),
            a.manifest_id,
            a.manifest_digest,
            a.policy_digest,
            a.group_by,
            a.runs,
            a.bytes,
            json.dumps(a.tables, sort_keys=True),
            None if a.groups is None else json.dumps([list(g) for g in a.groups]),
        ),
    )


def _group_counts(
    conn: sqlite3.Connection, runs_table: str, column: str, txid: str, where: str = ""
) -> list[tuple[str, str | None, int, int]] | None:
    """Runs and bytes per value of ``column`` among the runs of apply ``txid`` still
    tombstoned (``where``: a further condition on ``tb``, the runs table's tombstone, and
    ``r``, their ``_retention_runs`` rows): one grouped statement. None when the
    tombstone has no such column."""
    tomb = TOMB_PREFIX + runs_table
    cols = {r[1] for r in conn.execute(f"PRAGMA table_info({q(tomb)})")}
    if column not in cols:
        return None
    rows = conn.execute(
        f"SELECT CAST(tb.{q(column)} AS TEXT), count(*), coalesce(sum(r.bytes), 0)"
        f" FROM {q(tomb)} AS tb JOIN {TOMB_RUNS} AS r"
        f" ON r.txid = tb.{q(TXID_COL)} AND r.run_id = tb.{q(RUN_COL)}"
        f" WHERE tb.{q(TXID_COL)} = ? {where} GROUP BY 1 ORDER BY 1",
        (txid,),
    ).fetchall()
    return [(column, v, int(n), int(b)) for v, n, b in rows]


def _audit_group_by(conn: sqlite3.Connection, apply_txid: str) -> str | None:
    """The group column the audit row of an apply counted by (None: none, or no row)."""
    if not _has_table(conn, AUDIT_TABLE):
        return None
    row = conn.execute(
        f"SELECT group_by FROM {AUDIT_TABLE} WHERE txid = ?", (apply_txid,)
    ).fetchone()
    return None if row is None or row[0] is None else str(row[0])


class WritableCatalog(SqliteCatalog):
    """A catalog opened read-write by apply, undo, purge and recover."""

    def __init__(self, cfg: Any, *, readonly: bool = False) -> None:
        super().__init__(cfg, readonly=readonly)

    def overwrite_deleted(self) -> None:
        # Deleted content is zeroed in the pages written (the WAL, then the file), not left
        # in free space for anyone reading the file's bytes.
        self.conn.execute("PRAGMA secure_delete = ON")

    def _commit_tx(self, body: Any, before_commit: Any) -> Any:
        """Run ``body()`` inside BEGIN IMMEDIATE ... COMMIT; roll back explicitly on any error.

        Raises `CommitRefused` when the catalog certainly did not commit (any error before
        COMMIT, or COMMIT refused as busy), `CatalogError` when COMMIT itself failed
        otherwise (an I/O error: whether it committed is for recovery to ask)."""
        conn = self.conn
        t0 = time.monotonic()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._refused(exc, t0) from None
        committing = False
        try:
            result = body()
            if before_commit is not None:
                before_commit()
            committing = True
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            if conn.in_transaction:
                # The original error matters; SQLite also rolls back when the connection closes.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
                if not committing or code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise self._refused(exc, t0) from None
                raise catalog_error(exc, self.path) from None
            raise

    def _refused(self, exc: sqlite3.Error, t0: float) -> CommitRefused:
        err = catalog_error(exc, self.path)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            waited = format_duration(time.monotonic() - t0)
            return CommitRefused(
                f"catalog {self.path} is busy: another writer held it longer than"
                f" catalog.busy_timeout ({self.cfg.busy_timeout}; waited {waited})",
                hint="retry when the application's write finishes, or raise"
                " catalog.busy_timeout (RETENTION_BUSY_TIMEOUT)",
            )
        return CommitRefused(err.message, hint=err.hint)

    def tx_row(self, txid: str) -> dict[str, Any] | None:
        """The recorded row of a transaction, or None if the catalog never committed it."""
        if not _has_table(self.conn, TX_TABLE):
            return None
        cur = self.conn.execute(f"SELECT * FROM {TX_TABLE} WHERE txid = ?", (txid,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def tomb_runs(self, txid: str) -> dict[RunId, dict[str, Any]]:
        """Tombstoned runs of an apply transaction (empty if none). Read in batches."""
        if not _has_table(self.conn, TOMB_RUNS):
            return {}
        names = [r[1] for r in self.conn.execute(f"PRAGMA table_info({TOMB_RUNS})")]
        return {
            row[0]: dict(zip(names, row[1:], strict=True))
            for batch in self._runs_of(txid, ", ".join(q(n) for n in names))
            for row in batch
        }

    def _runs_of(self, txid: str, columns: str) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of ``_retention_runs`` of ``txid`` (``run_id``, then ``columns``), in
        run id order, `READ_BATCH` at a time: each batch one statement on the primary key
        (keyset: the next starts after the last run id), fetched whole before it is
        yielded, so no read lock outlives a batch whatever the caller does in between."""
        sql = f"SELECT run_id, {columns} FROM {TOMB_RUNS} WHERE txid = ?"
        rows = self.conn.execute(f"{sql} ORDER BY run_id LIMIT ?", (txid, READ_BATCH)).fetchall()
        while rows:
            yield rows
            if len(rows) < READ_BATCH:
                return
            rows = self.conn.execute(
                f"{sql} AND run_id > ? ORDER BY run_id LIMIT ?", (txid, rows[-1][0], READ_BATCH)
            ).fetchall()

    def commit_delete(
        self,
        info: TxInfo,
        lineage: str,
        runs: list[TombRun],
        *,
        before_commit: Any = None,
    ) -> dict[RunId, str]:
        """THE commit point of an apply: in one transaction, re-check each run, copy its rows
        of every involved table into tombstones, delete them, and record the txid.

        A run whose rows changed since the plan (fingerprint differs or it is gone), or that is
        now protected, is left alone; the returned dict maps those run ids to the reason. Raises
        `CatalogError` (after an explicit ROLLBACK) if the transaction cannot commit, and
        `NothingDeleted` (after a ROLLBACK) when no run is left to delete; then the catalog is
        unchanged.
        """
        conn = self.conn
        cfg = self.cfg
        expected = {r.run_id: r for r in runs}
        # A progress line on a terminal: one step per set-based statement of the commit.
        bar = Progress("committing", 2 * len(self.schema.children) + 5)

        def body() -> dict[RunId, str]:
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO _retention_meta VALUES ('lineage_id', ?)", (lineage,)
            )
            self.load_ids(expected)
            bar.advance()
            dropped: dict[RunId, str] = {}
            current = self.fingerprints()
            bar.advance()
            for rid, r in expected.items():
                fp = current.get(rid)
                if fp is None:
                    dropped[rid] = "no longer in the catalog"
                elif fp != r.rows_fp:
                    dropped[rid] = "catalog rows changed since the plan"
            # The runs table unaliased, as plan evaluated these expressions, with SQLite's own
            # truth (as in WHERE; NULL is false) on both sides.
            base = (
                f"SELECT {q(cfg.id_column)} FROM {q(cfg.runs_table)}"
                f" WHERE {q(cfg.id_column)} IN (SELECT id FROM {IDS_TABLE})"
            )
            if cfg.protect:
                for (rid,) in conn.execute(f"{base} AND ({cfg.protect})"):
                    dropped.setdefault(rid, "now protected")
            if cfg.filter:
                for (rid,) in conn.execute(
                    f"{base} AND NOT (CASE WHEN ({cfg.filter}) THEN 1 ELSE 0 END)"
                ):
                    dropped.setdefault(rid, "no longer selected by catalog.filter")
            # A run referenced (RESTRICT, or NO ACTION declared blocking) by a row that stays.
            for rid, why in self.blocked_runs().items():
                dropped.setdefault(rid, why)
            if len(dropped) == len(expected):
                raise NothingDeleted(dropped)
            if dropped:
                conn.executemany(f"DELETE FROM {IDS_TABLE} WHERE id = ?", ((k,) for k in dropped))
            if info.writeback is not None:
                self._write_back(info.writeback, info.created_at)
            # Tombstones: runs table, then children, each one INSERT ... SELECT.
            run_cols = self.schema.runs_columns
            tomb = _ensure_tomb(conn, cfg.runs_table, run_cols)
            cols = ", ".join(q(c) for c in run_cols)
            conn.execute(
                f"INSERT INTO {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)}, {cols})"
                f" SELECT ?, ids.id, r.rowid, {', '.join('r.' + q(c) for c in run_cols)}"
                f" FROM {q(cfg.runs_table)} AS r JOIN {IDS_TABLE} AS ids"
                f" ON r.{q(cfg.id_column)} = ids.id",
                (info.txid,),
            )
            bar.advance()
            for inv in self.schema.children:
                tomb = _ensure_tomb(conn, inv.table, inv.columns)
                cols = ", ".join(q(c) for c in inv.columns)
                sel = self.child_select(inv, ", ".join(f"t0.{q(c)}" for c in inv.columns))
                conn.execute(
                    f"INSERT INTO {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)}, {cols})"
                    f" SELECT ?, __run, __rowid, {cols} FROM ({sel})",
                    (info.txid,),
                )
                bar.advance()
            # Rows that stay but reference a deleted row (SET NULL / SET DEFAULT): record
            # each column's old value and the value it gets, before the rows they reference go.
            setting: list[tuple[str, str, str]] = []
            for hop in self.schema.setters:
                nulls = _ensure_nulls(conn, hop.child)
                for col in hop.child_cols:
                    new = None
                    if hop.action == "SET DEFAULT":
                        new = _default_value(conn, hop.child, col)
                    conn.execute(
                        f"INSERT INTO {q(nulls)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)},"
                        f" {q(COL_COL)}, {q(OLD_COL)}, {q(NEW_COL)})"
                        f" SELECT DISTINCT ?, __run, __rowid, ?, __old, ?"
                        f" FROM ({self.referencing_select(hop, f'c.{q(col)} AS __old')})",
                        (info.txid, col, new),
                    )
                    setting.append((nulls, hop.child, col))
            # Deletes: deepest children first, the runs table last.
            deleted_rows: dict[str, int] = {}
            for inv in reversed(self.schema.children):
                n = conn.execute(
                    f"DELETE FROM {q(inv.table)} WHERE rowid IN"
                    f" (SELECT __rowid FROM ({self.child_select(inv, '1')}))"
                ).rowcount
                deleted_rows[inv.table] = deleted_rows.get(inv.table, 0) + max(n, 0)
                bar.advance()
            deleted_rows[cfg.runs_table] = conn.execute(
                f"DELETE FROM {q(cfg.runs_table)} WHERE {q(cfg.id_column)} IN"
                f" (SELECT id FROM {IDS_TABLE})"
            ).rowcount
            bar.advance()
            for nulls, table, col in setting:  # rows deleted meanwhile are simply gone
                conn.execute(
                    f"UPDATE {q(table)} SET {q(col)} = n.v FROM (SELECT {q(ROWID_COL)} AS r,"
                    f" {q(NEW_COL)} AS v FROM {q(nulls)} WHERE {q(TXID_COL)} = ?"
                    f" AND {q(COL_COL)} = ?) AS n WHERE {q(table)}.rowid = n.r",
                    (info.txid, col),
                )
            kept = [r for r in runs if r.run_id not in dropped]
            conn.executemany(
                f"INSERT INTO {TOMB_RUNS} (txid, run_id, path, trash, bytes)"
                " VALUES (?, ?, ?, ?, ?)",
                ((info.txid, r.run_id, r.path, r.trash, r.bytes) for r in kept),
            )
            conn.execute(
                f"INSERT INTO {TX_TABLE} (txid, op, state, target, manifest_id, created_at,"
                " grace_until, runs, bytes, trash_dir)"
                " VALUES (?, ?, 'applied', ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.txid,
                    info.op,
                    info.target,
                    info.manifest_id,
                    info.created_at,
                    info.grace_until,
                    len(kept),
                    sum(r.bytes for r in kept),
                    info.trash_dir,
                ),
            )
            _write_audit(
                conn,
                AuditRow(
                    txid=info.txid,
                    action=info.op,
                    at=info.created_at,
                    runs=len(kept),
                    bytes=sum(r.bytes for r in kept),
                    tables=deleted_rows,
                    groups=None
                    if info.group_by is None
                    else _group_counts(conn, cfg.runs_table, info.group_by, info.txid),
                    target=info.target,
                    manifest_id=info.manifest_id,
                    manifest_digest=info.manifest_digest,
                    policy_digest=info.policy_digest,
                    group_by=info.group_by,
                ),
            )
            return dropped

        try:
            return self._commit_tx(body, before_commit)
        finally:
            bar.close()

    def _write_back(self, wb: Writeback, when: str) -> None:
        """Inside the commit transaction, before the deletes: count the runs to delete per
        group (one grouped scan of the loaded ids) and update each enabled group's row."""
        cfg = self.cfg
        counts = dict(
            self.conn.execute(
                f"SELECT CAST({q(wb.join)} AS TEXT), count(*) FROM {q(cfg.runs_table)}"
                f" WHERE {q(cfg.id_column)} IN (SELECT id FROM {IDS_TABLE}) GROUP BY 1"
            )
        )
        sets, values = [], []
        if wb.at:
            sets.append(f"{q(wb.at)} = ?")
            values.append(lambda g: when)
        if wb.count:
            # A batch after the first of the same apply adds to what the first ones wrote.
            add = f"COALESCE({q(wb.count)}, 0) + " if wb.accumulate else ""
            sets.append(f"{q(wb.count)} = {add}?")
            values.append(lambda g: counts.get(g, 0))
        if not sets:
            return
        self.conn.executemany(
            f"UPDATE {q(wb.table)} SET {', '.join(sets)} WHERE {q(wb.key)} = ?",
            ((*(v(g) for v in values), g) for g in wb.groups),
        )

    def applied_by_manifest(self, manifest_id: str) -> list[str]:
        """Txids of committed applies of this manifest (read-only)."""
        if not _has_table(self.conn, TX_TABLE):
            return []
        return [
            r[0]
            for r in self.conn.execute(
                f"SELECT txid FROM {TX_TABLE} WHERE op = 'apply' AND manifest_id = ?",
                (manifest_id,),
            )
        ]

    def existing_ids(self) -> set[RunId]:
        """Which loaded ids still exist in the runs table (read-only)."""
        cfg = self.cfg
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT ids.id FROM {IDS_TABLE} AS ids JOIN {q(cfg.runs_table)} AS r"
                f" ON r.{q(cfg.id_column)} = ids.id"
            )
        }


def _tables_like(conn: sqlite3.Connection, prefix: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE ? ESCAPE '\\'",
            (prefix.replace("_", "\\_") + "%",),
        )
    ]


def _tomb_tables(conn: sqlite3.Connection) -> list[str]:
    return _tables_like(conn, TOMB_PREFIX)


class TrashCatalog(WritableCatalog):
    """The catalog side of undo and purge."""

    def trash_totals(self, txids: list[str]) -> tuple[int, int]:
        """Runs and bytes still in trash for these applies (read-only, in batches)."""
        if not txids or not _has_table(self.conn, TOMB_RUNS):
            return 0, 0
        runs = nbytes = 0
        for txid in txids:
            for batch in self._runs_of(txid, "state, bytes"):
                for _, state, size in batch:
                    if state == "trash":
                        runs += 1
                        nbytes += int(size)
        return runs, nbytes

    def trash_slots(self) -> dict[bytes, RunId]:
        """Where each run deleted into trash lies (relative to the root). Read-only."""
        if not _has_table(self.conn, TOMB_RUNS):
            return {}
        return {
            bytes(trash): rid
            for rid, trash in self.conn.execute(
                f"SELECT run_id, trash FROM {TOMB_RUNS} WHERE state = 'trash' AND trash IS NOT NULL"
            )
        }

    def live_applies(self) -> set[str]:
        """Applies whose trash area may still exist (not purged). Read-only."""
        if not _has_table(self.conn, TX_TABLE):
            return set()
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT txid FROM {TX_TABLE} WHERE op = 'apply' AND state != 'purged'"
            )
        }

    def trash_by_apply(self) -> dict[str, tuple[int, int]]:
        """Runs and bytes still in trash, per apply (read-only, one query)."""
        if not _has_table(self.conn, TOMB_RUNS):
            return {}
        return {
            txid: (int(n), int(b))
            for txid, n, b in self.conn.execute(
                f"SELECT txid, count(*), coalesce(sum(bytes), 0) FROM {TOMB_RUNS}"
                " WHERE state = 'trash' GROUP BY txid"
            )
        }

    def applies(self) -> list[dict[str, Any]]:
        """Every recorded apply, newest first (read-only)."""
        if not _has_table(self.conn, TX_TABLE):
            return []
        cur = self.conn.execute(
            f"SELECT * FROM {TX_TABLE} WHERE op = 'apply' ORDER BY created_at DESC, txid DESC"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def run_places(self, run_id: str) -> list[dict[str, Any]]:
        """Every apply that deleted run ``run_id`` (given as text: an integer id matches
        too), newest first, with the run's state and its apply's row (read-only)."""
        if not _has_table(self.conn, TOMB_RUNS) or not _has_table(self.conn, TX_TABLE):
            return []
        keys: list[Any] = [run_id]
        with contextlib.suppress(ValueError):
            if str(int(run_id)) == run_id:
                keys.append(int(run_id))
        cur = self.conn.execute(
            f"SELECT r.txid, r.run_id, r.state AS run_state, r.undo_txid, r.bytes, r.path,"
            f" t.state, t.created_at, t.grace_until, t.finished_at FROM {TOMB_RUNS} AS r"
            f" JOIN {TX_TABLE} AS t ON t.txid = r.txid"
            f" WHERE r.run_id IN ({', '.join('?' * len(keys))})"
            " ORDER BY t.created_at DESC, t.txid DESC",
            keys,
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def _rowid_is_key(self, table: str) -> bool:
        """Whether the rowid is the table's INTEGER PRIMARY KEY (then other rows may refer
        to it, and it must come back unchanged)."""
        pks = [r for r in self.conn.execute(f"PRAGMA table_info({q(table)})") if r[5] > 0]
        return len(pks) == 1 and str(pks[0][2]).upper() == "INTEGER"

    def _restore_tables(self) -> list[str]:
        return [self.cfg.runs_table, *(c.table for c in self.schema.children)]

    def _id_ranges(self) -> list[tuple[int, int]]:
        """The loaded ids (see `load_ids`) as rowid ranges of `READ_BATCH` each: every read
        that joins them to the catalog goes one range per statement."""
        top = self.conn.execute(f"SELECT max(rowid) FROM {IDS_TABLE}").fetchone()[0] or 0
        return [(lo, lo + READ_BATCH - 1) for lo in range(1, top + 1, READ_BATCH)]

    def _shared(self, txid: str, ranges: list[tuple[int, int]]) -> dict[RunId, set[RunId]]:
        """Runs of ``txid`` (those loaded) that share a tombstoned row (a row linking two
        runs): they can only come back together (read-only).

        The (row, run) pairs of their tombstones are copied into a temp table, a batch of
        runs per statement (each served by the ``(txid, run)`` index); the rows tombstoned
        for more than one run are then found by one grouped scan of that copy, which holds
        no lock on the catalog at all. Linear in the tombstones: never a self-join on the
        original rowid, which no index serves and which grew with the square of the rows.
        Each shared row links its runs to the first of them (a star): enough for the
        connected groups `undo_plan` builds.
        """
        conn = self.conn
        rid, run = q(ROWID_COL), q(RUN_COL)
        conn.execute("DROP TABLE IF EXISTS temp._retention_rows")
        conn.execute("CREATE TEMP TABLE _retention_rows (t INTEGER NOT NULL, r, run)")
        for n, table in enumerate(self._restore_tables()):
            tomb = TOMB_PREFIX + table
            if not _has_table(conn, tomb):
                continue
            for lo, hi in ranges:
                conn.execute(
                    f"INSERT INTO temp._retention_rows SELECT ?, tb.{rid}, tb.{run}"
                    f" FROM {IDS_TABLE} AS ids JOIN {q(tomb)} AS tb"
                    f" ON tb.{q(TXID_COL)} = ? AND tb.{run} = ids.id"
                    " WHERE ids.rowid BETWEEN ? AND ?",
                    (n, txid, lo, hi),
                )
        conn.execute("CREATE INDEX temp._retention_rows_tr ON _retention_rows (t, r, run)")
        links: dict[RunId, set[RunId]] = {}
        hub: dict[tuple[int, Any], RunId] = {}
        for t, row, member in conn.execute(
            "SELECT t, r, run FROM temp._retention_rows WHERE (t, r) IN"
            " (SELECT t, r FROM temp._retention_rows GROUP BY t, r"
            " HAVING count(DISTINCT run) > 1)"
        ).fetchall():
            first = hub.setdefault((t, row), member)
            if first != member:
                links.setdefault(first, set()).add(member)
                links.setdefault(member, set()).add(first)
        conn.execute("DROP TABLE temp._retention_rows")
        return links

    def undo_plan(
        self, txid: str, run_ids: list[RunId], blocked: dict[RunId, str]
    ) -> tuple[dict[RunId, str], list[list[RunId]]]:
        """Which runs of ``txid`` cannot be restored, and the rest in groups that must be
        restored together. Read-only, and in batches: every statement reads the catalog
        for `READ_BATCH` runs at most and is read to its end, so the application's writers
        never wait for the whole plan (nor for the moves after it).

        A run conflicts when ``blocked`` says so (its path is taken, say), when its id exists
        again, or when a row id it needs is taken in a table whose rowid is the primary key.
        A run sharing a row with a conflicting run conflicts too: restoring one half of a
        link row would leave it pointing at a run that is not there.
        """
        cfg = self.cfg
        conn = self.conn
        self.load_ids(run_ids)
        ranges = self._id_ranges()
        out: dict[RunId, str] = dict(blocked)
        for lo, hi in ranges:
            for (rid,) in conn.execute(
                f"SELECT ids.id FROM {IDS_TABLE} AS ids JOIN {q(cfg.runs_table)} AS r"
                f" ON r.{q(cfg.id_column)} = ids.id WHERE ids.rowid BETWEEN ? AND ?",
                (lo, hi),
            ).fetchall():
                out.setdefault(rid, f"run id {rid!r} exists again in {cfg.runs_table!r}")
        for table in self._restore_tables():
            tomb = TOMB_PREFIX + table
            if not _has_table(conn, tomb) or not self._rowid_is_key(table):
                continue
            for lo, hi in ranges:
                for (rid,) in conn.execute(
                    f"SELECT DISTINCT tb.{q(RUN_COL)} FROM {IDS_TABLE} AS ids"
                    f" JOIN {q(tomb)} AS tb ON tb.{q(TXID_COL)} = ? AND tb.{q(RUN_COL)} = ids.id"
                    f" JOIN {q(table)} AS t ON t.rowid = tb.{q(ROWID_COL)}"
                    " WHERE ids.rowid BETWEEN ? AND ?",
                    (txid, lo, hi),
                ).fetchall():
                    out.setdefault(rid, f"a row of {table!r} took its place (same rowid)")
        links = self._shared(txid, ranges)
        wanted = set(run_ids)
        todo = list(out)
        while todo:
            for other in links.get(todo.pop(), ()):
                if other not in out and other in wanted:
                    out[other] = "shares a row with a run that cannot be restored"
                    todo.append(other)
        groups: list[list[RunId]] = []
        seen: set[RunId] = set()
        for rid in run_ids:
            if rid in out or rid in seen:
                continue
            group, stack = [], [rid]
            seen.add(rid)
            while stack:
                cur = stack.pop()
                group.append(cur)
                for other in links.get(cur, ()):
                    if other not in seen and other not in out:
                        seen.add(other)
                        stack.append(other)
            groups.append(group)
        return out, groups

    def commit_restore(
        self,
        undo_txid: str,
        target: str,
        groups: list[list[RunId]],
        now: str,
        *,
        before_commit: Any,
    ) -> dict[RunId, str]:
        """THE commit point of an undo: in one transaction re-insert the rows of the runs in
        ``groups`` from the tombstones of ``target`` (parents first, exact values; rowids kept
        where they are free, always where the rowid is the key), mark them restored, drop
        their tombstones and record ``undo_txid``.

        All at once when possible; if a constraint of the application refuses (a UNIQUE
        index, say), group by group, each under its own SAVEPOINT: the groups refused are
        returned with the reason, left in trash, and the rest restored.
        """
        conn = self.conn
        tables = self._restore_tables()
        key_tables: set[str] = set()
        tombs: set[str] = set()
        group_by: list[str | None] = [None]

        def restore(ids: list[RunId]) -> tuple[dict[str, int], list[Any]]:
            """Restore ``ids``; returns rows restored per table and, by the apply's
            audit group column, runs and bytes per group (for the audit row)."""
            self.load_ids(ids)
            counts: dict[str, int] = {}
            by_group: list[Any] = []
            sel = f"{q(TXID_COL)} = ? AND {q(RUN_COL)} IN (SELECT id FROM {IDS_TABLE})"
            for table in tables:
                tomb = TOMB_PREFIX + table
                if tomb not in tombs:
                    continue
                tomb_cols = [r[1] for r in conn.execute(f"PRAGMA table_info({q(tomb)})")][3:]
                live = set(self._columns(table))
                names = ", ".join(q(c) for c in tomb_cols if c in live)
                rid = q(ROWID_COL)
                # A row linking two deleted runs was tombstoned once per run: restore it once.
                rows = f"FROM {q(tomb)} WHERE {sel}"
                if table in key_tables:
                    n = conn.execute(
                        f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
                        f" GROUP BY {rid} ORDER BY {rid}",
                        (target,),
                    ).rowcount
                    counts[table] = counts.get(table, 0) + max(n, 0)
                    continue
                # Not the key: keep each rowid that is still free; rows whose rowid the
                # application reused since come back with a new one (nothing refers to it).
                conn.execute("DROP TABLE IF EXISTS temp._retention_taken")
                conn.execute(
                    f"CREATE TEMP TABLE _retention_taken AS SELECT DISTINCT {rid} AS r {rows}"
                    f" AND {rid} IN (SELECT rowid FROM {q(table)})",
                    (target,),
                )
                taken = "(SELECT r FROM temp._retention_taken)"
                n = conn.execute(
                    f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
                    f" AND {rid} NOT IN {taken} GROUP BY {rid} ORDER BY {rid}",
                    (target,),
                ).rowcount
                n += conn.execute(
                    f"INSERT INTO {q(table)} ({names}) SELECT {names} {rows}"
                    f" AND {rid} IN {taken} GROUP BY {rid} ORDER BY {rid}",
                    (target,),
                ).rowcount
                counts[table] = counts.get(table, 0) + max(n, 0)
            if group_by[0] is not None and TOMB_PREFIX + self.cfg.runs_table in tombs:
                by_group = (
                    _group_counts(
                        conn,
                        self.cfg.runs_table,
                        group_by[0],
                        target,
                        f"AND tb.{q(RUN_COL)} IN (SELECT id FROM {IDS_TABLE})",
                    )
                    or []
                )
            for tomb in tombs:  # also tables dropped since: their rows cannot come back
                conn.execute(f"DELETE FROM {q(tomb)} WHERE {sel}", (target,))
            # Columns the apply set: back to their old value where they still hold the value
            # set (a value the application wrote since wins).
            for nulls in _tables_like(conn, NULLS_PREFIX):
                table = nulls[len(NULLS_PREFIX) :]
                live = set(self._columns(table)) if _has_table(conn, table) else set()
                cols = conn.execute(
                    f"SELECT DISTINCT {q(COL_COL)} FROM {q(nulls)} WHERE {sel}", (target,)
                ).fetchall()
                for (col,) in cols:
                    if col not in live:
                        continue
                    conn.execute(
                        f"UPDATE {q(table)} SET {q(col)} = n.old FROM (SELECT {q(ROWID_COL)}"
                        f" AS r, {q(OLD_COL)} AS old, {q(NEW_COL)} AS new FROM {q(nulls)}"
                        f" WHERE {q(COL_COL)} = ? AND {sel}) AS n"
                        f" WHERE {q(table)}.rowid = n.r AND {q(table)}.{q(col)} IS n.new",
                        (col, target),
                    )
                conn.execute(f"DELETE FROM {q(nulls)} WHERE {sel}", (target,))
            return counts, by_group

        def body() -> dict[RunId, str]:
            # Read inside the transaction: a locked catalog refuses the commit as a whole.
            key_tables.update(t for t in tables if self._rowid_is_key(t))
            tombs.update(_tomb_tables(conn))
            group_by[0] = _audit_group_by(conn, target)
            refused: dict[RunId, str] = {}
            restored: list[RunId] = [rid for g in groups for rid in g]
            tables_n: dict[str, int] = {}
            by_group: dict[tuple[str, str | None], list[int]] = {}

            def tally(done: tuple[dict[str, int], list[Any]]) -> None:
                for table, n in done[0].items():
                    tables_n[table] = tables_n.get(table, 0) + n
                for col, value, n, b in done[1]:
                    acc = by_group.setdefault((col, value), [0, 0])
                    acc[0] += n
                    acc[1] += b

            conn.execute("SAVEPOINT restore_all")
            try:
                tally(restore(restored))
                conn.execute("RELEASE restore_all")
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO restore_all")
                conn.execute("RELEASE restore_all")
                restored = []
                tables_n.clear()
                by_group.clear()
                for group in groups:
                    conn.execute("SAVEPOINT restore_group")
                    try:
                        done = restore(group)
                    except sqlite3.IntegrityError as exc:
                        conn.execute("ROLLBACK TO restore_group")
                        for rid in group:
                            refused[rid] = f"the catalog refused its rows: {exc}"
                    else:
                        restored += group
                        tally(done)
                    conn.execute("RELEASE restore_group")
            self.load_ids(restored)
            conn.execute(
                f"UPDATE {TOMB_RUNS} SET state = 'restored', undo_txid = ? WHERE txid = ?"
                f" AND run_id IN (SELECT id FROM {IDS_TABLE})",
                (undo_txid, target),
            )
            left = conn.execute(
                f"SELECT count(*) FROM {TOMB_RUNS} WHERE txid = ? AND state = 'trash'", (target,)
            ).fetchone()[0]
            if left == 0:
                conn.execute(
                    f"UPDATE {TX_TABLE} SET state = 'undone', finished_at = ? WHERE txid = ?",
                    (now, target),
                )
            conn.execute(
                f"INSERT INTO {TX_TABLE} (txid, op, state, target, created_at, runs)"
                " VALUES (?, 'undo', 'done', ?, ?, ?)",
                (undo_txid, target, now, len(restored)),
            )
            (nbytes,) = conn.execute(
                f"SELECT coalesce(sum(bytes), 0) FROM {TOMB_RUNS} WHERE undo_txid = ? AND txid = ?",
                (undo_txid, target),
            ).fetchone()
            _write_audit(
                conn,
                AuditRow(
                    txid=undo_txid,
                    action="undo",
                    at=now,
                    runs=len(restored),
                    bytes=int(nbytes),
                    tables=tables_n,
                    groups=None
                    if group_by[0] is None
                    else [(c, v, n, b) for (c, v), (n, b) in sorted(by_group.items(), key=str)],
                    target=target,
                    group_by=group_by[0],
                ),
            )
            return refused

        result: dict[RunId, str] = self._commit_tx(body, before_commit)
        return result

    def restored_by(self, undo_txid: str) -> set[RunId]:
        """Runs the committed undo ``undo_txid`` restored (empty if it never committed):
        the runs of the apply it undid, read in batches by that apply's txid."""
        row = self.tx_row(undo_txid)
        if row is None or not row["target"] or not _has_table(self.conn, TOMB_RUNS):
            return set()
        return {
            rid
            for batch in self._runs_of(str(row["target"]), "undo_txid")
            for rid, by in batch
            if by == undo_txid
        }

    def mark_purging(
        self, purge_txid: str, targets: list[str], now: str, *, before_commit: Any
    ) -> None:
        """THE commit point of a purge: mark the targets purging (undo refuses them from
        here on) and record ``purge_txid``."""
        conn = self.conn

        def body() -> None:
            conn.executemany(
                f"UPDATE {TX_TABLE} SET state = 'purging' WHERE txid = ? AND state != 'purged'",
                ((t,) for t in targets),
            )
            conn.execute(
                f"INSERT INTO {TX_TABLE} (txid, op, state, target, created_at, runs)"
                " VALUES (?, 'purge', 'done', ?, ?, ?)",
                (purge_txid, ",".join(targets), now, len(targets)),
            )
            _write_audit(conn, self._purge_audit(purge_txid, targets, now))

        self._commit_tx(body, before_commit)

    def _rows_in_trash(self, apply_txid: str, tombs: list[str]) -> dict[str, int]:
        """Rows per table an apply's tombstones still hold: from the audit rows (what the
        apply deleted less what its undos restored: a few small rows, so the purge's
        transaction stays short), or counted for an apply committed before audit rows."""
        conn = self.conn
        if _has_table(conn, AUDIT_TABLE):
            found = conn.execute(
                f"SELECT tables FROM {AUDIT_TABLE} WHERE txid = ? AND action = 'apply'",
                (apply_txid,),
            ).fetchone()
            if found is not None:
                left = {str(k): int(v) for k, v in json.loads(found[0]).items()}
                for (done,) in conn.execute(
                    f"SELECT tables FROM {AUDIT_TABLE} WHERE action = 'undo' AND target = ?",
                    (apply_txid,),
                ).fetchall():
                    for k, v in json.loads(done).items():
                        left[k] = left.get(k, 0) - int(v)
                return {k: v for k, v in left.items() if v > 0}
        out: dict[str, int] = {}
        for tomb in tombs:
            (n,) = conn.execute(
                f"SELECT count(DISTINCT {q(ROWID_COL)}) FROM {q(tomb)} WHERE {q(TXID_COL)} = ?",
                (apply_txid,),
            ).fetchone()
            if n:
                out[tomb[len(TOMB_PREFIX) :]] = int(n)
        return out

    def _purge_audit(self, purge_txid: str, targets: list[str], now: str) -> AuditRow:
        """Inside the purge's transaction: what it makes final, per apply one grouped
        statement each (runs and bytes still in trash, tombstoned rows per table, and per
        group by the column each apply's audit row counted by)."""
        conn = self.conn
        runs = nbytes = 0
        tables: dict[str, int] = {}
        groups: dict[tuple[str, str | None], list[int]] = {}
        has_runs = _has_table(conn, TOMB_RUNS)
        tombs = _tomb_tables(conn)
        for t in targets:
            if has_runs:
                n, b = conn.execute(
                    f"SELECT count(*), coalesce(sum(bytes), 0) FROM {TOMB_RUNS}"
                    " WHERE txid = ? AND state = 'trash'",
                    (t,),
                ).fetchone()
                runs += int(n)
                nbytes += int(b)
            for table, n in self._rows_in_trash(t, tombs).items():
                tables[table] = tables.get(table, 0) + n
            col = _audit_group_by(conn, t)
            if col is not None and has_runs and TOMB_PREFIX + self.cfg.runs_table in tombs:
                found = _group_counts(conn, self.cfg.runs_table, col, t, "AND r.state = 'trash'")
                for c, v, n, b in found or []:
                    acc = groups.setdefault((c, v), [0, 0])
                    acc[0] += n
                    acc[1] += b
        return AuditRow(
            txid=purge_txid,
            action="purge",
            at=now,
            runs=runs,
            bytes=nbytes,
            tables=tables,
            groups=[(c, v, n, b) for (c, v), (n, b) in sorted(groups.items(), key=str)] or None,
            target=",".join(targets),
        )

    def mark_purged(self, targets: list[str], now: str) -> None:
        """After the trash directories are gone: drop the targets' row tombstones, mark them
        purged, then compact the deletion log (`compact_history`). Idempotent.

        The tombstones go `WRITE_BATCH` rows per transaction (the application's writers
        wait for one batch at most); a crash between batches leaves the targets
        ``purging`` with some tombstones, and the recovery of the purge calls this again.
        The space they took stays in the file as free pages, which SQLite reuses (``purge
        --vacuum`` gives it back to the filesystem)."""
        conn = self.conn
        marks = ", ".join("?" * len(targets))
        for tomb in _tomb_tables(conn) + _tables_like(conn, NULLS_PREFIX):
            sql = (
                f"DELETE FROM {q(tomb)} WHERE rowid IN (SELECT rowid FROM {q(tomb)}"
                f" WHERE {q(TXID_COL)} IN ({marks}) LIMIT {WRITE_BATCH})"
            )
            self._delete_batched(sql, targets)

        def body() -> None:
            conn.execute(
                f"UPDATE {TX_TABLE} SET state = 'purged', finished_at = ? WHERE txid IN ({marks})",
                (now, *targets),
            )
            conn.execute(
                f"UPDATE {TOMB_RUNS} SET state = 'purged'"
                f" WHERE state = 'trash' AND txid IN ({marks})",
                targets,
            )

        self._commit_tx(body, None)
        self.compact_history(parse_instant(now))

    def compact_history(self, now: datetime) -> int:
        """Remove from ``_retention_runs`` the runs of every apply purged or undone longer
        ago than ``state.history`` (they can never come back, and nothing asks for them);
        the apply's row in ``_retention_tx`` stays, with its counts and bytes (the audit
        summary). Set-based, `WRITE_BATCH` rows per transaction. Returns the rows removed."""
        conn = self.conn
        if not _has_table(conn, TOMB_RUNS):
            return 0
        cutoff = format_instant(now - parse_duration(self.cfg.history))
        sql = (
            f"DELETE FROM {TOMB_RUNS} WHERE rowid IN (SELECT r.rowid FROM {TX_TABLE} AS t"
            f" JOIN {TOMB_RUNS} AS r ON r.txid = t.txid WHERE t.op = 'apply'"
            " AND t.state IN ('purged', 'undone') AND t.finished_at IS NOT NULL"
            f" AND julianday(t.finished_at) < julianday(?) LIMIT {WRITE_BATCH})"
        )
        return self._delete_batched(sql, (cutoff,))

    def _delete_batched(self, sql: str, params: Any) -> int:
        """Run ``sql``, a DELETE of at most `WRITE_BATCH` rows, each time in a transaction
        of its own, until it deletes fewer; returns how many rows it deleted."""
        total = 0
        while True:
            n = int(self._commit_tx(lambda: self.conn.execute(sql, params).rowcount, None))
            total += n
            if n < WRITE_BATCH:
                return total


# -- the catalog file: its pages, the space retention's tables take, VACUUM --------------


class CatalogSpace(msgspec.Struct):
    """The catalog file and its free pages: space inside the file that SQLite reuses for
    new rows but that the filesystem gets back only through a VACUUM (or, where the
    catalog's ``auto_vacuum`` is ``incremental``, ``PRAGMA incremental_vacuum``)."""

    file_bytes: int  # the database file on disk
    wal_bytes: int  # its -wal file (WAL mode; 0 when there is none)
    page_size: int
    pages: int  # PRAGMA page_count
    free_pages: int  # PRAGMA freelist_count
    free_bytes: int  # free_pages x page_size
    auto_vacuum: str  # none | full | incremental
    journal_mode: str  # delete, wal... (the application's; never changed)


class RetentionUsage(msgspec.Struct):
    """How much of the catalog file retention's own tables take (with their indexes)."""

    tombstone_bytes: int  # the deleted rows kept for undo (_retention_t_*, _retention_n_*)
    log_bytes: int  # the deletion log and lineage (_retention_runs, _retention_tx, _meta)
    exact: bool  # True: pages counted with dbstat; False: estimated from rows and sizes


_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def catalog_space(conn: sqlite3.Connection, path: Path) -> CatalogSpace:
    """Sizes and free pages of the catalog ``conn`` has open at ``path`` (read-only)."""

    def pragma(name: str) -> Any:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]

    page_size, free = int(pragma("page_size")), int(pragma("freelist_count"))
    wal = Path(f"{path}-wal")
    return CatalogSpace(
        file_bytes=path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
        page_size=page_size,
        pages=int(pragma("page_count")),
        free_pages=free,
        free_bytes=free * page_size,
        auto_vacuum=_AUTO_VACUUM.get(int(pragma("auto_vacuum")), "none"),
        journal_mode=str(pragma("journal_mode")),
    )


def _our_objects(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(name, its table, type) of every table and index of ours, automatic indexes too."""
    return [
        (str(n), str(t), str(k))
        for n, t, k in conn.execute(
            "SELECT name, tbl_name, type FROM sqlite_master WHERE type IN ('table', 'index')"
            " AND tbl_name LIKE '\\_retention\\_%' ESCAPE '\\' ORDER BY name"
        ).fetchall()
    ]


def _is_tombstone(table: str) -> bool:
    return table.startswith((TOMB_PREFIX, NULLS_PREFIX))


def retention_usage(conn: sqlite3.Connection) -> RetentionUsage:
    """The pages of retention's tables and indexes (read-only): counted with the ``dbstat``
    virtual table, one object per statement, or estimated when SQLite was built without it
    (`estimate_usage`)."""
    objects = _our_objects(conn)
    try:
        conn.execute("SELECT 1 FROM dbstat LIMIT 0").fetchall()
    except sqlite3.OperationalError:
        return estimate_usage(conn)
    tomb = log = 0
    for name, table, _ in objects:
        (size,) = conn.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = ? AND aggregate = 1",
            (name,),
        ).fetchone()
        if _is_tombstone(table):
            tomb += int(size)
        else:
            log += int(size)
    return RetentionUsage(tombstone_bytes=tomb, log_bytes=log, exact=True)


_SAMPLE = 200  # rows sampled per table for the estimate


def estimate_usage(conn: sqlite3.Connection) -> RetentionUsage:
    """`retention_usage` without ``dbstat``: per table and index, its rows times the mean
    size of a sampled entry (values, one header byte per column, the rowid and the cell's
    own overhead), over the usual page fill. Within a few tens of percent; read-only."""
    tomb = log = 0
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    for name, table, kind in _our_objects(conn):
        if kind == "table":
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({q(name)})").fetchall()]
        else:
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({q(name)})").fetchall() if r[2]]
        rows = int(conn.execute(f"SELECT count(*) FROM {q(table)}").fetchone()[0])
        sizes = " + ".join(f"coalesce(length(CAST({q(c)} AS BLOB)), 0)" for c in cols) or "0"
        (mean,) = conn.execute(
            f"SELECT avg({sizes}) FROM (SELECT * FROM {q(table)} LIMIT {_SAMPLE})"
        ).fetchone()
        entry = float(mean or 0) + len(cols) + 12  # header bytes, rowid, cell pointer
        # b-tree pages are rarely full, and every table and index has one page at least
        size = max(page, math.ceil(rows * entry / 0.85 / page) * page)
        if _is_tombstone(table):
            tomb += size
        else:
            log += size
    return RetentionUsage(tombstone_bytes=tomb, log_bytes=log, exact=False)


def _sqlite_temp_dir() -> str:
    """Where SQLite puts the temporary copy VACUUM builds (its own search order on Unix)."""
    for d in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return "/tmp"


VACUUM_COST = (
    "VACUUM rewrites the whole catalog file and holds an exclusive lock on it meanwhile (the"
    " application can neither read nor write until it ends); it needs free disk for a"
    " temporary copy of the file and as much again for the journal or WAL"
)


class CatalogFile:
    """The catalog as a file, on a connection of its own: its size and free pages
    (`catalog_space`), and giving free pages back to the filesystem (`reclaim`). Apart
    from the participant protocol: this is about SQLite's pages, not about runs."""

    def __init__(self, cfg: Config, *, readonly: bool = True) -> None:
        self.path = Path(cfg.catalog_path)
        self.busy_timeout = cfg.busy_timeout
        mode = "ro" if readonly else "rw"
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        try:
            self.conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=cfg.busy_timeout_ms / 1000
            )
            self.conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
            if not readonly:
                self.conn.execute("PRAGMA synchronous = EXTRA")  # as for our transactions
        except sqlite3.Error as exc:
            raise catalog_error(exc, self.path) from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> CatalogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def space(self) -> CatalogSpace:
        try:
            return catalog_space(self.conn, self.path)
        except sqlite3.Error as exc:
            raise catalog_error(exc, self.path) from None

    def reclaim(self) -> str:
        """Give the catalog's free pages back to the filesystem; returns what it ran.

        ``incremental_vacuum`` where the catalog's ``auto_vacuum`` is ``incremental`` (it
        only moves pages from the end of the file into free ones and truncates it: short),
        else ``vacuum`` (see `VACUUM_COST`; refused beforehand when the disk is too full);
        ``nothing to reclaim`` when there is no free page. In WAL mode the WAL is then
        checkpointed and truncated (it would otherwise keep the size of what was rewritten).
        Raises `CatalogError` (busy: the application held the catalog longer than
        catalog.busy_timeout) or `StorageError` (disk full); the catalog is then unchanged.
        """
        space = self.space()
        if space.free_pages == 0:
            return "nothing to reclaim"
        how = "incremental_vacuum" if space.auto_vacuum == "incremental" else "vacuum"
        if how == "vacuum":
            self._check_room(space)
        t0 = time.monotonic()
        try:
            if how == "vacuum":
                self.conn.execute("VACUUM")
            else:  # frees one page per step: executescript steps it to the end
                self.conn.executescript("PRAGMA incremental_vacuum;")
            if space.journal_mode == "wal":
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                waited = format_duration(time.monotonic() - t0)
                raise CatalogError(
                    f"cannot {how.replace('_', ' ')} catalog {self.path}: it was busy longer"
                    f" than catalog.busy_timeout ({self.busy_timeout}; waited {waited});"
                    " nothing was changed",
                    hint="it needs the catalog to itself: run `retention purge --vacuum` again"
                    " when the application is idle",
                ) from None
            if code == sqlite3.SQLITE_FULL:
                raise StorageError(
                    f"cannot vacuum catalog {self.path}: disk full; nothing was changed",
                    hint=f"{VACUUM_COST}; free space, then run `retention purge --vacuum`",
                ) from None
            raise catalog_error(exc, self.path) from None
        return how

    def _check_room(self, space: CatalogSpace) -> None:
        """Refuse a VACUUM the disk has no room for: a temporary copy of the file where
        SQLite keeps temporary files, and as much again beside the catalog (journal/WAL)."""
        need = space.file_bytes - space.free_bytes  # about the size of the rewritten file
        here = os.path.dirname(os.path.abspath(self.path))
        temp = _sqlite_temp_dir()
        wants: dict[int, tuple[str, int]] = {}
        for where in (here, temp):
            dev = os.stat(where).st_dev
            have = wants.get(dev, (where, 0))
            wants[dev] = (have[0], have[1] + need)
        for where, bytes_needed in wants.values():
            free = shutil.disk_usage(where).free
            if free < bytes_needed:
                raise StorageError(
                    f"not enough free disk to vacuum catalog {self.path}: it needs about"
                    f" {format_bytes(bytes_needed)} on the filesystem of {where},"
                    f" {format_bytes(free)} free; nothing was changed",
                    hint=f"{VACUUM_COST}; free space (or set SQLITE_TMPDIR to a roomier"
                    " filesystem for the copy)",
                )
