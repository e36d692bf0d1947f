"""The rules: each keeps some runs of a list sorted newest first, with a reason.

A rule gets the runs it may count (valid timestamp, terminal state), newest first, and a
`Ctx`; it yields ``(position, reason)`` for each run it keeps. Rules are independent: each
has its own counter and its own last period (restic's buckets), and every rule sees every
run, so a run kept by two rules carries both reasons. Adding a rule means adding a spec
field and an entry in `RULES`, never touching `retention.policy.core.evaluate`.

Reasons are built once per rule where they can be (keep-last, max-age, keep-within: at a
million runs a string per run would cost more memory than the runs); calendar rules name
the period they keep a run for, and keep at most one run per period.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from retention.durations import parse_span
from retention.policy.calendar import KEY, US, cutoff, instant_us, label, local
from retention.policy.spec import NOUN, UNITS, UNLIMITED, PolicySpec, age_text, tags_text

if TYPE_CHECKING:
    from retention.policy.core import Item


@dataclass
class Ctx:
    """What a rule may use besides the runs: the spec, ``now``, the calendar's zone and
    ``latest``, the newest run strictly before ``now`` (restic's reference for the
    ``within`` rules; None when every run is in the future)."""

    spec: PolicySpec
    now: datetime
    zone: tzinfo | None
    latest: datetime | None


Rule = Callable[["Sequence[Item]", Ctx], Iterable[tuple[int, str]]]


class Prefix:
    """What keep-last, max-age and keep-within keep: the newest ``count`` runs, for one
    ``reason``. Iterates as every rule's result does; `evaluate` may instead use the two
    (a million runs kept without a Python step each)."""

    __slots__ = ("count", "reason")

    def __init__(self, count: int, reason: str) -> None:
        self.count, self.reason = count, reason

    def __iter__(self) -> Iterator[tuple[int, str]]:
        reason = self.reason
        return ((i, reason) for i in range(self.count))


def _keep_last(items: Sequence[Item], ctx: Ctx) -> Prefix:
    n = ctx.spec.keep_last or 0
    if n == UNLIMITED:
        return Prefix(len(items), "kept: keep-last unlimited")
    return Prefix(min(n, len(items)), f"kept: among the newest {n}")


def _max_age(items: Sequence[Item], ctx: Ctx) -> Prefix:
    limit = timedelta(seconds=ctx.spec.max_age_seconds or 0)
    reason = f"kept: younger than {age_text(limit.total_seconds())}"
    # now - time >= limit, in whole microseconds (exact, as timedeltas are)
    oldest = instant_us(ctx.now) - limit // US
    n = 0
    for item in items:
        assert item.at is not None
        if item.at <= oldest:
            break  # newest first: every later item is older still
        n += 1
    return Prefix(n, reason)


def _within_count(items: Sequence[Item], span_text: str, ctx: Ctx) -> int:
    """How many of the newest runs lie within ``span_text`` of ``ctx.latest`` (strictly
    after the cutoff, as restic's ``After``); every run when nothing is before ``now``."""
    if ctx.latest is None:
        return len(items)
    limit = cutoff(ctx.latest, parse_span(span_text), ctx.zone)
    if limit is None:
        return len(items)
    after = instant_us(limit)
    n = 0
    for item in items:
        assert item.at is not None
        if not item.at > after:
            break
        n += 1
    return n


def _keep_within(items: Sequence[Item], ctx: Ctx) -> Prefix:
    span = ctx.spec.keep_within or ""
    return Prefix(_within_count(items, span, ctx), f"kept: within {span} of the newest run")


def periods(
    items: Sequence[Item], ctx: Ctx, unit: str, slots: int, limit: int, suffix: str
) -> Iterator[tuple[int, str]]:
    """One run per period among ``items[:limit]``, newest periods first, ``slots`` periods
    at most (-1: all). Periods are runs of equal keys in sorted order (restic compares each
    run's key with the last one kept).

    Default (restic): the newest run of each period; when the rule still has a slot at the
    very last (oldest) run of the whole list, that run is kept too, even in a period it
    already has ("oldest"). With ``checkpoint = "first"``: the oldest run of each period
    (within ``limit``), which makes the oldest run of the list the representative of its
    period anyway.
    """
    key, zone = KEY[unit], ctx.zone
    last_index = len(items) - 1
    what = f"{unit} checkpoint"
    if ctx.spec.checkpoint == "first":
        i = 0
        while i < limit and slots != 0:
            t = local(items[i].time, zone)  # type: ignore[arg-type]
            k = key(t)
            j = i
            while j + 1 < limit and key(local(items[j + 1].time, zone)) == k:  # type: ignore[arg-type]
                j += 1
            yield j, f"kept: {what} {label(unit, t)} (first of the {NOUN[unit]}){suffix}"
            slots -= slots > 0
            i = j + 1
        return
    last: int | None = None
    for i in range(limit):
        if slots == 0:
            return
        t = local(items[i].time, zone)  # type: ignore[arg-type]
        k = key(t)
        if k != last:
            yield i, f"kept: {what} {label(unit, t)}{suffix}"
        elif i == last_index:
            yield i, f"kept: oldest run, {what} {label(unit, t)} (the rule had slots left){suffix}"
        else:
            continue
        last = k
        slots -= slots > 0


def _count_rule(unit: str) -> Rule:
    field = f"keep_{unit}"

    def rule(items: Sequence[Item], ctx: Ctx) -> Iterator[tuple[int, str]]:
        n = getattr(ctx.spec, field) or 0
        return periods(items, ctx, unit, n, len(items), "")

    rule.__name__ = f"_keep_{unit}"
    return rule


def _within_rule(unit: str) -> Rule:
    field = f"keep_within_{unit}"

    def rule(items: Sequence[Item], ctx: Ctx) -> Iterator[tuple[int, str]]:
        span = getattr(ctx.spec, field) or ""
        limit = _within_count(items, span, ctx)
        return periods(items, ctx, unit, UNLIMITED, limit, f" within {span} of the newest run")

    rule.__name__ = f"_keep_within_{unit}"
    return rule


def has_tags(tags: frozenset[str], wanted: tuple[str, ...]) -> bool:
    """restic's ``HasTags``: every tag of ``wanted``; an empty tag matches an untagged run."""
    for tag in wanted:
        if tag == "" and not tags:
            return True
        if tag not in tags:
            return False
    return True


def _keep_tags(items: Sequence[Item], ctx: Ctx) -> Iterator[tuple[int, str]]:
    lists = ctx.spec.keep_tags or ()
    reasons = [f"kept: {tags_text(tl)}" for tl in lists]
    unreadable = "kept: its tags cannot be read (keep-tag cannot rule it out)"
    for i, item in enumerate(items):
        tags = item.attrs.tags if item.attrs is not None else frozenset()
        if tags is None:
            yield i, unreadable
            continue
        for tl, reason in zip(lists, reasons, strict=True):
            if has_tags(tags, tl):
                yield i, reason


def _count_why(field: str, unit: str) -> Callable[[PolicySpec], str]:
    return lambda s: f"not a {unit} checkpoint (keep-{unit} {_count_text(getattr(s, field))})"


def _count_text(n: int) -> str:
    return "unlimited" if n == UNLIMITED else str(n)


def _within_why(field: str, unit: str) -> Callable[[PolicySpec], str]:
    return lambda s: (
        f"not a {unit} checkpoint within {getattr(s, field)} of the newest run (keep-within-{unit})"
    )


def _tags_why(spec: PolicySpec) -> str:
    return " and ".join(f"not {tags_text(tl)}" for tl in spec.keep_tags or ())


@dataclass(frozen=True)
class RuleDef:
    field: str  # the spec field that turns the rule on
    rule: Rule
    why: Callable[[PolicySpec], str]  # what a removed run was not, for this rule
    calendar: bool = False  # keeps period checkpoints (less likely to go for the budget)


# A fixed order: the order of a kept run's reasons and of a removed run's "not ..." parts.
RULES: tuple[RuleDef, ...] = (
    RuleDef(
        "keep_last",
        _keep_last,
        lambda s: f"not among the newest {_count_text(s.keep_last or 0)}",
    ),
    RuleDef(
        "max_age_seconds", _max_age, lambda s: f"older than {age_text(s.max_age_seconds or 0)}"
    ),
    *(RuleDef(f"keep_{u}", _count_rule(u), _count_why(f"keep_{u}", u), True) for u in UNITS),
    RuleDef(
        "keep_within", _keep_within, lambda s: f"more than {s.keep_within} before the newest run"
    ),
    *(
        RuleDef(f"keep_within_{u}", _within_rule(u), _within_why(f"keep_within_{u}", u), True)
        for u in UNITS
    ),
    RuleDef("keep_tags", _keep_tags, _tags_why),
)


def active_rules(spec: PolicySpec) -> list[RuleDef]:
    """The rules the spec turns on (a count of 0 is off, as in restic)."""
    return [r for r in RULES if getattr(spec, r.field) not in (None, 0, ())]
