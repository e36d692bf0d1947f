"""The catalog's write side: tombstones, THE commit point of an apply, and txid lookups.

Tables we add to the catalog (all named ``_retention_*``, created inside our own
transaction, never touching the application's tables' schema):

* ``_retention_meta``: the lineage id (see `retention.identity`);
* ``_retention_tx``: one row per committed transaction: the txid is the decision record
  that recovery asks for (presumed abort: no row, no commit);
* ``_retention_runs``: each deleted run with its original path and its place in trash;
* ``_retention_t_<table>``: the deleted rows of each involved table, untyped columns so
  every value keeps its exact storage class, with the txid, run id and original rowid;
* ``_retention_n_<table>``: for rows that stay but reference a deleted row through a
  ``SET NULL`` / ``SET DEFAULT`` foreign key: the column, its old value and the value set
  (undo puts the old one back where the column still holds the value set).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from retention.catalog import IDS_TABLE, SqliteCatalog, q
from retention.durations import format_duration
from retention.errors import CatalogError, catalog_error
from retention.policy import RunId

TX_TABLE = "_retention_tx"
TOMB_RUNS = "_retention_runs"
TOMB_PREFIX = "_retention_t_"
NULLS_PREFIX = "_retention_n_"  # columns an apply set (SET NULL / SET DEFAULT), for undo
TXID_COL = "__retention_txid"
RUN_COL = "__retention_run"
ROWID_COL = "__retention_rowid"

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


class WritableCatalog(SqliteCatalog):
    """A catalog opened read-write by apply, undo, purge and recover."""

    def __init__(self, cfg: Any, *, readonly: bool = False) -> None:
        super().__init__(cfg, readonly=readonly)

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
        """Tombstoned runs of an apply transaction (empty if none)."""
        if not _has_table(self.conn, TOMB_RUNS):
            return {}
        cur = self.conn.execute(f"SELECT * FROM {TOMB_RUNS} WHERE txid = ?", (txid,))
        names = [d[0] for d in cur.description]
        return {row[1]: dict(zip(names, row, strict=True)) for row in cur}

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

        def body() -> dict[RunId, str]:
            for stmt in _DDL.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO _retention_meta VALUES ('lineage_id', ?)", (lineage,)
            )
            self.load_ids(expected)
            dropped: dict[RunId, str] = {}
            current = self.fingerprints()
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
            for inv in self.schema.children:
                tomb = _ensure_tomb(conn, inv.table, inv.columns)
                cols = ", ".join(q(c) for c in inv.columns)
                sel = self.child_select(inv, ", ".join(f"t0.{q(c)}" for c in inv.columns))
                conn.execute(
                    f"INSERT INTO {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)}, {q(ROWID_COL)}, {cols})"
                    f" SELECT ?, __run, __rowid, {cols} FROM ({sel})",
                    (info.txid,),
                )
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
            for inv in reversed(self.schema.children):
                conn.execute(
                    f"DELETE FROM {q(inv.table)} WHERE rowid IN"
                    f" (SELECT __rowid FROM ({self.child_select(inv, '1')}))"
                )
            conn.execute(
                f"DELETE FROM {q(cfg.runs_table)} WHERE {q(cfg.id_column)} IN"
                f" (SELECT id FROM {IDS_TABLE})"
            )
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
            return dropped

        return self._commit_tx(body, before_commit)

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
        """Runs and bytes still in trash for these applies (read-only)."""
        if not txids or not _has_table(self.conn, TOMB_RUNS):
            return 0, 0
        marks = ", ".join("?" * len(txids))
        runs, nbytes = self.conn.execute(
            f"SELECT count(*), coalesce(sum(bytes), 0) FROM {TOMB_RUNS}"
            f" WHERE state = 'trash' AND txid IN ({marks})",
            txids,
        ).fetchone()
        return int(runs), int(nbytes)

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

    def _rowid_is_key(self, table: str) -> bool:
        """Whether the rowid is the table's INTEGER PRIMARY KEY (then other rows may refer
        to it, and it must come back unchanged)."""
        pks = [r for r in self.conn.execute(f"PRAGMA table_info({q(table)})") if r[5] > 0]
        return len(pks) == 1 and str(pks[0][2]).upper() == "INTEGER"

    def _restore_tables(self) -> list[str]:
        return [self.cfg.runs_table, *(c.table for c in self.schema.children)]

    def _shared(self, txid: str) -> dict[RunId, set[RunId]]:
        """Runs of ``txid`` that share a tombstoned row (a row linking two runs): they can
        only come back together (read-only).

        Linear in the tombstones of ``txid``: the rows tombstoned for more than one run are
        found by one grouped scan (served by the ``(txid, run)`` index), never by a self-join
        on the original rowid, which no index serves and which grew with the square of the
        rows. Each shared row links its runs to the first of them (a star): enough for the
        connected groups `undo_plan` builds.
        """
        links: dict[RunId, set[RunId]] = {}
        rid = q(ROWID_COL)
        for table in self._restore_tables():
            tomb = TOMB_PREFIX + table
            if not _has_table(self.conn, tomb):
                continue
            hub: dict[Any, RunId] = {}
            for row, run in self.conn.execute(
                f"SELECT {rid}, {q(RUN_COL)} FROM {q(tomb)} WHERE {q(TXID_COL)} = ?"
                f" AND {rid} IN (SELECT {rid} FROM {q(tomb)} WHERE {q(TXID_COL)} = ?"
                f" GROUP BY {rid} HAVING count(DISTINCT {q(RUN_COL)}) > 1)",
                (txid, txid),
            ):
                first = hub.setdefault(row, run)
                if first != run:
                    links.setdefault(first, set()).add(run)
                    links.setdefault(run, set()).add(first)
        return links

    def undo_plan(
        self, txid: str, run_ids: list[RunId], blocked: dict[RunId, str]
    ) -> tuple[dict[RunId, str], list[list[RunId]]]:
        """Which runs of ``txid`` cannot be restored, and the rest in groups that must be
        restored together. Read-only.

        A run conflicts when ``blocked`` says so (its path is taken, say), when its id exists
        again, or when a row id it needs is taken in a table whose rowid is the primary key.
        A run sharing a row with a conflicting run conflicts too: restoring one half of a
        link row would leave it pointing at a run that is not there.
        """
        cfg = self.cfg
        self.load_ids(run_ids)
        out: dict[RunId, str] = dict(blocked)
        for rid in self.existing_ids():
            out.setdefault(rid, f"run id {rid!r} exists again in {cfg.runs_table!r}")
        for table in self._restore_tables():
            tomb = TOMB_PREFIX + table
            if not _has_table(self.conn, tomb) or not self._rowid_is_key(table):
                continue
            for (rid,) in self.conn.execute(
                f"SELECT DISTINCT tb.{q(RUN_COL)} FROM {q(tomb)} AS tb"
                f" JOIN {IDS_TABLE} AS ids ON tb.{q(RUN_COL)} = ids.id"
                f" JOIN {q(table)} AS t ON t.rowid = tb.{q(ROWID_COL)}"
                f" WHERE tb.{q(TXID_COL)} = ?",
                (txid,),
            ):
                out.setdefault(rid, f"a row of {table!r} took its place (same rowid)")
        links = self._shared(txid)
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

        def restore(ids: list[RunId]) -> None:
            self.load_ids(ids)
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
                    conn.execute(
                        f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
                        f" GROUP BY {rid} ORDER BY {rid}",
                        (target,),
                    )
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
                conn.execute(
                    f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
                    f" AND {rid} NOT IN {taken} GROUP BY {rid} ORDER BY {rid}",
                    (target,),
                )
                conn.execute(
                    f"INSERT INTO {q(table)} ({names}) SELECT {names} {rows}"
                    f" AND {rid} IN {taken} GROUP BY {rid} ORDER BY {rid}",
                    (target,),
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

        def body() -> dict[RunId, str]:
            # Read inside the transaction: a locked catalog refuses the commit as a whole.
            key_tables.update(t for t in tables if self._rowid_is_key(t))
            tombs.update(_tomb_tables(conn))
            refused: dict[RunId, str] = {}
            restored: list[RunId] = [rid for g in groups for rid in g]
            conn.execute("SAVEPOINT restore_all")
            try:
                restore(restored)
                conn.execute("RELEASE restore_all")
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK TO restore_all")
                conn.execute("RELEASE restore_all")
                restored = []
                for group in groups:
                    conn.execute("SAVEPOINT restore_group")
                    try:
                        restore(group)
                    except sqlite3.IntegrityError as exc:
                        conn.execute("ROLLBACK TO restore_group")
                        for rid in group:
                            refused[rid] = f"the catalog refused its rows: {exc}"
                    else:
                        restored += group
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
            return refused

        result: dict[RunId, str] = self._commit_tx(body, before_commit)
        return result

    def restored_by(self, undo_txid: str) -> set[RunId]:
        if not _has_table(self.conn, TOMB_RUNS):
            return set()
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT run_id FROM {TOMB_RUNS} WHERE undo_txid = ?", (undo_txid,)
            )
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

        self._commit_tx(body, before_commit)

    def mark_purged(self, targets: list[str], now: str) -> None:
        """After the trash directories are gone: mark purged, drop the row tombstones (the
        deletion log in ``_retention_tx`` / ``_retention_runs`` stays). Idempotent."""
        conn = self.conn

        marks = ", ".join("?" * len(targets))

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
            for tomb in _tomb_tables(conn) + _tables_like(conn, NULLS_PREFIX):
                conn.execute(f"DELETE FROM {q(tomb)} WHERE {q(TXID_COL)} IN ({marks})", targets)

        self._commit_tx(body, None)
