"""The retention policy: a pure function of items, a policy and ``now``.

No I/O, no clock, no config parsing: `evaluate` is given everything it needs. A run is
removed only when no rule keeps it (the union of keeps, as restic's ``forget`` does).
Rules are independent functions registered in `RULES`; adding a rule means adding a field
to `PolicySpec` and a function here, never rewriting `evaluate`.

Safety rules that come before any policy rule:

* an item whose timestamp is missing or cannot be parsed is always kept;
* an item marked protected (``catalog.protect``) is always kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

RunId = str | int


@dataclass(frozen=True, slots=True)
class Item:
    """One run as the policy sees it. ``time`` is None when it could not be parsed."""

    id: RunId
    time: datetime | None
    protected: bool = False


class PolicySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What to keep. All durations are whole seconds (manifests carry no floats)."""

    keep_last: int | None = None
    max_age_seconds: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__struct_fields__)

    def describe(self) -> str:
        """The policy as one sentence, printed first by ``plan``."""
        parts = []
        if self.keep_last:  # 0 keeps nothing: not worth a clause
            parts.append(
                "the newest run" if self.keep_last == 1 else f"the newest {self.keep_last} runs"
            )
        if self.max_age_seconds is not None:
            parts.append(f"every run younger than {_age(self.max_age_seconds)}")
        if not parts:
            return "Keep nothing (empty policy)."
        return (
            "Keep "
            + ", and ".join(parts)
            + "; remove a run only when no rule keeps it. Runs with no valid timestamp"
            " and protected runs are always kept."
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one item, with every reason that applies (sorted, human-readable)."""

    item: Item
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """``keep`` and ``remove`` partition the input. ``remove`` is sorted newest first;
    ``keep`` lists items without a valid timestamp first, then the rest newest first."""

    keep: list[Verdict]
    remove: list[Verdict]


def _age(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400), ("h", 3600)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


# A rule gets the valid items sorted newest first, the spec and now; it yields, for each
# position it keeps, the reason. It must not look at items it is not given. Reasons are
# built once per rule, not per item: at a million runs, a string per item would cost more
# memory than the items themselves (so no per-item rank in the text).
Rule = Callable[[Sequence[Item], PolicySpec, datetime], Iterable[tuple[int, str]]]


def _keep_last(items: Sequence[Item], spec: PolicySpec, now: datetime) -> Iterable[tuple[int, str]]:
    n = spec.keep_last or 0
    reason = f"kept: among the newest {n}"
    return ((i, reason) for i in range(min(n, len(items))))


def _max_age(items: Sequence[Item], spec: PolicySpec, now: datetime) -> Iterable[tuple[int, str]]:
    limit = timedelta(seconds=spec.max_age_seconds or 0)
    reason = f"kept: younger than {_age(limit.total_seconds())}"
    for i, item in enumerate(items):
        assert item.time is not None
        if now - item.time >= limit:
            return  # newest first: every later item is older still
        yield i, reason


# (spec field, rule, what a removed item was not) in a fixed order.
RULES: tuple[tuple[str, Rule, Callable[[PolicySpec], str]], ...] = (
    ("keep_last", _keep_last, lambda s: f"not among the newest {s.keep_last}"),
    ("max_age_seconds", _max_age, lambda s: f"older than {_age(s.max_age_seconds or 0)}"),
)


def sort_key(item: Item) -> tuple[datetime, str]:
    """Newest-first order is descending on this key; ties broken by id for determinism."""
    assert item.time is not None
    return (item.time, str(item.id))


def evaluate(items: Iterable[Item], spec: PolicySpec, now: datetime) -> Decision:
    """Decide, for every item, whether it is kept or removed, and why.

    Returns a `Decision` whose ``keep`` and ``remove`` partition ``items``. Never raises
    for odd data: a bad timestamp only makes an item kept. Raises ``ValueError`` for an
    empty policy (the planner refuses those before calling). Pure: no I/O, no clock.
    """
    if spec.is_empty():
        raise ValueError("empty policy")
    valid: list[Item] = []
    keep: list[Verdict] = []
    for item in items:
        if item.time is None:
            keep.append(Verdict(item, True, ("kept: timestamp missing or unparseable",)))
        else:
            valid.append(item)
    valid.sort(key=sort_key, reverse=True)

    # One slot per valid item; equal reason tuples are shared, not copied per item.
    reasons: list[tuple[str, ...]] = [()] * len(valid)
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    active = [(f, rule, why) for f, rule, why in RULES if getattr(spec, f) is not None]
    for _, rule, _ in active:
        for i, reason in rule(valid, spec, now):
            combo = (*reasons[i], reason)
            reasons[i] = shared.setdefault(combo, combo)

    remove: list[Verdict] = []
    removed = ("removed: " + " and ".join(why(spec) for _, _, why in active),)
    for item, why_kept in zip(valid, reasons, strict=True):
        if item.protected:
            keep.append(Verdict(item, True, ("kept: protected", *why_kept)))
        elif why_kept:
            keep.append(Verdict(item, True, why_kept))
        else:
            remove.append(Verdict(item, False, removed))
    return Decision(keep=keep, remove=remove)
