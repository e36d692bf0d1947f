"""Floors, filters, protections, dependencies and the size budget, as a pure function:
hand-checked tables, then hypothesis properties over every combination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.policy import Attrs, DependencyCycle, Item, PolicySpec, evaluate

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

AGED = [Item.make(f"r{n}", day(10 * n)) for n in range(6)]  # r0 (today) .. r5 (50 days ago)


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
    items = [*AGED, Item.make("no-time", None), Item.make("guarded", day(70), protected=True)]
    # keep-last 1 keeps r0; no-time and guarded are kept anyway: 3 of 4, the floor adds r1
    keep, _ = decide(items, keep_last=1, min_keep=4)
    assert set(keep) == {"r0", "no-time", "guarded", "r1"}


# -- the state filter ------------------------------------------------------------------------


def state(rid: str, when: datetime, st_: str | None) -> Item:
    return Item.make(rid, when, attrs=Attrs(state=st_))


JOBS = [
    state("running", day(0), "running"),
    state("done1", day(1), "completed"),
    state("failed", day(2), "failed"),
    state("queued", day(30), "queued"),
    state("null", day(31), None),
    state("done2", day(40), "completed"),
    Item.make("no-attrs", day(50)),  # no state read at all: not terminal either
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
    items = [Item.make("bad", None, attrs=Attrs(state="completed", size=10**12)), *AGED]
    keep, remove = decide(items, keep_last=1, terminal_states=TERMINAL, min_keep=0)
    assert keep["bad"] == ("kept: timestamp missing or unparseable",)
    assert "bad" not in remove


# -- pins and the newest run of a kind -----------------------------------------------------


def backup(rid: str, n: int, kind: str = "inc", parent: str | None = None, **attrs) -> Item:
    return Item.make(rid, day(n), attrs=Attrs(kind=kind, parent=parent, **attrs))


def test_pinned_runs_are_never_deleted_and_count_like_protected_ones() -> None:
    items = [backup("new", 0), backup("mid", 5, pinned=True), backup("old", 9, pinned=True)]
    keep, remove = decide(items, keep_last=2, pins=True)
    # keep-last 2 counts the pinned mid: new and mid; old stays, pinned
    assert keep == {
        "new": ("kept: among the newest 2",),
        "mid": ("kept: pinned", "kept: among the newest 2"),
        "old": ("kept: pinned",),
    }
    assert not remove


def test_the_newest_run_of_a_kind_is_never_deleted() -> None:
    items = [
        backup("i3", 1),
        backup("i2", 2),
        backup("f2", 3, "full"),
        backup("f1", 20, "full"),
        backup("d1", 25, "diff"),
    ]
    keep, remove = decide(items, keep_last=1, newest_of_kind=("full", "diff"))
    assert keep == {
        "i3": ("kept: among the newest 1",),
        "f2": ("kept: newest run of kind 'full'",),
        "d1": ("kept: newest run of kind 'diff'",),
    }
    assert set(remove) == {"i2", "f1"}


def test_the_newest_of_a_kind_is_taken_among_runs_that_may_go() -> None:
    # a newer full is still running: it stays for its state, and the newest completed full
    # stays too (a running backup is no backup yet)
    items = [
        backup("f-running", 1, "full", state="running"),
        backup("f-done", 10, "full", state="completed"),
        backup("f-old", 20, "full", state="completed"),
    ]
    keep, remove = decide(
        items,
        keep_last=0,
        max_age_seconds=86400,
        newest_of_kind=("full",),
        terminal_states=("completed",),
    )
    assert set(keep) == {"f-running", "f-done"} and set(remove) == {"f-old"}


# -- dependencies ----------------------------------------------------------------------------

CHAIN = [
    backup("f1", 30, "full"),
    backup("i1", 20, parent="f1"),
    backup("i2", 10, parent="i1"),
    backup("f2", 5, "full"),
    backup("i3", 1, parent="f2"),
    backup("lost", 2, parent="gone"),  # its parent is not in the catalog (or filtered out)
]


def test_a_run_a_kept_run_depends_on_is_kept_transitively_naming_the_dependant() -> None:
    keep, remove = decide(CHAIN, keep_last=0, dependencies=True, max_age_seconds=11 * 86400)
    # max-age 11d keeps i3, lost, f2, i2; i2 needs i1, which needs f1
    assert keep["i1"] == ("kept: run i2 depends on it",)
    assert keep["f1"] == ("kept: run i1 depends on it",)
    assert keep["f2"][-1] == "kept: run i3 depends on it"  # kept by its age as well
    assert not remove


def test_without_dependencies_the_chain_is_cut() -> None:
    _, remove = decide(CHAIN, max_age_seconds=11 * 86400)
    assert set(remove) == {"i1", "f1"}


def test_runs_without_a_timestamp_or_not_terminal_keep_their_parents() -> None:
    items = [
        backup("p1", 40, state="completed"),
        Item.make("no-time", None, attrs=Attrs(parent="p1")),
        backup("p2", 40, state="completed"),
        backup("queued", 39, parent="p2", state="queued"),
        backup("p3", 40, state="completed"),
    ]
    keep, remove = decide(
        items, max_age_seconds=86400, dependencies=True, terminal_states=("completed",)
    )
    assert keep["p1"] == ("kept: run no-time depends on it",)
    assert "kept: run queued depends on it" in keep["p2"]
    assert set(remove) == {"p3"}


def test_a_parent_id_of_another_type_still_matches() -> None:
    items = [Item.make(42, day(30)), Item.make(43, day(0), attrs=Attrs(parent="42"))]
    keep, _ = decide(items, keep_last=1, dependencies=True)
    assert keep[str(42)] == ("kept: run 43 depends on it",)


@pytest.mark.parametrize(
    ("parents", "cycle"),
    [
        ({"a": "b", "b": "a"}, ["a", "b"]),
        ({"a": "a"}, ["a"]),
        ({"x": "a", "a": "b", "b": "c", "c": "a"}, ["a", "b", "c"]),
    ],
)
def test_a_dependency_cycle_is_an_error_naming_the_runs(parents, cycle) -> None:
    items = [
        Item.make(r, day(i), attrs=Attrs(parent=p)) for i, (r, p) in enumerate(parents.items())
    ]
    items.append(Item.make("free", day(0)))
    with pytest.raises(DependencyCycle) as info:
        evaluate(items, PolicySpec(keep_last=1, dependencies=True), NOW)
    assert sorted(map(str, info.value.runs)) == cycle
    assert str(info.value).startswith("dependency cycle: ")
    # without dependencies, parents are not looked at
    evaluate(items, PolicySpec(keep_last=1), NOW)


# -- properties ------------------------------------------------------------------------------

IDS = [f"j{n:02d}" for n in range(40)]


@st.composite
def job_lists(draw: st.DrawFn) -> list[Item]:
    n = draw(st.integers(0, 40))
    items = []
    for i in range(n):
        when = draw(st.one_of(st.none(), st.integers(0, 400).map(day)))
        s = draw(st.sampled_from([None, "completed", "failed", "running", "queued"]))
        items.append(Item.make(IDS[i], when, protected=draw(st.booleans()), attrs=Attrs(state=s)))
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
@settings(max_examples=100, deadline=None)
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


@st.composite
def backup_lists(draw: st.DrawFn) -> list[Item]:
    """Runs with every attribute; parents point at earlier runs (no cycles), or nowhere."""
    n = draw(st.integers(0, 30))
    items: list[Item] = []
    for i in range(n):
        when = draw(st.one_of(st.none(), st.integers(0, 400).map(day)))
        parent = draw(st.one_of(st.none(), st.just("nowhere"), st.integers(0, max(i - 1, 0))))
        attrs = Attrs(
            state=draw(st.sampled_from([None, "completed", "running"])),
            pinned=draw(st.booleans()),
            kind=draw(st.sampled_from([None, "full", "inc"])),
            parent=(IDS[parent] if i else None) if isinstance(parent, int) else parent,
            size=draw(st.one_of(st.none(), st.integers(0, 1000))),
        )
        items.append(Item.make(IDS[i], when, protected=draw(st.booleans()), attrs=attrs))
    return items


protection_specs = st.fixed_dictionaries(
    {"keep_last": st.integers(0, 5)},
    optional={
        "max_age_seconds": st.integers(86400, 300 * 86400),
        "keep_weekly": st.integers(-1, 6),
        "keep_within_daily": st.sampled_from(["7d", "1m"]),
        "min_keep": st.integers(0, 35),
        "terminal_states": st.just(("completed",)),
        "pins": st.just(True),
        "newest_of_kind": st.sampled_from([("full",), ("full", "inc")]),
        "dependencies": st.just(True),
        "checkpoint": st.just("first"),
    },
)


def check_invariants(items: list[Item], spec: PolicySpec) -> None:
    """What no combination of rules, protections and budget may ever break."""
    d = evaluate(items, spec, NOW)
    kept = {v.item.id for v in d.keep}
    gone = {v.item.id for v in d.remove}
    assert kept | gone == {i.id for i in items} and not kept & gone
    terminal = set(spec.terminal_states or ())
    for v in d.remove:
        it = v.item
        assert it.time is not None, "a run without a timestamp went"
        assert not it.protected
        assert it.attrs is not None
        if spec.pins:
            assert not it.attrs.pinned, "a pinned run went"
        if spec.terminal_states is not None:
            assert it.attrs.state in terminal, "a run not in a terminal state went"
        assert v.reasons and v.reasons[0].startswith("removed: ")
    assert len(kept) >= min(spec.min_keep or 0, len(items)), "below the floor"
    for kind in spec.newest_of_kind or ():
        mine = [
            i
            for i in items
            if i.time is not None
            and i.attrs is not None
            and i.attrs.kind == kind
            and (spec.terminal_states is None or i.attrs.state in terminal)
        ]
        if mine:
            newest = max(mine, key=lambda i: (i.time, str(i.id)))
            assert newest.id in kept, f"the newest {kind} went"
    if spec.dependencies:
        by_id = {i.id: i for i in items}
        for rid in kept:
            parent = by_id[rid].attrs.parent if by_id[rid].attrs else None
            if parent in by_id:
                assert parent in kept, f"{parent} went while {rid}, kept, depends on it"
    assert all(v.reasons for v in d.keep)
    # and the same decision whatever the row order
    again = evaluate(list(reversed(items)), spec, NOW)
    assert [(v.item.id, v.reasons) for v in again.keep] == [(v.item.id, v.reasons) for v in d.keep]
    assert [(v.item.id, v.reasons) for v in again.remove] == [
        (v.item.id, v.reasons) for v in d.remove
    ]


@given(backup_lists(), protection_specs)
@settings(max_examples=100, deadline=None)
def test_protections_are_never_violated_by_any_combination(items, spec) -> None:
    check_invariants(items, PolicySpec(**spec))
