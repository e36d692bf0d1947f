"""What commands print: human lines for stderr/stdout and report structs for JSON."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from journal import fsio
from retention.catalog import Hop, SqlCatalog
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import format_bytes, format_duration, human_instant, parse_instant, plural
from retention.errors import StorageError
from retention.layout import StateLayout
from retention.manifest import Payload, read_manifest_bytes, verify_for_workspace
from retention.reports import SkippedEntry

if TYPE_CHECKING:  # imported on use: apply, undo and purge print without the planner
    from retention.explain import Explanation, KeptReport
    from retention.planner import PlanResult

SHOW_VERSION = 1


def write_output(path: Path, data: bytes) -> None:
    """Write a file durably and atomically (``-o``); a failure is one clear error."""
    try:
        fsio.write_atomic(path, data, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def plan_summary(
    result: PlanResult, target: str | None = None, clock: datetime | None = None
) -> list[str]:
    """Human summary of a plan; ``clock`` is the real time, to warn about a ``--now`` far
    from it."""
    p = result.payload
    lines = []
    if clock is not None:
        if parse_instant(p.expires_at) <= clock:
            lines.append(
                f"Warning: this manifest expired at {human_instant(p.expires_at)} (--now is"
                " in the past): apply will refuse it."
            )
        elif (parse_instant(p.now) - clock).total_seconds() > 3600:
            lines.append(
                "Warning: --now is in the future: the policy treats runs as older than they"
                " are, and runs young today may be deleted."
            )
    lines += [f"Warning: {w}" for w in result.warnings]
    lines += p.policy_text.splitlines()
    n = len(p.entries)
    lines.append(
        f"{n} of {plural(p.considered, 'run')} would be deleted, {format_bytes(p.total_bytes)}"
        f" reclaimed (manifest {p.manifest_id}, valid until {human_instant(p.expires_at)})."
    )
    if n:
        dated = [e.time for e in p.entries if e.time]
        if dated:
            # By instant: "…00.5Z" < "…00Z" as text. (Each is a manifest's `Instant`, which
            # `Entry` checked `fromisoformat` reads: no need of `parse_instant`'s checks.)
            at = list(map(datetime.fromisoformat, dated))
            oldest = dated[min(range(len(at)), key=at.__getitem__)]
            newest = dated[max(range(len(at)), key=at.__getitem__)]
            lines.append(
                f"Oldest candidate {human_instant(oldest)}, newest {human_instant(newest)}."
            )
        missing = sum(1 for e in p.entries if e.path is not None and not e.exists)
        if missing:
            lines.append(
                f"{plural(missing, 'candidate')} without an artifact directory on disk"
                " (their rows are deleted all the same)."
            )
    lines += group_lines(result)
    if result.no_time:
        lines.append(
            f"{plural(result.no_time, 'run')} kept because no timestamp could be read"
            " (catalog.time_columns, catalog.time_format)."
        )
    lines += _skipped_lines(result.skipped)
    if n:
        name = target or "<manifest>"
        lines.append(f"Next: retention show {name}, then retention apply {name}")
    return lines


def group_lines(result: PlanResult, limit: int = 20) -> list[str]:
    """Per group of a grouped policy: removed of considered, the largest removals first."""
    groups = result.groups
    if not groups:
        return []
    names = result.payload.policy.group_by
    out = [f"By group ({plural(len(groups), 'group')}):"]
    ranked = sorted(groups, key=lambda g: (-g.removed, g.label(names)))
    for g in ranked[:limit]:
        tail = "" if g.note is None else f" ({g.note.removeprefix('kept: ')}: all kept)"
        out.append(
            f"  {g.label(names)}: {g.removed} of {plural(g.considered, 'run')} removed{tail}"
        )
    if len(ranked) > limit:
        rest = ranked[limit:]
        out.append(
            f"  ... and {plural(len(rest), 'more group')}:"
            f" {sum(g.removed for g in rest)} of {plural(sum(g.considered for g in rest), 'run')}"
            " removed"
        )
    return out


def _skipped_lines(skipped: list[SkippedEntry]) -> list[str]:
    """One line per skipped entry, or one per reason when there are many."""
    if len(skipped) <= 10:
        out = []
        for sk in skipped:
            out.append(f"Skipped {sk.run_id}: {sk.reason}")
            if sk.hint:
                out.append(f"  Hint: {sk.hint}")
        return out
    by: dict[str, list[SkippedEntry]] = defaultdict(list)
    for sk in skipped:
        by[sk.reason].append(sk)
    out = []
    for reason, group in sorted(by.items(), key=lambda kv: -len(kv[1])):
        ids = [str(sk.run_id) for sk in group]
        sample = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        out.append(f"Skipped {plural(len(ids), 'run')} ({sample}): {reason}")
        if group[0].hint:
            out.append(f"  Hint: {group[0].hint}")
    return out


class HopInfo(msgspec.Struct):
    """One step from a table towards the runs table: ``table.columns`` references
    ``parent.parent_columns``."""

    table: str
    columns: list[str]
    parent: str
    parent_columns: list[str]
    found: str  # "foreign key", "child_tables", or "foreign key, child_tables"
    on_delete: str | None  # the declared foreign key's ON DELETE action, if declared


class TableInfo(msgspec.Struct):
    """A table a plan touches, what it does to its rows, how it was found, and its rows."""

    table: str
    depth: int  # 0: the runs table; 1: references it; 2: references a depth-1 table...
    found: str  # "runs table", "foreign key", "child_tables", "foreign key, child_tables"
    rows: int  # rows of the runs counted (see TablesReport.rows_of) that the action concerns
    total_rows: int  # rows in the table
    paths: list[list[HopInfo]]  # every chain of hops from this table up to the runs table
    # "delete": the rows go with their run; "set null" / "set default": they stay and the
    # referencing column is set (undo puts it back); "blocks": a run that a row which stays
    # references is left out of the plan (RESTRICT, or NO ACTION with catalog.no_action).
    action: str = "delete"


class NotIncluded(msgspec.Struct):
    """A column named like a run id in a table that no plan touches."""

    table: str
    column: str


class TablesReport(msgspec.Struct):
    """Every table a plan touches (the runs table first, then by depth), for `show` and
    `config --check`, so that a table missing from ``catalog.child_tables`` is noticed."""

    rows_of: str  # which runs the ``rows`` counts are for
    runs: int  # how many runs that is
    tables: list[TableInfo]
    not_included: list[NotIncluded]


def _found(hop: Hop, cfg: Config, declared: dict[Hop, str]) -> str:
    named = any(
        hop
        == Hop(
            ct.table,
            (ct.column,),
            ct.parent_table or cfg.runs_table,
            (ct.parent_column or cfg.id_column,),
        )
        for ct in cfg.child_tables
    )
    how = ["foreign key"] if hop in declared else []
    return ", ".join([*how, "child_tables"] if named else how) or "foreign key"


def tables_report(cat: SqlCatalog, rows_of: str, runs: int) -> TablesReport:
    """The tables a plan touches, with the rows of the runs loaded in ``cat`` (read-only):
    the runs table, the tables whose rows go with their run, then the tables a reference
    from which is set (SET NULL, SET DEFAULT) or keeps the run (blocks)."""
    cfg = cat.cfg
    declared: dict[Hop, str] = {}
    seen: set[str] = set()

    def info(hop: Hop) -> HopInfo:
        if hop.child not in seen:
            seen.add(hop.child)
            declared.update(cat.declared_keys(hop.child))
        found = _found(hop, cfg, declared)
        return HopInfo(
            hop.child,
            list(hop.child_cols),
            hop.parent,
            list(hop.parent_cols),
            found,
            declared.get(hop),
        )

    counts = cat.rows_of_loaded()
    tables = [
        TableInfo(
            table=cfg.runs_table,
            depth=0,
            found="runs table",
            rows=counts[cfg.runs_table],
            total_rows=cat.total_rows(cfg.runs_table),
            paths=[],
        )
    ]
    owned = {inv.table: inv for inv in cat.schema.children}
    for inv in cat.schema.children:
        paths = [[info(hop) for hop in path] for path in inv.paths]
        how = {h.found for p in paths for h in p}
        tables.append(
            TableInfo(
                table=inv.table,
                depth=inv.depth,
                found=how.pop() if len(how) == 1 else "foreign key, child_tables",
                rows=counts[inv.table],
                total_rows=cat.total_rows(inv.table),
                paths=paths,
            )
        )
    for action, hops in (("", cat.schema.setters), ("blocks", cat.schema.blockers)):
        for hop in hops:
            up = [()] if hop.parent == cfg.runs_table else owned[hop.parent].paths
            tables.append(
                TableInfo(
                    table=hop.child,
                    depth=1 if hop.parent == cfg.runs_table else owned[hop.parent].depth + 1,
                    found="foreign key",
                    rows=cat.rows_referencing(hop),
                    total_rows=cat.total_rows(hop.child),
                    paths=[[info(hop), *(info(h) for h in path)] for path in up],
                    action=action or hop.action.lower(),
                )
            )
    tables[1:] = sorted(tables[1:], key=lambda t: (t.depth, t.table, t.action))
    listed = {t.table for t in tables}
    unlisted = [NotIncluded(t, c) for t, c in cat.run_like_columns() if t not in listed]
    return TablesReport(rows_of=rows_of, runs=runs, tables=tables, not_included=unlisted)


def config_tables_report(cfg: Config) -> TablesReport:
    """`config --check`: open the catalog read-only (which validates the configuration
    against it: tables, columns, filter, protect, child_tables) and list the tables a plan
    would touch, with the rows of the runs ``catalog.filter`` selects. Read-only."""
    with open_catalog(cfg) as cat:
        ids = [item.id for item in cat.iter_items()]
        cat.load_ids(ids)
        if cfg.filter:
            rows_of = f"the {plural(len(ids), 'run')} selected by catalog.filter"
        else:
            rows_of = f"all {plural(len(ids), 'run')}"
        return tables_report(cat, rows_of, len(ids))


def _hop_text(h: HopInfo) -> str:
    cols = ", ".join(h.columns)
    pcols = ", ".join(h.parent_columns)
    action = f", ON DELETE {h.on_delete}" if h.on_delete not in (None, "NO ACTION") else ""
    return f"{h.table}.{cols} -> {h.parent}.{pcols} ({h.found}{action})"


ACTION_TEXT = {
    "set null": ": the rows stay, the column is set to NULL",
    "set default": ": the rows stay, the column is set to its default",
    "blocks": ": a run that such a row references is left out of the plan",
}


def tables_lines(r: TablesReport) -> list[str]:
    """Human lines for a `TablesReport`: one line per table, indented by its depth, with its
    rows and the reference that ties it to its parent (one line per distinct reference; the
    parent's own lines say how it reaches the runs table), and what the plan does to rows
    that it does not delete."""
    names = [("  " * t.depth) + t.table for t in r.tables]
    width = max(len(n) for n in names)
    rw = max(len(str(t.rows)) for t in r.tables)
    tw = max(len(str(t.total_rows)) for t in r.tables)
    lines = [
        f"Tables a plan touches ({len(r.tables)}), with the rows of {r.rows_of}"
        " / all rows in the table:"
    ]
    for name, t in zip(names, r.tables, strict=True):
        hops = list(dict.fromkeys(_hop_text(p[0]) for p in t.paths)) or ["the runs table"]
        hops[-1] += ACTION_TEXT.get(t.action, "")
        lead = f"  {name:<{width}}  {t.rows:>{rw}} / {t.total_rows:>{tw}}  "
        lines.append(lead + hops[0])
        lines += [" " * len(lead) + h for h in hops[1:]]
    if r.not_included:
        cols = ", ".join(f"{n.table}.{n.column}" for n in r.not_included)
        lines.append(f"Not touched, though named like a run id: {cols}.")
        lines.append(
            "  Hint: if those rows belong to a run, name their table in catalog.child_tables"
            " (for a table that references another child table, with parent_table)"
        )
    return lines


@dataclass
class Verified:
    """A verified manifest and where it stands against the catalog today."""

    payload: Payload
    applied_by: list[str]  # applies that already committed this manifest
    gone: int  # entries whose run is no longer in the catalog
    tables: TablesReport  # the rows its runs have today in every table a plan touches


def load_verified(cfg: Config, manifest_path: str, now: datetime) -> Verified:
    """Read a manifest and verify signature, expiry and catalog identity (read-only)."""
    data = read_manifest_bytes(manifest_path, cfg.manifest_max_size)
    with open_catalog(cfg) as cat:
        payload = verify_for_workspace(data, StateLayout(Path(cfg.state_dir)), cat, now=now)
        cat.load_ids(e.run_id for e in payload.entries)
        # Counted entry by entry, as apply's preflight skips them: a run id a (signed,
        # hand-made) manifest repeats is not one existing run less.
        existing = cat.existing_ids()
        gone = sum(1 for e in payload.entries if e.run_id not in existing)
        n = len(payload.entries)
        tables = tables_report(cat, f"this manifest's {plural(n, 'run')}", n)
        return Verified(payload, cat.applied_by_manifest(payload.manifest_id), gone, tables)


class Group(msgspec.Struct):
    reason: str
    count: int
    bytes: int


class DirGroup(msgspec.Struct):
    """Entries grouped by the top-level directory of their artifact path."""

    directory: str
    count: int
    bytes: int


class Largest(msgspec.Struct):
    run_id: str | int
    path: str | None
    bytes: int


class ShowReport(msgspec.Struct, omit_defaults=True):
    version: int
    already_applied_by: list[str]
    no_longer_in_catalog: int
    manifest_id: str
    catalog_id: str
    policy: str
    now: str
    expires_at: str
    count: int
    total_bytes: int
    missing_dirs: int
    run_ids: list[str | int]
    by_reason: list[Group]
    by_directory: list[DirGroup]
    largest: list[Largest]
    tables: TablesReport
    kept: KeptReport | None = None  # show --kept only (left out of the JSON otherwise)


def show_report(v: Verified, top: int, kept: KeptReport | None = None) -> ShowReport:
    p = v.payload
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in p.entries:
        g = groups[e.reason]
        g[0] += 1
        g[1] += e.bytes
    dirs: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in p.entries:
        if e.path is not None and "/" in e.path:
            d = dirs[e.path.split("/", 1)[0]]
            d[0] += 1
            d[1] += e.bytes
    largest = sorted(p.entries, key=lambda e: (-e.bytes, str(e.run_id)))[: max(top, 0)]
    return ShowReport(
        version=SHOW_VERSION,
        already_applied_by=v.applied_by,
        no_longer_in_catalog=v.gone,
        manifest_id=p.manifest_id,
        catalog_id=p.catalog_id,
        policy=p.policy_text,
        now=p.now,
        expires_at=p.expires_at,
        count=len(p.entries),
        total_bytes=p.total_bytes,
        missing_dirs=sum(1 for e in p.entries if e.path is not None and not e.exists),
        run_ids=[e.run_id for e in p.entries],
        by_reason=[Group(r, c, b) for r, (c, b) in sorted(groups.items())],
        by_directory=[DirGroup(d, c, b) for d, (c, b) in sorted(dirs.items())],
        largest=[Largest(e.run_id, e.path, e.bytes) for e in largest],
        tables=v.tables,
        kept=kept,
    )


def show_lines(v: Verified, top: int, name: str, kept: KeptReport | None = None) -> list[str]:
    r = show_report(v, top)
    lines = [
        f"Manifest {r.manifest_id} (catalog {r.catalog_id}), planned at {r.now},"
        f" valid until {r.expires_at}: signature OK.",
        *r.policy.splitlines(),
        f"{r.count} runs, {format_bytes(r.total_bytes)}"
        + (f"; {r.missing_dirs} without a directory on disk" if r.missing_dirs else ""),
        "",
        "By reason:",
    ]
    for g in r.by_reason:
        lines.append(f"  {g.count:>7}  {format_bytes(g.bytes):>10}  {g.reason}")
    if kept is not None:
        lines += ["", *kept_lines(kept, top)]
    if r.by_directory:
        lines += ["", "By top-level directory:"]
        for d in r.by_directory:
            lines.append(f"  {d.count:>7}  {format_bytes(d.bytes):>10}  {d.directory}/")
    if r.largest:
        lines += ["", f"Largest {len(r.largest)}:"]
        for e in r.largest:
            where = "" if e.path == str(e.run_id) else f"  {e.path or '(no artifacts)'}"
            lines.append(f"  {format_bytes(e.bytes):>10}  {e.run_id}{where}")
    lines += ["", *tables_lines(r.tables), ""]
    if r.already_applied_by:
        lines.append(
            f"Already applied by {', '.join(r.already_applied_by)}: apply would do nothing."
        )
    elif not r.count:
        lines.append("Nothing to delete.")
    else:
        if r.no_longer_in_catalog:
            lines.append(
                f"{plural(r.no_longer_in_catalog, 'entry', 'entries')} no longer in the catalog:"
                " apply would skip them."
            )
        lines.append(f"Apply with: retention apply {name}")
    return lines


def apply_lines(r: object) -> list[str]:
    rep: Any = r
    lines = [f"Recovered {x.txid} ({x.op}): {x.action}." for x in rep.recovered]
    if rep.already_applied_by:
        lines.append(
            f"Manifest {rep.manifest_id} was already applied by"
            f" {', '.join(rep.already_applied_by)}; nothing to do."
        )
        return lines
    if rep.txid is None:
        lines.append(
            "Nothing to apply: the manifest is empty."
            if not rep.skipped
            else "Nothing was deleted: no entry of the manifest can be deleted now (nothing"
            " committed, nothing to undo)."
        )
    else:
        skipped = f", {len(rep.skipped)} skipped" if rep.skipped else ""
        lines.append(
            f"Applied {rep.manifest_id} as {rep.txid}: {plural(rep.deleted_runs, 'run')}"
            f" deleted{skipped}, {format_bytes(rep.bytes_moved)} moved to trash"
            f" in {format_duration(rep.duration_ms / 1000)}."
        )
        batches = getattr(rep, "batches", [])
        if batches:
            lines.append(
                f"In {plural(len(batches), 'batch', 'batches')}, each its own transaction"
                f" ({', '.join(f'{b.runs:,}' for b in batches[:8])}"
                f"{', ...' if len(batches) > 8 else ''} runs); undo of {rep.txid} restores"
                " them all."
            )
        groups = getattr(rep, "groups", [])
        if groups:
            shown = ", ".join(
                f"{g.value} {g.runs:,} ({format_bytes(g.bytes)})" for g in groups[:10]
            )
            more = f", and {len(groups) - 10:,} more groups" if len(groups) > 10 else ""
            lines.append(f"By {groups[0].column}: {shown}{more}.")
        if getattr(rep, "erasure", False):
            gone = "purged at once" if rep.txid in rep.purged else "to be purged"
            lines.append(
                f"Erasure request: the erased runs' directories are {gone}; no grace period,"
                " no undo."
            )
        else:
            until = f" (until {human_instant(rep.undo_until)})" if rep.undo_until else ""
            lines.append(f"Undo with: retention undo {rep.txid}{until}")
    lines += _skipped_lines(rep.skipped)
    earlier = [t for t in rep.purged if t != rep.txid]
    if earlier:
        n = plural(len(earlier), "earlier apply", "earlier applies")
        lines.append(f"Purged the expired trash of {n}.")
    for w in rep.warnings:
        lines.append(f"Warning: {w}")
    return lines


def recover_lines(recovered: list[Any]) -> list[str]:
    if not recovered:
        return ["Nothing to recover."]
    out = []
    for x in recovered:
        moved = f": {plural(x.moved, 'directory', 'directories')} moved" if x.moved else ""
        out.append(f"{x.txid} ({x.op}) {x.action}{moved}.")
    return out


def purge_lines(rep: Any) -> list[str]:
    lines = [f"Recovered {x.txid} ({x.op}): {x.action}." for x in rep.recovered]
    if not rep.purged:
        lines.append("Nothing to purge.")
    else:
        lines.append(
            f"Purged the trash of {plural(len(rep.purged), 'apply', 'applies')}:"
            f" {plural(rep.runs, 'run')}, {format_bytes(rep.bytes)} freed; these can no"
            " longer be undone."
        )
    return lines + _purge_catalog_lines(rep)


def _purge_catalog_lines(rep: Any) -> list[str]:
    """The catalog file before and after the purge (and --vacuum), and its free pages."""
    from retention.status import file_size_text, free_pages_text, vacuum_hint, worth_vacuuming

    before, after, vac = rep.catalog_before, rep.catalog_after, rep.vacuum
    if before is None or after is None:
        return []
    sizes = f"Catalog: {file_size_text(before)} before the purge, {file_size_text(after)}"
    if vac is not None and vac.error:
        out = [
            f"{sizes} after it.",
            f"Warning: the catalog was not vacuumed (the purge itself is done): {vac.error}",
        ]
        return out + ([f"  Hint: {vac.hint}"] if vac.hint else [])
    if vac is not None and vac.how != "nothing to reclaim":
        what = "VACUUM" if vac.how == "vacuum" else "PRAGMA incremental_vacuum"
        left = f"; {free_pages_text(after)} left" if after.free_pages else ""
        return [f"{sizes} after it and a {what}{left}."]
    if not after.free_pages:
        return [f"{sizes} after it; no free pages" + (": nothing to vacuum." if vac else ".")]
    line = f"{sizes} after it, {free_pages_text(after)}: SQLite reuses them for new rows."
    return [line, f"  Hint: {vacuum_hint(after)}"] if worth_vacuuming(after) else [line]


def undo_lines(rep: Any) -> list[str]:
    lines = [f"Recovered {x.txid} ({x.op}): {x.action}." for x in rep.recovered]
    if not rep.undone:
        lines.append("Nothing to undo.")
    for u in rep.undone:
        if u.error:
            lines.append(f"Error: could not undo {u.target}: {u.error}")
            continue
        if u.restored:
            lines.append(
                f"Undid {u.target} (as {u.txid}): {plural(len(u.restored), 'run')} restored."
            )
        else:
            lines.append(f"Nothing of {u.target} could be restored.")
        for c in u.conflicts:
            lines.append(f"Conflict {c.run_id}: {c.reason}; it stays in trash.")
        if u.conflicts:
            lines.append(
                f"  Hint: move what took their place aside, then run `retention undo {u.target}`"
                " again"
            )
    return lines


# -- explain, show --kept ----------------------------------------------------------------------


def _ids(ids: list[str | int], most: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (", ..." if len(ids) > most else "")


_BASIS = {
    "config": "the configured policy",
    "plan": "this plan's policy",
    "manifest": "the manifest's policy (and filter)",
}


def explain_lines(e: Explanation) -> list[str]:
    """Human lines for `retention explain` and `plan --explain`: the verdict, the run's
    time, group and tier, the policy and when it was evaluated, the reasons, what each rule
    saw, and against a manifest whether the run is an entry and whether that agrees."""
    if e.kept is not None:
        verdict = "kept" if e.kept else "removed"
    elif e.in_catalog:
        verdict = "not considered by the policy"
    else:
        verdict = "not in the catalog"
    lines = [f"Run {e.run_id}: {verdict}."]
    if e.time is not None:
        recorded = f" (recorded as {e.recorded_time})" if e.recorded_time else ""
        lines.append(f"  time: {e.time}{recorded}")
    elif e.considered:
        lines.append("  time: missing or unparseable")
    if e.group_label:
        lines.append(f"  group: {e.group_label}")
    elif e.tier is not None:
        lines.append(f"  tier: {e.tier}")
    if e.size is not None:
        lines.append(f"  size counted by the budget: {format_bytes(e.size)}")
    if e.budget is not None:
        lines.append(f"  {e.budget}")
    if e.parent is not None:
        fate = {True: "kept", False: "removed", None: "not among the runs considered"}
        lines.append(f"  depends on run {e.parent} ({fate[e.parent_kept]})")
    at = f" at {e.now}" + (" (the manifest's now)" if e.basis == "manifest" else "")
    against = ", against the catalog as it is now (read-only)" if e.basis == "manifest" else ""
    lines.append(f"Evaluated with {_BASIS.get(e.basis, e.basis)}{at}{against}:")
    lines += ["  " + line.strip() for line in e.policy.splitlines()]
    if e.position is not None and e.counted is not None:
        scope = " of its group" if e.group_label else ""
        lines.append(
            f"Position: number {e.position} of the {e.counted} runs{scope} the rules count,"
            " newest first."
        )
    if e.reasons:
        lines.append("Reasons:")
        lines += [f"  {r}" for r in e.reasons]
    if e.rules:
        lines.append("Each rule:")
        width = max(len(c.rule) for c in e.rules)
        for c in e.rules:
            keeps = "keeps it" if c.keeps else "does not"
            lines.append(f"  {c.rule:<{width}}  {keeps:<8}  {c.detail}")
    m = e.manifest
    if m is not None:
        state = f"expired at {m.expires_at}" if m.expired else f"valid until {m.expires_at}"
        applied = f", applied by {', '.join(m.applied_by)}" if m.applied_by else ""
        lines.append(f"Manifest {m.manifest_id}, planned at {m.planned_at} ({state}{applied}):")
        lines.append(f"  entry: {m.entry_reason}" if m.in_manifest else "  not an entry of it")
        if m.note:
            lead = {True: "Agrees", False: "Warning", None: "Note"}[m.agrees]
            lines.append(f"  {lead}: {m.note}")
    lines += [f"Note: {n}" for n in e.notes]
    return lines


GROUPS = 20  # groups listed by `kept_lines` (a tenant table may have thousands)


def left_out() -> str:
    from retention.explain import LEFT_OUT

    return LEFT_OUT


def kept_lines(k: KeptReport, top: int) -> list[str]:
    """Human lines for `show --kept`: counts per rule always, the kept runs themselves up
    to ``top`` (``--json`` gives every one), and warnings where the re-evaluation's
    removals differ from the manifest's entries."""
    lines = [
        f"Kept: {k.kept} of {plural(k.considered, 'run')} ({k.basis}).",
        "By rule (a run kept by several rules counts under each):",
    ]
    lines += [f"  {c.runs:>7}  {c.rule}" for c in k.by_rule] or ["  (none)"]
    if k.by_group:
        ranked = sorted(k.by_group, key=lambda g: (-g.removed, g.group))
        lines.append("By group, the most removals first (considered / kept / removed):")
        lines += [
            f"  {g.considered:>7} {g.kept:>7} {g.removed:>7}  {g.group}" for g in ranked[:GROUPS]
        ]
        if len(ranked) > GROUPS:
            rest = ranked[GROUPS:]
            lines.append(
                f"  {sum(g.considered for g in rest):>7} {sum(g.kept for g in rest):>7}"
                f" {sum(g.removed for g in rest):>7}  ... {plural(len(rest), 'more group')}"
                " (--json lists every one)"
            )
    shown = k.runs[: max(top, 0)]
    if shown:
        more = "" if len(shown) == len(k.runs) else "; --top N for more, --json for all"
        lines.append(f"Newest {len(shown)} of the {plural(k.kept, 'kept run')}{more}:")
        for r in shown:
            group = f"  [{', '.join(map(str, r.group))}]" if r.group else ""
            lines.append(
                f"  {r.run_id}  {r.time or '(no timestamp)'}{group}  {'; '.join(r.reasons)}"
            )
    if k.removed_not_in_manifest:
        n = len(k.removed_not_in_manifest)
        lines.append(
            f"Warning: re-evaluated now, the policy removes {plural(n, 'run')} that"
            f" {'is not an entry' if n == 1 else 'are not entries'} of the manifest"
            f" ({_ids(k.removed_not_in_manifest)}): left out at plan time ({left_out()}), or"
            " new or changed since."
        )
    if k.in_manifest_but_kept:
        n = len(k.in_manifest_but_kept)
        lines.append(
            f"Warning: the manifest deletes {plural(n, 'run')} that the re-evaluation keeps"
            f" ({_ids(k.in_manifest_but_kept)}): the catalog changed since the plan; apply"
            " still deletes them unless their rows or directories changed or they are now"
            " protected. Plan again to follow the catalog as it is."
        )
    if k.in_manifest_not_considered:
        lines.append(
            f"Warning: {plural(k.in_manifest_not_considered, 'entry', 'entries')} of the"
            " manifest no longer among the runs the policy considers (deleted since, or no"
            " longer selected by catalog.filter)."
        )
    return lines


# -- metrics and the manifest's paths (--metrics-file, show/apply --artifact-root) -----------


class _ManifestPolicy(msgspec.Struct):
    """The two fields of a manifest's payload the metrics need (the rest is ignored)."""

    manifest_id: str
    policy: dict[str, Any]


class _ManifestEnvelope(msgspec.Struct):
    payload: msgspec.Raw


def manifest_group_by(manifest_path: str, manifest_id: str) -> tuple[str, ...] | None:
    """The ``group_by`` columns of the manifest file an apply just applied, if it still is
    the one with ``manifest_id`` (apply verified it; this only reads it again for labels).
    None for stdin, an ungrouped manifest, or a file that cannot be read again."""
    if manifest_path == "-":
        return None
    try:
        env = msgspec.json.decode(Path(manifest_path).read_bytes(), type=_ManifestEnvelope)
        p = msgspec.json.decode(env.payload, type=_ManifestPolicy)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    columns = p.policy.get("group_by")
    if p.manifest_id != manifest_id or not columns:
        return None
    return tuple(str(c) for c in columns)


def apply_group_counts(cfg: Config, txids: list[str], columns: tuple[str, ...]) -> list[Any]:
    """Runs and bytes per group (``columns`` of the runs table) deleted by the applies
    ``txids``, read back from their tombstones (read-only): what the metrics file labels
    ``group``. Empty when the tombstones are gone (an erasure, purged at once) or lack a
    column."""
    from retention.catalog import q
    from retention.metrics import GroupCount
    from retention.policy.core import group_label
    from retention.tombstones import RUN_COL, TOMB_PREFIX, TOMB_RUNS, TXID_COL

    if not txids or not columns:
        return []
    tomb = TOMB_PREFIX + cfg.runs_table
    with open_catalog(cfg) as cat:
        have = set(cat.db.columns(tomb))
        if not set(columns) <= have:
            return []
        cols = ", ".join(f"tb.{q(c)}" for c in columns)
        marks = ", ".join("?" for _ in txids)
        rows = cat.conn.execute(
            f"SELECT {cols}, count(*), coalesce(sum(r.bytes), 0) FROM {q(tomb)} AS tb"
            f" JOIN {TOMB_RUNS} AS r ON r.txid = tb.{q(TXID_COL)} AND r.run_id = tb.{q(RUN_COL)}"
            f" WHERE tb.{q(TXID_COL)} IN ({marks}) GROUP BY {cols}",
            txids,
        ).fetchall()
    out = [
        GroupCount(group_label(columns, tuple(row[: len(columns)]), None), row[-2], row[-1])
        for row in rows
    ]
    return sorted(out, key=lambda g: g.group)


def restored_bytes(cfg: Config, undo_txids: list[str]) -> int:
    """Bytes of the runs the undos ``undo_txids`` restored, from the deletion log
    (read-only): the undo report counts runs, not bytes."""
    from retention.tombstones import TOMB_RUNS

    ids = [t for t in undo_txids if t]
    if not ids:
        return 0
    with open_catalog(cfg) as cat:
        marks = ", ".join("?" for _ in ids)
        try:
            row = cat.conn.execute(
                f"SELECT coalesce(sum(bytes), 0) FROM {TOMB_RUNS} WHERE undo_txid IN ({marks})",
                ids,
            ).fetchone()
        except Exception:  # no deletion log at all
            return 0
    return int(row[0])


def refuse_other_root(cfg: Config, payload: Payload) -> None:
    """`ManifestRejected` (exit 5) naming both roots when the manifest was planned for
    another artifact root than the effective one (apply's preflight refuses the same)."""
    import os

    from retention.errors import ManifestRejected

    planned = Path(os.path.abspath(payload.artifact_root))
    effective = Path(os.path.abspath(cfg.artifact_root))
    if planned != effective:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} was planned for artifact root {planned}; the"
            f" effective one is {effective} (artifacts.root, from"
            f" {cfg.sources.get('artifact_root', 'default')})",
            hint="give the root it was planned with (--artifact-root), or plan again",
        )
