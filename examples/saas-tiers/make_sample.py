"""Build a sample SaaS catalog with plan tiers to try `retention` on.

    python make_sample.py                      # saas.db and storage/ beside this script
    python make_sample.py --dir /tmp/saas --orgs 40 --per-org 30 --now 2026-06-01T00:00:00Z

The schema is the team's own (keep these names):

- ``organizations(org_id TEXT PRIMARY KEY, plan TEXT 'free'|'basic'|'pro'|'enterprise')``
- ``artifacts(artifact_id TEXT PRIMARY KEY, org_id TEXT REFERENCES organizations,
  created_at TEXT ISO-8601, kind TEXT)``
- ``artifact_files(artifact_id TEXT REFERENCES artifacts, name TEXT)``

and each artifact's files live at ``storage/{org_id}/{artifact_id}/``. Organisation ``k``
(0-based) is on plan ``PLANS[k % 4]``; its artifacts are spread evenly over the last 500
days before ``--now`` (artifact ``j`` is ``j * 500 / per_org`` days old, plus a few hours),
so each plan's days cut through them. Deterministic: the same arguments give the same
catalog. Prints a JSON summary (paths, counts per plan) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

PLANS = ("free", "basic", "pro", "enterprise")
KINDS = ("export", "report", "upload")
SPAN_DAYS = 500

SCHEMA = """
CREATE TABLE organizations (
    org_id TEXT PRIMARY KEY,
    plan TEXT NOT NULL
);
CREATE TABLE artifacts (
    artifact_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (org_id),
    created_at TEXT NOT NULL,
    kind TEXT NOT NULL
);
CREATE TABLE artifact_files (
    artifact_id TEXT NOT NULL REFERENCES artifacts (artifact_id),
    name TEXT NOT NULL
);
CREATE INDEX artifacts_org ON artifacts (org_id);
CREATE INDEX artifact_files_artifact ON artifact_files (artifact_id);
"""


def org_id(k: int) -> str:
    return f"org-{k:04d}"


def artifact_age(j: int, per_org: int) -> timedelta:
    """How old artifact ``j`` of an organisation is: evenly over SPAN_DAYS, plus hours so
    no artifact sits exactly on a day boundary."""
    return timedelta(days=j * SPAN_DAYS / per_org, hours=3 + j % 5)


def build(target: Path, orgs: int, per_org: int, now: datetime) -> dict[str, object]:
    target.mkdir(parents=True, exist_ok=True)
    db = target / "saas.db"
    if db.exists():
        raise SystemExit(f"{db} exists: remove it (and storage/) or choose another --dir")
    storage = target / "storage"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    per_plan = {p: 0 for p in PLANS}
    with conn:
        for k in range(orgs):
            plan = PLANS[k % len(PLANS)]
            oid = org_id(k)
            conn.execute("INSERT INTO organizations VALUES (?, ?)", (oid, plan))
            for j in range(per_org):
                aid = f"a-{k:04d}-{j:04d}"
                created = now - artifact_age(j, per_org)
                kind = KINDS[j % len(KINDS)]
                conn.execute(
                    "INSERT INTO artifacts VALUES (?, ?, ?, ?)",
                    (aid, oid, created.isoformat(timespec="seconds"), kind),
                )
                folder = storage / oid / aid
                folder.mkdir(parents=True)
                names = [f"{kind}.json", "meta.txt"]
                for name in names:
                    (folder / name).write_text(f"{aid} {name}\n" * (1 + j % 7))
                conn.executemany(
                    "INSERT INTO artifact_files VALUES (?, ?)", [(aid, n) for n in names]
                )
                per_plan[plan] += 1
    conn.close()
    return {
        "catalog": str(db),
        "storage": str(storage),
        "now": now.isoformat(),
        "organizations": orgs,
        "artifacts_per_plan": per_plan,
    }


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=here, help="where to build (default: here)")
    ap.add_argument("--orgs", type=int, default=12, help="organisations (plans in turn)")
    ap.add_argument("--per-org", type=int, default=25, help="artifacts per organisation")
    ap.add_argument("--now", help="ISO-8601 instant the ages count back from (default: now)")
    args = ap.parse_args(argv)
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    now = now.replace(microsecond=0)
    json.dump(build(args.dir, args.orgs, args.per_org, now), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
