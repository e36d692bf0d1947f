"""A generic write-ahead journal: record framing, fsync helpers, replay, failpoints.

This package knows nothing about runs, policies or SQLite schemas and never imports
`retention`.
"""

from journal.errors import CorruptJournal, FsyncError, JournalError
from journal.failpoints import declare, failpoint
from journal.reader import ReadResult, read_journal
from journal.record import ABORTED, BEGIN, COMMITTED, DONE, INTENT, Record
from journal.writer import Journal, TxState, TxStatus, replay

__all__ = [
    "ABORTED",
    "BEGIN",
    "COMMITTED",
    "DONE",
    "INTENT",
    "CorruptJournal",
    "FsyncError",
    "Journal",
    "JournalError",
    "ReadResult",
    "Record",
    "TxState",
    "TxStatus",
    "declare",
    "failpoint",
    "read_journal",
    "replay",
]
