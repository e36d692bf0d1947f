"""A generic write-ahead journal: record framing, fsync helpers, replay, failpoints.

This package knows nothing about runs, policies or SQLite schemas and never imports
`retention`.

The errors and failpoints load with the package; the reader, the record framing and the
writer (msgspec, ctypes for fsync) on first use of one of their names, so that a program
that only catches `JournalError` (``retention --help``) does not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from journal.errors import CorruptJournal, FsyncError, JournalError
from journal.failpoints import declare, failpoint

if TYPE_CHECKING:
    from journal.reader import ReadResult, read_journal
    from journal.record import ABORTED, BEGIN, COMMITTED, DONE, INTENT, Record
    from journal.writer import Journal, TxState, TxStatus, replay

_LAZY = {
    "ReadResult": "journal.reader",
    "read_journal": "journal.reader",
    "ABORTED": "journal.record",
    "BEGIN": "journal.record",
    "COMMITTED": "journal.record",
    "DONE": "journal.record",
    "INTENT": "journal.record",
    "Record": "journal.record",
    "Journal": "journal.writer",
    "TxState": "journal.writer",
    "TxStatus": "journal.writer",
    "replay": "journal.writer",
}


def __getattr__(name: str) -> Any:
    # A name of `_LAZY`: its module is imported and the name cached here. Anything else
    # (a submodule not imported yet, e.g. ``from journal import fsio``) is an
    # AttributeError, which lets the import system find the submodule.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
