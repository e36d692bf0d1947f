"""Parsing and rendering of durations, timestamps, and sizes for humans.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import msgspec

from retention.errors import UsageError

_UNITS = {
    "s": 1,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "mo": 30 * 86400,
    "y": 365 * 86400,
}
MAX_DURATION_S = 1000 * 365 * 86400  # keeps every instant +/- a duration inside datetime
# Patterns, not compiled at import: `re` compiles (and caches) one on its first use, and
# most commands never parse a duration, a span or a size (start-up time, issue 13).
_DURATION = r"(\d+)\s*(min|mo|[shdwy])(?![a-z])"
_UNIT_HINT = "use a number and a unit: s, min, h, d, w, mo or y (e.g. 180d, 12h, 2w, 6mo, 1y)"


def parse_duration(text: str) -> timedelta:
    """Parse ``180d``, ``12h``, ``2w``, ``6mo``, ``1y``, ``30min``, ``45s`` or a sum like
    ``1d12h``.

    A month is 30 days, a year 365. A bare ``m`` is refused as ambiguous (minutes to some,
    months to others, as in restic): in a deletion policy that difference matters. Returns a
    positive `timedelta`; raises `UsageError` naming the input for anything else (empty,
    negative, unknown unit, zero, more than 1000 years).
    """
    s = str(text).strip().lower()
    if re.fullmatch(r"(\d+\s*(min|mo|[shdwy])\s*)*\d+\s*m(\s*\d+\s*(min|mo|[shdwy]))*", s):
        raise UsageError(
            f"invalid duration {text!r}: 'm' is ambiguous",
            hint="write min for minutes, mo for months",
        )
    pos = 0
    total = 0
    for m in re.finditer(_DURATION, s):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UsageError(f"invalid duration {text!r}", hint=_UNIT_HINT)
    if total <= 0:
        raise UsageError(f"invalid duration {text!r}: must be greater than zero")
    if total > MAX_DURATION_S:
        raise UsageError(f"invalid duration {text!r}: longer than 1000 years")
    return timedelta(seconds=total)


class Span(msgspec.Struct, frozen=True):
    """A calendar span in restic's form (``1y2m3d4h``): years, months, days and hours.

    Subtracted calendar-wise (see `retention.policy.calendar.cutoff`), not as a fixed
    number of seconds: a month back from March 31st is not 30 days back.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        """restic's rendering: ``1y2m3d4h``, zero parts left out (``0h`` for zero)."""
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


_SPAN_PART = r"(\d+)([ymdh])"
MAX_SPAN_UNITS = 1_000_000  # any more is a typo, and beyond datetime's range anyway
_SPAN_HINT = (
    "use restic's form: whole numbers of y (years), m (months), d (days) and h (hours),"
    " e.g. 7d, 1m, 1y6m, 2y5m7d3h (w and min are not units here; m is months)"
)


def parse_span(text: str) -> Span:
    """Parse restic's duration form ``2y5m7d3h`` (``--keep-within``): each of y, m (months),
    d, h at most once, in any order. ``0d`` is a zero span (the caller decides whether that
    turns a rule off). Raises `UsageError` naming the input for anything else: empty, a
    negative number, an unknown unit (``w``, ``min``, ``s``), a repeated unit."""
    s = str(text).strip().lower()
    values: dict[str, int] = {}
    pos = 0
    for m in re.finditer(_SPAN_PART, s):
        if m.start() != pos:
            break
        unit = m.group(2)
        if unit in values:
            raise UsageError(f"invalid duration {text!r}: {unit!r} given twice", hint=_SPAN_HINT)
        values[unit] = int(m.group(1))
        pos = m.end()
    if not s or pos != len(s):
        raise UsageError(f"invalid duration {text!r}", hint=_SPAN_HINT)
    if any(v > MAX_SPAN_UNITS for v in values.values()):
        raise UsageError(f"invalid duration {text!r}: too long")
    return Span(values.get("y", 0), values.get("m", 0), values.get("d", 0), values.get("h", 0))


_SIZE_SUFFIX = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}
_SIZE = r"(\d+)\s*([a-z]*)"


def parse_size(text: str) -> int:
    """Parse a byte size: ``50G``, ``512M``, ``1T``, ``50GiB`` or a number of bytes. K, M, G
    and T are binary (1024-based, as in restic and du); ``GB``-style suffixes are refused as
    ambiguous. Returns a positive int; raises `UsageError` naming the input otherwise."""
    s = str(text).strip().lower()
    m = re.fullmatch(_SIZE, s)
    hint = "use a number and K, M, G or T (binary: 1G = 1024^3 bytes), e.g. 50G, 512M"
    if m is None or m.group(2) not in _SIZE_SUFFIX:
        if m is not None and m.group(2) in ("kb", "mb", "gb", "tb"):
            raise UsageError(f"invalid size {text!r}: {m.group(2).upper()} is ambiguous", hint=hint)
        raise UsageError(f"invalid size {text!r}", hint=hint)
    size = int(m.group(1)) * _SIZE_SUFFIX[m.group(2)]
    if size <= 0:
        raise UsageError(f"invalid size {text!r}: must be greater than zero")
    if size >= 1 << 63:
        raise UsageError(f"invalid size {text!r}: too large")
    return size


def format_duration(td: timedelta | float) -> str:
    """Render a duration for people: ``23 ms``, ``3.4 s``, ``12 min``, ``5 h``, ``7 d``."""
    secs = td.total_seconds() if isinstance(td, timedelta) else float(td)
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 60:
        return f"{secs:.1f} s" if secs < 10 else f"{secs:.0f} s"
    if secs < 3600:
        return f"{secs / 60:.0f} min"
    if secs < 86400 * 2:
        return f"{secs / 3600:.1f} h".replace(".0 h", " h")
    return f"{secs / 86400:.1f} d".replace(".0 d", " d")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs``, ``3 directories`` (pass ``many`` when ``s`` is not the plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def human_instant(text: str) -> str:
    """An ISO instant for people: minute precision, ``2026-11-29 07:58Z`` (JSON stays exact)."""
    try:
        dt = parse_instant(text)
    except UsageError:
        return text
    return f"{dt:%Y-%m-%d %H:%M}Z"


def format_bytes(n: int) -> str:
    """Render a byte count for people in binary units: ``0 B``, ``512 B``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant given by a user (``--now``); naive means UTC.

    Raises `UsageError` for anything that is not ISO-8601.
    """
    try:
        dt = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid time {text!r}", hint="use ISO-8601, e.g. 2026-03-01T12:00:00Z"
        ) from None
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    if manifest_instant(dt) is None:
        raise UsageError(f"invalid time {text!r}: outside the years 1100 to 8000")
    return dt


def format_instant(dt: datetime) -> str:
    """Render an instant as ISO-8601 UTC with a ``Z`` suffix, second precision if exact."""
    dt = dt.astimezone(UTC)
    text = dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


# The instants a manifest can carry (years 1100 to 8000: `parse_instant`, the manifest's
# `Instant` pattern), as aware datetimes and in microseconds since the epoch.
FIRST_INSTANT = datetime(1100, 1, 1, tzinfo=UTC)
LAST_INSTANT = datetime(8000, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # what instants in microseconds count from
FIRST_US = (FIRST_INSTANT - EPOCH) // timedelta(microseconds=1)
LAST_US = (LAST_INSTANT - EPOCH) // timedelta(microseconds=1)


def manifest_instant(t: datetime) -> datetime | None:
    """``t`` (aware) if a manifest can carry it (`FIRST_INSTANT` to `LAST_INSTANT`), else
    None: how every reader of stored timestamps draws the line."""
    return t if FIRST_INSTANT <= t <= LAST_INSTANT else None


_US_PER_DAY = 86_400_000_000
_EPOCH_DAY = EPOCH.date()


@lru_cache(maxsize=4096)
def _day_text(days: int) -> str:
    d = _EPOCH_DAY + timedelta(days=days)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T"


def format_instant_us(at: int) -> str:
    """`format_instant` of the instant ``at`` microseconds after the epoch (years 1100 to
    8000, `FIRST_US` to `LAST_US`), without building a datetime: a plan writes one per
    entry (100,000 at a million runs), and the day's text is shared by its runs."""
    days, us = divmod(at, _US_PER_DAY)
    s, us = divmod(us, 1_000_000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if us:
        return f"{_day_text(days)}{h:02d}:{m:02d}:{s:02d}.{us:06d}Z"
    return f"{_day_text(days)}{h:02d}:{m:02d}:{s:02d}Z"


_MS_THRESHOLD = 100_000_000_000  # 1e11: as seconds that is year 5138, as milliseconds 1973


def parse_stored_time(
    value: object, fmt: str = "auto", *, keep_offset: bool = False
) -> datetime | None:
    """Interpret a timestamp as stored in a catalog; None when it cannot be parsed, or
    names an instant outside the years 1100 to 8000 (which no manifest can carry: such a
    run is kept, as one without a timestamp, instead of refusing the whole plan).

    ``fmt`` is ``iso`` (ISO-8601 text, naive means UTC), ``epoch_s``, ``epoch_ms`` or
    ``auto`` (numbers above 1e11 are milliseconds, text is ISO-8601 or a number). Never
    raises: a value that is not a timestamp yields None, so the caller can keep the run.
    The result is in UTC, unless ``keep_offset`` asks to keep the UTC offset ISO text
    recorded (the same instant: calendar rules take a run's day in its own offset).
    """
    t = _parse_stored_time(value, fmt, keep_offset)
    return None if t is None else manifest_instant(t)


def _parse_stored_time(value: object, fmt: str, keep_offset: bool) -> datetime | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):  # a typed column (PostgreSQL's timestamptz, timestamp)
        if fmt in ("epoch_s", "epoch_ms"):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            return None
        return value if keep_offset else utc
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    number: float | None = None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float: not a timestamp
            return None
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if fmt != "iso":
            try:
                number = float(text)
            except ValueError:
                number = None
        if number is None:
            if fmt in ("epoch_s", "epoch_ms"):
                return None
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            if dt.tzinfo is None:
                return dt.replace(tzinfo=UTC)
            try:
                utc = dt.astimezone(UTC)
            except OverflowError:  # e.g. 0001-01-01T00:00+05:00: no such instant in UTC
                return None
            return dt if keep_offset else utc
    else:
        return None
    if fmt == "iso" or number != number or number in (float("inf"), float("-inf")):
        return None
    if fmt == "epoch_ms" or (fmt == "auto" and abs(number) >= _MS_THRESHOLD):
        number /= 1000.0
    try:
        return datetime.fromtimestamp(number, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
