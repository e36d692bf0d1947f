"""Build a sample workspace of the default layout (laptop backtests) for demos and tests.

``python -m retention.sample DIR [--runs N]`` creates ``DIR/data/catalog.db`` with ``runs``
and ``run_metrics`` and one small artifact directory per run under ``DIR/data/backtests``.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path


def build(
    root: Path, *, runs: int = 300, days: int = 730, now: datetime | None = None, seed: int = 7
) -> list[str]:
    """Create the workspace; returns the run ids, oldest first. Deterministic for a seed."""
    now = now or datetime(2026, 11, 1, tzinfo=UTC)
    rng = random.Random(seed)
    data = root / "data"
    (data / "backtests").mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(data / "catalog.db")
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY, created_at TEXT, strategy TEXT, sharpe REAL);
        CREATE TABLE IF NOT EXISTS run_metrics (
            id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs(run_id),
            name TEXT, value REAL, blob BLOB);
        CREATE INDEX IF NOT EXISTS run_metrics_run ON run_metrics(run_id);
        """
    )
    ids = []
    step = timedelta(days=days) / max(runs, 1)
    for i in range(runs):
        created = now - timedelta(days=days) + step * i
        run_id = f"bt-{created:%Y%m%d}-{i:05d}"
        ids.append(run_id)
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?)",
            (run_id, created.strftime("%Y-%m-%dT%H:%M:%S"), rng.choice("ABC"), rng.random()),
        )
        db.executemany(
            "INSERT INTO run_metrics (run_id, name, value, blob) VALUES (?, ?, ?, ?)",
            [(run_id, m, rng.random(), bytes([i % 256]) * 3) for m in ("pnl", "dd", "trades")],
        )
        d = data / "backtests" / run_id
        (d / "plots").mkdir(parents=True, exist_ok=True)
        (d / "equity.csv").write_text("t,v\n" + "".join(f"{k},{rng.random()}\n" for k in range(40)))
        (d / "plots" / "pnl.txt").write_bytes(rng.randbytes(rng.randint(200, 4000)))
        (d / "params.json").write_text(f'{{"strategy": "{rng.choice("ABC")}"}}\n')
    db.commit()
    db.close()
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    ids = build(args.dir, runs=args.runs)
    print(f"sample workspace in {args.dir}: {len(ids)} runs")


if __name__ == "__main__":
    main()
