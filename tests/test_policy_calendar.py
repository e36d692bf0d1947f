"""Calendar rules with restic's ``forget`` semantics, as a pure function.

Hand-checked tables on small lists, as restic's own tests do (the expected sets were worked
out by hand from restic's ``ApplyPolicy`` and Go's ``AddDate``, and are commented), then
hypothesis properties.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.durations import Span, parse_span
from retention.errors import UsageError
from retention.policy import UNITS, Attrs, Item, PolicySpec, evaluate
from retention.policy.calendar import KEY, cutoff, label

NOW = datetime(2030, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def t(text: str) -> datetime:
    """An ISO time; naive means UTC; an offset is kept (as the planner keeps it)."""
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def runs(*rows: tuple[str, str]) -> list[Item]:
    return [Item.make(rid, t(when)) for rid, when in rows]


def kept(items: list[Item], now: datetime = NOW, zone=None, **spec) -> dict[str, tuple]:
    d = evaluate(items, PolicySpec(**spec), now, zone)
    return {str(v.item.id): v.reasons for v in d.keep}


# -- count rules ------------------------------------------------------------------------


DAYS = runs(
    ("d1", "2026-03-10T08:00"),
    ("d1b", "2026-03-10T20:00"),
    ("d2", "2026-03-11T09:00"),
    ("d3", "2026-03-12T10:00"),
    ("d3b", "2026-03-12T23:59:59"),
    ("d4", "2026-03-13T00:00"),
)


def test_keep_daily_keeps_the_newest_run_of_each_of_the_latest_n_days() -> None:
    # newest first: d4 (13th) slot 1, d3b (12th) slot 2, d3 same day, d2 (11th) slot 3: done
    got = kept(DAYS, keep_daily=3)
    assert set(got) == {"d4", "d3b", "d2"}
    assert got["d3b"] == ("kept: daily checkpoint 2026-03-12",)


def test_checkpoint_first_keeps_the_oldest_run_of_each_period() -> None:
    # same periods (13th, 12th, 11th), the first run of each
    got = kept(DAYS, keep_daily=3, checkpoint="first")
    assert set(got) == {"d4", "d3", "d2"}
    assert got["d3"] == ("kept: daily checkpoint 2026-03-12 (first of the day)",)
    # unlimited: every day's first run; the oldest run is its day's first anyway
    assert set(kept(DAYS, keep_daily=-1, checkpoint="first")) == {"d4", "d3", "d2", "d1"}


def test_the_oldest_run_is_kept_by_a_rule_with_slots_left() -> None:
    # e (12th), c (11th), b (10th) take 3 slots; a is the oldest run, in b's day: with
    # slots left (5) restic keeps it too ("oldest"), with none left (3) it goes.
    items = runs(
        ("a", "2026-03-10T08:00"),
        ("b", "2026-03-10T20:00"),
        ("c", "2026-03-11T09:00"),
        ("e", "2026-03-12T10:00"),
    )
    got = kept(items, keep_daily=5)
    assert set(got) == {"a", "b", "c", "e"}
    assert got["a"] == ("kept: oldest run, daily checkpoint 2026-03-10 (the rule had slots left)",)
    assert set(kept(items, keep_daily=3)) == {"b", "c", "e"}
    # the oldest run does not take a second run of keep-last: its bucket is the position
    assert set(kept(items, keep_last=2)) == {"c", "e"}


def test_rules_count_independently_and_reasons_list_every_rule() -> None:
    # One run a day at noon, Sunday 2026-03-01 to Sunday 2026-03-29.
    items = [Item.make(f"{d:02d}", datetime(2026, 3, d, 12, tzinfo=UTC)) for d in range(1, 30)]
    # daily 3: 29, 28, 27. weekly 4 (ISO weeks end on Sunday): 29 (W13), 22 (W12),
    # 15 (W11), 08 (W10). The 29th takes a slot of both: 6 runs, not 7, not 4.
    got = kept(items, keep_daily=3, keep_weekly=4)
    assert sorted(got) == ["08", "15", "22", "27", "28", "29"]
    assert got["29"] == ("kept: daily checkpoint 2026-03-29", "kept: weekly checkpoint 2026-W13")
    assert got["22"] == ("kept: weekly checkpoint 2026-W12",)
    # monthly 2 on top: 29 (March) and the oldest run (1st, February has none): the
    # oldest-run rule keeps it while monthly still has a slot.
    got = kept(items, keep_daily=3, keep_weekly=4, keep_monthly=2)
    assert sorted(got) == ["01", "08", "15", "22", "27", "28", "29"]


def test_iso_weeks_at_year_ends() -> None:
    # 2016-01-01 (a Friday) is in 2015-W53, with 2015-12-28..2016-01-03; 2016-01-04 starts
    # 2016-W01. 2019-12-30 (a Monday) is already 2020-W01.
    assert label("weekly", t("2016-01-01T12:00")) == "2015-W53"
    assert KEY["weekly"](t("2016-01-03T23:59")) == 201553
    assert label("weekly", t("2019-12-30T00:00")) == "2020-W01"
    items = runs(
        ("w53a", "2015-12-28T10:00"),
        ("w53b", "2016-01-01T10:00"),
        ("w53c", "2016-01-03T10:00"),
        ("w01", "2016-01-04T10:00"),
    )
    got = kept(items, keep_weekly=2)
    assert got == {
        "w01": ("kept: weekly checkpoint 2016-W01",),
        "w53c": ("kept: weekly checkpoint 2015-W53",),
    }
    # yearly is the calendar year, not the ISO week-year
    items = runs(
        ("sun", "2019-12-29T10:00"),  # 2019-W52, year 2019
        ("mon", "2019-12-30T10:00"),  # 2020-W01, year 2019
        ("jan", "2020-01-05T10:00"),  # 2020-W01, year 2020
    )
    assert set(kept(items, keep_weekly=-1)) == {"jan", "sun"}
    got = kept(items, keep_yearly=-1)
    assert set(got) == {"jan", "mon", "sun"}  # sun: the oldest run, a slot left
    assert got["mon"] == ("kept: yearly checkpoint 2019",)


def test_months_of_different_lengths_and_leap_days_as_periods() -> None:
    items = runs(
        ("jan31", "2024-01-31T23:00"),
        ("feb28", "2024-02-28T12:00"),
        ("feb29", "2024-02-29T12:00"),
        ("mar01", "2024-03-01T00:00"),
    )
    got = kept(items, keep_monthly=2)
    assert got == {
        "mar01": ("kept: monthly checkpoint 2024-03",),
        "feb29": ("kept: monthly checkpoint 2024-02",),
    }
    assert kept(items, keep_daily=1) == {"mar01": ("kept: daily checkpoint 2024-03-01",)}


def test_hourly_keys_and_labels() -> None:
    items = runs(
        ("a", "2026-03-10T08:05"),
        ("b", "2026-03-10T08:55"),
        ("c", "2026-03-10T09:00"),
        ("d", "2026-03-10T09:59:59"),
    )
    got = kept(items, keep_hourly=1)
    assert got == {"d": ("kept: hourly checkpoint 2026-03-10 09h",)}
    assert set(kept(items, keep_hourly=2)) == {"d", "b"}


# -- unlimited, zero ----------------------------------------------------------------------


def test_unlimited_keeps_one_run_per_period_and_keep_last_unlimited_keeps_all() -> None:
    # newest of the 13th, 12th, 11th, 10th, and the oldest run (d1, the 10th) as well
    assert set(kept(DAYS, keep_daily=-1)) == {"d4", "d3b", "d2", "d1b", "d1"}
    assert set(kept(DAYS, keep_last=-1)) == {r.id for r in DAYS}
    assert kept(DAYS, keep_last=-1)["d1"] == ("kept: keep-last unlimited",)


def test_a_zero_count_is_a_rule_that_is_off() -> None:
    d = evaluate(DAYS, PolicySpec(keep_daily=0, keep_last=1), NOW)
    assert {v.item.id for v in d.keep} == {"d4"}
    assert d.remove[0].reasons == ("removed: not among the newest 1",)


# -- keep-within: from the newest run, calendar-wise ------------------------------------


@pytest.mark.parametrize(
    ("latest", "span", "expected"),
    [
        # Go's AddDate carries an overflowing day: 2026-02-31 is 2026-03-03
        ("2026-03-31T12:00", "1m", "2026-03-03T12:00"),
        # ... and in a leap year 2024-02-31 is 2024-03-02
        ("2024-03-31T12:00", "1m", "2024-03-02T12:00"),
        # a leap day a year back: 2023-02-29 is 2023-03-01
        ("2024-02-29T10:00", "1y", "2023-03-01T10:00"),
        ("2024-02-29T10:00", "4y", "2020-02-29T10:00"),
        # days, then hours as absolute time
        ("2026-05-20T10:00", "2d4h", "2026-05-18T06:00"),
        ("2026-01-31T00:00", "1y2m3d4h", "2024-11-27T20:00"),
        # 30 days is not a month
        ("2026-03-01T00:00", "30d", "2026-01-30T00:00"),
        ("2026-03-01T00:00", "1m", "2026-02-01T00:00"),
    ],
)
def test_cutoff_subtracts_calendar_wise_as_go_adddate(
    latest: str, span: str, expected: str
) -> None:
    assert cutoff(t(latest), parse_span(span), None) == t(expected)


def test_keep_within_counts_back_from_the_newest_run_strictly_after_the_cutoff() -> None:
    # latest 2026-03-31T12:00, 1m back is "2026-02-31" = 2026-03-03T12:00
    items = runs(
        ("latest", "2026-03-31T12:00"),
        ("in", "2026-03-03T12:00:01"),
        ("edge", "2026-03-03T12:00"),  # not after the cutoff: out
        ("out", "2026-03-02T00:00"),
    )
    got = kept(items, keep_within="1m")
    assert set(got) == {"latest", "in"}
    assert got["in"] == ("kept: within 1m of the newest run",)
    d = evaluate(items, PolicySpec(keep_within="1m"), NOW)
    assert d.remove[0].reasons == ("removed: more than 1m before the newest run",)


def test_keep_within_ignores_runs_in_the_future_as_reference_but_keeps_them() -> None:
    now = t("2026-03-15T00:00")
    items = runs(
        ("future", "2026-03-20T00:00"),
        ("a", "2026-03-14T00:00"),
        ("b", "2026-03-10T00:00"),
        ("c", "2026-03-01T00:00"),
    )
    # from a (the newest not in the future): cutoff 03-09; the future run is within
    assert set(kept(items, now, keep_within="5d")) == {"future", "a", "b"}
    # a count rule counts the future run like any other
    assert set(kept(items, now, keep_last=1)) == {"future"}
    # every run in the future: no reference, every run is within (restic's zero time)
    later = runs(("f1", "2026-03-20T00:00"), ("f2", "2026-03-25T00:00"))
    assert set(kept(later, now, keep_within="1d")) == {"f1", "f2"}


def test_a_run_exactly_at_now_is_not_the_reference() -> None:
    now = t("2026-03-15T00:00")
    items = runs(
        ("at-now", "2026-03-15T00:00"),
        ("b", "2026-03-12T00:00"),
        ("c", "2026-03-08T00:00"),
    )
    # reference b (strictly before now): cutoff 03-07, so c is within; were at-now the
    # reference, the cutoff would be 03-10 and c would go
    assert set(kept(items, now, keep_within="5d")) == {"at-now", "b", "c"}


def test_keep_within_daily_keeps_one_run_per_day_within_the_span() -> None:
    items = [
        Item.make(f"{d}-{h:02d}", datetime(2026, 3, d, h, tzinfo=UTC))
        for d in (10, 11, 12)
        for h in (0, 6, 12, 18)
    ]
    # latest 12th 18:00, 2d back: 10th 18:00, strictly after: the 11th and 12th
    got = kept(items, keep_within_daily="2d")
    assert got == {
        "12-18": ("kept: daily checkpoint 2026-03-12 within 2d of the newest run",),
        "11-18": ("kept: daily checkpoint 2026-03-11 within 2d of the newest run",),
    }
    # 3d reaches the whole list: the oldest run (10th 00:00) is kept as well
    got = kept(items, keep_within_daily="3d")
    assert set(got) == {"12-18", "11-18", "10-18", "10-00"}
    assert got["10-00"][0].startswith("kept: oldest run, daily checkpoint 2026-03-10")


# -- zones: the recorded offset, or --tz --------------------------------------------------


def test_periods_are_taken_in_each_runs_recorded_offset() -> None:
    # the same instant, recorded in two offsets: the 10th in +02:00, the 9th in UTC
    items = runs(("a", "2026-03-10T01:00+02:00"), ("b", "2026-03-09T23:00"))
    assert set(kept(items, keep_daily=2)) == {"a", "b"}
    assert kept(items, keep_daily=2)["a"] == ("kept: daily checkpoint 2026-03-10",)
    # with one zone for everybody, they are one day, and one run (keep-daily 1, else the
    # oldest-run rule keeps the other too); ties go by id, the larger first
    assert set(kept(items, zone=UTC, tz="UTC", keep_daily=1)) == {"b"}
    assert set(kept(items, keep_daily=1)) == {"b"}  # own offsets: b sorts first, takes the slot


def test_tz_spring_forward_day_periods() -> None:
    # Berlin, 2021-03-28: 02:00 CET becomes 03:00 CEST at 01:00Z (a 23-hour day)
    items = runs(
        ("26th", "2021-03-26T12:00"),  # 13:00 CET on the 26th
        ("27-2330Z", "2021-03-27T23:30"),  # 00:30 CET on the 28th (27th in UTC)
        ("28-0030Z", "2021-03-28T00:30"),  # 01:30 CET on the 28th
        ("28-0130Z", "2021-03-28T01:30"),  # 03:30 CEST on the 28th
        ("28-2230Z", "2021-03-28T22:30"),  # 00:30 CEST on the 29th
    )
    berlin = kept(items, zone=BERLIN, tz="Europe/Berlin", keep_daily=-1)
    assert berlin == {
        "28-2230Z": ("kept: daily checkpoint 2021-03-29",),
        "28-0130Z": ("kept: daily checkpoint 2021-03-28",),
        "26th": ("kept: daily checkpoint 2021-03-26",),
    }
    utc = kept(items, keep_daily=-1)
    assert set(utc) == {"28-2230Z", "27-2330Z", "26th"}


def test_tz_fall_back_repeated_hour_is_one_hourly_period() -> None:
    # Berlin, 2021-10-31: 03:00 CEST becomes 02:00 CET at 01:00Z; 02:xx happens twice
    items = runs(
        ("30th", "2021-10-30T12:00"),
        ("cest-0215", "2021-10-31T00:15"),
        ("cest-0245", "2021-10-31T00:45"),
        ("cet-0215", "2021-10-31T01:15"),
        ("cet-0245", "2021-10-31T01:45"),
    )
    got = kept(items, zone=BERLIN, tz="Europe/Berlin", keep_hourly=-1)
    assert got == {
        "cet-0245": ("kept: hourly checkpoint 2021-10-31 02h",),
        "30th": ("kept: hourly checkpoint 2021-10-30 14h",),
    }
    # in UTC they are two hours
    assert set(kept(items, keep_hourly=-1)) == {"cet-0245", "cest-0245", "30th"}


def test_tz_keep_within_a_day_across_spring_forward_is_23_hours() -> None:
    # latest 2021-03-28T12:00Z = 14:00 CEST; a day back is 2021-03-27 14:00 CET = 13:00Z
    items = runs(("latest", "2021-03-28T12:00"), ("x", "2021-03-27T12:30"))
    assert set(kept(items, zone=BERLIN, tz="Europe/Berlin", keep_within="1d")) == {"latest"}
    assert set(kept(items, keep_within="1d")) == {"latest", "x"}  # UTC: 24 hours back


def test_tz_cutoff_in_a_skipped_or_repeated_wall_time_resolves_as_go() -> None:
    # 2021-03-29 02:30 CEST back one day is 2021-03-28 02:30, which Berlin skips: Go takes
    # the offset at 02:30Z (CEST), finds 00:30Z outside it, and uses CET: 01:30Z.
    assert cutoff(t("2021-03-29T00:30"), Span(days=1), BERLIN) == t("2021-03-28T01:30")
    # 2021-11-01 02:30 CET back one day is 2021-10-31 02:30, which Berlin has twice: Go
    # lands on the second (CET, 01:30Z), not the first (CEST, 00:30Z) as fold=0 would.
    assert cutoff(t("2021-11-01T01:30"), Span(days=1), BERLIN) == t("2021-10-31T01:30")
    # New York is west of UTC: Go lands on the first 01:30 (EDT, 05:30Z)
    ny = ZoneInfo("America/New_York")
    assert cutoff(t("2021-11-08T06:30"), Span(days=1), ny) == t("2021-11-07T05:30")


def test_cutoff_in_the_runs_own_fixed_offset() -> None:
    # latest 2016-03-01T01:00+02:00 (2016-02-29T23:00Z): a month back in +02:00 is
    # 2016-02-01T01:00+02:00 = 2016-01-31T23:00Z; in UTC it would be 2016-01-29T23:00Z
    latest = datetime(2016, 3, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert cutoff(latest, Span(months=1), None) == t("2016-01-31T23:00")
    assert cutoff(latest.astimezone(UTC), Span(months=1), None) == t("2016-01-29T23:00")


def test_a_span_reaching_before_year_one_keeps_everything() -> None:
    assert cutoff(t("0005-06-01T00:00"), Span(years=10), None) is None
    assert cutoff(t("0001-01-05T00:00"), Span(days=10), None) is None


# -- equal timestamps and order ----------------------------------------------------------


def test_equal_timestamps_are_ordered_by_id_whatever_the_row_order() -> None:
    rows = [("a", "2026-03-10T12:00"), ("b", "2026-03-10T12:00"), ("c", "2026-03-10T12:00")]
    for order in (rows, rows[::-1], [rows[1], rows[0], rows[2]]):
        assert set(kept(runs(*order), keep_last=1)) == {"c"}  # ties: the larger id first
        assert set(kept(runs(*order), keep_daily=1)) == {"c"}
        # unlimited: c for the day, and a, the last in order, as the oldest run
        assert set(kept(runs(*order), keep_daily=-1)) == {"c", "a"}
        assert set(kept(runs(*order), keep_daily=1, checkpoint="first")) == {"a"}


# -- tags -----------------------------------------------------------------------------------


def tagged(rid: str, when: str, tags: frozenset[str] | None) -> Item:
    return Item.make(rid, t(when), attrs=Attrs(tags=tags))


TAGGED = [
    tagged("xy", "2026-03-10T00:00", frozenset({"x", "y"})),
    tagged("x", "2026-03-11T00:00", frozenset({"x"})),
    tagged("none", "2026-03-12T00:00", frozenset()),
    tagged("y", "2026-03-13T00:00", frozenset({"y"})),
    tagged("bad", "2026-03-09T00:00", None),  # the column could not be read
]


def test_keep_tag_keeps_runs_with_every_tag_of_one_list() -> None:
    got = kept(TAGGED, keep_tags=(("x", "y"),))
    assert got == {
        "xy": ("kept: tagged x and y",),
        "bad": ("kept: its tags cannot be read (keep-tag cannot rule it out)",),
    }
    got = kept(TAGGED, keep_tags=(("x",), ("y",)))
    assert got["xy"] == ("kept: tagged x", "kept: tagged y")  # every list that matched
    assert set(got) == {"xy", "x", "y", "bad"}
    assert set(kept(TAGGED, keep_tags=(("",),))) == {"none", "bad"}  # '' = untagged only
    d = evaluate(TAGGED, PolicySpec(keep_tags=(("x", "y"), ("",))), NOW)
    assert d.remove[0].reasons == ("removed: not tagged x and y and not without tags",)


def test_runs_without_attrs_have_no_tags() -> None:
    items = [Item.make("plain", t("2026-03-10T00:00"))]
    assert set(kept(items, keep_tags=(("",),))) == {"plain"}


# -- durations in restic's form ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("2y5m7d3h", Span(2, 5, 7, 3)),
        ("7d", Span(days=7)),
        ("1m", Span(months=1)),
        ("3h1y", Span(years=1, hours=3)),
        (" 0d ", Span()),
    ],
)
def test_parse_span(text: str, span: Span) -> None:
    assert parse_span(text) == span


@pytest.mark.parametrize("text", ["", "7", "1w", "30min", "-1d", "1d1d", "1.5d", "d"])
def test_parse_span_refuses_what_restic_does_not_take(text: str) -> None:
    with pytest.raises(UsageError):
        parse_span(text)


def test_span_renders_as_restic() -> None:
    assert str(parse_span("3h1y")) == "1y3h"
    assert str(Span()) == "0h"


# -- describe -------------------------------------------------------------------------------


def test_describe_names_every_rule() -> None:
    spec = PolicySpec(
        keep_last=3,
        keep_daily=7,
        keep_weekly=-1,
        keep_within="1y",
        keep_within_monthly="2y",
        keep_tags=(("release",), ("",)),
        tz="Europe/Berlin",
    )
    text = spec.describe()
    assert text.startswith(
        "Keep the newest 3 runs, and the newest run of each of the 7 latest days with runs,"
        " and the newest run of every week, and every run within 1y of the newest run, and"
        " the newest run of each month within 2y of the newest run, and every run tagged"
        " release, and every run without tags;"
    )
    assert "Calendar periods are taken in Europe/Berlin." in text
    first = PolicySpec(keep_monthly=1, checkpoint="first").describe()
    assert first.startswith("Keep the first run of the latest month with runs;")


# -- properties -----------------------------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)
utc_times = st.integers(0, 800 * 86400).map(lambda s: BASE + timedelta(seconds=s))
utc_runs = st.lists(
    st.builds(Item.make, id=st.integers(0, 10_000), time=utc_times),
    max_size=50,
    unique_by=lambda i: i.id,
)
counts = st.one_of(st.just(-1), st.integers(1, 12))


@given(utc_runs, st.sampled_from(UNITS), counts, st.booleans())
@settings(max_examples=100, deadline=None)
def test_each_calendar_rule_keeps_at_most_n_runs_one_per_period(items, unit, n, first) -> None:
    spec = PolicySpec(**{f"keep_{unit}": n}, checkpoint="first" if first else None)
    d = evaluate(items, spec, NOW)
    if n != -1:
        assert len(d.keep) <= n
    keys = [KEY[unit](v.item.time) for v in d.keep]
    oldest = min(items, key=lambda i: (i.time, str(i.id)), default=None)
    # never two in one period, except restic's oldest run (kept while slots are left)
    others = [k for v, k in zip(d.keep, keys, strict=True) if v.item is not oldest]
    assert len(others) == len(set(others))
    if first:
        assert len(keys) == len(set(keys))
    # the kept runs are the newest (or first) of the newest periods
    all_keys = sorted({KEY[unit](i.time) for i in items}, reverse=True)
    want = all_keys if n == -1 else all_keys[:n]
    assert set(keys) <= set(want)
    assert set(want[: len(set(keys))]) == set(keys)


rule_fields = st.fixed_dictionaries(
    {},
    optional={
        "keep_last": counts,
        "keep_hourly": counts,
        "keep_daily": counts,
        "keep_weekly": counts,
        "keep_monthly": counts,
        "keep_yearly": counts,
        "keep_within": st.sampled_from(["5d", "1m", "1y2m", "36h"]),
        "keep_within_daily": st.sampled_from(["7d", "1m"]),
        "keep_within_weekly": st.sampled_from(["1m", "3m"]),
        "keep_within_monthly": st.sampled_from(["1y"]),
        "max_age_seconds": st.integers(86400, 400 * 86400),
    },
)


@given(utc_runs, rule_fields, rule_fields, st.booleans())
@settings(max_examples=100, deadline=None)
def test_adding_a_rule_never_removes_more(items, rules, more, first) -> None:
    cp = "first" if first else None
    base = PolicySpec(**rules, checkpoint=cp)
    if base.is_empty() or base.keeps_nothing():
        return
    both = PolicySpec(**(rules | more), checkpoint=cp)
    if any(k in rules and rules[k] != more[k] for k in more):
        return  # a changed value, not an added rule
    removed = {v.item.id for v in evaluate(items, both, NOW).remove}
    assert removed <= {v.item.id for v in evaluate(items, base, NOW).remove}


@given(utc_runs, rule_fields, st.randoms(use_true_random=False))
@settings(max_examples=100, deadline=None)
def test_the_result_does_not_depend_on_row_order(items, rules, rnd: random.Random) -> None:
    spec = PolicySpec(**rules)
    if spec.is_empty() or spec.keeps_nothing():
        return
    shuffled = list(items)
    rnd.shuffle(shuffled)
    a, b = evaluate(items, spec, NOW), evaluate(shuffled, spec, NOW)
    assert [(v.item.id, v.reasons) for v in a.keep] == [(v.item.id, v.reasons) for v in b.keep]
    assert [(v.item.id, v.reasons) for v in a.remove] == [(v.item.id, v.reasons) for v in b.remove]
