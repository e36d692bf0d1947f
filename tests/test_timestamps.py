"""Stored timestamps: `durations.parse_stored_time`, and what plan does with bad ones.

A timestamp that cannot be parsed never makes a run removable (safety first); the
time columns are tried in order (``started_at`` then ``created_at``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from retention.durations import parse_stored_time

from .conftest import NOW_TEXT, invoke

T = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
EPOCH = int(T.timestamp())  # 1772368215


@pytest.mark.parametrize(
    ("value", "fmt", "expected"),
    [
        ("2026-03-01T12:30:15+00:00", "auto", T),
        ("2026-03-01T14:30:15+02:00", "auto", T),
        ("2026-03-01T12:30:15Z", "auto", T),
        ("2026-03-01T12:30:15z", "auto", T),
        ("2026-03-01T12:30:15", "auto", T),  # naive means UTC
        ("2026-03-01 12:30:15", "auto", T),  # SQLite's datetime('now') form
        ("  2026-03-01 12:30:15  ", "auto", T),
        ("2026-03-01T12:30:15.250000Z", "auto", T + timedelta(milliseconds=250)),
        ("2026-03-01", "auto", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-03-01T12:30:15Z", "iso", T),
        (EPOCH, "auto", T),
        (float(EPOCH), "auto", T),
        (EPOCH + 0.5, "auto", T + timedelta(milliseconds=500)),
        (str(EPOCH), "auto", T),
        (f"{EPOCH}.5", "auto", T + timedelta(milliseconds=500)),
        (EPOCH, "epoch_s", T),
        (str(EPOCH), "epoch_s", T),
        (EPOCH * 1000, "auto", T),  # above 1e11: milliseconds
        (EPOCH * 1000 + 7, "auto", T + timedelta(milliseconds=7)),
        (str(EPOCH * 1000), "auto", T),
        (EPOCH * 1000, "epoch_ms", T),
        (str(EPOCH * 1000), "epoch_ms", T),
        (10_000_000, "epoch_ms", datetime(1970, 1, 1, 2, 46, 40, tzinfo=UTC)),  # explicit wins
        (10_000_000, "auto", datetime(1970, 4, 26, 17, 46, 40, tzinfo=UTC)),  # below: seconds
    ],
)
def test_parse_stored_time_accepts_iso_and_epoch_forms(value, fmt, expected) -> None:
    got = parse_stored_time(value, fmt)
    assert got == expected
    assert got is not None and got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "fmt"),
    [
        (None, "auto"),
        ("", "auto"),
        ("   ", "auto"),
        ("yesterday", "auto"),
        ("2026-13-45", "auto"),
        ("2026-03-01T25:00:00", "auto"),
        ("nan", "auto"),
        ("inf", "auto"),
        ("-inf", "auto"),
        (float("nan"), "auto"),
        (float("inf"), "auto"),
        ("1e400", "auto"),
        (10**18, "auto"),  # milliseconds still past year 9999
        (10**30, "auto"),
        pytest.param(10**400, "auto", id="int-beyond-float"),
        (-(10**18), "auto"),
        (True, "auto"),
        (False, "auto"),
        (True, "epoch_s"),
        (b"\x00\xff\xfe", "auto"),
        (b"\xde\xad\xbe\xef", "epoch_s"),
        (b"", "auto"),
        (memoryview(b"2026-03-01"), "auto"),
        (["2026-03-01"], "auto"),
        (object(), "auto"),
        (EPOCH, "iso"),  # a number is not ISO text
        (str(EPOCH), "iso"),
        ("2026-03-01T12:30:15Z", "epoch_s"),  # ISO text is not a number
        ("2026-03-01T12:30:15Z", "epoch_ms"),
        # Instants no manifest can carry (outside the years 1100 to 8000):
        ("1050-06-01T00:00:00", "auto"),
        ("1100-01-01T00:30:00+01:00", "auto"),  # 1099 in UTC
        ("8001-01-01T00:00:00Z", "auto"),
        (-30_610_224_000, "auto"),  # 1000-01-01 in seconds
        (-30_610_224_000, "epoch_s"),
        ("-30610224000", "epoch_s"),
        (221_845_392_000_000, "auto"),  # 9000-01-01 in milliseconds
        (221_845_392_000_000, "epoch_ms"),
        (datetime(9000, 1, 1, tzinfo=UTC), "auto"),  # a typed column (PostgreSQL)
    ],
)
def test_parse_stored_time_returns_none_for_anything_else_and_never_raises(value, fmt) -> None:
    assert parse_stored_time(value, fmt) is None


@pytest.mark.parametrize(
    "value",
    ["1100-01-01T00:00:00Z", "1100-01-01T01:00:00+01:00", "8000-12-31T23:59:59.999999Z"],
)
def test_parse_stored_time_accepts_the_first_and_last_instants_a_manifest_carries(value) -> None:
    assert parse_stored_time(value) is not None


def test_parse_stored_time_with_other_zone_converts_to_utc() -> None:
    got = parse_stored_time("2026-03-01T07:30:15-05:00")
    assert got == T and got.tzinfo is not None
    assert got.astimezone(timezone(timedelta(hours=-5))).hour == 7


# -- end to end: plan never removes a run whose timestamp is not valid ---------------------


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace dir as cwd, clean RETENTION_* environment, long manifest TTL."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path


OLD = "2020-01-01T00:00:00Z"  # far older than any max age used here
NEW = "2026-10-31T00:00:00Z"


def _catalog(root: Path, rows: list[tuple]) -> None:
    (root / "data" / "backtests").mkdir(parents=True)
    db = sqlite3.connect(root / "data" / "catalog.db")
    db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, started_at, created_at)")
    db.execute("CREATE TABLE run_metrics (run_id TEXT, value REAL)")
    db.executemany("INSERT INTO runs VALUES (?, ?, ?)", rows)
    db.commit()
    db.close()
    for r in rows:
        (root / "data" / "backtests" / r[0]).mkdir()
        (root / "data" / "backtests" / r[0] / "f.txt").write_text(r[0])


def _plan_ids(*flags: str) -> list[str]:
    result = invoke("plan", "--max-age", "30d", "--now", NOW_TEXT, *flags)
    assert result.exit_code == 0, result.stderr
    envelope = json.loads(result.stdout)
    return sorted(e["run_id"] for e in envelope["payload"]["entries"])


def test_plan_keeps_runs_with_garbage_or_missing_timestamps(ws: Path) -> None:
    rows = [
        ("old-iso", None, OLD),
        ("old-epoch-s", None, 1577836800),
        ("old-epoch-ms", None, 1577836800000),
        ("old-epoch-text", None, "1577836800"),
        ("new", None, NEW),
        ("garbage", None, "last tuesday"),
        ("empty", None, ""),
        ("null", None, None),
        ("blob", None, b"\x00\xff"),
        ("bool-like", None, "true"),
        ("nan", None, "NaN"),
        ("huge", None, 10**18),
        # Old beyond what a manifest carries (years 1100 to 8000): kept, as unparseable,
        # where one such run used to refuse the whole plan ("invalid time '1050-…'").
        ("ancient-iso", None, "1050-06-01T00:00:00"),
        ("ancient-epoch-s", None, -30_610_224_000),
        ("ancient-epoch-ms", None, -30_610_224_000_000),
    ]
    _catalog(ws, rows)
    assert _plan_ids() == ["old-epoch-ms", "old-epoch-s", "old-epoch-text", "old-iso"]


def test_plan_time_columns_fall_back_from_started_at_to_created_at_when_null(ws: Path) -> None:
    rows = [
        ("started-old", OLD, NEW),  # started_at wins over a newer created_at
        ("started-new", NEW, OLD),  # started_at wins over an older created_at
        ("null-started-old-created", None, OLD),  # NULL started_at: created_at decides
        ("null-started-new-created", None, NEW),
        ("both-null", None, None),  # nothing valid: kept
        ("null-started-garbage-created", None, "soon"),  # nothing valid: kept
    ]
    _catalog(ws, rows)
    ids = _plan_ids()
    assert ids == _plan_ids()  # deterministic
    (ws / "retention.toml").write_text('[catalog]\ntime_columns = ["started_at", "created_at"]\n')
    assert _plan_ids() == ["null-started-old-created", "started-old"]
    # Without the fallback only created_at counts:
    assert ids == ["null-started-old-created", "started-new"]


def test_plan_keeps_run_whose_started_at_is_garbage_even_if_created_at_is_old(ws: Path) -> None:
    # Only NULL falls through to created_at: a value that is there but invalid (garbage,
    # empty text, a blob) is the run's timestamp, so the run has none and is kept.
    _catalog(
        ws,
        [
            ("garbage-started", "not a time", OLD),
            ("empty-started", "", OLD),
            ("blob-started", b"\x01\x02", OLD),
            ("null-started", None, OLD),
            ("fine", NEW, NEW),
        ],
    )
    (ws / "retention.toml").write_text('[catalog]\ntime_columns = ["started_at", "created_at"]\n')
    assert _plan_ids() == ["null-started"]


def test_plan_with_explicit_epoch_ms_format_reads_small_numbers_as_milliseconds(ws: Path) -> None:
    # 10**10 ms is April 1970 (old); read as seconds it would be year 2286 (young).
    _catalog(ws, [("ms", None, 10**10), ("new", None, NEW)])
    assert _plan_ids() == []
    (ws / "retention.toml").write_text('[catalog]\ntime_format = "epoch_ms"\n')
    # NEW is ISO text, which epoch_ms does not accept: that run is kept as unparseable.
    assert _plan_ids() == ["ms"]


FIRST_S = -27_454_550_400  # 1100-01-01T00:00:00Z, the first instant a manifest carries
LAST_S = 190_320_019_199  # 8000-12-31T23:59:59Z, the last whole second


def test_the_years_a_manifest_carries_are_read_to_the_second_at_both_edges(ws: Path) -> None:
    # Whole epoch seconds are read inline (without a datetime) within the edges and by
    # `time_reader` beyond them: both must draw the line at the same second.
    assert parse_stored_time(FIRST_S, "epoch_s") == datetime(1100, 1, 1, tzinfo=UTC)
    assert parse_stored_time(FIRST_S - 1, "epoch_s") is None
    assert parse_stored_time(LAST_S, "epoch_s") == datetime(8000, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parse_stored_time(LAST_S + 1, "epoch_s") is None
    assert parse_stored_time("1100-01-01T01:00:00+01:00", keep_offset=True) is not None
    assert parse_stored_time("1100-01-01T00:30:00+01:00", keep_offset=True) is None
    # A run one second past the last instant has no time: it does not take a keep-last
    # place from the older runs (read as the newest run, it would, and "b" would go too).
    _catalog(
        ws,
        [
            ("first", None, FIRST_S),  # old: removed
            ("before-first", None, FIRST_S - 1),  # no time: kept
            ("a", None, 1_577_836_800),
            ("b", None, 1_577_836_801),
            ("last", None, LAST_S),
            ("after-last", None, LAST_S + 1),  # no time: kept, takes no place
        ],
    )
    (ws / "retention.toml").write_text('[catalog]\ntime_format = "epoch_s"\n')
    result = invoke("plan", "--keep-last", "2", "--now", NOW_TEXT)
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)["payload"]["entries"]
    assert [(e["run_id"], e["time"]) for e in entries] == [
        ("first", "1100-01-01T00:00:00Z"),
        ("a", "2020-01-01T00:00:00Z"),
    ]
