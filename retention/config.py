"""Configuration: built-in defaults < TOML file < environment (``RETENTION_*``) < flags.

The built-in default is the laptop backtest layout (README, "Configuration"): a catalog at
``data/catalog.db`` with a ``runs`` table (``run_id``, ``created_at``), a ``run_metrics``
child table, and one artifact directory per run at ``data/backtests/{run_id}``.

Relative paths in the file are relative to the file's directory; relative paths from the
environment or flags are relative to the current directory; built-in defaults are relative
to the config file's directory if there is one, else to the current directory.

`load_config` reads the file and the environment it is given; it never writes.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from retention.durations import parse_duration, parse_size, parse_span
from retention.errors import ConfigError, RetentionError, UsageError

if TYPE_CHECKING:
    from retention.catalogs.jsondoc import CollectionSpec

CONFIG_ENV = "RETENTION_CONFIG"
DEFAULT_CONFIG_NAME = "retention.toml"
DEFAULT_KEEP_LAST = 100
DEFAULT_TERMINAL_STATES = ("completed", "failed", "canceled")
# A manifest of a million runs is about 400-500 MiB; refuse anything larger than this unread.
DEFAULT_MANIFEST_MAX_SIZE = 1 << 30
TIME_FORMATS = ("auto", "iso", "epoch_s", "epoch_ms")


def close_matches(word: str, choices: Iterable[str]) -> list[str]:
    """The one choice closest to ``word``, if any is close (for "did you mean"). difflib is
    imported here, on the error path, not at every command's start-up."""
    import difflib

    return difflib.get_close_matches(word, list(choices), n=1)


class ChildTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table whose rows belong to a run but that declares no foreign key.

    ``column`` in ``table`` references ``parent_column`` of ``parent_table`` (by default the
    runs table and its id column).
    """

    table: str
    column: str
    parent_table: str | None = None
    parent_column: str | None = None


class PolicyRows(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[policy.rows]``: one policy row per group in a table of the catalog (scenario 5's
    ``execution_retention_policies``). ``key`` of ``table`` matches the runs' ``join``
    column (default: the first ``policy.group_by`` column); ``days`` (NULL: the base
    rules; -1 keeps forever), ``enabled`` (false: the group is left alone) and ``min_keep``
    (NULL: the base floor) are its columns. With ``last_cleanup_at`` and/or
    ``last_cleanup_deleted_count``, apply writes back, in its commit transaction, when it
    ran and how many runs of each enabled group it deleted."""

    table: str
    key: str
    days: str | None = None
    enabled: str | None = None
    min_keep: str | None = None
    join: str | None = None
    last_cleanup_at: str | None = None
    last_cleanup_deleted_count: str | None = None


class Target(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[targets]]``: one record kind of a JSON-document catalog (issue 10).

    ``collection`` is a dotted path into the document (a list or a map of records); ``id`` a
    field of the record or ``@key`` (its key in a map); ``timestamp`` the fields tried in
    order; ``state`` a field or a join to the owning record (``jobs[job_id].status``);
    ``terminal`` the states that may go. ``ttl`` is the effective TTL (a duration), from
    ``plan --ttl NAME=D``, else the environment variable ``ttl_env`` names (seconds), else
    the file; None when none of them gives one (plan refuses that target)."""

    name: str
    collection: str
    id: str
    timestamp: tuple[str, ...]
    state: str | None = None
    terminal: tuple[str, ...] = DEFAULT_TERMINAL_STATES
    ttl: str | None = None
    ttl_env: str | None = None
    artifacts: str = "none"

    @property
    def ttl_seconds(self) -> int | None:
        return None if self.ttl is None else int(parse_duration(self.ttl).total_seconds())


def collection_spec(target: Target) -> CollectionSpec:
    """The document layer's description of a target's collection."""
    from retention.catalogs.jsondoc import CollectionSpec

    return CollectionSpec(
        name=target.name,
        path=target.collection,
        id=target.id,
        timestamp=target.timestamp,
        state=target.state,
        terminal=target.terminal,
    )


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """The effective configuration. ``sources`` says where each value came from."""

    config_file: str | None
    catalog_path: str
    runs_table: str
    id_column: str
    time_columns: tuple[str, ...]
    time_format: str
    filter: str | None
    protect: str | None
    child_tables: tuple[ChildTable, ...]
    artifact_root: str
    path_template: str | None
    path_column: str | None
    keep_last: int | None
    max_age: str | None
    # Calendar rules, restic's forget semantics (retention.policy): counts (-1: unlimited),
    # spans in restic's form (1y2m3d4h), tag lists read from tags_column.
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    keep_within_hourly: str | None = None
    keep_within_daily: str | None = None
    keep_within_weekly: str | None = None
    keep_within_monthly: str | None = None
    keep_within_yearly: str | None = None
    keep_tags: tuple[tuple[str, ...], ...] | None = None
    tags_column: str | None = None
    tz: str | None = None
    checkpoint: str = "last"
    # Floors and filters: never fewer than min_keep runs; only runs whose state_column is
    # one of terminal_states may go (default completed, failed, canceled).
    min_keep: int | None = None
    state_column: str | None = None
    terminal_states: tuple[str, ...] | None = None
    # Protections: a truthy pin_column never goes; nor the newest run whose kind_column is
    # one of newest_of_kind; nor a run that a kept run names in parent_column (transitively).
    pin_column: str | None = None
    kind_column: str | None = None
    newest_of_kind: tuple[str, ...] | None = None
    parent_column: str | None = None
    # Size budget: while the kept runs hold more than max_total_size bytes (size_column, or
    # measured on disk without one), the least important unprotected runs go.
    max_total_size: int | None = None
    size_column: str | None = None
    # Groups and tiers: the policy applies per group of runs with equal group_by values; a
    # group's tier is tier_column of the runs table, or of tier_table (a lookup table whose
    # tier_key column matches the runs' tier_join column, by default the first group_by
    # column); tiers maps a tier name to its own settings over the base ones (Config field
    # names; "days" is max_age in days, -1 keeping forever).
    group_by: tuple[str, ...] | None = None
    tier_column: str | None = None
    tier_table: str | None = None
    tier_key: str | None = None
    tier_join: str | None = None
    tiers: dict[str, dict[str, Any]] | None = None
    policy_rows: PolicyRows | None = None
    # apply: commit in batches of at most this many runs, each its own transaction
    batch_size: int | None = None
    state_dir: str
    grace_period: str
    manifest_ttl: str
    manifest_max_size: int = DEFAULT_MANIFEST_MAX_SIZE  # bytes
    sources: dict[str, str]
    allow_missing_dirs: bool = False
    allow_remove_all: bool = False
    busy_timeout: str = "5s"  # how long a write to the catalog waits for another writer
    no_action: str = "owned"  # a declared foreign key without ON DELETE: owned | blocks
    # How long the deletion log keeps each run of an apply purged or undone that long ago
    # (`_retention_runs`); the apply's summary row (`_retention_tx`) is kept for good.
    history: str = "90d"
    # A JSON-document catalog (catalog.path ending in .json, issue 10): the application's
    # lock file (filelock) taken around the replacement of the document, and the record
    # kinds (``[[targets]]``) with their effective TTLs.
    lock_file: str | None = None
    targets: tuple[Target, ...] = ()

    @property
    def is_json_catalog(self) -> bool:
        return is_json_path(self.catalog_path)

    @property
    def busy_timeout_ms(self) -> int:
        return int(parse_duration(self.busy_timeout).total_seconds() * 1000)

    @property
    def grace_seconds(self) -> int:
        return int(parse_duration(self.grace_period).total_seconds())

    @property
    def manifest_ttl_seconds(self) -> int:
        return int(parse_duration(self.manifest_ttl).total_seconds())


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    return _str(value, where)


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"{where}: expected a non-empty list of names, got {value!r}")
    return tuple(_str(v, where) for v in value)


def _count(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}: must not be negative, got {value}")
    return value


UNLIMITED_WORDS = ("unlimited", "-1")


def _keep_count(value: Any, where: str) -> int | None:
    """A rule's count: N >= 0, or -1 / ``unlimited`` (restic's "keep all")."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in UNLIMITED_WORDS:
        return -1
    shape = f"{where}: expected a whole number >= 0, or unlimited (-1), got {value!r}"
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(shape) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise ConfigError(shape)
    return value


def _span(value: Any, where: str) -> str | None:
    """restic's duration form (1y2m3d4h; m is months), normalised; "0d" turns the rule off."""
    if value is None or value == "":
        return None
    try:
        return str(parse_span(_str(value, where)))
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def split_tags(text: str) -> tuple[str, ...]:
    """restic's tag list: comma-separated, blanks stripped, an empty tag kept (``''``
    alone matches untagged runs)."""
    return tuple(t.strip() for t in text.split(","))


def _tag_lists(value: Any, where: str) -> tuple[tuple[str, ...], ...] | None:
    """``--keep-tag a,b --keep-tag c``: a list of tag lists. File: ["a,b", "c"] or
    [["a", "b"], ["c"]]; environment: "a,b;c"."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(";")
    shape = f'{where}: expected tag lists like ["a,b", "c"] (environment: a,b;c), got {value!r}'
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(shape)
    out = []
    for v in value:
        if isinstance(v, str):
            out.append(split_tags(v))
        elif isinstance(v, list | tuple) and v and all(isinstance(t, str) for t in v):
            out.append(tuple(t.strip() for t in v))
        else:
            raise ConfigError(shape)
    return tuple(out)


def _zone(value: Any, where: str) -> str | None:
    """An IANA time zone name, checked against the zone database."""
    text = _opt_str(value, where)
    if text is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(text.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: unknown time zone {text!r}",
            hint="give an IANA zone name, e.g. UTC, Europe/Berlin, America/New_York",
        ) from None
    return text.strip()


def _budget(value: Any, where: str) -> int | None:
    """A size budget: 50G, 512M, 1T (binary), 50GiB, or a number of bytes."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{where}: expected a size like 50G, got {value!r}")
    try:
        return parse_size(str(value))
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


CHECKPOINTS = ("last", "first")


def _checkpoint(value: Any, where: str) -> str:
    text = _str(value, where).strip().lower()
    if text not in CHECKPOINTS:
        raise ConfigError(
            f"{where}: expected last or first, got {value!r}",
            hint="last keeps the newest run of each period (restic), first the oldest",
        )
    return text


def _duration(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    text = _str(value, where)
    try:
        parse_duration(text)
    except ConfigError:
        raise
    except Exception as exc:  # UsageError from parse_duration: re-raise naming the setting
        raise ConfigError(f"{where}: {exc}", hint=getattr(exc, "hint", None)) from None
    return text


def _required_duration(value: Any, where: str) -> str:
    text = _duration(value, where)
    if text is None:
        raise ConfigError(f"{where}: a duration is required")
    return text


_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def _size(value: Any, where: str) -> int:
    """A size in bytes: a whole number, optionally with a binary unit (B, KiB, MiB, GiB, TiB)."""
    text = str(value).strip() if isinstance(value, int | str) else ""
    digits = text.rstrip("BbIiKkMmGgTt").rstrip()
    unit = text[len(digits) :].strip().lower()
    ok = digits.isascii() and digits.isdigit() and unit in _SIZE_UNITS
    if isinstance(value, bool) or not ok:
        raise ConfigError(
            f"{where}: expected a size like 1GiB, 512MiB or a number of bytes, got {value!r}"
        )
    size = int(digits) * _SIZE_UNITS[unit]
    if size <= 0:
        raise ConfigError(f"{where}: must be greater than zero, got {value!r}")
    return size


# Catalog URLs by scheme (SQLAlchemy's dialect names, e.g. postgresql+psycopg2): the kind
# of database each names. None of these is a file, so none is taken for a catalog path.
_URL_KINDS = {
    "postgresql": "PostgreSQL",
    "postgres": "PostgreSQL",
    "mysql": "MySQL",
    "mariadb": "MariaDB",
    "mssql": "SQL Server",
    "oracle": "Oracle",
    "snowflake": "Snowflake",
    "databricks": "Databricks",
    "http": "HTTP",
    "https": "HTTP",
}
# Patterns compiled (and cached) by `re` on first use, not at import.
_URL = r"^([A-Za-z][A-Za-z0-9+.-]*)://"


def shown_catalog(text: str) -> str:
    """``catalog.path`` for messages and listings: a URL's password replaced by ``***``."""
    return re.sub(r"^([^:/]+://[^:/@]*):[^@/]*@", r"\1:***@", text.strip())


def is_catalog_url(text: str) -> bool:
    """Whether ``text`` is a URL of a catalog server retention supports (PostgreSQL's
    ``postgresql://`` or ``postgres://``): not a path, never made absolute."""
    m = re.match(_URL, text.strip())
    return m is not None and m.group(1).lower() in ("postgresql", "postgres")


def catalog_url_problem(text: str) -> tuple[str, str] | None:
    """(message, hint) when ``text`` is a URL retention cannot use as a catalog, else None
    (a file path, or a ``postgresql://`` URL).

    ``mysql://...`` would otherwise be taken for a relative file name (and reported, at
    best, as a catalog that does not exist). A password in the URL is not repeated."""
    m = re.match(_URL, text.strip())
    if m is None or is_catalog_url(text):
        return None
    scheme = m.group(1).lower()
    shown = shown_catalog(text)
    base = scheme.split("+", 1)[0]
    if base in ("postgresql", "postgres"):
        rest = re.sub(r":[^@/]*@", ":***@", text.strip()[m.end() :])
        return (
            f"catalog.path {shown!r} is an SQLAlchemy URL ({scheme}://)",
            f'give the libpq form: catalog.path = "postgresql://{rest}"',
        )
    if base == "sqlite":
        rest = text.strip()[m.end() :]
        path = rest[1:] if rest.startswith("/") else rest
        return (
            f"catalog.path {shown!r} is an SQLAlchemy URL, not a file path",
            f'give the SQLite file\'s path: catalog.path = "{path or "mlruns.db"}"',
        )
    if base == "file":
        return (
            f"catalog.path {shown!r} is a file URL",
            'give the SQLite file\'s path, e.g. catalog.path = "/srv/app/catalog.db"',
        )
    kind = _URL_KINDS.get(base)
    if kind == "HTTP":
        return (
            f"catalog.path {shown!r} is an HTTP URL: retention reads the catalog's database"
            " file, not a server",
            "give the path of the server's SQLite file (e.g. the mlflow server's"
            " --backend-store-uri sqlite:///mlruns.db is mlruns.db)",
        )
    if kind is None:
        return (
            f"catalog.path {shown!r} is a {scheme}:// URL: only SQLite files and PostgreSQL"
            " URLs are supported",
            "give the path of an SQLite file, or a postgresql:// URL",
        )
    article = "an" if kind.startswith(("A", "E", "I", "O", "U", "SQL")) else "a"
    return (
        f"catalog.path {shown!r} is {article} {kind} URL: {kind} catalogs are not supported"
        " (SQLite and PostgreSQL only)",
        "give the path of an SQLite file, or a postgresql:// URL",
    )


def _catalog_path(value: Any, where: str) -> str:
    text = _str(value, where)
    problem = catalog_url_problem(text)
    if problem is not None:
        message, hint = problem
        raise ConfigError(message, hint=f"{hint} (catalog.path, from {where.split('(from ')[-1]}")
    return text


def _time_format(value: Any, where: str) -> str:
    text = _str(value, where)
    if text not in TIME_FORMATS:
        raise ConfigError(f"{where}: expected one of {', '.join(TIME_FORMATS)}, got {text!r}")
    return text


NO_ACTION_MODES = ("owned", "blocks")


def _no_action(value: Any, where: str) -> str:
    text = _str(value, where)
    if text not in NO_ACTION_MODES:
        raise ConfigError(
            f"{where}: expected one of {', '.join(NO_ACTION_MODES)}, got {text!r}",
            hint="owned: rows referencing a run without an ON DELETE clause go with it (as"
            " MLflow means them); blocks: such a row keeps its run",
        )
    return text


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


TEMPLATE_HINT = (
    "a path template names columns only, e.g. {column} or {experiment_id}/{run_uuid}:"
    " no conversion (!r), format spec (:>30), index or attribute"
)


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a usable path template, or None.

    Only plain ``{column}`` fields: a conversion (``{run_id!r}``) or a format spec
    (``{run_id:>30}``) makes every path name something other than the run's directory, so
    every candidate would look as if it had none and apply would orphan them all.
    """
    try:
        import string  # here, not at import: a few ms of every command's start-up

        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r} is not a valid template: {exc}"
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or not name.isidentifier():
            return f"{{{name}}} in {template!r} is not a column name"
        if conversion is not None or spec:
            field = "{" + name + (f"!{conversion}" if conversion else "")
            field += (f":{spec}" if spec else "") + "}"
            return f"{field} in {template!r} has a conversion or format spec"
    return None


def _template(value: Any, where: str) -> str | None:
    text = _opt_str(value, where)
    if text is not None:
        problem = template_problem(text)
        if problem:
            raise ConfigError(f"{where}: {problem}", hint=TEMPLATE_HINT)
    return text


EXPRESSION_HINT = (
    "write one SQL expression, as after WHERE: balanced parentheses, no comments, no ';'"
    " (plan and apply both put it inside parentheses, next to their own SQL)"
)


def expression_problem(expr: str) -> str | None:
    """Why ``expr`` cannot be used as one SQL expression inside ``( ... )``, or None.

    Plan and apply splice ``catalog.filter`` and ``catalog.protect`` into different
    statements (``WHERE (e)``, ``AND (e)``, ``CASE WHEN (e) THEN ...``). An expression that
    closes a parenthesis it did not open, or comments out what follows it, is valid in one
    and broken in another, or worse, valid in both with different meanings
    (``1=1) OR (1=1``). So, outside string literals and quoted names: parentheses balance
    (never below zero), no ``--`` or ``/*`` comment, no ``;``.
    """
    depth, i, n = 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while True:
                j = expr.find(close, j)
                if j < 0:
                    what = "string literal" if c == "'" else "quoted name"
                    return f"an unterminated {what} in {expr!r}"
                if close != "]" and expr.startswith(close * 2, j):  # '' inside '...'
                    j += 2
                    continue
                break
            i = j + 1
            continue
        if expr.startswith(("--", "/*"), i):
            return f"an SQL comment ({expr[i : i + 2]}) in {expr!r}"
        if c == ";":
            return f"a ';' in {expr!r}"
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return f"a ')' without a matching '(' in {expr!r}"
        i += 1
    if depth:
        return f"an unclosed '(' in {expr!r}"
    return None


def _expression(value: Any, where: str) -> str | None:
    text = _opt_str(value, where)
    if text is not None:
        problem = expression_problem(text)
        if problem:
            raise ConfigError(f"{where}: {problem}", hint=EXPRESSION_HINT)
    return text


def _batch_size(value: Any, where: str) -> int | None:
    n = _count(value, where)
    if n == 0:
        raise ConfigError(f"{where}: must be at least 1 (leave it out for one transaction)")
    return n


def _policy_rows(value: Any, where: str) -> PolicyRows | None:
    shape = (
        "expected a [policy.rows] table: table, key, and the columns days, enabled, min_keep"
        ' (e.g. table = "execution_retention_policies", key = "tenant_id",'
        ' days = "retention_days")'
    )
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {shape}")
    try:
        rows = msgspec.convert(value, PolicyRows)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {exc}", hint=shape) from None
    if not (rows.days or rows.min_keep):
        raise ConfigError(f"{where}: name the days or min_keep column (or both)")
    return rows


def _children(value: Any, where: str) -> tuple[ChildTable, ...]:
    if isinstance(value, str):  # env form: "table:column,table2:column2"
        items: list[Any] = []
        for part in value.split(","):
            if part.strip():
                table, _, column = part.strip().partition(":")
                items.append({"table": table, "column": column or None})
        value = items
    shape = (
        'expected a list like [{ table = "run_metrics", column = "run_id" }]'
        " (environment: run_metrics:run_id,other:run_uuid)"
    )
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: {shape}")
    try:
        return tuple(msgspec.convert(v, ChildTable) for v in value)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {shape}; {exc}") from None


CALENDAR_UNITS = ("hourly", "daily", "weekly", "monthly", "yearly")
# What a [policy.tiers.NAME] table may set: the rules, the floor and the budget of the tier.
TIER_KEYS = (
    "days",
    "keep_last",
    "max_age",
    *(f"keep_{u}" for u in CALENDAR_UNITS),
    "keep_within",
    *(f"keep_within_{u}" for u in CALENDAR_UNITS),
    "keep_tags",
    "min_keep",
    "max_total_size",
)
DAYS_ENV = "RETENTION_DAYS_"


def tier_env(name: str) -> str:
    """``RETENTION_DAYS_<TIER>``: the tier's name in capitals, other characters as ``_``."""
    return DAYS_ENV + "".join(c if c.isalnum() else "_" for c in name.upper())


def _days(value: Any, where: str) -> int:
    """A tier's days: a whole number >= 1, or -1 (keep forever)."""
    shape = f"{where}: expected a whole number of days >= 1, or -1 (keep forever), got {value!r}"
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(shape) from None
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
        raise ConfigError(shape)
    return value


def _tiers(value: Any, where: str) -> dict[str, dict[str, Any]] | None:
    """``[policy.tiers.NAME]`` tables: tier name -> its settings (parsed), by field."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected [policy.tiers.NAME] tables, got {value!r}")
    tiers: dict[str, dict[str, Any]] = {}
    for name, body in value.items():
        at = f"{where.split(' ', 1)[0]}.{name}"
        if not isinstance(body, dict):
            raise ConfigError(f"{at}: expected a table, e.g. [policy.tiers.{name}] days = 30")
        parsed: dict[str, Any] = {}
        for key, raw in body.items():
            if key not in TIER_KEYS:
                close = close_matches(key, TIER_KEYS)
                hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(TIER_KEYS)
                raise ConfigError(f"{at}: unknown setting {key!r}", hint=hint)
            parse = _days if key == "days" else _BY_FIELD[key].parse
            parsed[key] = parse(raw, f"{at}.{key}{where[len(where.split(' ', 1)[0]) :]}")
        if "days" in parsed and "max_age" in parsed:
            raise ConfigError(f"{at}: give days or max_age, not both")
        tiers[name] = parsed
    return tiers


# The settings that are rules: with none of them given anywhere, keep_last defaults to 100.
RULE_FIELDS = (
    "keep_last",
    "max_age",
    *(f"keep_{u}" for u in CALENDAR_UNITS),
    "keep_within",
    *(f"keep_within_{u}" for u in CALENDAR_UNITS),
    "keep_tags",
)


class Setting:
    """One row of `SETTINGS` (a plain class, not a dataclass: about 1 ms less at import)."""

    __slots__ = ("default", "field", "is_path", "key", "parse")

    def __init__(
        self,
        key: str,  # "<toml section>.<name>"
        field: str,  # Config attribute
        default: Any,
        parse: Callable[[Any, str], Any],
        is_path: bool = False,
    ) -> None:
        self.key = key
        self.field = field
        self.default = default
        self.parse = parse
        self.is_path = is_path

    @property
    def env(self) -> str:
        return "RETENTION_" + self.field.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("catalog.path", "catalog_path", "data/catalog.db", _catalog_path, is_path=True),
    Setting("catalog.runs_table", "runs_table", "runs", _str),
    Setting("catalog.id_column", "id_column", "run_id", _str),
    Setting("catalog.time_columns", "time_columns", ("created_at",), _str_list),
    Setting("catalog.time_format", "time_format", "auto", _time_format),
    Setting("catalog.filter", "filter", None, _expression),
    Setting("catalog.protect", "protect", None, _expression),
    Setting("catalog.busy_timeout", "busy_timeout", "5s", _required_duration),
    Setting("catalog.lock_file", "lock_file", None, _opt_str, is_path=True),
    Setting("catalog.no_action", "no_action", "owned", _no_action),
    Setting(
        "catalog.child_tables",
        "child_tables",
        (ChildTable("run_metrics", "run_id"),),
        _children,
    ),
    Setting("artifacts.root", "artifact_root", "data/backtests", _str, is_path=True),
    Setting("artifacts.path_template", "path_template", "{run_id}", _template),
    Setting("artifacts.path_column", "path_column", None, _opt_str),
    Setting("artifacts.allow_missing_dirs", "allow_missing_dirs", False, _bool),
    Setting("policy.keep_last", "keep_last", None, _keep_count),
    Setting("policy.max_age", "max_age", None, _duration),
    *(Setting(f"policy.keep_{u}", f"keep_{u}", None, _keep_count) for u in CALENDAR_UNITS),
    Setting("policy.keep_within", "keep_within", None, _span),
    *(Setting(f"policy.keep_within_{u}", f"keep_within_{u}", None, _span) for u in CALENDAR_UNITS),
    Setting("policy.keep_tags", "keep_tags", None, _tag_lists),
    Setting("policy.tags_column", "tags_column", None, _opt_str),
    Setting("policy.tz", "tz", None, _zone),
    Setting("policy.checkpoint", "checkpoint", "last", _checkpoint),
    Setting("policy.min_keep", "min_keep", None, _count),
    Setting("policy.state_column", "state_column", None, _opt_str),
    Setting("policy.terminal_states", "terminal_states", None, _str_list),
    Setting("policy.pin_column", "pin_column", None, _opt_str),
    Setting("policy.kind_column", "kind_column", None, _opt_str),
    Setting("policy.newest_of_kind", "newest_of_kind", None, _str_list),
    Setting("policy.parent_column", "parent_column", None, _opt_str),
    Setting("policy.max_total_size", "max_total_size", None, _budget),
    Setting("policy.size_column", "size_column", None, _opt_str),
    Setting("policy.allow_remove_all", "allow_remove_all", False, _bool),
    Setting("policy.group_by", "group_by", None, _str_list),
    Setting("policy.tier_column", "tier_column", None, _opt_str),
    Setting("policy.tier_table", "tier_table", None, _opt_str),
    Setting("policy.tier_key", "tier_key", None, _opt_str),
    Setting("policy.tier_join", "tier_join", None, _opt_str),
    Setting("policy.tiers", "tiers", None, _tiers),
    Setting("policy.rows", "policy_rows", None, _policy_rows),
    Setting("apply.batch_size", "batch_size", None, _batch_size),
    Setting("state.dir", "state_dir", ".retention", _str, is_path=True),
    Setting("state.grace_period", "grace_period", "24h", _required_duration),
    Setting("state.history", "history", "90d", _required_duration),
    Setting("manifest.ttl", "manifest_ttl", "24h", _required_duration),
    Setting("manifest.max_size", "manifest_max_size", DEFAULT_MANIFEST_MAX_SIZE, _size),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_BY_FIELD = {s.field: s for s in SETTINGS}


def _read_file(path: Path) -> dict[str, Any]:
    import tomllib  # here: without a config file, nothing parses TOML

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {path} is not UTF-8 text", hint="save it as UTF-8 (TOML requires it)"
        ) from None
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if section == TARGETS_KEY:
            flat[TARGETS_KEY] = body  # [[targets]]: an array of tables, checked by _targets
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"config file {path}: top-level key {section!r} must be a [table]")
        for name, value in body.items():
            key = f"{section}.{name}"
            if key not in _BY_KEY:
                close = close_matches(key, _BY_KEY)
                hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(_BY_KEY)
                raise ConfigError(f"config file {path}: unknown setting {key!r}", hint=hint)
            flat[key] = value
    return flat


# -- [[targets]]: the record kinds of a JSON-document catalog (issue 10) ----------------------

TARGETS_KEY = "targets"
TARGET_KEYS = tuple(Target.__struct_fields__)
TARGET_ARTIFACTS = ("none",)
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*\Z"
_TARGET_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z"


def is_json_path(path: object) -> bool:
    """Whether ``catalog.path`` names a JSON document (``*.json``): the JSON-document
    catalog, whose record kinds are ``[[targets]]``."""
    text = str(path).strip()
    return text.lower().endswith(".json") and re.match(_URL, text) is None


def _ttl_env_seconds(var: str, raw: str, where: str) -> str:
    """The value of a target's ``ttl_env`` variable: whole seconds > 0, as a duration."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) <= 0:
        raise ConfigError(
            f"{where}: env {var}={raw!r} is not a number of seconds",
            hint=f"set {var} to whole seconds > 0 (e.g. 604800 for 7 days), or unset it",
        )
    seconds = int(text)
    if seconds > 1000 * 365 * 86400:
        raise ConfigError(f"{where}: env {var}={raw!r} is longer than 1000 years")
    return f"{seconds}s"


def _target(body: Any, n: int, where: str) -> Target:
    at = f"targets[{n}]"
    if not isinstance(body, dict):
        raise ConfigError(
            f"{at} ({where}): expected a [[targets]] table, got {body!r}",
            hint='e.g. [[targets]] name = "job_results" collection = "job_results" ...',
        )
    name = body.get("name")
    if isinstance(name, str) and name:
        at = f"targets.{name}"
    for key in body:
        if key not in TARGET_KEYS:
            close = close_matches(key, TARGET_KEYS)
            hint = f"did you mean {close[0]}?" if close else "known: " + ", ".join(TARGET_KEYS)
            raise ConfigError(f"{at} ({where}): unknown setting {key!r}", hint=hint)
    for key in ("name", "collection", "id", "timestamp"):
        if key not in body:
            raise ConfigError(f"{at} ({where}): {key} is required")
    here = f"({where})"
    name = _str(body["name"], f"{at}.name {here}")
    if not re.match(_TARGET_NAME, name):
        raise ConfigError(
            f"{at}.name {here}: {name!r} is not a plain name (letters, digits, _ . -)"
        )
    timestamp = body["timestamp"]
    if isinstance(timestamp, str):
        timestamp = [timestamp]
    values: dict[str, Any] = {
        "name": name,
        "collection": _str(body["collection"], f"{at}.collection {here}"),
        "id": _str(body["id"], f"{at}.id {here}"),
        "timestamp": _str_list(timestamp, f"{at}.timestamp {here}"),
        "state": _opt_str(body.get("state"), f"{at}.state {here}"),
    }
    if "terminal" in body:
        values["terminal"] = _str_list(body["terminal"], f"{at}.terminal {here}")
    if "ttl" in body:
        values["ttl"] = _duration(body["ttl"], f"{at}.ttl {here}")
    if "ttl_env" in body:
        var = _str(body["ttl_env"], f"{at}.ttl_env {here}")
        if not re.match(_ENV_NAME, var):
            raise ConfigError(f"{at}.ttl_env {here}: {var!r} is not an environment variable name")
        values["ttl_env"] = var
    if "artifacts" in body:
        artifacts = _str(body["artifacts"], f"{at}.artifacts {here}")
        if artifacts not in TARGET_ARTIFACTS:
            raise ConfigError(
                f'{at}.artifacts {here}: expected "none", got {artifacts!r}',
                hint="the records of a JSON-document catalog have no artifact directories",
            )
        values["artifacts"] = artifacts
    target = Target(**values)
    try:  # the document layer's own checks of a collection (path, state source)
        collection_spec(target)
    except ConfigError as exc:
        raise ConfigError(f"{at} ({where}): {exc.message}", hint=exc.hint) from None
    return target


def _targets(
    raw: Any,
    where: str,
    env: Mapping[str, str],
    flag_ttls: Mapping[str, str],
    sources: dict[str, str],
) -> tuple[Target, ...]:
    """``[[targets]]`` parsed, each with its effective TTL: ``--ttl NAME=D`` > the variable
    ``ttl_env`` names (seconds) > the file's ``ttl``. ``sources`` gets where each TTL came
    from (``targets.NAME.ttl``)."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(
            f"targets ({where}): expected [[targets]] tables (an array of tables), got {raw!r}"
        )
    out: list[Target] = []
    seen: dict[str, int] = {}
    for n, body in enumerate(raw):
        t = _target(body, n, where)
        if t.name in seen:
            raise ConfigError(f"targets.{t.name} ({where}): two targets have this name")
        other = next((o.name for o in out if o.collection == t.collection), None)
        if other is not None:
            raise ConfigError(
                f"targets.{t.name} ({where}): collection {t.collection!r} is also"
                f" targets.{other}'s",
                hint="one [[targets]] table per collection",
            )
        seen[t.name] = n
        src = f"file {where.removeprefix('from file ')}" if t.ttl is not None else "default"
        ttl = t.ttl
        if t.ttl_env and env.get(t.ttl_env, "") != "":
            at = f"targets.{t.name}.ttl (from env {t.ttl_env})"
            ttl, src = _ttl_env_seconds(t.ttl_env, env[t.ttl_env], at), f"env {t.ttl_env}"
        if t.name in flag_ttls:
            ttl = _duration(flag_ttls[t.name], f"--ttl {t.name}")
            src = "flag"
        out.append(msgspec.structs.replace(t, ttl=ttl))
        sources[f"targets.{t.name}.ttl"] = src
    unknown = sorted(set(flag_ttls) - set(seen))
    if unknown:
        known = ", ".join(seen) or "none configured"
        raise UsageError(
            f"--ttl {unknown[0]}=...: no target is named {unknown[0]!r}", hint=f"targets: {known}"
        )
    return tuple(out)


def _ttl_envs_in_file(path: Path | None) -> set[str]:
    """The ``ttl_env`` names the config file declares (best effort: a bad file is reported
    by `_read_file`), so that a team's own ``RETENTION_...`` variable is not refused."""
    if path is None:
        return set()
    import tomllib

    try:
        with open(path, "rb") as f:
            targets = tomllib.load(f).get(TARGETS_KEY)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()
    if not isinstance(targets, list):
        return set()
    return {
        t["ttl_env"] for t in targets if isinstance(t, dict) and isinstance(t.get("ttl_env"), str)
    }


# RETENTION_* variables read outside SETTINGS: the config file, RETENTION_DAYS_<TIER>
# (`_tier_days_from_env`, a prefix), and test-only knobs (retention/moves.py). A variable
# read anywhere else must be added here, or `load_config` refuses it as unknown.
OTHER_ENV = (CONFIG_ENV, "RETENTION_MOVE_BATCH", "RETENTION_INTENT_BATCH")
ENV_PREFIX = "RETENTION_"


def unknown_env(env: Mapping[str, str], also: Iterable[str] = ()) -> ConfigError | None:
    """The error for the first (by name) set ``RETENTION_*`` variable that nothing reads,
    with a did-you-mean as for an unknown config key; None if every one is known. An
    empty one means "not set" (as for settings) and is left alone. ``also``: more names
    read (a target's ``ttl_env``)."""
    known = [s.env for s in SETTINGS] + list(OTHER_ENV) + list(also)
    for var in sorted(k for k, v in env.items() if k.startswith(ENV_PREFIX) and v != ""):
        if var in known or var.startswith(DAYS_ENV):
            continue
        # Compared without the common prefix, which would make every name look close.
        names = {k.removeprefix(ENV_PREFIX): k for k in known}
        close = [names[n] for n in close_matches(var[len(ENV_PREFIX) :], names)]
        message = f"unknown environment variable {var}"
        if close:
            return ConfigError(
                f"{message}; did you mean {close[0]}?", hint=f"unset {var} (or rename it)"
            )
        return ConfigError(
            message,
            hint="retention reads RETENTION_<SETTING> for each setting `retention config`"
            " lists (e.g. catalog.path: RETENTION_CATALOG_PATH), RETENTION_CONFIG and"
            f" RETENTION_DAYS_<TIER>; unset {var}",
        )
    return None


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read: ``--config``, else ``$RETENTION_CONFIG``, else ``./retention.toml``
    if it exists. An explicit path that does not exist is an error; the default may be absent."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            what = "does not exist" if not path.exists() else "is not a file"
            raise ConfigError(f"config file {path} (from env {CONFIG_ENV}) {what}")
        return path
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_config(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the effective configuration (read-only: reads the file and ``env``).

    ``overrides`` maps Config field names to flag values (``None`` means "not given").
    Raises `ConfigError` for a missing explicit file, bad TOML, an unknown setting or a bad
    value (naming the setting and where it came from).
    """
    env = os.environ if env is None else env
    unknown = unknown_env(env)
    if unknown is not None:
        # A target's ttl_env may be a RETENTION_... name of the team's own: read it too.
        with contextlib.suppress(RetentionError):
            also = _ttl_envs_in_file(find_config_file(explicit, env))
            unknown = unknown_env(env, also) if also else unknown
    if unknown is not None:
        raise unknown
    path = find_config_file(explicit, env)
    file_values = _read_file(path) if path is not None else {}
    base = (path.parent if path is not None else Path(".")).absolute()
    cwd = Path(".").absolute()

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in SETTINGS:
        flag = (overrides or {}).get(s.field)
        if flag is not None:
            raw, src, rel = flag, "flag", cwd
        elif env.get(s.env, "") != "":
            raw, src, rel = env[s.env], f"env {s.env}", cwd
        elif s.key in file_values:
            raw, src, rel = file_values[s.key], f"file {path}", base
        else:
            raw, src, rel = s.default, "default", base
        where = f"{s.key} (from {src})"
        if src == "flag" and isinstance(raw, str) and not raw.strip():
            # An empty environment variable means "not set"; an empty flag was typed on
            # purpose (often `--max-age "$AGE"` with AGE unset). Ignoring it would quietly
            # fall back to the default rule, which may delete far more than intended.
            raise ConfigError(f"{where}: the value is empty")
        value = raw if src == "default" else s.parse(raw, where)
        if s.is_path and value is not None and not is_catalog_url(str(value)):
            value = os.path.normpath(os.path.abspath(rel / os.path.expanduser(value)))
        values[s.field] = value
        sources[s.field] = src

    _tier_days_from_env(values, sources, env)
    if all(values[f] is None for f in RULE_FIELDS) and not (
        values["tiers"] or values["policy_rows"]
    ):
        values["keep_last"] = DEFAULT_KEEP_LAST
        sources["keep_last"] = "default (no rule given)"
    if values["state_column"] is not None and values["terminal_states"] is None:
        values["terminal_states"] = DEFAULT_TERMINAL_STATES
        sources["terminal_states"] = "default (policy.state_column set)"
    if values["path_column"] is not None and sources["path_template"] == "default":
        values["path_template"] = None
    flag_ttls: Mapping[str, str] = (overrides or {}).get("target_ttls") or {}
    raw_targets = file_values.get(TARGETS_KEY)
    json_catalog = is_json_path(values["catalog_path"])
    if raw_targets is not None and not json_catalog:
        raise ConfigError(
            f"config file {path}: [[targets]] needs a JSON-document catalog, and catalog.path"
            f" ({sources['catalog_path']}) is {values['catalog_path']}",
            hint="[[targets]] are record kinds of a JSON document (catalog.path ending in"
            " .json); an SQL catalog's runs are catalog.runs_table",
        )
    if json_catalog:
        values["targets"] = _targets(raw_targets, f"from file {path}", env, flag_ttls, sources)
        sources["targets"] = f"file {path}" if raw_targets is not None else "default"
        if not values["targets"]:
            raise ConfigError(
                f"catalog.path {values['catalog_path']} is a JSON document, and no [[targets]]"
                " are configured",
                hint="declare each record kind to expire as a [[targets]] table (see"
                " examples/async-jobstore/retention.toml)",
            )
    elif flag_ttls:
        raise UsageError(
            "--ttl applies to the [[targets]] of a JSON-document catalog; this catalog is"
            f" {values['catalog_path']}",
            hint="for an SQL catalog use --max-age",
        )
    else:
        sources["targets"] = "default"
    if sources["lock_file"] != "default" and not json_catalog:
        raise ConfigError(
            f"catalog.lock_file ({sources['lock_file']}) applies to a JSON-document catalog"
            " (catalog.path ending in .json)",
            hint="an SQL catalog's writers are waited for with catalog.busy_timeout",
        )
    return Config(config_file=str(path) if path else None, sources=sources, **values)


def _tier_days_from_env(
    values: dict[str, Any], sources: dict[str, str], env: Mapping[str, str]
) -> None:
    """``RETENTION_DAYS_<TIER>`` replaces that tier's days (and its max_age). One naming no
    configured tier is refused rather than ignored, when tiers are configured."""
    tiers = values["tiers"]
    named = {k: v for k, v in env.items() if k.startswith(DAYS_ENV) and v != ""}
    if not named or tiers is None:
        return
    by_env = {tier_env(name): name for name in tiers}
    for var, raw in sorted(named.items()):
        name = by_env.get(var)
        if name is None:
            raise ConfigError(
                f"env {var} names no tier of policy.tiers",
                hint="known: " + ", ".join(sorted(by_env)),
            )
        tier = dict(tiers[name])
        tier.pop("max_age", None)
        tier["days"] = _days(raw, f"policy.tiers.{name}.days (from env {var})")
        tiers = {**tiers, name: tier}
        sources[f"tiers.{name}.days"] = f"env {var}"
    values["tiers"] = tiers


def render_config(cfg: Config) -> list[tuple[str, str, str]]:
    """Rows of (setting, value, source) for `retention config`."""
    rows = []
    for s in SETTINGS:
        value = getattr(cfg, s.field)
        if s.field == "policy_rows" and value is not None:
            for name in value.__struct_fields__:
                v = getattr(value, name)
                if v is not None:
                    rows.append((f"{s.key}.{name}", str(v), cfg.sources[s.field]))
            continue
        if s.field == "tiers" and value:
            for name, tier in value.items():
                for key, v in tier.items():
                    src = cfg.sources.get(f"tiers.{name}.{key}", cfg.sources[s.field])
                    rows.append((f"{s.key}.{name}.{key}", _shown_value(key, v), src))
            continue
        if s.field == "catalog_path" and value is not None:
            value = shown_catalog(str(value))
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif s.field == "keep_tags" and value is not None:
            value = "; ".join(",".join(tl) or "''" for tl in value)
        elif isinstance(value, tuple):
            value = (
                ", ".join(v if isinstance(v, str) else f"{v.table}.{v.column}" for v in value)
                or "(none)"
            )
        rows.append((s.key, "(none)" if value is None else str(value), cfg.sources[s.field]))
    for t in cfg.targets:
        src = cfg.sources.get("targets", "default")
        for key in TARGET_KEYS:
            if key == "name":
                continue
            v = getattr(t, key)
            shown = ", ".join(v) if isinstance(v, tuple) else "(none)" if v is None else str(v)
            if key == "ttl":
                rows.append(
                    (f"targets.{t.name}.ttl", shown, cfg.sources.get(f"targets.{t.name}.ttl", src))
                )
            else:
                rows.append((f"targets.{t.name}.{key}", shown, src))
    return rows


def _shown_value(key: str, value: Any) -> str:
    if key == "keep_tags":
        return "; ".join(",".join(tl) or "''" for tl in value)
    if key == "days" and value == -1:
        return "-1 (keep forever)"
    return str(value)
