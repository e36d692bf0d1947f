"""`retention check` finds each kind of inconsistency, and nothing on a healthy workspace."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from . import crashkit as ck
from .conftest import invoke


def findings(ws: Path) -> list[dict]:
    result = invoke("check", "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == (10 if report["findings"] else 0)
    return report["findings"]


def test_healthy_workspace_has_no_findings_before_and_after_apply(workspace: Path) -> None:
    assert findings(workspace) == []
    assert invoke("apply", str(ck.plan(workspace, keep_last=30))).exit_code == 0
    assert findings(workspace) == []


def test_each_inconsistency_is_found(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    report = json.loads(invoke("apply", str(m)).stdout)
    arts = workspace / "data/backtests"
    c = sqlite3.connect(workspace / "data/catalog.db")
    kept = c.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 1").fetchone()[0]
    gone, trash = c.execute("SELECT run_id, trash FROM _retention_runs LIMIT 1").fetchone()
    c.close()
    shutil.rmtree(arts / kept)  # row without directory
    (arts / "stray-run").mkdir()  # directory without row
    shutil.rmtree(arts / os.fsdecode(trash))  # deleted run missing from trash
    (arts / ".trash" / report["txid"] / "junk").mkdir()  # trash nobody accounts for
    got = {(f["kind"], f["run_id"], f["path"]) for f in findings(workspace)}
    assert got == {
        ("row_without_dir", kept, kept),
        ("dir_without_row", None, "stray-run"),
        ("trash_missing", gone, os.fsdecode(trash)),
        ("trash_orphan", None, f".trash/{report['txid']}/junk"),
    }
    human = invoke("check")
    assert human.exit_code == 10 and "4 findings." in human.stdout


def test_interrupted_transaction_is_a_finding(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    assert ck.crashed(ck.run(workspace, "apply", str(m), failpoint="apply.after_rename@2"))
    kinds = [f["kind"] for f in findings(workspace)]
    assert "interrupted" in kinds
    assert ck.run(workspace, "recover").returncode == 0
    assert findings(workspace) == []
