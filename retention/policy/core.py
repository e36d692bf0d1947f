"""The retention policy: a pure function of items, a policy and ``now``.

No I/O, no clock, no config parsing: `evaluate` is given everything it needs (the calendar
zone too, resolved by the caller). A run is removed only when no rule keeps it and nothing
protects it (the union of keeps, as restic's ``forget`` does).

The stages, in order, over one group of runs (today every run is in one group; groups will
call `_decide` once per group, with dependencies and the budget across them):

1. runs without a valid timestamp are kept (they are nobody's to judge);
2. runs not in a terminal state (``terminal_states``) are kept and not counted;
3. the rules (`retention.policy.rules`) see the remaining runs, newest first;
4. protections: ``catalog.protect``, pins, the newest run of each configured kind;
5. dependencies: a run that a kept run depends on (transitively) is kept;
6. the floor: while fewer than ``min_keep`` runs are kept, the newest other runs are;
7. the size budget (`retention.policy.budget`), which only ever removes runs kept by rules
   alone, never one a kept run depends on, never below the floor.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import compress, islice, repeat
from operator import attrgetter, eq, not_

import msgspec

from retention.policy import budget as budget_mod
from retention.policy.budget import BudgetReport
from retention.policy.calendar import EPOCH, instant_us
from retention.policy.ids import RunId
from retention.policy.marks import (
    CHECKPOINT,
    DEPENDED_ON,
    FLOOR,
    NEWEST_KIND,
    NOT_TERMINAL,
    PINNED,
    PROTECTED,
    RULE,
    UNRULED,
)
from retention.policy.rules import Ctx, Prefix, active_rules
from retention.policy.spec import PolicySpec


@dataclass(frozen=True, slots=True)
class Attrs:
    """What some rules and protections need beyond a timestamp; None on an `Item` when the
    policy needs none of it (the common case: no memory spent per run).

    ``tags`` None means the tags column could not be read (keep-tag keeps such a run);
    ``size`` None means unknown (counted as 0 bytes by the budget)."""

    tags: frozenset[str] | None = frozenset()
    state: str | None = None
    pinned: bool = False
    kind: str | None = None
    parent: RunId | None = None
    size: int | None = None
    group: tuple[object, ...] | None = None  # the values of the group-by columns
    tier: str | None = None  # the group's tier (spec.tiers), None: no tier
    erase: bool = False  # its column matches the erasure request (spec.erase)


NO_ATTRS = Attrs()


class Item(msgspec.Struct, frozen=True, gc=False):
    """One run as the policy sees it. ``at`` is its instant in microseconds since the
    epoch, None when its timestamp could not be parsed; ``tz`` the UTC offset the catalog
    recorded, None for UTC (calendar periods are taken in it). `time` gives the datetime;
    `make` builds an item from one.

    An integer, not a datetime, for what a million runs hold and the policy sorts and
    compares: reading an integer epoch costs no datetime per run, and ints compare faster.
    A struct the cyclic garbage collector does not track (it references no container
    that could lead back to it): a plan holds one per run, built at C speed."""

    id: RunId
    at: int | None
    protected: bool = False
    attrs: Attrs | None = None
    tz: tzinfo | None = None

    @classmethod
    def make(
        cls,
        id: RunId,
        time: datetime | None,
        protected: bool = False,
        attrs: Attrs | None = None,
    ) -> Item:
        """The item of a run whose timestamp is ``time`` (aware; None: unparseable)."""
        if time is None:
            return cls(id, None, protected, attrs)
        tz = time.tzinfo
        return cls(id, instant_us(time), protected, attrs, None if tz is UTC else tz)

    @property
    def time(self) -> datetime | None:
        """The timestamp, in the offset the catalog recorded (UTC when none)."""
        at = self.at
        if at is None:
            return None
        t = EPOCH + timedelta(microseconds=at)
        return t if self.tz is None else t.astimezone(self.tz)


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """The decision for one item, with every reason that applies, in a fixed order:
    protections first, then rules (in `RULES` order), then the floor and dependencies.
    (Untracked by the cyclic garbage collector, as `Item`: one per run.)"""

    item: Item
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """``keep`` and ``remove`` partition the input. ``remove`` is sorted newest first;
    ``keep`` lists items without a valid timestamp first (by id), then the rest newest first.
    ``budget`` is set when an ungrouped spec has a size budget; grouped policies report
    each group's in ``groups``."""

    keep: list[Verdict]
    remove: list[Verdict]
    budget: BudgetReport | None = None
    groups: tuple[GroupSummary, ...] = ()  # grouped policies: one per group, in order
    # Kept runs with a timestamp that ``keep`` leaves out (``evaluate(..., kept=False)``,
    # the common case only): counted, no verdict built (a plan keeps most of a million).
    unlisted: int = 0


class DependencyCycle(ValueError):
    """Runs whose parent column leads back to themselves."""

    def __init__(self, runs: list[RunId]) -> None:
        first = min(range(len(runs)), key=lambda k: str(runs[k]))  # a stable way round
        runs = runs[first:] + runs[:first]
        self.runs = runs
        super().__init__("dependency cycle: " + " -> ".join(map(str, [*runs, runs[0]])))


def sort_key(item: Item) -> tuple[int, str]:
    """Newest-first order is descending on this key; ties broken by id for determinism."""
    assert item.at is not None
    return (item.at, str(item.id))


_ID = attrgetter("id")
_AT = attrgetter("at")
_PROTECTED = attrgetter("protected")


def evaluate(
    items: Iterable[Item],
    spec: PolicySpec,
    now: datetime,
    zone: tzinfo | None = None,
    *,
    kept: bool = True,
) -> Decision:
    """Decide, for every item, whether it is kept or removed, and why.

    Returns a `Decision` whose ``keep`` and ``remove`` partition ``items``. Never raises
    for odd data: a bad timestamp only makes an item kept. Raises ``ValueError`` for an
    empty or invalid spec (the planner refuses those before calling), for ``spec.tz``
    without its ``zone`` (resolving a zone name reads the zone database: the caller's
    job), and `DependencyCycle` when parents form a cycle. Pure: no I/O, no clock.

    With ``spec.group_by`` or ``spec.tiers``, the runs are grouped by their
    ``Attrs.group`` and ``Attrs.tier`` and the rules, protections, the floor and the budget
    apply per group (each with its tier's spec; a group whose tier has none keeps every
    run); dependencies cross groups.

    With ``kept=False`` a caller that only counts the kept runs may get, in the common
    case (one group, rules alone), ``keep`` without the dated ones: `Decision.unlisted`
    counts them. ``remove`` is the same either way.
    """
    _refuse_spec(spec)
    for name, tier in (spec.tiers or {}).items():
        try:
            _refuse_spec(tier)
        except ValueError as exc:
            raise ValueError(f"tier {name!r}: {exc}") from None
    if spec.tz is not None and zone is None:
        raise ValueError(f"the policy takes calendar periods in {spec.tz}: pass zone=")
    no_time: list[Item] = []
    valid: list[Item] = []
    for item in items:
        (valid if item.at is not None else no_time).append(item)
    # With text ids only (the usual case), str(id) is id itself: descending `sort_key`
    # order is by instant, equal instants by id, with no key tuple built per run (a million
    # of them, 56 MiB). When no two runs share an instant (distinct at the catalog's
    # resolution), the sort by instant alone is that order; only otherwise are the runs
    # sorted by id first (each sort stable: equal instants keep the order of their ids). A
    # catalog gives its runs about in the order they were made, nearly sorted by instant
    # and cheap to sort, while sorting them by random ids (UUIDs) took 1.3 s of a plan at a
    # million runs (shared instants cost about 0.1 s more than before: the check).
    if set(map(type, map(_ID, valid))) <= {str}:
        valid.sort(key=_AT, reverse=True)
        ats = list(map(_AT, valid))
        if any(map(eq, ats, islice(ats, 1, None))):  # two runs share an instant (C loops)
            valid.sort(key=_ID, reverse=True)
            valid.sort(key=_AT, reverse=True)
        del ats
    else:
        valid.sort(key=sort_key, reverse=True)
    no_time.sort(key=lambda item: str(item.id))  # the result never depends on row order
    if spec.erase is not None:
        return _erasure(no_time, valid, spec)
    if spec.group_by is None and spec.tiers is None:
        whole = _Group(spec, None, None, range(len(valid)), range(len(no_time)))
        return _decide(no_time, valid, [whole], None, spec, now, zone, kept)
    groups, of = _grouped(no_time, valid, spec)
    return _decide(no_time, valid, groups, of, spec, now, zone, kept)


def _erasure(no_time: list[Item], valid: list[Item], spec: PolicySpec) -> Decision:
    """An erasure request: the matching runs go, with every run depending on one
    (transitively, with dependencies), whatever their time; only protected runs stay."""
    assert spec.erase is not None
    column, value = spec.erase
    everyone = [*valid, *no_time]
    gone: dict[int, str] = {}
    asked = f"removed: erasure request ({column} = {value!r})"
    for k, item in enumerate(everyone):
        if item.attrs is not None and item.attrs.erase and not item.protected:
            gone[k] = asked
    if spec.dependencies and gone:
        parents = _parents(no_time, valid)  # raises DependencyCycle
        up = parents.everyone_up if parents is not None else []
        erased = set(gone)  # what the request names (before dependants are added)
        reach: dict[int, bool] = {}  # does the run depend, transitively, on an erased one?
        for k in range(len(up)):
            path = []
            p = k
            while p >= 0 and p not in erased and p not in reach:
                path.append(p)
                p = up[p]
            hit = p >= 0 and (p in erased or reach[p])
            for j in path:
                reach[j] = hit
        for k, hit in reach.items():
            if hit and k not in gone and not everyone[k].protected:
                gone[k] = f"removed: depends on run {everyone[up[k]].id}, which the erasure removes"
    keep: list[Verdict] = []
    remove: list[Verdict] = []
    for k, item in enumerate(everyone):
        if k in gone:
            remove.append(Verdict(item, False, (gone[k],)))
        elif item.attrs is not None and item.attrs.erase:
            keep.append(Verdict(item, True, ("kept: protected (catalog.protect), not erased",)))
        else:
            keep.append(Verdict(item, True, ("kept: not part of the erasure request",)))
    return Decision(keep=keep, remove=remove)


def _unruled(spec: PolicySpec, tier: str | None) -> str:
    """Why a group without a policy keeps every run."""
    if spec.tier_rows is not None:
        if tier is not None and tier in (spec.disabled or ()):
            return f"kept: retention disabled for this group in {spec.tier_rows}"
        return f"kept: no policy row for this group in {spec.tier_rows}"
    return "kept: " + (f"tier {tier!r} has no policy" if tier is not None else "no tier")


def _refuse_spec(spec: PolicySpec) -> None:
    if spec.is_empty():
        raise ValueError("empty policy")
    problem = spec.problem()
    if problem:
        raise ValueError(problem)


@dataclass(frozen=True)
class GroupSummary:
    """One group's counts (grouped policies only). ``spec`` None: its tier has no policy,
    every run of it is kept."""

    group: tuple[object, ...] | None
    tier: str | None
    spec: PolicySpec | None
    considered: int
    kept: int
    removed: int
    budget: BudgetReport | None = None
    note: str | None = None  # why a group without a policy keeps every run

    def label(self, names: tuple[str, ...] | None) -> str:
        return group_label(names, self.group, self.tier)


def group_label(
    names: tuple[str, ...] | None, group: tuple[object, ...] | None, tier: str | None
) -> str:
    """``org_id=acme, tier pro``: how a group is named in reasons and reports."""
    parts = [f"{n}={_shown(v)}" for n, v in zip(names or (), group or (), strict=False)]
    if group is not None and len(group) == 1 and tier == _shown(group[0]):
        return ", ".join(parts)  # policy rows: the group is its own tier
    if tier is not None or (group is None and not parts):
        parts.append(f"tier {tier}" if tier is not None else "no tier")
    return ", ".join(parts)


def _shown(value: object) -> str:
    return "NULL" if value is None else str(value)


@dataclass
class _Group:
    spec: PolicySpec | None  # None: the tier has no policy
    key: tuple[object, ...] | None
    tier: str | None
    pos: Sequence[int]  # positions in the sorted valid runs, newest first
    nt: Sequence[int]  # positions in the runs without a timestamp


def _grouped(
    no_time: list[Item], valid: list[Item], spec: PolicySpec
) -> tuple[list[_Group], tuple[array[int], array[int]]]:
    """The groups in a fixed order (by key: the result never depends on row order) and
    the group of each valid run and of each run without a timestamp."""
    found: dict[tuple[tuple[object, ...] | None, str | None], tuple[list[int], list[int]]] = {}
    for which, runs in ((0, valid), (1, no_time)):
        for i, item in enumerate(runs):
            a = item.attrs or NO_ATTRS
            key = (a.group, a.tier if spec.tiers is not None else None)
            lists = found.get(key)
            if lists is None:
                lists = found[key] = ([], [])
            lists[which].append(i)
    groups: list[_Group] = []
    of = (array("l", bytes(8 * len(valid))), array("l", bytes(8 * len(no_time))))
    for g, key in enumerate(sorted(found, key=repr)):
        pos, nt = found[key]
        group, tier = key
        gspec: PolicySpec | None = spec
        if spec.tiers is not None:
            gspec = spec.tiers.get(tier) if isinstance(tier, str) else None
        groups.append(_Group(gspec, group, tier, pos, nt))
        for i in pos:
            of[0][i] = g
        for k in nt:
            of[1][k] = g
    return groups, of


class _Reasons:
    """Reasons per position of the sorted runs, each combination stored once."""

    def __init__(self, n: int) -> None:
        self.rules: list[tuple[str, ...]] = [()] * n
        self.before: dict[int, tuple[str, ...]] = {}  # protections, listed first
        self.after: dict[int, tuple[str, ...]] = {}  # floor, dependencies, listed last
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.share = shared.setdefault  # share(combo, combo): the one stored copy

    def guard(self, i: int, reason: str) -> None:
        combo = (*self.before.get(i, ()), reason)
        self.before[i] = self.share(combo, combo)

    def late(self, i: int, reason: str) -> None:
        combo = (*self.after.get(i, ()), reason)
        self.after[i] = self.share(combo, combo)

    def of(self, i: int) -> tuple[str, ...]:
        before, after = self.before.get(i), self.after.get(i)
        if before is None and after is None:
            return self.rules[i]  # already one shared copy
        combo = (before or ()) + self.rules[i] + (after or ())
        return self.share(combo, combo)


def _rules_and_guards(
    group: _Group,
    spec: PolicySpec,
    valid: list[Item],
    now: datetime,
    zone: tzinfo | None,
    why: _Reasons,
    flags: array[int],
) -> None:
    """Stages 2 to 4 over one group's runs (newest first)."""
    n = len(valid)
    # 2. The list the rules see: terminal runs only, when a terminal set is given.
    whole = isinstance(group.pos, range) and len(group.pos) == n
    if spec.terminal_states is not None:
        terminal = frozenset(spec.terminal_states)
        state_reason: dict[str | None, str] = {}
        pos: Sequence[int] = []
        for i in group.pos:
            state = (valid[i].attrs or NO_ATTRS).state
            if state in terminal:
                pos.append(i)  # type: ignore[attr-defined]
                continue
            text = state_reason.get(state)
            if text is None:
                shown = "NULL" if state is None else repr(state)
                text = state_reason[state] = f"kept: state {shown} is not terminal"
            why.guard(i, text)
            flags[i] |= NOT_TERMINAL
        seen: Sequence[Item] = [valid[i] for i in pos]
    else:
        pos = group.pos
        seen = valid if whole else [valid[i] for i in pos]

    # 3. The rules.
    now_at = instant_us(now)
    latest = next((it.time for it in seen if it.at is not None and it.at < now_at), None)
    ctx = Ctx(spec, now, zone, latest)
    rule_reasons, share = why.rules, why.share
    # Marks of what rules keep matter only to the stages after them; without those stages
    # and without a state filter, the plain loop (the keep-last case at a million runs).
    plain = not (spec.dependencies or spec.min_keep or spec.max_total_bytes is not None)
    fresh = True  # no rule has kept a run yet: every run's reasons are ()
    for rd in active_rules(spec):
        if plain and seen is valid:
            found = rd.rule(seen, ctx)
            if fresh and isinstance(found, Prefix):  # one shared tuple for the newest runs
                combo: tuple[str, ...] = (found.reason,)
                rule_reasons[: found.count] = [share(combo, combo)] * found.count
            else:
                for i, reason in found:
                    combo = (*rule_reasons[i], reason)
                    rule_reasons[i] = share(combo, combo)
            fresh = False
            continue
        bit = RULE | (CHECKPOINT if rd.calendar else 0)
        for j, reason in rd.rule(seen, ctx):
            i = pos[j]
            combo = (*rule_reasons[i], reason)
            rule_reasons[i] = share(combo, combo)
            flags[i] |= bit

    # 4. Protections.
    for j in list(compress(range(len(seen)), map(_PROTECTED, seen))):
        why.guard(pos[j], "kept: protected")
        flags[pos[j]] |= PROTECTED
    kinds = dict.fromkeys(spec.newest_of_kind or ())
    if spec.pins or kinds:
        for j, item in enumerate(seen):
            attrs = item.attrs
            if attrs is None:
                continue
            if attrs.pinned:
                why.guard(pos[j], "kept: pinned")
                flags[pos[j]] |= PINNED
            if attrs.kind in kinds and kinds[attrs.kind] is None:
                kinds[attrs.kind] = j
                why.guard(pos[j], f"kept: newest run of kind {attrs.kind!r}")
                flags[pos[j]] |= NEWEST_KIND


def _decide(
    no_time: list[Item],
    valid: list[Item],
    groups: list[_Group],
    of: tuple[array[int], array[int]] | None,
    spec: PolicySpec,
    now: datetime,
    zone: tzinfo | None,
    kept: bool = True,
) -> Decision:
    n = len(valid)
    why = _Reasons(n)
    flags = array("H", bytes(2 * n))

    # 2-4. Per group: the state filter, the rules, the protections.
    for group in groups:
        if group.spec is None:
            reason = _unruled(spec, group.tier)
            for i in group.pos:
                why.guard(i, reason)
                flags[i] |= UNRULED
            continue
        _rules_and_guards(group, group.spec, valid, now, zone, why, flags)

    # 5, 6. Dependencies (across groups), the floor per group, and dependencies of the runs
    # the floor adds.
    parents = _parents(no_time, valid) if spec.dependencies else None
    if parents is not None:
        _keep_ancestors(parents, no_time, valid, flags, why, range(n))
    for group in groups:
        min_keep = group.spec.min_keep if group.spec is not None else None
        if min_keep:
            added = _floor(min_keep, len(group.nt), group.pos, flags, why)
            if parents is not None and added:
                _keep_ancestors(parents, no_time, valid, flags, why, added)

    # 7. The budget, per group.
    limits = {
        g: group.spec.max_total_bytes
        for g, group in enumerate(groups)
        if group.spec is not None and group.spec.max_total_bytes is not None
    }
    reports: dict[int, BudgetReport] = {}
    budget_out: dict[int, str] = {}
    if limits:
        up = (parents.parent, parents.no_time_parent) if parents else None
        floors = {g: (group.spec.min_keep or 0) for g, group in enumerate(groups) if group.spec}
        reports, budget_out = budget_mod.apply(valid, no_time, flags, up, limits, floors, of)

    keep = [Verdict(item, True, ("kept: timestamp missing or unparseable",)) for item in no_time]
    remove: list[Verdict] = []
    removed = [
        ("removed: " + " and ".join(rd.why(g.spec) for rd in active_rules(g.spec)),)
        if g.spec is not None
        else ()
        for g in groups
    ]
    if of is None and not why.before and not why.after and not budget_out:
        # The common case (one group, rules only), kept lean: the verdicts built by C
        # loops, in the order of the runs (a kept run's reasons are never ()).
        by_rules = why.rules
        if kept:
            keep += map(Verdict, compress(valid, by_rules), repeat(True), filter(None, by_rules))
        not_kept = removed[0]
        remove = [Verdict(item, False, not_kept) for item in compress(valid, map(not_, by_rules))]
        unlisted = 0 if kept else n - len(remove)
        return Decision(keep=keep, remove=remove, budget=reports.get(0), unlisted=unlisted)
    overruled: dict[tuple[str, ...], tuple[str, ...]] = {}
    gone = [0] * len(groups)
    for i, item in enumerate(valid):
        if not (flags[i] or why.rules[i]):
            g = of[0][i] if of is not None else 0
            remove.append(Verdict(item, False, removed[g]))
            gone[g] += 1
        elif i in budget_out:
            kept_by = why.of(i)
            was = overruled.get(kept_by)
            if was is None:
                was = overruled[kept_by] = tuple(
                    "overruled: " + r.removeprefix("kept: ") for r in kept_by
                )
            remove.append(Verdict(item, False, (budget_out[i], *was)))
            gone[of[0][i] if of is not None else 0] += 1
        else:
            keep.append(Verdict(item, True, why.of(i)))
    if of is None:
        return Decision(keep=keep, remove=remove, budget=reports.get(0))
    summaries = tuple(
        GroupSummary(
            g.key,
            g.tier,
            g.spec,
            considered=len(g.pos) + len(g.nt),
            kept=len(g.pos) + len(g.nt) - gone[k],
            removed=gone[k],
            budget=reports.get(k),
            note=_unruled(spec, g.tier) if g.spec is None else None,
        )
        for k, g in enumerate(groups)
    )
    return Decision(keep=keep, remove=remove, budget=None, groups=summaries)


@dataclass
class _Parents:
    """The dependency graph: ``parent[i]`` is the position (in the sorted valid runs) of the
    run that run ``i`` depends on, -1 for none or one outside the considered runs, and
    ``no_time_parent`` the same for runs without a timestamp (always kept)."""

    parent: list[int]
    no_time_parent: list[int]
    everyone_up: list[int]  # over valid runs then those without a timestamp, unchanged


def _parents(no_time: list[Item], valid: list[Item]) -> _Parents | None:
    """Positions of parents; raises `DependencyCycle` for a cycle (through any runs)."""
    at: dict[RunId, int] = {item.id: i for i, item in enumerate(valid)}
    off = len(valid)
    for k, item in enumerate(no_time):
        at.setdefault(item.id, off + k)
    everyone = [*valid, *no_time]
    up = [-1] * len(everyone)
    any_parent = False
    for i, item in enumerate(everyone):
        p = (item.attrs or NO_ATTRS).parent
        if p is not None:
            j = at.get(p, -1)
            alt = other_type(p) if j < 0 else None
            if alt is not None:  # "42" for the id 42 or the other way: SQLite types are loose
                j = at.get(alt, -1)
            up[i] = j
            any_parent |= j >= 0
    if not any_parent:
        return None
    _refuse_cycles(up, everyone)
    # A parent without a timestamp is kept anyway: the chain stops there for the valid runs.
    parent = [p if p < off else -1 for p in up[:off]]
    return _Parents(parent, [p if p < off else -1 for p in up[off:]], up)


def other_type(value: RunId) -> RunId | None:
    """The same id in SQLite's other loose type: ``42`` for ``"42"`` and the other way."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _refuse_cycles(up: list[int], everyone: list[Item]) -> None:
    state = bytearray(len(up))  # 0 unseen, 1 on the current path, 2 done
    for start in range(len(up)):
        path = []
        i = start
        while i >= 0 and state[i] == 0:
            state[i] = 1
            path.append(i)
            i = up[i]
        if i >= 0 and state[i] == 1:  # back on the current path: a cycle from i
            cycle = path[path.index(i) :]
            raise DependencyCycle([everyone[k].id for k in cycle])
        for k in path:
            state[k] = 2


def _keep_ancestors(
    parents: _Parents,
    no_time: list[Item],
    valid: list[Item],
    flags: array[int],
    why: _Reasons,
    among: Iterable[int],
) -> None:
    """Keep every run that a kept run of ``among`` (and every run without a timestamp)
    depends on, transitively; the reason names the run that depends on it. Each run is
    walked once: O(n)."""
    up = parents.parent
    starts: list[tuple[RunId, int]] = [
        (item.id, parents.no_time_parent[k]) for k, item in enumerate(no_time)
    ]
    starts += [(valid[i].id, up[i]) for i in among if flags[i]]
    for child, p in starts:
        while p >= 0 and not flags[p] & DEPENDED_ON:
            flags[p] |= DEPENDED_ON
            why.late(p, f"kept: run {child} depends on it")
            child, p = valid[p].id, up[p]


def _floor(
    min_keep: int, already: int, pos: Sequence[int], flags: array[int], why: _Reasons
) -> list[int]:
    """Keep the newest runs of ``pos`` (one group) not kept yet until ``min_keep`` runs of
    it are kept in all (``already`` counts its runs kept before: those without a
    timestamp)."""
    kept = already + sum(1 for i in pos if flags[i])
    added: list[int] = []
    reason = f"kept: min-keep {min_keep} (never fewer runs than that)"
    for i in pos:
        if kept >= min_keep:
            break
        if not flags[i]:
            flags[i] |= FLOOR
            why.late(i, reason)
            added.append(i)
            kept += 1
    return added
