"""The benchmarks run end to end at a smoke size and write every figure their JSON promises
(issue 13 and issue 10). No timing is asserted: figures are for BENCHMARKS.md, not tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _bench(tmp_path: Path, script: str, *args: str) -> dict:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args, "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()
    figures: dict = json.loads(out.read_bytes())
    return figures


@pytest.mark.slow
def test_scripts_bench_measures_every_command_against_its_floor(tmp_path: Path) -> None:
    f = _bench(
        tmp_path,
        "bench.py",
        "--runs",
        "2000",
        "--dirs",
        "200",
        "--naive-sample",
        "40",
        "--rounds",
        "2",
    )
    for name in (
        "plan",
        "scan_floor",
        "safe_scan_floor",
        "apply",
        "bare_floor",
        "safe_floor",
        "safe_floor_2cores",
        "undo",
        "purge",
        "rm_rf",
        "naive",
    ):
        assert f[name]["s"] > 0 and f[name]["rss_kib"] > 0, name
    assert f["naive"]["sample"] == 40 and f["naive"]["sample_s"] > 0
    for name in (
        "plan",
        "scan_floor",
        "apply",
        "bare_floor",
        "safe_floor",
        "safe_floor_2cores",
        "undo",
        "naive",
    ):
        got = f[name]["samples_s"]
        assert len(got) == 2 and all(s > 0 for s in got), name
        fastest = f[name]["sample_s" if name == "naive" else "s"]
        assert fastest == pytest.approx(min(got), abs=0.001), name  # the fastest counts
    # Each round's command against the floor of the same round (of the samples as stored,
    # so to rounding only: pairing round 1 with round 2 would be off by their difference).
    ratios = f["round_ratios"]
    assert set(ratios) == {
        "plan/scan_floor",
        "apply/bare_floor",
        "apply/safe_floor_2cores",
        "undo/apply",
        "safe_floor_2cores/bare_floor",
    }
    for pair, got in ratios.items():
        cmd, floor = pair.split("/")
        want = [c / fl for c, fl in zip(f[cmd]["samples_s"], f[floor]["samples_s"], strict=True)]
        assert got == pytest.approx(want, abs=0.00006), pair
    assert (f["runs"], f["dirs"], f["child_rows_per_run"]) == (2000, 200, 3)
    assert f["manifest_bytes"] > 0
    assert f["help_s"] > 0 and f["status_noop_s"] > 0 and f["status_trash_s"] > 0
    assert {"python", "cpus", "loadavg_1m_at_start", "sqlite"} <= set(f["machine"])


@pytest.mark.slow
def test_the_job_store_bench_measures_plan_and_apply_against_load_and_dump(
    tmp_path: Path,
) -> None:
    f = _bench(tmp_path, "bench_jobstore.py", "--records", "400")
    assert f["document"]["records"] > 300 and f["document"]["bytes"] > 0
    assert 0 < f["deleted"] < f["document"]["records"]
    assert f["floor"]["seconds"] > 0 and f["floor"]["peak_rss_kib"] > 0
    for name in ("plan", "apply", "apply_rewritten"):
        assert f[name]["seconds"] > 0 and f[name]["peak_rss_kib"] > 0, name
        # (the ratio is of the unrounded times; the seconds are rounded to milliseconds)
        assert f[name]["ratio"] == pytest.approx(
            f[name]["seconds"] / f["floor"]["seconds"], abs=0.05
        )
