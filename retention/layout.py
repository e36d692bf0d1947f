"""Every on-disk path retention uses is built here, and only here.

State directory (default ``.retention/`` beside the config file)::

    <state>/key                 HMAC key for manifests (mode 0600, created on first use)
    <state>/lock                workspace lock (filelock; released by the kernel if we die)
    <state>/lock.owner          who holds the lock (pid, host, command), for the error message
    <state>/journal.wal         write-ahead journal (see `journal.reader`)
    <state>/catalog-id.json     catalog identity binding used before the first apply
    <state>/last-apply.json     summary of the last apply (for `retention status`)

Artifact root::

    <root>/.trash/<txid>/                  one directory per transaction
    <root>/.trash/<txid>/TRASH.json        self-describing list of what was moved (by hand recovery)
    <root>/.trash/<txid>/<nnnnnn>-<name>   a moved artifact directory (flat: one fsync a batch)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec

from retention.errors import StorageError

TRASH_DIRNAME = ".trash"


class StateLayout(msgspec.Struct, frozen=True):
    """Paths inside the state directory.

    A msgspec Struct, not a dataclass: a dataclass costs about 1 ms at import here, on the
    start-up of every command (issue 13)."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / "key"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def lock_owner(self) -> Path:
        return self.root / "lock.owner"

    @property
    def journal(self) -> Path:
        return self.root / "journal.wal"

    @property
    def catalog_binding(self) -> Path:
        return self.root / "catalog-id.json"

    @property
    def last_apply(self) -> Path:
        return self.root / "last-apply.json"


_KINDS = {
    stat.S_IFREG: "a regular file",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, for messages: "a regular file", "a directory", ..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def require_state_dir(state: StateLayout) -> None:
    """Raise `StorageError` when the state directory exists but is not a directory (or a
    component of its path is not one), so no command trips over it later. Absent is fine:
    the commands that write create it."""
    try:
        st = os.stat(state.root)
    except NotADirectoryError:
        raise StorageError(
            f"state directory {state.root} cannot exist: a parent of it is not a directory",
            hint=STATE_DIR_HINT,
        ) from None
    except OSError:
        return  # absent, or unreadable: the operation that needs it reports that
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(
            f"state directory {state.root} is {file_kind(st.st_mode)}, not a directory",
            hint=STATE_DIR_HINT,
        )


STATE_DIR_HINT = (
    "point state.dir (or RETENTION_STATE_DIR) at a directory, or move what is there away"
)


def trash_tx_rel(txid: str) -> bytes:
    """``.trash/<txid>`` relative to the artifact root."""
    return trash_root_rel() + b"/" + txid.encode()


TRASH_INDEX_NAME = b"TRASH.json"


def trash_root_rel() -> bytes:
    """``.trash`` relative to the artifact root."""
    return os.fsencode(TRASH_DIRNAME)


def is_trash_index_name(name: bytes) -> bool:
    """TRASH.json, or a temp file `journal.fsio.write_atomic` left while writing it."""
    return name == TRASH_INDEX_NAME or name.startswith(b"." + TRASH_INDEX_NAME + b".tmp-")


def trash_index_rel(txid: str) -> bytes:
    """The self-describing ``TRASH.json`` of a transaction, relative to the artifact root."""
    return trash_tx_rel(txid) + b"/" + TRASH_INDEX_NAME


def trash_slot_rel(txid: str, index: int, rel_path: bytes, tx_rel: bytes | None = None) -> bytes:
    """Where entry ``index`` of ``txid`` lies in trash, relative to the artifact root.

    Flat (one directory per transaction, so one fsync covers a batch of moves); the
    original name is kept after the index so an operator can recognise it. ``tx_rel``:
    `trash_tx_rel` of ``txid``, when the caller has it already (apply, once per entry).
    """
    name = rel_path.rstrip(b"/").rpartition(b"/")[2] or b"run"  # os.path.basename
    return (tx_rel or trash_tx_rel(txid)) + b"/%06d-" % index + name[:200]
