"""Read-only commands on a JSON-document catalog: `retention check`, `retention trash` and
`retention log`.

They answer with the SQL catalog's report structs (`retention.check.CheckReport`,
`retention.history.TrashReport`, `retention.history.LogReport`), so a script reads both
kinds of catalog the same way.

What `check` compares on a document (each a `Finding` kind):

* ``journal_corrupt``: the journal cannot be read;
* ``interrupted``: an unfinished transaction whose process is gone; the detail says which
  document recovery finds (the one the transaction read, the one it wrote, or neither) and
  so what `retention recover` will do (roll back, roll forward, or ask for ``--resolve``);
* ``temp_file``: a temporary copy of the document a crashed replacement left beside it
  (recovery removes it; the application never reads it);
* ``tombstone_damaged``: a tombstone in the state directory that cannot be read: its
  apply cannot be undone;
* ``staging_orphan``: an undo's staging file with no unfinished undo to own it;
* ``record_in_both``: a record that is in the document and, unchanged, in an undoable
  tombstone: it was put back outside retention (or a ``--resolve`` guessed wrong); undo
  would refuse it. A record the application wrote again under the same id, with other
  contents, is not a finding: that is the application's right.

A live process holding the workspace lock is named, not counted (its temp file and staging
files are its own), as on an SQL catalog.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import msgspec

from journal import TxStatus
from retention import jobstore
from retention.catalogs import jsondoc
from retention.check import KIND_ORDER, CheckReport, Finding, report
from retention.config import Config, collection_spec
from retention.durations import format_instant
from retention.errors import RecoveryError, StorageError, UndoRefused
from retention.history import LogEntry, LogReport, TrashApply, TrashReport, TrashRun
from retention.layout import StateLayout
from retention.reporting import without_cyclic_gc
from retention.reports import LockHolder
from retention.status import RunningTx, observe

# After the SQL kinds (causes first): the document's own kinds.
DOC_KINDS = ("temp_file", "tombstone_damaged", "staging_orphan", "record_in_both")


def _paths_only(cfg: Config) -> jobstore.DocWorkspace:
    """The workspace's paths, without its lock or journal (read-only commands)."""
    return jobstore.DocWorkspace(cfg, StateLayout(Path(cfg.state_dir)), None)  # type: ignore[arg-type]


def _where(cfg: Config, swap: jobstore.Swap | None, status: TxStatus) -> tuple[str, str]:
    """(what the document is now, what recover would do) for an unfinished transaction."""
    if status is TxStatus.COMMITTED:
        return "committed", "roll forward"
    if status is TxStatus.ABORTED or swap is None:
        return "nothing written yet", "roll back"
    state = jsondoc.commit_state(swap.document, swap.old_digest, swap.new_digest)
    if state == "new":
        return "the document is the one it wrote", "roll forward"
    if state == "old":
        return "the document is the one it read", "roll back"
    return (
        "the document is neither the one it read nor the one it wrote",
        "ask for --resolve committed|rolled-back",
    )


def _tombs(ws: jobstore.DocWorkspace) -> tuple[list[jobstore.DocTomb], list[Finding]]:
    """Every undoable tombstone, read whole; the damaged ones as findings."""
    out: list[jobstore.DocTomb] = []
    bad: list[Finding] = []
    for path in jobstore.tomb_paths(ws):
        try:
            out.append(jobstore.read_tomb(path))
        except (StorageError, RecoveryError, UndoRefused) as exc:
            bad.append(Finding("tombstone_damaged", exc.message, None, str(path)))
    return out, bad


def check(cfg: Config) -> CheckReport:
    """`retention check` on a JSON-document catalog (read-only); no findings: consistent."""
    state = StateLayout(Path(cfg.state_dir))
    seen = observe(state)
    findings: list[Finding] = []
    if seen.journal_error is not None:
        findings.append(Finding("journal_corrupt", seen.journal_error, path=str(state.journal)))
    ws = _paths_only(cfg)
    doc = jsondoc.load(cfg.catalog_path)  # CatalogError (exit 5) when it cannot be read
    holder: LockHolder | None = seen.holder
    running: list[RunningTx] = []
    unfinished_undos: set[str] = set()
    # Tombstones an unfinished transaction owns: its apply's (not committed yet), or the
    # apply its undo restores (the records may be back already: recovery decides).
    unfinished = {txid for txid, _, _ in seen.unfinished}
    unfinished |= {
        t for _, _, begin in seen.unfinished if begin.op == "undo" for t in begin.targets
    }
    for txid, tx, begin in seen.unfinished:
        swap = jobstore._swap_of(tx)
        if begin.op == "undo":
            unfinished_undos.add(txid)
        if holder is not None:
            records = swap.records if swap else 0
            running.append(
                RunningTx(
                    txid=txid, op=begin.op, state=tx.status.value, intents=records, in_trash=0
                )
            )
            continue
        now_is, would = _where(cfg, swap, tx.status)
        findings.append(
            Finding(
                "interrupted",
                f"{begin.op} {txid} ({tx.status.value}) was interrupted: {now_is}; run"
                f" `retention recover` ({would})",
                None,
                str(ws.tomb(txid)) if begin.op == "apply" else str(ws.rest(txid)),
            )
        )
    if holder is None:
        findings += [
            Finding(
                "temp_file",
                "a temporary copy of the document left by an interrupted replacement"
                " (`retention recover` removes it)",
                None,
                str(p),
            )
            for p in jsondoc.temp_files(cfg.catalog_path)
        ]
        try:
            names = sorted(os.listdir(ws.tomb_dir))
        except FileNotFoundError:
            names = []
        findings += [
            Finding(
                "staging_orphan",
                "an undo's staging file that no unfinished undo owns",
                None,
                str(ws.tomb_dir / n),
            )
            for n in names
            if n.endswith(".rest.json") and n.removesuffix(".rest.json") not in unfinished_undos
        ]
    tombs, damaged = _tombs(ws)
    findings += damaged
    tombs = [t for t in tombs if t.txid not in unfinished]
    specs = {t.name: collection_spec(t) for t in cfg.targets}
    records = 0
    with without_cyclic_gc():
        for spec in specs.values():
            try:
                node = jobstore._node(doc, spec.path)
            except (KeyError, TypeError):
                continue
            records += len(node) if isinstance(node, list | dict) else 0
        for tomb in tombs:
            for rset in tomb.removed.collections.values():
                spec = jsondoc.CollectionSpec(
                    name=rset.name, path=rset.path, id=rset.id, timestamp=("-",)
                )  # (`_present` reads the path and the id only)
                by_id = {r.id: r for r in rset.records}
                for rid, now in jobstore._present(doc, spec, set(by_id)).items():
                    if jobstore.fingerprint(now) == jobstore.fingerprint(by_id[rid].record):
                        findings.append(
                            Finding(
                                "record_in_both",
                                f"in the document and in the tombstone of apply {tomb.txid}"
                                f" ({rset.name}): restored outside retention; undo will"
                                " refuse it",
                                rid,
                                f"{rset.path}[{rid}]",
                            )
                        )
    doc_path = str(jobstore.document_path(cfg))
    return report(state, records, findings, holder, running, KIND_ORDER + DOC_KINDS, doc_path)


def trash(cfg: Config, now: datetime, *, limit: int = 0) -> TrashReport:
    """`retention trash` on a JSON-document catalog (read-only): the records the undoable
    applies removed, per apply (newest first), each with its size as encoded JSON."""
    ws = _paths_only(cfg)
    stamp = format_instant(now)
    applies: list[TrashApply] = []
    entries: list[TrashRun] = []
    seen = observe(StateLayout(Path(cfg.state_dir)))
    txids = [t for t, _, _ in seen.unfinished]
    with without_cyclic_gc():
        tombs = [jobstore.read_tomb(path) for path in jobstore.tomb_paths(ws)]  # read once
        for tomb in sorted(tombs, key=lambda t: (t.created_at, t.txid), reverse=True):
            if tomb.txid in txids:
                continue  # an apply still unfinished: not in trash until it commits
            sizes = [
                (rset.name, r.id, len(msgspec.json.encode(r.record)))
                for rset in tomb.removed.collections.values()
                for r in rset.records
            ]
            applies.append(
                TrashApply(
                    txid=tomb.txid,
                    state="applied",
                    deleted_at=tomb.created_at,
                    undo_until=tomb.grace_until,
                    runs=len(sizes),
                    bytes=sum(s for _, _, s in sizes),
                    undoable=True,
                )
            )
            for name, rid, size in sizes:
                if limit and len(entries) >= limit:
                    break
                entries.append(
                    TrashRun(
                        txid=tomb.txid,
                        run_id=rid,
                        target=name,
                        path=None,
                        trash=None,
                        bytes=size,
                        deleted_at=tomb.created_at,
                        undo_until=tomb.grace_until,
                        undoable=True,
                    )
                )
    return TrashReport(
        now=stamp,
        document=str(jobstore.document_path(cfg)),
        runs=sum(a.runs for a in applies),
        bytes=sum(a.bytes for a in applies),
        undoable_runs=sum(a.runs for a in applies),
        applies=applies,
        entries=entries,
        running=txids if seen.holder is not None else [],
        interrupted=txids if seen.holder is None else [],
        journal_error=seen.journal_error,
    )


def log(cfg: Config, *, since: datetime | None = None, limit: int = 0) -> LogReport:
    """`retention log` on a JSON-document catalog (read-only): every apply, undo and purge
    the state directory's log records keep, newest first. An apply's state: ``undone`` once
    an undo restored all of it, ``applied`` while its tombstone is there (``in_trash``: its
    records still undoable), else ``purged``. A transaction still unfinished in the journal
    is left out (its log record is staged, not yet true)."""
    from retention.durations import parse_instant

    ws = _paths_only(cfg)
    cutoff = format_instant(since) if since is not None else None
    try:
        names = sorted(os.listdir(ws.log_dir))
    except FileNotFoundError:
        names = []
    unfinished = {t for t, _, _ in observe(StateLayout(Path(cfg.state_dir))).unfinished}
    records: list[jobstore.DocLogRecord] = []
    for name in names:
        if not name.endswith(".json") or name.removesuffix(".json") in unfinished:
            continue
        try:
            data = (ws.log_dir / name).read_bytes()
            records.append(msgspec.json.decode(data, type=jobstore.DocLogRecord))
        except (OSError, msgspec.MsgspecError) as exc:
            raise StorageError(f"cannot read the log record {ws.log_dir / name}: {exc}") from None
    undone: dict[str, int] = {}
    purged: set[str] = set()
    for r in records:
        for t in r.targets:
            if r.action == "undo":
                undone[t] = undone.get(t, 0) + sum(r.records.values())
            elif r.action == "purge":
                purged.add(t)
    entries: list[LogEntry] = []
    for r in sorted(records, key=lambda r: (r.at, r.txid), reverse=True):
        if since is not None and parse_instant(r.at) < since:
            continue
        total = sum(r.records.values())
        state, in_trash = "done", None
        if r.action == "apply":
            left = total - undone.get(r.txid, 0)
            if ws.tomb(r.txid).exists():
                state, in_trash = "applied", left
            else:
                state, in_trash = ("undone" if r.txid not in purged else "purged"), 0
        entries.append(
            LogEntry(
                txid=r.txid,
                action=r.action,
                at=r.at,
                state=state,
                targets=r.targets,
                runs=total,
                bytes=r.bytes,
                in_trash=in_trash,
                undo_until=r.undo_until,
                audited=True,
                user=r.user,
                host=r.host,
                manifest_id=r.manifest_id,
                tables=dict(r.records),
            )
        )
    return LogReport(
        since=cutoff,
        total=len(entries),
        entries=entries[:limit] if limit else entries,
        document=str(jobstore.document_path(cfg)),
    )


class ExplainedRecord(msgspec.Struct, kw_only=True):
    """One record carrying the id, in one target, and what the policy does with it."""

    target: str
    collection: str
    position: int | str  # index in the list, or key in the map
    removed: bool  # the verdict
    reason: str  # why it is kept, or "expired" (at or before the cutoff, terminal)
    time: str | None  # its timestamp, as read (None: missing or not parseable)
    age: str | None  # its age at now, for people
    ttl: str
    ttl_source: str  # --ttl, env NAME, or file
    cutoff: str  # records at or before this instant are expired
    state: str | None  # its own, or its owner's through the join
    terminal: list[str]
    issues: list[str]


class ManifestEntry(msgspec.Struct, kw_only=True):
    manifest_id: str
    planned_at: str
    expires_at: str
    expired: bool
    entries: list[str]  # targets whose entries name the id
    unchanged: dict[str, bool]  # per such target: the record as planned (apply removes it)


class RecordExplanation(msgspec.Struct, kw_only=True):
    """`retention explain ID` on a JSON-document catalog (``--json``)."""

    version: int = 1
    kind: str = "jsondoc-explain"
    id: str
    document: str
    basis: str  # "config" (now, or --now) or "manifest" (its TTLs, at its now)
    now: str
    records: list[ExplainedRecord]  # [] when no target holds the id
    manifest: ManifestEntry | None = None


def _age(seconds: float) -> str:
    from retention.durations import format_duration

    return format_duration(seconds) if seconds >= 0 else f"in {format_duration(-seconds)}"


def explain(
    cfg: Config, record_id: str, *, now: datetime | None, manifest: str | None
) -> RecordExplanation:
    """Why the plan removes or keeps the records with ``record_id`` (every target), from
    the same decision the plan takes (`jobstore.kept_because`). With a manifest: its TTLs
    at its own now, against the document as it is now, and whether it lists the record
    (and whether the record is still as planned). Read-only."""
    from retention.durations import parse_duration, parse_instant

    payload = None
    if manifest is not None:
        from datetime import UTC

        payload = jobstore.verify_manifest(cfg, manifest, datetime.now(UTC), expired_ok=True)
        now = parse_instant(payload.now)
    assert now is not None
    doc = jsondoc.load(cfg.catalog_path)
    specs = {t.name: collection_spec(t) for t in cfg.targets}
    ttls = {
        t.name: (t.ttl or "", cfg.sources.get(f"targets.{t.name}.ttl", "file")) for t in cfg.targets
    }
    if payload is not None:
        specs = {t.spec.name: t.spec.collection() for t in payload.targets}
        ttls = {t.spec.name: (t.ttl, t.ttl_source) for t in payload.targets}
    owners = jobstore._owners(specs)
    out: list[ExplainedRecord] = []
    with without_cyclic_gc():
        for name, spec in specs.items():
            ttl, source = ttls[name]
            if not ttl:
                continue  # (plan refuses a target without a TTL)
            cutoff = now - parse_duration(ttl)
            for f in jsondoc.records(doc, spec, owners):
                if f.id != record_id:
                    continue
                why = jobstore.kept_because(f, cutoff)
                stamp = None
                rec = jobstore._node(doc, spec.path)[f.position]
                if type(rec) is dict:
                    stamp = jobstore._stamp(rec, spec.timestamp) or None
                out.append(
                    ExplainedRecord(
                        target=name,
                        collection=spec.path,
                        position=f.position,
                        removed=why is None,
                        reason=why or "expired",
                        time=stamp,
                        age=None if f.time is None else _age((now - f.time).total_seconds()),
                        ttl=ttl,
                        ttl_source=source,
                        cutoff=format_instant(cutoff),
                        state=f.state,
                        terminal=list(spec.terminal),
                        issues=list(f.issues),
                    )
                )
    checked = None
    if payload is not None:
        listed = {t.spec.name: e for t in payload.targets for e in t.entries if e.id == record_id}
        unchanged = {}
        for name, entry in listed.items():
            present = jobstore._present(doc, specs[name], {record_id})
            rec = present.get(record_id)
            unchanged[name] = rec is not None and jobstore.fingerprint(rec) == entry.fp
        checked = ManifestEntry(
            manifest_id=payload.manifest_id,
            planned_at=payload.now,
            expires_at=payload.expires_at,
            expired=datetime.now(now.tzinfo) >= parse_instant(payload.expires_at),
            entries=sorted(listed),
            unchanged=unchanged,
        )
    if not out and not (checked is not None and checked.entries):
        from retention.errors import UsageError

        names = ", ".join(specs)
        raise UsageError(
            f"no record {record_id!r} in the targets ({names}) of {jobstore.document_path(cfg)}",
            hint="give a record's id as the document stores it (a map's key for @key); a"
            " record a manifest removed is explained with the manifest:"
            " retention explain ID MANIFEST",
        )
    return RecordExplanation(
        id=record_id,
        document=str(jobstore.document_path(cfg)),
        basis="manifest" if payload is not None else "config",
        now=format_instant(now),
        records=out,
        manifest=checked,
    )


def explain_lines(e: RecordExplanation) -> list[str]:
    lines = [] if e.records else [f"Record {e.id}: in no target of {e.document} now."]
    for r in e.records:
        verdict = "removed" if r.removed else f"kept ({r.reason})"
        lines.append(f"Record {e.id} of {r.target} ({r.collection}[{r.position}]): {verdict}.")
        when = f"{r.time}, {r.age} old" if r.time and r.age else (r.time or "missing")
        lines.append(f"  timestamp: {when}")
        lines.append(f"  ttl {r.ttl} ({r.ttl_source}): expired at or before {r.cutoff}")
        state = r.state if r.state is not None else "(none)"
        terminal = ", ".join(r.terminal)
        lines.append(f"  state: {state} (terminal: {terminal})")
        if r.issues:
            lines.append(f"  kept whatever its age: {', '.join(r.issues)}")
    basis = "the manifest's TTLs at its now" if e.basis == "manifest" else "the configuration"
    lines.append(f"Evaluated with {basis}, at {e.now}.")
    m = e.manifest
    if m is not None:
        state = f"expired at {m.expires_at}" if m.expired else f"valid until {m.expires_at}"
        lines.append(f"Manifest {m.manifest_id}, planned at {m.planned_at} ({state}):")
        if not m.entries:
            lines.append("  not an entry of it")
        for name in m.entries:
            fate = (
                "unchanged since: apply removes it"
                if m.unchanged[name]
                else "changed or gone since: apply skips it"
            )
            lines.append(f"  an entry of {name}; {fate}")
    return lines
