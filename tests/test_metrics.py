"""--metrics-file (Prometheus text exposition, read back with prometheus_client's own
parser), --output-json, and the format_version / kind every JSON document carries."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from retention import metrics

from . import crashkit as ck
from .conftest import invoke


def _samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the file as prometheus_client parses it."""
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _cmd_series(samples: dict, command: str) -> set[str]:
    return {name for name, labels in samples if ("command", command) in labels}


def test_apply_metrics_parsed_by_prometheus_client_equal_the_report(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "--metrics-file", "apply.prom")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    s = _samples(workspace / "apply.prom")
    assert report["deleted_runs"] == 10
    assert _get(s, "retention_last_runs", command="apply", outcome="deleted") == 10
    assert (
        _get(s, "retention_last_bytes", command="apply", outcome="deleted")
        == (report["bytes_moved"])
    )
    assert _get(s, "retention_last_runs", command="apply", outcome="skipped") == len(
        report["skipped"]
    )
    assert _get(s, "retention_last_exit_code", command="apply") == 0
    assert _get(s, "retention_last_duration_seconds", command="apply") == (
        report["duration_ms"] / 1000
    )
    ran = _get(s, "retention_last_run_timestamp_seconds", command="apply")
    assert _get(s, "retention_last_success_timestamp_seconds", command="apply") == ran
    assert abs(ran - __import__("time").time()) < 60
    # an ungrouped manifest has no per-group series
    assert "retention_last_group_runs" not in {name for name, _ in s}
    # written atomically: no temp file left beside it
    assert not [p for p in os.listdir(workspace) if ".tmp-" in p]


def test_grouped_apply_metrics_count_runs_and_bytes_per_group_as_the_catalog_had_them(
    workspace: Path,
) -> None:
    plan = invoke("plan", "--keep-last", "3", "--group-by", "strategy", "-o", "m.json")
    assert plan.exit_code == 0, plan.stderr
    manifest = json.loads(Path("m.json").read_text())["payload"]
    size = {e["run_id"]: e["bytes"] for e in manifest["entries"]}
    db = sqlite3.connect(workspace / "data" / "catalog.db")
    strategy = dict(db.execute("SELECT run_id, strategy FROM runs").fetchall())
    db.close()
    result = invoke("apply", "m.json", "--metrics-file", "apply.prom")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    expected: dict[str, list[int]] = {}
    for rid in report["deleted_run_ids"]:
        g = expected.setdefault(f"strategy={strategy[rid]}", [0, 0])
        g[0] += 1
        g[1] += size[rid]
    s = _samples(workspace / "apply.prom")
    got = {
        (name, labels): value
        for (name, labels), value in s.items()
        if name in ("retention_last_group_runs", "retention_last_group_bytes")
    }
    assert len(got) == 2 * len(expected) and len(expected) >= 2
    for group, (runs, nbytes) in expected.items():
        labels = {"command": "apply", "outcome": "deleted", "group": group}
        assert _get(s, "retention_last_group_runs", **labels) == runs
        assert _get(s, "retention_last_group_bytes", **labels) == nbytes
    assert (
        sum(v for (n, _), v in s.items() if n == "retention_last_group_runs")
        == (report["deleted_runs"])
    )


def test_undo_and_purge_metrics_equal_their_reports_and_share_one_file(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    applied = json.loads(invoke("apply", str(m), "--metrics-file", "r.prom").stdout)
    undone = invoke("undo", applied["txid"], "--metrics-file", "r.prom")
    assert undone.exit_code == 0, undone.stderr
    u = json.loads(undone.stdout)
    s = _samples(workspace / "r.prom")
    restored = sum(len(x["restored"]) for x in u["undone"])
    assert restored == 10
    assert _get(s, "retention_last_runs", command="undo", outcome="restored") == restored
    assert _get(s, "retention_last_runs", command="undo", outcome="conflicts") == 0
    assert (
        _get(s, "retention_last_bytes", command="undo", outcome="restored")
        == (applied["bytes_moved"])
    )
    # the apply's series are still there, untouched
    assert _get(s, "retention_last_runs", command="apply", outcome="deleted") == 10

    m = ck.plan(workspace, keep_last=20)
    assert invoke("apply", str(m)).exit_code == 0
    purged = invoke("purge", "--all", "--metrics-file", "r.prom")
    assert purged.exit_code == 0, purged.stderr
    p = json.loads(purged.stdout)
    s = _samples(workspace / "r.prom")
    assert p["runs"] == 20
    assert _get(s, "retention_last_runs", command="purge", outcome="purged") == p["runs"]
    assert _get(s, "retention_last_bytes", command="purge", outcome="purged") == p["bytes"]
    assert _get(s, "retention_last_exit_code", command="purge") == 0
    assert {"apply", "undo", "purge"} == {
        dict(labels)["command"] for _, labels in s if labels and "command" in dict(labels)
    }


def test_a_failed_apply_records_its_exit_code_and_keeps_the_last_success_time(
    workspace: Path,
) -> None:
    m = ck.plan(workspace, keep_last=30)
    assert invoke("apply", str(m), "--metrics-file", "apply.prom").exit_code == 0
    before = _samples(workspace / "apply.prom")
    success = _get(before, "retention_last_success_timestamp_seconds", command="apply")
    tampered = workspace / "tampered.json"
    tampered.write_text(m.read_text().replace('"bt-', '"xx-', 1))
    result = invoke("apply", str(tampered), "--metrics-file", "apply.prom")
    assert result.exit_code == 5, result.stderr
    s = _samples(workspace / "apply.prom")
    assert _get(s, "retention_last_exit_code", command="apply") == 5
    assert _get(s, "retention_last_success_timestamp_seconds", command="apply") == success
    assert _get(s, "retention_last_run_timestamp_seconds", command="apply") >= success
    # nothing was done: no counts claimed for the failed run
    assert "retention_last_runs" not in _cmd_series(s, "apply")


def test_a_metrics_file_that_cannot_be_written_is_exit_8_after_the_work_is_reported(
    workspace: Path,
) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "--metrics-file", "no/such/dir/apply.prom")
    assert result.exit_code == 8
    assert json.loads(result.stdout)["deleted_runs"] == 10  # the work was done and reported
    assert "Error: cannot write metrics file no/such/dir/apply.prom" in result.stderr


def test_output_json_holds_exactly_the_bytes_printed_on_stdout(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    runs: list[tuple[str, ...]] = [
        ("apply", str(m)),
        ("undo", "--within", "3650d"),
        ("recover",),
        ("purge",),
    ]
    for args in runs:
        result = invoke(*args, "--output-json", "report.json")
        assert result.exit_code == 0, (args, result.stderr)
        assert (workspace / "report.json").read_bytes() == result.stdout_bytes, args
        assert not [p for p in os.listdir(workspace) if ".tmp-" in p]


def _head(stdout: str) -> tuple[Any, Any]:
    doc = json.loads(stdout)
    assert list(doc)[:2] == ["format_version", "kind"]
    return doc["format_version"], doc["kind"]


def test_every_report_and_json_output_starts_with_format_version_and_kind(
    workspace: Path,
) -> None:
    m = ck.plan(workspace, keep_last=30)
    show = invoke("show", str(m), "--json")
    assert _head(show.stdout) == ("1.0", "show-report")
    assert "manifest_id" in json.loads(show.stdout)  # the old fields stay
    applied = invoke("apply", str(m))
    assert _head(applied.stdout) == ("1.0", "apply-report")
    assert json.loads(applied.stdout)["version"] == 1
    assert _head(invoke("status", "--json").stdout) == ("1.0", "status-report")
    assert _head(invoke("check", "--json").stdout) == ("1.0", "check-report")
    assert _head(invoke("config", "--json").stdout) == ("1.0", "config-report")
    run_id = json.loads(applied.stdout)["deleted_run_ids"][0]
    assert _head(invoke("explain", run_id, str(m), "--json").stdout)[1] == "explain-report"
    assert _head(invoke("undo", "--within", "3650d").stdout) == ("1.0", "undo-report")
    assert _head(invoke("recover").stdout) == ("1.0", "recover-report")
    assert _head(invoke("purge").stdout) == ("1.0", "purge-report")


def test_output_json_and_metrics_file_on_the_same_path_are_refused(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "--output-json", "x", "--metrics-file", "./x")
    assert result.exit_code == 2
    assert "name the same file" in result.stderr
    assert not (workspace / "x").exists()


def test_label_values_with_quotes_backslashes_and_newlines_survive_prometheus_parsing(
    tmp_path: Path,
) -> None:
    weird = 'org="a\\b"\nnext'
    outcome = metrics.Outcome(
        "apply",
        0,
        1.5,
        1_700_000_000.25,
        runs={"deleted": 3, "skipped": 0},
        bytes={"deleted": 1234},
        groups=[metrics.GroupCount(weird, 3, 1234)],
    )
    path = tmp_path / "m.prom"
    metrics.write_metrics(path, outcome)
    s = _samples(path)
    labels = {"command": "apply", "outcome": "deleted", "group": weird}
    assert _get(s, "retention_last_group_runs", **labels) == 3
    assert _get(s, "retention_last_duration_seconds", command="apply") == 1.5
    assert _get(s, "retention_last_run_timestamp_seconds", command="apply") == 1_700_000_000.25
    # our own reader (used to keep the other commands' series) reads it back the same
    assert {(x.name, x.labels, x.value) for x in metrics.parse(path.read_text())} == {
        (name, labels, value) for (name, labels), value in s.items()
    }


def test_an_apply_with_skipped_entries_counts_them_and_still_succeeds(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    first = json.loads(m.read_text())["payload"]["entries"][0]
    (workspace / "data" / "backtests" / first["path"] / "new.txt").write_text("changed")
    result = invoke("apply", str(m), "--metrics-file", "apply.prom")
    assert result.exit_code == 3, result.stderr
    report = json.loads(result.stdout)
    s = _samples(workspace / "apply.prom")
    assert len(report["skipped"]) == 1 and report["deleted_runs"] == 9
    assert _get(s, "retention_last_runs", command="apply", outcome="skipped") == 1
    assert _get(s, "retention_last_runs", command="apply", outcome="deleted") == 9
    assert _get(s, "retention_last_exit_code", command="apply") == 3
    assert _get(s, "retention_last_success_timestamp_seconds", command="apply") == _get(
        s, "retention_last_run_timestamp_seconds", command="apply"
    )
