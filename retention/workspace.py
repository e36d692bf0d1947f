"""A workspace opened for a mutating command: lock, journal, catalog, artifact store.

Opening takes the workspace lock first (`filelock.FileLock`: ``flock(LOCK_EX|LOCK_NB)`` on
``<state>/lock``, which the kernel releases if the process dies), so two processes never
apply, undo, purge or recover at once: the second one fails within half a second with
`LockedError` naming the holder and what it is running, never waits forever.

Read-only commands (`status`, `check`) tell a live transaction from an interrupted one with
`live_holder`: a non-blocking shared ``flock`` probe of the same file (held: a live process
has the workspace; free: whatever ``lock.owner`` says is stale, left by a killed process).
The probe holds the lock for microseconds, which is why taking it retries briefly.

`SIGNALS` turns SIGINT and SIGTERM into a stop at the next safe point while a workspace is
open (see `Signals`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from journal import CorruptJournal, FsyncError, Journal, JournalError, TxStatus, fsio, replay
from journal.writer import UnsafeJournal
from retention import txrecords
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import format_duration, parse_instant
from retention.errors import LockedError, RecoveryError, StorageError, UsageError
from retention.layout import STATE_DIR_HINT, StateLayout, require_state_dir
from retention.participants import ArtifactStore, Catalog
from retention.reports import LockHolder
from retention.signals import SIGNALS
from retention.store import LocalTrashStore, OutsideRoot, require_artifact_root
from retention.tombstones import current_host


class Workspace(msgspec.Struct):
    cfg: Config
    state: StateLayout
    journal: Journal
    catalog: Catalog
    store: ArtifactStore


_OWNER_MAX = 4096

# How long taking the lock retries before `LockedError`: long enough to ride out the
# microseconds a `status` or `check` probe holds it, short enough to count as "at once".
LOCK_RETRY_SECONDS = 0.5


def read_owner(state: StateLayout) -> LockHolder | None:
    """``lock.owner`` as written by `_write_owner`; None when absent or unreadable. Opened
    without following a symlink and without blocking (a FIFO planted there must not hang
    the process that only wanted to say who holds the workspace), and only if it is a small
    regular file."""
    try:
        fd = os.open(state.lock_owner, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = os.read(fd, _OWNER_MAX) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        finally:
            os.close(fd)
        info = msgspec.json.decode(data)
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(info, dict):
        return None

    def text(key: str) -> str | None:
        value = info.get(key)
        return str(value)[:256] if value is not None else None

    pid = info.get("pid")
    return LockHolder(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host=text("host"),
        command=text("command"),
        since=text("since"),
    )


def probe_lock(state: StateLayout) -> bool | None:
    """Whether a live process holds the workspace lock, asked without waiting and without
    creating anything: True (held), False (free, or no lock file: nobody ever took it), None
    (cannot tell: the file is not a regular file, unreadable, or its filesystem has no
    ``flock``). A shared lock, so that concurrent probes never disturb each other; a
    mutating command meeting one retries for `LOCK_RETRY_SECONDS`."""
    try:
        fd = os.open(state.lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return True
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _pid_alive(holder: LockHolder) -> bool | None:
    """Whether the holder's process exists (None: another host, or no pid to ask about)."""
    if holder.pid is None or holder.pid <= 0 or holder.host != current_host():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def live_holder(state: StateLayout) -> LockHolder | None:
    """The process holding the workspace lock right now, or None when nobody does.

    The probe decides; ``lock.owner`` only describes. It is written just after the lock is
    taken and removed just before it is released, so while the lock is held it names the
    holder, except in that instant, when it may still be one a killed process left: a
    recorded pid that is gone (on this host) is then not trusted (all fields unknown). When
    the probe cannot tell, a ``lock.owner`` whose process is alive on this host counts."""
    held = probe_lock(state)
    if held is False:
        return None
    owner = read_owner(state)
    if held is None:
        return owner if owner is not None and _pid_alive(owner) else None
    if owner is None or _pid_alive(owner) is False:
        return LockHolder()
    return owner


def stale_owner(state: StateLayout) -> LockHolder | None:
    """``lock.owner`` left behind while nobody holds the lock: the process that was killed
    (or lost power) while it held the workspace."""
    if probe_lock(state) is not False:
        return None
    return read_owner(state)


def describe_holder(holder: LockHolder, now: datetime | None = None) -> str:
    """``pid 1234, `retention apply m.json`, started 3.0 s ago`` (the host only when it is
    not this one); unknown parts are left out."""
    parts = []
    if holder.pid is not None:
        here = holder.host in (None, current_host())
        parts.append(f"pid {holder.pid}" + ("" if here else f" on {holder.host}"))
    if holder.command:
        parts.append(f"`{holder.command}`")
    if holder.since:
        try:
            age = (now or datetime.now(UTC)) - parse_instant(holder.since)
            parts.append(f"started {format_duration(max(age.total_seconds(), 0))} ago")
        except UsageError:
            parts.append(f"since {holder.since}")
    return ", ".join(parts) if parts else "holder unknown"


def running_transactions(state: StateLayout) -> list[tuple[str, str]]:
    """(op, txid) of every transaction the journal holds unfinished, read-only; [] when the
    journal cannot be read (this is for messages only)."""
    try:
        txs = replay(state.journal)
        return [
            (txrecords.decode_begin(tx.begin).op, t)
            for t, tx in txs.items()
            if tx.status is not TxStatus.DONE
        ]
    except Exception:  # a message must not fail on a journal another process is writing
        return []


def _holder(state: StateLayout) -> str:
    """Who holds the lock and what it runs, for `LockedError`: "" when unknown."""
    owner = read_owner(state)
    what = "; ".join(f"{op} {t} is running" for op, t in running_transactions(state))
    if owner is None:
        return f": {what}" if what else ""
    who = describe_holder(owner)
    if what:
        return f": {what} ({who})"
    return f" ({who})"


def _write_owner(state: StateLayout) -> None:
    """Record who holds the lock (for the other process's error message). Replaced
    atomically, so a symlink (or FIFO) planted at ``lock.owner`` is replaced, never written
    through. Best effort: the lock itself is what excludes other processes."""
    owner = {
        "pid": os.getpid(),
        "host": current_host(),
        "command": " ".join(["retention", *sys.argv[1:]])[:200],
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError, FsyncError):
        fsio.write_atomic(state.lock_owner, msgspec.json.encode(owner), 0o644)


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
    import filelock  # (50 ms of imports: not for the read-only commands)

    lock = filelock.FileLock(str(state.lock), timeout=LOCK_RETRY_SECONDS)
    try:
        lock.acquire(poll_interval=0.02)
    except filelock.Timeout:
        raise LockedError(
            f"another retention process holds the workspace lock {state.lock}{_holder(state)}",
            hint="wait for it to finish; the lock is released automatically if it dies (then"
            " the next retention command, or `retention recover`, finishes or rolls back"
            " what it left)",
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


def _refuse_document_transactions(cfg: Config, state: StateLayout, journal: Journal) -> None:
    """An SQL catalog's commands never decide a JSON document's interrupted transaction (one
    whose BEGIN names no artifact root, `retention.jobstore`): its catalog has no txid row
    to ask, so presumed abort would misjudge a replacement that did happen. This state
    directory is shared with a JSON-document configuration: refuse, nothing changed (the
    job store refuses the SQL catalog's the same way)."""
    for tx in journal.unfinished():
        begin = txrecords.decode_begin(tx.begin)
        if not begin.artifact_root:
            from retention.config import shown_catalog

            raise RecoveryError(
                f"the journal {state.journal} holds {begin.op} {tx.txid}, interrupted, of the"
                f" JSON document {begin.catalog_id}; this configuration's catalog is"
                f" {shown_catalog(str(cfg.catalog_path))}",
                hint="run `retention recover` with the configuration that started it (same"
                " state.dir), then this command again; give each catalog its own state.dir",
            )


@contextlib.contextmanager
def open_workspace(cfg: Config) -> Iterator[Workspace]:
    """Lock, open the journal, the catalog (read-write) and the store; close in reverse."""
    state = StateLayout(Path(cfg.state_dir))
    # Before creating anything: a command run from the wrong directory must not leave a
    # state directory behind.
    if not Path(cfg.catalog_path).exists():
        open_catalog(cfg)  # raises the one clear "does not exist" error
    require_artifact_root(cfg)
    with SIGNALS.catching(), workspace_lock(state):
        journal = open_journal(state)
        try:
            _refuse_document_transactions(cfg, state, journal)
            store = LocalTrashStore(Path(cfg.artifact_root))
            try:
                store.verify_trash()
            except OutsideRoot as exc:
                raise StorageError(
                    f"refusing to use the trash: {exc}",
                    hint="make <artifact root>/.trash a plain directory (or remove it)",
                ) from None
            with open_catalog(cfg, readonly=False) as catalog:
                yield Workspace(cfg, state, journal, catalog, store)
        finally:
            journal.close()
