"""Benchmark: every command against its own floor, in one run, on copies of one workspace.

Builds a catalog of ``--runs`` runs (default 1,000,000), each with three child rows across
two child tables (two ``run_metrics`` rows, one ``run_params`` row), and an artifact
directory of four small files for each of the ``--dirs`` oldest runs (default 100,000),
then measures, each in a fresh copy of that workspace, and prints beside each command its
floor and the ratio to it:

* ``retention plan --keep-last RUNS-DIRS`` against the *scan floor*: one read-only SELECT
  of the runs (id, time) plus an ``os.scandir``/``lstat`` walk of the candidate
  directories, in one process, on the copy plan read (the faster of two runs, after each
  round's plan);
* ``retention apply`` of that manifest against the *bare floor* (rename each directory
  into a staging directory, one set-based DELETE per table in one transaction, fsyncs of
  the two directories) and against the *naive way* (per run: ``shutil.rmtree``, DELETE
  from each table, COMMIT), timed on ``--naive-sample`` runs and scaled to all of them;
  plan, its scan floor, apply, apply's floors, undo and the naive way are each the
  fastest of ``--rounds`` samples (default 3; the floors each on a fresh copy, plan, the
  scan floor, apply and undo on one more, the naive way on different runs of one copy),
  as one sample swings with the machine; ``round_ratios`` gives each round's plan against
  that round's scan floor, apply against that round's bare and two-core safe floors (the
  same minutes of the machine), undo against the apply it undoes and the two-core safe
  floor against the bare floor, and their median; beside them, the *safe floors*, the main
  costs of apply's safety: the bare floor plus an ``lstat`` of each directory and the
  intents written (and fsynced) before the first rename, an ``lstat`` walk of each
  directory before its rename, the directories fsynced every 10,000 renames, each run's
  rows fingerprinted again, a transaction id row and a tombstone copy of every deleted row
  in the transaction, and two fsynced journal records after it; in one process (the
  fingerprints inside the transaction) and on two cores (``safe_floor_2cores``: the walk,
  then the fingerprints, in a second process beside the renames, as apply's workers and
  its fingerprints helper do). Not in them: reading and verifying the signed manifest,
  the commit's checks of protect, the filter and rows shared with kept runs;
* ``retention undo`` of each round's apply against the apply (the fastest of the rounds);
  ``retention purge --all`` of the first round's apply against ``rm -rf`` of the same
  trees;
* the start-up of ``retention --help`` and of a no-op ``retention status`` (best of five),
  the status before the apply (nothing in trash) and again after it (``status_trash_s``:
  it then also sums the apply's tombstones);
* with ``--fsyncs``, the fsync/fdatasync calls of plan, apply, undo and purge (``strace
  -f -c``, in extra copies, as strace slows what it traces).

Every figure comes with its peak RSS (``RUSAGE_CHILDREN`` of a fresh interpreter that only
runs the command) and rows/s or dirs/s. ``--json FILE`` writes the same figures as JSON.
BENCHMARKS.md holds the method, the machine and the latest figures.

Other modes: ``--sizes`` adds the catalog's bookkeeping (its size before the apply, after
it, after ``purge --all`` and after ``purge --all --vacuum``); ``--policies`` only plans,
keep-last against a calendar policy grouped by tenant on the same workspace (issue 8's
goal: within 1.3x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXE = str(Path(sys.executable).parent / "retention")
TENANTS = 100  # runs.tenant: run i belongs to tenant i % 100 (for --policies)
T0 = 1_600_000_000  # the first run's created_at; runs are a minute apart
FILES = ("result.csv", "params.json", "model.bin", "log.txt")


def run_id(i: int) -> str:
    return f"r{i:08d}"


def build(root: Path, runs: int, dirs: int, journal: str = "wal") -> None:
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
        CREATE TABLE run_params (id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(run_id),
                                 params TEXT);
        CREATE INDEX run_params_run ON run_params(run_id);
        """
    )
    db.executemany(
        "INSERT INTO runs VALUES (?, ?, ?)",
        ((run_id(i), T0 + i * 60, f"t{i % TENANTS:03d}") for i in range(runs)),
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        ((run_id(i), name, i * 0.5) for i in range(runs) for name in ("pnl", "sharpe")),
    )
    db.executemany(
        "INSERT INTO run_params (run_id, params) VALUES (?, ?)",
        ((run_id(i), f'{{"seed": {i}}}') for i in range(runs)),
    )
    db.commit()
    db.close()
    (root / "retention.toml").write_text(
        '[catalog]\nchild_tables = [{ table = "run_metrics", column = "run_id" },'
        ' { table = "run_params", column = "run_id" }]\n'
    )
    for i in range(dirs):
        d = arts / run_id(i)
        d.mkdir()
        for k, name in enumerate(FILES):
            (d / name).write_bytes(b"x" * (128 << k))


# Run a command in a child of a fresh interpreter, so RUSAGE_CHILDREN's peak is its own.
_MEASURE = (
    "import resource, subprocess, sys;"
    "r = subprocess.run(sys.argv[1:]).returncode;"
    "sys.stderr.write(f'\\nRSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n');"
    "sys.exit(r)"
)


def settle() -> None:
    """Write back the bench's own dirty pages (a copy of the workspace is hundreds of
    thousands of files) before a command is timed, so that no command or floor pays for
    them in its fsyncs or shares the cores with the kernel's writeback."""
    if hasattr(os, "sync"):
        os.sync()


def timed(cmd: list[str], cwd: Path, stdout: Any = None) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one command (after `settle`)."""
    settle()
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, stdout=stdout, stderr=subprocess.PIPE
    )
    took = time.perf_counter() - t0
    err = p.stderr.decode()
    if p.returncode not in (0, 3):
        sys.exit(f"{cmd[1] if len(cmd) > 1 else cmd[0]} failed: {err}")
    return took, int(err.rsplit("RSS ", 1)[1])


def fsyncs(cmd: list[str], cwd: Path) -> int:
    """fsync + fdatasync calls of ``cmd`` and its children (strace -f -c)."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as log:
        subprocess.run(
            ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", log.name, *cmd],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        text = Path(log.name).read_text()
    return sum(
        int(m.group(1)) for m in re.finditer(r"\s(\d+)(?:\s+\d+)?\s+(?:fsync|fdatasync)\n", text)
    )


SCAN = r"""
import os, sqlite3, sys
root, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(f"file:{os.path.join(root, 'data/catalog.db')}?mode=ro", uri=True)
rows = db.execute("SELECT run_id, created_at FROM runs").fetchall()
arts = os.path.join(root, "data/backtests")
for rid, _ in sorted(rows, key=lambda r: r[1])[:n]:
    with os.scandir(os.path.join(arts, rid)) as it:
        for e in it:
            e.stat(follow_symlinks=False)
"""

# apply's floors share their start (the 100,000 oldest runs' ids, a staging directory) and
# the transaction's start (the directories' fsyncs, a temp table of the ids).
_FLOOR_START = r"""
import os, sqlite3, sys
root, n = sys.argv[1], int(sys.argv[2])
ids = [f"r{i:08d}" for i in range(n)]
arts = os.path.join(root, "data/backtests")
trash = os.path.join(arts, ".trash")
os.mkdir(trash)

def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
"""

# A temp table of the ids (``ids``), that set-based statements join against.
_IDS_TABLE = r"""
db.execute("CREATE TEMP TABLE ids (id PRIMARY KEY)")
db.executemany("INSERT INTO ids VALUES (?)", ((i,) for i in ids))
"""

_FLOOR_BEGIN = (
    r"""
for d in (arts, trash):
    fsync_dir(d)
db = sqlite3.connect(os.path.join(root, "data/catalog.db"), isolation_level=None)
db.execute("PRAGMA synchronous=FULL")
db.execute("BEGIN IMMEDIATE")
"""
    + _IDS_TABLE
)

BARE = (
    _FLOOR_START
    + r"""
for i in ids:
    os.rename(os.path.join(arts, i), os.path.join(trash, i))
"""
    + _FLOOR_BEGIN
    + r"""
for t in ("run_metrics", "run_params", "runs"):
    db.execute(f"DELETE FROM {t} WHERE run_id IN (SELECT id FROM ids)")
db.execute("COMMIT")
"""
)

# Each run's rows read (one join per table on the temp table of ids) and fingerprinted
# (one sha256 per run): what a plan must do so that apply can refuse what changed since,
# and what apply must do again inside its transaction to refuse it.
_FINGERPRINTS = r"""
import hashlib
by_run = {}
for t in ("runs", "run_metrics", "run_params"):
    for row in db.execute(f"SELECT t.* FROM {t} AS t JOIN ids ON ids.id = t.run_id"):
        by_run.setdefault(row[0] if t == "runs" else row[1], []).append(row)
fps = {rid: hashlib.sha256(repr(rs).encode()).hexdigest() for rid, rs in by_run.items()}
"""

# The least any plan must do that fingerprints what it would delete: the scan floor, plus
# reading the candidates' rows from every table and one sha256 per run over them.
SAFE_SCAN = (
    r"""
import os, sqlite3, sys
root, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(f"file:{os.path.join(root, 'data/catalog.db')}?mode=ro", uri=True)
rows = db.execute("SELECT run_id, created_at FROM runs").fetchall()
ids = [rid for rid, _ in sorted(rows, key=lambda r: r[1])[:n]]
arts = os.path.join(root, "data/backtests")
for rid in ids:
    with os.scandir(os.path.join(arts, rid)) as it:
        for e in it:
            e.stat(follow_symlinks=False)
"""
    + _IDS_TABLE
    + _FINGERPRINTS
)

# Before the first rename: whether each directory is there (one lstat each: an intent is
# written only for one that is), then what each will be moved to, written and fsynced
# (with the directory holding it) as one file: write-ahead intents a crash is recovered
# from. And the journal's two closing records (committed, done), each fsynced.
_INTENTS = r"""
for i in ids:
    os.lstat(os.path.join(arts, i))
journal = open(os.path.join(root, "intents"), "wb")
journal.write(b"".join(b"%s .trash/%s\n" % (i.encode(), i.encode()) for i in ids))
journal.flush()
os.fsync(journal.fileno())
fsync_dir(root)
"""
_JOURNAL_END = r"""
for record in (b"committed\n", b"done\n"):
    journal.write(record)
    journal.flush()
    os.fsync(journal.fileno())
"""

# The renames of the safe floors: the two directories fsynced after every 10,000 (as
# apply's batches of moves do), before the transaction's own fsyncs of them.
_BATCH_FSYNC = r"""
    if k % 10_000 == 0:
        for d in (arts, trash):
            fsync_dir(d)
"""

# The safe floors' commit: a copy of every deleted row into a tombstone table (INSERT ...
# SELECT on the temp table of ids), the DELETEs, in one transaction.
_TOMBS_AND_DELETES = (
    r"""
db.execute("CREATE TABLE txids (txid TEXT PRIMARY KEY)")  # what recovery decides on
db.execute("INSERT INTO txids VALUES ('t-1')")
for t in ("run_metrics", "run_params", "runs"):
    db.execute(f"CREATE TABLE tomb_{t} AS SELECT * FROM {t} WHERE 0")
    db.execute(f"INSERT INTO tomb_{t} SELECT * FROM {t} WHERE run_id IN (SELECT id FROM ids)")
    db.execute(f"DELETE FROM {t} WHERE run_id IN (SELECT id FROM ids)")
db.execute("COMMIT")
"""
    + _JOURNAL_END
)

# The least any apply must do that is recoverable, re-checks each directory and each run's
# rows for drift and can undo, in one process: the bare floor, plus the intents written
# first, an lstat walk of each directory before its rename, the rows fingerprinted again
# in the transaction (one process has no other time for it) and the tombstones.
SAFE = (
    _FLOOR_START
    + _INTENTS
    + r"""
for k, i in enumerate(ids, 1):
    with os.scandir(os.path.join(arts, i)) as it:
        for e in it:
            e.stat(follow_symlinks=False)
    os.rename(os.path.join(arts, i), os.path.join(trash, i))
"""
    + _BATCH_FSYNC
    + _FLOOR_BEGIN
    + _FINGERPRINTS
    + r"""
if len(fps) != len(ids):
    sys.exit("runs missing")
"""
    + _TOMBS_AND_DELETES
)

# The safe floor on two cores: the same work, with the walk and then the rows' fingerprints
# in a second process, beside the renames (each directory is renamed once the walker has
# been through it), as apply's measuring worker and its fingerprints helper do (the commit
# then only asks SQLite whether anyone wrote since: `PRAGMA data_version`). The least a
# recoverable, drift-checked, undoable apply can take here.
SAFE_2CORES = (
    _FLOOR_START
    + _INTENTS
    + r"""
r, w = os.pipe()
pid = os.fork()  # (before this process opens the catalog: the child opens its own)
if pid == 0:
    os.close(r)
    out = os.fdopen(w, "wb", buffering=1 << 16)
    for k, i in enumerate(ids, 1):
        with os.scandir(os.path.join(arts, i)) as it:
            for e in it:
                e.stat(follow_symlinks=False)
        out.write(b".")
        if k % 256 == 0:  # in frames of 256 walks, as apply's worker sends its measures
            out.flush()
    out.flush()
    db = sqlite3.connect(f"file:{os.path.join(root, 'data/catalog.db')}?mode=ro", uri=True)
    db.execute("PRAGMA data_version")
"""
    + textwrap.indent(_IDS_TABLE + _FINGERPRINTS, "    ")
    + r"""
    out.write(b"F" if len(fps) == len(ids) else b"?")
    out.close()
    os._exit(0)
os.close(w)
walked = os.fdopen(r, "rb", buffering=1 << 16)
for k, i in enumerate(ids, 1):
    if walked.read(1) != b".":
        sys.exit("the walker died")
    os.rename(os.path.join(arts, i), os.path.join(trash, i))
"""
    + _BATCH_FSYNC
    + r"""
if walked.read(1) != b"F":
    sys.exit("the rows' fingerprints failed")
if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
    sys.exit("the walker failed")
"""
    + _FLOOR_BEGIN
    + r"""
db.execute("PRAGMA data_version")
"""
    + _TOMBS_AND_DELETES
)

NAIVE = r"""
import os, shutil, sqlite3, sys
root, n, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
arts = os.path.join(root, "data/backtests")
db = sqlite3.connect(os.path.join(root, "data/catalog.db"))
db.execute("PRAGMA synchronous=FULL")
for i in range(start, start + n):
    rid = f"r{i:08d}"
    shutil.rmtree(os.path.join(arts, rid))
    for t in ("run_metrics", "run_params", "runs"):
        db.execute(f"DELETE FROM {t} WHERE run_id = ?", (rid,))
    db.commit()
"""


def fig(measured: tuple[float, int]) -> dict[str, float]:
    """A timed command's figures: seconds and peak RSS in KiB."""
    return {"s": measured[0], "rss_kib": measured[1]}


def copy(template: Path, dst: Path) -> Path:
    """A fresh copy of a workspace (``cp -a``: several times faster than copytree for
    400,000 small files; copytree where there is no cp)."""
    shutil.rmtree(dst, ignore_errors=True)
    if shutil.which("cp"):
        subprocess.run(["cp", "-a", str(template), str(dst)], check=True)
    else:
        shutil.copytree(template, dst, symlinks=True)
    return dst


def startup(cmd: list[str], cwd: Path) -> float:
    """Best of five wall times of a short command (after `settle`)."""
    settle()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(base: Path, template: Path, runs: int, dirs: int, args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {"runs": runs, "dirs": dirs, "child_rows_per_run": 3}
    keep = str(runs - dirs)
    ws = copy(template, base / "ours")
    with open(ws / "manifest.json", "wb") as f:
        plans = [timed([EXE, "plan", "--keep-last", keep], ws, f)]
    out["manifest_bytes"] = (ws / "manifest.json").stat().st_size
    # A no-op status on the whole catalog with nothing in trash yet; again after the apply,
    # when it also sums the apply's tombstones and their pages.
    out["status_noop_s"] = startup([EXE, "status"], ws)
    # The scan floors read the copy plan read (read-only), the faster of two runs: a floor
    # must not look slow because its files went cold while other copies were made. The
    # scan floor is taken again after each round's plan, on that plan's copy.
    scans: list[tuple[float, int]] = []

    def scan_floor(copy_: Path, script: str = SCAN) -> tuple[float, int]:
        return min(
            timed([sys.executable, "-c", script, str(copy_), str(dirs)], base) for _ in range(2)
        )

    scans.append(scan_floor(ws))
    out["safe_scan_floor"] = fig(scan_floor(ws, SAFE_SCAN))
    # plan, its scan floor, apply, apply's floors and undo: the fastest of --rounds samples,
    # taken in turn, so that one slow spell of the machine does not decide a ratio; every
    # sample is kept in the JSON. Each round: the floors, each on a fresh copy, then plan,
    # the scan floor, apply and undo on one more (the first round's plan and scan floor
    # come before the loop, on the copy the start-up figures use; its undo is of a copy of
    # its apply, which purge starts from later).
    samples: dict[str, list[tuple[float, int]]] = {
        "bare_floor": [],
        "safe_floor": [],
        "safe_floor_2cores": [],
        "apply": [],
        "undo": [],
    }
    undo = [EXE, "undo", "--within", "3650d"]
    floors = (("bare_floor", BARE), ("safe_floor", SAFE), ("safe_floor_2cores", SAFE_2CORES))
    for k in range(args.rounds):
        for name, script in floors:
            floor = copy(template, base / name)
            samples[name].append(
                timed([sys.executable, "-c", script, str(floor), str(dirs)], floor)
            )
            shutil.rmtree(floor)
        if k == 0:  # the copy plan was timed on: purge (later) starts from its apply
            samples["apply"].append(timed([EXE, "apply", "manifest.json"], ws, subprocess.DEVNULL))
            undone = copy(ws, base / "ours-undo")
            samples["undo"].append(timed(undo, undone, subprocess.DEVNULL))
            shutil.rmtree(undone)
            continue
        # A copy of a catalog is another catalog: it gets its own plan, another sample of
        # plan's.
        again = copy(template, base / "apply-again")
        with open(again / "manifest.json", "wb") as f:
            plans.append(timed([EXE, "plan", "--keep-last", keep], again, f))
        scans.append(scan_floor(again))
        samples["apply"].append(timed([EXE, "apply", "manifest.json"], again, subprocess.DEVNULL))
        samples["undo"].append(timed(undo, again, subprocess.DEVNULL))  # of that apply
        shutil.rmtree(again)
    samples["plan"] = plans
    samples["scan_floor"] = scans
    for name, got in samples.items():
        out[name] = {**fig(min(got)), "samples_s": [round(s, 3) for s, _ in got]}
    # Each round's command against the floor taken beside it (the same minutes of the
    # machine; undo against the apply it undid): the median of these says what one slow
    # spell cannot. Of the samples as the JSON gives them (to the millisecond).
    out["round_ratios"] = {
        f"{cmd}/{floor}": [
            round(c / f, 4)
            for c, f in zip(out[cmd]["samples_s"], out[floor]["samples_s"], strict=True)
        ]
        for cmd, floor in (
            ("plan", "scan_floor"),
            ("apply", "bare_floor"),
            ("apply", "safe_floor_2cores"),
            ("undo", "apply"),
            # what the least safe apply costs over the bare one, in the same minutes
            ("safe_floor_2cores", "bare_floor"),
        )
    }
    # The naive way: --rounds samples of --naive-sample runs each (different runs of one
    # copy), the fastest scaled to all the directories.
    sample = min(args.naive_sample, dirs // args.rounds)
    naive = copy(template, base / "naive")
    naive_s = [
        timed([sys.executable, "-c", NAIVE, str(naive), str(sample), str(k * sample)], naive)
        for k in range(args.rounds)
    ]
    took, rss = min(naive_s)
    out["naive"] = {
        "s": took * dirs / sample,
        "rss_kib": rss,
        "sample": sample,
        "sample_s": took,
        "samples_s": [round(s, 3) for s, _ in naive_s],
    }
    shutil.rmtree(naive)
    purged = copy(ws, base / "ours-purge")
    out["purge"] = fig(timed([EXE, "purge", "--all"], purged, subprocess.DEVNULL))
    shutil.rmtree(purged)
    rmrf = base / "rm-rf"
    copy(ws / "data/backtests/.trash", rmrf)
    out["rm_rf"] = fig(timed(["rm", "-rf", str(rmrf)], base))
    empty = base / "empty"
    shutil.rmtree(empty, ignore_errors=True)
    empty.mkdir()
    out["help_s"] = startup([EXE, "--help"], empty)
    out["status_trash_s"] = startup([EXE, "status"], ws)
    if args.fsyncs and shutil.which("strace"):
        counts = {}
        w = copy(template, base / "fsync-plan")
        counts["plan"] = fsyncs([EXE, "plan", "--keep-last", keep, "-o", "m.json"], w)
        counts["apply"] = fsyncs([EXE, "apply", "m.json"], w)
        u = copy(w, base / "fsync-undo")
        counts["undo"] = fsyncs([EXE, "undo", "--within", "3650d"], u)
        counts["purge"] = fsyncs([EXE, "purge", "--all"], w)
        counts["bare_floor"] = fsyncs(
            [sys.executable, "-c", BARE, str(copy(template, base / "fsync-bare")), str(dirs)], base
        )
        out["fsyncs"] = counts
    if args.sizes:
        sizes(ws, catalog_size(template))
    return out


def report(r: dict) -> None:
    dirs, runs = r["dirs"], r["runs"]

    def row(name: str, what: dict, floor: str, ratio: float | None, goal: str, rate: str) -> None:
        rat = f"{ratio:6.2f}x" if ratio is not None else " " * 7
        print(
            f"{name:<7} {what['s']:8.2f} s  {what['rss_kib'] / 1024:7.1f} MiB  {floor:<22}"
            f" {rat}  {goal:<10} {rate}"
        )

    print(
        f"{runs:,} runs x 3 child rows, {dirs:,} directories of 4 files;"
        f" manifest {r['manifest_bytes'] / 2**20:.1f} MiB"
    )
    print(
        f"plan, apply, its floors, undo and the naive way: the fastest of"
        f" {len(r['apply']['samples_s'])} samples"
    )
    print("command     time      peak RSS   against                 ratio   goal       rate")
    p, a, u = r["plan"], r["apply"], r["undo"]
    row(
        "plan",
        p,
        f"scan {r['scan_floor']['s']:.2f} s",
        p["s"] / r["scan_floor"]["s"],
        "<= 2x",
        f"{runs / p['s']:,.0f} runs/s",
    )
    row(
        "apply",
        a,
        f"bare {r['bare_floor']['s']:.2f} s",
        a["s"] / r["bare_floor"]["s"],
        "<= 1.5x",
        f"{dirs / a['s']:,.0f} dirs/s",
    )
    s1, s2, bare = r["safe_floor"]["s"], r["safe_floor_2cores"]["s"], r["bare_floor"]["s"]
    print(
        f"{'':<7} the safety floors (the least work of a fingerprinting plan and of a"
        " recoverable, drift-checked, undoable apply):"
        f" plan {p['s'] / r['safe_scan_floor']['s']:.2f}x"
        f" of {r['safe_scan_floor']['s']:.2f} s, apply {a['s'] / s1:.2f}x of {s1:.2f} s"
        f" ({s1 / bare:.2f}x bare) and {a['s'] / s2:.2f}x of {s2:.2f} s on two cores"
        f" ({s2 / bare:.2f}x bare)"
    )
    print(
        f"{'':<7} round by round, each against what was taken in the same round: "
        + "; ".join(
            f"{pair} {', '.join(f'{x:.2f}x' for x in got)} (median {statistics.median(got):.2f}x)"
            for pair, got in r["round_ratios"].items()
        )
    )
    naive = r["naive"]
    print(
        f"{'':<7} naive way {naive['s']:.1f} s (timed on {naive['sample']:,} runs:"
        f" {naive['sample_s']:.2f} s, scaled): apply is {naive['s'] / a['s']:.1f}x faster"
        " (goal >= 10x)"
    )
    row(
        "undo", u, f"apply {a['s']:.2f} s", u["s"] / a["s"], "<= 2x", f"{dirs / u['s']:,.0f} dirs/s"
    )
    row(
        "purge",
        r["purge"],
        f"rm -rf {r['rm_rf']['s']:.2f} s",
        r["purge"]["s"] / r["rm_rf"]["s"],
        "<= 1.2x",
        f"{dirs / r['purge']['s']:,.0f} dirs/s",
    )
    print(
        f"start-up: --help {r['help_s'] * 1000:.0f} ms, no-op status"
        f" {r['status_noop_s'] * 1000:.0f} ms (goal < 150 ms; {r['status_trash_s'] * 1000:.0f} ms"
        f" with the apply's {dirs:,} runs in trash); peak RSS goal < 400 MiB"
    )
    if "fsyncs" in r:
        print("fsync + fdatasync calls: " + ", ".join(f"{k} {v:,}" for k, v in r["fsyncs"].items()))


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
    rows: list[tuple[str, int, int, int | None, float | None]] = [
        ("before apply", *before, None, None)
    ]
    st = subprocess.run([EXE, "status", "--json"], cwd=ws, capture_output=True, check=True)
    use = json.loads(st.stdout)["catalog_usage"]
    rows.append(("after apply", *catalog_size(ws), use["tombstone_bytes"], None))
    vac = copy(ws, ws.parent / "ours-vacuum")
    purged = copy(ws, ws.parent / "ours-purged")
    for label, where, extra in (
        ("after purge --all", purged, []),
        ("after purge --all --vacuum", vac, ["--vacuum"]),
    ):
        with tempfile.TemporaryFile() as out:
            purge_s, _ = timed([EXE, "purge", "--all", *extra], where, stdout=out)
            out.seek(0)
            rep = json.load(out)
        assert rep["purged"], rep
        rows.append((label, *catalog_size(where), None, purge_s))
    mib = 2**20
    print("catalog (file + WAL)          size        free pages   tombstones    took")
    for label, size, free, tomb, spent in rows:
        t = f"{tomb / mib:9.1f} MiB" if tomb is not None else " " * 13
        s = f"{spent:7.2f} s" if spent is not None else ""
        print(f"  {label:<27} {size / mib:8.1f} MiB  {free / mib:8.1f} MiB  {t}  {s}")


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


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(load[0], 2),
        "sqlite": sqlite3.sqlite_version,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--dirs", "--delete", dest="dirs", type=int, default=100_000)
    ap.add_argument(
        "--naive-sample", type=int, default=2_000, help="runs the naive way is timed on"
    )
    ap.add_argument(
        "--journal", choices=("wal", "delete"), default="wal", help="the catalog's journal mode"
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="samples of plan, its scan floor, apply, apply's floors, undo and the naive way"
        " (on one copy): the fastest counts (default 3)",
    )
    ap.add_argument("--fsyncs", action="store_true", help="also count fsyncs (strace)")
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
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    args = ap.parse_args()
    if not 1 <= args.rounds <= args.dirs:
        ap.error("--rounds must be at least 1 and at most --dirs")
    base = args.dir or Path(tempfile.mkdtemp(prefix="retention-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    template = base / "template"
    if template.exists():
        shutil.rmtree(template)
    info = machine()
    t0 = time.perf_counter()
    build(template, args.runs, args.dirs, args.journal)
    print(
        f"built {args.runs:,} runs, {args.dirs:,} directories in {time.perf_counter() - t0:.1f} s"
        f" (load {info['loadavg_1m_at_start']} on {info['cpus']} cpus)"
    )
    try:
        if args.policies:
            policies(template, args.runs, args.dirs)
            return
        figures = measure(base, template, args.runs, args.dirs, args)
        figures["machine"] = info
        report(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        if args.dir is None:
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
