"""`retention check`: compare catalog, disk, trash and journal both ways. Read-only.

Findings are data (`Finding`), not log lines, so tests can assert the list is empty after
every apply, undo, purge and crash recovery. What is checked:

* ``interrupted``: the journal holds an unfinished transaction whose process is gone (run
  `retention recover`); the detail says how many directories it moved and what recover
  would do with them. Its directories (in trash, or moved home by an undo) are its own,
  not orphans or missing runs: one finding per transaction, never one per directory. For a
  purge that was decided and stopped (trash it may not remove), the detail says so, and
  the runs it already removed are not reported as missing from trash;
* ``purge_unfinished``: an apply the catalog marks as being purged, with no unfinished
  purge in the journal to finish it;
* ``journal_corrupt``: the journal cannot be read;
* ``row_without_dir``: a run's row names an artifact directory that is not there;
* ``dir_without_row``: a directory at the template's depth under the artifact root that no
  run names (only for ``path_template`` layouts; a path column has no fixed depth);
* ``trash_missing``: a run deleted into trash whose directory is not in trash (not for an
  apply being purged: its trash goes one run at a time);
* ``trash_orphan``: something in trash that no tombstone, and no unfinished transaction's
  journaled intents, account for (``TRASH.json`` never is one);
* ``trash_unsafe``: an entry of ``.trash`` that is a symlink or not a directory (never
  followed: nothing is read through it).

A transaction that is RUNNING (a live process holds the workspace lock, see
`retention.status.observe`) is not a finding: the report names it (``running``, ``holder``)
and leaves out what involves its directories, which are moving while we look; with nothing
else found, the exit code is 0. The journal is read before and after the walk, so moves the
holder made meanwhile are covered by the intents it journaled before making them.

Findings come ordered by kind, causes first (`KIND_ORDER`); ``counts`` has the number per
kind. People get every kind with its count and at most ``--limit`` lines of it.

Not checked: sizes against the manifest (a manifest is a plan, not a record), the contents
of files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import msgspec

from journal import TxState, TxStatus
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import plural
from retention.layout import TRASH_DIRNAME, StateLayout, is_trash_index_name, trash_tx_rel
from retention.moves import moves_of
from retention.planner import artifact_rel_path
from retention.reports import LockHolder
from retention.status import (
    Interrupted,
    RunningTx,
    count_in_trash,
    interrupted_line,
    observe,
    running_line,
)
from retention.store import LocalStore, OutsideRoot, display, trash_problems
from retention.txrecords import Begin
from retention.workspace import describe_holder, stale_owner

# Causes first: what explains the findings after it comes before them.
KIND_ORDER = (
    "journal_corrupt",
    "interrupted",
    "purge_unfinished",
    "trash_unsafe",
    "trash_missing",
    "row_without_dir",
    "dir_without_row",
    "trash_orphan",
)
DEFAULT_LIMIT = 20  # lines per kind for people; --json has every finding


class Finding(msgspec.Struct):
    kind: str
    detail: str
    run_id: str | int | None = None
    path: str | None = None


class CheckReport(msgspec.Struct, kw_only=True):
    version: int = 1
    runs_checked: int
    findings: list[Finding]  # every finding, ordered by kind (causes first)
    counts: dict[str, int] = {}  # findings per kind
    # A live process holding the workspace lock, and its unfinished transactions: not
    # findings; what involves their directories is left out.
    holder: LockHolder | None = None
    running: list[RunningTx] = []
    # lock.owner left by a process that died holding the lock (with interrupted work).
    last_holder: LockHolder | None = None
    # A JSON-document catalog (`retention.jobstore_views`): records, not runs, were checked.
    document: str | None = None


def _interrupted(
    root: Path,
    unfinished: list[tuple[str, TxState, Begin]],
    purging: set[str],
    committed: set[str],
) -> list[Finding]:
    """One finding per interrupted transaction, naming what it moved and what recover would
    do; a purge that was decided (its applies are ``purging``) says that its runs are not
    missing."""
    out = []
    for t, tx, begin in unfinished:
        decided = begin.op == "purge" and set(begin.targets) & purging
        if decided:
            detail = (
                f"purge {t} of the trash of {', '.join(begin.targets)} did not finish: the"
                " runs it removed are not missing and the rest cannot be undone; run"
                " `retention recover` to finish it (if it stops, fix what it reports, e.g."
                " permissions in trash, and run it again)"
            )
        else:
            if tx.status is TxStatus.ACTIVE:
                would = "roll forward" if t in committed else "roll back"
            else:
                would = "roll forward" if tx.status is TxStatus.COMMITTED else "roll back"
            intents, in_trash = count_in_trash(root, tx)
            i = Interrupted(
                txid=t,
                op=begin.op,
                state=tx.status.value,
                recover_would=would,
                intents=intents,
                in_trash=in_trash,
            )
            detail = (
                f"transaction {interrupted_line(i)}; its directories are its own, not"
                " orphans or missing runs; run `retention recover`"
            )
        out.append(Finding("interrupted", detail, None, display(trash_tx_rel(t))))
    return out


class _Moving:
    """The journaled intents of unfinished (or just finished) transactions: directories
    that are legitimately at home or in trash while the catalog says otherwise."""

    def __init__(self, txs: Iterable[TxState]) -> None:
        self.home_to_trash: dict[bytes, bytes] = {}
        self.trash_to_home: dict[bytes, bytes] = {}
        for tx in txs:
            for m in moves_of(tx):
                self.home_to_trash[m.home] = m.trash
                self.trash_to_home[m.trash] = m.home


def check(cfg: Config) -> CheckReport:
    """Run every check (read-only) and return the findings; an empty list means consistent."""
    state = StateLayout(Path(cfg.state_dir))
    seen = observe(state)
    findings: list[Finding] = []
    if seen.journal_error is not None:
        findings.append(Finding("journal_corrupt", seen.journal_error, path=str(state.journal)))
    unfinished = seen.unfinished
    journal_ok = seen.journal_error is None
    root = Path(cfg.artifact_root)
    store = LocalStore(root)
    expected: set[bytes] = set()
    missing_homes: list[tuple[bytes, str | int]] = []
    with open_catalog(cfg) as cat:
        runs = cat.count_runs()
        for row in cat.iter_path_rows():  # only the columns a path needs, streamed
            try:
                rel = artifact_rel_path(cfg, row, root)
            except (OutsideRoot, ValueError):
                continue
            if rel is None:
                continue
            expected.add(rel)
            if not os.path.lexists(store.abspath(rel)):
                missing_homes.append((rel, row[cfg.id_column]))
        in_trash = cat.trash_slots()
        purging = {r["txid"] for r in cat.applies() if r["state"] == "purging"}
        committed = {t for t, _, _ in unfinished if cat.tx_row(t) is not None}
    unsafe = trash_problems(root)
    orphans: list[bytes] = []
    unsafe_names = {os.fsdecode(rel).split("/", 1)[1] for rel, _ in unsafe}
    trash_root = root / TRASH_DIRNAME
    if trash_root.is_dir() and not trash_root.is_symlink():
        for txdir in sorted(trash_root.iterdir()):
            if txdir.name in unsafe_names:
                continue
            for entry in sorted(txdir.iterdir()) if txdir.is_dir() else [txdir]:
                if txdir.is_dir() and is_trash_index_name(os.fsencode(entry.name)):
                    continue  # ours: what to put back by hand, never an orphan
                rel = os.fsencode(entry.relative_to(root))
                if rel not in in_trash:
                    orphans.append(rel)
    strays: list[bytes] = []
    if cfg.path_template and not cfg.path_column:
        depth = cfg.path_template.strip("/").count("/") + 1
        strays = [rel for rel in _walk_depth(store, depth) if rel not in expected]

    # Look again: a live holder's moves made during the walk were journaled before it made
    # them. While anyone held the workspace, every transaction seen counts (it may have
    # finished meanwhile); otherwise only the unfinished ones.
    end = observe(state)
    holder = end.holder or seen.holder
    txs = [tx for _, tx, _ in unfinished]
    if holder is not None:
        txs += list(end.txs.values())
    moving = _Moving(txs)

    def excused_home(rel: bytes) -> bool:
        """A run's home that an unfinished transaction emptied (its directory in trash)."""
        trash = moving.home_to_trash.get(rel)
        return trash is not None and (holder is not None or os.path.lexists(store.abspath(trash)))

    def excused_trash(rel: bytes) -> bool:
        """A trash slot that an unfinished undo emptied (its directory moved home)."""
        home = moving.trash_to_home.get(rel)
        return home is not None and (holder is not None or os.path.lexists(store.abspath(home)))

    running: list[RunningTx] = []
    if holder is not None:
        for t, tx, begin in (end if end.holder is not None else seen).unfinished:
            intents, moved = count_in_trash(root, tx)
            running.append(
                RunningTx(
                    txid=t, op=begin.op, state=tx.status.value, intents=intents, in_trash=moved
                )
            )
    else:
        # The cause first: an unfinished purge explains the runs gone from its trash (a
        # purge that was decided removes them one by one: none of them is missing).
        findings += _interrupted(root, unfinished, purging, committed)
    journaled = {t for _, _, b in unfinished if b.op == "purge" for t in b.targets}
    findings += [
        Finding(
            "purge_unfinished",
            f"the trash of {t} is being purged, but no unfinished purge is in the journal:"
            " its runs cannot be undone; what is left of it can be removed by hand",
            None,
            display(trash_tx_rel(t)),
        )
        for t in sorted(purging - journaled)
        if journal_ok and holder is None  # a corrupt journal is the finding then
    ]
    findings += [Finding("trash_unsafe", why, None, display(rel)) for rel, why in unsafe]
    for rel, rid in in_trash.items():
        if _tx_of(rel) in purging:
            continue
        if not os.path.lexists(store.abspath(rel)) and not excused_trash(rel):
            findings.append(
                Finding("trash_missing", "deleted run not found in trash", rid, display(rel))
            )
    findings += [
        Finding("row_without_dir", "the run's artifact directory is missing", rid, display(rel))
        for rel, rid in missing_homes
        if not excused_home(rel)
    ]
    findings += [
        Finding("dir_without_row", "no run names this directory", None, display(rel))
        for rel in strays
        if rel not in moving.home_to_trash
    ]
    findings += [
        Finding("trash_orphan", "no tombstone accounts for it", None, display(rel))
        for rel in orphans
        if rel not in moving.trash_to_home
    ]
    return report(state, runs, findings, holder, running)


def report(
    state: StateLayout,
    checked: int,
    findings: list[Finding],
    holder: LockHolder | None,
    running: list[RunningTx],
    kinds: tuple[str, ...] = KIND_ORDER,
    document: str | None = None,
) -> CheckReport:
    """The report of a check: findings ordered by ``kinds`` (causes first), counted per
    kind, and the process an interruption was last held by."""
    order = {k: n for n, k in enumerate(kinds)}
    findings.sort(key=lambda f: order.get(f.kind, len(order)))
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return CheckReport(
        runs_checked=checked,
        findings=findings,
        counts=counts,
        holder=holder,
        running=running,
        last_holder=stale_owner(state) if counts.get("interrupted") else None,
        document=document,
    )


def _tx_of(rel: bytes) -> str:
    """The txid of a path ``.trash/<txid>/...``."""
    parts = rel.split(b"/", 2)
    return parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""


def check_lines(rep: CheckReport, limit: int = DEFAULT_LIMIT) -> list[str]:
    """`retention check` for people: what is running, then each kind of finding (causes
    first) with its count and at most ``limit`` lines of it (0: all), then the totals."""
    lines = []
    if rep.holder is not None:
        for r in rep.running:
            lines.append(
                "Running: "
                + running_line(r.op, r.txid, rep.holder, r.intents, r.in_trash)
                + "; its directories are left out of the check."
            )
        if not rep.running:
            lines.append(
                f"Running: a retention process holds the workspace"
                f" ({describe_holder(rep.holder)}); what it changes during the check may show"
                " below: check again when it has finished."
            )
    unit = "run" if rep.document is None else "record"
    groups: dict[str, list[Finding]] = {}
    for f in rep.findings:
        groups.setdefault(f.kind, []).append(f)
    for kind, group in groups.items():
        details = {f.detail for f in group}
        shared = len(details) == 1 and len(group) > 1 and kind != "interrupted"
        head = f"{kind}: {plural(len(group), 'finding')}"
        lines.append(head + (f" ({group[0].detail})" if shared else ""))
        shown = group if limit <= 0 else group[:limit]
        for f in shown:
            subject = [f"{unit} {f.run_id}"] if f.run_id is not None else []
            if f.path and f.path != str(f.run_id) and kind != "interrupted":
                subject.append(f.path)
            what = " ".join(subject)
            if shared:
                lines.append(f"  {what}")
            else:
                lines.append("  " + (f"{what}: " if what else "") + f.detail)
        if len(shown) < len(group):
            lines.append(
                f"  ... and {len(group) - len(shown):,} more (`retention check --limit 0` or"
                " --json lists every one)"
            )
    if rep.last_holder is not None and rep.counts.get("interrupted"):
        lines.append(
            f"The interrupted work was last held by {describe_holder(rep.last_holder)},"
            " which is gone."
        )
    lines.append(
        f"{plural(rep.runs_checked, unit)} checked, {plural(len(rep.findings), 'finding')}."
    )
    return lines


def _walk_depth(store: LocalStore, depth: int) -> list[bytes]:
    """Entries exactly ``depth`` levels under the root: descends into real directories only
    (never through a symlink), skips the trash and hidden names at the top."""
    level = [b""]
    for n in range(depth):
        last = n == depth - 1
        nxt = []
        for rel in level:
            try:
                with os.scandir(store.abspath(rel) if rel else os.fsencode(store.root)) as it:
                    for e in it:
                        if not rel and e.name.startswith(b"."):
                            continue
                        if last or e.is_dir(follow_symlinks=False):
                            nxt.append(rel + b"/" + e.name if rel else e.name)
            except OSError:
                continue
        level = nxt
    return level
