"""Build a sample backup catalog and artifact tree to try `retention` on (scenario 3).

    python make_sample.py                          # backups.db and backups/ beside this script
    python make_sample.py --dir /tmp/b --days 120 --end 2026-10-31

The layout is a backup team's own: one SQLite table ::

    backups(backup_id TEXT PRIMARY KEY, created_at TEXT,      -- ISO-8601 with its UTC offset
            kind TEXT,                                        -- 'full' or 'incremental'
            parent_id TEXT NULL REFERENCES backups,           -- what an incremental is based on
            preserved INTEGER,                                -- 1: never to be deleted
            size_bytes INTEGER)                               -- bytes of its directory's files

and one directory per backup at ``backups/{backup_id}/`` holding ``backup.json`` (its row),
``data.bin`` (the payload, random bytes) and ``SHA256SUMS``; ``size_bytes`` is exactly the
three files' bytes.

The series covers ``--days`` days (default 400, about 13 months) ending on ``--end``
(default: today, UTC), as a server in Central Europe makes it: a nightly backup just after
midnight local time (00:15-00:55), recorded with the offset in force (+01:00 in winter,
+02:00 from the last Sunday of March to the last Sunday of October, the EU's rule), so
near midnight the local day is not the UTC day. Sundays are full backups (parent NULL), as
is the very first backup of the series; every other backup is incremental, its parent the
backup made just before it. Some days have no backup (the job failed; about 1 in 30,
never a Sunday): the next backup is then based on the last one that exists. On about 1
day in 20 an extra incremental is taken in the afternoon (before a deployment): it is
based on that night's backup, and the next night's on it. Two backups are preserved
(``preserved = 1``): a full about 30% into the series and a Thursday incremental about 55%
into it, each in the middle of a month (its 8th to 21st day), so that no monthly
checkpoint chain reaches them.

Everything but ``--end`` comes from ``--seed``: the same arguments build the same catalog
and the same files, byte for byte. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE backups (
    backup_id  TEXT PRIMARY KEY,
    created_at TEXT,
    kind       TEXT,
    parent_id  TEXT NULL REFERENCES backups (backup_id),
    preserved  INTEGER,
    size_bytes INTEGER
)
"""

WINTER = timezone(timedelta(hours=1))
SUMMER = timezone(timedelta(hours=2))


def _last_sunday(year: int, month: int) -> date:
    """The last Sunday of a month (March and October: the EU's summer-time changes)."""
    last = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def central_europe(day: date, wall: time) -> datetime:
    """Wall time ``wall`` on ``day`` in Central Europe, with the UTC offset then in force:
    summer time (+02:00) from 01:00 UTC on the last Sunday of March to 01:00 UTC on the
    last Sunday of October, +01:00 otherwise. (Wall times between 02:00 and 03:00 on the
    change days, which the sample never uses, get the summer offset.)"""
    start = datetime.combine(_last_sunday(day.year, 3), time(1), UTC)
    end = datetime.combine(_last_sunday(day.year, 10), time(1), UTC)
    summer = datetime.combine(day, wall, SUMMER)
    return summer if start <= summer < end else datetime.combine(day, wall, WINTER)


@dataclass
class Backup:
    backup_id: str
    created_at: datetime
    kind: str
    parent_id: str | None
    preserved: int
    payload: int  # bytes of data.bin


def series(days: int, end: date, seed: int) -> list[Backup]:
    """The backups, oldest first (pure: no I/O)."""
    rng = random.Random(seed)
    start = end - timedelta(days=days - 1)
    out: list[Backup] = []
    for n in range(days):
        day = start + timedelta(days=n)
        sunday = day.weekday() == 6
        failed = rng.random() < 1 / 30
        afternoon = rng.random() < 1 / 20
        night = time(0, 15 + rng.randrange(41), rng.randrange(60))
        if out and failed and not sunday:
            continue
        moments = [night]
        if afternoon:
            moments.append(time(13 + rng.randrange(5), rng.randrange(60), rng.randrange(60)))
        for k, wall in enumerate(moments):
            full = k == 0 and (sunday or not out)
            kind = "full" if full else "incremental"
            at = central_europe(day, wall)
            out.append(
                Backup(
                    backup_id=f"{'full' if full else 'incr'}-{at:%Y%m%dT%H%M%S}",
                    created_at=at,
                    kind=kind,
                    parent_id=None if full else out[-1].backup_id,
                    preserved=0,
                    payload=rng.randrange(20_000, 40_000) if full else rng.randrange(800, 6_000),
                )
            )
    _preserve(out, days, start)
    return out


def _preserve(out: list[Backup], days: int, start: date) -> None:
    """Mark the two preserved backups (see the module docstring); none when the series is
    too short to have them."""
    for fraction, wanted in ((0.30, ("full", 6)), (0.55, ("incremental", 3))):
        after = start + timedelta(days=int(days * fraction))
        for b in out:
            local = b.created_at.date()
            if (
                local >= after
                and (b.kind, local.weekday()) == wanted
                and 8 <= local.day <= 21
                and b.created_at.hour < 12  # the nightly one
            ):
                b.preserved = 1
                break


def _files(b: Backup, rng: random.Random) -> dict[str, bytes]:
    data = rng.randbytes(b.payload)
    meta = {
        "backup_id": b.backup_id,
        "created_at": b.created_at.isoformat(),
        "kind": b.kind,
        "parent_id": b.parent_id,
    }
    return {
        "backup.json": (json.dumps(meta, indent=2) + "\n").encode(),
        "data.bin": data,
        "SHA256SUMS": f"{hashlib.sha256(data).hexdigest()}  data.bin\n".encode(),
    }


def build(out: Path, *, days: int = 400, end: date | None = None, seed: int = 3) -> dict[str, Any]:
    """Create ``out/backups.db`` and ``out/backups/`` (refuses if either exists).

    Returns the summary that the command prints."""
    out = out.absolute()
    db, root = out / "backups.db", out / "backups"
    for p in (db, root):
        if p.exists():
            raise SystemExit(f"{p} exists already; remove it or pick another --dir")
    end = end or datetime.now(UTC).date()
    backups = series(days, end, seed)
    rng = random.Random(f"{seed}-files")
    root.mkdir(parents=True)
    rows = []
    for b in backups:
        files = _files(b, rng)
        d = root / b.backup_id
        d.mkdir()
        for name, content in files.items():
            (d / name).write_bytes(content)
        size = sum(len(c) for c in files.values())
        rows.append((b.backup_id, b.created_at.isoformat(), b.kind, b.parent_id, b.preserved, size))
    con = sqlite3.connect(db)
    with con:
        con.execute(SCHEMA)
        con.executemany("INSERT INTO backups VALUES (?, ?, ?, ?, ?, ?)", rows)
    con.close()
    fulls = [b.backup_id for b in backups if b.kind == "full"]
    return {
        "catalog": str(db),
        "artifact_root": str(root),
        "backups": len(backups),
        "full": len(fulls),
        "incremental": len(backups) - len(fulls),
        "first": backups[0].created_at.isoformat() if backups else None,
        "last": backups[-1].created_at.isoformat() if backups else None,
        "newest_full": fulls[-1] if fulls else None,
        "preserved": [b.backup_id for b in backups if b.preserved],
        "total_bytes": sum(r[5] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(__file__).parent, help="where to build")
    ap.add_argument("--days", type=int, default=400, help="how many days (default 400)")
    ap.add_argument(
        "--end",
        type=date.fromisoformat,
        help="the last day of the series, YYYY-MM-DD (default: today, UTC)",
    )
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    if args.days < 1:
        ap.error("--days must be >= 1")
    summary = build(args.dir, days=args.days, end=args.end, seed=args.seed)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(
        f"Built {summary['catalog']}: {summary['backups']} backups ({summary['full']} full,"
        f" {summary['incremental']} incremental, {len(summary['preserved'])} preserved),"
        f" {summary['first']} to {summary['last']}.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
