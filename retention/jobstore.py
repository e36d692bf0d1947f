"""Plan, apply, recover and undo on a JSON-document catalog (issue 10, scenario 2).

The document layer is `retention.catalogs.jsondoc` (reading records, removing and restoring
them, the atomic replacement); this module is the workflow around it, with the same
guarantees as the SQL path:

* **plan** (read-only) reads the document once and, per ``[[targets]]`` kind, selects the
  records whose TTL is over (their timestamp at least the TTL before ``now``), whose job is
  in a terminal state, and that have no issue (no or a malformed timestamp, no id, owner
  missing...: kept and reported). The manifest (`DocPayload`, signed exactly like the SQL
  manifests by `retention.manifest`) holds the document's path and digest and, per target,
  each id with a fingerprint of the record (sha256 of its canonical JSON).
* **apply** takes the workspace lock, recovers, verifies the manifest, keeps only the ids
  still present with the same fingerprint (the others are stale: skipped, never removed),
  journals BEGIN and a ``jsondoc.swap`` record with the old and the new digest (`Swap`),
  writes the `jsondoc.Removed` tombstone in the state directory (fsync of file and
  directory), and replaces the document under the application's lock file, waiting at most
  ``catalog.busy_timeout`` (`jsondoc.replace`, the commit point), then COMMITTED and DONE.
  A refused replacement (the document changed since it was read, the lock not had), a
  tombstone that cannot be written or a signal before the commit point roll back at once.
* **recover** decides an unfinished apply or undo by the document's digest
  (`jsondoc.commit_state`): the new digest -> it committed (finish), the old one -> it did
  not (its tombstone or staging file goes), any other -> stop (exit 7): someone rewrote the
  document meanwhile and only the operator can tell (``recover --resolve``).
* **undo** restores from tombstones (`jsondoc.restore`) against the current digest, journaled
  like apply. Records whose id exists again are refused and stay in the tombstone (exit 3),
  which stays undoable for them.
* **purge** forgets tombstones whose grace period (``state.grace_period``) is over; **show**,
  **status** and **config --check** are read-only, as on the SQL path.

State directory (beside the SQL path's files)::

    <state>/jsondoc/<txid>.json        tombstone of a committed apply (`DocTomb`), undoable
    <state>/jsondoc/<txid>.undone      the same after its undo (kept until purged)
    <state>/jsondoc/<txid>.rest.json   staging of an undo that refused some records: what
                                       stays undoable, put in place when the undo finishes
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from journal import Journal, TxState, TxStatus, fsio
from retention import txrecords
from retention.catalogs import jsondoc
from retention.catalogs.jsondoc import CollectionSpec, Document, Removed
from retention.config import Config, collection_spec
from retention.durations import format_duration, format_instant, parse_duration, parse_instant
from retention.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    CatalogError,
    ConfigError,
    Interrupted,
    ManifestRejected,
    RecoveryError,
    StorageError,
    UndoRefused,
    UsageError,
)
from retention.failpoints import failpoint
from retention.layout import StateLayout
from retention.reporting import without_cyclic_gc
from retention.reports import Interruption
from retention.signals import SIGNALS

MANIFEST_FORMAT = "retention.jsondoc-manifest"  # = retention.manifest.DOCUMENT_FORMAT
MANIFEST_VERSION = 1
TOMB_VERSION = 1
LOG_VERSION = 1
SWAP_VERSION = 1
REPORT_VERSION = 1
KIND_SWAP = "jsondoc.swap"  # the journal record with the document's old and new digests
STATE_SUBDIR = "jsondoc"
ISSUES_LISTED = 1000  # records with an issue listed by id in a plan report (all are counted)

# Why plan keeps a record (besides the document layer's issues).
NOT_TERMINAL = "not terminal"
NOT_EXPIRED = "not expired"

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
NoNulText = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*\Z")]  # as retention.manifest's
Instant = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\Z")]


# -- the manifest ---------------------------------------------------------------------------


class DocSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A target's collection as planned (apply uses this, not the config of the day)."""

    name: NoNulText
    path: NoNulText
    id: NoNulText
    timestamp: list[NoNulText]
    state: NoNulText | None
    terminal: list[NoNulText]

    def collection(self) -> CollectionSpec:
        return CollectionSpec(
            name=self.name,
            path=self.path,
            id=self.id,
            timestamp=tuple(self.timestamp),
            state=self.state,
            terminal=tuple(self.terminal),
        )


class DocEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One record to remove: its id, the sha256 of its canonical JSON, its timestamp."""

    id: NoNulText
    fp: Sha256
    time: str  # ISO-8601 UTC, as read (for review; apply compares ``fp``)


class DocTarget(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    spec: DocSpec
    ttl: str
    ttl_source: str
    cutoff: str  # records at or before this instant (ISO-8601 UTC) are expired
    considered: int
    kept: dict[str, int]  # by reason
    entries: list[DocEntry]


class DocPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: str
    version: int
    manifest_id: str
    document: NoNulText  # its real path
    document_digest: Sha256
    document_size: int
    lock_file: NoNulText | None
    now: Instant
    expires_at: Instant
    key_id: str
    targets: list[DocTarget]


def fingerprint(record: Any) -> str:
    """sha256 (hex) of a record's canonical JSON (keys sorted): what apply compares."""
    return hashlib.sha256(msgspec.json.encode(record, order="sorted")).hexdigest()


def _with_id(payload: DocPayload) -> DocPayload:
    from retention.manifest import canonical  # (not imported by recover: start-up time)

    payload.manifest_id = ""
    payload.manifest_id = "m-" + hashlib.sha256(canonical(payload)).hexdigest()[:24]
    return payload


def document_path(cfg: Config) -> Path:
    return Path(os.path.realpath(cfg.catalog_path))


def verify_manifest(
    cfg: Config, manifest: str, now: datetime, *, expired_ok: bool = False
) -> DocPayload:
    """Read and verify a JSON-document manifest for this workspace and this document
    (``expired_ok``: an expired one too, for `explain`, which changes nothing)."""
    from retention.manifest import load_key, open_envelope, read_manifest_bytes

    state = StateLayout(Path(cfg.state_dir))
    data = read_manifest_bytes(manifest, cfg.manifest_max_size)
    key, key_id = load_key(state, create=False)
    body = open_envelope(data, key, key_id)
    try:
        head = msgspec.json.decode(body, type=_Head)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestRejected(f"manifest payload is not understood: {exc}") from None
    if head.format != MANIFEST_FORMAT:
        raise ManifestRejected(
            f"manifest format {head.format!r} is not a JSON-document catalog's"
            f" ({MANIFEST_FORMAT!r}); this workspace's catalog is {cfg.catalog_path}",
            hint="plan again with this configuration",
        )
    if head.version != MANIFEST_VERSION:
        raise ManifestRejected(
            f"unsupported manifest format {head.format!r} version {head.version}",
            hint="plan again with this retention version",
        )
    try:
        payload = msgspec.json.decode(body, type=DocPayload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestRejected(f"manifest payload is not understood: {exc}") from None
    if payload.key_id != key_id:
        raise ManifestRejected("manifest key id does not match its envelope")
    expires = parse_instant(payload.expires_at)
    if now >= expires and not expired_ok:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} expired at {format_instant(expires)}",
            hint="run `retention plan` again to get a fresh manifest",
        )
    here = str(document_path(cfg))
    if payload.document != here:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} was planned against another document"
            f" ({payload.document}); this one is {here}",
            hint="plan again against this document",
        )
    return payload


class _Head(msgspec.Struct):
    format: str
    version: int


# -- reports ----------------------------------------------------------------------------------


class RecordIssue(msgspec.Struct, kw_only=True):
    """A record kept whatever its age, and why (``id`` None: it has none; then ``position``
    is its index in a list or its key in a map)."""

    target: str
    id: str | None
    position: int | str
    issues: list[str]


class SkippedRecord(msgspec.Struct, kw_only=True):
    target: str
    id: str
    reason: str


class TargetReport(msgspec.Struct, kw_only=True):
    name: str
    collection: str
    ttl: str | None
    ttl_source: str | None = None
    cutoff: str | None = None
    considered: int = 0
    delete_count: int
    kept_count: int
    kept_by_reason: dict[str, int] = {}
    eligible_terminal: list[str]
    skipped_count: int = 0  # apply: stale entries (changed or gone since the plan)
    restored_count: int = 0  # undo


class Recovered(msgspec.Struct):
    txid: str
    op: str
    action: str  # "rolled forward" | "rolled back" | "resolved ..."
    moved: int = 0  # records (for the SQL report's shape: directories there)


class JsondocPlanReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    manifest_id: str
    manifest: str | None  # where it was written (None: stdout)
    document: str
    document_digest: str
    now: str
    expires_at: str
    delete_count: int
    kept_count: int
    targets: list[TargetReport]
    issues: list[RecordIssue]
    issues_count: int


class JsondocApplyReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    txid: str | None
    manifest_id: str
    document: str
    old_digest: str
    new_digest: str | None
    delete_count: int
    deleted_ids: dict[str, list[str]]
    skipped: list[SkippedRecord]
    targets: list[TargetReport]
    recovered: list[Recovered] = []
    undo_until: str | None = None
    duration_ms: int
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        return EXIT_PARTIAL if self.skipped else EXIT_OK


class UndoneApply(msgspec.Struct, kw_only=True):
    txid: str  # the undo's
    target: str  # the apply's
    restored: dict[str, list[str]]
    refused: dict[str, dict[str, str]]  # target -> id -> why (they stay undoable)


class JsondocUndoReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    document: str
    restored_count: int
    refused_count: int
    undone: list[UndoneApply]
    recovered: list[Recovered] = []
    duration_ms: int
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted is not None:
            return self.interrupted.exit_code
        return EXIT_PARTIAL if self.refused_count else EXIT_OK


class JsondocRecoverReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    recovered: list[Recovered]
    temp_files_removed: list[str] = []
    duration_ms: int
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        return self.interrupted.exit_code if self.interrupted is not None else EXIT_OK


class JsondocPurgeReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    purged: list[str]
    records: int
    recovered: list[Recovered] = []
    duration_ms: int
    interrupted: Interruption | None = None

    @property
    def exit_code(self) -> int:
        return self.interrupted.exit_code if self.interrupted is not None else EXIT_OK


# -- plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanResult:
    manifest: bytes
    report: JsondocPlanReport


def _owners(specs: Mapping[str, CollectionSpec]) -> dict[str, CollectionSpec]:
    """A join's owner collection, when it is itself a target (its path and id)."""
    return {s.path: s for s in specs.values()}


def _node(doc: Document, path: str) -> Any:
    node: Any = doc.data
    for part in path.split("."):
        node = node[part]
    return node


def _stamp(record: dict[str, Any], fields: tuple[str, ...]) -> str:
    """The timestamp a record was judged by, as written (for people reviewing)."""
    for name in fields:
        value = record.get(name)
        if value is not None:
            return str(value)
    return ""


def kept_because(f: jsondoc.Facts, cutoff: datetime) -> str | None:
    """Why plan keeps a record, or None if it goes: the record's issues first (the first
    of them), then a state that is not terminal, then an age under the TTL (at or before
    ``cutoff`` is expired). `explain` gives the same answer as the plan from this."""
    if f.issues:
        return f.issues[0]
    if not f.terminal:
        return NOT_TERMINAL
    if f.time is None or f.time > cutoff:
        return NOT_EXPIRED
    return None


def build_plan(cfg: Config, now: datetime, output: str | None = None) -> PlanResult:
    """Read the document once and write the signed manifest (bytes) and the plan report.
    Read-only, except for the workspace key (created on first use)."""
    with without_cyclic_gc():
        return _build_plan(cfg, now, output)


def _build_plan(cfg: Config, now: datetime, output: str | None) -> PlanResult:
    missing = [t.name for t in cfg.targets if t.ttl is None]
    if missing:
        t = next(t for t in cfg.targets if t.name == missing[0])
        via = f", the environment variable {t.ttl_env}" if t.ttl_env else ""
        raise ConfigError(
            f"targets.{t.name}: no TTL (neither --ttl {t.name}=D{via}, nor ttl in the file)",
            hint=f'set ttl = "7d" in its [[targets]] table, or plan --ttl {t.name}=7d',
        )
    state = StateLayout(Path(cfg.state_dir))
    doc = jsondoc.load(cfg.catalog_path)
    specs = {t.name: collection_spec(t) for t in cfg.targets}
    owners = _owners(specs)
    targets: list[DocTarget] = []
    reports: list[TargetReport] = []
    issues: list[RecordIssue] = []
    issues_count = 0
    for t in cfg.targets:
        spec = specs[t.name]
        ttl = parse_duration(t.ttl or "")
        cutoff = now - ttl
        facts = jsondoc.records(doc, spec, owners)
        first = next(facts, None)  # a missing collection or owner: CatalogError, one line
        coll = _node(doc, spec.path)
        kept: Counter[str] = Counter()
        entries: list[DocEntry] = []
        considered = 0
        for f in itertools.chain((first,) if first is not None else (), facts):
            considered += 1
            if f.issues:
                for why in f.issues:
                    kept[why] += 1
                issues_count += 1
                if len(issues) < ISSUES_LISTED:
                    issues.append(
                        RecordIssue(
                            target=t.name, id=f.id, position=f.position, issues=list(f.issues)
                        )
                    )
            elif (reason := kept_because(f, cutoff)) is not None:
                kept[reason] += 1
            else:
                assert f.id is not None  # no issue: it has an id
                rec = coll[f.position]
                stamp = _stamp(rec, spec.timestamp)
                entries.append(DocEntry(id=f.id, fp=fingerprint(rec), time=stamp))
        source = cfg.sources.get(f"targets.{t.name}.ttl", "file")
        targets.append(
            DocTarget(
                spec=DocSpec(
                    name=spec.name,
                    path=spec.path,
                    id=spec.id,
                    timestamp=list(spec.timestamp),
                    state=spec.state,
                    terminal=list(spec.terminal),
                ),
                ttl=t.ttl or "",
                ttl_source=source,
                cutoff=format_instant(cutoff),
                considered=considered,
                kept=dict(sorted(kept.items())),
                entries=entries,
            )
        )
        reports.append(
            TargetReport(
                name=t.name,
                collection=t.collection,
                ttl=t.ttl,
                ttl_source=source,
                cutoff=format_instant(cutoff),
                considered=considered,
                delete_count=len(entries),
                kept_count=considered - len(entries),
                kept_by_reason=dict(sorted(kept.items())),
                eligible_terminal=list(t.terminal),
            )
        )
    from retention.manifest import load_key, sign_struct

    key, key_id = load_key(state, create=True)
    payload = _with_id(
        DocPayload(
            format=MANIFEST_FORMAT,
            version=MANIFEST_VERSION,
            manifest_id="",
            document=str(document_path(cfg)),
            document_digest=doc.digest,
            document_size=doc.size,
            lock_file=cfg.lock_file,
            now=format_instant(now),
            expires_at=format_instant(now + timedelta(seconds=cfg.manifest_ttl_seconds)),
            key_id=key_id,
            targets=targets,
        )
    )
    manifest = sign_struct(payload, key_id, key)
    report = JsondocPlanReport(
        manifest_id=payload.manifest_id,
        manifest=output,
        document=payload.document,
        document_digest=doc.digest,
        now=payload.now,
        expires_at=payload.expires_at,
        delete_count=sum(r.delete_count for r in reports),
        kept_count=sum(r.kept_count for r in reports),
        targets=reports,
        issues=issues,
        issues_count=issues_count,
    )
    return PlanResult(manifest, report)


# -- the workspace: lock and journal ----------------------------------------------------------


class Swap(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The journal record of a replacement of the document (written after BEGIN, before
    anything else): recovery compares the document's digest with these."""

    version: int = SWAP_VERSION
    document: str
    old_digest: str
    new_digest: str
    records: int  # removed (apply) or put back (undo)
    target: str | None = None  # undo: the apply whose tombstone it restores from
    rest: bool = False  # undo: some records were refused (staged in <txid>.rest.json)


class DocTomb(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A committed apply's tombstone in the state directory: undo's source."""

    format_version: int = TOMB_VERSION
    txid: str
    manifest_id: str
    created_at: str
    grace_until: str
    removed: Removed


class DocLogRecord(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What `retention log` shows of one apply, undo or purge of the document, kept in the
    state directory (``jsondoc/log/<txid>.json``): written before the commit point with the
    transaction's other staging files, removed if it rolls back."""

    format_version: int = LOG_VERSION
    txid: str
    action: Literal["apply", "undo", "purge"]
    at: str
    targets: list[str] = []  # undo, purge: the applies acted on
    records: dict[str, int]  # per target (record kind): removed, restored, made final
    bytes: int  # the records as the tombstone stores them (encoded JSON)
    user: str = ""  # (filled in by `_write_log`)
    host: str = ""
    manifest_id: str | None = None
    undo_until: str | None = None  # apply: its grace period's end


_swap_decoder = msgspec.msgpack.Decoder(Swap)


@dataclass
class DocWorkspace:
    cfg: Config
    state: StateLayout
    journal: Journal

    @property
    def tomb_dir(self) -> Path:
        return self.state.root / STATE_SUBDIR

    def tomb(self, txid: str) -> Path:
        return self.tomb_dir / f"{txid}.json"

    def undone(self, txid: str) -> Path:
        return self.tomb_dir / f"{txid}.undone"

    @property
    def log_dir(self) -> Path:
        return self.tomb_dir / "log"

    def log(self, txid: str) -> Path:
        return self.log_dir / f"{txid}.json"

    def rest(self, txid: str) -> Path:
        return self.tomb_dir / f"{txid}.rest.json"


@contextlib.contextmanager
def open_doc_workspace(cfg: Config) -> Iterator[DocWorkspace]:
    """The workspace lock (the SQL path's), the journal; the document must exist."""
    from retention.workspace import open_journal, workspace_lock

    path = Path(cfg.catalog_path)
    if not path.exists():  # before creating a state directory for a mistyped path
        jsondoc.load(path)
    state = StateLayout(Path(cfg.state_dir))
    with SIGNALS.catching(), workspace_lock(state):
        journal = open_journal(state)
        try:
            yield DocWorkspace(cfg, state, journal)
        finally:
            journal.close()


def _write_file(path: Path, data: bytes) -> None:
    try:
        fsio.ensure_dir(path.parent)
        fsio.write_atomic(path, data, 0o600)
    except OSError as exc:
        raise StorageError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="free space or fix the state directory's permissions, then run the command"
            " again (nothing was changed in the document)",
        ) from None


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsio.fsync_dir(path.parent)


def read_tomb(path: Path) -> DocTomb:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read the tombstone {path}: {exc.strerror or exc}") from None
    try:
        tomb = msgspec.json.decode(data, type=DocTomb)
    except msgspec.MsgspecError as exc:
        raise RecoveryError(f"tombstone {path} is damaged: {exc}") from None
    if tomb.format_version != TOMB_VERSION:
        raise UndoRefused(
            f"tombstone {path} has format {tomb.format_version}; this retention reads"
            f" {TOMB_VERSION}",
            hint="undo with the retention version that applied",
        )
    return tomb


def _swap_of(tx: TxState) -> Swap | None:
    for rec in tx.records:
        if rec.kind == KIND_SWAP:
            return _swap_decoder.decode(rec.payload)
    return None


def _lock_wait(cfg: Config) -> float:
    """How long the replacement waits for the application's lock file: catalog.busy_timeout
    (how long a write waits for the application's writers, as on SQLite)."""
    return cfg.busy_timeout_ms / 1000


def _new_txid(op: str, now: datetime) -> str:
    from retention.coordinator import new_txid

    return new_txid(op, now)


# -- recover ----------------------------------------------------------------------------------

Resolution = Literal["committed", "rolled-back"]


def _finish(ws: DocWorkspace, op: str, txid: str, swap: Swap | None) -> None:
    """What is left after the commit point: an undo marks its apply undone (or puts what it
    refused in place as the apply's tombstone); an apply has nothing left."""
    if op == "undo" and swap is not None and swap.target is not None:
        target = swap.target
        rest = ws.rest(txid)
        if swap.rest:  # the refused records stay undoable: they become the tombstone
            if rest.exists():  # (else already done by an earlier try)
                os.replace(rest, ws.tomb(target))
                fsio.fsync_dir(rest.parent)
        elif ws.tomb(target).exists():
            os.replace(ws.tomb(target), ws.undone(target))
            fsio.fsync_dir(ws.tomb_dir)


def _roll_back(ws: DocWorkspace, op: str, txid: str) -> None:
    """Before the commit point: an apply's tombstone goes, an undo's staging file goes, and
    either's log record."""
    _unlink(ws.tomb(txid) if op == "apply" else ws.rest(txid))
    _unlink(ws.log(txid))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _write_log(ws: DocWorkspace, record: DocLogRecord) -> None:
    from retention.tombstones import current_host, current_user

    record.user, record.host = current_user(), current_host()
    _write_file(ws.log(record.txid), msgspec.json.encode(record))


def recover_tx(ws: DocWorkspace, tx: TxState, resolve: Resolution | None = None) -> Recovered:
    begin = txrecords.decode_begin(tx.begin)
    op = begin.op
    here = str(document_path(ws.cfg))
    if begin.catalog_id != here:  # another catalog's (an SQL one's, or another document's)
        raise RecoveryError(
            f"the journal {ws.state.journal} holds {op} {tx.txid}, interrupted, of another"
            f" catalog ({begin.catalog_id or begin.artifact_root}); this configuration's is"
            f" {here}",
            hint="run `retention recover` with the configuration that started it (same"
            " state.dir), then this command again",
        )
    swap = _swap_of(tx)
    j = ws.journal
    records = swap.records if swap is not None else 0
    resolved = False
    if tx.status is TxStatus.COMMITTED:
        forward = True
    elif tx.status is TxStatus.ABORTED or swap is None:
        forward = False  # no digests journaled: nothing was written yet
    else:
        where = jsondoc.commit_state(swap.document, swap.old_digest, swap.new_digest)
        if where == "other" and resolve is None:
            raise RecoveryError(
                f"cannot tell whether {op} {tx.txid} replaced {swap.document}: the document"
                " is neither the one it read nor the one it wrote (rewritten since, or gone)",
                hint=f"look for the {records} record(s) of {op} {tx.txid} (tombstone"
                f" {ws.tomb(tx.txid if op == 'apply' else (swap.target or ''))}): if"
                f" the {op} took effect, run `retention recover --resolve committed`, else"
                " `retention recover --resolve rolled-back`",
            )
        resolved = where == "other"
        forward = where == "new" if not resolved else resolve == "committed"
    SIGNALS.phase = "recovering"
    if forward:
        j.commit(tx.txid)
        _finish(ws, op, tx.txid, swap)
        action = "rolled forward"
    else:
        j.abort(tx.txid)
        _roll_back(ws, op, tx.txid)
        action = "rolled back"
    if resolved:
        action += f" (--resolve {resolve})"
    failpoint("recover.before_done")
    j.done(tx.txid)
    return Recovered(tx.txid, f"jsondoc-{op}", action, records if forward else 0)


def recover_all(ws: DocWorkspace, resolve: Resolution | None = None) -> list[Recovered]:
    out = [recover_tx(ws, tx, resolve) for tx in ws.journal.unfinished()]
    jsondoc.remove_temp_files(ws.cfg.catalog_path)
    with contextlib.suppress(OSError):
        ws.journal.reset_if_idle()
    return out


def recover(cfg: Config, resolve: Resolution | None = None) -> JsondocRecoverReport:
    t0 = datetime.now(UTC)
    with open_doc_workspace(cfg) as ws:
        temps = [str(p) for p in jsondoc.temp_files(cfg.catalog_path)]
        unfinished = ws.journal.unfinished()
        if resolve is not None and not unfinished:
            raise UsageError("--resolve: there is no interrupted transaction to resolve")
        recovered = recover_all(ws, resolve)
    return JsondocRecoverReport(
        recovered=recovered, temp_files_removed=temps, duration_ms=_ms_since(t0)
    )


def _ms_since(t0: datetime) -> int:
    return int((datetime.now(UTC) - t0).total_seconds() * 1000)


# -- apply --------------------------------------------------------------------------------


def _present(doc: Document, spec: CollectionSpec, wanted: set[str]) -> dict[str, Any]:
    """id -> record for the wanted ids that address exactly one record now (an id two
    records carry addresses none: `jsondoc.remove` would refuse it). Ids are read as
    `jsondoc.records` reads them: a map's key for ``@key``, else the field's string, or
    its integer in decimal."""
    try:
        coll = _node(doc, spec.path)
    except (KeyError, TypeError):
        return {}
    if isinstance(coll, dict) and spec.id == jsondoc.KEY_ID:
        return {i: coll[i] for i in wanted if i in coll}
    if not isinstance(coll, list | dict) or spec.id == jsondoc.KEY_ID:
        return {}
    found: dict[str, Any] = {}
    twice: set[str] = set()
    field = spec.id
    for rec in coll.values() if isinstance(coll, dict) else coll:
        if type(rec) is not dict:
            continue
        v = rec.get(field)
        rid = v if type(v) is str else str(v) if type(v) is int else None
        if rid is not None and rid in wanted:
            if rid in found:
                twice.add(rid)
            found[rid] = rec
    for rid in twice:
        del found[rid]
    return found


_GONE = object()


def apply(cfg: Config, manifest: str, now: datetime | None = None) -> JsondocApplyReport:
    t0 = datetime.now(UTC)
    now = now or t0
    with open_doc_workspace(cfg) as ws, without_cyclic_gc():
        recovered = recover_all(ws)
        SIGNALS.phase = "before"
        payload = verify_manifest(cfg, manifest, now)
        doc = jsondoc.load(cfg.catalog_path)
        removals: dict[str, list[str]] = {}
        skipped: list[SkippedRecord] = []
        specs: dict[str, CollectionSpec] = {}
        # The very document the plan read (its digest is in the signed manifest): every entry
        # is there, unchanged, by construction; else each record is looked up and compared.
        unchanged = doc.digest == payload.document_digest
        for t in payload.targets:
            spec = t.spec.collection()
            specs[spec.name] = spec
            if unchanged:
                removals[spec.name] = [e.id for e in t.entries]
                continue
            present = _present(doc, spec, {e.id for e in t.entries})
            ids: list[str] = []
            for e in t.entries:
                rec = present.get(e.id, _GONE)
                if rec is _GONE:
                    skipped.append(SkippedRecord(target=spec.name, id=e.id, reason="gone"))
                elif fingerprint(rec) != e.fp:
                    reason = "changed since the plan"
                    skipped.append(SkippedRecord(target=spec.name, id=e.id, reason=reason))
                else:
                    ids.append(e.id)
            removals[spec.name] = ids
        total = sum(len(v) for v in removals.values())
        SIGNALS.stop("nothing was deleted")
        txid: str | None = None
        new_digest: str | None = None
        undo_until: str | None = None
        if total:
            wanted = {name: ids for name, ids in removals.items() if ids}
            new_bytes, removed = jsondoc.remove(doc, wanted, specs)
            txid = _new_txid("apply", now)
            grace = now + timedelta(seconds=cfg.grace_seconds)
            undo_until = format_instant(grace)
            begin = txrecords.Begin(
                op="apply",
                manifest_id=payload.manifest_id,
                catalog_id=payload.document,
                artifact_root="",
                created_at=format_instant(now),
                grace_until=undo_until,
            )
            swap = Swap(
                document=str(document_path(cfg)),
                old_digest=doc.digest,
                new_digest=removed.new_digest,
                records=removed.count(),
            )
            j = ws.journal
            j.begin(txid, txrecords.encode(begin))
            j.append(txid, KIND_SWAP, msgspec.msgpack.encode(swap))
            failpoint("jobstore.apply.after_begin")
            tomb = DocTomb(
                txid=txid,
                manifest_id=payload.manifest_id,
                created_at=format_instant(now),
                grace_until=undo_until,
                removed=removed,
            )
            try:
                tomb_bytes = msgspec.json.encode(tomb)
                _write_file(ws.tomb(txid), tomb_bytes)
                _write_log(
                    ws,
                    DocLogRecord(
                        txid=txid,
                        action="apply",
                        at=format_instant(now),
                        records={n: len(r.records) for n, r in removed.collections.items()},
                        bytes=len(tomb_bytes),
                        manifest_id=payload.manifest_id,
                        undo_until=undo_until,
                    ),
                )
                failpoint("jobstore.apply.after_tombstone")
                SIGNALS.stop("nothing was deleted")
                new_digest = jsondoc.replace(
                    cfg.catalog_path, new_bytes, doc.digest, cfg.lock_file, _lock_wait(cfg)
                )
            except (CatalogError, Interrupted, StorageError):  # before the commit point
                j.abort(txid)  # (changed meanwhile, the application's lock held, a signal)
                _roll_back(ws, "apply", txid)
                j.done(txid)
                raise
            except OSError:  # disk full...: rolled back here if the document is untouched
                if jsondoc.commit_state(swap.document, swap.old_digest, swap.new_digest) == "old":
                    j.abort(txid)
                    _roll_back(ws, "apply", txid)
                    j.done(txid)
                raise
            SIGNALS.committed()
            failpoint("jobstore.apply.after_replace")
            j.commit(txid)
            j.done(txid)
            with contextlib.suppress(OSError):
                j.reset_if_idle()
        deleted = dict(removals)
        reports = []
        for t in payload.targets:
            n = len(removals[t.spec.name])
            stale = sum(1 for s in skipped if s.target == t.spec.name)
            reports.append(
                TargetReport(
                    name=t.spec.name,
                    collection=t.spec.path,
                    ttl=t.ttl,
                    ttl_source=t.ttl_source,
                    cutoff=t.cutoff,
                    considered=t.considered,
                    delete_count=n,
                    kept_count=t.considered - n,
                    kept_by_reason=t.kept,
                    eligible_terminal=t.spec.terminal,
                    skipped_count=stale,
                )
            )
    report = JsondocApplyReport(
        txid=txid,
        manifest_id=payload.manifest_id,
        document=payload.document,
        old_digest=doc.digest,
        new_digest=new_digest,
        delete_count=total,
        deleted_ids=deleted,
        skipped=skipped,
        targets=reports,
        recovered=recovered,
        undo_until=undo_until,
        duration_ms=_ms_since(t0),
    )
    if SIGNALS.signum is not None and txid is not None:
        from retention.coordinator import interruption

        report.interrupted = interruption(
            f"Interrupted ({SIGNALS.name}) after the commit: the apply {txid} was finished."
        )
    return report


# -- undo and purge ------------------------------------------------------------------------


class _RecordHead(msgspec.Struct):
    id: str


class _SetHead(msgspec.Struct):
    records: list[_RecordHead]


class _RemovedHead(msgspec.Struct):
    collections: dict[str, _SetHead]


class TombHead(msgspec.Struct, kw_only=True):
    """A tombstone without its records' contents (listing many is cheap)."""

    format_version: int
    txid: str
    manifest_id: str
    created_at: str
    grace_until: str
    removed: _RemovedHead

    def counts(self) -> dict[str, int]:
        return {name: len(s.records) for name, s in self.removed.collections.items()}


def tomb_paths(ws: DocWorkspace) -> list[Path]:
    """The tombstone files of the state directory (one per undoable apply), by name."""
    try:
        names = sorted(os.listdir(ws.tomb_dir))
    except FileNotFoundError:
        return []
    return [ws.tomb_dir / n for n in names if n.endswith(".json") and not n.endswith(".rest.json")]


def _tombs(ws: DocWorkspace) -> list[TombHead]:
    """Every undoable apply (a committed tombstone not undone), newest first."""
    out = []
    for path in tomb_paths(ws):
        try:
            head = msgspec.json.decode(path.read_bytes(), type=TombHead)
        except OSError as exc:
            raise StorageError(f"cannot read the tombstone {path}: {exc.strerror or exc}") from None
        except msgspec.MsgspecError:
            head = None
        if head is None or head.format_version != TOMB_VERSION:
            read_tomb(path)  # raises what is wrong with it
        assert head is not None
        out.append(head)
    return sorted(out, key=lambda t: (t.created_at, t.txid), reverse=True)


def undo(
    cfg: Config,
    *,
    txid: str | None,
    within: timedelta | None,
    now: datetime | None = None,
) -> JsondocUndoReport:
    t0 = datetime.now(UTC)
    now = now or t0
    with open_doc_workspace(cfg) as ws, without_cyclic_gc():
        recovered = recover_all(ws)
        SIGNALS.phase = "before"
        tombs = _tombs(ws)
        if txid is not None:
            chosen = [t for t in tombs if t.txid == txid]
            if not chosen:
                if ws.undone(txid).exists():
                    raise UndoRefused(f"apply {txid} was already undone")
                raise UndoRefused(
                    f"no undoable apply with txid {txid} on {cfg.catalog_path}",
                    hint="see the txid in apply's report; purged applies cannot be undone",
                )
        else:
            assert within is not None
            since = now - within
            chosen = [t for t in tombs if parse_instant(t.created_at) >= since]
        undone: list[UndoneApply] = []
        for head in chosen:
            undone.append(_undo_one(ws, read_tomb(ws.tomb(head.txid)), now))
        restored = sum(sum(len(v) for v in u.restored.values()) for u in undone)
        refused = sum(sum(len(v) for v in u.refused.values()) for u in undone)
    report = JsondocUndoReport(
        document=str(document_path(cfg)),
        restored_count=restored,
        refused_count=refused,
        undone=undone,
        recovered=recovered,
        duration_ms=_ms_since(t0),
    )
    if SIGNALS.signum is not None and undone:
        from retention.coordinator import interruption

        report.interrupted = interruption(
            f"Interrupted ({SIGNALS.name}) after the commit: the undo was finished."
        )
    return report


def _undo_one(ws: DocWorkspace, tomb: DocTomb, now: datetime) -> UndoneApply:
    cfg = ws.cfg
    doc = jsondoc.load(cfg.catalog_path)
    new_bytes, refused = jsondoc.restore(doc, tomb.removed)
    restored: dict[str, list[str]] = {}
    rest_sets: dict[str, jsondoc.RemovedSet] = {}
    for name, rset in tomb.removed.collections.items():
        why = refused.get(name, {})
        restored[name] = [r.id for r in rset.records if r.id not in why]
        if why:
            keep = [r for r in rset.records if r.id in why]
            rest_sets[name] = msgspec.structs.replace(rset, records=keep, missing=[])
    count = sum(len(v) for v in restored.values())
    txid = _new_txid("undo", now)
    if count == 0:  # everything refused: nothing to write, the apply stays undoable
        return UndoneApply(txid=txid, target=tomb.txid, restored=restored, refused=refused)
    SIGNALS.stop("nothing was restored")
    new_digest = jsondoc.digest(new_bytes)
    begin = txrecords.Begin(
        op="undo",
        catalog_id=str(document_path(cfg)),
        artifact_root="",
        created_at=format_instant(now),
        targets=[tomb.txid],
    )
    swap = Swap(
        document=str(document_path(cfg)),
        old_digest=doc.digest,
        new_digest=new_digest,
        records=count,
        target=tomb.txid,
        rest=bool(rest_sets),
    )
    j = ws.journal
    j.begin(txid, txrecords.encode(begin))
    j.append(txid, KIND_SWAP, msgspec.msgpack.encode(swap))
    failpoint("jobstore.undo.after_begin")
    try:
        if rest_sets:
            rest = msgspec.structs.replace(
                tomb,
                removed=msgspec.structs.replace(
                    tomb.removed, new_digest=new_digest, collections=rest_sets
                ),
            )
            _write_file(ws.rest(txid), msgspec.json.encode(rest))
        _write_log(
            ws,
            DocLogRecord(
                txid=txid,
                action="undo",
                at=format_instant(now),
                targets=[tomb.txid],
                records={n: len(v) for n, v in restored.items() if v},
                bytes=0,
            ),
        )
        SIGNALS.stop("nothing was restored")
        jsondoc.replace(cfg.catalog_path, new_bytes, doc.digest, cfg.lock_file, _lock_wait(cfg))
    except (CatalogError, Interrupted, StorageError):  # before the commit point
        j.abort(txid)
        _roll_back(ws, "undo", txid)
        j.done(txid)
        raise
    SIGNALS.committed()
    failpoint("jobstore.undo.after_replace")
    j.commit(txid)
    failpoint("jobstore.undo.before_done")
    _finish(ws, "undo", txid, swap)
    j.done(txid)
    with contextlib.suppress(OSError):
        j.reset_if_idle()
    return UndoneApply(txid=txid, target=tomb.txid, restored=restored, refused=refused)


def purge(cfg: Config, *, everything: bool, now: datetime | None = None) -> JsondocPurgeReport:
    """Forget tombstones whose grace period is over (all with ``everything``): their
    applies can no longer be undone. Undone applies' markers go too."""
    t0 = datetime.now(UTC)
    now = now or t0
    with open_doc_workspace(cfg) as ws:
        recovered = recover_all(ws)
        chosen = [t for t in _tombs(ws) if everything or parse_instant(t.grace_until) <= now]
        records = sum(sum(t.counts().values()) for t in chosen)
        if chosen:  # the log record first: a purge killed midway is logged, then redone
            per_target: Counter[str] = Counter()
            for t in chosen:
                per_target.update(t.counts())
            _write_log(
                ws,
                DocLogRecord(
                    txid=_new_txid("purge", now),
                    action="purge",
                    at=format_instant(now),
                    targets=[t.txid for t in chosen],
                    records=dict(per_target),
                    bytes=sum(_size(ws.tomb(t.txid)) for t in chosen),
                ),
            )
        purged: list[str] = []
        for tomb in chosen:
            _unlink(ws.tomb(tomb.txid))
            purged.append(tomb.txid)
        with contextlib.suppress(FileNotFoundError):
            for name in sorted(os.listdir(ws.tomb_dir)):
                if name.endswith(".undone"):
                    _unlink(ws.tomb_dir / name)
    return JsondocPurgeReport(
        purged=purged, records=records, recovered=recovered, duration_ms=_ms_since(t0)
    )


# -- lines for people ---------------------------------------------------------------------------


def _kept_text(kept: Mapping[str, int]) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in kept.items()) or "none"


def plan_lines(report: JsondocPlanReport) -> list[str]:
    out = [
        f"Plan {report.manifest_id} for {report.document}: {report.delete_count:,} record(s)"
        f" to delete, {report.kept_count:,} kept."
    ]
    for t in report.targets:
        out.append(
            f"  {t.name}: delete {t.delete_count:,} of {t.considered:,} (ttl {t.ttl},"
            f" {t.ttl_source}; terminal: {', '.join(t.eligible_terminal)}); kept:"
            f" {_kept_text(t.kept_by_reason)}"
        )
    if report.issues_count:
        out.append(
            f"  {report.issues_count:,} record(s) kept for an issue (no or a malformed"
            " timestamp, owner missing, ...): listed in the JSON report (--output-json)"
        )
    where = report.manifest or "stdout"
    out.append(f"Manifest written to {where}; expires {report.expires_at}.")
    return out


def apply_lines(report: JsondocApplyReport) -> list[str]:
    out: list[str] = [f"Recovered {r.op} {r.txid}: {r.action}." for r in report.recovered]
    if report.txid is None:
        out.append(f"Nothing to delete in {report.document} (delete_count 0).")
    else:
        out.append(
            f"Applied {report.txid}: deleted {report.delete_count:,} record(s) from"
            f" {report.document}; undo until {report.undo_until}"
            f" (retention undo {report.txid})."
        )
    for t in report.targets:
        out.append(f"  {t.name}: {t.delete_count:,} deleted, {t.kept_count:,} kept")
    if report.skipped:
        reasons = Counter(s.reason for s in report.skipped)
        text = ", ".join(f"{n:,} {why}" for why, n in reasons.items())
        out.append(f"Skipped {len(report.skipped):,} record(s) of the plan: {text}.")
    return out


def undo_lines(report: JsondocUndoReport) -> list[str]:
    out = [f"Recovered {r.op} {r.txid}: {r.action}." for r in report.recovered]
    if not report.undone:
        out.append("Nothing to undo.")
    for u in report.undone:
        n = sum(len(v) for v in u.restored.values())
        refused = sum(len(v) for v in u.refused.values())
        out.append(f"Undid {u.target} ({u.txid}): restored {n:,} record(s).")
        if refused:
            out.append(
                f"  {refused:,} record(s) refused (their id exists again); they stay"
                f" undoable: retention undo {u.target}"
            )
    return out


def recover_lines(report: JsondocRecoverReport) -> list[str]:
    out = [f"Recovered {r.op} {r.txid}: {r.action}." for r in report.recovered]
    if report.temp_files_removed:
        out.append(f"Removed {len(report.temp_files_removed)} leftover temp file(s).")
    return out or ["Nothing to recover."]


def purge_lines(report: JsondocPurgeReport) -> list[str]:
    if not report.purged:
        return ["Nothing to purge."]
    return [
        f"Purged the tombstones of {len(report.purged):,} apply(s) ({report.records:,}"
        " record(s)); they can no longer be undone."
    ]


def detail_lines(command: str, report: Any) -> list[str]:
    """-v: every deleted, skipped or restored record."""
    lines: list[str] = []
    if isinstance(report, JsondocApplyReport):
        for name, ids in report.deleted_ids.items():
            lines += [f"Deleted {name} {rid}" for rid in ids]
        lines += [f"Skipped {s.target} {s.id}: {s.reason}" for s in report.skipped]
    elif isinstance(report, JsondocUndoReport):
        for u in report.undone:
            for name, ids in u.restored.items():
                lines += [f"Restored {name} {rid} (from {u.target})" for rid in ids]
            for name, why in u.refused.items():
                lines += [f"Refused {name} {rid}: {text}" for rid, text in why.items()]
    elif isinstance(report, JsondocPurgeReport):
        lines += [f"Purged the tombstone of {t}" for t in report.purged]
    return lines


def metrics_outcome(command: str, report: Any, code: int, elapsed: float) -> Any:
    """The metrics file's `Outcome` of a JSON-document catalog's command (records, no
    bytes: the records have no artifact directories)."""
    import time

    from retention.metrics import Outcome

    out = Outcome(command, code, elapsed, time.time())
    if isinstance(report, JsondocApplyReport):
        out.runs = {"deleted": report.delete_count, "skipped": len(report.skipped)}
    elif isinstance(report, JsondocUndoReport):
        out.runs = {"restored": report.restored_count, "conflicts": report.refused_count}
    elif isinstance(report, JsondocPurgeReport):
        out.runs = {"purged": report.records}
    return out


# -- show and status (read-only) ----------------------------------------------------------------


class ShownTarget(msgspec.Struct, kw_only=True):
    name: str
    collection: str
    ttl: str
    ttl_source: str
    cutoff: str
    considered: int
    delete_count: int
    kept_by_reason: dict[str, int]
    eligible_terminal: list[str]
    still_there: int  # of its entries, unchanged in the document now
    ids: list[str]  # the first --top (all with --json)


class JsondocShowReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    manifest_id: str
    document: str
    document_digest: str  # when planned
    unchanged_since_plan: bool
    now: str
    expires_at: str
    delete_count: int
    still_there: int
    targets: list[ShownTarget]


def show(cfg: Config, manifest: str, now: datetime, top: int | None) -> JsondocShowReport:
    """Verify a manifest (signature, expiry, document) and say what it would delete, and
    how much of it the document still holds unchanged (read-only)."""
    payload = verify_manifest(cfg, manifest, now)
    with without_cyclic_gc():
        doc = jsondoc.load(cfg.catalog_path)
        targets = []
        for t in payload.targets:
            present = _present(doc, t.spec.collection(), {e.id for e in t.entries})
            there = sum(
                1 for e in t.entries if e.id in present and fingerprint(present[e.id]) == e.fp
            )
            ids = [e.id for e in t.entries]
            targets.append(
                ShownTarget(
                    name=t.spec.name,
                    collection=t.spec.path,
                    ttl=t.ttl,
                    ttl_source=t.ttl_source,
                    cutoff=t.cutoff,
                    considered=t.considered,
                    delete_count=len(t.entries),
                    kept_by_reason=t.kept,
                    eligible_terminal=t.spec.terminal,
                    still_there=there,
                    ids=ids if top is None else ids[:top],
                )
            )
    return JsondocShowReport(
        manifest_id=payload.manifest_id,
        document=payload.document,
        document_digest=payload.document_digest,
        unchanged_since_plan=doc.digest == payload.document_digest,
        now=payload.now,
        expires_at=payload.expires_at,
        delete_count=sum(t.delete_count for t in targets),
        still_there=sum(t.still_there for t in targets),
        targets=targets,
    )


def show_lines(report: JsondocShowReport) -> list[str]:
    changed = (
        "unchanged since the plan"
        if report.unchanged_since_plan
        else f"changed since the plan: {report.still_there:,} of its records are still there"
        " unchanged (apply skips the others)"
    )
    out = [
        f"Manifest {report.manifest_id} for {report.document}, planned at {report.now}, valid"
        f" until {report.expires_at}: signature OK.",
        f"{report.delete_count:,} record(s) to delete; the document is {changed}.",
    ]
    for t in report.targets:
        out.append(
            f"  {t.name} ({t.collection}): {t.delete_count:,} of {t.considered:,}, at or before"
            f" {t.cutoff} (ttl {t.ttl}, {t.ttl_source}), jobs {', '.join(t.eligible_terminal)};"
            f" kept: {_kept_text(t.kept_by_reason)}"
        )
        out += [f"    {rid}" for rid in t.ids]
        if len(t.ids) < t.delete_count:
            out.append(f"    ... and {t.delete_count - len(t.ids):,} more (--top N, --json)")
    return out


class TxLine(msgspec.Struct, kw_only=True):
    txid: str
    op: str
    records: int


class UndoableApply(msgspec.Struct, kw_only=True):
    txid: str
    manifest_id: str
    created_at: str
    grace_until: str
    records: dict[str, int]  # per target


class JsondocStatusReport(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    document: str
    document_digest: str | None
    running: str | None  # the process holding the workspace lock, if any
    interrupted: list[TxLine]
    undoable: list[UndoableApply]
    undone: list[str]


def status(cfg: Config, now: datetime) -> JsondocStatusReport:
    """Interrupted transactions, undoable applies and their deadlines (read-only)."""
    from journal import replay
    from retention.workspace import describe_holder, live_holder

    state = StateLayout(Path(cfg.state_dir))
    holder = live_holder(state)
    interrupted = []
    for txid, tx in replay(state.journal).items():
        if tx.status is not TxStatus.DONE:
            swap = _swap_of(tx)
            op = txrecords.decode_begin(tx.begin).op
            interrupted.append(TxLine(txid=txid, op=op, records=swap.records if swap else 0))
    ws = DocWorkspace(cfg, state, None)  # type: ignore[arg-type]  # (paths only)
    uncommitted = {i.txid for i in interrupted}  # their tombstones are not undoable yet
    undoable = [
        UndoableApply(
            txid=t.txid,
            manifest_id=t.manifest_id,
            created_at=t.created_at,
            grace_until=t.grace_until,
            records=t.counts(),
        )
        for t in _tombs(ws)
        if t.txid not in uncommitted
    ]
    try:
        undone = sorted(
            n.removesuffix(".undone") for n in os.listdir(ws.tomb_dir) if n.endswith(".undone")
        )
    except FileNotFoundError:
        undone = []
    return JsondocStatusReport(
        document=str(document_path(cfg)),
        document_digest=jsondoc.digest_of(cfg.catalog_path),
        running=describe_holder(holder, now) if holder is not None else None,
        interrupted=interrupted,
        undoable=undoable,
        undone=undone,
    )


def status_lines(report: JsondocStatusReport, now: datetime) -> list[str]:
    out = [f"Document: {report.document}" + ("" if report.document_digest else " (missing)")]
    if report.running:
        out.append(f"Running: {report.running}")
    if report.interrupted and not report.running:
        out.append("Interrupted transactions (run retention recover):")
        out += [f"  {t.op} {t.txid} ({t.records:,} record(s))" for t in report.interrupted]
    if not report.undoable:
        out.append("Nothing to undo.")
    else:
        out.append("Undoable applies, newest first:")
    for a in report.undoable:
        total = sum(a.records.values())
        parts = ", ".join(f"{n:,} {name}" for name, n in a.records.items() if n)
        left = parse_instant(a.grace_until) - now
        when = (
            f"grace period ends in {format_duration(left.total_seconds())}"
            if left.total_seconds() > 0
            else "grace period over: `retention purge` forgets it"
        )
        out.append(f"  {a.txid} at {a.created_at}: {total:,} record(s) ({parts}); {when}")
    if report.undone:
        out.append(f"Undone: {', '.join(report.undone)}")
    return out


# -- config --check --------------------------------------------------------------------------


class TargetCheck(msgspec.Struct, kw_only=True):
    name: str
    collection: str
    kind: str | None  # "list" | "map"; None when the collection is not in the document
    records: int
    issues: dict[str, int]  # why records would be kept whatever their age (constants)
    states: dict[str, int]  # state -> records (terminal or not)
    ttl: str | None


class JsondocConfigCheck(msgspec.Struct, kw_only=True):
    version: int = REPORT_VERSION
    document: str
    size: int | None
    targets: list[TargetCheck]
    problems: list[str]


def check_config(cfg: Config) -> JsondocConfigCheck:
    """``config --check`` on a JSON-document catalog: every target's collection read from
    the document, with its records, their states and what would keep them whatever their
    age; every problem (each on its own line), not only the first. Read-only."""
    problems: list[str] = []
    checks: list[TargetCheck] = []
    try:
        doc = jsondoc.load(cfg.catalog_path)
    except CatalogError as exc:
        return JsondocConfigCheck(
            document=str(cfg.catalog_path), size=None, targets=[], problems=[exc.message]
        )
    specs = {t.name: collection_spec(t) for t in cfg.targets}
    with without_cyclic_gc():
        for t in cfg.targets:
            if t.ttl is None:
                problems.append(f"targets.{t.name}: no TTL (ttl, ttl_env or --ttl)")
            issues: Counter[str] = Counter()
            states: Counter[str] = Counter()
            n = 0
            kind: str | None = None
            try:
                for f in jsondoc.records(doc, specs[t.name], _owners(specs)):
                    n += 1
                    issues.update(f.issues)
                    states[f.state or "(none)"] += 1
                kind = "map" if isinstance(_node(doc, t.collection), dict) else "list"
            except CatalogError as exc:
                problems.append(f"targets.{t.name}: {exc.message}")
            checks.append(
                TargetCheck(
                    name=t.name,
                    collection=t.collection,
                    kind=kind,
                    records=n,
                    issues=dict(sorted(issues.items())),
                    states=dict(sorted(states.items())),
                    ttl=t.ttl,
                )
            )
    return JsondocConfigCheck(
        document=str(doc.path), size=doc.size, targets=checks, problems=problems
    )


def check_lines(check: JsondocConfigCheck) -> list[str]:
    out = [f"Document {check.document}" + (f": {check.size:,} bytes" if check.size else "")]
    for t in check.targets:
        if t.kind is None:
            continue
        states = ", ".join(f"{n:,} {s}" for s, n in t.states.items()) or "none"
        out.append(
            f"  {t.name}: {t.records:,} record(s) in {t.collection} (a {t.kind}), ttl"
            f" {t.ttl or '(none)'}; states: {states}"
        )
        if t.issues:
            kept = ", ".join(f"{n:,} {why}" for why, n in t.issues.items())
            out.append(f"    kept whatever their age: {kept}")
    return out
