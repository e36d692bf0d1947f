"""The SQLite catalog: the embedded default, one file that belongs to the application.

We never change its journal mode; ``plan`` opens it with ``mode=ro`` so that it cannot
write at all, and apply, undo and purge write on a connection of their own with ``BEGIN
IMMEDIATE`` and ``synchronous=EXTRA``. Everything else of the SQL catalog is shared with
the other backends (`retention.catalog`, `retention.tombstones`); here are the hooks: the
connection, the schema from ``sqlite_master`` and the PRAGMAs, the rowid, untyped tombstone
columns (every value keeps its storage class), and the file's own pages (`CatalogFile`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sqlite3
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from journal import FsyncError
from journal.fsio import fsync_dir
from retention.catalog import ForeignKey, Involved, OddRows, q
from retention.config import Config, catalog_url_problem
from retention.durations import format_bytes, format_duration
from retention.errors import (
    CatalogError,
    StorageError,
    catalog_error,
    hot_journal_error,
    is_hot_journal,
)
from retention.tombstones import (
    COL_COL,
    NEW_COL,
    NULLS_PREFIX,
    OLD_COL,
    ROWID_COL,
    RUN_COL,
    TOMB_PREFIX,
    TXID_COL,
    CatalogSpace,
    RetentionUsage,
    TrashCatalog,
)

if TYPE_CHECKING:
    from retention.catalogs.beside import Beside, NotBeside

ODD_ROWS_MAX = 10_000  # `SqliteCatalog.prefetch_odd` gives up beyond this many rows


class SqliteCatalog(TrashCatalog):
    """A catalog stored in one SQLite file."""

    ROWID = "rowid"
    IDS_TABLE = "temp._retention_ids"
    PLAIN_TABLE = "temp._retention_plain"  # `path_tuples`' values to return
    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError

    def _open(self) -> None:
        cfg = self.cfg
        readonly = self.readonly
        self.path = Path(cfg.catalog_path)
        url = catalog_url_problem(str(cfg.catalog_path))
        if url is not None:  # load_config refuses it already; a Config built otherwise
            raise CatalogError(url[0], hint=url[1])
        if not self.path.exists():
            source = cfg.sources.get("catalog_path", "default")
            if cfg.config_file is None and source == "default":
                why = "no retention.toml here, so the built-in default layout applies"
            else:
                why = f"catalog.path, from {source}"
            raise CatalogError(
                f"catalog {self.path} does not exist ({why})",
                hint="run from the workspace directory, or pass --config PATH"
                " (or set RETENTION_CATALOG_PATH)",
            )
        if self.path.is_dir():
            raise CatalogError(f"catalog {self.path} is a directory, not an SQLite file")
        uri = _uri(self.path, readonly)
        try:
            self.conn = sqlite3.connect(
                uri, uri=True, isolation_level=None, timeout=cfg.busy_timeout_ms / 1000
            )
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from None
        try:
            # Pragmas first, before any statement of ours reads the database.
            # How long we wait for the application's writers (catalog.busy_timeout).
            self.conn.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
            if not readonly:
                # Our connection only: the catalog's journal mode belongs to the application
                # and is never changed. EXTRA, not FULL: in rollback-journal (DELETE) mode the
                # commit point is the unlink of the -journal file, and only EXTRA fsyncs the
                # directory after it; under FULL a power loss can bring the journal back and
                # roll back a commit our own journal already counts as done. In WAL mode
                # EXTRA is FULL plus that same care.
                self.conn.execute("PRAGMA synchronous = EXTRA")
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if is_hot_journal(exc):  # mode=ro met an interrupted transaction: exit 7
                raise hot_journal_error(self.path) from None
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from None
        if not readonly:
            self._sync_directory()
        self.db = SqliteIntrospect(self.conn)

    def _sync_directory(self) -> None:
        """fsync the catalog's directory, once, after the read-write open.

        A hot rollback journal (a writer, any writer, interrupted by a crash or power cut)
        is rolled back by the first statement that reads the database, and ``PRAGMA
        synchronous`` itself loads the schema: SQLite unlinks that journal while the level
        is still the default, without fsyncing the directory. A power loss could then bring
        the journal back, to be played back again over whatever was written since; this
        fsync makes its removal durable before we write anything. Done on every read-write
        open: whether a journal was rolled back is not something SQLite reports.
        """
        directory = self.path.absolute().parent
        try:
            fsync_dir(directory)
        except FsyncError:
            self.conn.close()
            raise  # fatal, never retried; the CLI says so (exit 7)
        except OSError as exc:
            self.conn.close()
            raise StorageError(
                f"cannot fsync the catalog's directory {directory}: {exc.strerror or exc}",
                hint="retention needs to open the catalog's directory to make SQLite's"
                " rollback of an interrupted transaction durable; fix its permissions",
            ) from None

    def locator(self) -> str:
        """Where this catalog is: the real path and inode of the file (for the binding)."""
        st = self.path.stat()
        return f"sqlite:{os.path.realpath(self.path)}#dev={st.st_dev},ino={st.st_ino}"

    def data_version(self) -> int:
        # Changes when another connection (of any process) commits; our own commits leave
        # it as it is (our own connection writes nothing the fingerprints read).
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def fingerprints_beside(self, runs: list[Any], rows_fps: list[str]) -> Beside | NotBeside:
        from retention.catalogs.beside import MIN_RUNS, NotBeside, start

        # WAL only: there a reader never holds the application's writers up; in rollback-
        # journal mode the helper's read lock would (the commit reads the rows then, as
        # it always did).
        if self.readonly or len(runs) < MIN_RUNS:
            return NotBeside()
        if str(self.conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            return NotBeside()
        return start(self.cfg, self.data_version(), runs, rows_fps)

    # -- read-side hooks ---------------------------------------------------------------

    def _create_ids_table(self) -> None:
        # n is the rowid: reads go in ranges of it; id is unique (the joins use its index).
        self.conn.execute(f"DROP TABLE IF EXISTS {self.IDS_TABLE}")
        self.conn.execute(
            "CREATE TEMP TABLE _retention_ids (n INTEGER PRIMARY KEY, id NOT NULL UNIQUE)"
        )

    def _insert_ids(self, ids: list[Any]) -> None:
        with self._temp_transaction():
            # One JSON array, unpacked by SQLite (a C loop: a hundred thousand ids in 0.05 s
            # instead of 0.3 s), when it gives every id back exactly: text without NUL
            # (json_each cuts a string at one) and 64-bit integers. Otherwise, or without
            # JSON support, one bound row each.
            packed = _json_ids(ids)
            if packed is not None:
                try:
                    self.conn.execute(
                        f"INSERT INTO {self.IDS_TABLE} (id) SELECT value FROM json_each(?)"
                        " ORDER BY key",
                        (packed,),
                    )
                except sqlite3.OperationalError:  # no JSON support: the statement did nothing
                    packed = None
            if packed is None:
                self.conn.executemany(
                    f"INSERT INTO {self.IDS_TABLE} (id) VALUES (?)", ((i,) for i in ids)
                )
            # Statistics of the temp table (in the temp schema: the catalog is not written):
            # without them SQLite takes it for as large as any table and scans the runs
            # table (and each child table) once per statement, probing the ids, instead of
            # looking up each id: at a million runs, seconds per statement whatever the
            # batch size.
            self.conn.execute(f"ANALYZE {self.IDS_TABLE}")

    def path_tuples(
        self,
        skip_plain: tuple[str, Collection[str]] | None = None,
        odd: OddRows | None = None,
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """`SqlCatalog.path_tuples`, leaving out in SQL the rows ``skip_plain`` allows
        (at a million runs, nearly all of them: a C loop instead of a Python one). The test
        errs on the side of returning a row: compared as bytes, and under the column's own
        collation, which may only find more values equal (never fewer) than Python does.

        ``odd``: the rows whose value in that column is not a plain name, fetched earlier
        (`prefetch_odd`, on another connection while the caller was busy): then only the
        plain values among the wanted ones are looked for here."""
        cols = self.path_columns()
        no_path = not (self.cfg.path_column or self.cfg.path_template)
        if skip_plain is None or no_path or skip_plain[0] not in cols:
            return super().path_tuples()
        column, wanted = skip_plain
        odd_rows = odd.rows(column, cols) if odd is not None else None
        v, plain = q(column), self._plain_sql(column)
        # A value that is not UTF-8 (a lone surrogate: a name that is not) equals no text
        # SQLite hands over, and cannot be bound: it need not be there.
        values = [(w,) for w in wanted if _utf8(w)]
        if values:  # (none: no temp table, and no probe per row)
            self.conn.execute(f"DROP TABLE IF EXISTS {self.PLAIN_TABLE}")
            self.conn.execute("CREATE TEMP TABLE _retention_plain (v TEXT PRIMARY KEY)")
            with self._temp_transaction():
                self.conn.executemany(
                    f"INSERT OR IGNORE INTO {self.PLAIN_TABLE} (v) VALUES (?)", values
                )
        select = self._select(cols)
        if odd_rows is None:
            if values:
                plain += f" AND {v} NOT IN (SELECT v FROM {self.PLAIN_TABLE})"
            return cols, iter(self.conn.execute(f"{select} WHERE NOT ({plain})"))
        # The same rows in two parts: the odd ones already fetched, then the plain ones
        # among the wanted values.
        if not values:
            return cols, iter(odd_rows)
        found = self.conn.execute(
            f"{select} WHERE ({plain}) AND {v} IN (SELECT v FROM {self.PLAIN_TABLE})"
        )
        return cols, itertools.chain(odd_rows, found)

    def _select(self, cols: list[str]) -> str:
        """SELECT of ``cols`` from the runs table (`path_tuples`'s rows)."""
        return f"SELECT {', '.join(q(c) for c in cols)} FROM {q(self.cfg.runs_table)}"

    def _plain_sql(self, column: str) -> str:
        """The SQL test that ``column`` holds a plain name (`planner._plain`), as bytes."""
        v, raw = q(column), f"CAST({q(column)} AS BLOB)"
        return (
            f"typeof({v}) = 'text' AND {v} NOT IN ('', '.', '..')"
            f" AND instr({raw}, x'2f') = 0 AND instr({raw}, x'3a') = 0"
            f" AND instr({raw}, x'00') = 0"
        )

    def prefetch_odd(self, column: str) -> OddRows | None:
        """Start fetching, on a connection of its own in a thread, the rows `path_tuples`
        returns for ``column`` whatever the wanted values: those whose value there is not a
        plain name. The scan of every run is SQLite's C loop, which releases the GIL: it
        runs on another core while this process reads and evaluates the runs. Read-only."""
        cols = self.path_columns()
        if column not in cols:
            return None
        sql = f"{self._select(cols)} WHERE NOT ({self._plain_sql(column)})"
        uri = _uri(self.path, readonly=True)
        timeout_ms = int(self.cfg.busy_timeout_ms)

        def fetch() -> list[tuple[Any, ...]] | None:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout_ms / 1000)
            try:
                conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
                cur = conn.execute(sql)
                rows = cur.fetchmany(ODD_ROWS_MAX + 1)
                # Nearly every row odd (integer ids: not text, so not plain by this test):
                # held here they would all be in memory at once; streamed later instead.
                return rows if len(rows) <= ODD_ROWS_MAX else None
            finally:
                conn.close()

        return OddRows(column, cols, fetch, sqlite3.Error)

    def references(self, child: str, parent: str) -> str:
        # The first comparison finds the rows through the child column's index; the second
        # is how SQLite's foreign keys compare: under the parent key's collation, with the
        # parent's affinity applied to the child's value ("+" leaves that value without an
        # affinity of its own). A child column declared with another collation or type
        # (NOCASE, INTEGER) would otherwise take rows of another run too: "a" for "A", 42
        # for '42'.
        return f"{child} = {parent} AND {parent} = +{child}"

    def unique_column(self, column: str) -> bool:
        """A unique index of that column alone, not partial (a text primary key's among
        them). Under any collation it holds no two byte-equal texts."""
        conn, table = self.conn, self.cfg.runs_table
        try:
            for _, name, unique, _, partial in conn.execute(f"PRAGMA index_list({q(table)})"):
                if unique and not partial:
                    cols = [r[2] for r in conn.execute(f"PRAGMA index_info({q(name)})")]
                    if cols == [column]:
                        return True
        except sqlite3.Error:
            return False
        return False

    @contextlib.contextmanager
    def _temp_transaction(self) -> Iterator[None]:
        """Writes to our temporary tables as one transaction (a savepoint: nested in the
        caller's transaction, if there is one). In autocommit mode each row an
        ``executemany`` inserts is a transaction of the temp database of its own: twice as
        slow on a connection's first load, ten times once the temp database has a file and
        a journal (any later load). Only the temp database is written; the catalog is not."""
        self.conn.execute("SAVEPOINT _retention_temp")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK TO _retention_temp")
                self.conn.execute("RELEASE _retention_temp")
            raise
        self.conn.execute("RELEASE _retention_temp")

    def _check_involved(self, inv: Involved) -> None:
        try:
            self.conn.execute(f"SELECT rowid FROM {q(inv.table)} LIMIT 0").fetchall()
        except sqlite3.OperationalError:
            raise CatalogError(
                f"table {inv.table!r} is a WITHOUT ROWID table, which retention does not"
                " support yet"
            ) from None

    # -- write-side hooks --------------------------------------------------------------

    def overwrite_deleted(self) -> None:
        # Deleted content is zeroed in the pages written (the WAL, then the file), not left
        # in free space for anyone reading the file's bytes.
        self.conn.execute("PRAGMA secure_delete = ON")

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def _in_transaction(self) -> bool:
        return bool(self.conn.in_transaction)

    def _is_busy(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

    def _id_type(self) -> str:
        return ""  # untyped: a run id keeps its storage class

    def _instant(self, expr: str) -> str:
        return f"julianday({expr})"

    def _ensure_tomb(self, table: str, columns: list[str]) -> str:
        conn = self.conn
        tomb = TOMB_PREFIX + table
        have = self.db.columns(tomb)
        if not have:
            # Untyped columns (BLOB affinity): values keep their exact storage class.
            cols = ", ".join(q(c) for c in columns)
            conn.execute(
                f"CREATE TABLE {q(tomb)} ({q(TXID_COL)} TEXT NOT NULL, {q(RUN_COL)},"
                f" {q(ROWID_COL)} INTEGER, {cols})"
            )
            conn.execute(
                f"CREATE INDEX {q(tomb + '_tx')} ON {q(tomb)} ({q(TXID_COL)}, {q(RUN_COL)})"
            )
        else:
            for c in columns:
                if c not in have:  # the application added a column since the last apply
                    conn.execute(f"ALTER TABLE {q(tomb)} ADD COLUMN {q(c)}")
        return tomb

    def _ensure_nulls(self, table: str) -> str:
        name = NULLS_PREFIX + table
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q(name)} ({q(TXID_COL)} TEXT NOT NULL, {q(RUN_COL)},"
            f" {q(ROWID_COL)} INTEGER, {q(COL_COL)} TEXT, {q(OLD_COL)}, {q(NEW_COL)})"
        )
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS {q(name + '_tx')} ON {q(name)}"
            f" ({q(TXID_COL)}, {q(RUN_COL)})"
        )
        return name

    def _default_value(self, table: str, column: str) -> Any:
        for row in self.conn.execute(f"PRAGMA table_info({q(table)})"):
            if row[1] == column and row[4] is not None:
                return self.conn.execute(f"SELECT {row[4]}").fetchone()[0]
        return None

    def _rowid_is_key(self, table: str) -> bool:
        """Whether the rowid is the table's INTEGER PRIMARY KEY (then other rows may refer
        to it, and it must come back unchanged)."""
        pks = [r for r in self.conn.execute(f"PRAGMA table_info({q(table)})") if r[5] > 0]
        return len(pks) == 1 and str(pks[0][2]).upper() == "INTEGER"

    def _insert_restored(self, table: str, names: str, rows: str, params: Any) -> int:
        conn = self.conn
        rid = q(ROWID_COL)
        if self._rowid_is_key(table):
            n = conn.execute(
                f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
                f" GROUP BY {rid} ORDER BY {rid}",
                params,
            ).rowcount
            return max(n, 0)
        # Not the key: keep each rowid that is still free; rows whose rowid the
        # application reused since come back with a new one (nothing refers to it).
        conn.execute("DROP TABLE IF EXISTS temp._retention_taken")
        conn.execute(
            f"CREATE TEMP TABLE _retention_taken AS SELECT DISTINCT {rid} AS r {rows}"
            f" AND {rid} IN (SELECT rowid FROM {q(table)})",
            params,
        )
        taken = "(SELECT r FROM temp._retention_taken)"
        n = conn.execute(
            f"INSERT INTO {q(table)} (rowid, {names}) SELECT {rid}, {names} {rows}"
            f" AND {rid} NOT IN {taken} GROUP BY {rid} ORDER BY {rid}",
            params,
        ).rowcount
        n += conn.execute(
            f"INSERT INTO {q(table)} ({names}) SELECT {names} {rows}"
            f" AND {rid} IN {taken} GROUP BY {rid} ORDER BY {rid}",
            params,
        ).rowcount
        return max(n, 0)

    def _create_rows_table(self) -> str:
        self.conn.execute("DROP TABLE IF EXISTS temp._retention_rows")
        self.conn.execute("CREATE TEMP TABLE _retention_rows (t INTEGER NOT NULL, r, run)")
        self.conn.execute("CREATE INDEX temp._retention_rows_tr ON _retention_rows (t, r, run)")
        return "temp._retention_rows"

    def space_report(self) -> tuple[CatalogSpace | None, RetentionUsage | None]:
        """The file's pages, and what retention's own tables take of it (read-only)."""
        return catalog_space(self.conn, self.path), retention_usage(self.conn)


class SqliteIntrospect:
    """What the schema walk asks of the database, straight from ``sqlite_master`` and the
    PRAGMAs (read-only). It stands where sqlite-utils' ``Database`` did: importing that
    cost every command 76 ms."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def table_names(self) -> list[str]:
        return [
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]

    def has_table(self, name: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            ).fetchone()
            is not None
        )

    def ours_like(self, prefix: str) -> list[str]:
        """Our tables whose name starts with ``prefix``."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE ? ESCAPE '\\'",
                (prefix.replace("_", "\\_") + "%",),
            )
        ]

    def columns(self, table: str) -> list[str]:
        """Stored columns (generated and hidden columns excluded: they cannot be inserted)."""
        return [r[1] for r in self.conn.execute(f"PRAGMA table_xinfo({q(table)})") if r[6] == 0]

    def foreign_keys(self, table: str) -> list[ForeignKey]:
        groups: dict[int, list[Any]] = {}
        for row in self.conn.execute(f"PRAGMA foreign_key_list({q(table)})"):
            groups.setdefault(row[0], []).append(row)
        out = []
        for rows in groups.values():
            rows.sort(key=lambda r: r[1])
            cols, parent_cols = tuple(r[3] for r in rows), tuple(r[4] for r in rows)
            out.append(ForeignKey(cols, rows[0][2], parent_cols, str(rows[0][6])))
        return out

    def pks(self, table: str) -> list[str]:
        """The primary key's columns in key order; ``["rowid"]`` for a table without one."""
        cols = sorted(
            (r[5], r[1]) for r in self.conn.execute(f"PRAGMA table_info({q(table)})") if r[5] > 0
        )
        return [name for _, name in cols] or ["rowid"]


# -- the catalog file: its pages, the space retention's tables take, VACUUM --------------


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
        import shutil  # here, not at import: it loads bz2 and lzma (ms of every start-up)

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


def _uri(path: Path, readonly: bool) -> str:
    """The URI we open the catalog file by: read-only, or read-write (never created)."""
    return "file:" + quote(str(path.absolute())) + ("?mode=ro" if readonly else "?mode=rw")


def _json_ids(ids: list[Any]) -> bytes | None:
    """``ids`` as a JSON array that SQLite's ``json_each`` reads back as the same values
    (text without NUL, integers of 64 bits), or None."""
    for i in ids:
        if type(i) is str:
            if "\0" in i:
                return None
        elif type(i) is not int or not -(2**63) <= i < 2**63:
            return None
    try:
        return msgspec.json.encode(ids)
    except (msgspec.EncodeError, UnicodeEncodeError):  # a lone surrogate: not text
        return None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
