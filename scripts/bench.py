"""Benchmark: plan and apply at scale, against a bare rename-and-delete baseline.

Builds a catalog of N runs (one metrics row each) with an artifact directory (one small
file) for each of the D oldest runs, then times, each in a fresh copy:

* ``retention plan --keep-last N-D`` (read-only),
* ``retention apply`` of that manifest,
* a bare script doing only the irreducible work: rename the D directories into a trash
  directory and delete their rows with one set-based DELETE per table.

Prints wall time and peak RSS of each, and apply's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "retention")


def build(root: Path, runs: int, delete: int) -> None:
    data = root / "data"
    arts = data / "backtests"
    arts.mkdir(parents=True)
    db = sqlite3.connect(data / "catalog.db")
    db.executescript(
        """
        PRAGMA journal_mode=WAL;
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER);
        CREATE TABLE run_metrics (id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(run_id),
                                  name TEXT, value REAL);
        CREATE INDEX run_metrics_run ON run_metrics(run_id);
        """
    )
    t0 = 1_600_000_000
    db.executemany(
        "INSERT INTO runs VALUES (?, ?)", ((f"r{i:08d}", t0 + i * 60) for i in range(runs))
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, 'pnl', ?)",
        ((f"r{i:08d}", i * 0.5) for i in range(runs)),
    )
    db.commit()
    db.close()
    for i in range(delete):
        d = arts / f"r{i:08d}"
        d.mkdir()
        (d / "result.csv").write_bytes(b"x" * 512)


# Run a command in a child of a fresh interpreter, so RUSAGE_CHILDREN's peak is its own.
_MEASURE = (
    "import resource, subprocess, sys;"
    "r = subprocess.run(sys.argv[1:]).returncode;"
    "sys.stderr.write(f'\\nRSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n');"
    "sys.exit(r)"
)


def timed(cmd: list[str], cwd: Path, stdout=None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """Wall time and peak RSS (KiB) of one command."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE
    )
    took = time.perf_counter() - t0
    err = p.stderr.decode()
    if p.returncode not in (0, 3):
        sys.exit(f"{cmd[1]} failed: {err}")
    return took, int(err.rsplit("RSS ", 1)[1])


BARE = r"""
import os, sqlite3, sys
root, n = sys.argv[1], int(sys.argv[2])
ids = [f"r{i:08d}" for i in range(n)]
arts = os.path.join(root, "data/backtests")
trash = os.path.join(arts, ".trash")
os.mkdir(trash)
for i in ids:
    os.rename(os.path.join(arts, i), os.path.join(trash, i))
for d in (arts, trash):
    fd = os.open(d, os.O_RDONLY); os.fsync(fd); os.close(fd)
db = sqlite3.connect(os.path.join(root, "data/catalog.db"), isolation_level=None)
db.execute("PRAGMA synchronous=FULL")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TEMP TABLE ids (id PRIMARY KEY)")
db.executemany("INSERT INTO ids VALUES (?)", ((i,) for i in ids))
db.execute("DELETE FROM run_metrics WHERE run_id IN (SELECT id FROM ids)")
db.execute("DELETE FROM runs WHERE run_id IN (SELECT id FROM ids)")
db.execute("COMMIT")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200_000)
    ap.add_argument("--delete", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="retention-bench-"))
    template = base / "template"
    if template.exists():
        shutil.rmtree(template)
    t0 = time.perf_counter()
    build(template, args.runs, args.delete)
    print(
        f"built {args.runs:,} runs, {args.delete:,} directories in {time.perf_counter() - t0:.1f} s"
    )
    env_keep = str(args.runs - args.delete)

    ws = base / "ours"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(template, ws)
    with open(ws / "manifest.json", "wb") as out:
        t_plan, rss_plan = timed([EXE, "plan", "--keep-last", env_keep], ws, stdout=out)
    size = (ws / "manifest.json").stat().st_size
    t_apply, rss_apply = timed([EXE, "apply", "manifest.json"], ws, stdout=subprocess.DEVNULL)

    bare = base / "bare"
    shutil.rmtree(bare, ignore_errors=True)
    shutil.copytree(template, bare)
    t_bare, _ = timed([sys.executable, "-c", BARE, str(bare), str(args.delete)], bare)

    print(
        f"plan   {t_plan:7.2f} s   peak RSS {rss_plan / 1024:7.1f} MiB"
        f"   manifest {size / 2**20:.1f} MiB"
    )
    print(f"apply  {t_apply:7.2f} s   peak RSS {rss_apply / 1024:7.1f} MiB")
    print(f"bare   {t_bare:7.2f} s   (rename + set-based delete, no checks)")
    print(f"apply / bare = {t_apply / t_bare:.2f}x   (goal: <= 1.5x)")
    if args.dir is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
