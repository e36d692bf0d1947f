"""Every named crash point of retention, declared once (the journal declares its own).

A site calls ``failpoint("apply.after_rename")``; ``FAILPOINT=apply.after_rename@3`` in the
environment makes the third hit end the process at once (``os._exit``), with no cleanup.
Tests enumerate the points a run passes through from ``FAILPOINT_LOG`` and crash at each.
"""

from __future__ import annotations

from journal.failpoints import declare, failpoint

APPLY = (
    "apply.after_begin",  # journal BEGIN + intents durable, nothing moved yet
    "apply.after_trash_index",  # TRASH.json written
    "apply.after_rename",  # one directory renamed into trash (per move)
    "apply.after_move_batch",  # a batch of renames made durable (dir fsyncs)
    "apply.before_catalog_commit",  # every directory moved, the catalog transaction next
    "apply.before_commit",  # inside the SQLite transaction, just before COMMIT
    "apply.after_commit",  # catalog committed, journal not yet
    "apply.after_journal_commit",  # journal COMMITTED, DONE pending
    "apply.before_done",  # just before DONE (the purge of expired trash comes after it)
)
RECONCILE = (
    "reconcile.after_rename",  # recovery or finish moved one directory (per move)
    "reconcile.after_sync",  # those moves made durable
)
RECOVER = (
    "recover.before_decision",  # about to write COMMITTED/ABORTED for an interrupted tx
    "recover.before_done",  # reconciled, DONE pending
)
UNDO = (
    "undo.after_begin",
    "undo.after_rename",
    "undo.after_move_batch",
    "undo.before_commit",
    "undo.after_commit",
    "undo.before_done",
)
PURGE = (
    "purge.after_begin",
    "purge.before_commit",  # inside the transaction that marks tombstones purging
    "purge.after_mark",
    "purge.after_remove",  # one trash directory removed (per transaction purged)
    "purge.before_done",
)
JSONDOC = (
    "jsondoc.after_temp_fsync",  # new document durable in its temp file, not yet renamed
    "jsondoc.after_rename",  # renamed onto the document, directory not yet fsynced
)
JOBSTORE = (  # apply and undo on a JSON-document catalog (retention.jobstore)
    "jobstore.apply.after_begin",  # journal BEGIN + digests durable, no tombstone yet
    "jobstore.apply.after_tombstone",  # tombstone durable, document not replaced
    "jobstore.apply.after_replace",  # document replaced (committed), journal not yet
    "jobstore.undo.after_begin",  # journal BEGIN + digests durable
    "jobstore.undo.after_replace",  # records put back (committed), journal not yet
    "jobstore.undo.before_done",  # journal COMMITTED, the apply's tombstone not yet marked
)
# Hit in the helper that compares an apply's rows beside its renames (catalogs.beside), a
# process of its own: crashing there ends the helper, never the apply (which then compares
# the rows itself). Crash sweeps of the apply leave these out.
BESIDE = ("beside.before_answer",)  # compared, answer not written
ALL = APPLY + RECONCILE + RECOVER + UNDO + PURGE + JSONDOC + JOBSTORE + BESIDE
declare(*ALL)

__all__ = ["ALL", "failpoint"]
