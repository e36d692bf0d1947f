"""What commands print: human lines for stderr/stdout and report structs for JSON."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from journal import fsio
from retention.catalog import SqliteCatalog
from retention.config import Config
from retention.durations import format_bytes, parse_instant
from retention.errors import StorageError
from retention.layout import StateLayout
from retention.manifest import Payload, read_manifest_bytes, verify_for_workspace
from retention.planner import PlanResult

SHOW_VERSION = 1


def write_output(path: Path, data: bytes) -> None:
    """Write a file durably and atomically (``-o``); a failure is one clear error."""
    try:
        fsio.write_atomic(path, data, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def plan_summary(result: PlanResult) -> list[str]:
    p = result.payload
    lines = [p.policy_text]
    n = len(p.entries)
    lines.append(
        f"{n} of {p.considered} runs would be deleted, {format_bytes(p.total_bytes)}"
        f" reclaimed (manifest {p.manifest_id}, expires {p.expires_at})."
    )
    if n:
        dated = [e.time for e in p.entries if e.time]
        if dated:
            oldest = min(dated, key=parse_instant)  # by instant: "…00.5Z" < "…00Z" as text
            newest = max(dated, key=parse_instant)
            lines.append(f"Oldest candidate {oldest}, newest {newest}.")
        missing = sum(1 for e in p.entries if e.path is not None and not e.exists)
        if missing:
            lines.append(f"{missing} candidate(s) have no artifact directory on disk.")
    for s in result.skipped:
        lines.append(f"Skipped {s.run_id}: {s.reason}")
        if s.hint:
            lines.append(f"  Hint: {s.hint}")
    return lines


def load_verified(cfg: Config, manifest_path: str, now: datetime) -> Payload:
    """Read a manifest and verify signature, expiry and catalog identity (read-only)."""
    data = read_manifest_bytes(manifest_path)
    with SqliteCatalog(cfg, readonly=True) as cat:
        return verify_for_workspace(data, StateLayout(Path(cfg.state_dir)), cat, now=now)


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


class ShowReport(msgspec.Struct):
    version: int
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


def show_report(p: Payload, top: int) -> ShowReport:
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
    )


def show_lines(p: Payload, top: int) -> list[str]:
    r = show_report(p, top)
    lines = [
        f"Manifest {r.manifest_id} (catalog {r.catalog_id}), planned at {r.now},"
        f" valid until {r.expires_at}: signature OK.",
        r.policy,
        f"{r.count} runs, {format_bytes(r.total_bytes)}"
        + (f"; {r.missing_dirs} without a directory on disk" if r.missing_dirs else ""),
        "",
        "By reason:",
    ]
    for g in r.by_reason:
        lines.append(f"  {g.count:>7}  {format_bytes(g.bytes):>10}  {g.reason}")
    if r.by_directory:
        lines += ["", "By top-level directory:"]
        for d in r.by_directory:
            lines.append(f"  {d.count:>7}  {format_bytes(d.bytes):>10}  {d.directory}/")
    if r.largest:
        lines += ["", f"Largest {len(r.largest)}:"]
        for e in r.largest:
            lines.append(f"  {format_bytes(e.bytes):>10}  {e.run_id}  {e.path or '(no artifacts)'}")
    return lines


def apply_lines(r: object) -> list[str]:
    from retention.durations import format_duration

    rep: Any = r
    lines = [f"Recovered {x.txid} ({x.op}): {x.action}." for x in rep.recovered]
    if rep.already_applied_by:
        lines.append(
            f"Manifest {rep.manifest_id} was already applied by"
            f" {', '.join(rep.already_applied_by)}; nothing to do."
        )
        return lines
    if rep.txid is None:
        lines.append("Nothing to apply: no entry of the manifest can be deleted now.")
    else:
        lines.append(
            f"Applied {rep.manifest_id} as {rep.txid}: {rep.deleted_runs} runs deleted,"
            f" {format_bytes(rep.bytes_moved)} moved to trash"
            f" in {format_duration(rep.duration_ms / 1000)}."
        )
        lines.append(f"Undo with: retention undo {rep.txid}")
    for s in rep.skipped:
        lines.append(f"Skipped {s.run_id}: {s.reason}")
        if s.hint:
            lines.append(f"  Hint: {s.hint}")
    if rep.purged:
        lines.append(f"Purged expired trash of {len(rep.purged)} earlier apply(s).")
    for w in rep.warnings:
        lines.append(f"Warning: {w}")
    return lines


def recover_lines(recovered: list[Any]) -> list[str]:
    if not recovered:
        return ["Nothing to recover."]
    return [f"{x.txid} ({x.op}): {x.action}, {x.moved} director(ies) moved." for x in recovered]


def undo_lines(rep: Any) -> list[str]:
    lines = [f"Recovered {x.txid} ({x.op}): {x.action}." for x in rep.recovered]
    if not rep.undone:
        lines.append("Nothing to undo.")
    for u in rep.undone:
        if u.error:
            lines.append(f"Error: could not undo {u.target}: {u.error}")
            continue
        lines.append(f"Undid {u.target} (as {u.txid}): {len(u.restored)} runs restored.")
        for c in u.conflicts:
            lines.append(f"Conflict {c.run_id}: {c.reason}; it stays in trash.")
    return lines


def status_lines(rep: Any) -> list[str]:
    lines = [f"Grace period: {rep.grace_period}. Journal: {rep.journal}."]
    if rep.interrupted:
        lines.append("Interrupted transactions (run `retention recover`):")
        for i in rep.interrupted:
            lines.append(f"  {i.txid} ({i.op}, {i.state}): recover would {i.recover_would}")
    else:
        lines.append("No interrupted transaction.")
    if rep.trash:
        lines.append("Trash:")
        for t in rep.trash:
            until = f"undo possible until {t.grace_until}" if t.undoable else t.state
            lines.append(
                f"  {t.txid}  {t.runs} runs  {format_bytes(t.bytes)}"
                f"  deleted {t.deleted_at}  {until}"
            )
        lines.append(f"Undoable: {rep.undoable_runs} runs, {format_bytes(rep.undoable_bytes)}.")
    else:
        lines.append("Trash is empty; nothing to undo.")
    return lines
