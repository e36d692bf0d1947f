"""The participant contract: the two seams a transaction drives.

The coordinator (`retention.coordinator`) runs presumed-abort two-phase commit with the
decision stored in the last participant, the catalog: a transaction is committed if and
only if the catalog holds its txid row. The journal records intent only (which
directories may have moved, and where). Each method below says when the coordinator calls
it, what is durable when it returns, and how it behaves under replay. Participants refuse
by raising, never by returning False.

Today: the SQL catalog (`retention.tombstones.TrashCatalog`) on SQLite
(`retention.catalogs.sqlite`) and PostgreSQL (`retention.catalogs.postgres`), and
`retention.store.LocalTrashStore` (local filesystem). An object store would be a second
store; the journal and recovery assume neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from retention.policy.ids import RunId
from retention.store import Measure


@runtime_checkable
class ArtifactStore(Protocol):
    """Artifact directories under one root, addressed by bytes paths relative to it."""

    root: Path  # where the artifacts are (informative: manifests and reports name it)

    def describe(self, rel: bytes) -> str:
        """Where ``rel`` is, for messages. Never raises."""
        ...

    def check_contained(self, rel: bytes) -> None:
        """Raise `OutsideRoot` if ``rel`` would lead out of the root (a symlinked parent).
        Called before any move, in either direction."""
        ...

    def measure(self, rel: bytes, *, device: int | None = None) -> Measure:
        """Size, count and a fingerprint of what is at ``rel`` (read-only; drift check).
        ``device``: a directory on another device is not walked (see `LocalStore.measure`)."""
        ...

    def write_index(self, txid: str, data: bytes) -> None:
        """Durably store a transaction's self-describing index in its trash area, before
        anything moves there."""
        ...

    def purge_tx(self, txid: str, advance: Callable[[], None] | None = None) -> None:
        """Remove a transaction's trash area for good (a missing file is fine). Only after
        the catalog committed the purge. Not durable until `sync_trash`."""
        ...

    def sync_trash(self) -> None:
        """Make removals from trash durable."""
        ...

    def lexists(self, rel: bytes) -> bool:
        """Whether anything exists at ``rel`` (a symlink counts; never followed). Read-only."""
        ...

    def device(self, rel: bytes) -> int | None:
        """The device of what is at ``rel`` (a symlink is not followed), or None when
        nothing is. Raises `OSError` when it cannot look (a parent it may not search).
        Read-only."""
        ...

    def trash_device(self) -> int:
        """The device the trash is on (where every directory must be, to move into it)."""
        ...

    def same_filesystem(self, rel: bytes, dev_of_rel: int | None = None) -> bool:
        """Whether ``rel`` can move into trash with one atomic rename. Called in preflight,
        before anything changes, so that a cross-device entry refuses the whole apply."""
        ...

    def ensure_dir(self, rel: bytes) -> None:
        """Create a directory (and parents), durably. Idempotent."""
        ...

    def move(self, src: bytes, dst: bytes) -> None:
        """Atomically move ``src`` to ``dst``; never replaces an existing ``dst``.

        Called for each intended move after the journal's BEGIN is durable, and again by
        recovery for moves not yet done (it checks `lexists` first, so replay is safe).
        Raises `OSError` and then has changed nothing. Not durable until `sync`.
        """
        ...

    def sync(self) -> int:
        """Make every move since the last call durable (one fsync per touched directory,
        not per move). Called once per batch and before any decision is recorded. An
        fsync failure raises `journal.FsyncError`: fatal, never retried."""
        ...

    def drop_tx_dir(self, txid: str) -> bool:
        """Remove a transaction's trash area once it holds nothing but its index (after a
        roll-back or a full undo). Idempotent; never removes anything it did not put there."""
        ...

    def tx_dirs_holding_moves(self) -> list[str]:
        """Txids whose trash area holds something besides its index: directories that were
        moved there. Read-only; for recovery's check that the journal lost no BEGIN."""
        ...


@runtime_checkable
class CatalogIdentity(Protocol):
    """What identifies a catalog (all a manifest check needs; read-only)."""

    def describe(self) -> str:
        """The catalog for messages (a file path, a DSN without password...)."""
        ...

    def stored_lineage(self) -> str | None:
        """The lineage id the first apply recorded (see `retention.identity`)."""
        ...

    def locator(self) -> str:
        """Where this catalog is, for the identity binding before the first apply."""
        ...


@runtime_checkable
class Catalog(CatalogIdentity, Protocol):
    """The last participant: its transaction is the one commit point."""

    def load_ids(self, ids: Iterable[RunId]) -> None:
        """Stage run ids for the set-based calls that follow (no effect on the data)."""
        ...

    def existing_ids(self) -> set[RunId]:
        """Which staged ids still exist. Read-only."""
        ...

    def applied_by_manifest(self, manifest_id: str) -> list[str]:
        """Txids of committed applies of a manifest (re-apply does nothing). Read-only."""
        ...

    def applies(self) -> list[dict[str, Any]]:
        """Every recorded apply, newest first (txid, state, created_at, grace_until...)."""
        ...

    def audit_groups(self, txids: list[str]) -> list[tuple[str, str | None, int, int]]:
        """Runs and bytes per group the audit rows of these transactions counted, summed:
        (column, value as text, runs, bytes). Read-only."""
        ...

    def trash_totals(self, txids: list[str]) -> tuple[int, int]:
        """Runs and bytes still in trash for these applies. Read-only."""
        ...

    def undo_plan(
        self, txid: str, run_ids: list[RunId], blocked: dict[RunId, str]
    ) -> tuple[dict[RunId, str], list[list[RunId]]]:
        """Which runs cannot be restored (and why), and the rest in groups that must come
        back together. Read-only."""
        ...

    def tx_row(self, txid: str) -> dict[str, Any] | None:
        """The decision: the txid's row if the catalog committed it, else None. Read-only;
        recovery calls it for every transaction without a journal decision."""
        ...

    def tomb_runs(self, txid: str) -> dict[RunId, dict[str, Any]]:
        """Runs tombstoned by an apply (with path, trash place, state). Read-only."""
        ...

    def overwrite_deleted(self) -> None:
        """From now on, overwrite what is deleted instead of only freeing it (an erasure
        request: the rows and, at the purge, their tombstones)."""
        ...

    def fingerprints_beside(self, runs: list[Any], rows_fps: list[str]) -> Any:
        """Start comparing these runs' rows with their plan-time digests in a helper beside
        the renames, where the backend can (`retention.catalogs.beside`); its ``result()``
        is what `commit_delete` takes as ``known``."""
        ...

    def commit_delete(
        self, info: Any, lineage: str, runs: list[Any], *, before_commit: Any, known: Any = None
    ) -> Any:
        """Apply's commit point. In ONE transaction: re-check each run (rows, filter,
        protect), tombstone its rows of every involved table, delete them, record the txid.
        Returns the runs it left out and why. Durable when it returns (``synchronous=EXTRA``).
        On any failure it rolls back explicitly and raises; the catalog is then unchanged.
        ``known`` (the helper's answer) stands in for the re-check of the rows only if no
        other connection has committed since the helper began."""
        ...

    def commit_restore(
        self,
        undo_txid: str,
        target: str,
        groups: list[list[RunId]],
        now: str,
        *,
        before_commit: Any,
    ) -> dict[RunId, str]:
        """Undo's commit point: re-insert the groups' rows from the tombstones, mark them
        restored, record ``undo_txid``; groups the catalog refuses are returned, not raised.
        Same durability and roll-back contract as `commit_delete`."""
        ...

    def restored_by(self, undo_txid: str) -> set[RunId]:
        """Undo's decision for each run: restored by ``undo_txid`` or not. Read-only."""
        ...

    def mark_purging(
        self, purge_txid: str, targets: list[str], now: str, *, before_commit: Any
    ) -> None:
        """Purge's commit point: from here on undo refuses the targets; records the txid."""
        ...

    def mark_purged(self, targets: list[str], now: str) -> None:
        """After purge removed the directories: mark purged, drop row tombstones. Idempotent."""
        ...
