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
from retention.check import KIND_ORDER, CheckReport, Finding
from retention.config import Config, collection_spec
from retention.durations import format_instant
from retention.errors import RecoveryError, StorageError, UndoRefused
from retention.history import LogEntry, LogReport, TrashApply, TrashReport, TrashRun
from retention.layout import StateLayout
from retention.reporting import without_cyclic_gc
from retention.reports import LockHolder
from retention.status import RunningTx, observe
from retention.workspace import stale_owner

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
    try:
        names = sorted(os.listdir(ws.tomb_dir))
    except FileNotFoundError:
        return out, bad
    for name in names:
        if not name.endswith(".json") or name.endswith(".rest.json"):
            continue
        path = ws.tomb_dir / name
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
    order = {k: n for n, k in enumerate(KIND_ORDER + DOC_KINDS)}
    findings.sort(key=lambda f: order.get(f.kind, len(order)))
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return CheckReport(
        runs_checked=records,
        findings=findings,
        counts=counts,
        holder=holder,
        running=running,
        last_holder=stale_owner(state) if counts.get("interrupted") else None,
        document=str(jobstore.document_path(cfg)),
    )


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
        for head in jobstore._tombs(ws):
            if head.txid in txids:
                continue  # an apply still unfinished: not in trash until it commits
            tomb = jobstore.read_tomb(ws.tomb(head.txid))
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
        if cutoff is not None and r.at < cutoff:
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
