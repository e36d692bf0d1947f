"""Exceptions raised by the journal package.

Every exception the journal raises on purpose derives from `JournalError`, except plain
`OSError` for I/O failures that are not fsync failures (ENOSPC on write, ENOENT, ...).
"""

from __future__ import annotations

import os


class JournalError(Exception):
    """Base class for journal errors."""


class CorruptJournal(JournalError):
    """The journal file cannot be trusted: bad header, or a bad record followed by valid ones.

    Attributes:
        path: the journal file.
        offset: byte offset of the first bad byte (the header start, or the bad frame).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str = "") -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        msg = f"journal {self.path} is corrupt at byte {offset}"
        if reason:
            msg += f": {reason}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[CorruptJournal], tuple[str, int, str]]:
        return (type(self), (self.path, self.offset, self.reason))


class FsyncError(JournalError):
    """An fsync failed. Fatal: never retried.

    After a failed fsync the kernel may have dropped the dirty pages and cleared the error,
    so a retry that "succeeds" proves nothing about what is on disk.

    Attributes:
        path: what was being synced (file or directory), or "" if unknown.
        oserror: the underlying OSError.
    """

    def __init__(self, path: str, oserror: OSError) -> None:
        self.path = path
        self.oserror = oserror
        self.errno = oserror.errno
        super().__init__(f"fsync of {path or '<fd>'} failed: {oserror}")

    def __reduce__(self) -> tuple[type[FsyncError], tuple[str, OSError]]:
        return (type(self), (self.path, self.oserror))
