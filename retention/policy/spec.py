"""What to keep: the policy as data. It travels in the signed manifest and its digest.

Defaults are left out of the encoding (``omit_defaults``), so a policy that uses only the
first rules (keep-last, max-age) encodes, and digests, exactly as it did before the calendar
rules existed. Counts are whole numbers, -1 meaning unlimited (restic's ``unlimited``);
calendar spans are restic's text (``1y2m3d4h``, normalised); no floats anywhere.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from retention.durations import format_bytes, parse_span
from retention.errors import UsageError

UNLIMITED = -1
UNITS = ("hourly", "daily", "weekly", "monthly", "yearly")
NOUN = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}
COUNT_FIELDS = ("keep_last", *(f"keep_{u}" for u in UNITS))
SPAN_FIELDS = ("keep_within", *(f"keep_within_{u}" for u in UNITS))


class PolicySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What to keep. Durations for max-age are whole seconds; calendar spans restic's text.

    Rules (a run is kept if any keeps it): ``keep_last``, ``max_age_seconds``,
    ``keep_{hourly,daily,weekly,monthly,yearly}``, ``keep_within``,
    ``keep_within_{hourly,...}``, ``keep_tags``. Protections (never removed, whatever the
    rules say): runs not in ``terminal_states``, pinned runs (``pins``), the newest run of
    each kind in ``newest_of_kind``, the ``min_keep`` floor, and with ``dependencies`` every
    run a kept run depends on. ``max_total_bytes`` is the size budget applied last.
    """

    keep_last: int | None = None
    max_age_seconds: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None
    keep_within_hourly: str | None = None
    keep_within_daily: str | None = None
    keep_within_weekly: str | None = None
    keep_within_monthly: str | None = None
    keep_within_yearly: str | None = None
    keep_tags: tuple[tuple[str, ...], ...] | None = None
    tz: str | None = None  # IANA zone for calendar periods; None: each run's recorded offset
    checkpoint: Literal["first"] | None = None  # None: newest of each period (restic)
    min_keep: int | None = None
    terminal_states: tuple[str, ...] | None = None
    pins: bool | None = None
    newest_of_kind: tuple[str, ...] | None = None
    dependencies: bool | None = None
    max_total_bytes: int | None = None
    # Groups and tiers: the rules, protections, floor and budget apply per group of runs
    # with equal values of these columns (and equal tier); each tier has its own spec
    # (complete: the base rules with the tier's own over them), a group whose tier is not
    # here keeps every run. ``tier_source`` says where a run's tier is read, for people.
    group_by: tuple[str, ...] | None = None
    tiers: dict[str, PolicySpec] | None = None
    tier_source: str | None = None
    # Policy rows (one row per group in a catalog table): the tiers are the groups' keys,
    # ``tier_rows`` names the table, ``disabled`` the groups its row turns off.
    tier_rows: str | None = None
    disabled: tuple[str, ...] | None = None
    # An erasure request: every run whose column holds this value (and, with dependencies,
    # every run depending on one) goes, whatever the rules, pins and floors say; apply
    # purges them at once (no grace period, no undo). Only catalog.protect still holds.
    erase: tuple[str, str] | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__struct_fields__)

    def keeps_nothing(self) -> bool:
        """True when no rule can keep a run (protections and the floor are not rules):
        the policy restic calls empty, refused by `retention.planner`."""
        if any(getattr(self, f) not in (None, 0) for f in COUNT_FIELDS):
            return False
        if any(getattr(self, f) is not None for f in SPAN_FIELDS):
            return False
        return not self.keep_tags and self.max_age_seconds is None

    def problem(self) -> str | None:
        """Why this spec cannot be evaluated (a value out of its domain), or None."""
        for f in COUNT_FIELDS:
            v = getattr(self, f)
            if v is not None and v < UNLIMITED:
                return f"{f} must be >= 0 or -1 (unlimited), got {v}"
        for f in SPAN_FIELDS:
            v = getattr(self, f)
            if v is not None:
                try:
                    span = parse_span(v)
                except UsageError as exc:
                    return f"{f}: {exc.message}"
                if span.is_zero():
                    return f"{f} must not be zero (leave it out instead)"
        if self.max_age_seconds is not None and self.max_age_seconds <= 0:
            return "max_age_seconds must be positive"
        if self.min_keep is not None and self.min_keep < 0:
            return "min_keep must not be negative"
        if self.max_total_bytes is not None and self.max_total_bytes <= 0:
            return "max_total_bytes must be positive"
        if self.keep_tags is not None and not all(self.keep_tags):
            return "keep_tags: every tag list needs at least one tag ('' for untagged runs)"
        if self.group_by is not None and not self.group_by:
            return "group_by must name at least one column"
        return None

    def describe(self) -> str:
        """The policy in words, printed first by ``plan``."""
        if self.erase is not None:
            column, value = self.erase
            deps = ", and every run that depends on one" if self.dependencies else ""
            return (
                f"Erase every run whose {column} is {value!r} (erasure request){deps},"
                " whatever the policy (pins, floors and rules do not apply): apply purges them"
                " at once, with no grace period and no undo. Protected runs (catalog.protect)"
                " stay."
            )
        if self.tier_rows is not None:
            return self._describe_rows()
        if self.tiers is not None:
            return self._describe_tiers()
        text = self._describe_rules()
        if self.group_by:
            text = f"For each group of runs by {', '.join(self.group_by)}: " + text
        return text

    def _describe_rows(self) -> str:
        by = f" by {', '.join(self.group_by)}" if self.group_by else ""
        tiers = self.tiers or {}
        alike: dict[str, int] = {}
        for tier in tiers.values():
            text = tier._describe_rules(brief=True)
            alike[text] = alike.get(text, 0) + 1
        lines = [f"For each group of runs{by}, the policy of its row in {self.tier_rows}:"]
        for text, n in sorted(alike.items(), key=lambda kv: (-kv[1], kv[0]))[:10]:
            lines.append(f"  {n} group{'' if n == 1 else 's'}: {text}")
        if len(alike) > 10:
            rest = sum(n for _, n in sorted(alike.items(), key=lambda kv: (-kv[1], kv[0]))[10:])
            lines.append(f"  {rest} more groups with {len(alike) - 10} other policies")
        if self.disabled:
            lines.append(f"  {len(self.disabled)} group(s) disabled: every run kept.")
        lines.append(
            "A run is removed only when no rule of its group's row keeps it; runs with no"
            " valid timestamp, protected runs and every run of a group without an enabled row"
            " are kept." + "".join(" " + s for s in self._protections())
        )
        return "\n".join(lines)

    def _describe_tiers(self) -> str:
        by = f" by {', '.join(self.group_by)}" if self.group_by else ""
        lines = [
            f"For each group of runs{by}, the policy of its tier ({self.tier_source or 'tier'}):"
        ]
        for name in sorted(self.tiers or {}):
            lines.append(f"  tier {name}: " + (self.tiers or {})[name]._describe_rules(brief=True))
        lines.append(
            "A run is removed only when no rule of its tier keeps it; runs with no valid"
            " timestamp, protected runs and every run of a group whose tier has no policy here"
            " are kept." + "".join(" " + s for s in self._protections())
        )
        return "\n".join(lines)

    def _describe_rules(self, brief: bool = False) -> str:
        parts = []
        if self.keep_last == UNLIMITED:
            parts.append("every run (keep-last unlimited)")
        elif self.keep_last:  # 0 keeps nothing: not worth a clause
            parts.append(
                "the newest run" if self.keep_last == 1 else f"the newest {self.keep_last} runs"
            )
        if self.max_age_seconds is not None:
            parts.append(f"every run younger than {age_text(self.max_age_seconds)}")
        which = "first" if self.checkpoint == "first" else "newest"
        for unit in UNITS:
            n = getattr(self, f"keep_{unit}")
            if n == UNLIMITED:
                parts.append(f"the {which} run of every {NOUN[unit]}")
            elif n == 1:
                parts.append(f"the {which} run of the latest {NOUN[unit]} with runs")
            elif n:
                parts.append(f"the {which} run of each of the {n} latest {NOUN[unit]}s with runs")
        if self.keep_within is not None:
            parts.append(f"every run within {self.keep_within} of the newest run")
        for unit in UNITS:
            span = getattr(self, f"keep_within_{unit}")
            if span is not None:
                parts.append(
                    f"the {which} run of each {NOUN[unit]} within {span} of the newest run"
                )
        for tags in self.keep_tags or ():
            parts.append(f"every run {tags_text(tags)}")
        if not parts:
            return "Keep nothing (empty policy)."
        if brief:
            extra = [s.rstrip(".") for s in self._protections(floor_and_budget_only=True)]
            return "keep " + ", and ".join(parts) + "".join(f"; {e.lower()}" for e in extra) + "."
        text = (
            "Keep "
            + ", and ".join(parts)
            + "; remove a run only when no rule keeps it. Runs with no valid timestamp"
            " and protected runs are always kept."
        )
        return text + "".join(" " + s for s in self._protections())

    def _protections(self, floor_and_budget_only: bool = False) -> list[str]:
        out: list[str] = []
        if floor_and_budget_only:
            if self.min_keep:
                out.append(f"At least {self.min_keep} runs are always kept.")
            if self.max_total_bytes is not None:
                out.append(f"Size budget {format_bytes(self.max_total_bytes)}.")
            return out
        if self.terminal_states is not None:
            out.append(
                "Only runs in a terminal state (" + ", ".join(self.terminal_states) + ") may go."
            )
        if self.pins:
            out.append("Pinned runs are always kept.")
        for kind in self.newest_of_kind or ():
            out.append(f"The newest run of kind {kind!r} is always kept.")
        if self.dependencies:
            out.append("A run that a kept run depends on is kept.")
        if self.min_keep:
            out.append(f"At least {self.min_keep} runs are always kept.")
        if self.max_total_bytes is not None:
            out.append(
                f"While the kept runs exceed {format_bytes(self.max_total_bytes)}, the oldest"
                " unprotected ones go (other runs before calendar checkpoints)."
            )
        if self.tz is not None:
            out.append(f"Calendar periods are taken in {self.tz}.")
        return out


def age_text(seconds: float) -> str:
    seconds = int(seconds)
    for unit, size in (("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400), ("h", 3600)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    if seconds >= 86400:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


def tags_text(tags: tuple[str, ...]) -> str:
    """``tagged a and b``; restic's ``''`` (untagged runs only) as ``without tags``."""
    if "" in tags and len(tags) == 1:
        return "without tags"
    return "tagged " + " and ".join(t if t else "''" for t in tags)
