"""The PostgreSQL catalog: ``catalog.path = "postgresql://user@host:port/db"``.

The SQL of plan, apply, undo and purge is the one `retention.catalog` and
`retention.tombstones` share with SQLite; here are PostgreSQL's hooks:

* **Our tables** (identity, the txid rows, tombstones, the audit trail) live in a schema of
  their own, ``retention``, of the same database, so they are written in the same
  transaction as the deletes. The connection's ``search_path`` puts that schema before the
  application's, and every name we create starts with ``_retention_``. Tombstone columns
  take the types of the application's columns (``format_type``), so values come back
  exactly.
* **Transactions** are ``REPEATABLE READ``: every statement of apply's commit (re-checking
  the rows, copying them into tombstones, deleting them) sees one snapshot, so a row a
  writer adds or changes meanwhile is never deleted without its tombstone; the writer's
  change instead makes our transaction fail (serialization failure) and it is refused,
  nothing changed. Waits for locks are bounded by ``lock_timeout`` (catalog.busy_timeout)
  and reported as a busy catalog. Commits are durable (``synchronous_commit = on`` for
  our session).
* **Row identity** within a transaction is the ``ctid``; across transactions rows are
  restored by value (the application's keys are ordinary columns here, unlike SQLite's
  rowid). References that the database itself updates on delete (``ON DELETE SET NULL`` /
  ``SET DEFAULT``) are refused for now: undo could not find those rows again by ctid.
* **Exclusion** against a retention process on another machine writing to the same
  database: a session advisory lock, taken when the catalog is opened for writing (exit 6
  with the holder's pid when it is held). On one machine the workspace lock comes first.
* **Erasure**: PostgreSQL does not overwrite freed tuples (there is no ``secure_delete``);
  their space is reused after VACUUM. Documented in README.
"""

from __future__ import annotations

import functools
import re
import uuid
from typing import TYPE_CHECKING, Any

from retention.catalog import ForeignKey, Hop, q
from retention.config import Config, shown_catalog
from retention.errors import CatalogError, ConfigError, LockedError
from retention.tombstones import (
    ROWID_COL,
    RUN_COL,
    TOMB_PREFIX,
    TXID_COL,
    CatalogSpace,
    RetentionUsage,
    TrashCatalog,
)

if TYPE_CHECKING:
    import psycopg

SCHEMA = "retention"
# pg_try_advisory_lock's key: "retention" as a 64-bit number, one per database.
ADVISORY_KEY = int.from_bytes(b"retentio", "big") & 0x7FFFFFFFFFFFFFFF
# SQLSTATEs meaning another transaction was in the way: a lock not granted within
# lock_timeout, a serialization failure, a deadlock, a statement cancelled by timeout.
BUSY_STATES = {"55P03", "40001", "40P01", "57014"}
_DELETE_ACTIONS = {
    "a": "NO ACTION",
    "r": "RESTRICT",
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
}


@functools.lru_cache(maxsize=1024)
def to_pyformat(sql: str) -> str:
    """SQL written with ``?`` placeholders (the shared catalog code's) in psycopg's form:
    ``%s``, and every literal ``%`` doubled. Quoted strings, quoted identifiers and
    ``--`` comments are copied as they are (but for ``%``)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:  # a doubled quote inside
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif ch == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class PgConnection:
    """A psycopg connection with the DB-API shape the shared catalog code uses (that of
    `sqlite3.Connection` in autocommit mode): ``execute`` and ``executemany`` with ``?``
    placeholders, ``BEGIN``/``COMMIT``/``ROLLBACK`` as statements."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(to_pyformat(sql), tuple(params))

    def executemany(self, sql: str, rows: Any) -> Any:
        cur = self.raw.cursor()
        cur.executemany(to_pyformat(sql), [tuple(r) for r in rows])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self.raw.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


class PgIntrospect:
    """The schema walk's questions, answered from ``pg_catalog`` (read-only). The
    application's tables are those of the schemas on the search path (ours excluded);
    ours are found by name, through the same path."""

    def __init__(self, conn: PgConnection) -> None:
        self.conn = conn

    def _app_schemas(self) -> str:
        return (
            "n.nspname = ANY (current_schemas(false)) AND n.nspname <> 'retention'"
            " AND c.relkind IN ('r', 'p')"
        )

    def table_names(self) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                f" WHERE {self._app_schemas()} ORDER BY c.relname"
            )
        ]

    def has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT to_regclass(?)", (q(name),)).fetchone()[0] is not None

    def ours_like(self, prefix: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'retention' AND c.relkind = 'r' AND starts_with(c.relname, ?)"
                " ORDER BY c.relname",
                (prefix,),
            )
        ]

    def typed_columns(self, table: str) -> list[tuple[str, str]]:
        """(name, SQL type) of the stored columns (generated ones left out)."""
        return [
            (r[0], r[1])
            for r in self.conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = to_regclass(?) AND attnum > 0 AND NOT attisdropped"
                " AND attgenerated = '' ORDER BY attnum",
                (q(table),),
            )
        ]

    def columns(self, table: str) -> list[str]:
        return [name for name, _ in self.typed_columns(table)]

    def foreign_keys(self, table: str) -> list[ForeignKey]:
        out = []
        for other, cols, other_cols, action in self.conn.execute(
            "SELECT p.relname,"
            " ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(n, i)"
            "  JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i),"
            " ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(n, i)"
            "  JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i),"
            " k.confdeltype"
            " FROM pg_constraint k JOIN pg_class p ON p.oid = k.confrelid"
            " WHERE k.contype = 'f' AND k.conrelid = to_regclass(?) ORDER BY k.conname",
            (q(table),),
        ):
            action = _DELETE_ACTIONS.get(str(action), "NO ACTION")
            out.append(ForeignKey(tuple(cols), str(other), tuple(other_cols), action))
        return out

    def pks(self, table: str) -> list[str]:
        row = self.conn.execute(
            "SELECT ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS u(n, o)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.n ORDER BY u.o)"
            " FROM pg_index i WHERE i.indrelid = to_regclass(?) AND i.indisprimary",
            (q(table),),
        ).fetchone()
        return list(row[0]) if row else []


class PostgresCatalog(TrashCatalog):
    """A catalog in a PostgreSQL database."""

    ROWID = "ctid"
    IDS_TABLE = "pg_temp._retention_ids"
    BLOB = "bytea"
    db: PgIntrospect
    conn: PgConnection

    def _open(self) -> None:
        try:
            import psycopg
            from psycopg.types.string import TextLoader
        except ImportError:
            raise ConfigError(
                "catalog.path is a PostgreSQL URL, but psycopg is not installed",
                hint="pip install 'retention[postgres]' (psycopg 3)",
            ) from None
        self.Error = psycopg.Error
        self.IntegrityError = psycopg.errors.IntegrityError
        cfg = self.cfg
        url = str(cfg.catalog_path).strip()
        self.path = shown_catalog(url)
        try:
            raw = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise CatalogError(
                f"cannot connect to catalog {self.path}: {_first_line(exc)}",
                hint="check the URL, that the server runs and accepts this user"
                " (catalog.path, or RETENTION_CATALOG_PATH)",
            ) from None
        # Run ids of a uuid column are text to us, as they are in a manifest.
        raw.adapters.register_loader("uuid", TextLoader)
        self.conn = PgConnection(raw)
        try:
            found = raw.execute("SELECT current_schemas(false)").fetchone()
            schemas = ", ".join(q(x) for x in (found[0] if found else []))
            self.conn.execute(f"SET search_path = {q(SCHEMA)}{', ' + schemas if schemas else ''}")
            self.conn.execute(f"SET lock_timeout = {int(cfg.busy_timeout_ms)}")
            if not self.readonly:
                self.conn.execute("SET synchronous_commit = on")
                self._exclude_other_writers()
        except BaseException:
            raw.close()
            raise
        self.db = PgIntrospect(self.conn)

    def _exclude_other_writers(self) -> None:
        (got,) = self.conn.execute("SELECT pg_try_advisory_lock(?)", (ADVISORY_KEY,)).fetchone()
        if got:
            return
        holder = self.conn.execute(
            "SELECT l.pid, a.client_addr, a.backend_start FROM pg_locks l"
            " LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
            " AND l.granted AND l.database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = ?",
            (ADVISORY_KEY,),
        ).fetchone()
        who = f" (server process {holder[0]})" if holder else ""
        raise LockedError(
            f"another retention process is writing to catalog {self.path}{who}",
            hint="wait for it to finish; each database takes one retention writer at a time",
        )

    def locator(self) -> str:
        """The server's system identifier and the database's oid (stable across host
        names and addresses), else the address as connected."""
        try:
            row = self.conn.execute(
                "SELECT (SELECT system_identifier FROM pg_control_system()),"
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchone()
            return f"postgresql:{row[0]}/{row[1]}"
        except self.Error:
            info = self.conn.raw.info
            return f"postgresql:{info.host}:{info.port}/{info.dbname}"

    # -- read-side hooks ---------------------------------------------------------------

    @functools.cached_property
    def _id_sql_type(self) -> str:
        types = dict(self.db.typed_columns(self.cfg.runs_table))
        return types.get(self.cfg.id_column, "text")

    def id_keys(self, text: str) -> list[Any]:
        """A typed id column holds one kind of value: the text as that type, or nothing
        (a word is no integer id; a malformed uuid is no uuid id)."""
        kind = self._id_sql_type
        if kind in ("integer", "bigint", "smallint"):
            keys = super().id_keys(text)
            return keys[1:]
        if kind == "uuid":
            try:
                return [str(uuid.UUID(text.strip()))]
            except ValueError:
                return []
        return [text]

    def _create_ids_table(self) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.IDS_TABLE}")
        self.conn.execute(
            "CREATE TEMP TABLE _retention_ids (n bigint GENERATED ALWAYS AS IDENTITY"
            f" PRIMARY KEY, id {self._id_sql_type} NOT NULL UNIQUE)"
        )

    def _insert_ids(self, ids: list[Any]) -> None:
        cur = self.conn.raw.cursor()
        with cur.copy(f"COPY {self.IDS_TABLE} (id) FROM STDIN") as copy:
            for i in ids:
                copy.write_row((i,))
        self.conn.execute(f"ANALYZE {self.IDS_TABLE}")

    def _check_references(self, setters: list[Hop]) -> None:
        if setters:
            hop = setters[0]
            raise CatalogError(
                f"{hop.child}.{','.join(hop.child_cols)} references {hop.parent} ON DELETE"
                f" {hop.action}: on PostgreSQL retention cannot restore such references on"
                " undo yet",
                hint=f"name {hop.child} in catalog.child_tables to delete its rows with the"
                " runs, or keep this catalog on SQLite",
            )

    # -- write-side hooks --------------------------------------------------------------

    def overwrite_deleted(self) -> None:
        """PostgreSQL has no secure_delete: deleted rows stay in their pages until VACUUM
        frees the space and new rows reuse it (README: the catalogs compared)."""

    def _begin(self) -> None:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def _in_transaction(self) -> bool:
        return self.conn.in_transaction

    def _is_busy(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in BUSY_STATES

    def _id_type(self) -> str:
        return self._id_sql_type

    def _instant(self, expr: str) -> str:
        return f"CAST({expr} AS timestamptz)"

    def _ddl_statements(self) -> list[str]:
        return [f"CREATE SCHEMA IF NOT EXISTS {q(SCHEMA)}", *super()._ddl_statements()]

    def _ensure_tomb(self, table: str, columns: list[str]) -> str:
        tomb = TOMB_PREFIX + table
        types = dict(self.db.typed_columns(table))
        have = self.db.columns(tomb)
        if not have:
            cols = ", ".join(f"{q(c)} {types.get(c, 'text')}" for c in columns)
            self.conn.execute(
                f"CREATE TABLE {q(SCHEMA)}.{q(tomb)} ({q(TXID_COL)} text NOT NULL,"
                f" {q(RUN_COL)} {self._id_sql_type}, {q(ROWID_COL)} tid, {cols})"
            )
            self.conn.execute(
                f"CREATE INDEX {q(tomb + '_tx')} ON {q(SCHEMA)}.{q(tomb)}"
                f" ({q(TXID_COL)}, {q(RUN_COL)})"
            )
        else:
            for c in columns:
                if c not in have:  # the application added a column since the last apply
                    self.conn.execute(
                        f"ALTER TABLE {q(SCHEMA)}.{q(tomb)} ADD COLUMN {q(c)}"
                        f" {types.get(c, 'text')}"
                    )
        return tomb

    def _ensure_nulls(self, table: str) -> str:
        raise CatalogError("ON DELETE SET NULL / SET DEFAULT is not supported on PostgreSQL")

    def _default_value(self, table: str, column: str) -> Any:
        raise CatalogError("ON DELETE SET DEFAULT is not supported on PostgreSQL")

    def _rowid_is_key(self, table: str) -> bool:
        return False  # keys are columns, restored by value

    def _insert_restored(self, table: str, names: str, rows: str, params: Any) -> int:
        rid = q(ROWID_COL)
        n = self.conn.execute(
            f"INSERT INTO {q(table)} ({names}) OVERRIDING SYSTEM VALUE SELECT {names}"
            f" FROM (SELECT DISTINCT ON ({rid}) {rid}, {names} {rows} ORDER BY {rid}) AS s",
            params,
        ).rowcount
        return max(n, 0)

    def _create_rows_table(self) -> str:
        self.conn.execute("DROP TABLE IF EXISTS pg_temp._retention_rows")
        self.conn.execute(
            "CREATE TEMP TABLE _retention_rows (t integer NOT NULL, r tid,"
            f" run {self._id_sql_type})"
        )
        self.conn.execute("CREATE INDEX ON pg_temp._retention_rows (t, r, run)")
        return "pg_temp._retention_rows"

    def space_report(self) -> tuple[CatalogSpace | None, RetentionUsage | None]:
        """What retention's own tables take (with their indexes and TOAST), exactly; the
        server's files are its own business (None)."""
        tomb = log = 0
        for name, size in self.conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'retention' AND c.relkind = 'r'"
        ):
            if str(name).startswith(TOMB_PREFIX):
                tomb += int(size)
            else:
                log += int(size)
        return None, RetentionUsage(tombstone_bytes=tomb, log_bytes=log, exact=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return re.sub(r"\s+", " ", text.splitlines()[0]) if text else type(exc).__name__


class ServerStorage:
    """`retention purge --vacuum` and the catalog's file size, for a PostgreSQL catalog:
    the server owns its storage, so there is nothing to report and nothing to vacuum from
    here (autovacuum, or the DBA's VACUUM, gives space back)."""

    def __init__(self, cfg: Config, *, readonly: bool = True) -> None:
        self.cfg = cfg
        if not readonly:  # asked for a vacuum: refused before anything is purged
            self.reclaim()

    def __enter__(self) -> ServerStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def space(self) -> None:
        return None

    def reclaim(self) -> str:
        raise ConfigError(
            "purge --vacuum applies to SQLite catalogs; PostgreSQL gives space back with"
            " its own VACUUM (autovacuum)",
            hint="run VACUUM on the retention schema's tables if autovacuum is off",
        )
