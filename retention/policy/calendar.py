"""Calendar periods and calendar spans, as restic (Go's ``time`` package) computes them.

A run's period is taken in the UTC offset its timestamp recorded (UTC for naive and epoch
values), or in the zone given with ``--tz``: the same run may fall on another day in
another zone, so the choice is part of the policy. Keys are integers as in restic
(``YYYYMMDDHH``, ``YYYYMMDD``, ISO ``YYYYWW``, ``YYYYMM``, ``YYYY``).

`cutoff` subtracts a restic span (``1y2m3d4h``) the way Go's ``AddDate`` does: years,
months and days on the calendar date in the reference's zone, an overflowing day carried
into the next month (a month back from March 31st is "February 31st", i.e. March 3rd or
2nd), then the hours as absolute time. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo

from retention.durations import EPOCH, Span

US = timedelta(microseconds=1)


def instant_us(t: datetime) -> int:
    """An aware datetime's instant as whole microseconds since the epoch (exact: a
    datetime has no finer unit). `Item.at` holds it."""
    return (t - EPOCH) // US


def _hourly(t: datetime) -> int:
    return ((t.year * 100 + t.month) * 100 + t.day) * 100 + t.hour


def _daily(t: datetime) -> int:
    return (t.year * 100 + t.month) * 100 + t.day


def _weekly(t: datetime) -> int:
    year, week, _ = t.isocalendar()
    return year * 100 + week


def _monthly(t: datetime) -> int:
    return t.year * 100 + t.month


def _yearly(t: datetime) -> int:
    return t.year


KEY: dict[str, Callable[[datetime], int]] = {
    "hourly": _hourly,
    "daily": _daily,
    "weekly": _weekly,
    "monthly": _monthly,
    "yearly": _yearly,
}


def label(unit: str, t: datetime) -> str:
    """The period of local time ``t`` for people: ``2026-03-14 09h``, ``2026-03-14``,
    ``2026-W11`` (ISO week-year and week), ``2026-03``, ``2026``."""
    if unit == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year:04d}-W{week:02d}"
    text = f"{t.year:04d}"
    if unit != "yearly":
        text += f"-{t.month:02d}"
    if unit in ("daily", "hourly"):
        text += f"-{t.day:02d}"
    if unit == "hourly":
        text += f" {t.hour:02d}h"
    return text


def local(t: datetime, zone: tzinfo | None) -> datetime:
    """``t`` as the calendar sees it: in ``zone`` if given, else in its own offset."""
    return t if zone is None else t.astimezone(zone)


def localize(wall: datetime, tz: tzinfo) -> datetime:
    """The instant of naive wall time ``wall`` in ``tz``, resolving a skipped or repeated
    wall time as Go's ``time.Date`` does (restic's ``AddDate`` goes through it): take the
    offset in force at the wall time read as UTC; keep it if the result lies in the same
    offset, else use the offset in force at the result. Returns a UTC datetime."""
    if isinstance(tz, timezone):  # a fixed offset: nothing to resolve
        return wall.replace(tzinfo=tz).astimezone(UTC)
    guess = wall.replace(tzinfo=UTC)
    offset = guess.astimezone(tz).utcoffset()
    assert offset is not None
    utc = guess - offset
    other = utc.astimezone(tz).utcoffset()
    if other is not None and other != offset:
        utc = guess - other
    return utc


def cutoff(latest: datetime, span: Span, zone: tzinfo | None) -> datetime | None:
    """restic's ``latest.AddDate(-y, -m, -d).Add(-h hours)``: a run is within the span when
    its time is strictly after this instant. None when the result would be before year 1
    (every run is within)."""
    t = local(latest, zone)
    months = t.year * 12 + (t.month - 1) - span.months - 12 * span.years
    year, month0 = divmod(months, 12)
    if year < 1:
        return None
    try:
        day = date(year, month0 + 1, 1) + timedelta(days=t.day - 1 - span.days)
        wall = datetime.combine(day, t.time())  # naive: t.time() carries no zone
        tz = t.tzinfo or UTC
        return localize(wall, tz) - timedelta(hours=span.hours)
    except OverflowError:
        return None
