"""Planning: evaluate the policy against the catalog and produce a signed manifest.

Planning is read-only with respect to the catalog (opened ``mode=ro``) and the artifacts
(only ``lstat`` and ``scandir``). It may create the signing key and the catalog-identity
binding in the state directory, nothing else.

Guard rails live here, not in the policy: a policy that keeps nothing is refused, and so is
a plan that would remove every run considered, unless ``allow_remove_all`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from retention import identity
from retention.catalog import SqliteCatalog, template_fields
from retention.config import Config
from retention.durations import format_instant, parse_duration, parse_instant
from retention.errors import UsageError
from retention.layout import StateLayout
from retention.manifest import FORMAT, VERSION, Entry, Payload, load_key, policy_digest, sign
from retention.manifest import with_id as manifest_with_id
from retention.policy import PolicySpec, Verdict, evaluate
from retention.reporting import Progress
from retention.reports import SkippedEntry
from retention.status import journal_warnings
from retention.store import (
    LocalStore,
    OutsideRoot,
    ancestors,
    display,
    relative_artifact_path,
    require_artifact_root,
    text_and_raw,
)

_NO_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass
class PlanResult:
    payload: Payload
    manifest: bytes
    skipped: list[SkippedEntry] = field(default_factory=list)
    no_time: int = 0  # runs kept because no timestamp could be read
    warnings: list[str] = field(default_factory=list)  # e.g. an interrupted transaction


def policy_from_config(cfg: Config) -> PolicySpec:
    """The policy the configuration asks for; refuses one that would keep nothing."""
    max_age = int(parse_duration(cfg.max_age).total_seconds()) if cfg.max_age is not None else None
    spec = PolicySpec(keep_last=cfg.keep_last, max_age_seconds=max_age)
    if spec.is_empty() or (spec.keep_last == 0 and spec.max_age_seconds is None):
        raise UsageError(
            "refusing a policy that keeps nothing",
            hint="give --keep-last N (N >= 1) and/or --max-age DURATION",
        )
    return spec


def artifact_rel_path(cfg: Config, row: dict[str, Any], root: Path) -> bytes | None:
    """The run's artifact path relative to the root; None when the run has no artifacts.

    Raises `OutsideRoot` for a path leaving the root or with a ``..`` component, and
    ValueError for a template column that is NULL.
    """
    if cfg.path_column:
        value = row.get(cfg.path_column)
        if value is None or value in ("", b""):
            return None
        raw = value if isinstance(value, bytes) else os.fsencode(str(value))
        return relative_artifact_path(root, raw)
    if not cfg.path_template:
        return None
    values = {}
    for name in template_fields(cfg.path_template):
        v = row.get(name)
        if v is None:
            raise ValueError(f"column {name!r} of the path template is NULL")
        values[name] = os.fsdecode(v) if isinstance(v, bytes) else v
    return relative_artifact_path(root, os.fsencode(cfg.path_template.format(**values)))


OVERLAP_HINT = "give every run its own artifact directory; retention never moves a shared one"


def _overlapping(
    cfg: Config, cat: SqliteCatalog, root: Path, paths: list[tuple[Any, bytes | None]]
) -> dict[Any, str]:
    """Candidates whose directory is shared with, contains, or lies inside another run's
    (candidate or not): moving it would take another run's artifacts along. Read-only; one
    streamed pass over every run of the catalog."""
    by_path: dict[bytes, list[Any]] = {}
    for run_id, rel in paths:
        if rel is not None:
            by_path.setdefault(rel, []).append(run_id)
    under: dict[bytes, list[bytes]] = {}  # a proper ancestor -> candidate paths below it
    for rel in by_path:
        for a in ancestors(rel):
            under.setdefault(a, []).append(rel)
    bad: dict[Any, str] = {}

    def mark(rel: bytes, why: str) -> None:
        for rid in by_path[rel]:
            bad.setdefault(rid, f"artifact directory {display(rel)} {why}")

    for rel, ids in by_path.items():
        if len(ids) > 1:
            mark(rel, f"is shared by {len(ids)} runs of the plan")
        for a in ancestors(rel):
            if a in by_path:
                mark(rel, f"lies inside run {by_path[a][0]}'s directory")
                mark(a, f"contains run {ids[0]}'s directory")
    candidates = {rid for rid, _ in paths}
    for row in cat.iter_path_rows():
        rid = row[cfg.id_column]
        if rid in candidates:
            continue
        try:
            other = artifact_rel_path(cfg, row, root)
        except (OutsideRoot, ValueError):
            continue
        if other is None:
            continue
        if other in by_path:
            mark(other, f"is also the directory of run {rid}, which is kept")
        for rel in under.get(other, ()):
            mark(rel, f"lies inside the directory of run {rid}, which is kept")
        if b"/" in other:
            for a in ancestors(other):
                if a in by_path:
                    mark(a, f"contains the directory of run {rid}, which is kept")
    return bad


def build_plan(
    cfg: Config,
    now: datetime,
    *,
    allow_remove_all: bool = False,
    progress: Callable[[str, int], Progress] | None = None,
) -> PlanResult:
    """Evaluate the policy at ``now`` and return the signed manifest (read-only, see module).

    Candidates whose artifact directory cannot be read, or that lie outside the artifact
    root, are left out of the manifest and listed in ``skipped``.
    """
    spec = policy_from_config(cfg)
    state = StateLayout(Path(cfg.state_dir))
    root = Path(cfg.artifact_root)
    store = LocalStore(root)
    with SqliteCatalog(cfg, readonly=True) as cat:
        require_artifact_root(cfg)
        # Only once the catalog is known to be usable: a plan run against a wrong path
        # must not leave a new state directory and key behind.
        key, key_id = load_key(state, create=True)
        catalog_id = identity.resolve(cat, state, create=True)
        assert catalog_id is not None
        items = list(cat.iter_items())
        decision = evaluate(items, spec, now)
        del items
        if decision.remove and not decision.keep and not allow_remove_all:
            raise UsageError(
                f"refusing to remove every run considered ({len(decision.remove)})",
                hint="pass --allow-remove-all if that is really intended",
            )
        verdicts: dict[Any, Verdict] = {v.item.id: v for v in decision.remove}
        cat.load_ids(verdicts)
        fps = cat.fingerprints()
        entries: list[Entry] = []
        skipped: list[SkippedEntry] = []
        bar = (progress or (lambda label, total: Progress(label, total)))(
            "measuring", len(verdicts)
        )
        paths: list[tuple[Any, bytes | None]] = []
        for row in cat.iter_run_rows():
            run_id = row[cfg.id_column]
            try:
                rel = artifact_rel_path(cfg, row, root)
                if rel is not None:
                    store.check_contained(rel)
            except (OutsideRoot, ValueError) as exc:
                skipped.append(SkippedEntry(run_id, f"artifact path refused: {exc}"))
                continue
            paths.append((run_id, rel))
        shared = _overlapping(cfg, cat, root, paths)
        for run_id, rel in paths:
            v = verdicts[run_id]
            bar.advance()
            if run_id in shared:
                skipped.append(SkippedEntry(run_id, shared[run_id], hint=OVERLAP_HINT))
                continue
            m = store.measure(rel) if rel is not None else None
            if m is not None and m.error:
                path = display(store.abspath(rel)) if rel is not None else ""
                skipped.append(
                    SkippedEntry(
                        run_id,
                        f"artifact directory unreadable: {m.error}",
                        hint=f"fix its permissions (e.g. chmod -R u+rwX {path}) and plan again",
                    )
                )
                continue
            text, raw = text_and_raw(rel) if rel is not None else (None, None)
            t = v.item.time
            entries.append(
                Entry(
                    run_id=run_id,
                    time=format_instant(t) if t is not None else None,
                    path=text,
                    path_raw=raw,
                    exists=bool(m and m.exists),
                    bytes=m.bytes if m else 0,
                    files=m.files if m else 0,
                    rows_fp=fps.get(run_id, ""),
                    dir_fp=m.fingerprint if m else "",
                    reason=v.reasons[0],
                )
            )
        bar.close()
        tables = cat.schema.involved_tables()
    # By instant, not by text: "…00.5Z" sorts before "…00Z" as a string.
    entries.sort(key=lambda e: (parse_instant(e.time) if e.time else _NO_TIME, str(e.run_id)))
    payload = Payload(
        format=FORMAT,
        version=VERSION,
        manifest_id="",
        catalog_id=catalog_id,
        catalog_path=str(Path(cfg.catalog_path).absolute()),
        artifact_root=str(store.root),
        tables=tables,
        policy=spec,
        policy_digest=policy_digest(spec, cfg.filter),
        policy_text=spec.describe(),
        filter=cfg.filter,
        now=format_instant(now),
        expires_at=format_instant(now + timedelta(seconds=cfg.manifest_ttl_seconds)),
        key_id=key_id,
        considered=len(decision.keep) + len(decision.remove),
        kept=len(decision.keep) + len(skipped),
        total_bytes=sum(e.bytes for e in entries),
        entries=entries,
    )
    manifest_with_id(payload)
    no_time = sum(1 for v in decision.keep if v.item.time is None)
    return PlanResult(payload, sign(payload, key), skipped, no_time, journal_warnings(state))
