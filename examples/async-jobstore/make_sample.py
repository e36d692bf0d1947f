"""Build a sample async job store (scenario 2) to try `retention` on.

    python make_sample.py                       # runtime/async_jobs/store.v1.json here
    python make_sample.py /tmp/js --jobs 25000 --now 2026-06-01T00:00:00Z --seed 7

The document is the team's, as it is (keep these names; the tests use it as is):

    {"version": 1,
     "jobs":        {"<job_id>": {"status": ..., "created_at": ..., "updated_at": ..., ...}},
     "job_results": {"<job_id>": {"job_id": ..., "created_at": ..., "result": {...}}},
     "job_events":  [{"event_id": ..., "job_id": ..., "ts": ..., "type": ..., "data": {...}}]}

Job ``j`` (``job-000042``) has status ``STATES[j % 5]`` (queued, running, completed,
failed, canceled) and was created up to ``SPAN_DAYS`` days before ``--now`` (a random age,
from ``--seed``). A finished job has a result (``created_at`` when it finished); every 10th
running job has a partial one. Every job has ``1 + j % 4`` events (``ts`` minutes apart
from its creation). On purpose, so that a policy has to keep them:

- every 17th result and every 19th event have no timestamp (``created_at`` / ``ts``
  missing; every other one of those has it null);
- every 23rd result and every 29th event have a malformed one (``MALFORMED``);
- ``ORPHANS`` results and events belong to jobs that are not in ``jobs`` (one old enough
  to go if its job were finished).

About 4.1 records per job (jobs, results and events together) and 500 bytes per record:
``--jobs 25000`` writes about 100,000 records, 50 MB. Deterministic for a given ``--now``,
``--seed`` and ``--jobs``. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

STORE = Path("runtime/async_jobs/store.v1.json")
STATES = ("queued", "running", "completed", "failed", "canceled")
TERMINAL = ("completed", "failed", "canceled")
SPAN_DAYS = 14  # jobs are created up to this many days before --now
MALFORMED = ("not-a-date", "2026-13-45T25:61:00Z", "", "yesterday")
ORPHANS = ("job-gone-0001", "job-gone-0002")
EVENT_TYPES = ("enqueued", "started", "progress", "finished")
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 12


def job_id(j: int) -> str:
    return f"job-{j:06d}"


def stamp(dt: datetime) -> str:
    """ISO-8601 UTC with a Z, millisecond precision (as the team's application writes)."""
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time_field(n: int, every_missing: int, every_bad: int, value: str) -> tuple[bool, Any]:
    """(present, value) of a timestamp field for the n-th record of a kind."""
    if n % every_missing == every_missing - 1:
        return (n // every_missing) % 2 == 1, None  # missing, or present and null
    if n % every_bad == every_bad - 1:
        return True, MALFORMED[(n // every_bad) % len(MALFORMED)]
    return True, value


def build(root: Path, jobs: int = 60, now: datetime | None = None, seed: int = 1) -> dict[str, Any]:
    """Write ``root/runtime/async_jobs/store.v1.json`` (refused if it exists); a summary."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    path = Path(root) / STORE
    if path.exists():
        raise SystemExit(f"{path} exists: remove it or choose another directory")
    rng = random.Random(seed)
    doc_jobs: dict[str, Any] = {}
    results: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    n_result = 0

    def add_result(jid: str, created: datetime, status: str) -> None:
        nonlocal n_result
        present, value = _time_field(n_result, 17, 23, stamp(created))
        n_result += 1
        rec: dict[str, Any] = {"job_id": jid}
        if present:
            rec["created_at"] = value
        size = rng.randrange(300, 900)
        rec["result"] = {
            "status": status,
            "exit_code": 0 if status == "completed" else rng.randrange(1, 128),
            "output": f"{jid}: " + FILLER[:size],
            "metrics": {"duration_ms": rng.randrange(10, 600_000), "rows": rng.randrange(10**6)},
        }
        results[jid] = rec

    def add_event(jid: str, at: datetime, kind: str) -> None:
        n = len(events)
        present, value = _time_field(n, 19, 29, stamp(at))
        rec: dict[str, Any] = {"event_id": f"evt-{n:07d}", "job_id": jid}
        if present:
            rec["ts"] = value
        rec["type"] = kind
        rec["data"] = {"attempt": 1 + n % 3, "message": FILLER[: rng.randrange(120, 450)]}
        events.append(rec)

    for j in range(jobs):
        jid = job_id(j)
        status = STATES[j % len(STATES)]
        created = now - timedelta(milliseconds=rng.randrange(SPAN_DAYS * 86_400_000))
        finished = created + timedelta(minutes=1 + j % 90)
        doc_jobs[jid] = {
            "status": status,
            "created_at": stamp(created),
            "updated_at": stamp(min(finished, now)),
            "queue": ("default", "reports", "exports")[j % 3],
            "payload": {"tenant": f"t{j % 17}", "args": FILLER[: rng.randrange(60, 260)]},
        }
        if status in TERMINAL or (status == "running" and j % 10 == 1):
            add_result(jid, min(finished, now), status)
        for e in range(1 + j % 4):
            add_event(jid, min(created + timedelta(minutes=e), now), EVENT_TYPES[e])
    for k, jid in enumerate(ORPHANS):  # their jobs are not in "jobs"
        old = now - timedelta(days=SPAN_DAYS + 5 + k)
        add_result(jid, old, "completed")
        add_event(jid, old, "finished")
    doc = {"version": 1, "jobs": doc_jobs, "job_results": results, "job_events": events}
    data = msgspec.json.encode(doc) + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {
        "store": str(path),
        "now": stamp(now),
        "seed": seed,
        "bytes": len(data),
        "jobs": len(doc_jobs),
        "job_results": len(results),
        "job_events": len(events),
        "records": len(doc_jobs) + len(results) + len(events),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path.cwd(), help="target directory")
    ap.add_argument("--jobs", type=int, default=60, help="jobs (about 4.1 records each)")
    ap.add_argument("--now", help="ISO-8601 instant the ages count back from (default: now)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (ages, payload sizes)")
    args = ap.parse_args(argv)
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00")) if args.now else None
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    json.dump(build(args.root, args.jobs, now, args.seed), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
