"""A workspace opened for a mutating command: lock, journal, catalog, artifact store.

Opening takes the workspace lock first (`filelock.FileLock`, which the kernel releases if
the process dies), so two processes never apply, undo, purge or recover at once: the
second one fails at once with `LockedError` naming the holder, never waits forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import filelock

from journal import CorruptJournal, FsyncError, Journal, JournalError, fsio
from journal.writer import UnsafeJournal
from retention.catalog import SqliteCatalog
from retention.config import Config
from retention.errors import LockedError, RecoveryError, StorageError
from retention.layout import STATE_DIR_HINT, StateLayout, require_state_dir
from retention.participants import ArtifactStore, Catalog
from retention.store import LocalTrashStore, OutsideRoot, require_artifact_root
from retention.tombstones import TrashCatalog


@dataclass
class Workspace:
    cfg: Config
    state: StateLayout
    journal: Journal
    catalog: Catalog
    store: ArtifactStore


_OWNER_MAX = 4096


def _holder(state: StateLayout) -> str:
    """Who holds the lock, from ``lock.owner``; "" when that is not a small regular file
    (opened without following a symlink and without blocking: a FIFO planted there must
    not hang the process that only wanted to say the workspace is busy)."""
    try:
        fd = os.open(state.lock_owner, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.read(fd, _OWNER_MAX) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
        info = json.loads(data)
        return f" (pid {info['pid']} on {info['host']}, `{info['command']}`, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _write_owner(state: StateLayout) -> None:
    """Record who holds the lock (for the other process's error message). Replaced
    atomically, so a symlink (or FIFO) planted at ``lock.owner`` is replaced, never written
    through. Best effort: the lock itself is what excludes other processes."""
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(["retention", *sys.argv[1:]])[:200],
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError, FsyncError):
        fsio.write_atomic(state.lock_owner, json.dumps(owner).encode(), 0o644)


@contextlib.contextmanager
def workspace_lock(state: StateLayout) -> Iterator[None]:
    """Hold the workspace lock; raise `LockedError` at once if another process has it."""
    require_state_dir(state)
    try:
        fsio.ensure_dir(state.root)
    except OSError as exc:
        raise StorageError(
            f"cannot create the state directory {state.root}: {exc.strerror or exc}",
            hint=STATE_DIR_HINT,
        ) from None
    lock = filelock.FileLock(str(state.lock), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockedError(
            f"another retention process holds the workspace lock {state.lock}{_holder(state)}",
            hint="wait for it to finish; the lock is released automatically if it dies",
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot take the lock {state.lock}: {exc.strerror or exc}") from None
    try:
        _write_owner(state)
        yield
    finally:
        with contextlib.suppress(OSError):
            state.lock_owner.unlink()
        lock.release()


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Re-raise an `OSError` that names no file (``write(2)`` on a descriptor, e.g. ENOSPC
    or EFBIG) as one of the same errno naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, f"append to the journal: {exc.strerror}", path) from exc


class StateJournal(Journal):
    """The workspace's journal: an I/O error while appending to it (a full disk, a file
    size limit) names the journal file, which the error of a ``write(2)`` on a descriptor
    does not; "disk full" alone does not say which disk."""

    def begin(self, txid: str, payload: bytes = b"") -> None:
        with _naming(self.path):
            super().begin(txid, payload)

    def append(self, txid: str, kind: str, payload: bytes = b"", *, sync: bool = True) -> None:
        with _naming(self.path):
            super().append(txid, kind, payload, sync=sync)

    def commit(self, txid: str, payload: bytes = b"") -> None:
        with _naming(self.path):
            super().commit(txid, payload)

    def abort(self, txid: str, payload: bytes = b"") -> None:
        with _naming(self.path):
            super().abort(txid, payload)

    def done(self, txid: str, payload: bytes = b"") -> None:
        with _naming(self.path):
            super().done(txid, payload)


def open_journal(state: StateLayout) -> Journal:
    try:
        return StateJournal.open(state.journal)
    except UnsafeJournal as exc:
        raise RecoveryError(
            f"refusing to use the journal: {exc}",
            hint="nothing was changed; put this workspace's journal back at that path as a"
            " regular file (not a link to one), then run `retention recover`",
        ) from None
    except CorruptJournal as exc:
        raise RecoveryError(
            f"the journal is corrupt: {exc}",
            hint="nothing was changed; keep a copy of the file and inspect it with"
            " `retention status`; do not delete it while trash holds moved directories",
        ) from None
    except JournalError as exc:
        raise RecoveryError(f"cannot use the journal {state.journal}: {exc}") from None
    except OSError as exc:
        raise StorageError(f"cannot open the journal {state.journal}: {exc}") from None


@contextlib.contextmanager
def open_workspace(cfg: Config) -> Iterator[Workspace]:
    """Lock, open the journal, the catalog (read-write) and the store; close in reverse."""
    state = StateLayout(Path(cfg.state_dir))
    # Before creating anything: a command run from the wrong directory must not leave a
    # state directory behind.
    if not Path(cfg.catalog_path).exists():
        SqliteCatalog(cfg, readonly=True)  # raises the one clear "does not exist" error
    require_artifact_root(cfg)
    with workspace_lock(state):
        journal = open_journal(state)
        try:
            store = LocalTrashStore(Path(cfg.artifact_root))
            try:
                store.verify_trash()
            except OutsideRoot as exc:
                raise StorageError(
                    f"refusing to use the trash: {exc}",
                    hint="make <artifact root>/.trash a plain directory (or remove it)",
                ) from None
            with TrashCatalog(cfg) as catalog:
                yield Workspace(cfg, state, journal, catalog, store)
        finally:
            journal.close()
