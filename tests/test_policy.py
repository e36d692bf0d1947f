"""The policy is a pure function: invariants with hypothesis, then golden cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retention.policy import Item, PolicySpec, evaluate

NOW = datetime(2026, 11, 1, tzinfo=UTC)
GOLDEN = Path(__file__).parent / "golden" / "policy"

times = st.one_of(
    st.none(),
    st.integers(min_value=-3 * 365 * 86400, max_value=2 * 86400).map(
        lambda s: NOW + timedelta(seconds=s)
    ),
)
item_lists = st.lists(
    st.builds(Item.make, id=st.integers(0, 10_000), time=times, protected=st.booleans()),
    max_size=60,
    unique_by=lambda i: i.id,
)
specs = st.builds(
    PolicySpec,
    keep_last=st.one_of(st.none(), st.integers(0, 70)),
    max_age_seconds=st.one_of(st.none(), st.integers(1, 4 * 365 * 86400)),
).filter(lambda s: not s.is_empty())


@given(item_lists, specs)
@settings(max_examples=150, deadline=None)
def test_keep_and_remove_partition_the_input_and_every_item_has_a_reason(items, spec) -> None:
    d = evaluate(items, spec, NOW)
    ids = [v.item.id for v in d.keep + d.remove]
    assert sorted(ids) == sorted(i.id for i in items)
    assert all(v.reasons for v in d.keep + d.remove)
    assert all(v.keep for v in d.keep) and not any(v.keep for v in d.remove)
    assert all(v.item.time is not None and not v.item.protected for v in d.remove)


@given(item_lists, specs, st.one_of(st.none(), st.integers(1, 80)))
@settings(max_examples=150, deadline=None)
def test_without_kept_verdicts_the_decision_is_the_same_counted(items, spec, floor) -> None:
    """`evaluate(..., kept=False)` (plan, which only counts what it keeps) removes the same
    runs for the same reasons, lists the same runs without a timestamp, and counts the
    dated kept runs it does not list (or lists them all, where it is not the common
    case)."""
    spec = msgspec.structs.replace(spec, min_keep=floor)
    full = evaluate(items, spec, NOW)
    lean = evaluate(items, spec, NOW, kept=False)
    assert lean.remove == full.remove and lean.budget == full.budget
    assert len(lean.keep) + lean.unlisted == len(full.keep)
    assert lean.keep == full.keep[: len(lean.keep)]
    if lean.unlisted:  # the common case: only the runs without a timestamp are listed
        assert all(v.item.at is None for v in lean.keep)
    else:  # nothing left out (protections, a floor that added runs, or nothing dated kept)
        assert lean == full


@given(
    st.lists(
        st.builds(
            Item.make,
            id=st.text(min_size=1, max_size=3),
            time=st.sampled_from([NOW, NOW - timedelta(days=1), NOW - timedelta(days=2)]),
        ),
        max_size=60,
        unique_by=lambda i: i.id,
    ),
    st.integers(0, 70),
)
@settings(max_examples=150, deadline=None)
def test_text_ids_with_equal_times_are_ordered_by_id_as_sort_key_orders(items, n) -> None:
    """Text ids are sorted without a key tuple per run (two stable sorts): the order is
    still descending `sort_key` (instant, then id), ties by id included."""
    from retention.policy import sort_key

    d = evaluate(items, PolicySpec(keep_last=n), NOW)
    want = sorted(items, key=sort_key, reverse=True)
    assert [v.item for v in d.keep + d.remove] == want


@given(
    st.lists(
        st.builds(
            Item,
            id=st.text(min_size=1, max_size=8),
            at=st.integers(-(10**15), 10**15),
        ),
        max_size=60,
        unique_by=(lambda i: i.id, lambda i: i.at),
    ),
    st.integers(0, 70),
)
@settings(max_examples=150, deadline=None)
def test_text_ids_with_distinct_times_are_ordered_by_instant_alone(items, n) -> None:
    """No two runs share an instant (the usual catalog): one sort by instant gives
    descending `sort_key` order, in whatever order the ids come (UUIDs: random)."""
    from retention.policy import sort_key

    d = evaluate(items, PolicySpec(keep_last=n), NOW)
    want = sorted(items, key=sort_key, reverse=True)
    assert [v.item for v in d.keep + d.remove] == want


@given(item_lists, st.integers(0, 70))
@settings(max_examples=150, deadline=None)
def test_keep_last_keeps_exactly_the_n_newest_valid_runs(items, n) -> None:
    spec = PolicySpec(keep_last=n)
    d = evaluate(items, spec, NOW)
    valid = sorted((i for i in items if i.time), key=lambda i: (i.time, str(i.id)), reverse=True)
    newest = {i.id for i in valid[:n]}
    kept_by_rule = {v.item.id for v in d.keep if any("newest" in r for r in v.reasons)}
    assert kept_by_rule == newest
    removed = {v.item.id for v in d.remove}
    expected = {i.id for i in valid[n:] if not i.protected}
    assert removed == expected


@given(item_lists, st.integers(0, 70), st.integers(1, 4 * 365 * 86400))
@settings(max_examples=150, deadline=None)
def test_union_a_run_goes_only_when_no_rule_keeps_it(items, n, age) -> None:
    both = evaluate(items, PolicySpec(keep_last=n, max_age_seconds=age), NOW)
    by_count = {v.item.id for v in evaluate(items, PolicySpec(keep_last=n), NOW).remove}
    by_age = {v.item.id for v in evaluate(items, PolicySpec(max_age_seconds=age), NOW).remove}
    assert {v.item.id for v in both.remove} == by_count & by_age


@given(item_lists, specs)
@settings(max_examples=100, deadline=None)
def test_same_input_and_now_give_the_same_decision(items, spec) -> None:
    a = evaluate(items, spec, NOW)
    b = evaluate(list(reversed(items)), spec, NOW)
    assert [(v.item.id, v.reasons) for v in a.remove] == [(v.item.id, v.reasons) for v in b.remove]


def test_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        evaluate([], PolicySpec(), NOW)


def test_describe_is_one_sentence() -> None:
    text = PolicySpec(keep_last=100, max_age_seconds=180 * 86400).describe()
    assert text.startswith("Keep the newest 100 runs, and every run younger than 180d;")


# -- golden cases -------------------------------------------------------------------------

FIXED = [
    Item.make(f"r{i:02d}", NOW - timedelta(days=10 * i), protected=(i == 7)) for i in range(20)
] + [
    Item.make("bad-ts", None),
    Item.make("bad-ts-2", None, protected=True),
]

CASES = {
    "keep-last-5": PolicySpec(keep_last=5),
    "max-age-45d": PolicySpec(max_age_seconds=45 * 86400),
    "keep-last-3-or-max-age-90d": PolicySpec(keep_last=3, max_age_seconds=90 * 86400),
    "keep-last-0-max-age-1w": PolicySpec(keep_last=0, max_age_seconds=7 * 86400),
    "keep-last-100": PolicySpec(keep_last=100),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_policy_golden(name: str, update_golden: bool) -> None:
    d = evaluate(FIXED, CASES[name], NOW)
    got = {
        "policy": CASES[name].describe(),
        "keep": {str(v.item.id): list(v.reasons) for v in d.keep},
        "remove": {str(v.item.id): list(v.reasons) for v in d.remove},
    }
    path = GOLDEN / f"{name}.json"
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if update_golden or not path.exists():
        path.write_text(text)
    assert json.loads(path.read_text()) == got
