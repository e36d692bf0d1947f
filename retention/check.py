"""`retention check`: compare catalog, disk, trash and journal both ways. Read-only.

Findings are data (`Finding`), not log lines, so tests can assert the list is empty after
every apply, undo, purge and crash recovery. What is checked:

* ``interrupted``: the journal holds an unfinished transaction (run `retention recover`);
  for a purge that was decided and stopped (trash it may not remove), the detail says so,
  and the runs it already removed are not reported as missing from trash;
* ``purge_unfinished``: an apply the catalog marks as being purged, with no unfinished
  purge in the journal to finish it;
* ``journal_corrupt``: the journal cannot be read;
* ``row_without_dir``: a run's row names an artifact directory that is not there;
* ``dir_without_row``: a directory at the template's depth under the artifact root that no
  run names (only for ``path_template`` layouts; a path column has no fixed depth);
* ``trash_missing``: a run deleted into trash whose directory is not in trash (not for an
  apply being purged: its trash goes one run at a time);
* ``trash_orphan``: something in trash that no tombstone accounts for;
* ``trash_unsafe``: an entry of ``.trash`` that is a symlink or not a directory (never
  followed: nothing is read through it).

Not checked: sizes against the manifest (a manifest is a plan, not a record), the contents
of files.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from journal import CorruptJournal, TxStatus, replay
from retention import txrecords
from retention.config import Config
from retention.layout import TRASH_DIRNAME, StateLayout, trash_tx_rel
from retention.planner import artifact_rel_path
from retention.store import LocalStore, OutsideRoot, display, trash_problems
from retention.tombstones import TrashCatalog
from retention.txrecords import Begin


class Finding(msgspec.Struct):
    kind: str
    detail: str
    run_id: str | int | None = None
    path: str | None = None


class CheckReport(msgspec.Struct, kw_only=True):
    version: int = 1
    runs_checked: int
    findings: list[Finding]


def _unfinished(state: StateLayout) -> tuple[list[Finding], list[tuple[str, Begin]]]:
    """A finding if the journal is corrupt; else its unfinished transactions."""
    try:
        txs = replay(state.journal)
    except CorruptJournal as exc:
        return [Finding("journal_corrupt", str(exc), path=str(state.journal))], []
    return [], [
        (t, txrecords.decode_begin(tx.begin))
        for t, tx in txs.items()
        if tx.status is not TxStatus.DONE
    ]


def _interrupted(unfinished: list[tuple[str, Begin]], purging: set[str]) -> list[Finding]:
    """One finding per unfinished transaction; a purge that was decided (its applies are
    ``purging`` in the catalog) says so, and that its runs are not missing."""
    out = []
    for t, begin in unfinished:
        decided = begin.op == "purge" and set(begin.targets) & purging
        if decided:
            detail = (
                f"purge {t} of the trash of {', '.join(begin.targets)} did not finish: the"
                " runs it removed are not missing and the rest cannot be undone; run"
                " `retention recover` to finish it (if it stops, fix what it reports, e.g."
                " permissions in trash, and run it again)"
            )
        else:
            detail = f"transaction {t} is unfinished; run `retention recover`"
        out.append(Finding("interrupted", detail))
    return out


def _tx_of(rel: bytes) -> str:
    """The txid of a path ``.trash/<txid>/...``."""
    parts = rel.split(b"/", 2)
    return parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""


def check(cfg: Config) -> CheckReport:
    """Run every check (read-only) and return the findings; an empty list means consistent."""
    state = StateLayout(Path(cfg.state_dir))
    findings, unfinished = _unfinished(state)
    journal_ok = not findings
    root = Path(cfg.artifact_root)
    store = LocalStore(root)
    expected: set[bytes] = set()
    with TrashCatalog(cfg, readonly=True) as cat:
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
                findings.append(
                    Finding(
                        "row_without_dir",
                        "the run's artifact directory is missing",
                        row[cfg.id_column],
                        display(rel),
                    )
                )
        in_trash = cat.trash_slots()
        live_tx = cat.live_applies()
        purging = {r["txid"] for r in cat.applies() if r["state"] == "purging"}
    # The cause first: an unfinished purge explains the runs gone from its trash (a purge
    # that was decided removes them one by one: none of them is missing).
    findings[:0] = _interrupted(unfinished, purging)
    journaled = {t for _, b in unfinished if b.op == "purge" for t in b.targets}
    findings += [
        Finding(
            "purge_unfinished",
            f"the trash of {t} is being purged, but no unfinished purge is in the journal:"
            " its runs cannot be undone; what is left of it can be removed by hand",
            None,
            display(trash_tx_rel(t)),
        )
        for t in sorted(purging - journaled)
        if journal_ok  # a corrupt journal is the finding then, not what it may hold
    ]
    for rel, rid in in_trash.items():
        if _tx_of(rel) in purging:
            continue
        if not os.path.lexists(store.abspath(rel)):
            findings.append(
                Finding("trash_missing", "deleted run not found in trash", rid, display(rel))
            )
    unsafe = trash_problems(root)
    findings += [Finding("trash_unsafe", why, None, display(rel)) for rel, why in unsafe]
    unsafe_names = {os.fsdecode(rel).split("/", 1)[1] for rel, _ in unsafe}
    trash_root = root / TRASH_DIRNAME
    if trash_root.is_dir() and not trash_root.is_symlink():
        for txdir in sorted(trash_root.iterdir()):
            if txdir.name in unsafe_names:
                continue
            for entry in sorted(txdir.iterdir()) if txdir.is_dir() else [txdir]:
                if entry.name == "TRASH.json" and txdir.name in live_tx:
                    continue
                rel = os.fsencode(entry.relative_to(root))
                if rel not in in_trash:
                    findings.append(
                        Finding("trash_orphan", "no tombstone accounts for it", None, display(rel))
                    )
    if cfg.path_template and not cfg.path_column:
        depth = cfg.path_template.strip("/").count("/") + 1
        for rel in _walk_depth(store, depth):
            if rel not in expected:
                findings.append(
                    Finding("dir_without_row", "no run names this directory", None, display(rel))
                )
    return CheckReport(runs_checked=runs, findings=findings)


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
