"""Benchmark the JSON-document catalog (issue 10): plan and apply against msgspec's load +
dump of the same document.

Builds the async job store of ``examples/async-jobstore`` (``make_sample.py``) with about
``--records`` result and event records (default 100,000: a document of about 50 MB), then
measures, each in a fresh copy and a fresh interpreter (wall time, peak RSS):

* the *floor*, in one process: read the document and decode it (``msgspec.json.decode``),
  encode it again and write it to a temp file with one fsync, then rename it over the
  original (the least any tool must do to rewrite the document durably);
* ``retention plan -o m.json`` (both targets, the example's TTLs);
* ``retention apply m.json`` of that manifest, on the document as planned (its digest is the
  manifest's: no record can have changed), and on a copy the application rewrote after the
  plan (a job added: every entry is then looked up and its fingerprint compared);

and prints each with its ratio to the floor (issue 10's goal: within 2x for both).
``--json FILE`` writes the same figures as JSON. Run it as ``./scripts/bench --jobstore``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import EXE, machine, timed  # (the same measuring as scripts/bench)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "async-jobstore"
STORE = Path("runtime/async_jobs/store.v1.json")
NOW = "2026-06-01T00:00:00Z"
RECORDS_PER_JOB = 3.2  # one result and about 2.2 events per job, as make_sample.py draws

FLOOR = """
import os, sys, msgspec
path = sys.argv[1]
with open(path, "rb") as f:
    doc = msgspec.json.decode(f.read())
data = msgspec.json.encode(doc)
tmp = path + ".floor-tmp"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, data)
os.fsync(fd)
os.close(fd)
os.replace(tmp, path)
"""


def build(template: Path, records: int) -> dict[str, int]:
    shutil.copytree(EXAMPLE, template)
    jobs = max(1, round(records / RECORDS_PER_JOB))
    subprocess.run(
        [sys.executable, "make_sample.py", "--jobs", str(jobs), "--now", NOW, "--seed", "1"],
        cwd=template,
        check=True,
        capture_output=True,
    )
    doc = json.loads((template / STORE).read_bytes())
    return {
        "jobs": len(doc["jobs"]),
        "records": len(doc["job_results"]) + len(doc["job_events"]),
        "bytes": (template / STORE).stat().st_size,
    }


def fresh(template: Path, base: Path, name: str) -> Path:
    dst = base / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(template, dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    args = ap.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="retention-bench-jobstore-"))
    base.mkdir(parents=True, exist_ok=True)
    info = machine()
    try:
        t0 = time.perf_counter()
        template = base / "template"
        if template.exists():
            shutil.rmtree(template)
        size = build(template, args.records)
        print(
            f"built {size['records']:,} records of {size['jobs']:,} jobs, a document of"
            f" {size['bytes'] / 2**20:.1f} MiB, in {time.perf_counter() - t0:.1f} s"
            f" (load {info['loadavg_1m_at_start']} on {info['cpus']} cpus)"
        )
        ws = fresh(template, base, "floor")
        floor = timed([sys.executable, "-c", FLOOR, str(ws / STORE)], ws)
        ws = fresh(template, base, "run")
        plan = timed([EXE, "plan", "--now", NOW, "-o", "m.json"], ws)
        manifest = json.loads((ws / "m.json").read_bytes())["payload"]
        deleted = sum(len(t["entries"]) for t in manifest["targets"])
        planned = fresh(ws, base, "planned")  # (a manifest names its document's path)
        apply = timed([EXE, "apply", "m.json"], ws, stdout=subprocess.DEVNULL)
        after = json.loads((ws / STORE).read_bytes())
        shutil.rmtree(ws)
        planned.rename(ws)
        doc = json.loads((ws / STORE).read_bytes())  # the application writes after the plan
        doc["jobs"]["job-new"] = {"status": "queued", "created_at": NOW}
        (ws / STORE).write_text(json.dumps(doc))
        del doc
        apply_rw = timed([EXE, "apply", "m.json"], ws, stdout=subprocess.DEVNULL)
        left = len(after["job_results"]) + len(after["job_events"])
        assert left == size["records"] - deleted, (left, size["records"], deleted)
    finally:
        if args.dir is None:
            shutil.rmtree(base)
    figures = {
        "machine": info,
        "document": size,
        "deleted": deleted,
        "floor": {"seconds": round(floor[0], 3), "peak_rss_kib": floor[1]},
        "plan": {
            "seconds": round(plan[0], 3),
            "peak_rss_kib": plan[1],
            "ratio": round(plan[0] / floor[0], 2),
        },
        "apply": {
            "seconds": round(apply[0], 3),
            "peak_rss_kib": apply[1],
            "ratio": round(apply[0] / floor[0], 2),
        },
        "apply_rewritten": {
            "seconds": round(apply_rw[0], 3),
            "peak_rss_kib": apply_rw[1],
            "ratio": round(apply_rw[0] / floor[0], 2),
        },
    }
    print("| command | time | peak RSS | against | ratio | goal |")
    print("|---|---:|---:|---|---:|---|")
    fl = figures["floor"]
    print(
        f"| load + dump (floor) | {fl['seconds']:.2f} s | {fl['peak_rss_kib'] / 1024:.1f} MiB"
        " | | | |"
    )
    shown = {
        "plan": "plan",
        "apply": "apply",
        "apply_rewritten": "apply, document rewritten since the plan",
    }
    for name, label in shown.items():
        f = figures[name]
        print(
            f"| {label} | {f['seconds']:.2f} s | {f['peak_rss_kib'] / 1024:.1f} MiB"
            f" | floor {fl['seconds']:.2f} s | {f['ratio']:.2f}x | <= 2x |"
        )
    print(f"({deleted:,} of {size['records']:,} records deleted by the apply)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("RETENTION_MANIFEST_TTL", "3650d")
    main()
