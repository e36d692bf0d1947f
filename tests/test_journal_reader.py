"""read_journal: the recovery decision table, checked byte by byte on real files."""

import os
import random
import shutil
from pathlib import Path

import pytest

from journal import CorruptJournal, Journal, Record, read_journal
from journal.record import HEADER, HEADER_SIZE, encode_record


def _build(path: Path) -> list[Record]:
    """A journal with two transactions (one DONE, one COMMITTED); returns its records."""
    with Journal.open(path) as j:
        j.begin("t1", b"plan-1")
        j.append("t1", "intent", b"delete run 1")
        j.commit("t1")
        j.done("t1")
        j.begin("t2", b"plan-2")
        j.append("t2", "intent", b"delete run 2")
        j.commit("t2", b"last")
    return read_journal(path).records


def test_missing_and_empty_files_hold_no_records(tmp_path: Path) -> None:
    missing = read_journal(tmp_path / "nope.wal")
    assert (missing.records, missing.good_length, missing.file_length, missing.torn) == (
        [],
        0,
        0,
        False,
    )
    empty = tmp_path / "empty.wal"
    empty.write_bytes(b"")
    r = read_journal(empty)
    assert (r.records, r.good_length, r.torn) == ([], 0, False)


def test_header_only_file_holds_no_records_and_is_not_torn(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    p.write_bytes(HEADER)
    r = read_journal(p)
    assert (r.records, r.good_length, r.file_length, r.torn) == ([], HEADER_SIZE, 8, False)


def test_every_strict_prefix_of_the_header_is_torn_with_good_length_zero(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    for n in range(1, HEADER_SIZE):
        p.write_bytes(HEADER[:n])
        r = read_journal(p)
        assert (r.records, r.good_length, r.file_length, r.torn) == ([], 0, n, True), n


@pytest.mark.parametrize(
    ("content", "offset"),
    [
        (b"XJNL\x00\x01\x00\x00", 0),
        (b"RJNL\x00\x02\x00\x00", 4),  # unknown (future) format version
        (b"RJNL\x00\x00\x00\x00", 4),
        (b"RJNL\x00\x01\x00\x01", 6),  # reserved bytes must be zero
        (b"\x00" * 64, 0),  # zero-filled file: never a guess
        (b"RX", 0),  # short, and not a prefix of the header
        (b"RJNL\x00\x02", 4),
    ],
)
def test_bad_magic_or_unknown_version_is_corrupt_at_that_field(
    tmp_path: Path, content: bytes, offset: int
) -> None:
    p = tmp_path / "j.wal"
    p.write_bytes(content + encode_record(Record(1, "begin", "t")))
    if len(content) < HEADER_SIZE:
        p.write_bytes(content)
    with pytest.raises(CorruptJournal) as ei:
        read_journal(p)
    assert ei.value.path == str(p)
    assert ei.value.offset == offset
    assert str(p) in str(ei.value) and f"byte {offset}" in str(ei.value)


def test_valid_journal_reads_all_records_with_offsets(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    recs = _build(p)
    r = read_journal(p)
    assert [(x.kind, x.txid) for x in recs] == [
        ("begin", "t1"),
        ("intent", "t1"),
        ("committed", "t1"),
        ("done", "t1"),
        ("begin", "t2"),
        ("intent", "t2"),
        ("committed", "t2"),
    ]
    assert r.good_length == r.file_length == p.stat().st_size and not r.torn
    assert r.offsets[0] == HEADER_SIZE
    assert r.records[-1].payload == b"last"


def test_truncation_at_every_byte_inside_last_record_is_a_torn_tail_that_open_repairs(
    tmp_path: Path,
) -> None:
    """For each cut inside the last record: read keeps all earlier records (torn=True);
    Journal.open truncates to good_length; a later append then reopens cleanly."""
    src = tmp_path / "src.wal"
    recs = _build(src)
    full = read_journal(src)
    last_off = full.offsets[-1]
    data = src.read_bytes()
    for cut in range(last_off + 1, len(data)):
        p = tmp_path / f"cut-{cut}.wal"
        p.write_bytes(data[:cut])
        r = read_journal(p)
        assert r.records == recs[:-1], cut
        assert (r.good_length, r.file_length, r.torn) == (last_off, cut, True), cut
        with Journal.open(p) as j:
            assert p.stat().st_size == last_off
            assert j.transactions()["t2"].status.value == "active"  # commit record lost
            j.append("t2", "intent", b"after repair")
        again = read_journal(p)
        assert not again.torn
        assert again.records == [*recs[:-1], Record(1, "intent", "t2", b"after repair")]
        p.unlink()


@pytest.mark.parametrize("kind", ["random", "zeros", "ff", "half-frame-header"])
def test_garbage_after_last_record_is_torn_and_truncated_by_open(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "j.wal"
    recs = _build(p)
    good = p.stat().st_size
    rng = random.Random(1234)
    garbage = {
        "random": bytes(rng.randrange(256) for _ in range(3000)),
        "zeros": b"\x00" * 4096,
        "ff": b"\xff" * 100,
        "half-frame-header": b"\x00\x00\x00\x10\x12",
    }[kind]
    with open(p, "ab") as f:
        f.write(garbage)
    r = read_journal(p)
    assert r.records == recs and r.good_length == good and r.torn
    with Journal.open(p):
        pass
    assert p.stat().st_size == good
    assert read_journal(p).records == recs


def test_flipped_byte_anywhere_in_a_middle_record_is_corrupt_at_that_record(
    tmp_path: Path,
) -> None:
    p = tmp_path / "j.wal"
    _build(p)
    full = read_journal(p)
    start, end = full.offsets[2], full.offsets[3]
    data = p.read_bytes()
    bad_path = tmp_path / "bad.wal"
    for i in range(start, end):
        bad = bytearray(data)
        bad[i] ^= 0x40
        bad_path.write_bytes(bad)
        with pytest.raises(CorruptJournal) as ei:
            read_journal(bad_path)
        assert ei.value.offset == start, i
        assert ei.value.path == str(bad_path)


def test_open_of_corrupt_journal_raises_and_leaves_file_byte_identical(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    _build(p)
    full = read_journal(p)
    bad = bytearray(p.read_bytes())
    bad[full.offsets[1] + 10] ^= 0xFF
    p.write_bytes(bad)
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(CorruptJournal) as ei:
        Journal.open(p)
    assert ei.value.offset == full.offsets[1]
    assert f"corrupt at byte {full.offsets[1]}" in str(ei.value)
    assert str(p) in str(ei.value)
    assert p.read_bytes() == bytes(bad)
    assert p.stat().st_mtime_ns == 1_000_000_000


def test_garbage_inserted_between_records_is_corrupt_even_when_misaligned(
    tmp_path: Path,
) -> None:
    """A valid frame at any later byte offset (not only at frame boundaries) makes the bad
    frame corrupt rather than a torn tail."""
    p = tmp_path / "j.wal"
    recs_src = tmp_path / "src.wal"
    _build(recs_src)
    full = read_journal(recs_src)
    data = recs_src.read_bytes()
    cut = full.offsets[4]
    p.write_bytes(data[:cut] + b"\x07garbage" + data[cut:])
    with pytest.raises(CorruptJournal) as ei:
        read_journal(p)
    assert ei.value.offset == cut


def test_torn_record_followed_by_a_complete_record_is_corrupt(tmp_path: Path) -> None:
    """A partial frame followed by a whole one means a lost record in the middle."""
    src = tmp_path / "src.wal"
    _build(src)
    full = read_journal(src)
    data = src.read_bytes()
    a, b = full.offsets[-2], full.offsets[-1]
    p = tmp_path / "j.wal"
    p.write_bytes(data[: a + 5] + data[b:])
    with pytest.raises(CorruptJournal) as ei:
        read_journal(p)
    assert ei.value.offset == a


def test_read_never_modifies_a_torn_file(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    _build(p)
    with open(p, "ab") as f:
        f.write(b"\x00\x01")
    before = p.read_bytes()
    copy = tmp_path / "copy.wal"
    shutil.copyfile(p, copy)
    read_journal(p)
    assert p.read_bytes() == before == copy.read_bytes()
