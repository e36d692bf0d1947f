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
)

if TYPE_CHECKING:
    from retention.policy.core import Item
    from retention.policy.spec import PolicySpec


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
    spec: PolicySpec,
    no_time: list[Item],
    valid: list[Item],
    flags: bytearray,
    parents: tuple[list[int], list[int]] | None,
) -> tuple[BudgetReport, dict[int, str]]:
    """Decide which kept runs the budget removes: positions -> the removal reason.

    ``flags`` are the marks per position of ``valid`` (non-zero: kept); ``parents`` the
    position each valid run and each run without a timestamp depends on (-1: none)."""
    limit = spec.max_total_bytes
    assert limit is not None
    min_keep = spec.min_keep or 0
    sizes = [_size(it) or 0 for it in valid]
    total = sum(_size(it) or 0 for it in no_time)
    kept = len(no_time)
    kids: dict[int, int] = {}  # kept runs depending on each position
    parent = parents[0] if parents is not None else None
    for p in parents[1] if parents is not None else ():
        if p >= 0:
            kids[p] = kids.get(p, 0) + 1
    for i, f in enumerate(flags):
        if f:
            total += sizes[i]
            kept += 1
            if parent is not None and parent[i] >= 0:
                kids[parent[i]] = kids.get(parent[i], 0) + 1
    before = total
    gone: dict[int, str] = {}
    reason = f"removed: over the size budget of {format_bytes(limit)}"

    def candidate(i: int) -> bool:
        f = flags[i]
        return bool(f & RULE) and not f & GUARDS

    heap = [
        (bool(flags[i] & CHECKPOINT), -i)
        for i in range(len(valid))
        if flags[i] and candidate(i) and not kids.get(i)
    ]
    heapq.heapify(heap)
    while total > limit and heap:
        _, neg = heapq.heappop(heap)
        i = -neg
        chain = [i]  # and the runs kept only because this one depended on them
        p = parent[i] if parent is not None else -1
        while p >= 0 and kids.get(p) == 1 and _only_depended_on(flags[p]):
            chain.append(p)
            p = parent[p] if parent is not None else -1
        if kept - len(chain) < min_keep:
            continue  # the floor: this one (and its chain) must stay
        if not sum(sizes[j] for j in chain):
            continue  # frees nothing (empty, or of unknown size): no reason to delete it
        for k, j in enumerate(chain):
            gone[j] = reason
            if k:
                gone[j] += f" (kept only for run {valid[chain[k - 1]].id}, which went)"
            total -= sizes[j]
            kept -= 1
        if p >= 0:
            kids[p] -= 1
            if not kids[p] and candidate(p):
                heapq.heappush(heap, (bool(flags[p] & CHECKPOINT), -p))
    held: tuple[Held, ...] = ()
    if total > limit:
        held = _held(no_time, valid, flags, sizes, gone, kids)
    unknown = sum(1 for it in no_time if _size(it) is None) + sum(
        1 for i, it in enumerate(valid) if flags[i] and i not in gone and _size(it) is None
    )
    return BudgetReport(limit, before, total, len(gone), unknown, held), gone


def _held(
    no_time: list[Item],
    valid: list[Item],
    flags: bytearray,
    sizes: list[int],
    gone: dict[int, str],
    kids: dict[int, int],
) -> tuple[Held, ...]:
    """What holds the bytes still kept, one category per run (the first that applies)."""
    order = (
        (PROTECTED, "protected (catalog.protect)"),
        (PINNED, "pinned"),
        (NOT_TERMINAL, "not in a terminal state"),
        (NEWEST_KIND, "newest of its kind"),
        (FLOOR, "min-keep floor"),
    )
    runs: dict[str, int] = {}
    size: dict[str, int] = {}

    def add(why: str, n: int) -> None:
        runs[why] = runs.get(why, 0) + 1
        size[why] = size.get(why, 0) + n

    for it in no_time:
        add("no valid timestamp", _size(it) or 0)
    for i, f in enumerate(flags):
        if not f or i in gone:
            continue
        why = next((w for bit, w in order if f & bit), None)
        if why is None:
            why = "a kept run depends on it" if kids.get(i) else "min-keep floor"
        add(why, sizes[i])
    return tuple(
        Held(w, runs[w], size[w]) for w in sorted(runs, key=lambda w: (-size[w], w)) if size[w]
    )
