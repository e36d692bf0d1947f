"""Replay of a journal file: decide which records are valid, never guess.

Recovery decision table (what `read_journal` does with what it finds):

+------------------------------------------------+-------------------------------------------+
| File content                                   | Result                                    |
+================================================+===========================================+
| missing, or zero bytes                         | no records, good_length 0, torn False     |
+------------------------------------------------+-------------------------------------------+
| non-empty, shorter than the header, and a      | torn: no records, good_length 0           |
| prefix of HEADER (crash while creating)        | (the writer rewrites the header)          |
+------------------------------------------------+-------------------------------------------+
| any other header: bad magic, unknown format    | CorruptJournal(path, offset of the bad    |
| version, non-zero reserved bytes               | header field)                             |
+------------------------------------------------+-------------------------------------------+
| header followed by valid frames to the end     | all records, torn False                   |
+------------------------------------------------+-------------------------------------------+
| a bad frame (short, length over the maximum,   | torn tail: records end before the bad     |
| bad checksum, undecodable body) with NO valid  | frame, good_length = its offset, torn     |
| frame starting at any later byte offset        | True. The writer truncates to good_length |
|                                                | and fsyncs before it appends again.       |
+------------------------------------------------+-------------------------------------------+
| a bad frame FOLLOWED by at least one valid     | CorruptJournal(path, offset of the bad    |
| frame (every later byte offset is tried)       | frame): a record in the middle was lost,  |
|                                                | so nothing after it can be trusted, and   |
|                                                | dropping it silently would be a guess.    |
+------------------------------------------------+-------------------------------------------+

Why a torn tail is safe to drop: the writer fsyncs each record before acting on it, so a
record that never completed was never acted on; and the writer never writes after a failed
write (failure is sticky), so a bad frame can only be followed by valid ones through
corruption of the medium, or through a power loss during a batch of unsynced appends
(``Journal.append(sync=False)``) that the disk persisted out of order. Either way the
record order is lost, hence `CorruptJournal`.

What the reader does NOT check: transaction semantics (done by `journal.writer.Journal` on
replay) and payload contents, which are opaque bytes and the application's job.
"""

from __future__ import annotations

import os

import msgspec

from journal.errors import CorruptJournal
from journal.record import (
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_BODY_LENGTH,
    Record,
    decode_frame,
)


class ReadResult(msgspec.Struct, frozen=True):
    """Outcome of `read_journal`.

    records: valid records in file order.
    good_length: byte length of the valid prefix (header plus valid frames), or 0 if even
        the header is incomplete.
    file_length: size of the file as read.
    torn: True iff file_length > good_length (a torn tail to be truncated).
    offsets: byte offset of each record in `records` (same order).

    A msgspec Struct, not a dataclass: a dataclass costs about 1 ms at import here, on the
    start-up of every command (issue 13); msgspec is loaded anyway (`journal.record`).
    """

    records: list[Record]
    good_length: int
    file_length: int
    torn: bool
    offsets: list[int] = []


def _check_header(path: str, data: bytes) -> None:
    if data[:4] != MAGIC:
        raise CorruptJournal(path, 0, f"bad magic {data[:4]!r}, expected {MAGIC!r}")
    version = int.from_bytes(data[4:6], "big")
    if version != FORMAT_VERSION:
        raise CorruptJournal(
            path, 4, f"unknown format version {version} (this code reads {FORMAT_VERSION})"
        )
    if data[6:8] != b"\0\0":
        raise CorruptJournal(path, 6, "non-zero reserved header bytes")


def _valid_frame_after(data: bytes, start: int) -> int | None:
    """Offset of the first valid frame starting at or after `start`, or None."""
    end = len(data) - FRAME_OVERHEAD
    limit = len(data)
    for off in range(start, end + 1):
        # cheap pre-check before the checksum: the length must fit in the file
        length = int.from_bytes(data[off : off + 4], "big")
        if length > MAX_BODY_LENGTH or off + FRAME_OVERHEAD + length > limit:
            continue
        if decode_frame(data, off) is not None:
            return off
    return None


def read_journal(path: str | os.PathLike[str]) -> ReadResult:
    """Read and validate the journal at `path` (see the module's decision table).

    Returns a `ReadResult`; never modifies the file. Raises `CorruptJournal` for a bad
    header or a bad frame followed by a valid one; `OSError` if the file exists but cannot
    be read. The whole file is read into memory (journals are kept small by
    ``Journal.reset_if_idle``).
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ReadResult([], 0, 0, False)
    size = len(data)
    if size == 0:
        return ReadResult([], 0, 0, False)
    if size < HEADER_SIZE:
        if HEADER.startswith(data):
            return ReadResult([], 0, size, True)
        _check_header(spath, data + HEADER[size:])  # names the bad field
        raise CorruptJournal(spath, 0, "short header")  # pragma: no cover - defensive
    _check_header(spath, data)
    records: list[Record] = []
    offsets: list[int] = []
    off = HEADER_SIZE
    while off < size:
        got = decode_frame(data, off)
        if got is None:
            later = _valid_frame_after(data, off + 1)
            if later is not None:
                raise CorruptJournal(
                    spath,
                    off,
                    f"bad record followed by valid records (next valid record at byte {later})",
                )
            break
        rec, nxt = got
        records.append(rec)
        offsets.append(off)
        off = nxt
    good = min(off, size)
    return ReadResult(records, good, size, size > good, offsets)
