"""Planning: evaluate the policy against the catalog and produce a signed manifest.

Planning is read-only with respect to the catalog (opened ``mode=ro``) and the artifacts
(only ``lstat`` and ``scandir``). It may create the signing key and the catalog-identity
binding in the state directory, nothing else.

Guard rails live here, not in the policy: a policy that keeps nothing is refused; so is a
plan that would remove every run of the runs table (not just every run ``catalog.filter``
selects) unless ``allow_remove_all`` is given, a plan whose candidates all lack a directory
while the artifact root holds directories no run has (a wrong path template) unless
``allow_missing_dirs`` is given, and a catalog whose run ids apply could not find again
(BLOB, REAL, NULL). A candidate whose directory is a mount point, or on another filesystem
than the trash, is left out with a reason: apply moves with one rename.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import string
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from operator import attrgetter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from retention import identity
from retention.catalog import (
    WHOLE_SECONDS,
    OddRows,
    SqlCatalog,
    q,
    template_fields,
    time_reader,
)
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import (
    FIRST_US,
    LAST_US,
    format_instant,
    format_instant_us,
    parse_duration,
    parse_span,
    plural,
)
from retention.errors import CatalogError, ConfigError, UsageError
from retention.layout import TRASH_DIRNAME, StateLayout
from retention.manifest import (
    FORMAT,
    VERSION,
    Entry,
    Payload,
    load_key,
    policy_digest,
    sign_with_id,
)
from retention.measuring import ForkedMeasurer, OnDevice, default_workers
from retention.policy import (
    UNITS,
    UNLIMITED,
    Attrs,
    BudgetReport,
    Decision,
    DependencyCycle,
    GroupSummary,
    Item,
    PolicySpec,
    Verdict,
    evaluate,
    other_type,
)
from retention.reporting import Progress, without_cyclic_gc
from retention.reports import SkippedEntry
from retention.status import journal_warnings
from retention.store import (
    FS_ENCODING,
    FS_ERRORS,
    LocalStore,
    Measure,
    OutsideRoot,
    ancestors,
    display,
    relative_artifact_path,
    require_artifact_root,
    text_and_raw,
)

_NO_TIME = -(1 << 63)  # the sort key of an entry without a time: before any instant


@dataclass
class PlanResult:
    payload: Payload
    manifest: bytes
    skipped: list[SkippedEntry] = field(default_factory=list)
    no_time: int = 0  # runs kept because no timestamp could be read
    warnings: list[str] = field(default_factory=list)  # e.g. an interrupted transaction
    budget: BudgetReport | None = None  # with a size budget: what it removed, what holds
    groups: list[GroupSummary] = field(default_factory=list)  # grouped policies: counts


BLOCKED_HINT = (
    "the application keeps the referencing row: remove or unlink it first (a foreign key"
    ' without ON DELETE counts as owned unless catalog.no_action = "blocks")'
)


EMPTY_POLICY_HINT = (
    "give a rule that keeps something: --keep-last N, --keep-hourly/daily/weekly/monthly/"
    "yearly N, --keep-within D, --keep-within-daily D (and the like), --keep-tag TAGS or"
    " --max-age D"
)


def _span(text: str | None) -> str | None:
    """A calendar span from the config (already normalised); zero turns the rule off."""
    return None if text is None or parse_span(text).is_zero() else text


def _rule_fields(get: Callable[[str], Any]) -> dict[str, Any]:
    """The rule, floor and budget fields of a spec from config values (``get(field)``)."""
    max_age = get("max_age")
    days = get("days")
    keep_last = get("keep_last")
    if days == UNLIMITED:
        keep_last, max_age = UNLIMITED, None
    elif days is not None:
        max_age = f"{days}d"
    fields: dict[str, Any] = {f"keep_{u}": get(f"keep_{u}") for u in UNITS}
    fields["keep_within"] = _span(get("keep_within"))
    fields |= {f"keep_within_{u}": _span(get(f"keep_within_{u}")) for u in UNITS}
    fields |= {
        "keep_last": keep_last,
        "max_age_seconds": (
            int(parse_duration(max_age).total_seconds()) if max_age is not None else None
        ),
        "keep_tags": get("keep_tags") or None,
        "min_keep": get("min_keep") or None,
        "max_total_bytes": get("max_total_size"),
    }
    return fields


_CALENDAR_FIELDS = (
    *(f"keep_{u}" for u in UNITS),
    "keep_within",
    *(f"keep_within_{u}" for u in UNITS),
)


def _calendar(fields: dict[str, Any]) -> bool:
    return any(fields[f] not in (None, 0) for f in _CALENDAR_FIELDS)


def policy_from_config(cfg: Config) -> PolicySpec:
    """The policy the configuration asks for; refuses one that would keep nothing (no
    rule that can keep a run, as restic refuses an empty policy) and rules that need a
    column nobody named. With ``policy.tiers``, each tier's spec is the base settings with
    the tier's own over them."""
    if cfg.terminal_states is not None and not cfg.state_column:
        raise ConfigError(
            "policy.terminal_states needs policy.state_column: the column of the runs table"
            " that holds each run's state"
        )
    if cfg.newest_of_kind is not None and not cfg.kind_column:
        raise ConfigError(
            "policy.newest_of_kind needs policy.kind_column: the column of the runs table"
            " that holds each run's kind"
        )
    if cfg.tiers is not None and not cfg.tier_column:
        raise ConfigError(
            "policy.tiers needs policy.tier_column: the column that holds each run's tier"
            " (of the runs table, or of policy.tier_table)"
        )
    if cfg.tier_column and not cfg.tiers:
        raise ConfigError(
            "policy.tier_column needs [policy.tiers.NAME] tables: the policy of each tier",
            hint="e.g. [policy.tiers.free] days = 30",
        )
    if cfg.tier_table and not (cfg.tier_join or cfg.group_by):
        raise ConfigError(
            "policy.tier_table needs policy.tier_join (the runs column to look up) or"
            " policy.group_by (its first column is looked up)"
        )
    base = _rule_fields(lambda f: getattr(cfg, f, None))
    protections: dict[str, Any] = {
        "terminal_states": cfg.terminal_states if cfg.state_column else None,
        "pins": True if cfg.pin_column else None,
        "newest_of_kind": cfg.newest_of_kind if cfg.kind_column else None,
        "dependencies": True if cfg.parent_column else None,
    }

    def spec_of(fields: dict[str, Any], **more: Any) -> PolicySpec:
        calendar = _calendar(fields)
        return PolicySpec(
            **fields,
            **protections,
            # Only where they change a decision: the zone for calendar rules and spans,
            # which run of a period for calendar rules.
            tz=cfg.tz if calendar else None,
            checkpoint="first" if calendar and cfg.checkpoint == "first" else None,
            **more,
        )

    if cfg.policy_rows is not None:
        if cfg.tiers:
            raise ConfigError("give [policy.tiers.NAME] tables or [policy.rows], not both")
        rows = cfg.policy_rows
        if not (rows.join or cfg.group_by):
            raise ConfigError(
                "policy.rows needs policy.group_by (its first column is matched against"
                f" {rows.table}.{rows.key}) or policy.rows.join"
            )
        # The groups' own specs come from the catalog: `policy_with_rows` reads them.
        return spec_of(base, group_by=cfg.group_by, tier_rows=rows.table)
    tiers = None
    if cfg.tiers:
        tiers = {}
        for name, own in cfg.tiers.items():
            merged = dict(own)
            if "days" in own:  # days replaces the base age and (for -1) the base count
                merged.setdefault("max_age", None)

            def get(f: str, m: dict[str, Any] = merged) -> Any:
                return m[f] if f in m else getattr(cfg, f, None)

            fields = _rule_fields(get)
            tier = spec_of(fields)
            if tier.keeps_nothing():
                raise UsageError(
                    f"refusing tier {name!r}: its policy keeps nothing", hint=EMPTY_POLICY_HINT
                )
            tiers[name] = tier
        spec = spec_of(
            base,
            group_by=cfg.group_by,
            tiers=tiers,
            tier_source=_tier_source(cfg),
        )
    else:
        spec = spec_of(base, group_by=cfg.group_by)
        if spec.is_empty() or spec.keeps_nothing():
            raise UsageError("refusing a policy that keeps nothing", hint=EMPTY_POLICY_HINT)
    tagged = spec.keep_tags or any(t.keep_tags for t in (tiers or {}).values())
    if tagged and not cfg.tags_column:
        raise ConfigError(
            "policy.keep_tags needs policy.tags_column: the column of the runs table that"
            " holds each run's tags (comma-separated text or a JSON array)"
        )
    return spec


def policy_with_rows(cat: SqlCatalog, cfg: Config, spec: PolicySpec) -> PolicySpec:
    """With ``[policy.rows]``: the spec with one tier per enabled policy row (named by the
    row's key as text), the base settings with the row's days and min_keep over them, and
    the disabled rows listed (read-only). Any other spec is returned as it is."""
    rows = cfg.policy_rows
    if rows is None or spec.tier_rows is None or spec.tiers is not None:
        return spec
    cols = [rows.key, *(c for c in (rows.days, rows.enabled, rows.min_keep) if c)]
    at = {c: k for k, c in enumerate(cols)}
    tiers: dict[str, PolicySpec] = {}
    disabled: list[str] = []
    for row in cat.read_table(rows.table, cols, "policy.rows"):
        name = _text(row[0])
        if name is None:
            continue  # a row for no group: nothing of ours can match it
        if name in tiers or name in disabled:
            raise CatalogError(
                f"table {rows.table!r} has two rows for {rows.key} {name!r} (policy.rows)",
                hint=f"make {rows.key} unique in {rows.table!r}",
            )
        if rows.enabled and not truthy(row[at[rows.enabled]]):
            disabled.append(name)
            continue
        own: dict[str, Any] = {}
        if rows.days:
            days = _row_number(row[at[rows.days]], rows, rows.days, name)
            if days is not None and days != UNLIMITED and days < 1:
                raise CatalogError(
                    f"{rows.table}.{rows.days} of {rows.key} {name!r} is {days}: days must be"
                    " >= 1, or -1 to keep forever (policy.rows)"
                )
            if days is not None:
                own["days"] = days
                own["max_age"] = None
        if rows.min_keep:
            floor = _row_number(row[at[rows.min_keep]], rows, rows.min_keep, name)
            if floor is not None:
                own["min_keep"] = max(floor, 0)

        def get(f: str, m: dict[str, Any] = own) -> Any:
            return m[f] if f in m else getattr(cfg, f, None)

        tier = _rule_fields(get)
        tier_spec = msgspec.structs.replace(spec, group_by=None, tier_rows=None, **tier)
        if tier_spec.keeps_nothing():
            raise CatalogError(
                f"the row of {rows.key} {name!r} in {rows.table!r} gives no days and [policy]"
                " no rule: it would keep nothing",
                hint='set its days, or a default rule in [policy] (e.g. max_age = "90d")',
            )
        tiers[name] = tier_spec
    return msgspec.structs.replace(spec, tiers=tiers, disabled=tuple(sorted(disabled)) or None)


def _row_number(value: object, rows: Any, column: str, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise CatalogError(
        f"{rows.table}.{column} of {rows.key} {name!r} is not a whole number: {value!r}"
        " (policy.rows)"
    )


def _tier_source(cfg: Config) -> str:
    if cfg.tier_table:
        join = _tier_join(cfg)
        return f"{cfg.tier_table}.{cfg.tier_column} where {cfg.tier_key or join} = the run's {join}"
    return f"column {cfg.tier_column}"


def _tier_join(cfg: Config) -> str:
    join = cfg.tier_join or (cfg.group_by[0] if cfg.group_by else None)
    assert join is not None  # policy_from_config refuses a lookup table without one
    return join


def policy_zone(spec: PolicySpec) -> tzinfo | None:
    """The zone calendar periods are taken in (``--tz``), read from the zone database."""
    return ZoneInfo(spec.tz) if spec.tz is not None else None


def _columns(cfg: Config, spec: PolicySpec) -> dict[str, tuple[str, str]]:
    """Columns of the runs table the policy reads besides id and time: role -> (setting,
    column)."""
    roles: dict[str, tuple[str, str]] = {}
    if spec.keep_tags and cfg.tags_column:
        roles["tags"] = ("policy.tags_column", cfg.tags_column)
    if spec.terminal_states is not None and cfg.state_column:
        roles["state"] = ("policy.state_column", cfg.state_column)
    if spec.pins and cfg.pin_column:
        roles["pin"] = ("policy.pin_column", cfg.pin_column)
    if spec.newest_of_kind and cfg.kind_column:
        roles["kind"] = ("policy.kind_column", cfg.kind_column)
    if spec.dependencies and cfg.parent_column:
        roles["parent"] = ("policy.parent_column", cfg.parent_column)
    budget = spec.max_total_bytes is not None or any(
        t.max_total_bytes is not None for t in (spec.tiers or {}).values()
    )
    if budget and cfg.size_column:
        roles["size"] = ("policy.size_column", cfg.size_column)
    if spec.erase is not None:
        roles["erase"] = ("--erase", spec.erase[0])
    for k, col in enumerate(spec.group_by or ()):
        roles[f"group:{k}"] = ("policy.group_by", col)
    if spec.tier_rows is not None and cfg.policy_rows is not None:
        join = cfg.policy_rows.join or (cfg.group_by[0] if cfg.group_by else None)
        assert join is not None  # policy_from_config refuses rows without one
        roles["tier"] = ("policy.rows.join", join)
    elif spec.tiers is not None and cfg.tier_column:
        if cfg.tier_table:
            roles["tier_join"] = ("policy.tier_join", _tier_join(cfg))
        else:
            roles["tier"] = ("policy.tier_column", cfg.tier_column)
    return roles


def _bytes(value: object) -> int | None:
    """A size column's value: a whole number of bytes >= 0; None (unknown) otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value == value and 0 <= value < 2**63:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 0 <= value < 2**63 else None


_FALSY = ("", "0", "false", "f", "no", "n", "off")


def truthy(value: object) -> bool:
    """A pin column's value: NULL, 0 and false-like text are false; anything else (any
    other number or text) pins the run, so an unexpected value keeps rather than deletes."""
    if value is None:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value).strip().lower() not in _FALSY


def _text(value: object) -> str | None:
    """A column value as text for comparing with configured values (states, kinds)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return str(value)


def _needs_offsets(spec: PolicySpec) -> bool:
    """Calendar periods and spans without ``--tz`` are taken in each run's recorded offset."""
    if spec.tz is not None:
        return False
    fields = [f"keep_{u}" for u in UNITS] + ["keep_within"] + [f"keep_within_{u}" for u in UNITS]
    return any(getattr(spec, f) not in (None, 0) for f in fields)


def parse_tags(value: object) -> frozenset[str] | None:
    """A run's tags: a JSON array of strings, or comma-separated text; NULL is no tags.
    None when the value cannot be read (a broken JSON array, bytes that are not UTF-8):
    keep-tag keeps such a run rather than guess."""
    if value is None:
        return frozenset()
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return None
    text = str(value).strip()
    if text.startswith("["):
        try:
            tags = json.loads(text)
        except ValueError:
            return None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return None
        return frozenset(t.strip() for t in tags if t.strip())
    return frozenset(t.strip() for t in text.split(",") if t.strip())


def read_items(cat: SqlCatalog, cfg: Config, spec: PolicySpec) -> list[Item]:
    """The runs the policy considers, with what ``spec`` needs of them (read-only).

    A policy that needs nothing but timestamps (keep-last, max-age) reads them through
    `SqlCatalog.iter_items`, unchanged. Otherwise one streamed SELECT reads, with the
    same filter, protect expression and timestamp fallback, the recorded UTC offsets and
    the columns the rules and protections name. (It belongs with the catalog seam; it
    lives here while that module is being changed by others.)
    """
    roles = _columns(cfg, spec)
    offsets = _needs_offsets(spec)
    if not roles and not offsets:
        return list(cat.iter_items())
    runs_cols = cat.schema.runs_columns
    for setting, col in roles.values():
        if col not in runs_cols:
            raise CatalogError(
                f"table {cfg.runs_table!r} has no column {col!r} (named by {setting})"
            )
    names = list(roles)
    times = ", ".join(q(c) for c in cfg.time_columns)
    protect = f"CASE WHEN ({cfg.protect}) THEN 1 ELSE 0 END" if cfg.protect else "0"
    extra = "".join(f", {q(roles[r][1])}" for r in names)
    where = f" WHERE ({cfg.filter})" if cfg.filter else ""
    sql = f"SELECT {q(cfg.id_column)}, {protect}{extra}, {times} FROM {q(cfg.runs_table)}{where}"
    first_time = 2 + len(names)
    parse = time_reader(cfg.time_format, keep_offset=offsets)
    groups = [r for r in names if r.startswith("group:")]
    tiers: dict[Any, str | None] | None = None
    if "tier_join" in roles and cfg.tier_table and cfg.tier_column:
        key = cfg.tier_key or roles["tier_join"][1]
        tiers = cat.lookup(cfg.tier_table, key, cfg.tier_column, "policy.tier_table")
        for k in list(tiers):  # "42" finds 42 and the other way: SQLite types are loose
            alt = other_type(k) if isinstance(k, str | int) else None
            if alt is not None:
                tiers.setdefault(alt, tiers[k])
    tag_sets: dict[frozenset[str] | None, frozenset[str] | None] = {}
    texts: dict[str | None, str | None] = {}  # one copy of each state or kind
    erase_value = spec.erase[1] if spec.erase is not None else None

    def attrs_of(raw: tuple[Any, ...]) -> Attrs:
        got = dict(zip(names, raw, strict=True))
        tags: frozenset[str] | None = frozenset()
        if "tags" in got:
            tags = parse_tags(got["tags"])
            tags = tag_sets.setdefault(tags, tags)
        state = _text(got.get("state"))
        kind = _text(got.get("kind"))
        tier = _text(got.get("tier"))
        if tiers is not None:
            tier = tiers.get(got["tier_join"])
        return Attrs(
            tags=tags,
            state=texts.setdefault(state, state),
            pinned=truthy(got.get("pin")),
            kind=texts.setdefault(kind, kind),
            parent=got.get("parent"),
            size=_bytes(got.get("size")),
            group=tuple(got[g] for g in groups) if groups else None,
            tier=texts.setdefault(tier, tier),
            erase=erase_value is not None and _text(got.get("erase")) == erase_value,
        )

    # Without per-run values (parent, size), runs share few distinct Attrs: one copy for
    # each distinct set of raw values, built once (a million runs, a hundred tenants).
    shared: dict[tuple[Any, ...], Attrs] | None = (
        {} if not {"parent", "size"} & set(names) else None
    )
    # Whole epoch seconds in the first time column are read inline (as `time_reader` and
    # `SqlCatalog.iter_items` read them); one text value (a tenant) finds its shared Attrs
    # by itself: text equals no other type, so no type is needed in its key.
    lo, hi = WHOLE_SECONDS.get(cfg.time_format, (0, 0))
    make = Item.make
    by_text: dict[str, Attrs] = {}
    one = shared is not None and len(names) == 1
    items: list[Item] = []
    try:
        for row in cat.conn.execute(sql):
            value = row[first_time]
            at: int | None = None
            if type(value) is int and lo < value < hi:
                at = value * 1_000_000
            else:
                t = None
                for value in row[first_time:]:
                    if value is not None:  # as iter_items: only NULL falls through
                        t = parse(value)
                        break
            attrs = None
            if names:
                if one and type(row[2]) is str:
                    attrs = by_text.get(row[2])
                    if attrs is None:
                        attrs = by_text[row[2]] = attrs_of(row[2:3])
                elif shared is None:
                    attrs = attrs_of(row[2:first_time])
                else:
                    raw = row[2:first_time]
                    # 1 and 1.0 and True are equal keys: the type is part of the key
                    shape = (*raw, *map(type, raw))
                    attrs = shared.get(shape)
                    if attrs is None:
                        attrs = shared[shape] = attrs_of(raw)
            if at is not None:
                items.append(Item(row[0], at, bool(row[1]), attrs))
            else:
                items.append(make(row[0], t, bool(row[1]), attrs))
    except cat.Error as exc:
        raise CatalogError(f"reading {cfg.runs_table!r} failed: {exc}") from None
    return items


def artifact_rel_path(cfg: Config, row: dict[str, Any], root: Path) -> bytes | None:
    """The run's artifact path relative to the root; None when the run has no artifacts.

    Raises `OutsideRoot` for a path leaving the root or with a ``..`` component, and
    ValueError for a template column that is NULL.
    """
    if cfg.path_column:
        value = row.get(cfg.path_column)
        if value is None or value in ("", b""):
            return None
        raw = value if isinstance(value, bytes) else os.fsencode(str(value))
        return relative_artifact_path(root, raw)
    if not cfg.path_template:
        return None
    values = {}
    for name in template_fields(cfg.path_template):
        v = row.get(name)
        if v is None:
            raise ValueError(f"column {name!r} of the path template is NULL")
        values[name] = os.fsdecode(v) if isinstance(v, bytes) else v
    return relative_artifact_path(root, os.fsencode(cfg.path_template.format(**values)))


def candidate_rel_path(
    cfg: Config, cols: list[str], root: Path
) -> Callable[[tuple[Any, ...]], bytes | None]:
    """`artifact_rel_path` of a row of ``cols`` (`SqlCatalog.path_columns`), as a function.

    With a one-field template (``{run_id}``), a value that is a plain name (text; not
    empty, ``.``, ``..`` or the trash's name; no ``/``, ``:`` or NUL) is its own path: what
    `artifact_rel_path` gives then (nothing to normalise, nothing to refuse), without the
    template's formatting and the checks, a hundred thousand times. Any other value takes
    the full way."""

    def full(row: tuple[Any, ...]) -> bytes | None:
        return artifact_rel_path(cfg, dict(zip(cols, row, strict=True)), root)

    template = cfg.path_template
    if cfg.path_column or not template or template[:1] != "{" or template[-1:] != "}":
        return full
    field = template[1:-1]
    if field not in cols or not field.isidentifier():
        return full
    at = cols.index(field)

    def one(row: tuple[Any, ...]) -> bytes | None:
        v = row[at]
        if type(v) is str and v != TRASH_DIRNAME and _plain(v):
            return v.encode(FS_ENCODING, FS_ERRORS)
        return full(row)

    return one


OVERLAP_HINT = "give every run its own artifact directory; retention never moves a shared one"
AMBIGUOUS_HINT = (
    "give every run an id of its own (a UNIQUE index on the id column, with its collation),"
    " or leave these runs out with catalog.filter"
)


def _prefetch_odd(cfg: Config, cat: SqlCatalog) -> OddRows | None:
    """For a template of one field (``{run_id}``), the rows `_overlapping` reads whatever
    the candidates are (those whose field is not a plain name), fetched in the background
    from the start (`SqlCatalog.prefetch_odd`); None otherwise."""
    template = cfg.path_template
    if cfg.path_column or not template:
        return None
    try:
        names = template_fields(template)
    except ConfigError:  # refused where the paths are made, with the reason: not here
        return None
    if len(names) != 1 or template != "{" + names[0] + "}":
        return None
    return cat.prefetch_odd(names[0])


def _overlapping(
    cfg: Config,
    cat: SqlCatalog,
    root: Path,
    paths: list[tuple[Any, bytes | None]],
    odd: OddRows | None = None,
) -> dict[Any, str]:
    """Candidates whose directory is shared with, contains, or lies inside another run's
    (candidate or not): moving it would take another run's artifacts along. Read-only; one
    streamed pass over every run of the catalog.

    Only a run whose path begins like a candidate's can nest with one, and the beginning
    of most runs' paths is cheap to tell (`_PathKeys`): the full path (`artifact_rel_path`)
    is computed only for those runs, and for runs whose beginning cannot be told cheaply.
    """
    by_path: dict[bytes, list[Any]] = {}
    for run_id, rel in paths:
        if rel is not None:
            ids = by_path.get(rel)
            if ids is None:
                by_path[rel] = [run_id]
            else:
                ids.append(run_id)
    under: dict[bytes, list[bytes]] = {}  # a proper ancestor -> candidate paths below it
    for rel in by_path:
        if b"/" in rel:  # (a single component has no ancestor: most paths)
            for a in ancestors(rel):
                under.setdefault(a, []).append(rel)
    bad: dict[Any, str] = {}

    def mark(rel: bytes, why: str) -> None:
        for rid in by_path[rel]:
            bad.setdefault(rid, f"artifact directory {display(rel)} {why}")

    for rel, ids in by_path.items():
        if len(ids) > 1:
            mark(rel, f"is shared by {len(ids)} runs of the plan")
        if b"/" in rel:
            for a in ancestors(rel):
                if a in by_path:
                    mark(rel, f"lies inside run {by_path[a][0]}'s directory")
                    mark(a, f"contains run {ids[0]}'s directory")
    if not by_path:
        return bad  # no candidate directory: nothing any other run's could overlap
    candidates = {rid for rid, _ in paths}
    cols = cat.path_columns()
    keys = _PathKeys(cfg, root, by_path, cols)
    key_of, wanted, one = keys.key_of, keys.wanted, keys.one
    # The catalog may leave out, in SQL, the rows the loop's first test skips, and the
    # candidates' own rows (the loop's second test skips them too). When the template is
    # the id column alone and the database keeps that column unique, the one row holding
    # a candidate's id as text is the candidate's: only the other wanted names need to be
    # looked for (at a million runs usually none, and the SQL test is a bare scan).
    hint = None
    if one is not None:
        sql_wanted: Collection[str] = wanted
        if cols[one] == cfg.id_column and cat.unique_column(cols[one]):
            sql_wanted = wanted - {rid for rid in candidates if type(rid) is str}
        hint = (cols[one], sql_wanted)
    cols, rows = cat.path_tuples(hint, odd)
    for row in rows:
        if one is not None:
            # `_PathKeys._field_key` inline (``{run_id}``: a million runs, most skipped).
            v = row[one]
            if (
                type(v) is str
                and v not in wanted
                and v not in _NOT_A_NAME
                and "/" not in v
                and ":" not in v
                and "\0" not in v
            ):
                continue
        rid = row[0]
        if rid in candidates:
            continue
        key = key_of(row)
        if key is not None and key not in wanted:
            continue  # its path begins unlike every candidate's: it cannot nest with one
        try:
            other = artifact_rel_path(cfg, dict(zip(cols, row, strict=True)), root)
        except (OutsideRoot, ValueError):
            continue
        if other is None:
            continue
        if other in by_path:
            mark(other, f"is also the directory of run {rid}, which is kept")
        for rel in under.get(other, ()):
            mark(rel, f"lies inside the directory of run {rid}, which is kept")
        if b"/" in other:
            for a in ancestors(other):
                if a in by_path:
                    mark(a, f"contains the directory of run {rid}, which is kept")
    return bad


_NOT_A_NAME = ("", ".", "..")


class _PathKeys:
    """The first components of a run's artifact path, told cheaply from the columns of
    `SqlCatalog.path_tuples` where that is sure, for `_overlapping`.

    Two paths nest (are equal, or one lies inside the other) only if one is a prefix of
    the other, component by component. `key_of` gives a run's first ``depth`` components
    (as text), or None when it cannot tell; `wanted` holds those of every candidate's path,
    and every candidate's path has at least ``depth`` components (else nothing is told).
    So a run whose key is not wanted nests with no candidate: its path is not a candidate's,
    not an ancestor of one (it would be a candidate's first components), and no candidate's
    path is an ancestor of it (that would have fewer than ``depth`` components).

    With a template, ``depth`` is its number of components, and the key is the whole path
    when every component renders to a plain name (not empty, ``.`` or ``..``; no NUL; no
    ``:`` in the first, which could make it a URI scheme): exactly what
    `artifact_rel_path` gives then, as nothing is left to normalise. With a path column, the
    first component of a relative value (or of an absolute one under the root) that is a
    plain name: what follows cannot change it (normalising never touches what precedes a
    component, and a ``..`` anywhere is refused). A key starting with the trash's name is
    wanted by no candidate, and refused by `artifact_rel_path`: skipped either way.
    """

    def __init__(
        self, cfg: Config, root: Path, by_path: dict[bytes, list[Any]], cols: list[str]
    ) -> None:
        self.key_of: Callable[[tuple[Any, ...]], str | None] = _unknown
        self.wanted: set[str] = set()
        self.one: int | None = None  # a one-field template: that field's place in a row
        depth: int | None = None
        if cfg.path_column:
            self._root = os.path.abspath(root) + "/"
            self._at = cols.index(cfg.path_column)
            self.key_of, depth = self._column_key, 1
        elif cfg.path_template:
            depth = self._template(cfg.path_template, cols)
        if depth is None:
            self.key_of = _unknown
            return
        if depth == 1:  # (every path has a first component; os.fsdecode's decode, inline)
            firsts = {rel.split(b"/", 1)[0] for rel in by_path}
            self.wanted = {first.decode(FS_ENCODING, FS_ERRORS) for first in firsts}
        for rel in by_path if depth > 1 else ():
            parts = rel.split(b"/")
            if len(parts) < depth:
                self.key_of = _unknown  # a short candidate path could hold any run's
                return
            self.wanted.add(os.fsdecode(b"/".join(parts[:depth])))
        if self.key_of == self._field_key:
            self.one = self._one

    def _template(self, template: str, cols: list[str]) -> int | None:
        """Set up `key_of` for ``template``; its number of components, or None when its
        literal text is not made of plain names (``./{run_id}``, ``/abs/{run_id}``)."""
        comps = template.split("/")
        try:
            parsed = list(string.Formatter().parse(template))
            for comp in comps:
                if not any(f is not None for _, f, _, _ in string.Formatter().parse(comp)) and (
                    comp in _NOT_A_NAME or any(c in comp for c in "\0{}")
                ):
                    return None
        except ValueError:
            return None  # load_config refuses such a template; left to the full path
        if ":" in comps[0].split("{", 1)[0]:
            return None
        names = [f for _, f, _, _ in parsed if f is not None]
        if not names:
            return None  # one path for every run: the full path tells
        self._pos = [cols.index(n) for n in names]  # the fields' places in a row
        if template == "{" + names[0] + "}":
            self._one = self._pos[0]
            self.key_of = self._field_key
        else:
            # The template as a positional format ("exp/{0}/{1}"), its literal text escaped.
            self._fmt = "".join(
                lit.replace("{", "{{").replace("}", "}}") + (f"{{{i}}}" if f is not None else "")
                for i, (lit, f, _, _) in enumerate(parsed)
            ).format
            self._depth = len(comps)
            self.key_of = self._template_key
        return len(comps)

    def _field_key(self, row: tuple[Any, ...]) -> str | None:
        """`_template_key` for a template that is one field (``{run_id}``)."""
        v = row[self._one]
        if type(v) is not str:
            if v is None or isinstance(v, bytes | bool):
                return None
            v = format(v)
        return v if _plain(v) else None

    def _template_key(self, row: tuple[Any, ...]) -> str | None:
        values = []
        for p in self._pos:
            v = row[p]
            if v is None:
                return None  # refused by the full path: NULL in the template
            values.append(os.fsdecode(v) if isinstance(v, bytes) else v)
        path = self._fmt(*values)
        parts = path.split("/")
        if len(parts) != self._depth or "\0" in path or ":" in parts[0]:
            return None
        for part in parts:
            if part in _NOT_A_NAME:
                return None
        return path

    def _column_key(self, row: tuple[Any, ...]) -> str | None:
        value = row[self._at]
        if type(value) is not str or ":" in value or "\0" in value:
            return None
        if value.startswith("/"):
            if not value.startswith(self._root):
                return None
            value = value[len(self._root) :]
        comp = value.split("/", 1)[0]
        return None if comp in _NOT_A_NAME else comp


def _plain(name: str) -> bool:
    """A value that is a whole path component by itself, the first one at that."""
    return name not in _NOT_A_NAME and "/" not in name and ":" not in name and "\0" not in name


def _unknown(row: tuple[Any, ...]) -> None:
    return None


MOVE_HINT = (
    "apply moves a directory into trash with one rename, which cannot cross filesystems:"
    " unmount it, or move its contents onto the artifact root's filesystem, and plan again"
)
REMOVE_ALL_HINT = (
    "pass --allow-remove-all (or set policy.allow_remove_all = true) if that is really intended"
)


def device_refusal(m: Measure, parent_dev: int, trash_dev: int) -> str | None:
    """Why a measured directory cannot be renamed into trash, or None when it can.

    ``m.dev`` is the device of the directory itself (from `LocalStore.measure`), ``parent_dev``
    that of its parent directory, ``trash_dev`` that of ``.trash`` (or of the root before
    the first apply). A mount point has a device of its own. The criterion is
    `LocalTrashStore.same_filesystem`'s, which apply checks again; this one names the cause.
    """
    if not m.exists or m.dev is None:
        return None
    if m.dev != parent_dev:
        return "is a mount point (another filesystem than its parent directory)"
    if parent_dev != trash_dev:
        return "is on another filesystem than the trash (the artifact root's .trash)"
    return None


class _Devices:
    """The devices `device_refusal` compares, each looked up once by the store (read-only:
    ``lstat``)."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.trash = store.trash_device()

    def refusal(self, rel: bytes, m: Measure) -> str | None:
        try:
            dev = self.store.parent_device(rel)
        except OSError as exc:  # removed since measure: nothing to decide on
            return f"its parent directory cannot be read: {exc.strerror}"
        return device_refusal(m, dev, self.trash)


_ID_TYPES = frozenset((str, int))
_ID = attrgetter("id")


def _refuse_unusable_ids(cfg: Config, items: list[Item]) -> None:
    """Refuse run ids apply could not find again: a BLOB travels in the manifest as base64
    text and matches no row (skipped as "no longer in the catalog" forever); REAL and NULL
    ids are no better. Raises `CatalogError` (exit 4), naming the type and a way out."""
    if set(map(type, map(_ID, items))) <= _ID_TYPES:
        return  # (C loops: a million runs)
    bad = [
        it.id for it in items if type(it.id) not in _ID_TYPES and not isinstance(it.id, str | int)
    ]
    if not bad:
        return
    first: object = bad[0]
    if isinstance(first, bytes):
        kind = "a BLOB"
        shown = "x'" + first[:16].hex() + ("..." if len(first) > 16 else "") + "'"
    elif first is None:
        kind, shown = "NULL", "NULL"
    else:
        kind, shown = f"a {type(first).__name__.replace('float', 'REAL')}", repr(first)
    col = cfg.id_column if cfg.id_column.isidentifier() else q(cfg.id_column)
    runs = "1 run" if len(bad) == 1 else f"{len(bad):,} runs"
    raise CatalogError(
        f"{runs} of {cfg.runs_table!r} {'has' if len(bad) == 1 else 'have'} a run id that is"
        f" {kind} (first: {shown}); retention supports only TEXT and INTEGER run ids",
        hint=f"store those ids as TEXT, or leave those runs out with catalog.filter ="
        f" \"typeof({col}) IN ('text', 'integer')\""
        + (" (AND-ed with the current filter)" if cfg.filter else ""),
    )


def _refuse_remove_all(cfg: Config, cat: SqlCatalog, removing: int) -> None:
    """Refuse a plan that would leave the runs table empty. With ``catalog.filter`` set,
    removing every selected run is the normal case of a gc-like policy (the unselected runs
    stay), so the count is against the whole table. Raises `UsageError` (exit 2)."""
    total = cat.count_runs()
    if removing < total:
        return
    table = cfg.runs_table
    if cfg.filter:
        counted = f"all {removing:,} runs selected by catalog.filter (of {total:,} in {table!r})"
    else:
        counted = f"all {removing:,} runs in {table!r}"
    raise UsageError(f"refusing to remove every run: {counted}", hint=REMOVE_ALL_HINT)


def _refuse_missing_dirs(cfg: Config, cat: SqlCatalog, store: LocalStore, missing: int) -> None:
    """Refuse a plan whose ``missing`` candidates (all of them) have no directory, when no
    run of the catalog has one either while the artifact root holds directories: the path
    template (or column) names the wrong paths, and apply would delete the rows and orphan
    every real directory. Cheap: one ``scandir`` of the root, stopped at the first
    directory; then one ``lstat`` per run, stopped at the first that exists. Raises
    `UsageError` (exit 2)."""
    example = None
    with os.scandir(store.root) as it:
        for entry in it:
            if entry.name != TRASH_DIRNAME and entry.is_dir(follow_symlinks=False):
                example = entry.name
                break
    if example is None:
        return  # an empty root: runs without artifacts, not a wrong template
    root = store.root
    for row in cat.iter_path_rows():
        try:
            rel = artifact_rel_path(cfg, row, root)
        except (OutsideRoot, ValueError):
            continue
        if rel is not None and os.path.lexists(store.abspath(rel)):
            return  # the paths do name directories: these candidates simply have none
    setting = (
        f"artifacts.path_column {cfg.path_column!r}"
        if cfg.path_column
        else f"artifacts.path_template {cfg.path_template!r}"
    )
    whose = "candidate has" if missing == 1 else "candidates have"
    raise UsageError(
        f"refusing a plan whose {missing:,} {whose} no artifact directory while the artifact"
        f" root {root} holds directories that are no run's (e.g. {example!r}): check {setting}",
        hint="if these runs really have no directories, pass --allow-missing-dirs"
        " (or set artifacts.allow_missing_dirs = true)",
    )


def measure_sizes(
    cfg: Config,
    cat: SqlCatalog,
    store: LocalStore,
    items: list[Item],
    progress: Callable[[str, int], Progress] | None = None,
    *,
    device: int | None = None,
) -> tuple[list[Item], dict[Any, Measure]]:
    """Sizes for the budget when no ``policy.size_column`` names them: every considered
    run's directory measured on disk (read-only: ``lstat``/``scandir``), before the policy
    runs. Returns the items with ``Attrs.size`` set (None where the path is refused or the
    tree unreadable: counted as 0 and reported) and the measures, which the candidates'
    entries reuse instead of walking their trees twice. With ``device`` (the trash's), a
    directory on another device is not walked (`LocalStore.measure`): its size is unknown."""
    wanted = {it.id for it in items}
    root = store.root
    measures: dict[Any, Measure] = {}
    bar = (progress or (lambda label, total: Progress(label, total)))("sizing", len(wanted))
    for row in cat.iter_path_rows():
        run_id = row[cfg.id_column]
        if run_id not in wanted:
            continue
        bar.advance()
        try:
            rel = artifact_rel_path(cfg, row, root)
            if rel is not None:
                store.check_contained(rel)
        except (OutsideRoot, ValueError):
            continue
        if rel is not None:
            measures[run_id] = store.measure(rel, device=device)
    bar.close()
    sized = []
    for it in items:
        m = measures.get(it.id)
        size: int | None = 0 if m is None or not m.exists else m.bytes
        if m is not None and m.error:
            size = None
        sized.append(
            msgspec.structs.replace(it, attrs=dataclasses.replace(it.attrs or Attrs(), size=size))
        )
    return sized, measures


def _cycle_error(cfg: Config, exc: DependencyCycle) -> CatalogError:
    """A dependency cycle is the catalog's to fix: exit 4, naming the runs."""
    runs = [str(r) for r in exc.runs]
    shown = runs if len(runs) <= 8 else [*runs[:7], "..."]
    chain = " -> ".join([*shown, runs[0]])
    one = "a run that depends on itself" if len(runs) == 1 else f"{len(runs)} runs that depend"
    return CatalogError(
        f"{one}{' on each other' if len(runs) > 1 else ''} through policy.parent_column"
        f" {cfg.parent_column!r}: {chain}",
        hint="a run cannot depend on itself, even through others: fix the parent column of"
        " one of them (a cycle has no oldest run to keep first)",
    )


def build_plan(
    cfg: Config,
    now: datetime,
    *,
    allow_remove_all: bool = False,
    allow_missing_dirs: bool = False,
    progress: Callable[[str, int], Progress] | None = None,
    erase: tuple[str, str] | None = None,
) -> PlanResult:
    """Evaluate the policy at ``now`` and return the signed manifest (read-only, see module).

    Candidates whose artifact directory cannot be read, lies outside the artifact root, or
    cannot be renamed into trash (a mount point, another filesystem), are left out of the
    manifest and listed in ``skipped``. ``allow_remove_all`` and ``allow_missing_dirs`` add
    to the configuration's settings of the same names (see the module for the guards).
    """
    with without_cyclic_gc():
        return _build_plan(cfg, now, allow_remove_all, allow_missing_dirs, progress, erase)


def _build_plan(
    cfg: Config,
    now: datetime,
    allow_remove_all: bool,
    allow_missing_dirs: bool,
    progress: Callable[[str, int], Progress] | None,
    erase: tuple[str, str] | None,
) -> PlanResult:
    spec = erasure_spec(cfg, erase) if erase is not None else policy_from_config(cfg)
    allow_remove_all = allow_remove_all or cfg.allow_remove_all
    allow_missing_dirs = allow_missing_dirs or cfg.allow_missing_dirs
    state = StateLayout(Path(cfg.state_dir))
    root = Path(cfg.artifact_root)
    store = LocalStore(root)
    with open_catalog(cfg) as cat, contextlib.ExitStack() as finally_:
        require_artifact_root(cfg)
        spec = policy_with_rows(cat, cfg, spec)
        odd = _prefetch_odd(cfg, cat)  # on another core, while the runs are read
        if odd is not None:
            finally_.callback(odd.wait)  # a plan refused on the way leaves no thread behind
        items = read_items(cat, cfg, spec)
        _refuse_unusable_ids(cfg, items)
        # Directories are walked on the trash's filesystem only: a candidate that is a mount
        # point is refused below (apply moves with one rename), so its whole mounted
        # filesystem is never walked.
        devices = _Devices(store)
        measured: dict[Any, Measure] = {}
        if _has_budget(spec) and not cfg.size_column:
            items, measured = measure_sizes(cfg, cat, store, items, progress, device=devices.trash)
        try:
            decision = evaluate(items, spec, now, policy_zone(spec), kept=spec.erase is not None)
        except DependencyCycle as exc:
            raise _cycle_error(cfg, exc) from None
        del items
        if spec.erase is not None:
            _refuse_empty_erasure(cfg, spec.erase, decision)
        if decision.remove and not allow_remove_all:
            _refuse_remove_all(cfg, cat, len(decision.remove))
            _refuse_group_removed(spec, decision.groups)
        # What the summary needs of the kept runs, counted now: their verdicts (most of a
        # million runs) are dropped before the candidates' entries and the manifest are
        # built, so the two never take memory at the same time.
        kept_runs = len(decision.keep) + decision.unlisted  # (unlisted: all dated)
        no_time = sum(1 for v in decision.keep if v.item.at is None)
        held = 0
        if spec.erase is not None:
            held = sum(1 for v in decision.keep if v.item.attrs and v.item.attrs.erase)
        remove, budget, groups = decision.remove, decision.budget, decision.groups
        del decision
        # Only once the catalog is known to be usable and the policy acceptable: a plan
        # refused for either must not leave a new state directory and key behind.
        key, key_id = load_key(state, create=True)
        catalog_id = identity.resolve(cat, state, create=True)
        assert catalog_id is not None
        found = missing = 0  # candidates whose directory exists / is absent
        verdicts: dict[Any, Verdict] = {v.item.id: v for v in remove}
        entries: list[Entry] = []
        order: list[tuple[int, str]] = []  # each entry's sort key, in step with entries
        skipped: list[SkippedEntry] = []
        paths: list[tuple[Any, bytes | None]] = []
        placed: set[Any] = set()
        cols = cat.path_columns()
        rows: Iterable[tuple[Any, ...]]
        if cols == [cfg.id_column] and all(type(k) is str for k in verdicts):
            # A path made of the id alone (``{run_id}``): the candidates' paths need nothing
            # from the catalog, so the workers start measuring before the ids are loaded.
            # In the order the catalog gives text ids (UTF-8 bytes: code points).
            rows, loaded = ((k,) for k in sorted(verdicts)), False
        else:
            cat.load_ids(verdicts)
            cols, rows = cat.loaded_path_tuples()
            loaded = True
        rel_of = candidate_rel_path(cfg, cols, root)
        for row in rows:
            run_id = row[0]
            if run_id not in verdicts or run_id in placed:
                # another row the catalog finds by a candidate's id ("a" for "A" under a
                # NOCASE column, or the id repeated): the candidate is skipped below
                continue
            placed.add(run_id)
            try:
                rel = rel_of(row)
                if rel is not None:
                    store.check_contained(rel)
            except (OutsideRoot, ValueError) as exc:
                skipped.append(SkippedEntry(run_id, f"artifact path refused: {exc}"))
                continue
            paths.append((run_id, rel))
        # The directories are measured in forked workers while this process reads the
        # catalog (in a thread, the two took turns on the GIL and cost their sum): one
        # worker per core but this process's (at most four), which has the catalog's work
        # to do (on two cores, a second worker made three processes share them: plan
        # 0.3-0.4 s slower at a million runs), and which measures the last directories
        # itself once it would otherwise wait for the workers (``steal``: large trees keep
        # every core walking).
        jobs = [(k, rel) for k, (rid, rel) in enumerate(paths) if rel and rid not in measured]
        if odd is not None and jobs:
            odd.wait()  # (done long since, at scale): no thread may run while forking
        with ForkedMeasurer(
            OnDevice(store, devices.trash), jobs, workers=default_workers(reserve=1), steal=True
        ) as measurer:
            if not loaded:
                cat.load_ids(verdicts)
            fps = cat.fingerprints()
            blocked = cat.blocked_runs()
            ambiguous = cat.ambiguous_ids()
            shared = _overlapping(cfg, cat, root, paths, odd)
            bar = (progress or (lambda label, total: Progress(label, total)))(
                "measuring", len(verdicts)
            )
            for k, (run_id, rel) in enumerate(paths):
                v = verdicts[run_id]
                bar.advance()
                if run_id in shared:
                    skipped.append(SkippedEntry(run_id, shared[run_id], hint=OVERLAP_HINT))
                    continue
                if run_id in blocked:
                    skipped.append(SkippedEntry(run_id, blocked[run_id], hint=BLOCKED_HINT))
                    continue
                if run_id in ambiguous:
                    skipped.append(SkippedEntry(run_id, ambiguous[run_id], hint=AMBIGUOUS_HINT))
                    continue
                if run_id not in fps:  # deleted by someone else since it was read
                    skipped.append(SkippedEntry(run_id, "no longer in the catalog"))
                    continue
                m = None
                if rel is not None:
                    m = measured.pop(run_id, None) or measurer.take(k, rel)
                if m is not None:
                    found += m.exists
                    missing += not m.exists and not m.error
                if rel is not None and m is not None and m.exists:
                    # Before the error: a mount point's measure is "not walked".
                    why = devices.refusal(rel, m)
                    if why is not None:
                        reason = f"artifact directory {display(rel)} {why}"
                        skipped.append(SkippedEntry(run_id, reason, hint=MOVE_HINT))
                        continue
                if m is not None and m.error:
                    path = display(store.abspath(rel)) if rel is not None else ""
                    skipped.append(
                        SkippedEntry(
                            run_id,
                            f"artifact directory unreadable: {m.error}",
                            hint=f"fix its permissions (e.g. chmod -R u+rwX {path}) and plan again",
                        )
                    )
                    continue
                text, raw = text_and_raw(rel) if rel is not None else (None, None)
                at = v.item.at
                order.append((_instant_key(at), str(run_id)))
                entries.append(
                    Entry(
                        run_id=run_id,
                        time=format_instant_us(at) if at is not None else None,
                        path=text,
                        path_raw=raw,
                        exists=bool(m and m.exists),
                        bytes=m.bytes if m else 0,
                        files=m.files if m else 0,
                        rows_fp=fps[run_id],
                        dir_fp=m.fingerprint if m else "",
                        reason=v.reasons[0],
                    )
                )
            bar.close()
        if missing and not found and not allow_missing_dirs:
            _refuse_missing_dirs(cfg, cat, store, missing)
        tables = cat.schema.involved_tables()
    # By instant, not by text: "…00.5Z" sorts before "…00Z" as a string.
    by_key = sorted(range(len(entries)), key=order.__getitem__)
    entries = [entries[k] for k in by_key]
    del order, by_key
    payload = Payload(
        format=FORMAT,
        version=VERSION,
        manifest_id="",
        catalog_id=catalog_id,
        catalog_path=cat.describe(),
        artifact_root=str(store.root),
        tables=tables,
        policy=spec,
        policy_digest=policy_digest(spec, cfg.filter),
        policy_text=spec.describe(),
        filter=cfg.filter,
        now=format_instant(now),
        expires_at=format_instant(now + timedelta(seconds=cfg.manifest_ttl_seconds)),
        key_id=key_id,
        considered=kept_runs + len(remove),
        kept=kept_runs + len(skipped),
        total_bytes=sum(e.bytes for e in entries),
        entries=entries,
    )
    signed = sign_with_id(payload, key)
    warnings = journal_warnings(state)
    short = budget.shortfall() if budget is not None else None
    if short:
        warnings.append(short)
    warnings += _group_warnings(spec, groups)
    if spec.erase is not None and held:
        warnings.append(
            f"erasure request: {plural(held, 'run')} with {spec.erase[0]} ="
            f" {spec.erase[1]!r} protected by catalog.protect stay (change catalog.protect"
            " to erase them)"
        )
    return PlanResult(
        payload,
        signed,
        skipped,
        no_time,
        warnings,
        budget,
        groups=list(groups),
    )


def _instant_key(at: int | None) -> int:
    """An entry's place in the manifest: the instant its ``time`` text
    (`format_instant_us`) names, in microseconds since the epoch (`Item.at`), so by
    instant, as `parse_instant` reads the text back; `_NO_TIME` (before any) for none.
    Refuses (`UsageError`) an instant outside the years `parse_instant` reads (every
    catalog reader reads such a time as none: a guard for items made elsewhere)."""
    if at is None:
        return _NO_TIME
    if not FIRST_US <= at <= LAST_US:
        raise UsageError(
            f"invalid time: {at} microseconds since 1970 is outside the years 1100 to 8000"
        )
    return at


def erasure_spec(cfg: Config, erase: tuple[str, str]) -> PolicySpec:
    """The policy of an erasure request (``plan --erase COLUMN=VALUE``): the rules, pins,
    floors, states and budget of the configuration do not apply; dependencies do (the
    dependants of an erased run go with it)."""
    return PolicySpec(erase=erase, dependencies=True if cfg.parent_column else None)


def _refuse_empty_erasure(cfg: Config, erase: tuple[str, str], decision: Decision) -> None:
    """An erasure request that names no run is refused (a typo must not pass for done);
    one whose runs are all protected too. Raises `UsageError` (exit 2)."""
    column, value = erase
    named = [v for v in (*decision.keep, *decision.remove) if v.item.attrs and v.item.attrs.erase]
    if not named:
        where = " selected by catalog.filter" if cfg.filter else ""
        raise UsageError(
            f"erasure request: no run{where} of {cfg.runs_table!r} has {column} = {value!r}",
            hint="check the column and the value (compared as text)"
            + ("; runs outside catalog.filter are never touched" if cfg.filter else ""),
        )
    if not decision.remove:
        raise UsageError(
            f"erasure request: every run with {column} = {value!r}"
            f" ({plural(len(named), 'run')}) is protected by catalog.protect",
            hint="change catalog.protect to let them go, then plan again",
        )


def _has_budget(spec: PolicySpec) -> bool:
    tiers = (spec.tiers or {}).values()
    return spec.max_total_bytes is not None or any(t.max_total_bytes is not None for t in tiers)


def _refuse_group_removed(spec: PolicySpec, groups: tuple[GroupSummary, ...]) -> None:
    """Refuse a plan that removes every run of a group (a tenant, an organisation) unless
    allowed: a floor (min_keep) is the usual way to keep some. Raises `UsageError`."""
    emptied = [g for g in groups if g.considered and g.removed == g.considered]
    if not emptied:
        return
    first = emptied[0].label(spec.group_by)
    more = f" and {plural(len(emptied) - 1, 'other group')}" if len(emptied) > 1 else ""
    raise UsageError(
        f"refusing to remove every run of group {first} ({plural(emptied[0].removed, 'run')})"
        f"{more}",
        hint="set a floor (--min-keep N, policy.min_keep or the tier's min_keep), or "
        + REMOVE_ALL_HINT,
    )


def _group_warnings(spec: PolicySpec, groups: tuple[GroupSummary, ...]) -> list[str]:
    """Groups kept whole because their tier has no policy; budgets not met, per group."""
    out = []
    unruled = [g for g in groups if g.spec is None]
    if spec.tier_rows is not None:
        off = set(spec.disabled or ())
        missing = [g for g in unruled if g.tier not in off]
        if missing:
            runs = sum(g.considered for g in missing)
            names = sorted(str(g.tier) for g in missing)
            out.append(
                f"{plural(runs, 'run')} of {plural(len(missing), 'group')} kept whole: no policy"
                f" row in {spec.tier_rows} ({', '.join(names[:5])}"
                f"{', ...' if len(names) > 5 else ''})"
            )
        unruled = []
    if unruled:
        runs = sum(g.considered for g in unruled)
        tiers = sorted({repr(g.tier) if g.tier is not None else "none" for g in unruled})
        out.append(
            f"{plural(runs, 'run')} of {plural(len(unruled), 'group')} kept whole: their tier"
            f" ({', '.join(tiers[:5])}{', ...' if len(tiers) > 5 else ''}) has no"
            " [policy.tiers.NAME] table"
        )
    for g in groups:
        short = g.budget.shortfall() if g.budget is not None else None
        if short:
            out.append(f"group {g.label(spec.group_by)}: {short}")
    return out
