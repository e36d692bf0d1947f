"""The size budget (``--max-total-size``), as a pure function: hand-checked tables, then
the protections' invariants with a budget in every combination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from retention.policy import Attrs, Held, Item, PolicySpec, evaluate

from .test_policy_protections import backup_lists, check_invariants, protection_specs

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def run(rid: str, days_ago: float, size: int | None = 10, **attrs) -> Item:
    return Item.make(rid, NOW - timedelta(days=days_ago), attrs=Attrs(size=size, **attrs))


def decide(items: list[Item], **spec):
    d = evaluate(items, PolicySpec(**spec), NOW)
    keep = {str(v.item.id): v.reasons for v in d.keep}
    remove = {str(v.item.id): v.reasons for v in d.remove}
    return keep, remove, d.budget


SIX = [run(f"r{n}", n) for n in range(6)]  # r0 newest .. r5 oldest, 10 bytes each


def test_the_oldest_kept_runs_go_until_the_budget_is_met() -> None:
    keep, remove, report = decide(SIX, keep_last=6, max_total_bytes=35)
    assert set(keep) == {"r0", "r1", "r2"}
    assert remove["r5"] == (
        "removed: over the size budget of 35 B",
        "overruled: among the newest 6",
    )
    assert report is not None
    assert (report.before, report.after, report.removed, report.over) == (60, 30, 3, 0)
    assert report.shortfall() is None


def test_runs_no_rule_keeps_go_anyway_and_do_not_count() -> None:
    keep, remove, report = decide(SIX, keep_last=2, max_total_bytes=20)
    assert set(keep) == {"r0", "r1"} and report is not None
    assert report.removed == 0 and report.before == 20
    assert remove["r5"] == ("removed: not among the newest 2",)


def test_other_runs_go_before_calendar_checkpoints() -> None:
    # r0..r5 on the 1st of six months; plus weekly runs this month. keep-last 6 and
    # keep-monthly 6: the months' runs are checkpoints, the recent extra runs are not
    items = [
        Item.make("m0", datetime(2026, 10, 1, tzinfo=UTC), attrs=Attrs(size=10)),
        Item.make("m1", datetime(2026, 9, 1, tzinfo=UTC), attrs=Attrs(size=10)),
        Item.make("m2", datetime(2026, 8, 1, tzinfo=UTC), attrs=Attrs(size=10)),
        Item.make("w1", datetime(2026, 10, 8, tzinfo=UTC), attrs=Attrs(size=10)),
        Item.make("w2", datetime(2026, 10, 15, tzinfo=UTC), attrs=Attrs(size=10)),
        Item.make("w3", datetime(2026, 10, 22, tzinfo=UTC), attrs=Attrs(size=10)),
    ]
    # monthly 3 keeps w3 (October's newest), m1, m2; keep-last 6 keeps everything.
    # Non-checkpoints, oldest first: m0, w1, w2 go before any checkpoint.
    keep, remove, _ = decide(items, keep_last=6, keep_monthly=3, max_total_bytes=30)
    assert set(keep) == {"w3", "m1", "m2"}
    assert set(remove) == {"m0", "w1", "w2"}
    # one byte less: the oldest checkpoint goes next
    keep, _, _ = decide(items, keep_last=6, keep_monthly=3, max_total_bytes=29)
    assert set(keep) == {"w3", "m1"}


def test_never_a_run_a_kept_run_depends_on() -> None:
    # f (oldest) <- i1 <- i2: every run kept by keep-last; to fit, i2 goes first (its
    # parents are needed while it stays), then i1, then f
    items = [
        run("f", 3, 100, kind="full"),
        run("i1", 2, 10, parent="f"),
        run("i2", 1, 10, parent="i1"),
        run("new", 0, 10),
    ]
    keep, remove, _ = decide(items, keep_last=4, dependencies=True, max_total_bytes=120)
    assert set(keep) == {"f", "i1", "new"} and set(remove) == {"i2"}
    keep, remove, _ = decide(items, keep_last=4, dependencies=True, max_total_bytes=20)
    assert set(keep) == {"new"}
    # without dependencies, the oldest (and largest) goes first
    keep, _, _ = decide(items, keep_last=4, max_total_bytes=115)
    assert set(keep) == {"i1", "i2", "new"}


def test_a_run_kept_only_for_a_dependant_goes_with_it() -> None:
    items = [run("f", 3, 100), run("i1", 2, 10, parent="f"), run("new", 0, 10)]
    # keep-last 2 keeps new and i1, and f only because i1 depends on it
    keep, remove, report = decide(items, keep_last=2, dependencies=True, max_total_bytes=50)
    assert keep == {"new": ("kept: among the newest 2",)}
    assert remove["i1"][0] == "removed: over the size budget of 50 B"
    assert remove["f"] == (
        "removed: over the size budget of 50 B (kept only for run i1, which went)",
        "overruled: run i1 depends on it",
    )
    assert report is not None and report.removed == 2 and report.after == 10


def test_a_budget_that_cannot_be_met_says_by_how_much_and_what_holds_it() -> None:
    items = [
        run("pinned", 9, 500, pinned=True),
        run("newest-full", 8, 300, kind="full"),
        Item.make("no-time", None, attrs=Attrs(size=50)),
        run("a", 1, 40),
        run("b", 2, 40),
        run("running", 3, 20, state="running"),
        run("done", 4, 20, state="completed", parent="newest-full"),
        run("unknown", 5, None, state="completed"),
    ]
    _, remove, report = decide(
        items,
        keep_last=-1,
        pins=True,
        newest_of_kind=("full",),
        dependencies=True,
        max_total_bytes=100,
    )
    # every run only a rule keeps went (no state filter here: running is a run like any
    # other), but not "unknown": removing it frees nothing
    assert set(remove) == {"a", "b", "running", "done"}
    assert report is not None
    assert report.after == 850 and report.over == 750 and report.unknown == 1
    assert report.held == (
        Held("pinned", 1, 500),
        Held("newest of its kind", 1, 300),
        Held("no valid timestamp", 1, 50),
    )
    text = report.shortfall()
    assert text == (
        "size budget 100 B not met: the kept runs hold 850 B, 750 B over (after removing"
        " 4 runs); held by pinned: 1 run, 500 B; newest of its kind: 1 run, 300 B;"
        " no valid timestamp: 1 run, 50 B; 1 kept run of unknown size counted as 0"
    )


def test_the_floor_and_the_state_filter_hold_against_the_budget() -> None:
    items = [run(f"r{n}", n, 100, state="completed") for n in range(5)]
    items.append(run("queued", 0.5, 100, state="queued"))
    keep, _, report = decide(
        items,
        keep_last=-1,
        min_keep=3,
        terminal_states=("completed",),
        max_total_bytes=10,
    )
    # queued stays for its state and counts for the floor: r0 and r1 stay with it
    assert set(keep) == {"queued", "r0", "r1"}
    assert report is not None and report.over == 290
    assert report.held == (Held("min-keep floor", 2, 200), Held("not in a terminal state", 1, 100))


def test_a_run_a_protected_run_depends_on_is_held_for_it() -> None:
    items = [run("base", 5, 1000), run("pin", 1, 1, pinned=True, parent="base")]
    _, _, report = decide(items, keep_last=-1, pins=True, dependencies=True, max_total_bytes=10)
    assert report is not None
    assert report.held == (Held("a kept run depends on it", 1, 1000), Held("pinned", 1, 1))


def test_unknown_sizes_count_as_zero_are_reported_and_never_go_for_the_budget() -> None:
    items = [run("a", 1, None), run("b", 2, 30), Item.make("bare", NOW - timedelta(days=3))]
    keep, remove, report = decide(items, keep_last=-1, max_total_bytes=5)
    # bare is the oldest, but removing it frees nothing: b goes, and that is enough
    assert set(keep) == {"a", "bare"} and set(remove) == {"b"}
    assert report is not None and report.after == 0 and report.unknown == 2


def test_the_budget_stops_as_soon_as_it_is_met() -> None:
    items = [run("big", 5, 1000), *[run(f"s{n}", n / 10, 1) for n in range(5)]]
    keep, remove, _ = decide(items, keep_last=-1, max_total_bytes=10)
    assert set(remove) == {"big"} and len(keep) == 5


sizes_specs = protection_specs.flatmap(
    lambda spec: st.integers(0, 3000).map(lambda b: {**spec, "max_total_bytes": max(b, 1)})
)


@given(backup_lists(), sizes_specs)
@settings(max_examples=100, deadline=None)
def test_protections_hold_with_a_budget_in_any_combination(items, spec) -> None:
    policy = PolicySpec(**spec)
    check_invariants(items, policy)
    d = evaluate(items, policy, NOW)
    report = d.budget
    assert report is not None
    kept_bytes = sum((v.item.attrs.size or 0) if v.item.attrs else 0 for v in d.keep)
    assert report.after == kept_bytes
    assert report.after <= report.before
    by_budget = [v for v in d.remove if v.reasons[0].startswith("removed: over the size budget")]
    assert report.removed == len(by_budget)
    if by_budget:
        assert report.before > report.limit
    if report.over:  # every kept byte is accounted for by what holds it
        assert sum(h.bytes for h in report.held) == report.after
