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
4     catalog problem (missing file, missing table or column, not SQLite, busy)
5     manifest refused (tampered, expired, foreign catalog, bad key)
6     another retention process holds the workspace lock
7     recovery needed or recovery stopped (journal corrupt, directory missing)
8     filesystem problem (permission denied, disk full, other filesystem)
9     undo refused (already purged, purging, unknown or already undone txid)
====  ==========================================================================
"""

from __future__ import annotations


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


class StorageError(RetentionError):
    """A filesystem operation failed."""

    exit_code = 8


class UndoRefused(RetentionError):
    """The undo was refused."""

    exit_code = 9


EXIT_OK = 0
EXIT_PARTIAL = 3
