"""`retention config --check`: every problem of a configuration against its catalog at once.

Opening a catalog (`SqlCatalog`) stops at the first thing that does not match, which
is right for plan and apply; someone setting retention up wants the whole list: each
missing table (with the tables that exist) and column (with the columns that exist), a
``catalog.filter`` or ``catalog.protect`` that is not valid SQL here, the policy's columns
and tables (``policy.state_column``, ``policy.tier_table``, ``[policy.rows]``...), and how
many of the considered runs' timestamps ``catalog.time_format`` reads, with a sample of
those it does not and the format that would read them. Read-only: the catalog is opened
``mode=ro``.

`time_sample` also serves `plan`, which warns when no candidate's timestamp could be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from retention.catalog import SqlCatalog, columns_hint, q, tables_hint
from retention.catalog import template_fields as _template_fields
from retention.catalogs import open_bare, open_catalog
from retention.config import Config
from retention.durations import format_instant, parse_stored_time, plural
from retention.errors import CatalogNeedsRecovery, RetentionError

if TYPE_CHECKING:
    from retention.planner import PlanResult
    from retention.views import TablesReport

# A timestamp read as before this, when another format reads it as a plausible date, is
# taken as misread (epoch_ms on seconds reads 2026 as January 1970).
PLAUSIBLE = (datetime(1980, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
SAMPLE = 3  # values shown
KEPT_FOR_SUGGESTION = 50  # distinct values not read, tried against the other formats


class Problem(msgspec.Struct):
    """One thing that keeps the configuration from working with this catalog."""

    setting: str
    message: str
    hint: str | None = None


class TimeCheck(msgspec.Struct, kw_only=True):
    """How ``catalog.time_format`` reads the considered runs' timestamps (the first
    non-NULL of ``catalog.time_columns``, as plan reads them)."""

    format: str
    columns: list[str]
    runs: int  # considered (selected by catalog.filter, when it is valid)
    no_value: int  # every time column NULL: kept by every plan
    read: int
    not_read: int  # a value that does not parse (or parses to an implausible date)
    sample: list[str]  # of the values not read
    suggestion: str | None = None  # a time_format that reads the sample
    suggestion_example: str | None = None  # "1732000000000 is 2024-11-19T07:06:40Z"


class ConfigCheck(msgspec.Struct, kw_only=True):
    version: int = 1
    problems: list[Problem]
    warnings: list[str]
    found_tables: list[str]  # tables whose foreign keys lead to the runs table
    timestamps: TimeCheck | None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="backslashreplace")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plausible(t: datetime | None) -> bool:
    return t is not None and PLAUSIBLE[0] <= t < PLAUSIBLE[1]


def suggest_format(values: Iterable[Any], current: str) -> tuple[str, str] | None:
    """(format, "VALUE is INSTANT") for the first of epoch_ms, epoch_s, iso, auto, other
    than ``current``, that reads every one of ``values`` as a plausible date; else None."""
    values = list(values)
    if not values:
        return None
    for fmt in ("epoch_ms", "epoch_s", "iso", "auto"):
        if fmt == current:
            continue
        read = [parse_stored_time(v, fmt) for v in values]
        if all(_plausible(t) for t in read):
            assert read[0] is not None
            return fmt, f"{_text(values[0])} is {format_instant(read[0])}"
    return None


def _misread(value: Any, fmt: str) -> bool:
    """The value does not parse under ``fmt``, or only as an implausible date that another
    format reads plausibly."""
    t = parse_stored_time(value, fmt)
    if t is None:
        return True
    return not _plausible(t) and suggest_format([value], fmt) is not None


def time_values(conn: Any, cfg: Config, columns: list[str], where: str) -> Iterator[Any]:
    """The first non-NULL of ``columns`` of each run (None if all are NULL), streamed."""
    if len(columns) == 1:
        expr = q(columns[0])
    else:
        expr = "coalesce(" + ", ".join(q(c) for c in columns) + ")"
    for (value,) in conn.execute(f"SELECT {expr} FROM {q(cfg.runs_table)}{where}"):
        yield value


def check_times(conn: Any, cfg: Config, columns: list[str], where: str) -> TimeCheck:
    fmt = cfg.time_format
    runs = no_value = read = 0
    failed: dict[str, Any] = {}  # distinct values not read, by their text
    for value in time_values(conn, cfg, columns, where):
        runs += 1
        if value is None:
            no_value += 1
        elif _misread(value, fmt):
            if len(failed) < KEPT_FOR_SUGGESTION:
                failed.setdefault(_text(value), value)
        else:
            read += 1
    suggestion = suggest_format(failed.values(), fmt)
    return TimeCheck(
        format=fmt,
        columns=columns,
        runs=runs,
        no_value=no_value,
        read=read,
        not_read=runs - no_value - read,
        sample=list(failed)[:SAMPLE],
        suggestion=suggestion[0] if suggestion else None,
        suggestion_example=suggestion[1] if suggestion else None,
    )


def time_sample(cfg: Config) -> TimeCheck | None:
    """For `plan`, when no candidate's timestamp could be read: the same reading as
    `config --check`'s, over the runs ``catalog.filter`` selects (read-only; None if the
    catalog cannot be read now)."""
    try:
        with open_catalog(cfg) as cat:
            where = f" WHERE ({cfg.filter})" if cfg.filter else ""
            try:
                return check_times(cat.conn, cfg, list(cfg.time_columns), where)
            except cat.Error:
                return None
    except RetentionError:
        return None


def time_problem(t: TimeCheck) -> tuple[Problem | None, str | None]:
    """(a problem, or a warning) for what `check_times` found; (None, None) if all is well."""
    cols = ", ".join(t.columns)
    if t.runs == 0:
        return None, None
    if t.no_value == t.runs:
        return (
            Problem(
                "catalog.time_columns",
                f"catalog.time_columns ({cols}): every one of the {plural(t.runs, 'run')}"
                " considered has NULL there, so every plan keeps them all",
                hint="name the column(s) that hold each run's time",
            ),
            None,
        )
    if not t.not_read:
        return None, None
    dated = t.runs - t.no_value
    text = (
        f"catalog.time_format = {t.format!r}: {t.read} of {plural(dated, 'timestamp')} of"
        f" {cols} can be read; not read: {', '.join(t.sample)}"
    )
    if t.suggestion:
        hint = f'time_format = "{t.suggestion}" reads them ({t.suggestion_example})'
        return Problem("catalog.time_format", text, hint=hint), None
    if t.read == 0:
        hint = "runs whose timestamp cannot be read are always kept; give the format they use"
        return Problem("catalog.time_format", text, hint=hint), None
    return None, text + " (those runs are always kept)"


def _open(cfg: Config) -> SqlCatalog | Problem:
    """The catalog connected read-only, its schema not read yet (this check reports every
    problem of it, not the first), or the problem that prevents even that."""
    try:
        return open_bare(cfg)
    except CatalogNeedsRecovery:
        raise
    except RetentionError as exc:
        return Problem("catalog.path", exc.message, exc.hint)


def _found_tables(cat: SqlCatalog, runs_table: str, tables: set[str]) -> list[str]:
    """Tables whose declared foreign keys lead to the runs table, breadth first."""
    parents: dict[str, set[str]] = {}
    for t in tables:
        for fk in cat.db.foreign_keys(t):
            parents.setdefault(t, set()).add(fk.other_table)
    found: list[str] = []
    frontier = {runs_table}
    while frontier:
        nxt = {t for t, ps in parents.items() if ps & frontier and t not in found}
        nxt -= {runs_table}
        found += sorted(nxt)
        frontier = nxt
    return found


class _Checker:
    def __init__(self, cat: SqlCatalog, cfg: Config) -> None:
        self.cat = cat
        self.cfg = cfg
        self.tables = set(cat.db.table_names())
        self.problems: list[Problem] = []
        self._cols: dict[str, list[str]] = {}

    def cols(self, table: str) -> list[str]:
        if table not in self._cols:
            self._cols[table] = self.cat.db.columns(table)
        return self._cols[table]

    def table(self, table: str, setting: str, *, named: str = "named by") -> bool:
        if table in self.tables:
            return True
        if setting == "catalog.runs_table":
            message = f"catalog {self.cfg.catalog_path} has no table {table!r}"
        else:
            message = f"catalog has no table {table!r} ({named} {setting})"
        self.problems.append(Problem(setting, message, tables_hint(table, self.tables)))
        return False

    def column(self, table: str, col: str, setting: str, *, named: str = "named by") -> bool:
        have = self.cols(table)
        if col in have:
            return True
        message = f"table {table!r} has no column {col!r} ({named} {setting})"
        self.problems.append(Problem(setting, message, columns_hint(col, have)))
        return False

    def expression(self, expr: str | None, setting: str) -> bool:
        if expr is None:
            return True
        error = self.cat.expression_error(expr)
        if error is None:
            return True
        self.problems.append(Problem(setting, f"{setting} {expr!r} is not valid SQL here: {error}"))
        return False


def _runs_columns(cfg: Config) -> list[tuple[str, str]]:
    """(setting, column) for every column of the runs table the configuration names."""
    named = [("catalog.id_column", cfg.id_column)]
    named += [("catalog.time_columns", c) for c in cfg.time_columns]
    if cfg.path_column:
        named.append(("artifacts.path_column", cfg.path_column))
    elif cfg.path_template:
        named += [("artifacts.path_template", c) for c in _template_fields(cfg.path_template)]
    for field in ("tags", "state", "pin", "kind", "parent", "size"):
        col = getattr(cfg, f"{field}_column")
        if col:
            named.append((f"policy.{field}_column", col))
    named += [("policy.group_by", c) for c in cfg.group_by or ()]
    join = cfg.group_by[0] if cfg.group_by else None
    if cfg.tier_column and not cfg.tier_table:
        named.append(("policy.tier_column", cfg.tier_column))
    if cfg.tier_table and (cfg.tier_join or join):
        named.append(("policy.tier_join", cfg.tier_join or join or ""))
    if cfg.policy_rows is not None and (cfg.policy_rows.join or join):
        named.append(("policy.rows.join", cfg.policy_rows.join or join or ""))
    return list(dict.fromkeys(named))


def check_config(cfg: Config) -> tuple[ConfigCheck, TablesReport | None]:
    """Every problem of ``cfg`` against its catalog, and (when the catalog opens for
    planning) the tables a plan touches. Read-only."""
    from retention.planner import policy_from_config
    from retention.views import config_tables_report

    problems: list[Problem] = []
    warnings: list[str] = []
    try:
        policy_from_config(cfg)
    except RetentionError as exc:
        problems.append(Problem("policy", exc.message, exc.hint))
    opened = _open(cfg)
    if isinstance(opened, Problem):
        return ConfigCheck(
            problems=[opened, *problems], warnings=[], found_tables=[], timestamps=None
        ), None
    cat = opened
    conn = cat.conn
    try:
        c = _Checker(cat, cfg)
        times = None
        found: list[str] = []
        if c.table(cfg.runs_table, "catalog.runs_table"):
            found = _found_tables(cat, cfg.runs_table, c.tables)
            ok = {s_c: c.column(cfg.runs_table, s_c[1], s_c[0]) for s_c in _runs_columns(cfg)}
            filter_ok = c.expression(cfg.filter, "catalog.filter")
            c.expression(cfg.protect, "catalog.protect")
            time_cols = [
                col for (s, col), good in ok.items() if s == "catalog.time_columns" and good
            ]
            if time_cols:
                where = f" WHERE ({cfg.filter})" if cfg.filter and filter_ok else ""
                times = check_times(conn, cfg, time_cols, where)
        extra = list(cfg.child_tables)
        if cfg.sources.get("child_tables") == "default":
            extra = [ct for ct in extra if ct.table in c.tables]
        for ct in extra:
            parent = ct.parent_table or cfg.runs_table
            if c.table(ct.table, "catalog.child_tables", named="named in"):
                c.column(ct.table, ct.column, "catalog.child_tables", named="named in")
            if parent != cfg.runs_table and c.table(
                parent, "catalog.child_tables", named="named in"
            ):
                pcol = ct.parent_column or cfg.id_column
                c.column(parent, pcol, "catalog.child_tables", named="named in")
            elif parent == cfg.runs_table and parent in c.tables and ct.parent_column:
                c.column(parent, ct.parent_column, "catalog.child_tables", named="named in")
        if cfg.tier_table and c.table(cfg.tier_table, "policy.tier_table"):
            key = cfg.tier_key or cfg.tier_join or (cfg.group_by[0] if cfg.group_by else None)
            if key:
                c.column(cfg.tier_table, key, "policy.tier_key")
            if cfg.tier_column:
                c.column(cfg.tier_table, cfg.tier_column, "policy.tier_column")
        rows = cfg.policy_rows
        if rows is not None and c.table(rows.table, "policy.rows"):
            for name in ("key", "days", "enabled", "min_keep", "last_cleanup_at"):
                col = getattr(rows, name)
                if col:
                    c.column(rows.table, col, f"policy.rows.{name}")
            if rows.last_cleanup_deleted_count:
                c.column(
                    rows.table,
                    rows.last_cleanup_deleted_count,
                    "policy.rows.last_cleanup_deleted_count",
                )
        problems = c.problems + problems
        if times is not None:
            problem, warning = time_problem(times)
            if problem is not None:
                problems.append(problem)
            if warning is not None:
                warnings.append(warning)
    finally:
        cat.close()
    tables = None
    if not any(p.setting.startswith(("catalog.", "artifacts.")) for p in problems):
        try:  # opens the catalog as plan does: anything it refuses that we did not see
            tables = config_tables_report(cfg)
        except RetentionError as exc:
            if exc.exit_code == 7:
                raise
            if all(p.message != exc.message for p in problems):
                problems.append(Problem("catalog", exc.message, exc.hint))
    return ConfigCheck(
        problems=problems, warnings=warnings, found_tables=found, timestamps=times
    ), tables


def check_lines(check: ConfigCheck, tables_listed: bool) -> list[str]:
    """Human lines (stdout) for what `check_config` found besides its problems."""
    lines = []
    t = check.timestamps
    if t is not None and t.runs:
        cols = ", ".join(t.columns)
        lines.append(
            f"Timestamps ({cols}, time_format {t.format}): {t.read} of"
            f" {plural(t.runs, 'considered run')} read"
            + (f", {t.no_value} with none (kept)" if t.no_value else "")
            + (f", {t.not_read} not read (kept)" if t.not_read else "")
            + "."
        )
    if check.found_tables and not tables_listed:
        lines.append(
            "Tables found through declared foreign keys: " + ", ".join(check.found_tables) + "."
        )
    lines += [f"Warning: {w}" for w in check.warnings]
    return lines


def problem_lines(check: ConfigCheck) -> list[str]:
    """Each problem on its own line (``Error: ...``, then its ``Hint: ...``), for stderr."""
    lines = []
    for p in check.problems:
        lines.append(f"Error: {p.message}")
        if p.hint:
            lines.append(f"Hint: {p.hint}")
    n = len(check.problems)
    if n > 1:
        lines.append(f"{n} problems: fix them, then run retention config --check again.")
    return lines


def undated_plan_lines(cfg: Config, result: PlanResult) -> list[str]:
    """For `plan`: a warning and a hint when no considered run's timestamp could be read
    (``time_format = "epoch_s"`` on milliseconds, a time column that is always NULL), so
    that every run is kept, forever; [] otherwise, and for an erasure request (which
    does not read times). Reads a sample of the values from the catalog (read-only)."""
    considered = result.payload.considered
    if not considered or result.no_time < considered or result.payload.policy.erase:
        return []
    cols = ", ".join(cfg.time_columns)
    t = time_sample(cfg)
    runs = f"the {plural(considered, 'considered run')}"
    if t is not None and t.no_value == t.runs:
        return [
            f"Warning: none of {runs} has a timestamp ({cols} NULL for every one): every run"
            " is kept",
            "  Hint: name the column(s) that hold each run's time in catalog.time_columns;"
            " see retention config --check",
        ]
    sample = f", e.g. {t.sample[0]} in {cols}" if t is not None and t.sample else ""
    lines = [
        f"Warning: no timestamp of {runs} could be read as {cfg.time_format}"
        f" (catalog.time_format){sample}: every run is kept"
    ]
    if t is not None and t.suggestion:
        lines.append(
            f'  Hint: time_format = "{t.suggestion}" reads them ({t.suggestion_example});'
            " see retention config --check"
        )
    else:
        lines.append("  Hint: see retention config --check")
    return lines
