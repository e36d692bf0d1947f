"""Groups and tiers as a pure function: the policy applies per group (counts, floors,
budgets, calendar references), each group with its tier's spec; dependencies cross groups.
Hand-checked tables, then hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.policy import Attrs, DependencyCycle, Item, PolicySpec, evaluate

NOW = datetime(2026, 11, 1, tzinfo=UTC)
DAY = 86400


def day(n: float) -> datetime:
    return NOW - timedelta(days=n)


def run(rid: str, age: float, group: str | None, tier: str | None = None, **attrs) -> Item:
    return Item.make(rid, day(age), attrs=Attrs(group=(group,), tier=tier, **attrs))


def split(d) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    return (
        {str(v.item.id): v.reasons for v in d.keep},
        {str(v.item.id): v.reasons for v in d.remove},
    )


# -- groups -----------------------------------------------------------------------------------


def test_keep_last_counts_per_group_not_overall() -> None:
    items = [run(f"a{n}", n, "a") for n in range(4)] + [
        run(f"b{n}", n + 0.5, "b") for n in range(4)
    ]
    keep, remove = split(evaluate(items, PolicySpec(keep_last=2, group_by=("tenant",)), NOW))
    assert set(keep) == {"a0", "a1", "b0", "b1"}  # two per tenant, not the two newest overall
    assert set(remove) == {"a2", "a3", "b2", "b3"}


def test_min_keep_is_a_floor_per_group() -> None:
    # tenant a is old: max-age keeps none of it, the floor keeps its newest 2; b is young
    items = [run(f"a{n}", 100 + n, "a") for n in range(4)] + [
        run(f"b{n}", n, "b") for n in range(3)
    ]
    spec = PolicySpec(max_age_seconds=30 * DAY, min_keep=2, group_by=("tenant",))
    keep, remove = split(evaluate(items, spec, NOW))
    assert set(keep) == {"a0", "a1", "b0", "b1", "b2"}
    assert keep["a0"] == ("kept: min-keep 2 (never fewer runs than that)",)
    assert set(remove) == {"a2", "a3"}


def test_keep_within_counts_back_from_each_groups_newest_run() -> None:
    # restic's --group-by: a's newest is 50 days old, b's today; within 10d of each
    items = [run("a0", 50, "a"), run("a1", 55, "a"), run("a2", 70, "a")]
    items += [run("b0", 0.1, "b"), run("b1", 20, "b")]
    spec = PolicySpec(keep_within="10d", group_by=("tenant",))
    keep, remove = split(evaluate(items, spec, NOW))
    assert set(keep) == {"a0", "a1", "b0"}
    assert set(remove) == {"a2", "b1"}


def test_group_values_of_mixed_types_and_null_are_separate_groups() -> None:
    items = [
        Item.make("n1", day(1), attrs=Attrs(group=(None,))),
        Item.make("n2", day(2), attrs=Attrs(group=(None,))),
        Item.make("i1", day(1), attrs=Attrs(group=(7,))),
        Item.make("i2", day(2), attrs=Attrs(group=(7,))),
        Item.make("s1", day(1), attrs=Attrs(group=("7",))),
    ]
    d = evaluate(items, PolicySpec(keep_last=1, group_by=("g",)), NOW)
    keep, remove = split(d)
    assert set(keep) == {"n1", "i1", "s1"}
    assert set(remove) == {"n2", "i2"}
    counts = {g.group: (g.considered, g.removed) for g in d.groups}
    assert counts == {(None,): (2, 1), (7,): (2, 1), ("7",): (1, 0)}


def test_budget_applies_per_group() -> None:
    # each tenant holds 3 runs of 10 bytes; a 15-byte budget per group keeps 1 of each
    items = [
        run(f"{g}{n}", n + (0.5 if g == "b" else 0), g, size=10) for g in "ab" for n in range(3)
    ]
    spec = PolicySpec(keep_last=3, max_total_bytes=15, group_by=("tenant",))
    d = evaluate(items, spec, NOW)
    keep, remove = split(d)
    assert set(keep) == {"a0", "b0"}
    assert set(remove) == {"a1", "a2", "b1", "b2"}
    assert all(g.budget is not None and g.budget.after == 10 for g in d.groups)


def test_dependencies_cross_groups() -> None:
    # an incremental in group "inc" depends on a full in group "full": keeping the
    # incremental keeps the full although its own group's rule would remove it
    items = [
        run("full-old", 40, "full", parent=None),
        run("full-new", 1, "full", parent=None),
        run("inc", 2, "inc", parent="full-old"),
    ]
    spec = PolicySpec(keep_last=1, dependencies=True, group_by=("kind",))
    keep, remove = split(evaluate(items, spec, NOW))
    assert set(keep) == {"full-new", "inc", "full-old"}
    assert keep["full-old"] == ("kept: run inc depends on it",)
    assert not remove


def test_a_cycle_across_groups_is_refused() -> None:
    items = [run("x", 1, "a", parent="y"), run("y", 2, "b", parent="x")]
    with pytest.raises(DependencyCycle):
        evaluate(items, PolicySpec(keep_last=1, dependencies=True, group_by=("g",)), NOW)


# -- tiers ------------------------------------------------------------------------------------

TIERS = {
    "free": PolicySpec(max_age_seconds=30 * DAY),
    "pro": PolicySpec(max_age_seconds=365 * DAY),
    "enterprise": PolicySpec(keep_last=-1),
}


def tiered(**more) -> PolicySpec:
    return PolicySpec(group_by=("org_id",), tiers=TIERS, tier_source="plan", **more)


def test_each_group_gets_its_tiers_days() -> None:
    ages = (10, 40, 200, 400)
    items = [run(f"{t}-{a}", a, f"org-{t}", t) for t in ("free", "pro", "enterprise") for a in ages]
    keep, remove = split(evaluate(items, tiered(), NOW))
    assert set(remove) == {"free-40", "free-200", "free-400", "pro-400"}
    assert remove["free-40"] == ("removed: older than 30d",)
    assert keep["enterprise-400"] == ("kept: keep-last unlimited",)


def test_a_group_whose_tier_has_no_policy_keeps_every_run() -> None:
    items = [run("u1", 900, "org-x", "legacy"), run("u2", 1000, "org-y", None)]
    items += [run("f1", 900, "org-f", "free"), run("f2", 1, "org-f", "free")]
    d = evaluate(items, tiered(), NOW)
    keep, remove = split(d)
    assert keep["u1"] == ("kept: tier 'legacy' has no policy",)
    assert keep["u2"] == ("kept: no tier",)
    assert set(remove) == {"f1"}
    unruled = {g.group: g.spec for g in d.groups if g.spec is None}
    assert set(unruled) == {("org-x",), ("org-y",)}


def test_tiers_without_group_by_group_by_tier() -> None:
    items = [run("a", 40, None, "free"), run("b", 40, None, "pro")]
    spec = PolicySpec(tiers=TIERS, tier_source="plan")
    keep, remove = split(evaluate(items, spec, NOW))
    assert set(keep) == {"b"} and set(remove) == {"a"}


def test_an_invalid_tier_spec_is_refused_naming_the_tier() -> None:
    bad = {"free": PolicySpec(keep_last=-5)}
    with pytest.raises(ValueError, match="tier 'free'"):
        evaluate([], PolicySpec(tiers=bad, tier_source="plan"), NOW)


def test_describe_lists_each_tier_on_its_own_line() -> None:
    text = tiered(min_keep=1).describe().splitlines()
    assert text[0].startswith("For each group of runs by org_id, the policy of its tier (plan)")
    assert "  tier free: keep every run younger than 30d." in text
    assert "  tier enterprise: keep every run (keep-last unlimited)." in text


# -- properties -------------------------------------------------------------------------------

groups_st = st.sampled_from(["a", "b", "c"])
runs_st = st.lists(
    st.tuples(st.integers(0, 400), groups_st, st.integers(0, 50), st.booleans()),
    max_size=40,
)
spec_st = st.fixed_dictionaries(
    {},
    optional={
        "keep_last": st.integers(0, 4),
        "max_age_seconds": st.integers(1, 200).map(lambda d: d * DAY),
        "keep_daily": st.integers(1, 5),
        "keep_monthly": st.integers(1, 3),
        "min_keep": st.integers(1, 4),
        "max_total_bytes": st.integers(1, 200),
    },
).filter(
    lambda d: any(k in d for k in ("keep_last", "max_age_seconds", "keep_daily", "keep_monthly"))
)


def _items(rows) -> list[Item]:
    return [
        Item.make(f"r{k}", day(a / 3), attrs=Attrs(group=(g,), size=s, pinned=p))
        for k, (a, g, s, p) in enumerate(rows)
    ]


@settings(max_examples=120, deadline=None)
@given(runs_st, spec_st)
def test_grouped_equals_each_group_alone(rows, fields) -> None:
    """Without dependencies, a grouped policy decides each run exactly as the same policy
    evaluated on its group alone: groups never see each other's runs."""
    items = _items(rows)
    grouped = evaluate(items, PolicySpec(pins=True, group_by=("g",), **fields), NOW)
    kept = {v.item.id for v in grouped.keep}
    for g in "abc":
        alone = evaluate(
            [it for it in items if it.attrs and it.attrs.group == (g,)],
            PolicySpec(pins=True, **fields),
            NOW,
        )
        assert {v.item.id for v in alone.keep} == {
            it.id for it in items if it.attrs and it.attrs.group == (g,) and it.id in kept
        }


@settings(max_examples=120, deadline=None)
@given(runs_st, spec_st, st.randoms(use_true_random=False))
def test_grouped_floors_and_pins_hold_and_order_does_not_matter(rows, fields, rnd) -> None:
    items = _items(rows)
    spec = PolicySpec(pins=True, group_by=("g",), **fields)
    d = evaluate(items, spec, NOW)
    kept = {v.item.id for v in d.keep}
    assert all(it.id in kept for it in items if it.attrs and it.attrs.pinned)
    floor = fields.get("min_keep", 0)
    for g in "abc":
        members = [it for it in items if it.attrs and it.attrs.group == (g,)]
        assert sum(it.id in kept for it in members) >= min(floor, len(members))
    shuffled = list(items)
    rnd.shuffle(shuffled)
    again = evaluate(shuffled, spec, NOW)
    assert {v.item.id for v in again.keep} == kept
    assert {v.item.id: v.reasons for v in again.remove} == {v.item.id: v.reasons for v in d.remove}


# -- erasure ----------------------------------------------------------------------------------


def test_an_erasure_takes_every_matching_run_whatever_the_rules_and_pins() -> None:
    items = [
        Item.make("mine-new", day(1), attrs=Attrs(erase=True, pinned=True)),
        Item.make("mine-undated", None, attrs=Attrs(erase=True)),
        Item.make("mine-guarded", day(3), protected=True, attrs=Attrs(erase=True)),
        Item.make("other", day(900), attrs=Attrs()),
    ]
    keep, remove = split(evaluate(items, PolicySpec(erase=("org_id", "o1"), pins=True), NOW))
    assert set(remove) == {"mine-new", "mine-undated"}
    assert remove["mine-new"] == ("removed: erasure request (org_id = 'o1')",)
    assert keep["mine-guarded"] == ("kept: protected (catalog.protect), not erased",)
    assert keep["other"] == ("kept: not part of the erasure request",)


def test_dependants_of_an_erased_run_go_with_it_transitively() -> None:
    items = [
        Item.make("full", day(10), attrs=Attrs(erase=True)),
        Item.make("inc1", day(9), attrs=Attrs(parent="full")),
        Item.make("inc2", None, attrs=Attrs(parent="inc1")),
        Item.make("unrelated", day(1), attrs=Attrs(parent=None)),
    ]
    spec = PolicySpec(erase=("kind", "x"), dependencies=True)
    keep, remove = split(evaluate(items, spec, NOW))
    assert set(remove) == {"full", "inc1", "inc2"}
    assert remove["inc2"] == ("removed: depends on run inc1, which the erasure removes",)
    assert set(keep) == {"unrelated"}
