"""Floors, filters, protections, dependencies and the size budget, as a pure function:
hand-checked tables, then hypothesis properties over every combination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.policy import Attrs, Item, PolicySpec, evaluate

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    """``n`` days before NOW."""
    return NOW - timedelta(days=n)


def decide(items: list[Item], **spec) -> tuple[dict[str, tuple], dict[str, tuple]]:
    d = evaluate(items, PolicySpec(**spec), NOW)
    return (
        {str(v.item.id): v.reasons for v in d.keep},
        {str(v.item.id): v.reasons for v in d.remove},
    )


# -- min-keep ---------------------------------------------------------------------------------

AGED = [Item(f"r{n}", day(10 * n)) for n in range(6)]  # r0 (today) .. r5 (50 days ago)


def test_min_keep_tops_up_with_the_newest_runs() -> None:
    # max-age 15d keeps r0, r1; the floor of 4 adds r2, r3, the newest of the rest
    keep, remove = decide(AGED, max_age_seconds=15 * 86400, min_keep=4)
    assert set(keep) == {"r0", "r1", "r2", "r3"}
    assert keep["r2"] == ("kept: min-keep 4 (never fewer runs than that)",)
    assert keep["r0"] == ("kept: younger than 15d",)
    assert set(remove) == {"r4", "r5"}


def test_min_keep_adds_nothing_when_the_rules_keep_enough() -> None:
    keep, _ = decide(AGED, max_age_seconds=35 * 86400, min_keep=2)
    assert set(keep) == {"r0", "r1", "r2", "r3"}
    assert all("min-keep" not in r for rs in keep.values() for r in rs)


def test_min_keep_above_the_number_of_runs_keeps_them_all() -> None:
    keep, remove = decide(AGED, keep_last=1, min_keep=100)
    assert len(keep) == 6 and not remove


def test_min_keep_counts_runs_kept_for_any_reason() -> None:
    items = [*AGED, Item("no-time", None), Item("guarded", day(70), protected=True)]
    # keep-last 1 keeps r0; no-time and guarded are kept anyway: 3 of 4, the floor adds r1
    keep, _ = decide(items, keep_last=1, min_keep=4)
    assert set(keep) == {"r0", "no-time", "guarded", "r1"}


# -- the state filter ------------------------------------------------------------------------


def state(rid: str, when: datetime, st_: str | None) -> Item:
    return Item(rid, when, attrs=Attrs(state=st_))


JOBS = [
    state("running", day(0), "running"),
    state("done1", day(1), "completed"),
    state("failed", day(2), "failed"),
    state("queued", day(30), "queued"),
    state("null", day(31), None),
    state("done2", day(40), "completed"),
    Item("no-attrs", day(50)),  # no state read at all: not terminal either
]
TERMINAL = ("completed", "failed", "canceled")


def test_only_terminal_runs_may_go_and_only_they_are_counted() -> None:
    keep, remove = decide(JOBS, keep_last=1, terminal_states=TERMINAL)
    # keep-last 1 counts terminal runs only: done1 (the running one is not counted)
    assert keep["done1"] == ("kept: among the newest 1",)
    assert keep["running"] == ("kept: state 'running' is not terminal",)
    assert keep["queued"] == ("kept: state 'queued' is not terminal",)
    assert keep["null"] == ("kept: state NULL is not terminal",)
    assert keep["no-attrs"] == ("kept: state NULL is not terminal",)
    assert set(remove) == {"failed", "done2"}


def test_a_ttl_on_terminal_runs_scenario_2() -> None:
    # results live 7 days: only terminal ones older than that go
    _, remove = decide(JOBS, max_age_seconds=7 * 86400, terminal_states=TERMINAL)
    assert set(remove) == {"done2"}


def test_runs_without_a_timestamp_are_never_deleted_whatever_else() -> None:
    items = [Item("bad", None, attrs=Attrs(state="completed", size=10**12)), *AGED]
    keep, remove = decide(items, keep_last=1, terminal_states=TERMINAL, min_keep=0)
    assert keep["bad"] == ("kept: timestamp missing or unparseable",)
    assert "bad" not in remove


# -- properties ------------------------------------------------------------------------------

IDS = [f"j{n:02d}" for n in range(40)]


@st.composite
def job_lists(draw: st.DrawFn) -> list[Item]:
    n = draw(st.integers(0, 40))
    items = []
    for i in range(n):
        when = draw(st.one_of(st.none(), st.integers(0, 400).map(day)))
        s = draw(st.sampled_from([None, "completed", "failed", "running", "queued"]))
        items.append(Item(IDS[i], when, protected=draw(st.booleans()), attrs=Attrs(state=s)))
    return items


floor_specs = st.fixed_dictionaries(
    {"keep_last": st.integers(0, 10), "max_age_seconds": st.integers(86400, 300 * 86400)},
    optional={
        "keep_daily": st.integers(1, 10),
        "keep_monthly": st.integers(-1, 5),
        "min_keep": st.integers(0, 45),
        "terminal_states": st.just(TERMINAL),
    },
)


@given(job_lists(), floor_specs)
@settings(max_examples=200, deadline=None)
def test_floor_filter_and_bad_timestamps_are_never_violated(items, spec) -> None:
    d = evaluate(items, PolicySpec(**spec), NOW)
    assert len(d.keep) + len(d.remove) == len(items)
    for v in d.remove:
        assert v.item.time is not None and not v.item.protected
        if "terminal_states" in spec:
            assert v.item.attrs is not None and v.item.attrs.state in TERMINAL
    assert len(d.keep) >= min(spec.get("min_keep", 0), len(items))
    # the floor adds only what it needs, newest first
    if spec.get("min_keep"):
        floor = [v for v in d.keep if any("min-keep" in r for r in v.reasons)]
        if floor:
            assert len(d.keep) == min(spec["min_keep"], len(items))
            oldest_floor = min(v.item.time for v in floor)
            assert all(v.item.time <= oldest_floor for v in d.remove)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_min_keep_zero_or_small_on_an_empty_list(n: int) -> None:
    assert evaluate([], PolicySpec(keep_last=1, min_keep=n), NOW).keep == []
