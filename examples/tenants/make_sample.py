"""Build a sample multi-tenant execution catalog (scenario 5) to try `retention` on.

    python make_sample.py                          # executions.db and executions/ here
    python make_sample.py --catalog /tmp/t/executions.db --per-tenant 500 --now 2026-06-01T00:00:00Z

The tables are seed 004's, as they are (keep these names):

- ``executions(id TEXT PRIMARY KEY, tenant_id TEXT, started_at TIMESTAMPTZ NULL,
  created_at TIMESTAMPTZ NOT NULL, status TEXT)``
- ``execution_steps(id INTEGER PRIMARY KEY, execution_id REFERENCES executions ON DELETE
  CASCADE, name TEXT, output TEXT)``, three per execution
- ``execution_retention_policies(tenant_id TEXT UNIQUE, retention_days INT DEFAULT 90,
  is_enabled BOOL, min_executions_to_keep INT, last_cleanup_at TIMESTAMPTZ NULL,
  last_cleanup_deleted_count INT NULL)``

and each execution's artifacts at ``executions/{tenant_id}/{id}/``. The tenants
(``TENANTS`` below) differ on purpose: one with a short retention, one disabled, one whose
floor holds executions older than its days, one whose executions often have no
``started_at`` (the age falls back to ``created_at``), one without a policy row. Execution
``j`` of a tenant is ``j * 120 / per_tenant`` days and ``1 + j % 7`` hours old (by
``started_at`` when it has one, which is 5 minutes after ``created_at``); every 10th is
``running`` and never goes. Deterministic. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

# tenant -> (retention_days, is_enabled, min_executions_to_keep); None: no policy row
TENANTS: dict[str, tuple[int, bool, int] | None] = {
    "acme": (30, True, 5),
    "globex": (14, False, 0),  # disabled: left alone
    "initech": (7, True, 40),  # the floor keeps executions older than 7 days
    "umbrella": (60, True, 0),  # many executions without started_at
    "hooli": None,  # no policy row: left alone, reported
}
STATUSES = ("completed", "failed", "canceled")
SPAN_DAYS = 120

SCHEMA = """
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    started_at TIMESTAMPTZ NULL,
    created_at TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX executions_tenant ON executions (tenant_id, created_at);
CREATE TABLE execution_steps (
    id INTEGER PRIMARY KEY,
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    output TEXT
);
CREATE INDEX execution_steps_execution ON execution_steps (execution_id);
CREATE TABLE execution_retention_policies (
    tenant_id TEXT NOT NULL UNIQUE,
    retention_days INT DEFAULT 90,
    is_enabled BOOL NOT NULL DEFAULT 1,
    min_executions_to_keep INT NOT NULL DEFAULT 0,
    last_cleanup_at TIMESTAMPTZ NULL,
    last_cleanup_deleted_count INT NULL
);
"""


def execution_id(tenant: str, j: int) -> str:
    return f"{tenant}-{j:05d}"


def age(j: int, per_tenant: int) -> timedelta:
    """How old execution ``j`` is (by the timestamp its age is read from)."""
    return timedelta(days=j * SPAN_DAYS / per_tenant, hours=1 + j % 7)


def has_started_at(tenant: str, j: int) -> bool:
    return not (tenant == "umbrella" and j % 3 == 0)


def status_of(j: int) -> str:
    return "running" if j % 10 == 0 else STATUSES[j % 3]


def build(db: Path, per_tenant: int, now: datetime) -> dict[str, object]:
    if db.exists():
        raise SystemExit(f"{db} exists: remove it (and executions/) or choose another --catalog")
    db.parent.mkdir(parents=True, exist_ok=True)
    root = db.parent / "executions"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    with conn:
        for tenant, row in TENANTS.items():
            if row is not None:
                days, enabled, floor = row
                conn.execute(
                    "INSERT INTO execution_retention_policies (tenant_id, retention_days,"
                    " is_enabled, min_executions_to_keep) VALUES (?, ?, ?, ?)",
                    (tenant, days, int(enabled), floor),
                )
            for j in range(per_tenant):
                eid = execution_id(tenant, j)
                started = now - age(j, per_tenant)
                created = started - timedelta(minutes=5)
                if not has_started_at(tenant, j):
                    created = started  # the age falls back to created_at: keep it the same
                conn.execute(
                    "INSERT INTO executions VALUES (?, ?, ?, ?, ?)",
                    (
                        eid,
                        tenant,
                        started.isoformat(timespec="seconds")
                        if has_started_at(tenant, j)
                        else None,
                        created.isoformat(timespec="seconds"),
                        status_of(j),
                    ),
                )
                conn.executemany(
                    "INSERT INTO execution_steps (execution_id, name, output) VALUES (?, ?, ?)",
                    [(eid, name, f"{eid}:{name}") for name in ("fetch", "run", "report")],
                )
                folder = root / tenant / eid
                folder.mkdir(parents=True)
                (folder / "log.txt").write_text(f"{eid}\n" * (1 + j % 5))
    conn.close()
    return {
        "catalog": str(db),
        "artifacts": str(root),
        "now": now.isoformat(),
        "tenants": list(TENANTS),
    }


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--catalog", type=Path, default=here / "executions.db", help="SQLite file")
    ap.add_argument("--per-tenant", type=int, default=200, help="executions per tenant")
    ap.add_argument("--now", help="ISO-8601 instant the ages count back from (default: now)")
    args = ap.parse_args(argv)
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    now = (now if now.tzinfo else now.replace(tzinfo=UTC)).replace(microsecond=0)
    json.dump(build(args.catalog, args.per_tenant, now), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
