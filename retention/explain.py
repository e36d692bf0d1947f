"""Why a run is kept or removed (`retention explain`, `plan --explain`), and the kept side of
a manifest (`retention show --kept`).

Read-only, always: the catalog is opened ``mode=ro`` and the policy is evaluated by the
planner's own steps (`retention.planner.read_items`, `measure_sizes` for a size budget
without ``policy.size_column``, `policy_zone`, then `retention.policy.evaluate`). Nothing
here decides anything the policy does not: the verdict and its reasons are the policy's.

What is added is context the reasons leave out: the run's position among the runs the rules
count (in its group), and for every rule of the policy what that rule saw for this run (its
slot, its period and which run holds that period, its age, the cutoff of a ``within`` rule,
its tags). Those per-rule lines come from running each rule alone over the run's group, the
way the policy does; they are shown only when they reproduce the policy's reasons, so a
policy stage they do not model can never make them contradict the verdict.

A manifest holds only the runs it removes. To explain a run against a manifest, or to list
what a manifest keeps, the manifest's own policy (``payload.policy``, its filter) is
evaluated again at its ``now`` against the catalog as it is today, and the result is
compared with the manifest's entries: the catalog may have changed since the plan.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from retention.catalog import q
from retention.catalogs import open_catalog
from retention.config import Config
from retention.durations import format_bytes, format_instant, parse_instant, parse_span, plural
from retention.errors import UsageError
from retention.layout import StateLayout
from retention.manifest import Entry, Payload, read_manifest_bytes, verify_for_workspace
from retention.planner import (
    _cycle_error,
    _has_budget,
    measure_sizes,
    policy_from_config,
    policy_with_rows,
    policy_zone,
    read_items,
)
from retention.policy import (
    Decision,
    DependencyCycle,
    Item,
    PolicySpec,
    Verdict,
    evaluate,
    group_label,
)
from retention.policy import sort_key as newest_key
from retention.policy.calendar import KEY, cutoff, instant_us, label, local
from retention.policy.rules import Ctx, RuleDef, active_rules
from retention.policy.spec import NOUN, UNITS, UNLIMITED, age_text, tags_text
from retention.store import LocalStore, require_artifact_root

if TYPE_CHECKING:
    from retention.planner import PlanResult

EXPLAIN_VERSION = 1
KEPT_VERSION = 1

# A time before every manifest's expiry: explaining an expired manifest is legitimate (it
# is what was applied); its expiry is reported, not refused. Signature and catalog identity
# are checked as always.
_BEFORE_ANY_EXPIRY = datetime(1, 1, 1, tzinfo=UTC)


# -- reports ---------------------------------------------------------------------------------


class RuleCheck(msgspec.Struct):
    """What one rule of the policy saw for the run."""

    rule: str  # "keep-daily 7", "max-age 180d", "keep-tag a,b"
    keeps: bool
    detail: str  # "slot 2 of 7, for day 2026-03-01", "245d 3h old at ...: not younger ..."


class ManifestCheck(msgspec.Struct):
    """The run against a manifest: is it an entry, and does the re-evaluation agree."""

    manifest_id: str
    planned_at: str  # the manifest's now
    expires_at: str
    expired: bool  # at the real time of this command
    in_manifest: bool
    entry_reason: str | None  # the reason recorded in the manifest's entry
    agrees: bool | None  # None: the run is not in the catalog today (nothing to compare)
    applied_by: list[str]  # applies that committed this manifest
    skipped: str | None  # plan --explain: why the plan left the run out of the manifest
    note: str  # the comparison in words


class Explanation(msgspec.Struct):
    """`retention explain` (``--json``), and the explanation `plan --explain` prints."""

    version: int
    run_id: str | int
    basis: str  # "config", "manifest" or "plan": which policy, at which now
    policy: str  # the policy in words
    now: str  # the instant the policy was evaluated at
    in_catalog: bool  # the runs table holds the run today
    considered: bool  # catalog.filter selects it (the policy sees it)
    kept: bool | None  # the verdict; None when the policy does not see the run
    reasons: list[str]  # the verdict's reasons, as the policy gives them
    time: str | None  # the run's timestamp (UTC); None: missing or unparseable
    recorded_time: str | None  # as recorded (its UTC offset), when that is not UTC
    group: list[Any] | None  # the values of the group-by columns
    group_label: str | None  # "org_id=acme"
    tier: str | None
    position: int | None  # 1-based, newest first, among the runs the rules count
    counted: int | None  # how many runs the rules count (in the run's group)
    rules: list[RuleCheck]  # one per rule of the (group's) policy; [] when not shown
    size: int | None  # bytes the size budget counted for it (policies with a budget)
    budget: str | None  # what the size budget of the run's group did, in words
    parent: str | int | None  # the run it depends on (policy.parent_column)
    parent_kept: bool | None  # that run's verdict; None: not among the considered runs
    manifest: ManifestCheck | None
    notes: list[str]


class RuleCount(msgspec.Struct):
    """How many kept runs one rule (or protection) keeps; a run kept by several rules
    counts under each."""

    rule: str  # the reason with its period or run left out: "kept: daily checkpoint <period>"
    runs: int


class GroupCount(msgspec.Struct):
    group: str  # "org_id=acme, tier pro"
    considered: int
    kept: int
    removed: int


class KeptRun(msgspec.Struct):
    run_id: str | int
    time: str | None
    reasons: list[str]
    group: list[Any] | None = None
    tier: str | None = None


class KeptReport(msgspec.Struct):
    """`show --kept`: what a manifest keeps, by re-evaluating its policy (see `basis`)."""

    version: int
    basis: str  # how the kept side was obtained, in words
    now: str  # the manifest's now, the policy's evaluation time
    considered: int  # runs the re-evaluation considered
    kept: int
    removed: int  # runs the re-evaluation removes
    by_rule: list[RuleCount]  # largest first
    by_group: list[GroupCount]  # grouped policies only
    runs: list[KeptRun]  # every kept run, newest first, then those without a timestamp
    removed_not_in_manifest: list[str | int]  # removed today, not entries of the manifest
    in_manifest_but_kept: list[str | int]  # entries the re-evaluation keeps
    in_manifest_not_considered: int  # entries no longer among the considered runs
    agrees: bool  # the re-evaluation removes exactly the manifest's entries


# -- evaluation ------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """The policy's decision over the catalog, with what explaining it needs."""

    cfg: Config
    spec: PolicySpec
    now: datetime
    zone: tzinfo | None
    items: list[Item]
    decision: Decision


def evaluate_catalog(cfg: Config, spec: PolicySpec, now: datetime) -> Evaluation:
    """Evaluate ``spec`` at ``now`` over the runs ``cfg`` selects, as `build_plan` does
    (read-only: the catalog ``mode=ro``; directories only measured, for a size budget
    without ``policy.size_column``). A dependency cycle is exit 4, as for plan."""
    with open_catalog(cfg) as cat:
        spec = policy_with_rows(cat, cfg, spec)  # [policy.rows]: each group's row
        items = read_items(cat, cfg, spec)
        if _has_budget(spec) and not cfg.size_column:
            require_artifact_root(cfg)
            items, _ = measure_sizes(cfg, cat, LocalStore(Path(cfg.artifact_root)), items)
    zone = policy_zone(spec)
    try:
        decision = evaluate(items, spec, now, zone)
    except DependencyCycle as exc:
        raise _cycle_error(cfg, exc) from None
    return Evaluation(cfg, spec, now, zone, items, decision)


def for_manifest(cfg: Config, payload: Payload) -> Config:
    """``cfg`` with the manifest's filter: the filter is part of what a manifest was
    planned with (its policy digest covers both)."""
    if payload.filter == cfg.filter:
        return cfg
    return msgspec.structs.replace(cfg, filter=payload.filter)


def load_manifest(cfg: Config, path: str) -> tuple[Payload, list[str]]:
    """A manifest, verified (signature, format, catalog identity; an expired one is
    accepted, see `_BEFORE_ANY_EXPIRY`), and the applies that committed it. Read-only."""
    data = read_manifest_bytes(path, cfg.manifest_max_size)
    with open_catalog(cfg) as cat:
        state = StateLayout(Path(cfg.state_dir))
        payload = verify_for_workspace(data, state, cat, now=_BEFORE_ANY_EXPIRY)
        return payload, cat.applied_by_manifest(payload.manifest_id)


# -- finding the run -------------------------------------------------------------------------

_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = range(-(2**63), 2**63)


def id_candidates(text: str) -> list[str | int]:
    """The run ids ``text`` may name: itself, and the INTEGER it spells (``"42"`` -> 42):
    a command line has only text, a catalog may store either."""
    out: list[str | int] = [text]
    if _INTEGER.fullmatch(text.strip()) and int(text) in _INT64:
        out.append(int(text))
    return out


def _same_id(a: object, b: object) -> bool:
    return type(a) is type(b) and a == b


def _pick(found: Sequence[object], text: str) -> tuple[object | None, str | None]:
    """The id among ``found`` that ``text`` names: the TEXT id equal to it first, else the
    INTEGER; and a note when the catalog holds both."""
    exact = [f for f in found if _same_id(f, text)]
    other = [f for f in found if not _same_id(f, text)]
    if exact:
        note = None
        if other:
            note = (
                f"the catalog also holds the INTEGER run id {other[0]}; this is the TEXT"
                f" id {text!r}"
            )
        return exact[0], note
    return (other[0], None) if other else (None, None)


def _in_table(cfg: Config, text: str) -> object | None:
    """The run id as stored in the runs table (whatever ``catalog.filter`` says), or None."""
    with open_catalog(cfg) as cat:
        keys = cat.id_keys(text)
        if not keys:
            return None
        sql = (
            f"SELECT {q(cfg.id_column)} FROM {q(cfg.runs_table)}"
            f" WHERE {q(cfg.id_column)} IN ({', '.join('?' * len(keys))})"
        )
        found = [r[0] for r in cat.conn.execute(sql, keys)]
    return _pick(found, text)[0]


def not_found(cfg: Config, text: str) -> UsageError:
    """A run id the catalog does not hold: exit 2 (the argument names nothing)."""
    return UsageError(
        f"run {text!r} is not in the catalog ({cfg.runs_table}.{cfg.id_column})",
        hint="give a run id as the catalog stores it (see `retention plan` or the catalog);"
        " a run that a manifest deleted is explained with the manifest:"
        " retention explain RUN_ID MANIFEST",
    )


# -- explaining one run ----------------------------------------------------------------------


def _group_of(item: Item, spec: PolicySpec) -> tuple[tuple[object, ...] | None, str | None]:
    """The key the policy groups a run by (as `evaluate` does): its group-by values and,
    with tiers, its tier."""
    attrs = item.attrs
    if attrs is None:
        return None, None
    return attrs.group, attrs.tier if spec.tiers is not None else None


def _group_spec(spec: PolicySpec, tier: str | None) -> PolicySpec | None:
    """The spec a group is evaluated with: its tier's, with tiers (None: the tier has no
    policy, every run of it is kept)."""
    if spec.tiers is None:
        return spec
    return spec.tiers.get(tier) if tier is not None else None


def _group_text(spec: PolicySpec, group: tuple[object, ...] | None, tier: str | None) -> str | None:
    """``org_id=acme, tier pro`` (the policy's own naming); None for an ungrouped run."""
    if group is None and tier is None:
        return None
    return group_label(spec.group_by, group, tier)


def _verdict(decision: Decision, item: Item) -> Verdict:
    for v in decision.keep:
        if v.item is item:
            return v
    for v in decision.remove:
        if v.item is item:
            return v
    raise AssertionError("evaluate returns a verdict for every item")


def _when(t: datetime) -> str:
    return format_instant(t)


def _ago(td: timedelta) -> str:
    """``245d 3h``, ``5h 12min``, ``40s`` (of a positive duration)."""
    secs = int(td.total_seconds())
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}min" if minutes else f"{hours}h"
    return f"{minutes}min" if minutes else f"{secs}s"


def rule_name(rd: RuleDef, spec: PolicySpec) -> str:
    """A rule as its flag reads: ``keep-daily 7``, ``max-age 180d``, ``keep-tag a,b``."""
    value = getattr(spec, rd.field)
    if rd.field == "max_age_seconds":
        return f"max-age {age_text(value)}"
    if rd.field == "keep_tags":
        return "keep-tag " + "; ".join(",".join(t if t else "''" for t in tl) for tl in value)
    name = rd.field.replace("_", "-")
    return f"{name} {'unlimited' if value == UNLIMITED else value}"


@dataclass
class _Seen:
    """The runs the rules count in one group, newest first, and the context they get."""

    runs: list[Item]
    ctx: Ctx


def _seen(ev: Evaluation, spec: PolicySpec, item: Item) -> _Seen:
    if ev.spec.group_by is None and ev.spec.tiers is None:
        runs = [it for it in ev.items if it.at is not None]  # one group: every run
    else:
        key = _group_of(item, ev.spec)
        runs = [it for it in ev.items if it.at is not None and _group_of(it, ev.spec) == key]
    if spec.terminal_states is not None:
        terminal = frozenset(spec.terminal_states)
        runs = [it for it in runs if getattr(it.attrs, "state", None) in terminal]
    runs.sort(key=newest_key, reverse=True)
    now_at = instant_us(ev.now)
    latest = next((it.time for it in runs if it.at is not None and it.at < now_at), None)
    return _Seen(runs, Ctx(spec, ev.now, ev.zone, latest))


def _unit(field: str) -> str | None:
    for prefix in ("keep_within_", "keep_"):
        rest = field.removeprefix(prefix)
        if rest != field and rest in UNITS:
            return rest
    return None


class _RuleRun:
    """One rule run alone over a group: which runs it keeps, and with which reason."""

    def __init__(self, rd: RuleDef, seen: _Seen) -> None:
        self.rd = rd
        self.kept: list[tuple[int, str]] = list(rd.rule(seen.runs, seen.ctx))


def _period_detail(run: _RuleRun, seen: _Seen, k: int, unit: str, slots: int | None) -> str:
    """A calendar rule's view of run ``k``: its slot, or who holds its period, or that the
    slots ran out before its period."""
    zone = seen.ctx.zone
    runs = seen.runs
    key = KEY[unit]
    noun = NOUN[unit]
    t = local(runs[k].time, zone)  # type: ignore[arg-type]
    mine = key(t)
    period = f"{noun} {label(unit, t)}"
    for s, (j, _) in enumerate(run.kept):
        if j == k:
            of = "" if slots is None else f" of {'unlimited' if slots == UNLIMITED else slots}"
            return f"slot {s + 1}{of}, for {period}"
    holders = [j for j, _ in run.kept if key(local(runs[j].time, zone)) == mine]  # type: ignore[arg-type]
    if holders:
        j = holders[0]
        which = "oldest" if seen.ctx.spec.checkpoint == "first" else "newest"
        side = "newer" if j < k else "older"
        return (
            f"{period} is held by run {runs[j].id} ({side}; the rule keeps the {which} of a {noun})"
        )
    if slots is not None and slots != UNLIMITED and len(run.kept) >= slots and run.kept:
        last = local(runs[run.kept[-1][0]].time, zone)  # type: ignore[arg-type]
        return (
            f"{period}: its {slots} slots went to newer {noun}s (the last to {noun}"
            f" {label(unit, last)})"
        )
    return f"{period}: not kept ({run.rd.why(seen.ctx.spec)})"


def _within_detail(seen: _Seen, k: int, span_text: str) -> tuple[bool, str]:
    """Whether run ``k`` lies within ``span_text`` of the newest run, and the cutoff."""
    latest = seen.ctx.latest
    if latest is None:
        return True, "every run is in the future: all are within"
    limit = cutoff(latest, parse_span(span_text), seen.ctx.zone)
    if limit is None:
        return True, f"{span_text} before the newest run ({_when(latest)}) is before year 1"
    t = seen.runs[k].time
    assert t is not None
    inside = t > limit
    return inside, (
        f"{span_text} before the newest run ({_when(latest)}) is {_when(limit)};"
        f" this run is {'after' if inside else 'not after'} it"
    )


def _detail(run: _RuleRun, seen: _Seen, k: int) -> str:
    rd, spec = run.rd, seen.ctx.spec
    field = rd.field
    item = seen.runs[k]
    counted = len(seen.runs)
    if field == "keep_last":
        n = spec.keep_last or 0
        where = f"number {k + 1} of the {counted} runs it counts, newest first"
        if n == UNLIMITED:
            return f"{where}; it keeps every one"
        return f"{where}: {'among' if k < n else 'past'} the newest {n}"
    if field == "max_age_seconds":
        assert item.time is not None
        limit = age_text(spec.max_age_seconds or 0)
        age = seen.ctx.now - item.time
        young = age < timedelta(seconds=spec.max_age_seconds or 0)
        if age < timedelta(0):
            return f"{_ago(-age)} in the future at {_when(seen.ctx.now)}: younger than {limit}"
        return (
            f"{_ago(age)} old at {_when(seen.ctx.now)}:"
            f" {'younger' if young else 'not younger'} than {limit}"
        )
    if field == "keep_within":
        return _within_detail(seen, k, spec.keep_within or "")[1]
    if field == "keep_tags":
        tags: frozenset[str] | None = getattr(item.attrs, "tags", frozenset())
        wanted = " or ".join(tags_text(tl) for tl in spec.keep_tags or ())
        if tags is None:
            return "its tags cannot be read, so keep-tag cannot rule it out"
        shown = ", ".join(sorted(tags)) if tags else "none"
        return f"its tags: {shown}; the rule keeps runs {wanted}"
    unit = _unit(field)
    if unit is not None and field.startswith("keep_within_"):
        span = getattr(spec, field) or ""
        inside, text = _within_detail(seen, k, span)
        if not inside:
            return text
        return _period_detail(run, seen, k, unit, None) + f", within {span} of the newest run"
    if unit is not None:
        return _period_detail(run, seen, k, unit, getattr(spec, field))
    mine = [r for j, r in run.kept if j == k]
    return mine[0] if mine else rd.why(spec)


def _reproduces(runs: list[_RuleRun], k: int, verdict: Verdict) -> bool:
    """Whether the rules run alone give the reasons the policy gave (see the module)."""
    expected = {r for run in runs for j, r in run.kept if j == k}
    if verdict.keep:
        return expected <= set(verdict.reasons)
    overruled = {
        "kept: " + r.removeprefix("overruled: ")
        for r in verdict.reasons
        if r.startswith("overruled: ")
    }
    return expected <= overruled if overruled else not expected


def _rule_checks(
    ev: Evaluation, item: Item, verdict: Verdict
) -> tuple[list[RuleCheck], int | None, int | None, str | None]:
    """Per-rule lines, the run's position and how many runs the rules count; a note when
    the lines are left out."""
    key = _group_of(item, ev.spec)
    spec = _group_spec(ev.spec, key[1])
    if spec is None or item.time is None:
        return [], None, None, None
    seen = _seen(ev, spec, item)
    k = next((j for j, it in enumerate(seen.runs) if it is item), None)
    if k is None:
        return [], None, len(seen.runs), None
    runs = [_RuleRun(rd, seen) for rd in active_rules(spec)]
    if not _reproduces(runs, k, verdict):
        return (
            [],
            k + 1,
            len(seen.runs),
            "the rules run one by one do not reproduce this verdict's reasons, so what each"
            " rule saw is not shown",
        )
    checks = [
        RuleCheck(
            rule=rule_name(run.rd, spec),
            keeps=any(j == k for j, _ in run.kept),
            detail=_detail(run, seen, k),
        )
        for run in runs
    ]
    return checks, k + 1, len(seen.runs), None


def _budget(ev: Evaluation, item: Item) -> str | None:
    """What the size budget of the run's group did: before, after, how many it removed."""
    report = ev.decision.budget
    if report is None:
        group, tier = _group_of(item, ev.spec)
        for g in ev.decision.groups:
            if (g.group, g.tier) == (group, tier):
                report = g.budget
    if report is None:
        return None
    text = (
        f"size budget {format_bytes(report.limit)}: the kept runs held"
        f" {format_bytes(report.before)} before it, {format_bytes(report.after)} after it"
        f" removed {plural(report.removed, 'run')}"
    )
    short = report.shortfall()
    return f"{text}; {short}" if short else text


def _parent(ev: Evaluation, item: Item) -> tuple[str | int | None, bool | None]:
    parent = getattr(item.attrs, "parent", None)
    if parent is None or not ev.spec.dependencies:
        return None, None
    wanted = {(type(c), c) for c in id_candidates(str(parent))} | {(type(parent), parent)}
    for v in (*ev.decision.keep, *ev.decision.remove):
        if (type(v.item.id), v.item.id) in wanted:
            return parent, v.keep
    return parent, None


def _explain_item(ev: Evaluation, item: Item, basis: str) -> Explanation:
    verdict = _verdict(ev.decision, item)
    checks, position, counted, note = _rule_checks(ev, item, verdict)
    group = _group_of(item, ev.spec)[0]
    tier = item.attrs.tier if item.attrs is not None else None
    parent, parent_kept = _parent(ev, item)
    t = item.time
    recorded = None
    if t is not None and t.utcoffset() not in (None, timedelta(0)):
        recorded = t.isoformat()
    size = item.attrs.size if _has_budget(ev.spec) and item.attrs is not None else None
    notes = [note] if note else []
    if verdict.keep and not checks and position is None and t is not None:
        state = getattr(item.attrs, "state", None)
        if any(r.startswith("kept: state ") for r in verdict.reasons):
            notes.append(f"the rules do not count it: its state {state!r} is not terminal")
    return Explanation(
        version=EXPLAIN_VERSION,
        run_id=item.id,
        basis=basis,
        policy=ev.spec.describe(),
        now=_when(ev.now),
        in_catalog=True,
        considered=True,
        kept=verdict.keep,
        reasons=list(verdict.reasons),
        time=_when(t) if t is not None else None,
        recorded_time=recorded,
        group=list(group) if group is not None else None,
        group_label=_group_text(ev.spec, group, tier),
        tier=tier,
        position=position,
        counted=counted,
        rules=checks,
        size=size,
        budget=_budget(ev, item),
        parent=parent,
        parent_kept=parent_kept,
        manifest=None,
        notes=notes,
    )


def _bare(run_id: str | int, basis: str, spec: PolicySpec, now: datetime) -> Explanation:
    """An explanation of a run the policy does not see (not in the catalog, or not
    selected by the filter): the fields the policy would fill are empty."""
    return Explanation(
        version=EXPLAIN_VERSION,
        run_id=run_id,
        basis=basis,
        policy=spec.describe(),
        now=_when(now),
        in_catalog=False,
        considered=False,
        kept=None,
        reasons=[],
        time=None,
        recorded_time=None,
        group=None,
        group_label=None,
        tier=None,
        position=None,
        counted=None,
        rules=[],
        size=None,
        budget=None,
        parent=None,
        parent_kept=None,
        manifest=None,
        notes=[],
    )


def explain_in(ev: Evaluation, text: str, basis: str) -> Explanation | None:
    """Explain the run ``text`` names among the evaluated runs; if the policy does not see
    it, say whether the runs table holds it (filtered out); None when it does not."""
    wanted = {(type(c), c) for c in id_candidates(text)}
    found = [it for it in ev.items if (type(it.id), it.id) in wanted]
    chosen, note = _pick([it.id for it in found], text)
    if chosen is not None:
        item = next(it for it in found if _same_id(it.id, chosen))
        e = _explain_item(ev, item, basis)
        if note:
            e.notes.append(note)
        return e
    stored = _in_table(ev.cfg, text)
    if stored is None:
        return None
    e = _bare(stored, basis, ev.spec, ev.now)  # type: ignore[arg-type]
    e.in_catalog = True
    e.notes.append(
        f"catalog.filter does not select it ({ev.cfg.filter}): the policy never considers"
        " it and no plan deletes it"
    )
    return e


def _entry(payload: Payload, run_id: object, text: str) -> Entry | None:
    wanted = [run_id] if run_id is not None else id_candidates(text)
    for e in payload.entries:
        if any(_same_id(e.run_id, w) for w in wanted):
            return e
    return None


LEFT_OUT = (
    "plan leaves out a run whose directory is unreadable, shared with another run, on"
    " another filesystem or outside the artifact root, or that a kept row references"
)


def _compare(
    e: Explanation, entry: Entry | None, skipped: str | None, applied_by: list[str]
) -> tuple[bool | None, str]:
    """Does the manifest's decision for the run agree with the re-evaluation, in words."""
    if not e.in_catalog:
        if applied_by:
            return None, f"no longer in the catalog: deleted by {', '.join(applied_by)}"
        return None, "no longer in the catalog (deleted since, but not by an apply of it)"
    if e.basis == "plan":
        return _compare_plan(e, entry, skipped)
    if not e.considered:
        if entry is not None:
            return False, (
                "the manifest deletes it, but catalog.filter no longer selects it: apply"
                " still deletes it unless its rows or directory changed"
            )
        return True, "it is not in the manifest"
    removed_now = e.kept is False
    if entry is not None and removed_now:
        return True, "the manifest deletes it, as the re-evaluation does"
    if entry is None and not removed_now:
        return True, "it is not in the manifest: kept, as the re-evaluation keeps it"
    if entry is not None:
        return False, (
            "the manifest deletes it, but re-evaluated against the catalog as it is now the"
            " policy keeps it: the catalog changed since the plan. apply still deletes it"
            " unless its rows or directory changed or it is now protected; plan again to"
            " follow the catalog as it is"
        )
    if skipped is not None:
        return False, f"the policy removes it, but the plan left it out of the manifest: {skipped}"
    return False, (
        "the policy removes it, but it is not in the manifest: it was left out at plan"
        f" time ({LEFT_OUT}), or the catalog changed since"
    )


def _compare_plan(
    e: Explanation, entry: Entry | None, skipped: str | None
) -> tuple[bool | None, str]:
    """`plan --explain`: the manifest comes from this very decision; only a run the plan
    left out (skipped) is not where its verdict puts it."""
    if entry is not None:
        return True, "it is an entry of the manifest: apply deletes it"
    if e.kept is not False:
        return True, "it is not in the manifest"
    if skipped is not None:
        return False, f"the policy removes it, but the plan left it out of the manifest: {skipped}"
    return False, f"the policy removes it, but the plan left it out of the manifest ({LEFT_OUT})"


def _manifest_check(
    e: Explanation,
    payload: Payload,
    applied_by: list[str],
    clock: datetime,
    skipped: str | None = None,
) -> ManifestCheck:
    entry = _entry(payload, e.run_id if e.in_catalog else None, str(e.run_id))
    agrees, note = _compare(e, entry, skipped, applied_by)
    return ManifestCheck(
        manifest_id=payload.manifest_id,
        planned_at=payload.now,
        expires_at=payload.expires_at,
        expired=parse_instant(payload.expires_at) <= clock,
        in_manifest=entry is not None,
        entry_reason=entry.reason if entry is not None else None,
        agrees=agrees,
        applied_by=applied_by,
        skipped=skipped,
        note=note,
    )


def explain(
    cfg: Config,
    run_text: str,
    *,
    now: datetime | None = None,
    manifest: str | None = None,
    clock: datetime | None = None,
) -> Explanation:
    """`retention explain RUN_ID [MANIFEST]`: with a manifest, its policy and filter at its
    now, compared with its entries; else the configured policy at ``now``. ``clock`` is the
    real time (a manifest's expiry). Raises `UsageError` (exit 2) for a run neither the
    catalog nor the manifest holds."""
    clock = clock or datetime.now(UTC)
    if manifest is None:
        spec = policy_from_config(cfg)
        ev = evaluate_catalog(cfg, spec, now or clock)
        found = explain_in(ev, run_text, "config")
        if found is None:
            raise not_found(cfg, run_text)
        return found
    payload, applied_by = load_manifest(cfg, manifest)
    ev = evaluate_catalog(for_manifest(cfg, payload), payload.policy, parse_instant(payload.now))
    found = explain_in(ev, run_text, "manifest")
    if found is None:
        entry = _entry(payload, None, run_text)
        if entry is None:
            raise not_found(cfg, run_text)
        found = _bare(entry.run_id, "manifest", ev.spec, ev.now)
        found.time = entry.time
    found.manifest = _manifest_check(found, payload, applied_by, clock)
    return found


def explain_plan(cfg: Config, result: PlanResult, run_text: str) -> Explanation:
    """`plan --explain RUN_ID`: the run under the plan just made (its policy at its now,
    the same decision), and whether it is in the manifest or was left out, and why."""
    payload = result.payload
    ev = evaluate_catalog(cfg, payload.policy, parse_instant(payload.now))
    found = explain_in(ev, run_text, "plan")
    if found is None:
        raise not_found(cfg, run_text)
    skipped = next(
        (
            s.reason + (f" (hint: {s.hint})" if s.hint else "")
            for s in result.skipped
            if _same_id(s.run_id, found.run_id)
        ),
        None,
    )
    found.manifest = _manifest_check(found, payload, [], datetime.now(UTC), skipped)
    return found


# -- the kept side of a manifest -------------------------------------------------------------

_PERIOD = re.compile(r"(checkpoint) \d{4}(?:-W\d{2}|-\d{2}(?:-\d{2}(?: \d{2}h)?)?)?")


def reason_rule(reason: str) -> str:
    """A reason without what varies from run to run (a calendar period, the run that
    depends on it), so that runs kept by the same rule count together."""
    if reason.startswith("kept: run ") and reason.endswith(" depends on it"):
        return "kept: a kept run depends on it"
    return _PERIOD.sub(r"\1 <period>", reason, count=1)


def _newest_first(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Runs with a timestamp newest first, then those without (by id), as `evaluate`
    orders them within each."""
    verdicts = list(verdicts)
    dated = [v for v in verdicts if v.item.at is not None]
    return dated + [v for v in verdicts if v.item.at is None]


def kept_report(cfg: Config, payload: Payload) -> KeptReport:
    """`show --kept`: the runs a manifest keeps. The manifest lists only the runs it
    removes, so its policy (and filter) is evaluated again at its now against the catalog
    as it is today (read-only), and the removals compared with its entries."""
    ev = evaluate_catalog(for_manifest(cfg, payload), payload.policy, parse_instant(payload.now))
    d = ev.decision
    by_rule: Counter[str] = Counter()
    # Runs share their tuple of reasons where they can (see `retention.policy.core`): each
    # distinct tuple is reduced once.
    rules_of: dict[tuple[str, ...], set[str]] = {}
    for v in d.keep:
        rules = rules_of.get(v.reasons)
        if rules is None:
            rules = rules_of[v.reasons] = set(map(reason_rule, v.reasons))
        by_rule.update(rules)
    entries = {(type(e.run_id), e.run_id) for e in payload.entries}
    removed = {(type(v.item.id), v.item.id) for v in d.remove}
    kept = {(type(v.item.id), v.item.id) for v in d.keep}
    groups = [
        GroupCount(
            group=g.label(ev.spec.group_by),
            considered=g.considered,
            kept=g.kept,
            removed=g.removed,
        )
        for g in d.groups
    ]
    runs = []
    for v in _newest_first(d.keep):
        group, _ = _group_of(v.item, ev.spec)
        runs.append(
            KeptRun(
                run_id=v.item.id,
                time=_when(v.item.time) if v.item.time is not None else None,
                reasons=list(v.reasons),
                group=list(group) if group is not None else None,
                tier=v.item.attrs.tier if v.item.attrs is not None else None,
            )
        )
    extra = [v.item.id for v in d.remove if (type(v.item.id), v.item.id) not in entries]
    held = [e.run_id for e in payload.entries if (type(e.run_id), e.run_id) in kept]
    gone = len(entries - removed - kept)
    return KeptReport(
        version=KEPT_VERSION,
        basis=(
            "the manifest holds only the runs it removes: the kept runs come from its policy"
            f" re-evaluated at its now ({payload.now}) against the catalog as it is now"
            " (read-only)"
        ),
        now=payload.now,
        considered=len(d.keep) + len(d.remove),
        kept=len(d.keep),
        removed=len(d.remove),
        by_rule=[
            RuleCount(r, n) for r, n in sorted(by_rule.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        by_group=groups,
        runs=runs,
        removed_not_in_manifest=extra,
        in_manifest_but_kept=held,
        in_manifest_not_considered=gone,
        agrees=not (extra or held or gone),
    )
