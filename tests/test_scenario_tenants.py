"""Scenario 5 (executions of many tenants, one policy row per tenant) through the real
executable on SQLite, on the sample ``examples/tenants/make_sample.py`` builds with the
example's own ``retention.toml``: per-tenant days and floors from
``execution_retention_policies``, a disabled tenant and one without a row left alone,
the started_at/created_at fallback, running executions kept, cleanup written back in the
commit. The surviving set is computed here from the sample's documented layout."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from .conftest import run_exe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tenants"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
PER = 120
ENV = {"RETENTION_MANIFEST_TTL": "3650d"}
# As make_sample.TENANTS documents them: (days, enabled, floor), None: no row.
TENANTS = {
    "acme": (30, True, 5),
    "globex": (14, False, 0),
    "initech": (7, True, 40),
    "umbrella": (60, True, 0),
    "hooli": None,
}


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "make_sample.py"),
            "--catalog",
            str(tmp_path / "executions.db"),
            "--per-tenant",
            str(PER),
            "--now",
            NOW.isoformat(),
        ],
        check=True,
        capture_output=True,
    )
    shutil.copy(EXAMPLE / "retention.toml", tmp_path / "retention.toml")
    return tmp_path


def expected_removed(per: int = PER) -> dict[str, set[str]]:
    """Execution j of a tenant is j * 120 / PER days and 1 + j % 7 hours old (by started_at,
    or created_at without one: the same instant in the sample), running when j % 10 == 0.
    An enabled tenant's terminal executions at least its days old go, except that the
    newest of them stay while fewer than its floor are kept (running ones count)."""
    out: dict[str, set[str]] = {}
    for tenant, row in TENANTS.items():
        out[tenant] = set()
        if row is None or not row[1]:
            continue
        days, _, floor = row
        ages = {j: timedelta(days=j * 120 / per, hours=1 + j % 7) for j in range(per)}
        old = [j for j in range(per) if j % 10 and ages[j] >= timedelta(days=days)]
        kept = per - len(old)
        old.sort(key=lambda j: ages[j])  # newest first
        while kept < floor and old:
            old.pop(0)
            kept += 1
        out[tenant] = {f"{tenant}-{j:05d}" for j in old}
    return out


def table(where: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(where / "executions.db") as conn:
        return list(conn.execute(sql))


def ids(where: Path) -> set[str]:
    return {r[0] for r in table(where, "SELECT id FROM executions")}


def plan(where: Path) -> subprocess.CompletedProcess:
    return run_exe("plan", "--now", NOW.isoformat(), "-o", "m.json", cwd=where, env=ENV)


def test_each_tenant_loses_what_its_policy_row_allows_and_the_cleanup_is_written_back(
    tenants: Path,
) -> None:
    everyone = ids(tenants)
    want = expected_removed()
    removed = set().union(*want.values())
    out = plan(tenants)
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    assert "the policy of its row in execution_retention_policies" in err
    assert "tenant_id=globex: 0 of 120 runs removed (retention disabled" in err
    assert "Warning: 120 runs of 1 group kept whole: no policy row in" in err
    entries = json.loads((tenants / "m.json").read_bytes())["payload"]["entries"]
    assert {e["run_id"] for e in entries} == removed
    applied = run_exe("apply", "m.json", cwd=tenants, env=ENV)
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert {(g["column"], g["value"]): g["runs"] for g in report["groups"]} == {
        ("tenant_id", t): len(v) for t, v in want.items() if v
    }
    assert ids(tenants) == everyone - removed
    steps = {r[0] for r in table(tenants, "SELECT execution_id FROM execution_steps")}
    assert steps == everyone - removed  # CASCADE children tombstoned and deleted with them
    dirs = {p.name for p in (tenants / "executions").glob("*/*") if p.parent.name != ".trash"}
    assert dirs == everyone - removed
    rows = {
        r[0]: r[1:]
        for r in table(
            tenants,
            "SELECT tenant_id, last_cleanup_at, last_cleanup_deleted_count"
            " FROM execution_retention_policies",
        )
    }
    txid = json.loads(applied.stdout)["txid"]
    applied_at = table(tenants, f"SELECT created_at FROM _retention_tx WHERE txid = '{txid}'")
    assert rows["globex"] == (None, None)  # disabled: not touched
    for tenant in ("acme", "initech", "umbrella"):
        at, count = rows[tenant]
        assert count == len(want[tenant])
        assert [(at,)] == applied_at  # the apply's own instant, written in its transaction
    # the floor held executions older than initech's 7 days
    assert len([i for i in ids(tenants) if i.startswith("initech-")]) == 40
    again = plan(tenants)
    assert again.returncode == 0
    assert json.loads((tenants / "m.json").read_bytes())["payload"]["entries"] == []


def test_undo_restores_executions_and_their_cascaded_steps(tenants: Path) -> None:
    before = table(tenants, "SELECT * FROM executions ORDER BY id")
    steps = table(tenants, "SELECT * FROM execution_steps ORDER BY id")
    assert plan(tenants).returncode == 0
    assert run_exe("apply", "m.json", cwd=tenants, env=ENV).returncode == 0
    undone = run_exe("undo", "--within", "24h", cwd=tenants, env=ENV)
    assert undone.returncode == 0, undone.stderr
    assert table(tenants, "SELECT * FROM executions ORDER BY id") == before
    assert table(tenants, "SELECT * FROM execution_steps ORDER BY id") == steps


def test_a_bad_policy_row_is_refused_naming_it(tenants: Path) -> None:
    with sqlite3.connect(tenants / "executions.db") as conn:
        conn.execute(
            "UPDATE execution_retention_policies SET retention_days = 0 WHERE tenant_id = 'acme'"
        )
    out = plan(tenants)
    assert out.returncode == 4
    assert out.stderr.decode().splitlines()[0] == (
        "Error: execution_retention_policies.retention_days of tenant_id 'acme' is 0: days must"
        " be >= 1, or -1 to keep forever (policy.rows)"
    )
    assert not (tenants / "m.json").exists()
