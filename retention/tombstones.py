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
import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from retention.catalog import SqlCatalog, q
from retention.durations import (
    format_duration,
    format_instant,
    parse_duration,
    parse_instant,
)
from retention.errors import CatalogError, catalog_error
from retention.policy import RunId
from retention.reporting import Progress

if TYPE_CHECKING:
    from retention.catalogs.beside import Beside, Known, NotBeside

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
    run_id {{ID_TYPE}} NOT NULL, -- the run's id, of the runs table's id type
    path {{BLOB}},              -- artifact dir relative to the root (NULL: none on disk)
    trash {{BLOB}},             -- where it lies in trash, relative to the root
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
    "user" TEXT NOT NULL,       -- who ran it (login name, or uid N)
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


class TombRun(msgspec.Struct, frozen=True):
    """A run about to be deleted: its expected row fingerprint and where its directory goes."""

    run_id: RunId
    rows_fp: str
    path: bytes | None
    trash: bytes | None
    bytes: int


class TxInfo(msgspec.Struct, frozen=True):
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


class Writeback(msgspec.Struct, frozen=True):
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


OLD_COL, NEW_COL, COL_COL = "__retention_old", "__retention_new", "__retention_col"


# -- the audit row: one per apply, undo and purge, in the transaction of its effect --------


def current_user() -> str:
    """Who runs this process, never failing: the login name (``getpass``, then the password
    database), else ``uid N``."""
    import getpass  # here, not at import: a few ms of every command's start-up

    with contextlib.suppress(Exception):
        return getpass.getuser()
    uid = os.getuid()
    with contextlib.suppress(Exception):
        import pwd

        return pwd.getpwuid(uid).pw_name
    return f"uid {uid}"


def current_host() -> str:
    with contextlib.suppress(Exception):
        return os.uname().nodename  # gethostname(), without importing socket
    return ""


class AuditRow(msgspec.Struct, frozen=True):
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


class WritableCatalog(SqlCatalog):
    """The write side of an SQL catalog: apply's, undo's and purge's transactions.

    Backend hooks, besides `SqlCatalog`'s: `_begin` (a write transaction that excludes
    other writers, or waits for them no longer than catalog.busy_timeout),
    `_in_transaction`, `_is_busy`, `_ensure_tomb`, `_ensure_nulls`, `_default_value`,
    `_id_type` and `BLOB` (types in our own tables), `_instant` (an ISO-8601 text as a
    comparable instant), `overwrite_deleted`. The tables we add are named ``_retention_*``,
    beside the application's (SQLite) or in a schema of their own (PostgreSQL); either way
    the backend's connection finds them by that name.
    """

    BLOB = "BLOB"

    def overwrite_deleted(self) -> None:
        """From now on, overwrite what is deleted instead of only freeing it."""
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _in_transaction(self) -> bool:
        raise NotImplementedError

    def _is_busy(self, exc: BaseException) -> bool:
        """Whether ``exc`` says another writer held a lock we waited for too long."""
        raise NotImplementedError

    def _id_type(self) -> str:
        """The SQL type our tables give a run id ("" where columns need none)."""
        raise NotImplementedError

    def _ensure_tomb(self, table: str, columns: list[str]) -> str:
        """The tombstone table of ``table`` (created, or given the columns added since):
        ``TXID_COL``, ``RUN_COL``, ``ROWID_COL``, then ``columns``, each value kept
        exactly."""
        raise NotImplementedError

    def _ensure_nulls(self, table: str) -> str:
        """The table of columns an apply set in rows of ``table`` (SET NULL / DEFAULT)."""
        raise NotImplementedError

    def _default_value(self, table: str, column: str) -> Any:
        """The value ``column``'s declared DEFAULT gives now (None without one)."""
        raise NotImplementedError

    def _instant(self, expr: str) -> str:
        """SQL for the ISO-8601 UTC text ``expr`` as a comparable instant."""
        raise NotImplementedError

    def space_report(self) -> tuple[CatalogSpace | None, RetentionUsage | None]:
        """The catalog's storage and what retention's own tables take of it (read-only)."""
        raise NotImplementedError

    def _ddl_statements(self) -> list[str]:
        text = _DDL.replace("{ID_TYPE}", self._id_type()).replace("{BLOB}", self.BLOB)
        return [stmt.strip() for stmt in text.split(";") if stmt.strip()]

    def data_version(self) -> int | None:
        """A number that changes whenever another connection commits to the catalog, or
        None where the backend has none (then `commit_delete` never trusts a ``known``)."""
        return None

    def fingerprints_beside(self, runs: list[RunId], rows_fps: list[str]) -> Beside | NotBeside:
        """Start comparing these runs' rows with ``rows_fps`` beside the renames, where the
        backend can (`retention.catalogs.beside`): here it cannot."""
        from retention.catalogs.beside import NotBeside

        return NotBeside()

    def _commit_tx(self, body: Any, before_commit: Any) -> Any:
        """Run ``body()`` inside the backend's write transaction; roll back explicitly on
        any error.

        Raises `CommitRefused` when the catalog certainly did not commit (any error before
        COMMIT, or COMMIT refused as busy), `CatalogError` when COMMIT itself failed
        otherwise (an I/O error: whether it committed is for recovery to ask)."""
        conn = self.conn
        t0 = time.monotonic()
        try:
            self._begin()
        except self.Error as exc:
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
            if self._in_transaction():
                # The original error matters; the database also rolls back when the
                # connection closes.
                with contextlib.suppress(self.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, self.Error):
                if not committing or self._is_busy(exc):
                    raise self._refused(exc, t0) from None
                raise catalog_error(exc, self.path) from None
            raise

    def _refused(self, exc: BaseException, t0: float) -> CommitRefused:
        err = catalog_error(exc, self.path)
        if self._is_busy(exc):
            waited = format_duration(time.monotonic() - t0)
            return CommitRefused(
                f"catalog {self.path} is busy: another writer held it longer than"
                f" catalog.busy_timeout ({self.cfg.busy_timeout}; waited {waited})",
                hint="retry when the application's write finishes, or raise"
                " catalog.busy_timeout (RETENTION_BUSY_TIMEOUT)",
            )
        return CommitRefused(err.message, hint=err.hint)

    # -- the audit row: one per apply, undo and purge, in the transaction of its effect ----

    def _ensure_audit(self) -> None:
        for stmt in self._ddl_statements():
            if stmt.startswith(f"CREATE TABLE IF NOT EXISTS {AUDIT_TABLE}"):
                self.conn.execute(stmt)

    def _write_audit(self, a: AuditRow) -> None:
        """Inside the caller's transaction: the audit row of ``a.txid``."""
        import json  # its text format (spaced) is the audit table's; loaded only to write

        self._ensure_audit()
        self.conn.execute(
            f'INSERT INTO {AUDIT_TABLE} (txid, action, at, target, "user", host, manifest_id,'
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
        self, column: str, txid: str, where: str = ""
    ) -> list[tuple[str, str | None, int, int]] | None:
        """Runs and bytes per value of ``column`` among the runs of apply ``txid`` still
        tombstoned (``where``: a further condition on ``tb``, the runs table's tombstone,
        and ``r``, their ``_retention_runs`` rows): one grouped statement. None when the
        tombstone has no such column."""
        tomb = TOMB_PREFIX + self.cfg.runs_table
        if column not in self.db.columns(tomb):
            return None
        rows = self.conn.execute(
            f"SELECT CAST(tb.{q(column)} AS TEXT), count(*), coalesce(sum(r.bytes), 0)"
            f" FROM {q(tomb)} AS tb JOIN {TOMB_RUNS} AS r"
            f" ON r.txid = tb.{q(TXID_COL)} AND r.run_id = tb.{q(RUN_COL)}"
            f" WHERE tb.{q(TXID_COL)} = ? {where} GROUP BY 1 ORDER BY 1",
            (txid,),
        ).fetchall()
        return [(column, v, int(n), int(b)) for v, n, b in rows]

    def _audit_group_by(self, apply_txid: str) -> str | None:
        """The group column the audit row of an apply counted by (None: none, or no row)."""
        if not self.db.has_table(AUDIT_TABLE):
            return None
        row = self.conn.execute(
            f"SELECT group_by FROM {AUDIT_TABLE} WHERE txid = ?", (apply_txid,)
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def audit_groups(self, txids: list[str]) -> list[tuple[str, str | None, int, int]]:
        """Runs and bytes per group that the audit rows of ``txids`` counted, summed over
        them (the batches of one apply): (column, value, runs, bytes), largest first.
        Read-only; empty when the applies counted no group."""
        if not txids or not self.db.has_table(AUDIT_TABLE):
            return []
        acc: dict[tuple[str, str | None], list[int]] = {}
        for lo in range(0, len(txids), READ_BATCH):
            part = txids[lo : lo + READ_BATCH]
            for (groups,) in self.conn.execute(
                f"SELECT groups FROM {AUDIT_TABLE} WHERE groups IS NOT NULL"
                f" AND txid IN ({', '.join('?' * len(part))})",
                part,
            ).fetchall():
                for col, value, n, b in msgspec.json.decode(groups):
                    got = acc.setdefault((str(col), value), [0, 0])
                    got[0] += int(n)
                    got[1] += int(b)
        return sorted(
            ((c, v, n, b) for (c, v), (n, b) in acc.items()), key=lambda g: (-g[2], str(g[1]))
        )

    def _tomb_tables(self) -> list[str]:
        return self.db.ours_like(TOMB_PREFIX)

    def tx_row(self, txid: str) -> dict[str, Any] | None:
        """The recorded row of a transaction, or None if the catalog never committed it."""
        if not self.db.has_table(TX_TABLE):
            return None
        cur = self.conn.execute(f"SELECT * FROM {TX_TABLE} WHERE txid = ?", (txid,))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def tomb_runs(self, txid: str) -> dict[RunId, dict[str, Any]]:
        """Tombstoned runs of an apply transaction (empty if none). Read in batches."""
        if not self.db.has_table(TOMB_RUNS):
            return {}
        names = self.db.columns(TOMB_RUNS)
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
        known: Known | None = None,
    ) -> dict[RunId, str]:
        """THE commit point of an apply: in one transaction, re-check each run, copy its rows
        of every involved table into tombstones, delete them, and record the txid.

        A run whose rows changed since the plan (fingerprint differs or it is gone), or that is
        now protected, is left alone; the returned dict maps those run ids to the reason. Raises
        `CatalogError` (after an explicit ROLLBACK) if the transaction cannot commit, and
        `NothingDeleted` (after a ROLLBACK) when no run is left to delete; then the catalog is
        unchanged.

        ``known``: which runs are gone or changed, as a helper found them beside the renames
        (`retention.catalogs.beside`); used only if no other connection has committed since
        it began (`data_version`), else the rows are fingerprinted here.
        """
        conn = self.conn
        cfg = self.cfg
        expected = {r.run_id: r for r in runs}
        # A progress line on a terminal: one step per set-based statement of the commit.
        bar = Progress("committing", 2 * len(self.schema.children) + 5)

        def body() -> dict[RunId, str]:
            for stmt in self._ddl_statements():
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO _retention_meta VALUES ('lineage_id', ?) ON CONFLICT DO NOTHING",
                (lineage,),
            )
            self.load_ids(expected)
            bar.advance()
            dropped: dict[RunId, str] = {}
            if known is not None and known.data_version == self.data_version():
                gone, changed = known.gone, known.changed
            else:
                from retention.catalogs.beside import compare

                ids = list(expected)
                found = compare(self.fingerprints(), ids, [expected[i].rows_fp for i in ids])
                gone, changed = frozenset(found.gone), frozenset(found.changed)
            bar.advance()
            for rid in expected:
                if rid in gone:
                    dropped[rid] = "no longer in the catalog"
                elif rid in changed:
                    dropped[rid] = "catalog rows changed since the plan"
            # The runs table unaliased, as plan evaluated these expressions, with SQLite's own
            # truth (as in WHERE; NULL is false) on both sides.
            base = (
                f"SELECT {q(cfg.id_column)} FROM {q(cfg.runs_table)}"
                f" WHERE {q(cfg.id_column)} IN (SELECT id FROM {self.IDS_TABLE})"
            )
            # (A row these find that is not one of the manifest's runs has an id that names
            # one of them too: that run is dropped below, as ambiguous.)
            if cfg.protect:
                for (rid,) in conn.execute(f"{base} AND ({cfg.protect})"):
                    if rid in expected:
                        dropped.setdefault(rid, "now protected")
            if cfg.filter:
                for (rid,) in conn.execute(
                    f"{base} AND NOT (CASE WHEN ({cfg.filter}) THEN 1 ELSE 0 END)"
                ):
                    if rid in expected:
                        dropped.setdefault(rid, "no longer selected by catalog.filter")
            # A run referenced (RESTRICT, or NO ACTION declared blocking) by a row that stays.
            for rid, why in self.blocked_runs().items():
                dropped.setdefault(rid, why)
            # An id that names other rows too (kept runs' among them): plan skips such runs;
            # a manifest planned before that, or rows added since, must not delete them all.
            for rid, why in self.ambiguous_ids().items():
                dropped.setdefault(rid, why)
            if len(dropped) == len(expected):
                raise NothingDeleted(dropped)
            if dropped:
                conn.executemany(
                    f"DELETE FROM {self.IDS_TABLE} WHERE id = ?", ((k,) for k in dropped)
                )
            if info.writeback is not None:
                self._write_back(info.writeback, info.created_at)
            # Tombstones: runs table, then children, each one INSERT ... SELECT.
            run_cols = self.schema.runs_columns
            tomb = self._ensure_tomb(cfg.runs_table, run_cols)
            cols = ", ".join(q(c) for c in run_cols)
            conn.execute(
                f"INSERT INTO {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)}, {cols})"
                f" SELECT ?, ids.id, r.{self.ROWID}, {', '.join('r.' + q(c) for c in run_cols)}"
                f" FROM {q(cfg.runs_table)} AS r JOIN {self.IDS_TABLE} AS ids"
                f" ON r.{q(cfg.id_column)} = ids.id",
                (info.txid,),
            )
            bar.advance()
            for inv in self.schema.children:
                tomb = self._ensure_tomb(inv.table, inv.columns)
                cols = ", ".join(q(c) for c in inv.columns)
                sel = self.child_select(inv, ", ".join(f"t0.{q(c)}" for c in inv.columns))
                conn.execute(
                    f"INSERT INTO {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)}, {cols})"
                    f" SELECT ?, __run, __rowid, {cols} FROM ({sel}) AS s",
                    (info.txid,),
                )
                bar.advance()
            # Rows that stay but reference a deleted row (SET NULL / SET DEFAULT): record
            # each column's old value and the value it gets, before the rows they reference go.
            setting: list[tuple[str, str, str]] = []
            for hop in self.schema.setters:
                nulls = self._ensure_nulls(hop.child)
                for col in hop.child_cols:
                    new = None
                    if hop.action == "SET DEFAULT":
                        new = self._default_value(hop.child, col)
                    conn.execute(
                        f"INSERT INTO {q(nulls)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)},"
                        f" {q(COL_COL)}, {q(OLD_COL)}, {q(NEW_COL)})"
                        f" SELECT DISTINCT ?, __run, __rowid, ?, __old, ?"
                        f" FROM ({self.referencing_select(hop, f'c.{q(col)} AS __old')}) AS s",
                        (info.txid, col, new),
                    )
                    setting.append((nulls, hop.child, col))
            # Deletes: deepest children first, the runs table last.
            deleted_rows: dict[str, int] = {}
            for inv in reversed(self.schema.children):
                n = conn.execute(
                    f"DELETE FROM {q(inv.table)} WHERE {self.ROWID} IN"
                    f" (SELECT __rowid FROM ({self.child_select(inv, '1')}) AS s)"
                ).rowcount
                deleted_rows[inv.table] = deleted_rows.get(inv.table, 0) + max(n, 0)
                bar.advance()
            deleted_rows[cfg.runs_table] = conn.execute(
                f"DELETE FROM {q(cfg.runs_table)} WHERE {q(cfg.id_column)} IN"
                f" (SELECT id FROM {self.IDS_TABLE})"
            ).rowcount
            bar.advance()
            for nulls, table, col in setting:  # rows deleted meanwhile are simply gone
                conn.execute(
                    f"UPDATE {q(table)} SET {q(col)} = n.v FROM (SELECT {q(ROWID_COL)} AS r,"
                    f" {q(NEW_COL)} AS v FROM {q(nulls)} WHERE {q(TXID_COL)} = ?"
                    f" AND {q(COL_COL)} = ?) AS n WHERE {q(table)}.{self.ROWID} = n.r",
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
            self._write_audit(
                AuditRow(
                    txid=info.txid,
                    action=info.op,
                    at=info.created_at,
                    runs=len(kept),
                    bytes=sum(r.bytes for r in kept),
                    tables=deleted_rows,
                    groups=None
                    if info.group_by is None
                    else self._group_counts(info.group_by, info.txid),
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
                f" WHERE {q(cfg.id_column)} IN (SELECT id FROM {self.IDS_TABLE}) GROUP BY 1"
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
        if not self.db.has_table(TX_TABLE):
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
                f"SELECT ids.id FROM {self.IDS_TABLE} AS ids JOIN {q(cfg.runs_table)} AS r"
                f" ON r.{q(cfg.id_column)} = ids.id"
            )
        }


class TrashCatalog(WritableCatalog):
    """The catalog side of undo and purge."""

    def trash_totals(self, txids: list[str]) -> tuple[int, int]:
        """Runs and bytes still in trash for these applies (read-only, in batches)."""
        if not txids or not self.db.has_table(TOMB_RUNS):
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
        if not self.db.has_table(TOMB_RUNS):
            return {}
        return {
            bytes(trash): rid
            for rid, trash in self.conn.execute(
                f"SELECT run_id, trash FROM {TOMB_RUNS} WHERE state = 'trash' AND trash IS NOT NULL"
            )
        }

    def live_applies(self) -> set[str]:
        """Applies whose trash area may still exist (not purged). Read-only."""
        if not self.db.has_table(TX_TABLE):
            return set()
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT txid FROM {TX_TABLE} WHERE op = 'apply' AND state != 'purged'"
            )
        }

    def trash_by_apply(self) -> dict[str, tuple[int, int]]:
        """Runs and bytes still in trash, per apply (read-only).

        Read from the applies' own rows, not summed over their tombstones (which costs a
        `status` 65 ms per 100,000 runs in trash): an apply no undo has touched and no
        purge has begun still has in trash every run it deleted, which its row counts
        (written in the same transaction as its tombstones). Only the others (partly
        undone, or partly purged) are summed, each over its own tombstones (the primary
        key's range)."""
        if not self.db.has_table(TOMB_RUNS) or not self.db.has_table(TX_TABLE):
            return {}
        out: dict[str, tuple[int, int]] = {}
        summed = []
        undone = {
            r[0] for r in self.conn.execute(f"SELECT target FROM {TX_TABLE} WHERE op = 'undo'")
        }
        for txid, state, runs, nbytes in self.conn.execute(
            f"SELECT txid, state, runs, bytes FROM {TX_TABLE}"
            " WHERE op = 'apply' AND state IN ('applied', 'purging')"
        ).fetchall():
            if state == "applied" and txid not in undone:
                if runs:
                    out[txid] = (int(runs), int(nbytes))
            else:
                summed.append(txid)
        if summed:
            for txid, n, b in self.conn.execute(
                f"SELECT txid, count(*), coalesce(sum(bytes), 0) FROM {TOMB_RUNS}"
                f" WHERE state = 'trash' AND txid IN ({', '.join('?' * len(summed))})"
                " GROUP BY txid",
                summed,
            ):
                out[txid] = (int(n), int(b))
        return out

    def applies(self) -> list[dict[str, Any]]:
        """Every recorded apply, newest first (read-only)."""
        if not self.db.has_table(TX_TABLE):
            return []
        cur = self.conn.execute(
            f"SELECT * FROM {TX_TABLE} WHERE op = 'apply' ORDER BY created_at DESC, txid DESC"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def run_places(self, run_id: str) -> list[dict[str, Any]]:
        """Every apply that deleted run ``run_id`` (given as text: an integer id matches
        too), newest first, with the run's state and its apply's row (read-only)."""
        if not self.db.has_table(TOMB_RUNS) or not self.db.has_table(TX_TABLE):
            return []
        keys = self.id_keys(run_id)
        if not keys:
            return []
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
        """Whether the row identity is ``table``'s key, which must come back unchanged
        (other rows may refer to it)."""
        raise NotImplementedError

    def _insert_restored(self, table: str, names: str, rows: str, params: Any) -> int:
        """Re-insert ``names`` of ``table`` from the tombstone rows ``rows`` (``FROM ...
        WHERE ...`` with ``params``), a row tombstoned for several runs once; returns how
        many rows came back."""
        raise NotImplementedError

    def _create_rows_table(self) -> str:
        """A new, empty temporary table ``(t, r, run)`` for `_shared`; returns its name."""
        raise NotImplementedError

    def _restore_tables(self) -> list[str]:
        return [self.cfg.runs_table, *(c.table for c in self.schema.children)]

    def _id_ranges(self) -> list[tuple[int, int]]:
        """The loaded ids (see `load_ids`) as rowid ranges of `READ_BATCH` each: every read
        that joins them to the catalog goes one range per statement."""
        top = self.conn.execute(f"SELECT max(n) FROM {self.IDS_TABLE}").fetchone()[0] or 0
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
        rows = self._create_rows_table()
        for n, table in enumerate(self._restore_tables()):
            tomb = TOMB_PREFIX + table
            if not self.db.has_table(tomb):
                continue
            for lo, hi in ranges:
                # CROSS JOIN: SQLite keeps the ids' range as the outer loop and looks each id
                # up in the (txid, run) index. A plain JOIN let it walk every tombstone of the
                # txid per range instead (quadratic: 100 ranges x 300,000 rows at 100,000
                # runs); PostgreSQL plans it as the inner join it is.
                conn.execute(
                    f"INSERT INTO {rows} SELECT ?, tb.{rid}, tb.{run}"
                    f" FROM {self.IDS_TABLE} AS ids CROSS JOIN {q(tomb)} AS tb"
                    f" WHERE ids.n BETWEEN ? AND ? AND tb.{q(TXID_COL)} = ? AND tb.{run} = ids.id",
                    (n, lo, hi, txid),
                )
        links: dict[RunId, set[RunId]] = {}
        hub: dict[tuple[int, Any], RunId] = {}
        for t, row, member in conn.execute(
            f"SELECT t, r, run FROM {rows} WHERE (t, r) IN"
            f" (SELECT t, r FROM {rows} GROUP BY t, r HAVING count(DISTINCT run) > 1)"
        ).fetchall():
            first = hub.setdefault((t, row), member)
            if first != member:
                links.setdefault(first, set()).add(member)
                links.setdefault(member, set()).add(first)
        conn.execute(f"DROP TABLE {rows}")
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
                f"SELECT ids.id FROM {self.IDS_TABLE} AS ids JOIN {q(cfg.runs_table)} AS r"
                f" ON r.{q(cfg.id_column)} = ids.id WHERE ids.n BETWEEN ? AND ?",
                (lo, hi),
            ).fetchall():
                out.setdefault(rid, f"run id {rid!r} exists again in {cfg.runs_table!r}")
        for table in self._restore_tables():
            tomb = TOMB_PREFIX + table
            if not self.db.has_table(tomb) or not self._rowid_is_key(table):
                continue
            for lo, hi in ranges:  # CROSS JOIN: one range of ids drives (see `_shared`)
                for (rid,) in conn.execute(
                    f"SELECT DISTINCT tb.{q(RUN_COL)} FROM {self.IDS_TABLE} AS ids"
                    f" CROSS JOIN {q(tomb)} AS tb"
                    f" JOIN {q(table)} AS t ON t.{self.ROWID} = tb.{q(ROWID_COL)}"
                    f" WHERE ids.n BETWEEN ? AND ? AND tb.{q(TXID_COL)} = ?"
                    f" AND tb.{q(RUN_COL)} = ids.id",
                    (lo, hi, txid),
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
        tombs: set[str] = set()
        group_by: list[str | None] = [None]

        def restore(ids: list[RunId]) -> tuple[dict[str, int], list[Any]]:
            """Restore ``ids``; returns rows restored per table and, by the apply's
            audit group column, runs and bytes per group (for the audit row)."""
            self.load_ids(ids)
            counts: dict[str, int] = {}
            by_group: list[Any] = []
            sel = f"{q(TXID_COL)} = ? AND {q(RUN_COL)} IN (SELECT id FROM {self.IDS_TABLE})"
            for table in tables:
                tomb = TOMB_PREFIX + table
                if tomb not in tombs:
                    continue
                tomb_cols = self.db.columns(tomb)[3:]
                live = set(self._columns(table))
                names = ", ".join(q(c) for c in tomb_cols if c in live)
                # A row linking two deleted runs was tombstoned once per run: restore it once.
                n = self._insert_restored(table, names, f"FROM {q(tomb)} WHERE {sel}", (target,))
                counts[table] = counts.get(table, 0) + max(n, 0)
            if group_by[0] is not None and TOMB_PREFIX + self.cfg.runs_table in tombs:
                by_group = (
                    self._group_counts(
                        group_by[0],
                        target,
                        f"AND tb.{q(RUN_COL)} IN (SELECT id FROM {self.IDS_TABLE})",
                    )
                    or []
                )
            for tomb in tombs:  # also tables dropped since: their rows cannot come back
                conn.execute(f"DELETE FROM {q(tomb)} WHERE {sel}", (target,))
            # Columns the apply set: back to their old value where they still hold the value
            # set (a value the application wrote since wins).
            for nulls in self.db.ours_like(NULLS_PREFIX):
                table = nulls[len(NULLS_PREFIX) :]
                live = set(self._columns(table)) if self.db.has_table(table) else set()
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
                        f" WHERE {q(table)}.{self.ROWID} = n.r"
                        f" AND {q(table)}.{q(col)} IS NOT DISTINCT FROM n.new",
                        (col, target),
                    )
                conn.execute(f"DELETE FROM {q(nulls)} WHERE {sel}", (target,))
            return counts, by_group

        def body() -> dict[RunId, str]:
            # Read inside the transaction: a locked catalog refuses the commit as a whole.
            tombs.update(self._tomb_tables())
            group_by[0] = self._audit_group_by(target)
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
            except self.IntegrityError:
                conn.execute("ROLLBACK TO restore_all")
                conn.execute("RELEASE restore_all")
                restored = []
                tables_n.clear()
                by_group.clear()
                for group in groups:
                    conn.execute("SAVEPOINT restore_group")
                    try:
                        done = restore(group)
                    except self.IntegrityError as exc:
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
                f" AND run_id IN (SELECT id FROM {self.IDS_TABLE})",
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
            self._write_audit(
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
        if row is None or not row["target"] or not self.db.has_table(TOMB_RUNS):
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
            self._write_audit(self._purge_audit(purge_txid, targets, now))

        self._commit_tx(body, before_commit)

    def _rows_in_trash(self, apply_txid: str, tombs: list[str]) -> dict[str, int]:
        """Rows per table an apply's tombstones still hold: from the audit rows (what the
        apply deleted less what its undos restored: a few small rows, so the purge's
        transaction stays short), or counted for an apply committed before audit rows."""
        conn = self.conn
        if self.db.has_table(AUDIT_TABLE):
            found = conn.execute(
                f"SELECT tables FROM {AUDIT_TABLE} WHERE txid = ? AND action = 'apply'",
                (apply_txid,),
            ).fetchone()
            if found is not None:
                left = {str(k): int(v) for k, v in msgspec.json.decode(found[0]).items()}
                for (done,) in conn.execute(
                    f"SELECT tables FROM {AUDIT_TABLE} WHERE action = 'undo' AND target = ?",
                    (apply_txid,),
                ).fetchall():
                    for k, v in msgspec.json.decode(done).items():
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
        has_runs = self.db.has_table(TOMB_RUNS)
        tombs = self._tomb_tables()
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
            col = self._audit_group_by(t)
            if col is not None and has_runs and TOMB_PREFIX + self.cfg.runs_table in tombs:
                found = self._group_counts(col, t, "AND r.state = 'trash'")
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
        for tomb in self._tomb_tables() + self.db.ours_like(NULLS_PREFIX):
            sql = (
                f"DELETE FROM {q(tomb)} WHERE {self.ROWID} IN (SELECT {self.ROWID} FROM {q(tomb)}"
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
        if not self.db.has_table(TOMB_RUNS):
            return 0
        cutoff = format_instant(now - parse_duration(self.cfg.history))
        sql = (
            f"DELETE FROM {TOMB_RUNS} WHERE {self.ROWID} IN (SELECT r.{self.ROWID}"
            f" FROM {TX_TABLE} AS t JOIN {TOMB_RUNS} AS r ON r.txid = t.txid"
            " WHERE t.op = 'apply' AND t.state IN ('purged', 'undone')"
            " AND t.finished_at IS NOT NULL"
            f" AND {self._instant('t.finished_at')} < {self._instant('?')} LIMIT {WRITE_BATCH})"
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
