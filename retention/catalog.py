"""The read side of an SQL catalog, whatever the database.

A catalog answers: which runs exist (with their timestamps), which rows of which tables
belong to a run (through declared foreign keys, transitively, plus tables named in the
config), and a fingerprint of those rows. This module is the read side; the transactions
that tombstone, delete, restore and record txids are in `retention.tombstones`. Both are
written once, in SQL that SQLite and PostgreSQL share; what differs between the databases
(connecting, the schema catalogue, the row identity, the temporary table of run ids, the
errors) is a small set of hooks that each backend in `retention.catalogs` fills in.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, Self

import msgspec

from retention.config import (
    EXPRESSION_HINT,
    TEMPLATE_HINT,
    Config,
    close_matches,
    expression_problem,
    template_problem,
)
from retention.durations import (
    _MS_THRESHOLD,
    FIRST_US,
    LAST_US,
    manifest_instant,
    parse_stored_time,
)
from retention.errors import (
    CatalogError,
    ConfigError,
)
from retention.policy.ids import RunId

if TYPE_CHECKING:
    from retention.policy import Item

OUR_PREFIX = "_retention_"


def q(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


# What a reference to a deleted row does, by its declared ON DELETE action (see
# `SqlCatalog._load_schema`): the referencing row is owned (deleted with it), set, or
# keeps the referenced run. A reference named in catalog.child_tables is owned.
OWNED, SET_NULL, SET_DEFAULT, BLOCKS = "delete", "set null", "set default", "blocks"


@dataclass(frozen=True)
class Hop:
    """``child.child_cols`` references ``parent.parent_cols``. ``action`` is the declared
    ON DELETE action ("CONFIGURED" for a reference named in catalog.child_tables); it
    does not take part in equality."""

    child: str
    child_cols: tuple[str, ...]
    parent: str
    parent_cols: tuple[str, ...]
    action: str = field(default="CONFIGURED", compare=False)


class Involved(msgspec.Struct):
    """A table whose rows belong to runs, with every chain of hops that leads to the runs table."""

    table: str
    depth: int
    paths: list[tuple[Hop, ...]] = msgspec.field(default_factory=list)
    columns: list[str] = msgspec.field(default_factory=list)


class Schema(msgspec.Struct):
    runs_table: str
    id_column: str
    runs_columns: list[str]
    children: list[Involved]  # parents before children (restore order); reverse to delete
    # References to owned rows that are not ownership: SET NULL / SET DEFAULT ones (the
    # referencing row stays, its columns are set) and blocking ones (RESTRICT, and NO
    # ACTION when catalog.no_action = "blocks": a run referenced by a row that stays is
    # kept).
    setters: list[Hop] = msgspec.field(default_factory=list)
    blockers: list[Hop] = msgspec.field(default_factory=list)

    def involved_tables(self) -> list[str]:
        return [self.runs_table, *(c.table for c in self.children)]


@functools.lru_cache(maxsize=16)
def template_fields(template: str) -> tuple[str, ...]:
    """Column names used by a path template such as ``{experiment_id}/{run_uuid}``.

    `load_config` refuses a bad template already; this refuses it again for a `Config`
    built some other way (plain ``{column}`` fields only: see `template_problem`)."""
    problem = template_problem(template)
    if problem:
        raise ConfigError(f"artifacts.path_template: {problem}", hint=TEMPLATE_HINT)
    import string  # here: status and --help never parse a template

    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f is not None)


_EXACT = 2**53  # an int below this in size is exactly a float: the same instant either way


# The instants a manifest can carry (`parse_stored_time`) in whole seconds since the epoch:
# 1100-01-01 to 8000-12-31T23:59:59.
_FIRST, _LAST = FIRST_US // 1_000_000, LAST_US // 1_000_000

# The ints each format reads as whole seconds since the epoch in that range: (low, high),
# exclusive. Read inline as `Item.at` (seconds times a million: what
# `time_reader` gives, without a datetime); any other value goes through `time_reader`.
WHOLE_SECONDS = {
    "auto": (max(-_MS_THRESHOLD, _FIRST - 1), min(_MS_THRESHOLD, _LAST + 1)),
    "epoch_s": (_FIRST - 1, _LAST + 1),
}


def time_reader(fmt: str, *, keep_offset: bool = False) -> Callable[[object], datetime | None]:
    """`parse_stored_time` for ``fmt`` as a function of the value, with a shortcut for the
    common stored form, an integer count of seconds or milliseconds since the epoch, that
    gives exactly what it gives (at a million runs its generic checks cost more than the
    SELECT); anything else goes through it."""
    general = functools.partial(parse_stored_time, fmt=fmt, keep_offset=keep_offset)
    if fmt not in ("auto", "epoch_s", "epoch_ms"):
        return general
    from_ts = datetime.fromtimestamp

    def parse(value: object) -> datetime | None:
        if type(value) is not int or not -_EXACT < value < _EXACT:
            return general(value)
        try:
            if fmt == "epoch_ms" or (fmt == "auto" and abs(value) >= _MS_THRESHOLD):
                t = from_ts(value / 1000.0, UTC)
            else:
                t = from_ts(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return manifest_instant(t)

    return parse


class OddRows:
    """Rows a catalog fetches in a thread of their own (`SqlCatalog.prefetch_odd`): ``fetch``
    opens its own connection, reads, closes. `rows` waits for them; an error of the kinds
    ``errors`` names, or None from ``fetch``, leaves None (the caller then reads them
    itself)."""

    def __init__(
        self,
        column: str,
        cols: list[str],
        fetch: Callable[[], list[tuple[Any, ...]] | None],
        errors: type[Exception] | tuple[type[Exception], ...],
    ) -> None:
        self.column, self.cols = column, cols
        self._fetch, self._errors = fetch, errors
        self._rows: list[tuple[Any, ...]] | None = None
        self._thread = threading.Thread(target=self._run, name="retention-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._rows = self._fetch()
        except self._errors:
            self._rows = None

    def wait(self) -> None:
        """Until the thread is done (before a fork: no thread may run then)."""
        self._thread.join()

    def rows(self, column: str, cols: list[str]) -> list[tuple[Any, ...]] | None:
        """The rows, once fetched, if they are ``column``'s as ``cols``; else None."""
        self.wait()
        if column != self.column or cols != self.cols:
            return None
        return self._rows


class SqlCatalog:
    """A catalog in an SQL database: the generic read side.

    A backend (`retention.catalogs.sqlite`, `retention.catalogs.postgres`) provides the
    hooks below: `_open` (the connection, ``self.path`` for messages and ``self.db``, the
    schema catalogue), the row identity `ROWID`, the temporary table of run ids, and the
    class of database errors. Everything else is shared.
    """

    # The expression naming a row of any table for the length of a transaction: the
    # SQLite rowid, PostgreSQL's ctid.
    ROWID = "rowid"
    # The temporary table of run ids that set-based statements join against: ``id`` (the
    # run id) and ``n``, its ordinal from 1, by which reads go in ranges of ids.
    IDS_TABLE = "_retention_ids"
    # What the driver raises for any database error, and for a refused constraint.
    Error: type[Exception] = Exception
    IntegrityError: type[Exception] = Exception

    conn: Any
    db: Introspection
    path: Any  # the catalog for messages: a file path, or a URL without its password

    def __init__(self, cfg: Config, *, readonly: bool = True) -> None:
        self.cfg = cfg
        self.readonly = readonly
        self._open()
        try:
            self.schema = self._load_schema()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        """Connect (read-only when ``self.readonly``), set ``conn``, ``path`` and ``db``;
        raise `CatalogError` with one clear line when the catalog cannot be used."""
        raise NotImplementedError

    def _create_ids_table(self) -> None:
        """(Re)create the empty temporary table of run ids (`IDS_TABLE`)."""
        raise NotImplementedError

    def _insert_ids(self, ids: list[RunId]) -> None:
        """Add ``ids`` (distinct) to the temporary table, ``n`` following their order."""
        raise NotImplementedError

    def _check_involved(self, inv: Involved) -> None:
        """Refuse an involved table this backend cannot tombstone and restore."""

    def _check_references(self, setters: list[Hop]) -> None:
        """Refuse references (SET NULL / SET DEFAULT) this backend cannot undo."""

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema --------------------------------------------------------------------------

    def _columns(self, table: str) -> list[str]:
        """Stored columns (generated and hidden columns excluded: they cannot be inserted)."""
        return self.db.columns(table)

    def _check_sql(self, expr: str | None, setting: str) -> None:
        """Refuse ``catalog.filter``/``catalog.protect`` unless it is one expression that
        survives every wrapping plan and apply give it (read-only: prepared with LIMIT 0)."""
        if expr is None:
            return
        problem = expression_problem(expr)  # load_config checked it; a Config built otherwise
        if problem:
            raise ConfigError(f"{setting}: {problem}", hint=EXPRESSION_HINT)
        error = self.expression_error(expr)
        if error is not None:
            raise ConfigError(f"{setting} {expr!r} is not valid SQL here: {error}")

    def _load_schema(self) -> Schema:
        cfg = self.cfg
        tables = set(self.db.table_names())
        if cfg.runs_table not in tables:
            raise CatalogError(
                f"catalog {self.path} has no table {cfg.runs_table!r}",
                hint=tables_hint(cfg.runs_table, tables),
            )
        runs_cols = self._columns(cfg.runs_table)
        needed = [("catalog.id_column", cfg.id_column)]
        needed += [("catalog.time_columns", c) for c in cfg.time_columns]
        if cfg.path_column:
            needed.append(("artifacts.path_column", cfg.path_column))
        elif cfg.path_template:
            needed += [("artifacts.path_template", c) for c in template_fields(cfg.path_template)]
        for setting, col in needed:
            if col not in runs_cols:
                raise CatalogError(
                    f"table {cfg.runs_table!r} has no column {col!r} (named by {setting})",
                    hint=columns_hint(col, runs_cols),
                )
        self._check_sql(cfg.filter, "catalog.filter")
        self._check_sql(cfg.protect, "catalog.protect")

        # Walk foreign keys from the runs table down, breadth first; add configured tables.
        involved: dict[str, Involved] = {}
        frontier: list[tuple[str, tuple[Hop, ...]]] = [(cfg.runs_table, ())]
        fks = {t: self.db.foreign_keys(t) for t in tables if not _ours(t)}
        extra = list(cfg.child_tables)
        if cfg.sources.get("child_tables") == "default":
            # The built-in default names scenario 1's run_metrics; another schema without it
            # should not have to say child_tables = [] to be usable.
            extra = [ct for ct in extra if ct.table in tables]
        for ct in extra:
            if ct.table not in tables:
                raise CatalogError(
                    f"catalog has no table {ct.table!r} (named in catalog.child_tables)",
                    hint=tables_hint(ct.table, tables),
                )
            parent = ct.parent_table or cfg.runs_table
            if parent not in tables:
                raise CatalogError(
                    f"catalog has no table {parent!r} (named in catalog.child_tables)",
                    hint=tables_hint(parent, tables),
                )
            for t, col in ((ct.table, ct.column), (parent, ct.parent_column or cfg.id_column)):
                if col not in (have := self._columns(t)):
                    raise CatalogError(
                        f"table {t!r} has no column {col!r} (named in catalog.child_tables)",
                        hint=columns_hint(col, have),
                    )
        actions = {t: self._on_delete(t) for t in fks}
        setters: list[Hop] = []
        blockers: list[Hop] = []
        depth = 0
        while frontier and depth < 16:
            depth += 1
            nxt: list[tuple[str, tuple[Hop, ...]]] = []
            for parent, path in frontier:
                hops: list[Hop] = []
                for child, keys in fks.items():
                    for fk in keys:
                        if fk.other_table != parent or child == cfg.runs_table:
                            continue
                        cols = tuple(fk.columns)
                        pcols = tuple(c for c in fk.other_columns if c) or tuple(
                            self.db.pks(parent)
                        )
                        act = actions[child].get((cols, parent), "NO ACTION")
                        hops.append(Hop(child, cols, parent, pcols, act))
                configured = []
                for ct in extra:
                    if (ct.parent_table or cfg.runs_table) == parent:
                        pcol = ct.parent_column or cfg.id_column
                        configured.append(Hop(ct.table, (ct.column,), parent, (pcol,)))
                # Named in config: ownership, whatever is declared.
                hops = [h for h in hops if h not in configured] + configured
                owned = []
                for hop in hops:
                    kind = self._kind(hop)
                    if kind == OWNED:
                        owned.append(hop)
                    elif hop not in (setters if kind in (SET_NULL, SET_DEFAULT) else blockers):
                        (setters if kind in (SET_NULL, SET_DEFAULT) else blockers).append(hop)
                for hop in owned:
                    if any(h.child == hop.child for h in path) or hop.child == cfg.runs_table:
                        continue  # a cycle
                    inv = involved.setdefault(hop.child, Involved(hop.child, depth))
                    inv.depth = max(inv.depth, depth)
                    new_path = (hop, *path)
                    if new_path not in inv.paths:
                        inv.paths.append(new_path)
                        nxt.append((hop.child, new_path))
            frontier = nxt
        children = sorted(involved.values(), key=lambda i: (i.depth, i.table))
        for inv in children:
            inv.columns = self._columns(inv.table)
            self._check_involved(inv)
        self._check_references(setters)
        return Schema(cfg.runs_table, cfg.id_column, runs_cols, children, setters, blockers)

    def _on_delete(self, table: str) -> dict[tuple[tuple[str, ...], str], str]:
        """The ON DELETE action of each foreign key ``table`` declares, keyed by (its
        columns, the parent table)."""
        return {
            (fk.columns, fk.other_table): fk.on_delete.upper() for fk in self.db.foreign_keys(table)
        }

    def _kind(self, hop: Hop) -> str:
        """What deleting the referenced row does to the referencing one (see `OWNED`)."""
        if hop.action in ("CONFIGURED", "CASCADE"):
            return OWNED
        if hop.action in ("SET NULL", "SET DEFAULT"):
            return SET_NULL if hop.action == "SET NULL" else SET_DEFAULT
        if hop.action == "NO ACTION" and self.cfg.no_action == "owned":
            return OWNED
        return BLOCKS  # RESTRICT, or NO ACTION declared blocking

    def blocked_runs(self) -> dict[RunId, str]:
        """Loaded runs that a row which stays references through a blocking foreign key
        (RESTRICT, or NO ACTION declared blocking), with the reason (read-only). Rows of
        an owned table that go with the loaded runs do not block."""
        out: dict[RunId, str] = {}
        for hop in self.schema.blockers:
            sel = self.referencing_select(hop, "1")
            inv = next((i for i in self.schema.children if i.table == hop.child), None)
            if inv is not None:
                own = self.child_select(inv, "1")
                sel = f"{sel} WHERE c.{self.ROWID} NOT IN (SELECT __rowid FROM ({own}) AS o)"
            ref = f"{hop.child}.{','.join(hop.child_cols)}"
            for (rid,) in self.conn.execute(f"SELECT DISTINCT __run FROM ({sel}) AS s"):
                out.setdefault(rid, f"referenced by {ref} of a kept row (ON DELETE {hop.action})")
        return out

    def ambiguous_ids(self) -> dict[RunId, str]:
        """Loaded ids that name more than one row of the runs table as the database
        compares them (an id repeated, or ids equal under the column's collation, NOCASE
        or RTRIM: "A" and "a"), with the reason (read-only). Every statement that deletes
        a run by its id would delete them all, kept runs among them."""
        cfg = self.cfg
        found = self.conn.execute(
            f"SELECT ids.id, count(*) FROM {self.IDS_TABLE} AS ids JOIN {q(cfg.runs_table)}"
            f" AS r ON r.{q(cfg.id_column)} = ids.id GROUP BY ids.id HAVING count(*) > 1"
        )
        return {
            rid: f"its id names {n} rows of {cfg.runs_table!r} (repeated, or equal under the"
            " column's collation): deleting it would delete them all"
            for rid, n in found
        }

    def references(self, child: str, parent: str) -> str:
        """SQL that is true when the child column's value references the parent key's, as
        the database's foreign keys compare them (every join from a row to its run)."""
        return f"{child} = {parent}"

    def referencing_select(self, hop: Hop, what: str) -> str:
        """SELECT ``__run, __rowid, <what>`` (``c`` is ``hop.child``) for rows of
        ``hop.child`` that reference a row of a loaded run in ``hop.parent`` (the runs
        table or an owned table) along ``hop``."""

        def keys(alias: str) -> str:
            return ", ".join(f"{alias}.{q(c)} AS __k{i}" for i, c in enumerate(hop.parent_cols))

        if hop.parent == self.cfg.runs_table:
            parent = (
                f"SELECT ids.id AS __run, {keys('p')} FROM {q(hop.parent)} AS p"
                f" JOIN {self.IDS_TABLE} AS ids ON p.{q(self.cfg.id_column)} = ids.id"
            )
        else:
            inv = next(i for i in self.schema.children if i.table == hop.parent)
            parent = self.child_select(inv, keys("t0"))
        on = " AND ".join(
            self.references(f"c.{q(c)}", f"par.__k{i}") for i, c in enumerate(hop.child_cols)
        )
        return (
            f"SELECT par.__run AS __run, c.{self.ROWID} AS __rowid, {what}"
            f" FROM {q(hop.child)} AS c JOIN ({parent}) AS par ON {on}"
        )

    # -- reading -------------------------------------------------------------------------

    def _where(self) -> str:
        return f" WHERE ({self.cfg.filter})" if self.cfg.filter else ""

    def iter_items(self) -> Iterator[Item]:
        """Every run the policy may consider (those matching ``catalog.filter``), streamed.

        Read-only. Timestamps follow ``catalog.time_columns`` in order: the first that parses
        counts; a run whose first non-NULL one does not parse has ``time=None`` (kept).
        """
        from retention.policy import Item  # (the policy engine: not for read-only commands)

        cfg = self.cfg
        cols = ", ".join(q(c) for c in cfg.time_columns)
        protect = f"CASE WHEN ({cfg.protect}) THEN 1 ELSE 0 END" if cfg.protect else "0"
        sql = (
            f"SELECT {q(cfg.id_column)}, {protect}, {cols} FROM {q(cfg.runs_table)}{self._where()}"
        )
        parse = time_reader(cfg.time_format)
        try:
            if len(cfg.time_columns) == 1:  # the common case, without the inner loop
                # Whole seconds since the epoch read inline (as `time_reader` reads them).
                lo, hi = WHOLE_SECONDS.get(cfg.time_format, (0, 0))
                make = Item.make
                if not cfg.protect:  # (most catalogs) not a column of zeros read and tested
                    sql = f"SELECT {q(cfg.id_column)}, {cols} FROM {q(cfg.runs_table)}"
                    for rid, value in self.conn.execute(sql + self._where()):
                        if type(value) is int and lo < value < hi:
                            yield Item(rid, value * 1_000_000)
                        else:
                            yield make(rid, None if value is None else parse(value))
                    return
                for rid, protected, value in self.conn.execute(sql):
                    if type(value) is int and lo < value < hi:
                        yield Item(rid, value * 1_000_000, bool(protected))
                    else:
                        yield make(rid, None if value is None else parse(value), bool(protected))
                return
            for row in self.conn.execute(sql):
                # Fall back to the next column only when one is NULL: a value that is there
                # but unparseable keeps the run (safety first), it does not fall through.
                t = None
                for value in row[2:]:
                    if value is not None:
                        t = parse(value)
                        break
                yield Item.make(row[0], t, bool(row[1]))
        except self.Error as exc:
            raise CatalogError(f"reading {cfg.runs_table!r} failed: {exc}") from None

    def load_ids(self, ids: Iterable[RunId]) -> None:
        """Fill the temp table of run ids that later set-based statements join against."""
        self._create_ids_table()
        self._insert_ids(list(dict.fromkeys(ids)))

    def loaded_path_tuples(self) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """`path_tuples` of the loaded ids only, ordered by id (read-only, streamed)."""
        cfg = self.cfg
        cols = self.path_columns()
        cur = self.conn.execute(
            f"SELECT {', '.join(f'r.{q(c)}' for c in cols)} FROM {q(cfg.runs_table)} AS r"
            f" JOIN {self.IDS_TABLE} AS ids ON r.{q(cfg.id_column)} = ids.id ORDER BY ids.id"
        )
        return cols, iter(cur)

    def count_runs(self) -> int:
        """How many runs the runs table holds (read-only)."""
        return int(
            self.conn.execute(f"SELECT count(*) FROM {q(self.cfg.runs_table)}").fetchone()[0]
        )

    def iter_path_rows(self) -> Iterator[dict[str, Any]]:
        """Every run of the runs table (no filter: every run may own a directory), with only
        the columns its artifact path needs. Read-only, streamed."""
        cols, rows = self.path_tuples()
        for row in rows:
            yield dict(zip(cols, row, strict=True))

    def path_tuples(
        self,
        skip_plain: tuple[str, Collection[str]] | None = None,
        odd: OddRows | None = None,
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """`iter_path_rows` as plain tuples, with their column names (the id column first):
        the same SELECT, without a dict per run (a million runs). Read-only, streamed.

        ``skip_plain`` (a column among those returned, and a set of values) lets a backend
        leave out, in the database, rows whose value in that column is a plain name outside
        the set (text; not empty, ``.`` or ``..``; no ``/``, ``:`` or NUL). Only a hint: a
        backend may return any of those rows, and this one returns them all. ``odd``: what
        `prefetch_odd` started, for a backend that uses it (this one does not)."""
        cols = self.path_columns()
        if not (self.cfg.path_column or self.cfg.path_template):
            return cols, iter(())
        cur = self.conn.execute(
            f"SELECT {', '.join(q(c) for c in cols)} FROM {q(self.cfg.runs_table)}"
        )
        return cols, iter(cur)

    def prefetch_odd(self, column: str) -> OddRows | None:
        """Start fetching, in the background, the rows ``path_tuples((column, wanted))``
        returns whatever ``wanted`` is (those whose ``column`` is not a plain name), for
        `path_tuples` to take as ``odd``; None where a backend does not (this one)."""
        return None

    def unique_column(self, column: str) -> bool:
        """Whether the runs table holds each value of ``column`` at most once, as the
        database guarantees it (a unique index on that column alone, for every row).
        Read-only. This one does not look: False (always safe)."""
        return False

    def path_columns(self) -> list[str]:
        """The columns `path_tuples` returns: the id column first, then the other columns
        the artifact path is made of (each column once)."""
        cfg = self.cfg
        if cfg.path_column:
            needed: tuple[str, ...] = (cfg.path_column,)
        elif cfg.path_template:
            needed = template_fields(cfg.path_template)
        else:
            needed = ()
        return list(dict.fromkeys([cfg.id_column, *needed]))

    def child_select(self, inv: Involved, what: str) -> str:
        """SELECT ``__run, __rowid, <what>`` for rows of ``inv`` belonging to loaded runs.

        One join chain per path from the table up to the runs table; paths are UNIONed.
        """
        cfg = self.cfg
        parts = []
        for path in inv.paths:
            joins = []
            for n, hop in enumerate(path):
                on = " AND ".join(
                    self.references(f"t{n}.{q(c)}", f"t{n + 1}.{q(p)}")
                    for c, p in zip(hop.child_cols, hop.parent_cols, strict=True)
                )
                joins.append(f"JOIN {q(hop.parent)} AS t{n + 1} ON {on}")
            last = len(path)
            parts.append(
                f"SELECT ids.id AS __run, t0.{self.ROWID} AS __rowid, {what}"
                f" FROM {q(inv.table)} AS t0 "
                + " ".join(joins)
                + f" JOIN {self.IDS_TABLE} AS ids ON t{last}.{q(cfg.id_column)} = ids.id"
            )
        return " UNION ".join(parts)

    def fingerprints(self) -> dict[RunId, str]:
        """A digest of every row (of every involved table) of each loaded run (read-only).

        Rows are streamed in (run, rowid) order, so the digest is deterministic and memory
        stays one hasher per run.
        """
        import hashlib  # here, not at import: loading OpenSSL is a few ms of every start-up

        cfg = self.cfg
        hashers: dict[RunId, Any] = {}
        enc = msgspec.msgpack.Encoder()

        def feed(sql: str, table: str) -> None:
            for row in self.conn.execute(sql):
                h = hashers.get(row[0])
                if h is None:
                    h = hashers[row[0]] = hashlib.sha256()
                h.update(enc.encode([table, list(row[1:])]))

        feed(
            f"SELECT ids.id, r.{self.ROWID}, r.* FROM {q(cfg.runs_table)} AS r"
            f" JOIN {self.IDS_TABLE} AS ids ON r.{q(cfg.id_column)} = ids.id ORDER BY ids.id",
            cfg.runs_table,
        )
        for inv in self.schema.children:
            cols = ", ".join(f"t0.{q(c)}" for c in inv.columns)
            feed(
                f"SELECT * FROM ({self.child_select(inv, cols)}) AS s ORDER BY __run, __rowid",
                inv.table,
            )
        return {k: h.hexdigest() for k, h in hashers.items()}

    # -- identity ------------------------------------------------------------------------

    def stored_lineage(self) -> str | None:
        """The lineage id recorded in the catalog by the first apply, if any (read-only)."""
        if not self.db.has_table("_retention_meta"):
            return None
        row = self.conn.execute(
            "SELECT value FROM _retention_meta WHERE key = 'lineage_id'"
        ).fetchone()
        return str(row[0]) if row else None

    def describe(self) -> str:
        """The catalog for messages (a file, a URL without its password)."""
        return str(self.path)

    def locator(self) -> str:
        """Where this catalog is, for the identity binding before the first apply."""
        raise NotImplementedError

    def read_table(self, table: str, columns: list[str], setting: str) -> list[tuple[Any, ...]]:
        """Every row of a small table of the application's (tiers, policy rows), these
        columns only (read-only). Refuses a missing table or column, naming what exists."""
        tables = sorted(t for t in self.db.table_names() if not _ours(t))
        if table not in tables:
            raise CatalogError(
                f"catalog has no table {table!r} (named by {setting})",
                hint=tables_hint(table, tables),
            )
        cols = self._columns(table)
        for col in columns:
            if col not in cols:
                raise CatalogError(
                    f"table {table!r} has no column {col!r} (named by {setting})",
                    hint=columns_hint(col, cols),
                )
        try:
            return self.conn.execute(
                f"SELECT {', '.join(map(q, columns))} FROM {q(table)}"
            ).fetchall()
        except self.Error as exc:
            raise CatalogError(f"reading {table!r} failed: {exc}") from None

    def lookup(self, table: str, key: str, value: str, setting: str) -> dict[Any, str | None]:
        """``key -> value`` of a small lookup table (a policy's tiers: organisation -> plan),
        read whole (read-only). Refuses a key with two different values (which tier would
        it be?)."""
        found: dict[Any, str | None] = {}
        for k, v in self.read_table(table, [key, value], setting):
            text = v.decode(errors="backslashreplace") if isinstance(v, bytes) else v
            text = None if text is None else str(text)
            if k in found and found[k] != text:
                raise CatalogError(
                    f"table {table!r} gives {key} {k!r} two values of {value}:"
                    f" {found[k]!r} and {text!r} (named by {setting})",
                    hint=f"make {key} unique in {table!r}",
                )
            found[k] = text
        return found

    # -- what a plan touches (for `show` and `config --check`) ---------------------------

    def total_rows(self, table: str) -> int:
        """How many rows ``table`` holds (read-only)."""
        return int(self.conn.execute(f"SELECT count(*) FROM {q(table)}").fetchone()[0])

    def rows_of_loaded(self) -> dict[str, int]:
        """For the runs table and each involved table, how many of its rows belong to the
        loaded runs; a row reached from two runs, or along two paths, counts once (read-only).
        """
        cfg = self.cfg
        counts = {
            cfg.runs_table: int(
                self.conn.execute(
                    f"SELECT count(*) FROM {q(cfg.runs_table)} AS r JOIN {self.IDS_TABLE} AS ids"
                    f" ON r.{q(cfg.id_column)} = ids.id"
                ).fetchone()[0]
            )
        }
        for inv in self.schema.children:
            sql = (
                f"SELECT count(DISTINCT __rowid) FROM ({self.child_select(inv, '1 AS __one')}) AS s"
            )
            counts[inv.table] = int(self.conn.execute(sql).fetchone()[0])
        return counts

    def declared_keys(self, table: str) -> dict[Hop, str]:
        """The foreign keys ``table`` declares, as hops, each with its ON DELETE action
        (``NO ACTION``, ``CASCADE``, ``SET NULL``...). Read-only."""
        out: dict[Hop, str] = {}
        for fk in self.db.foreign_keys(table):
            pcols = tuple(c for c in fk.other_columns if c)
            if not pcols and self.db.has_table(fk.other_table):
                pcols = tuple(self.db.pks(fk.other_table))
            out[Hop(table, fk.columns, fk.other_table, pcols)] = fk.on_delete
        return out

    def rows_referencing(self, hop: Hop) -> int:
        """How many rows of ``hop.child`` reference a row of the loaded runs along ``hop`` (a
        SET NULL, SET DEFAULT or blocking reference), leaving out rows that go with those
        runs anyway (read-only)."""
        sel = self.referencing_select(hop, "1")
        inv = next((i for i in self.schema.children if i.table == hop.child), None)
        if inv is not None:
            own = self.child_select(inv, "1")
            sel = f"{sel} WHERE c.{self.ROWID} NOT IN (SELECT __rowid FROM ({own}) AS o)"
        return int(
            self.conn.execute(f"SELECT count(DISTINCT __rowid) FROM ({sel}) AS s").fetchone()[0]
        )

    def id_keys(self, text: str) -> list[Any]:
        """The values a run id typed as ``text`` may be stored as, to look it up with
        ``IN``: the text, and the INTEGER it spells (``"42"`` -> 42), as a column without a
        declared type may hold either (SQLite)."""
        keys: list[Any] = [text]
        if _INTEGER.fullmatch(text.strip()) and int(text) in _INT64:
            keys.append(int(text))
        return keys

    def expression_error(self, expr: str) -> str | None:
        """The database's error for ``expr`` (catalog.filter or catalog.protect) in each
        wrapping plan and apply give it, or None (read-only: prepared with LIMIT 0)."""
        table = q(self.cfg.runs_table)
        try:
            for sql in (
                f"SELECT 1 FROM {table} WHERE ({expr}) LIMIT 0",
                f"SELECT 1 FROM {table} WHERE NOT (CASE WHEN ({expr}) THEN 1 ELSE 0 END) LIMIT 0",
            ):
                self.conn.execute(sql).fetchall()
        except self.Error as exc:
            return str(exc).strip().splitlines()[0]
        return None

    def run_like_columns(self) -> list[tuple[str, str]]:
        """Columns, of tables no plan touches, named like a run id (the id column's name,
        ``run_id``, ``run_uuid``, ``*_run_id``, ``*_run_uuid``): (table, column) pairs, for a
        hint that a table may be missing from ``catalog.child_tables``. Read-only."""
        involved = set(self.schema.involved_tables())
        names = {self.cfg.id_column.lower(), "run_id", "run_uuid"}
        found = []
        for table in sorted(self.db.table_names()):
            if table in involved or _ours(table):
                continue
            for col in self._columns(table):
                low = col.lower()
                if low in names or low.endswith(("_run_id", "_run_uuid")):
                    found.append((table, col))
        return found


_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = range(-(2**63), 2**63)


def _ours(table: str) -> bool:
    return table.startswith(OUR_PREFIX) or table.startswith("sqlite_")


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    close = close_matches(name, names)
    if not close:
        close = [n for n in names if n.lower() == name.lower()][:1]
    return f"did you mean {close[0]!r}? " if close else ""


def tables_hint(name: str, tables: Iterable[str]) -> str:
    """``did you mean 'runs'? tables: a, b, c``: the application's tables (not ours)."""
    names = sorted(t for t in tables if not _ours(t))
    if not names:
        return "the catalog has no tables: is it the application's database?"
    return _did_you_mean(name, names) + "tables: " + ", ".join(names)


def columns_hint(name: str, columns: Iterable[str]) -> str:
    """``did you mean 'run_uuid'? columns: a, b, c``."""
    cols = list(columns)
    return _did_you_mean(name, cols) + "columns: " + ", ".join(cols)


class ForeignKey(msgspec.Struct, frozen=True):
    """One declared foreign key (compound ones whole): ``columns`` of the table reference
    ``other_columns`` of ``other_table`` (empty names: its primary key, as declared)."""

    columns: tuple[str, ...]
    other_table: str
    other_columns: tuple[str | None, ...]
    on_delete: str  # as declared: NO ACTION, CASCADE, SET NULL, ...


class Introspection(Protocol):
    """What the schema walk asks of the database's own catalogue (read-only): the
    application's tables, their stored columns, foreign keys and primary keys."""

    def table_names(self) -> list[str]: ...

    def has_table(self, name: str) -> bool: ...

    def columns(self, table: str) -> list[str]: ...

    def ours_like(self, prefix: str) -> list[str]: ...

    def foreign_keys(self, table: str) -> list[ForeignKey]: ...

    def pks(self, table: str) -> list[str]: ...
