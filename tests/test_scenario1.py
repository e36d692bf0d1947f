"""Scenario 1 (laptop backtests, the default layout) end to end through the real
`retention` executable.

Backtest runs on a laptop, default layout, no config file: ``retention plan --keep-last 10
--max-age 180d`` writes a manifest, ``retention show`` verifies it and lists exactly the runs
that no rule keeps, with the bytes they hold. Expected values are computed here, from the
catalog with plain sqlite3 and from the files with os.walk, not with retention's code.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retention import sample

from .conftest import NOW, NOW_TEXT, run_exe

ENV = {"RETENTION_MANIFEST_TTL": "3650d"}


def _expected(root: Path, keep_last: int, max_age: timedelta) -> tuple[list[str], int]:
    db = sqlite3.connect(root / "data" / "catalog.db")
    rows = db.execute("SELECT run_id, created_at FROM runs").fetchall()
    db.close()
    runs = sorted(
        ((datetime.fromisoformat(t).replace(tzinfo=UTC), r) for r, t in rows), reverse=True
    )
    go = sorted(r for n, (t, r) in enumerate(runs) if n >= keep_last and NOW - t >= max_age)
    total = 0
    for run in go:
        for dirpath, _, files in os.walk(root / "data" / "backtests" / run):
            total += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return go, total


def test_scenario1_plan_then_show_through_the_executable(tmp_path: Path) -> None:
    ids = sample.build(tmp_path, runs=120, now=NOW, seed=11)
    assert not (tmp_path / "retention.toml").exists()  # the built-in default layout
    expected_ids, expected_bytes = _expected(tmp_path, 10, timedelta(days=180))
    assert 0 < len(expected_ids) < len(ids)

    plan = run_exe(
        "plan", "--keep-last", "10", "--max-age", "180d", "--now", NOW_TEXT, cwd=tmp_path, env=ENV
    )
    assert plan.returncode == 0, plan.stderr.decode()
    (tmp_path / "manifest").write_bytes(plan.stdout)
    summary = plan.stderr.decode()
    m = re.search(r"^(\d+) of (\d+) runs would be deleted, (.+?) reclaimed", summary, re.M)
    assert m, summary
    assert (int(m[1]), int(m[2])) == (len(expected_ids), len(ids))
    human = m[3]
    assert re.fullmatch(r"\d+\.\d (KiB|MiB)", human), human
    kib = expected_bytes / 1024
    assert human == (f"{kib:.1f} KiB" if kib < 1024 else f"{kib / 1024:.1f} MiB")

    show = run_exe("show", "manifest", cwd=tmp_path, env=ENV)
    assert show.returncode == 0, show.stderr.decode()
    assert "signature OK" in show.stdout.decode()
    assert f"{len(expected_ids)} runs, {human}" in show.stdout.decode()

    show_json = run_exe("show", "--json", "manifest", cwd=tmp_path, env=ENV)
    assert show_json.returncode == 0, show_json.stderr.decode()
    report = json.loads(show_json.stdout)
    assert sorted(report["run_ids"]) == expected_ids
    assert report["count"] == len(expected_ids)
    assert report["total_bytes"] == expected_bytes
    assert report["missing_dirs"] == 0

    # Planning again right away gives the same manifest, byte for byte.
    again = run_exe(
        "plan", "--keep-last", "10", "--max-age", "180d", "--now", NOW_TEXT, cwd=tmp_path, env=ENV
    )
    assert again.returncode == 0 and again.stdout == plan.stdout
