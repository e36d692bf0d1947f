"""Durations, instants and sizes: what users type and what they read."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retention.durations import (
    FIRST_US,
    LAST_US,
    format_bytes,
    format_duration,
    format_instant,
    format_instant_us,
    parse_duration,
    parse_instant,
)
from retention.errors import UsageError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("180d", timedelta(days=180)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("1y", timedelta(days=365)),
        ("30min", timedelta(minutes=30)),
        ("6mo", timedelta(days=180)),
        ("45s", timedelta(seconds=45)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 7D ", timedelta(days=7)),
    ],
)
def test_parse_duration_accepts_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_bare_m_is_refused_as_ambiguous() -> None:
    for text in ("6m", "1y6m", "30 m"):
        with pytest.raises(UsageError, match="'m' is ambiguous"):
            parse_duration(text)


@pytest.mark.parametrize("text", ["", "d", "10", "-5d", "5x", "1.5d", "0d", "5d junk", "abc"])
def test_parse_duration_rejects_bad_input_naming_it(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert repr(text) in info.value.message
    assert info.value.exit_code == 2


def test_parse_instant_naive_means_utc_and_zone_is_converted() -> None:
    assert parse_instant("2026-03-01T12:00:00") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("2026-03-01T14:00:00+02:00") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_instant("yesterday")


def test_human_formats() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(int(1.2 * 1024**3)) == "1.2 GiB"
    assert format_duration(3.41) == "3.4 s"
    assert format_duration(timedelta(hours=24)) == "24 h"
    assert format_duration(timedelta(days=7)) == "7 d"
    assert format_instant(datetime(2026, 3, 1, 12, tzinfo=UTC)) == "2026-03-01T12:00:00Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@given(st.integers(FIRST_US, LAST_US))
def test_an_instant_in_microseconds_is_written_as_format_instant_writes_it(at: int) -> None:
    # A plan writes each entry's time from the run's integer instant (`Item.at`): the text
    # must be the one `format_instant` gives for the same instant, before 1970 too.
    assert format_instant_us(at) == format_instant(_EPOCH + timedelta(microseconds=at))


@pytest.mark.parametrize(
    ("at", "text"),
    [
        (FIRST_US, "1100-01-01T00:00:00Z"),
        (LAST_US, "8000-12-31T23:59:59.999999Z"),
        (-1, "1969-12-31T23:59:59.999999Z"),
        (0, "1970-01-01T00:00:00Z"),
        (1_600_000_000_500_000, "2020-09-13T12:26:40.500000Z"),
    ],
)
def test_format_instant_us_at_the_edges(at: int, text: str) -> None:
    assert format_instant_us(at) == text
    assert parse_instant(text) == _EPOCH + timedelta(microseconds=at)
