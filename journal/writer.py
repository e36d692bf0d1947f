"""The transaction API on top of the journal file.

A transaction is a sequence of records sharing a txid::

    BEGIN  (intent | custom kinds)*  [COMMITTED | ABORTED]  (intent | custom kinds)*  [DONE]

Rules enforced both when writing and when replaying an existing file (a file that breaks
them raises `CorruptJournal`, it is never "repaired"):

* BEGIN is the first record of a txid and appears once.
* At most one decision (COMMITTED or ABORTED) per txid.
* DONE is final: nothing of that txid follows it.

Durability: `begin`, `commit`, `abort`, `done` and `append(sync=True)` return only after
the record is fsynced. A record written with ``sync=False`` is in the file (visible to a
reader in another process) but may be lost on power failure until `sync` returns.

Failure is sticky: after a write or fsync error the object refuses every further write
with `JournalError`; reopen the journal (recovery) to continue. Writing after a failed
write could put valid records behind a partial one, which replay reports as corruption.

Not thread-safe; one writer process at a time (callers hold a lock).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import stat
from types import TracebackType

import msgspec

from journal import fsio
from journal.errors import CorruptJournal, FsyncError, JournalError
from journal.failpoints import failpoint
from journal.reader import ReadResult, read_journal
from journal.record import (
    ABORTED,
    BEGIN,
    COMMITTED,
    DONE,
    HEADER,
    HEADER_SIZE,
    RECORD_VERSION,
    Record,
    encode_record,
)

JOURNAL_FILE_MODE = 0o600

# control kinds go through their own method, which enforces the transaction rules
_CONTROL_KINDS = {BEGIN: "begin", COMMITTED: "commit", ABORTED: "abort", DONE: "done"}


class UnsafeJournal(CorruptJournal):
    """The journal's path is not a regular file (a symlink, a FIFO, a directory, a device):
    it is never followed, read or written through, and nothing is changed. A
    `CorruptJournal` (the file cannot be trusted) whose message says what was found."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, reason: str = "") -> None:
        super().__init__(path, offset, reason)
        JournalError.__init__(
            self,
            f"journal {self.path} {reason}; a journal must be a regular file and is never"
            " followed or written through anything else",
        )


def _unsafe_reason(st: os.stat_result, path: str) -> str:
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"is a symlink (to {os.readlink(path)})"
        except OSError:
            return "is a symlink"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if stat.S_ISFIFO(st.st_mode):
        return "is a FIFO"
    return "is not a regular file"


def _require_regular(path: str) -> None:
    """Raise `UnsafeJournal` unless `path` (not followed) is a regular file; `OSError`
    (`FileNotFoundError`, ...) if it cannot be looked at."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeJournal(path, 0, _unsafe_reason(st, path))


def _open_append(path: str) -> int:
    """Open the journal for appending, never through a symlink (``O_NOFOLLOW``) and never
    anything but a regular file (checked on the open descriptor; ``O_NONBLOCK`` so that a
    FIFO planted there cannot hang the open). Raises `UnsafeJournal` or `OSError`."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
            try:
                st = os.lstat(path)
            except OSError:
                raise e from None
            raise UnsafeJournal(path, 0, _unsafe_reason(st, path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeJournal(path, 0, _unsafe_reason(st, path))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


class TxStatus(enum.Enum):
    """Where a transaction stands, as far as the journal knows."""

    # BEGIN written, neither COMMITTED nor ABORTED: recovery must ask the last participant
    ACTIVE = "active"
    COMMITTED = "committed"  # decision is commit; finishing steps may remain
    ABORTED = "aborted"  # decision is abort; roll-back steps may remain
    DONE = "done"  # nothing left to do


class TxState(msgspec.Struct):
    """State of one transaction as replayed from the journal.

    `records` holds every record of the tx in file order, BEGIN first. `decision` tells
    whether a DONE tx was committed, aborted, or neither (finished while ACTIVE).

    A msgspec Struct, not a dataclass: a dataclass costs about 1 ms at import here, on the
    start-up of every command (issue 13); msgspec is loaded anyway (`journal.record`).
    """

    txid: str
    status: TxStatus
    begin: bytes
    records: list[Record] = []

    @property
    def decision(self) -> TxStatus | None:
        """COMMITTED or ABORTED if a decision record exists, else None."""
        for r in self.records:
            if r.kind == COMMITTED:
                return TxStatus.COMMITTED
            if r.kind == ABORTED:
                return TxStatus.ABORTED
        return None

    def _copy(self) -> TxState:
        return TxState(self.txid, self.status, self.begin, list(self.records))


def _apply(txs: dict[str, TxState], rec: Record) -> str | None:
    """Apply `rec` to `txs`; return why it is not allowed, or None (and apply it)."""
    if rec.kind == BEGIN:
        if rec.txid in txs:
            return f"second begin for txid {rec.txid!r}"
        txs[rec.txid] = TxState(rec.txid, TxStatus.ACTIVE, rec.payload, [rec])
        return None
    tx = txs.get(rec.txid)
    if tx is None:
        return f"{rec.kind!r} record for unknown txid {rec.txid!r}"
    if tx.status is TxStatus.DONE:
        return f"{rec.kind!r} record after done for txid {rec.txid!r}"
    if rec.kind in (COMMITTED, ABORTED):
        if tx.status is not TxStatus.ACTIVE:
            return f"{rec.kind!r} record for txid {rec.txid!r} already {tx.status.value}"
        tx.status = TxStatus.COMMITTED if rec.kind == COMMITTED else TxStatus.ABORTED
    elif rec.kind == DONE:
        tx.status = TxStatus.DONE
    tx.records.append(rec)
    return None


def replay(path: str | os.PathLike[str]) -> dict[str, TxState]:
    """Every transaction in the journal at `path` with its state, in order of BEGIN.

    Read-only: never creates, truncates or fsyncs (a torn tail is simply where the records
    end). A missing file has no transactions. Raises `CorruptJournal` like `Journal.open`.
    """
    spath = os.fspath(path)
    if not os.path.lexists(spath):
        return {}
    _require_regular(spath)
    return _replay(spath, read_journal(spath))


def _replay(spath: str, result: ReadResult) -> dict[str, TxState]:
    txs: dict[str, TxState] = {}
    for rec, off in zip(result.records, result.offsets, strict=True):
        if rec.v != RECORD_VERSION:
            raise CorruptJournal(spath, off, f"unknown record version {rec.v}")
        why = _apply(txs, rec)
        if why is not None:
            raise CorruptJournal(spath, off, why)
    return txs


class Journal:
    """An open journal file. Create with `Journal.open`; use as a context manager."""

    path: str

    def __init__(self, path: str, fd: int, txs: dict[str, TxState], length: int) -> None:
        """Internal: use `Journal.open`."""
        self.path = path
        self._fd: int | None = fd
        self._txs = txs
        self._length = length
        self._broken: BaseException | None = None

    # ---- opening -------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open (creating if missing) the journal at `path` and replay it.

        * Missing file: a header-only file is created atomically (mode 0600) and made
          durable (file and parent directory fsynced). The parent directory must exist.
        * Torn tail: the file is truncated to the valid prefix (or its header rewritten)
          and fsynced before this returns, so appends never follow garbage. The bytes
          dropped are kept beside it, best effort, as ``<path>.torn-<offset>``: a tail the
          application later proves was not torn but damaged can still be inspected.
        * Otherwise the file and its directory are fsynced once, so that records another
          process wrote without fsync before crashing are durable before the caller acts
          on them.

        Raises `CorruptJournal` (file left untouched) for a corrupt file or one that
        breaks the transaction rules; `UnsafeJournal` (a `CorruptJournal`, nothing
        touched) when `path` is a symlink (even to a journal), a FIFO, a directory or
        anything but a regular file; `FsyncError` / `OSError` on I/O failure.
        """
        spath = os.fspath(path)
        created = not os.path.lexists(spath)
        if created:
            fsio.write_atomic(spath, HEADER, mode=JOURNAL_FILE_MODE)
        fd = _open_append(spath)
        try:
            result = read_journal(spath)
            # read by name: refuse if the name no longer leads to the file checked above
            st, now = os.fstat(fd), os.lstat(spath)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                raise UnsafeJournal(spath, 0, "was replaced while being opened")
            txs = _replay(spath, result)
            length = result.good_length
            if result.torn or result.file_length < HEADER_SIZE:
                if length < HEADER_SIZE:
                    os.ftruncate(fd, 0)
                    _write_all(fd, HEADER)
                    length = HEADER_SIZE
                else:
                    _keep_tail(spath, length)
                    os.ftruncate(fd, length)
                failpoint("journal.truncate.before_fsync")
                fsio.fsync_file(fd)
            elif not created:
                fsio.fsync_file(fd)
                fsio.fsync_dir(os.path.dirname(os.path.abspath(spath)))
        except BaseException:
            os.close(fd)
            raise
        return cls(spath, fd, txs, length)

    # ---- queries -------------------------------------------------------------------

    def transactions(self) -> dict[str, TxState]:
        """Every transaction (copies), keyed by txid, in order of BEGIN."""
        return {txid: tx._copy() for txid, tx in self._txs.items()}

    def unfinished(self) -> list[TxState]:
        """Transactions whose status is not DONE (copies), in order of BEGIN."""
        return [tx._copy() for tx in self._txs.values() if tx.status is not TxStatus.DONE]

    def status(self, txid: str) -> TxStatus | None:
        """Status of `txid`, or None if unknown."""
        tx = self._txs.get(txid)
        return None if tx is None else tx.status

    # ---- writing -------------------------------------------------------------------

    def begin(self, txid: str, payload: bytes = b"") -> None:
        """Start transaction `txid` with `payload`; durable on return.

        Raises `ValueError` if `txid` is empty or already known (even if DONE).
        """
        if not txid:
            raise ValueError("txid must be a non-empty string")
        if txid in self._txs:
            raise ValueError(f"transaction {txid!r} already exists in {self.path}")
        self._write(Record(RECORD_VERSION, BEGIN, txid, bytes(payload)), sync=True)

    def append(self, txid: str, kind: str, payload: bytes = b"", *, sync: bool = True) -> None:
        """Append a record of `kind` (INTENT or any application kind) to `txid`.

        With ``sync=False`` the record is written but not fsynced: call `sync` before
        acting on it. Raises `ValueError` for an unknown txid, a DONE txid, an empty kind,
        or a control kind (begin/committed/aborted/done: use the matching method).
        """
        if not kind:
            raise ValueError("kind must be a non-empty string")
        if kind in _CONTROL_KINDS:
            raise ValueError(f"use Journal.{_CONTROL_KINDS[kind]}() for {kind!r} records")
        tx = self._known(txid)
        if tx.status is TxStatus.DONE:
            raise ValueError(f"transaction {txid!r} is done; nothing may follow")
        self._write(Record(RECORD_VERSION, kind, txid, bytes(payload)), sync=sync)

    def sync(self) -> None:
        """fsync the journal, making every record written so far durable.

        Raises `FsyncError` (and the journal becomes unusable) on failure.
        """
        fd = self._usable()
        try:
            fsio.fsync_file(fd)
        except FsyncError as e:
            self._broken = e
            raise

    def commit(self, txid: str, payload: bytes = b"") -> None:
        """Record the decision to commit `txid`; durable on return.

        No-op if `txid` is already committed (also when committed and DONE). Raises
        `ValueError` if unknown, aborted, or DONE without a commit decision.
        """
        self._decide(txid, TxStatus.COMMITTED, COMMITTED, payload)

    def abort(self, txid: str, payload: bytes = b"") -> None:
        """Record the decision to abort `txid`; durable on return.

        No-op if `txid` is already aborted (also when aborted and DONE). Raises
        `ValueError` if unknown, committed, or DONE without an abort decision.
        """
        self._decide(txid, TxStatus.ABORTED, ABORTED, payload)

    def done(self, txid: str, payload: bytes = b"") -> None:
        """Record that nothing is left to do for `txid`; durable on return.

        Allowed from any status (ACTIVE too: e.g. a tx found to have done nothing);
        a no-op if already DONE. Raises `ValueError` if unknown.
        """
        tx = self._known(txid)
        if tx.status is TxStatus.DONE:
            return
        self._write(Record(RECORD_VERSION, DONE, txid, bytes(payload)), sync=True)

    def reset_if_idle(self) -> bool:
        """If every transaction is DONE and the file holds records, atomically replace it
        with a header-only journal and forget the finished transactions.

        Returns True if it reset, False otherwise (something unfinished, or already empty).
        Raises `JournalError` if the journal is unusable; on an I/O error (`OSError`,
        `FsyncError`) the journal becomes unusable: reopen it, which sees either the old
        file or the fresh one, both consistent.
        """
        self._usable()
        if self._length <= HEADER_SIZE:
            return False
        if any(tx.status is not TxStatus.DONE for tx in self._txs.values()):
            return False
        try:
            fsio.write_atomic(
                self.path,
                HEADER,
                mode=JOURNAL_FILE_MODE,
                before_rename=lambda: failpoint("journal.reset.before_rename"),
            )
            new_fd = _open_append(self.path)
        except BaseException as e:
            # after the rename our fd points at an unlinked file: never append to it
            self._broken = e
            raise
        old_fd, self._fd = self._fd, new_fd
        if old_fd is not None:
            os.close(old_fd)
        self._txs = {}
        self._length = HEADER_SIZE
        return True

    def close(self) -> None:
        """Close the file descriptor. Idempotent. Does not fsync (every durable method
        already has); records written with ``sync=False`` and not synced stay unsynced."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else ("unusable" if self._broken else "open")
        return f"<Journal {self.path} {state} txs={len(self._txs)}>"

    # ---- internals -----------------------------------------------------------------

    def _known(self, txid: str) -> TxState:
        tx = self._txs.get(txid)
        if tx is None:
            raise ValueError(f"unknown transaction {txid!r} in {self.path}")
        return tx

    def _usable(self) -> int:
        if self._broken is not None:
            raise JournalError(
                f"journal {self.path} is unusable after a failed write; run recover"
            ) from self._broken
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._fd

    def _decide(self, txid: str, want: TxStatus, kind: str, payload: bytes) -> None:
        tx = self._known(txid)
        decision = tx.decision
        if decision is want:
            return  # idempotent: recovery may re-run a decision
        if decision is not None:
            raise ValueError(f"transaction {txid!r} is already {decision.value}; cannot {kind} it")
        if tx.status is TxStatus.DONE:
            raise ValueError(f"transaction {txid!r} is done without a decision; cannot {kind} it")
        self._write(Record(RECORD_VERSION, kind, txid, bytes(payload)), sync=True)

    def _write(self, rec: Record, *, sync: bool) -> None:
        fd = self._usable()
        frame = encode_record(rec)
        failpoint("journal.append.before_write")
        try:
            _write_all(fd, frame)
        except OSError as e:
            self._broken = e
            raise
        self._length += len(frame)
        failpoint("journal.append.before_fsync")
        if sync:
            try:
                fsio.fsync_file(fd)
            except FsyncError as e:
                self._broken = e
                raise
        why = _apply(self._txs, rec)
        assert why is None, why  # callers validated before writing
        failpoint("journal.append.after_fsync")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _keep_tail(path: str, offset: int) -> None:
    """Copy the bytes from ``offset`` to the end into ``<path>.torn-<offset>`` (best effort:
    a full disk must not stop the journal from opening)."""
    with contextlib.suppress(OSError):
        with open(path, "rb") as f:
            f.seek(offset)
            tail = f.read()
        fsio.write_atomic(f"{path}.torn-{offset}", tail, mode=JOURNAL_FILE_MODE)
