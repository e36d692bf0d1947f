"""Benchmark: plan and apply at scale, against a bare rename-and-delete baseline.

Builds a catalog of N runs (one metrics row each) with an artifact directory (one small
file) for each of the D oldest runs, then times, each in a fresh copy:

* ``retention plan --keep-last N-D`` (read-only),
* ``retention apply`` of that manifest,
* a bare script doing only the irreducible work: rename the D directories into a trash
  directory and delete their rows with one set-based DELETE per table;
* ``retention undo`` of that apply and ``retention purge --all`` of it (each in a copy of
  the applied workspace), and ``rm -rf`` of the same trash trees (purge's floor).

Prints wall time and peak RSS of each, and apply's ratio to the baseline.

``--sizes`` adds the catalog's bookkeeping (issue 15): its size before the apply, after it
(with the tombstones `status` counts), after ``purge --all`` and, in another copy, after
``purge --all --vacuum``, each with its free pages. ``--children N`` gives each run N
metric rows (default 1), e.g. ``--runs 200000 --delete 100000 --children 20 --sizes``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

EXE = str(Path(sys.executable).parent / "retention")
TENANTS = 100  # runs.tenant: run i belongs to tenant i % 100 (for --policies)
T0 = 1_600_000_000  # the first run's created_at; runs are a minute apart


def build(root: Path, runs: int, delete: int, children: int = 1, journal: str = "wal") -> None:
    data = root / "data"
    arts = data / "backtests"
    arts.mkdir(parents=True)
    db = sqlite3.connect(data / "catalog.db")
    db.execute(f"PRAGMA journal_mode={journal}")
    db.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER, tenant TEXT);
        CREATE TABLE run_metrics (id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(run_id),
                                  name TEXT, value REAL);
        CREATE INDEX run_metrics_run ON run_metrics(run_id);
        """
    )
    t0 = T0
    db.executemany(
        "INSERT INTO runs VALUES (?, ?, ?)",
        ((f"r{i:08d}", t0 + i * 60, f"t{i % TENANTS:03d}") for i in range(runs)),
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        (
            (f"r{i:08d}", "pnl" if k == 0 else f"m{k}", i * 0.5 + k)
            for i in range(runs)
            for k in range(children)
        ),
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


def catalog_size(ws: Path) -> tuple[int, int]:
    """Bytes of the catalog on disk (the file and any -wal) and of its free pages."""
    db = ws / "data/catalog.db"
    wal = Path(f"{db}-wal")
    size = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    free *= conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return size, free


def sizes(ws: Path, before: tuple[int, int]) -> None:
    """The catalog's size after the apply in ``ws``, after a purge, and after a purge with
    --vacuum (in a copy), with the tombstones `status` counts; printed as a table."""
    rows = [("before apply", *before, None, None)]
    st = subprocess.run([EXE, "status", "--json"], cwd=ws, capture_output=True, check=True)
    use = json.loads(st.stdout)["catalog_usage"]
    rows.append(("after apply", *catalog_size(ws), use["tombstone_bytes"], None))
    vac = ws.parent / "ours-vacuum"
    shutil.rmtree(vac, ignore_errors=True)
    shutil.copytree(ws, vac)
    for label, where, extra in (
        ("after purge --all", ws, []),
        ("after purge --all --vacuum", vac, ["--vacuum"]),
    ):
        with tempfile.TemporaryFile() as out:
            took, _ = timed([EXE, "purge", "--all", *extra], where, stdout=out)
            out.seek(0)
            rep = json.load(out)
        assert rep["purged"], rep
        rows.append((label, *catalog_size(where), None, took))
    mib = 2**20
    print("catalog (file + WAL)          size        free pages   tombstones    took")
    for label, size, free, tomb, took in rows:
        t = f"{tomb / mib:9.1f} MiB" if tomb is not None else " " * 13
        s = f"{took:7.2f} s" if took is not None else ""
        print(f"  {label:<27} {size / mib:8.1f} MiB  {free / mib:8.1f} MiB  {t}  {s}")
    print(f"  ({size:,} bytes after the vacuum; before the apply {before[0]:,})")


def policies(ws: Path, runs: int, delete: int) -> None:
    """plan with keep-last, then with calendar rules per tenant, on the same workspace and
    at the same clock; the calendar policy removes about the same runs (the ``delete``
    oldest, less the checkpoints it keeps), so both write a manifest of the same size."""
    now = datetime.fromtimestamp(T0 + runs * 60, UTC).isoformat()
    age = f"{(runs - delete) * 60}s"  # run ``delete`` is this old at ``now``
    calendar = ["--max-age", age, "--keep-monthly", "12", "--keep-yearly", "3"]
    timed([EXE, "plan", "--keep-last", "1", "--now", now], ws, stdout=subprocess.DEVNULL)  # warm
    rows = []
    for name, flags in (
        ("keep-last", ["--keep-last", str(runs - delete)]),
        ("max-age + calendar, --group-by tenant", [*calendar, "--group-by", "tenant"]),
        (
            "the same with min-keep 5",
            [*calendar, "--min-keep", "5", "--group-by", "tenant"],
        ),
    ):
        out = ws / "m.json"
        with open(out, "wb") as f:
            took, rss = timed([EXE, "plan", "--now", now, *flags], ws, stdout=f)
        n = len(json.loads(out.read_bytes())["payload"]["entries"])
        rows.append((took, rss))
        print(f"plan {name:<40} {took:7.2f} s   peak RSS {rss / 1024:7.1f} MiB   {n:,} entries")
    base_t, base_rss = rows[0]
    for (took, rss), name in zip(rows[1:], ("grouped calendar", "with min-keep"), strict=True):
        print(f"{name}: {took / base_t:.2f}x keep-last's time (goal <= 1.3x),", end=" ")
        print(f"{rss / base_rss:.2f}x its peak memory")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=200_000)
    ap.add_argument("--delete", type=int, default=20_000)
    ap.add_argument("--children", type=int, default=1, help="metric rows per run (default 1)")
    ap.add_argument(
        "--journal", choices=("wal", "delete"), default="wal", help="the catalog's journal mode"
    )
    ap.add_argument(
        "--sizes",
        action="store_true",
        help="also the catalog's size before and after apply, purge and purge --vacuum",
    )
    ap.add_argument(
        "--policies",
        action="store_true",
        help="only plan: keep-last against a calendar policy grouped by tenant (100 groups)"
        " on the same workspace (issue 8's goal: <= 1.3x, peak memory not growing)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="retention-bench-"))
    template = base / "template"
    if template.exists():
        shutil.rmtree(template)
    t0 = time.perf_counter()
    build(template, args.runs, args.delete, args.children, args.journal)
    children = f" x {args.children} metric rows" if args.children != 1 else ""
    print(
        f"built {args.runs:,} runs{children}, {args.delete:,} directories"
        f" in {time.perf_counter() - t0:.1f} s"
    )
    env_keep = str(args.runs - args.delete)
    if args.policies:
        policies(template, args.runs, args.delete)
        if args.dir is None:
            shutil.rmtree(base)
        return

    ws = base / "ours"
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(template, ws)
    with open(ws / "manifest.json", "wb") as out:
        t_plan, rss_plan = timed([EXE, "plan", "--keep-last", env_keep], ws, stdout=out)
    size = (ws / "manifest.json").stat().st_size
    t_apply, rss_apply = timed([EXE, "apply", "manifest.json"], ws, stdout=subprocess.DEVNULL)

    # Undo (in a copy of the applied workspace) and purge --all of the same apply.
    undone = base / "ours-undo"
    shutil.rmtree(undone, ignore_errors=True)
    shutil.copytree(ws, undone, symlinks=True)
    t_undo, rss_undo = timed([EXE, "undo", "--within", "3650d"], undone, stdout=subprocess.DEVNULL)
    purged = base / "ours-purge"
    shutil.rmtree(purged, ignore_errors=True)
    shutil.copytree(ws, purged, symlinks=True)
    t_purge, rss_purge = timed([EXE, "purge", "--all"], purged, stdout=subprocess.DEVNULL)
    shutil.rmtree(undone)
    rmrf = base / "rm-rf"  # the floor of purge: rm -rf of the same trees
    shutil.rmtree(rmrf, ignore_errors=True)
    shutil.copytree(ws / "data/backtests/.trash", rmrf, symlinks=True)
    t_rm, _ = timed(["rm", "-rf", str(rmrf)], base)

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
    print(f"undo   {t_undo:7.2f} s   peak RSS {rss_undo / 1024:7.1f} MiB")
    print(f"undo / apply = {t_undo / t_apply:.2f}x   (goal: <= 2x)")
    print(f"purge  {t_purge:7.2f} s   peak RSS {rss_purge / 1024:7.1f} MiB   (purge --all)")
    print(f"rm -rf {t_rm:7.2f} s   purge / rm -rf = {t_purge / t_rm:.2f}x")
    if args.sizes:
        sizes(ws, catalog_size(template))
    if args.dir is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
