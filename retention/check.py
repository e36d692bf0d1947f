"""`retention check`: compare catalog, disk, trash and journal both ways. Read-only.

Findings are data (`Finding`), not log lines, so tests can assert the list is empty after
every apply, undo, purge and crash recovery. What is checked:

* ``interrupted``: the journal holds an unfinished transaction (run `retention recover`);
* ``journal_corrupt``: the journal cannot be read;
* ``row_without_dir``: a run's row names an artifact directory that is not there;
* ``dir_without_row``: a directory at the template's depth under the artifact root that no
  run names (only for ``path_template`` layouts; a path column has no fixed depth);
* ``trash_missing``: a run deleted into trash whose directory is not in trash;
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

from journal import CorruptJournal
from retention.config import Config
from retention.layout import TRASH_DIRNAME, StateLayout
from retention.planner import artifact_rel_path
from retention.status import unfinished_txids
from retention.store import LocalStore, OutsideRoot, display, trash_problems
from retention.tombstones import TrashCatalog


class Finding(msgspec.Struct):
    kind: str
    detail: str
    run_id: str | int | None = None
    path: str | None = None


class CheckReport(msgspec.Struct, kw_only=True):
    version: int = 1
    runs_checked: int
    findings: list[Finding]


def _journal_findings(state: StateLayout) -> list[Finding]:
    try:
        txids = unfinished_txids(state)
    except CorruptJournal as exc:
        return [Finding("journal_corrupt", str(exc), path=str(state.journal))]
    return [
        Finding("interrupted", f"transaction {t} is unfinished; run `retention recover`")
        for t in txids
    ]


def check(cfg: Config) -> CheckReport:
    """Run every check (read-only) and return the findings; an empty list means consistent."""
    state = StateLayout(Path(cfg.state_dir))
    findings = _journal_findings(state)
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
    for rel, rid in in_trash.items():
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
