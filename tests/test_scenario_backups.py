"""Scenario 3 (backups with full and incremental chains) end to end: examples/backups/.

``examples/backups/make_sample.py`` builds 400 days of nightly backups (fulls on Sundays,
incrementals chained to the backup before them, a few afternoon extras and failed nights,
two preserved backups, +01:00/+02:00 offsets across the DST changes), once per module.
The real ``retention`` executable then runs plan, show, show --json, apply, a second plan
and, on another copy, undo, with ``examples/backups/retention.toml`` as it ships.

What should survive is computed here, from the catalog read with plain sqlite3, by a small
model of the rules written for this test (not retention's code): the first backup of each
of the latest N days / ISO weeks / months / years, each in the backup's own UTC offset
(restic's ``forget`` counting, ``checkpoint = "first"``); preserved backups and the newest
full never go; every backup a kept one depends on is kept, transitively; then the size
budget takes the oldest checkpoints first, each with the backups kept only for it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from .conftest import NOW_TEXT, run_exe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "backups"
END = "2026-10-31"  # the sample's last day (a Saturday); NOW is the next midnight, UTC
ENV = {"RETENTION_MANIFEST_TTL": "3650d"}  # a plan at the fixed clock stays valid today
pytestmark = pytest.mark.xdist_group("backups")  # one worker builds the sample once

# The policy the model below implements; the example's [policy] table must be exactly this
# (if the example changes, the model has to change with it).
POLICY = {
    "keep_daily": 7,
    "keep_weekly": 5,
    "keep_monthly": 12,
    "keep_yearly": -1,
    "checkpoint": "first",
    "pin_column": "preserved",
    "kind_column": "kind",
    "newest_of_kind": ["full"],
    "parent_column": "parent_id",
    "max_total_size": "700K",
    "size_column": "size_bytes",
}
BUDGET = 700 * 1024  # max_total_size "700K": K is binary


# -- the catalog and the tree, read with plain tools --------------------------------------


@dataclass(frozen=True)
class Backup:
    backup_id: str
    created_at: datetime  # with the UTC offset the catalog recorded
    kind: str
    parent_id: str | None
    preserved: int
    size_bytes: int


def read_backups(db: Path) -> dict[str, Backup]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT backup_id, created_at, kind, parent_id, preserved, size_bytes FROM backups"
        ).fetchall()
    finally:
        con.close()
    return {r[0]: Backup(r[0], datetime.fromisoformat(r[1]), r[2], r[3], r[4], r[5]) for r in rows}


def raw_rows(db: Path) -> list[tuple[Any, ...]]:
    """Every row with its rowid, exactly as stored."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT rowid, * FROM backups ORDER BY rowid").fetchall()
    finally:
        con.close()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (trash left out) with a digest of its contents."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != ".trash"
    }


def backup_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.is_dir() and p.name != ".trash"}


# -- the model: what the example's policy keeps, written for this test ---------------------

PERIOD: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: (t.isocalendar()[0], t.isocalendar()[1]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


def checkpoints(backups: dict[str, Backup]) -> dict[str, set[str]]:
    """Backup id -> the calendar rules that keep it: for each rule, the first (oldest)
    backup of each of the latest N periods that have backups (-1: every period), the
    period taken in the backup's recorded offset."""
    kept: dict[str, set[str]] = defaultdict(set)
    for unit, period in PERIOD.items():
        n = POLICY[f"keep_{unit}"]
        assert isinstance(n, int)
        by_period: dict[tuple[int, ...], list[Backup]] = defaultdict(list)
        for b in backups.values():
            by_period[period(b.created_at)].append(b)
        latest = sorted(by_period, reverse=True)
        for key in latest if n == -1 else latest[:n]:
            first = min(by_period[key], key=lambda b: b.created_at)
            kept[first.backup_id].add(unit)
    return dict(kept)


def newest_full(backups: dict[str, Backup]) -> str:
    return max(
        (b for b in backups.values() if b.kind == "full"), key=lambda b: b.created_at
    ).backup_id


def with_parents(backups: dict[str, Backup], ids: set[str]) -> set[str]:
    """``ids`` and every backup they depend on, transitively."""
    out = set()
    for i in ids:
        cur: str | None = i
        while cur is not None:
            out.add(cur)
            cur = backups[cur].parent_id
    return out


@dataclass
class Expected:
    checkpoints: dict[str, set[str]]
    protected: set[str]  # preserved, and the newest full
    before_budget: set[str]  # what the rules, protections and dependencies keep
    budget_chains: list[list[str]]  # what the budget removed, in order, victim first
    survivors: set[str]

    def removed(self, backups: dict[str, Backup]) -> set[str]:
        return set(backups) - self.survivors


def expected(backups: dict[str, Backup], budget: int = BUDGET) -> Expected:
    cps = checkpoints(backups)
    protected = {b.backup_id for b in backups.values() if b.preserved} | {newest_full(backups)}
    before = with_parents(backups, set(cps) | protected)
    kept = set(before)
    total = sum(backups[k].size_bytes for k in kept)
    chains = []
    while total > budget:
        # Only calendar rules keep backups here, so every candidate is a checkpoint and
        # "non-checkpoints first" never applies: the oldest leaf checkpoint goes.
        depended_on = {backups[k].parent_id for k in kept}
        candidates = [k for k in kept if k in cps and k not in protected | depended_on]
        if not candidates:
            break
        victim = min(candidates, key=lambda k: backups[k].created_at)
        chain = [victim]
        kept.remove(victim)
        parent = backups[victim].parent_id
        while (
            parent is not None
            and parent not in cps
            and parent not in protected
            and parent not in {backups[k].parent_id for k in kept}
        ):
            chain.append(parent)  # kept only for the backup that went
            kept.remove(parent)
            parent = backups[parent].parent_id
        total -= sum(backups[k].size_bytes for k in chain)
        chains.append(chain)
    return Expected(cps, protected, before, chains, kept)


# -- fixtures ------------------------------------------------------------------------------


def make_sample(where: Path, *args: str) -> dict[str, Any]:
    """Run examples/backups/make_sample.py as a user would; its JSON summary."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_sample.py"), "--dir", str(where), *args],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr.decode()
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample with the example's retention.toml beside it (never changed: copied)."""
    where = tmp_path_factory.mktemp("backups-template")
    make_sample(where, "--end", END)
    shutil.copy(EXAMPLE / "retention.toml", where / "retention.toml")
    return where


def copy_of(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst)
    return dst


def exe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real executable; every step of this scenario must exit 0."""
    out = run_exe(*args, cwd=cwd, env=ENV)
    assert out.returncode == 0, (args, out.returncode, out.stderr.decode())
    return out


def plan(where: Path, name: str) -> subprocess.CompletedProcess:
    return exe("plan", "--now", NOW_TEXT, "-o", name, cwd=where)


@dataclass
class Applied:
    dir: Path
    before: dict[str, Backup]  # the catalog before apply
    expected: Expected
    plan_stderr: str
    show_text: str
    show_json: dict[str, Any]
    apply_report: dict[str, Any]
    after: dict[str, Backup]  # the catalog after apply


@pytest.fixture(scope="module")
def applied(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Applied:
    """plan, show, show --json and apply on a copy of the sample, through the executable."""
    where = copy_of(template, tmp_path_factory.mktemp("backups-applied") / "ws")
    before = read_backups(where / "backups.db")
    planned = plan(where, "manifest.json")
    show = exe("show", "manifest.json", cwd=where)
    show_json = exe("show", "--json", "manifest.json", cwd=where)
    done = exe("apply", "manifest.json", cwd=where)
    return Applied(
        where,
        before,
        expected(before),
        planned.stderr.decode(),
        show.stdout.decode(),
        json.loads(show_json.stdout),
        json.loads(done.stdout),
        read_backups(where / "backups.db"),
    )


# -- the tests -----------------------------------------------------------------------------


def test_example_policy_is_the_one_the_model_implements() -> None:
    config = tomllib.loads((EXAMPLE / "retention.toml").read_text())
    assert config["policy"] == POLICY
    assert config["catalog"]["runs_table"] == "backups"
    assert config["artifacts"]["path_template"] == "{backup_id}"


def test_make_sample_builds_the_documented_schema_and_chains_deterministically(
    template: Path, tmp_path: Path
) -> None:
    db = template / "backups.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    columns = [(c[1], c[2], c[5]) for c in con.execute("PRAGMA table_info(backups)")]
    fks = [(f[2], f[3], f[4]) for f in con.execute("PRAGMA foreign_key_list(backups)")]
    con.close()
    assert columns == [
        ("backup_id", "TEXT", 1),
        ("created_at", "TEXT", 0),
        ("kind", "TEXT", 0),
        ("parent_id", "TEXT", 0),
        ("preserved", "INTEGER", 0),
        ("size_bytes", "INTEGER", 0),
    ]
    assert fks == [("backups", "parent_id", "backup_id")]

    backups = read_backups(db)
    by_time = sorted(backups.values(), key=lambda b: b.created_at)
    assert 390 <= len(by_time) <= 430  # 400 days, a few failed nights and afternoon extras
    assert len({b.created_at for b in by_time}) == len(by_time)  # no ties to order
    assert by_time[0].kind == "full" and by_time[-1].created_at.date().isoformat() == END
    berlin = ZoneInfo("Europe/Berlin")
    for prev, b in zip([None, *by_time], by_time, strict=False):
        # The offset in force in Central Europe, as a zone database has it.
        assert b.created_at.utcoffset() == b.created_at.astimezone(berlin).utcoffset(), b
        if b.created_at.weekday() == 6 and b.created_at.hour < 12:
            assert b.kind == "full", b  # Sunday nights are fulls
        if b.kind == "full":
            assert b.parent_id is None, b
        else:  # based on the backup just before it
            assert prev is not None and b.parent_id == prev.backup_id, b
        files = sorted((template / "backups" / b.backup_id).iterdir())
        assert [f.name for f in files] == ["SHA256SUMS", "backup.json", "data.bin"]
        assert b.size_bytes == sum(f.stat().st_size for f in files) > 0, b
    assert {str(b.created_at.utcoffset()) for b in by_time} == {"1:00:00", "2:00:00"}
    assert [b.kind for b in by_time if b.preserved] == ["full", "incremental"]
    # Calendar periods never go back in time in backup order (the model's grouping of a
    # period's backups is then the same as counting runs of equal keys, as restic does).
    for period in PERIOD.values():
        keys = [period(b.created_at) for b in by_time]
        assert keys == sorted(keys)

    # The same arguments build the same catalog and the same files, byte for byte.
    again = tmp_path / "again"
    summary = make_sample(again, "--end", END)
    assert raw_rows(again / "backups.db") == raw_rows(db)
    assert tree(again / "backups") == tree(template / "backups")
    assert summary["backups"] == len(backups)
    assert summary["preserved"] == sorted(b.backup_id for b in by_time if b.preserved)
    assert summary["newest_full"] == newest_full(backups)
    # --days sizes it.
    small = make_sample(tmp_path / "small", "--end", END, "--days", "30")
    assert 28 <= small["backups"] <= 33


def test_plan_and_show_list_exactly_the_backups_the_model_removes(applied: Applied) -> None:
    exp, before = applied.expected, applied.before
    removed = exp.removed(before)
    assert 0 < len(removed) < len(before)
    summary = applied.plan_stderr
    for words in (
        "first run of each of the 7 latest days",
        "first run of each of the 5 latest weeks",
        "first run of each of the 12 latest months",
        "first run of every year",
        "Pinned runs are always kept.",
        "The newest run of kind 'full' is always kept.",
        "A run that a kept run depends on is kept.",
        "While the kept runs exceed 700.0 KiB",
    ):
        assert words in summary, (words, summary)
    assert f"{len(removed)} of {len(before)} runs would be deleted" in summary, summary
    assert "Warning" not in summary, summary

    report = applied.show_json
    assert sorted(report["run_ids"]) == sorted(removed)
    assert report["count"] == len(removed) and report["missing_dirs"] == 0
    # size_bytes is exactly what the directories hold, so the two ways of counting agree.
    assert report["total_bytes"] == sum(before[r].size_bytes for r in removed)
    budget_ids = [i for chain in exp.budget_chains for i in chain]
    by_reason = {g["reason"]: g["count"] for g in report["by_reason"]}
    rules = (
        "removed: not a daily checkpoint (keep-daily 7) and not a weekly checkpoint"
        " (keep-weekly 5) and not a monthly checkpoint (keep-monthly 12) and not a yearly"
        " checkpoint (keep-yearly unlimited)"
    )
    assert by_reason.pop(rules) == len(removed) - len(budget_ids)
    over = "removed: over the size budget of 700.0 KiB"
    assert by_reason.pop(over) == len(exp.budget_chains)  # the victims
    # The rest went with the checkpoint that depended on them, each naming its dependant.
    assert by_reason == {
        f"{over} (kept only for run {chain[k - 1]}, which went)": 1
        for chain in exp.budget_chains
        for k in range(1, len(chain))
    }

    text = applied.show_text
    assert "signature OK" in text
    assert f"{len(removed)} runs, " in text
    # "By reason": one line per reason, with its count and bytes.
    assert re.search(
        rf"^ +{len(removed) - len(budget_ids)} +\S+ \S+  {re.escape(rules)}$", text, re.M
    )
    assert re.search(rf"^ +{len(exp.budget_chains)} +\S+ \S+  {re.escape(over)}$", text, re.M)
    chain = next(c for c in exp.budget_chains if len(c) > 1)
    assert re.search(
        rf"{re.escape(over)} \(kept only for run {chain[0]}, which went\)$", text, re.M
    )
    assert "Apply with: retention apply manifest.json" in text


def test_apply_leaves_exactly_the_backups_the_model_keeps(applied: Applied) -> None:
    exp = applied.expected
    removed = exp.removed(applied.before)
    assert applied.apply_report["deleted_runs"] == len(removed)
    assert sorted(applied.apply_report["deleted_run_ids"]) == sorted(removed)
    assert set(applied.after) == exp.survivors
    assert applied.after == {k: applied.before[k] for k in exp.survivors}  # rows unchanged
    root = applied.dir / "backups"
    assert backup_dirs(root) == exp.survivors
    # Each removed directory waits in the apply's trash, whole, as TRASH.json lists it.
    listed = json.loads((root / ".trash" / applied.apply_report["txid"] / "TRASH.json").read_text())
    assert {e["original"] for e in listed["entries"]} == removed
    for e in listed["entries"]:
        moved = root / e["trash"]
        assert sorted(f.name for f in moved.iterdir()) == ["SHA256SUMS", "backup.json", "data.bin"]
        assert (
            sum(f.stat().st_size for f in moved.iterdir()) == applied.before[e["run_id"]].size_bytes
        )
    check = exe("check", cwd=applied.dir)
    assert f"{len(exp.survivors)} runs checked, 0 findings." in check.stdout.decode()


def test_newest_full_and_preserved_backups_survive(applied: Applied) -> None:
    exp, before = applied.expected, applied.before
    preserved = {k for k, b in before.items() if b.preserved}
    assert len(preserved) == 2
    # The rules alone would remove them: the pin is what keeps them.
    assert not preserved & set(exp.checkpoints)
    assert not preserved & with_parents(before, set(exp.checkpoints))
    assert preserved <= set(applied.after)
    assert newest_full(before) in applied.after
    assert newest_full(applied.after) == newest_full(before)


def test_every_kept_backup_keeps_its_whole_chain_back_to_a_full(applied: Applied) -> None:
    after, before = applied.after, applied.before
    for b in after.values():
        cur = b
        while cur.parent_id is not None:
            assert cur.parent_id in after, (b.backup_id, cur.parent_id)
            cur = after[cur.parent_id]
        assert cur.kind == "full", b.backup_id
    con = sqlite3.connect(applied.dir / "backups.db")
    assert con.execute("PRAGMA foreign_key_check(backups)").fetchall() == []
    con.close()
    # The rule mattered: the preserved incremental and most checkpoints are incrementals
    # whose chains (a Sunday full among them) no rule keeps by itself.
    only_for_chains = set(after) - set(applied.expected.checkpoints) - applied.expected.protected
    assert any(before[k].kind == "full" for k in only_for_chains)
    assert len(only_for_chains) >= 10


def test_size_budget_removes_the_oldest_checkpoints_with_their_chains(applied: Applied) -> None:
    exp, before = applied.expected, applied.before
    assert sum(before[k].size_bytes for k in exp.before_budget) > BUDGET  # it bites
    assert sum(b.size_bytes for b in applied.after.values()) <= BUDGET  # and is met
    assert len(exp.budget_chains) >= 2 and any(len(c) > 1 for c in exp.budget_chains)
    gone = {k for chain in exp.budget_chains for k in chain}
    assert gone.isdisjoint(applied.after)
    # The victims are the oldest checkpoints, in order: the first backup of the series
    # (the yearly checkpoint of its first year) goes first.
    victims = [chain[0] for chain in exp.budget_chains]
    oldest = sorted(
        (k for k in exp.checkpoints if k not in exp.protected),
        key=lambda k: before[k].created_at,
    )
    assert victims == oldest[: len(victims)]
    assert exp.checkpoints[victims[0]] == {"yearly"}
    assert victims[0] == min(before.values(), key=lambda b: b.created_at).backup_id


def test_second_plan_after_apply_removes_nothing(applied: Applied) -> None:
    assert expected(applied.after).survivors == set(applied.after)  # the model agrees
    again = plan(applied.dir, "again.json")
    assert f"0 of {len(applied.after)} runs would be deleted" in again.stderr.decode()
    payload = json.loads((applied.dir / "again.json").read_bytes())["payload"]
    assert payload["entries"] == [] and payload["considered"] == len(applied.after)


def test_undo_restores_every_row_and_directory(template: Path, tmp_path: Path) -> None:
    where = copy_of(template, tmp_path / "ws")
    rows, files = raw_rows(where / "backups.db"), tree(where / "backups")
    plan(where, "manifest.json")
    done = json.loads(exe("apply", "manifest.json", cwd=where).stdout)
    assert done["deleted_runs"] > 0
    assert len(raw_rows(where / "backups.db")) == len(rows) - done["deleted_runs"]
    assert len(backup_dirs(where / "backups")) == len(rows) - done["deleted_runs"]

    undone = exe("undo", done["txid"], cwd=where)
    assert f"{done['deleted_runs']} runs restored" in undone.stderr.decode()
    assert raw_rows(where / "backups.db") == rows  # same values, same rowids
    assert tree(where / "backups") == files
