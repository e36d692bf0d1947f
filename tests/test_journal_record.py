"""Record framing: what encode_record writes and what decode_frame accepts or rejects."""

import struct
import zlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journal.record import (
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_BODY_LENGTH,
    Record,
    decode_frame,
    encode_record,
)


def test_header_layout_is_magic_version_and_reserved_zero() -> None:
    assert HEADER == b"RJNL\x00\x01\x00\x00"
    assert len(HEADER) == HEADER_SIZE == 8
    assert MAGIC == b"RJNL"
    assert FORMAT_VERSION == 1


def test_frame_is_length_crc_of_length_and_body_then_msgpack_array_body() -> None:
    rec = Record(1, "intent", "tx-1", b"\x00\xffpayload")
    frame = encode_record(rec)
    length, crc = struct.unpack(">II", frame[:FRAME_OVERHEAD])
    body = frame[FRAME_OVERHEAD:]
    assert length == len(body)
    assert crc == zlib.crc32(frame[:4] + body)
    assert msgspec.msgpack.decode(body) == [1, "intent", "tx-1", b"\x00\xffpayload"]


def test_records_round_trip_back_to_back_with_next_offsets() -> None:
    recs = [
        Record(1, "begin", "a"),
        Record(1, "intent", "a", b"x" * 1000),
        Record(1, "custom-kind-é", "a", b""),
        Record(1, "done", "a"),
    ]
    buf = HEADER + b"".join(encode_record(r) for r in recs)
    off = HEADER_SIZE
    out = []
    while off < len(buf):
        got = decode_frame(buf, off)
        assert got is not None
        rec, off = got
        out.append(rec)
    assert out == recs
    assert off == len(buf)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.text(min_size=1, max_size=20),
    txid=st.text(min_size=1, max_size=40),
    payload=st.binary(max_size=300),
)
def test_any_record_round_trips_through_frame_and_memoryview(
    kind: str, txid: str, payload: bytes
) -> None:
    rec = Record(1, kind, txid, payload)
    frame = b"junk" + encode_record(rec)
    got = decode_frame(memoryview(frame), 4)
    assert got == (rec, len(frame))


def test_decode_frame_returns_none_for_every_strict_prefix_of_a_frame() -> None:
    frame = encode_record(Record(1, "intent", "tx", b"abc"))
    for cut in range(len(frame)):
        assert decode_frame(frame[:cut], 0) is None


def test_decode_frame_returns_none_for_any_single_flipped_bit() -> None:
    frame = encode_record(Record(1, "intent", "tx", b"abc"))
    for i in range(len(frame)):
        for bit in (0x01, 0x80):
            bad = bytearray(frame)
            bad[i] ^= bit
            assert decode_frame(bytes(bad), 0) is None, (i, bit)


def test_decode_frame_rejects_length_over_maximum_even_with_enough_bytes() -> None:
    length = struct.pack(">I", MAX_BODY_LENGTH + 1)
    frame = length + struct.pack(">I", zlib.crc32(length)) + b"\0" * 16
    assert decode_frame(frame, 0) is None


def test_decode_frame_rejects_checksummed_body_that_is_not_a_record() -> None:
    for body in (b"", b"\xc1", msgspec.msgpack.encode([1, 2, 3]), msgspec.msgpack.encode("x")):
        length = struct.pack(">I", len(body))
        frame = length + struct.pack(">I", zlib.crc32(length + body)) + body
        assert decode_frame(frame, 0) is None, body


def test_decode_frame_offset_out_of_range_is_none_not_an_error() -> None:
    frame = encode_record(Record(1, "begin", "t"))
    assert decode_frame(frame, len(frame)) is None
    assert decode_frame(frame, len(frame) + 10) is None
    assert decode_frame(frame, -1) is None


def test_record_is_frozen_and_defaults_payload_to_empty_bytes() -> None:
    rec = Record(1, "begin", "t")
    assert rec.payload == b""
    with pytest.raises(AttributeError):
        rec.kind = "x"  # type: ignore[misc]
