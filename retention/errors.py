"""Errors a user can cause: one family, each carrying its exit code and a hint.

`cli.py` catches `RetentionError` in one place, prints ``Error: <message>`` (and the hint on
a second line, prefixed ``Hint:``) on stderr and exits with ``exit_code``. Anything else is a
bug and keeps its traceback. Each subclass's docstring is its default message.

Exit codes (the documented contract, also in README.md):

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     internal error (a bug: a traceback is printed)
2     usage or configuration error (bad flag, bad duration, bad config file)
3     done, but some entries were skipped or conflicted (see the JSON report)
4     catalog problem (missing file, missing table or column, not SQLite, busy, a
      PostgreSQL server refusing the connection or a lock held past busy_timeout)
5     manifest refused (tampered, expired, foreign catalog, bad key)
6     another retention process holds the workspace lock, or writes to the same
      PostgreSQL catalog
7     recovery needed or recovery stopped (journal corrupt, directory missing)
8     filesystem problem (permission denied, disk full, other filesystem)
9     undo refused (already purged, purging, unknown or already undone txid)
10    ``retention check`` found inconsistencies
130   interrupted by SIGINT (Ctrl-C): stopped at a safe point, rolled back or finished
143   interrupted by SIGTERM: the same
====  ==========================================================================
"""

from __future__ import annotations

import errno
import sys

from journal.errors import FsyncError, JournalError


class RetentionError(Exception):
    """retention failed."""

    exit_code: int = 1

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        self.message = message or (self.__doc__ or "retention failed.").strip().splitlines()[0]
        self.hint = hint
        super().__init__(self.message)


class UsageError(RetentionError):
    """Invalid option or argument."""

    exit_code = 2


class ConfigError(UsageError):
    """Invalid configuration."""


class CatalogError(RetentionError):
    """The catalog cannot be used."""

    exit_code = 4


class ManifestRejected(RetentionError):
    """The manifest was refused."""

    exit_code = 5


class LockedError(RetentionError):
    """Another retention process holds the workspace lock."""

    exit_code = 6


class RecoveryError(RetentionError):
    """Recovery is needed or could not finish."""

    exit_code = 7


class CatalogNeedsRecovery(CatalogError, RecoveryError):
    """The catalog holds an interrupted transaction."""

    exit_code = 7


class StorageError(RetentionError):
    """A filesystem operation failed."""

    exit_code = 8


class UndoRefused(RetentionError):
    """The undo was refused."""

    exit_code = 9


class Interrupted(RetentionError):
    """Interrupted."""

    def __init__(self, signum: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signum = signum
        self.exit_code = interrupt_exit_code(signum)


EXIT_OK = 0
EXIT_PARTIAL = 3
EXIT_INCONSISTENT = 10
EXIT_SIGINT = 130  # 128 + SIGINT, as a shell reports a process that SIGINT ended
EXIT_SIGTERM = 143  # 128 + SIGTERM


def interrupt_exit_code(signum: int) -> int:
    """The exit code of a command that a signal stopped at a safe point: 128 + its number
    (130 for SIGINT, 143 for SIGTERM), as shells report a process the signal ended."""
    return 128 + int(signum)


_ERRNO_TEXT = {
    "ENOSPC": "disk full",
    "EDQUOT": "disk quota exceeded",
    "EFBIG": "file too large",  # past the file size limit (RLIMIT_FSIZE) or the filesystem's
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EROFS": "read-only filesystem",
    "EIO": "input/output error",
}


def is_hot_journal(exc: BaseException) -> bool:
    """SQLite refused a read because a hot rollback journal must be rolled back first and
    this connection is read-only (``mode=ro``): SQLITE_READONLY_ROLLBACK. Its text, "attempt
    to write a readonly database", is shared with real permission problems, so only the
    extended code tells them apart."""
    return (
        getattr(exc, "sqlite_errorname", None) == "SQLITE_READONLY_ROLLBACK"
        or getattr(exc, "sqlite_errorcode", None) == 776  # SQLITE_READONLY | (3 << 8)
    )


def hot_journal_error(path: object = None) -> CatalogNeedsRecovery:
    """A read-only command met a hot rollback journal (an interrupted write transaction of
    any writer, e.g. the application after a power cut). Exit 7: ``retention recover``
    opens the catalog read-write, which lets SQLite roll the transaction back."""
    where = f"catalog {path}" if path is not None else "the catalog"
    journal = f", {path}-journal," if path is not None else ""
    return CatalogNeedsRecovery(
        f"{where} holds an interrupted transaction (a hot rollback journal{journal} left by"
        " a writer that stopped in the middle of a write); a read-only command cannot roll"
        " it back",
        hint="run `retention recover` (it opens the catalog read-write, so SQLite rolls the"
        " unfinished transaction back; committed data is kept), then run this command again",
    )


def catalog_error(exc: BaseException, path: object = None) -> CatalogError:
    """The one mapping of a database error (SQLite's, PostgreSQL's) to what the operator
    reads: one line (PostgreSQL's DETAIL and HINT lines left out)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    where = f"catalog {path}" if path is not None else "the catalog"
    if is_hot_journal(exc):
        return hot_journal_error(path)
    if "locked" in text or "busy" in text:
        return CatalogError(
            f"{where} is busy (another writer holds it): {text}",
            hint="retry when the application's write finishes",
        )
    if "readonly" in text or "read-only" in text:
        return CatalogError(f"{where} is read-only: {text}", hint="check its permissions")
    if "disk" in text and "full" in text:
        return CatalogError(f"{where}: disk full", hint="free space, then run `retention recover`")
    return CatalogError(f"{where}: {text}")


_ERRNO_HINT = {
    "ENOSPC": "free space on that file's filesystem",
    "EDQUOT": "free space or raise the quota",
    "EFBIG": "raise the file size limit (`ulimit -f`) or free space",
}


def _filename(name: object) -> str:
    """An `OSError`'s file for a message (bytes that are not UTF-8 as escapes)."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "backslashreplace")
    return str(name)


def from_environment(exc: BaseException) -> RetentionError | None:
    """Map an error the environment can cause (disk full, permission denied, an fsync that
    failed, a journal that cannot be written) to a `RetentionError`; None for anything else,
    which is a bug and keeps its traceback."""
    if isinstance(exc, FsyncError):
        return RecoveryError(
            f"fsync failed, the last step may not be durable: {exc}",
            hint="fix the storage, then run `retention recover` (a failed fsync is never retried)",
        )
    if isinstance(exc, JournalError):
        return RecoveryError(f"journal error: {exc}", hint="run `retention recover`")
    # sqlite3 is not imported for this: an error of it can only exist once something has.
    sqlite3 = sys.modules.get("sqlite3")
    if (sqlite3 is not None and isinstance(exc, sqlite3.Error)) or type(exc).__module__.startswith(
        "psycopg"
    ):
        return catalog_error(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, "")
        if name in _ERRNO_TEXT:
            # The file, always when the error carries it (every state file and TRASH.json
            # is written through a step that names it; the journal's appends too).
            where = f" ({_filename(exc.filename)})" if exc.filename is not None else ""
            return StorageError(
                f"{_ERRNO_TEXT[name]}{where}: {exc.strerror or exc}",
                hint=_ERRNO_HINT.get(name, "fix it")
                + ", then run the command again; an interrupted transaction is finished or"
                " rolled back by `retention recover`",
            )
    return None
