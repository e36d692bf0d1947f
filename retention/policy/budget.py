"""The size budget (``max_total_bytes``): the last stage of `retention.policy.core`.

After the rules, protections, dependencies and the floor, while the kept runs hold more
bytes than the budget, the least important run that only rules keep goes: runs that are
not calendar checkpoints before checkpoints, oldest first. Never a protected, pinned,
non-terminal, newest-of-kind or floor run, never one a kept run depends on, and never so
many that fewer than ``min_keep`` runs stay, never one whose removal frees no bytes (an
empty directory, an unknown size). A run kept only because a removed run depended on it
goes with it. When nothing more may go and the budget is still exceeded,
the report says by how much and what holds the bytes.

Sizes are given (``Attrs.size``); an unknown size counts as 0 and is reported. Pure.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retention.durations import format_bytes, plural
from retention.policy.marks import (
    CHECKPOINT,
    DEPENDED_ON,
    FLOOR,
    GUARDS,
    NEWEST_KIND,
    NOT_TERMINAL,
    PINNED,
    PROTECTED,
    RULE,
    UNRULED,
)

if TYPE_CHECKING:
    from retention.policy.core import Item


@dataclass(frozen=True)
class Held:
    """Bytes the budget could not touch, for one reason."""

    why: str
    runs: int
    bytes: int


@dataclass(frozen=True)
class BudgetReport:
    limit: int
    before: int  # bytes of the kept runs before the budget
    after: int  # bytes of the kept runs after it
    removed: int  # runs the budget removed
    unknown: int  # kept runs whose size is unknown (counted as 0)
    held: tuple[Held, ...]  # when over: what holds the bytes, largest first

    @property
    def over(self) -> int:
        return max(0, self.after - self.limit)

    def shortfall(self) -> str | None:
        """One sentence when the budget is not met, else None."""
        if not self.over:
            return None
        held = "; ".join(
            f"{h.why}: {plural(h.runs, 'run')}, {format_bytes(h.bytes)}" for h in self.held
        )
        text = (
            f"size budget {format_bytes(self.limit)} not met: the kept runs hold"
            f" {format_bytes(self.after)}, {format_bytes(self.over)} over"
            f" (after removing {plural(self.removed, 'run')}); held by {held or 'nothing'}"
        )
        if self.unknown:
            text += f"; {plural(self.unknown, 'kept run')} of unknown size counted as 0"
        return text


def _only_depended_on(f: int) -> bool:
    return f & (DEPENDED_ON | RULE | GUARDS) == DEPENDED_ON


def _size(item: Item) -> int | None:
    return item.attrs.size if item.attrs is not None else None


def apply(
    valid: list[Item],
    no_time: list[Item],
    flags: Sequence[int],
    parents: tuple[list[int], list[int]] | None,
    limits: dict[int, int],
    min_keeps: dict[int, int],
    groups: tuple[Sequence[int], Sequence[int]] | None = None,
) -> tuple[dict[int, BudgetReport], dict[int, str]]:
    """Decide which kept runs the budget removes: positions -> the removal reason, and a
    report per group with a budget.

    ``flags`` are the marks per position of ``valid`` (non-zero: kept); ``parents`` the
    position each valid run and each run without a timestamp depends on (-1: none).
    ``limits`` and ``min_keeps`` are per group; ``groups`` gives the group of each valid
    run and of each run without a timestamp (None: every run in group 0). A group's budget
    counts its own runs only; a run that a kept run of any group depends on stays."""
    group = groups[0] if groups is not None else None
    nt_group = groups[1] if groups is not None else None
    sizes = [_size(it) or 0 for it in valid]
    total: dict[int, int] = {}
    kept: dict[int, int] = {}
    for k, it in enumerate(no_time):
        g = nt_group[k] if nt_group is not None else 0
        total[g] = total.get(g, 0) + (_size(it) or 0)
        kept[g] = kept.get(g, 0) + 1
    kids: dict[int, int] = {}  # kept runs depending on each position
    parent = parents[0] if parents is not None else None
    for p in parents[1] if parents is not None else ():
        if p >= 0:
            kids[p] = kids.get(p, 0) + 1
    members: dict[int, list[int]] = {g: [] for g in limits}
    for i, f in enumerate(flags):
        g = group[i] if group is not None else 0
        if g in members:
            members[g].append(i)
        if f:
            total[g] = total.get(g, 0) + sizes[i]
            kept[g] = kept.get(g, 0) + 1
            if parent is not None and parent[i] >= 0:
                kids[parent[i]] = kids.get(parent[i], 0) + 1
    before = dict(total)
    gone: dict[int, str] = {}
    removed: dict[int, int] = {}

    def of(i: int) -> int:
        return group[i] if group is not None else 0

    def candidate(i: int) -> bool:
        f = flags[i]
        return bool(f & RULE) and not f & GUARDS

    for g in sorted(limits):
        limit = limits[g]
        reason = f"removed: over the size budget of {format_bytes(limit)}"
        heap = [
            (bool(flags[i] & CHECKPOINT), -i)
            for i in members[g]
            if flags[i] and candidate(i) and not kids.get(i)
        ]
        heapq.heapify(heap)
        while total.get(g, 0) > limit and heap:
            _, neg = heapq.heappop(heap)
            i = -neg
            chain = [i]  # and the runs kept only because this one depended on them
            p = parent[i] if parent is not None else -1
            while p >= 0 and kids.get(p) == 1 and _only_depended_on(flags[p]) and p not in gone:
                chain.append(p)
                p = parent[p] if parent is not None else -1
            leaving: dict[int, int] = {}
            for j in chain:
                leaving[of(j)] = leaving.get(of(j), 0) + 1
            if any(kept[h] - n < min_keeps.get(h, 0) for h, n in leaving.items()):
                continue  # a floor: this one (and its chain) must stay
            if not sum(sizes[j] for j in chain):
                continue  # frees nothing (empty, or of unknown size): no reason to delete it
            for k, j in enumerate(chain):
                gone[j] = reason
                if k:
                    gone[j] += f" (kept only for run {valid[chain[k - 1]].id}, which went)"
                h = of(j)
                total[h] -= sizes[j]
                kept[h] -= 1
                removed[h] = removed.get(h, 0) + 1
            if p >= 0:
                kids[p] -= 1
                if not kids[p] and candidate(p) and of(p) == g:
                    heapq.heappush(heap, (bool(flags[p] & CHECKPOINT), -p))
    reports: dict[int, BudgetReport] = {}
    for g, limit in limits.items():
        held: tuple[Held, ...] = ()
        if total.get(g, 0) > limit:
            held = _held(no_time, valid, flags, sizes, gone, kids, g, groups)
        unknown = sum(
            1
            for k, it in enumerate(no_time)
            if (nt_group is None or nt_group[k] == g) and _size(it) is None
        ) + sum(1 for i in members[g] if flags[i] and i not in gone and _size(valid[i]) is None)
        reports[g] = BudgetReport(
            limit, before.get(g, 0), total.get(g, 0), removed.get(g, 0), unknown, held
        )
    return reports, gone


def _held(
    no_time: list[Item],
    valid: list[Item],
    flags: Sequence[int],
    sizes: list[int],
    gone: dict[int, str],
    kids: dict[int, int],
    g: int,
    groups: tuple[Sequence[int], Sequence[int]] | None,
) -> tuple[Held, ...]:
    """What holds group ``g``'s bytes still kept, one category per run (the first that
    applies)."""
    order = (
        (PROTECTED, "protected (catalog.protect)"),
        (PINNED, "pinned"),
        (NOT_TERMINAL, "not in a terminal state"),
        (NEWEST_KIND, "newest of its kind"),
        (UNRULED, "no policy for its tier"),
        (FLOOR, "min-keep floor"),
    )
    runs: dict[str, int] = {}
    size: dict[str, int] = {}

    def add(why: str, n: int) -> None:
        runs[why] = runs.get(why, 0) + 1
        size[why] = size.get(why, 0) + n

    for k, it in enumerate(no_time):
        if groups is None or groups[1][k] == g:
            add("no valid timestamp", _size(it) or 0)
    for i, f in enumerate(flags):
        if not f or i in gone or (groups is not None and groups[0][i] != g):
            continue
        why = next((w for bit, w in order if f & bit), None)
        if why is None:
            why = "a kept run depends on it" if kids.get(i) else "min-keep floor"
        add(why, sizes[i])
    return tuple(
        Held(w, runs[w], size[w]) for w in sorted(runs, key=lambda w: (-size[w], w)) if size[w]
    )
