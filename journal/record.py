"""On-disk framing of the journal file.

Layout::

    header  = b"RJNL" | u16 BE FORMAT_VERSION | u16 BE reserved (0)          8 bytes
    frame   = u32 BE body length | u32 BE crc32(length bytes + body) | body
    body    = msgpack of Record, as an array [v, kind, txid, payload]

The checksum covers the length field too, so a corrupted length cannot make a garbage
region look like a frame with a plausible size. A frame whose length exceeds
`MAX_BODY_LENGTH` is bad by definition: no writer produces one.
"""

from __future__ import annotations

import struct
import zlib

import msgspec

MAGIC = b"RJNL"
FORMAT_VERSION = 1
HEADER = MAGIC + struct.pack(">HH", FORMAT_VERSION, 0)
HEADER_SIZE = 8
FRAME_OVERHEAD = 8
MAX_BODY_LENGTH = 64 * 1024 * 1024
RECORD_VERSION = 1

BEGIN = "begin"
INTENT = "intent"
COMMITTED = "committed"
ABORTED = "aborted"
DONE = "done"

_FRAME = struct.Struct(">II")
_LEN = struct.Struct(">I")

assert len(HEADER) == HEADER_SIZE


class Record(msgspec.Struct, array_like=True, frozen=True):
    """One journal record. `payload` is opaque to the journal (the application's bytes)."""

    v: int
    kind: str
    txid: str
    payload: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(rec: Record) -> bytes:
    """Return the full frame (length, checksum, body) for `rec`.

    Raises `ValueError` if the encoded body exceeds `MAX_BODY_LENGTH`.
    """
    body = _encoder.encode(rec)
    if len(body) > MAX_BODY_LENGTH:
        raise ValueError(f"record body of {len(body)} bytes exceeds {MAX_BODY_LENGTH}")
    length = _LEN.pack(len(body))
    return length + _LEN.pack(zlib.crc32(length + body)) + body


def decode_frame(buf: bytes | bytearray | memoryview, offset: int) -> tuple[Record, int] | None:
    """Decode the frame starting at `offset` in `buf`.

    Returns ``(record, next_offset)``, or None if the frame is short (extends past the end
    of `buf`), has a length over `MAX_BODY_LENGTH`, a bad checksum, or a body that is not a
    valid `Record`. Never raises for bad data.
    """
    end = len(buf)
    if offset < 0 or offset + FRAME_OVERHEAD > end:
        return None
    length, crc = _FRAME.unpack_from(buf, offset)
    if length > MAX_BODY_LENGTH:
        return None
    body_start = offset + FRAME_OVERHEAD
    body_end = body_start + length
    if body_end > end:
        return None
    mv = memoryview(buf)
    if zlib.crc32(mv[body_start:body_end], zlib.crc32(mv[offset : offset + 4])) != crc:
        return None
    try:
        rec = _decoder.decode(mv[body_start:body_end])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return rec, body_end
