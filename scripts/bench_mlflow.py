"""Benchmark: `mlflow gc --older-than 30d` against `retention plan && apply && purge --all`
on copies of the same real MLflow store, whole processes, side by side.

    .venv/bin/python scripts/bench_mlflow.py --runs 300

Builds a store through MLflow's own client with ``examples/mlflow/make_sample.py`` (a third
of the runs soft-deleted 40 days ago), copies it twice (each copy's ``artifact_uri`` values
rewritten to point at its own artifact tree, so neither tool touches the other's files),
then times each tool on its copy and prints wall time, peak RSS, what each removed and the
ratio. Needs the test extra (mlflow-skinny, sqlalchemy, alembic).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "mlflow"
BIN = Path(sys.executable).parent
_MEASURE = (
    "import resource, subprocess, sys;"
    "r = subprocess.run(sys.argv[1:]).returncode;"
    "sys.stderr.write(f'\\nRSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n');"
    "sys.exit(r)"
)
ENV = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")


def timed(cmds: list[list[str]], cwd: Path) -> tuple[float, int]:
    """Wall time of the commands in a row, and the largest peak RSS (KiB) among them."""
    t0 = time.perf_counter()
    peak = 0
    for cmd in cmds:
        p = subprocess.run(
            [sys.executable, "-c", _MEASURE, *cmd],
            cwd=cwd,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        err = p.stderr.decode()
        if p.returncode not in (0, 3):
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}): {err[-2000:]}")
        peak = max(peak, int(err.rsplit("RSS ", 1)[1]))
    return time.perf_counter() - t0, peak


def copy_store(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    db = sqlite3.connect(dst / "mlruns.db")
    db.execute(
        "UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)",
        (str(src.resolve()), str(dst.resolve())),
    )
    db.execute(
        "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
        (str(src.resolve()), str(dst.resolve())),
    )
    db.commit()
    db.close()


def counts(store: Path) -> tuple[int, int]:
    """Runs in the store, and run directories in its artifact tree that still hold a file
    (`mlflow gc` removes ``<run>/artifacts`` and leaves the run's directory behind)."""
    db = sqlite3.connect(store / "mlruns.db")
    (runs,) = db.execute("SELECT count(*) FROM runs").fetchone()
    db.close()
    dirs = sum(
        1
        for exp in (store / "mlruns").iterdir()
        if exp.is_dir() and not exp.name.startswith(".")
        for run in exp.iterdir()
        if run.is_dir() and len(run.name) == 32 and any(p.is_file() for p in run.rglob("*"))
    )
    return runs, dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300, help="runs in the store (default 300)")
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="retention-bench-mlflow-"))
    template = base / "template"
    shutil.rmtree(template, ignore_errors=True)
    t0 = time.perf_counter()
    build = [sys.executable, str(EXAMPLE / "make_sample.py"), "--dir", str(template)]
    subprocess.run(
        [*build, "--runs", str(args.runs)],
        check=True,
        env=ENV,
        stdout=subprocess.DEVNULL,
    )
    shutil.copy(EXAMPLE / "retention.toml", template / "retention.toml")
    print(f"built a store of {args.runs:,} runs in {time.perf_counter() - t0:.1f} s")
    before = counts(template)

    gc_dir, ours_dir = base / "gc", base / "retention"
    for d in (gc_dir, ours_dir):
        shutil.rmtree(d, ignore_errors=True)
        copy_store(template, d)
    t_gc, rss_gc = timed(
        [
            [
                str(BIN / "mlflow"),
                "gc",
                "--backend-store-uri",
                f"sqlite:///{gc_dir / 'mlruns.db'}",
                "--tracking-uri",
                f"sqlite:///{gc_dir / 'mlruns.db'}",
                "--older-than",
                "30d",
            ]
        ],
        gc_dir,
    )
    exe = str(BIN / "retention")
    t_ours, rss_ours = timed(
        [[exe, "plan", "-o", "m.json"], [exe, "apply", "m.json"], [exe, "purge", "--all"]],
        ours_dir,
    )
    after_gc, after_ours = counts(gc_dir), counts(ours_dir)
    print(f"store before: {before[0]:,} runs, {before[1]:,} run directories")
    print(
        f"mlflow gc   {t_gc:7.2f} s   peak RSS {rss_gc / 1024:6.1f} MiB"
        f"   left {after_gc[0]:,} runs, {after_gc[1]:,} directories"
    )
    print(
        f"retention   {t_ours:7.2f} s   peak RSS {rss_ours / 1024:6.1f} MiB"
        f"   left {after_ours[0]:,} runs, {after_ours[1]:,} directories"
        "   (plan + apply + purge --all)"
    )
    print(f"mlflow gc / retention = {t_gc / t_ours:.2f}x")
    if args.json:
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "mlflow_gc": {"seconds": t_gc, "peak_rss_kib": rss_gc, "left": after_gc},
                    "retention": {
                        "seconds": t_ours,
                        "peak_rss_kib": rss_ours,
                        "left": after_ours,
                    },
                    "ratio": t_gc / t_ours,
                }
            )
        )
    if args.dir is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
