"""Scenario 2 (the async job store, issue 10) through the real executable, on the store that
``examples/async-jobstore/make_sample.py`` writes, with the example's own ``retention.toml``
as it is: per-kind TTLs, only records of terminal jobs, records without a valid timestamp
or without their job kept. What must go is computed here from the document read with the
standard library (`json`, `datetime`), never with the code under test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_exe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "async-jobstore"
STORE = Path("runtime/async_jobs/store.v1.json")
NOW = datetime(2026, 6, 1, tzinfo=UTC)
NOW_TEXT = "2026-06-01T00:00:00Z"
TERMINAL = {"completed", "failed", "canceled"}
ENV = {"RETENTION_MANIFEST_TTL": "3650d"}  # plans are made at a fixed clock
DAY = timedelta(days=1)


@pytest.fixture
def jobstore(tmp_path: Path) -> Path:
    root = tmp_path / "jobstore"
    shutil.copytree(EXAMPLE, root)
    subprocess.run(
        [sys.executable, "make_sample.py", "--jobs", "60", "--now", NOW_TEXT, "--seed", "3"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


def _load(root: Path) -> dict[str, Any]:
    with open(root / STORE, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _goes(doc: dict[str, Any], rec: Any, field: str, ttl: timedelta) -> bool:
    """The issue's rule, read independently: its job exists and is terminal, its timestamp
    parses, and it is at least ``ttl`` old at NOW."""
    if not isinstance(rec, dict):
        return False
    job = doc["jobs"].get(rec.get("job_id"))
    if not isinstance(job, dict) or job.get("status") not in TERMINAL:
        return False
    t = _time(rec.get(field))
    return t is not None and NOW - t >= ttl


def expected(doc: dict[str, Any], results_ttl: timedelta, events_ttl: timedelta) -> dict[str, set]:
    return {
        "job_results": {
            k for k, r in doc["job_results"].items() if _goes(doc, r, "created_at", results_ttl)
        },
        "job_events": {e["event_id"] for e in doc["job_events"] if _goes(doc, e, "ts", events_ttl)},
    }


def without(doc: dict[str, Any], gone: dict[str, set]) -> dict[str, Any]:
    out = dict(doc)
    out["job_results"] = {
        k: v for k, v in doc["job_results"].items() if k not in gone["job_results"]
    }
    out["job_events"] = [e for e in doc["job_events"] if e["event_id"] not in gone["job_events"]]
    return out


def _ok(proc: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == code, proc.stderr.decode()
    return proc


def _plan(root: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    _ok(
        run_exe(
            "plan",
            "--now",
            NOW_TEXT,
            "-o",
            "m.json",
            "--output-json",
            "plan.json",
            *args,
            cwd=root,
            env={**ENV, **(env or {})},
        )
    )
    report: dict[str, Any] = json.loads((root / "plan.json").read_text())
    return report


def _by_target(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["targets"]}


def test_scenario2_plan_apply_second_run_and_undo_end_to_end(jobstore: Path) -> None:
    before = _load(jobstore)
    raw_before = (jobstore / STORE).read_bytes()
    gone = expected(before, 7 * DAY, 3 * DAY)
    # The sample has every case: something to delete in both kinds, terminal jobs' old
    # records without a valid timestamp, old records of jobs still running, orphans.
    assert gone["job_results"] and gone["job_events"]
    bad_time = [
        e
        for e in before["job_events"]
        if _time(e.get("ts")) is None
        and before["jobs"].get(e["job_id"], {}).get("status") in TERMINAL
    ]
    assert bad_time
    assert any(r["job_id"] not in before["jobs"] for r in before["job_results"].values())

    report = _plan(jobstore)
    assert (jobstore / STORE).read_bytes() == raw_before  # plan is read-only
    targets = _by_target(report)
    for name in ("job_results", "job_events"):
        n = len(before[name])
        assert targets[name]["delete_count"] == len(gone[name])
        assert targets[name]["kept_count"] == n - len(gone[name])
        assert targets[name]["eligible_terminal"] == ["completed", "failed", "canceled"]
    assert report["kind"] == "jsondoc-plan-report"
    assert report["issues_count"] > 0

    shown = json.loads(_ok(run_exe("show", "m.json", "--json", cwd=jobstore, env=ENV)).stdout)
    assert shown["unchanged_since_plan"] and shown["still_there"] == report["delete_count"]
    assert {t["name"]: set(t["ids"]) for t in shown["targets"]} == gone

    proc = _ok(run_exe("apply", "m.json", "--output-json", "apply.json", cwd=jobstore, env=ENV))
    applied = json.loads((jobstore / "apply.json").read_text())
    assert json.loads(proc.stdout) == applied
    assert applied["delete_count"] == len(gone["job_results"]) + len(gone["job_events"])
    assert {k: set(v) for k, v in applied["deleted_ids"].items()} == gone
    assert {t["name"]: t["delete_count"] for t in applied["targets"]} == {
        k: len(v) for k, v in gone.items()
    }
    after = _load(jobstore)
    assert after == without(before, gone)  # only the removed records differ
    assert all(e in after["job_events"] for e in bad_time)  # never deleted

    again = _plan(jobstore)
    assert again["delete_count"] == 0
    proc = _ok(run_exe("apply", "m.json", "--output-json", "apply2.json", cwd=jobstore, env=ENV))
    second = json.loads((jobstore / "apply2.json").read_text())
    assert second["delete_count"] == 0 and second["txid"] is None
    assert _load(jobstore) == after

    status = json.loads(_ok(run_exe("status", "--json", cwd=jobstore, env=ENV)).stdout)
    assert [(a["txid"], a["records"]) for a in status["undoable"]] == [
        (applied["txid"], {k: len(v) for k, v in gone.items()})
    ]
    assert not status["interrupted"]

    proc = _ok(run_exe("undo", "--within", "24h", cwd=jobstore, env=ENV))
    undone = json.loads(proc.stdout)
    assert undone["restored_count"] == applied["delete_count"]
    assert _load(jobstore) == before
    proc = _ok(run_exe("undo", applied["txid"], cwd=jobstore, env=ENV), 9)
    assert proc.stderr.decode().startswith(f"Error: apply {applied['txid']} was already undone")


def test_ttl_comes_from_the_flag_over_the_environment_over_the_file(jobstore: Path) -> None:
    before = _load(jobstore)
    env = {"ASYNC_JOB_RESULTS_RETENTION_SECONDS": str(2 * 86400)}
    t = _by_target(_plan(jobstore, env=env))
    assert t["job_results"]["ttl_source"] == "env ASYNC_JOB_RESULTS_RETENTION_SECONDS"
    assert t["job_results"]["delete_count"] == len(
        expected(before, 2 * DAY, 3 * DAY)["job_results"]
    )
    assert t["job_events"]["delete_count"] == len(expected(before, 2 * DAY, 3 * DAY)["job_events"])

    t = _by_target(_plan(jobstore, "--ttl", "job_results=10d", "--ttl", "job_events=1d", env=env))
    want = expected(before, 10 * DAY, 1 * DAY)
    assert (t["job_results"]["ttl_source"], t["job_events"]["ttl_source"]) == ("flag", "flag")
    assert t["job_results"]["delete_count"] == len(want["job_results"])
    assert t["job_events"]["delete_count"] == len(want["job_events"])
    _ok(run_exe("apply", "m.json", cwd=jobstore, env=ENV))
    assert _load(jobstore) == without(before, want)


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        ((), {"ASYNC_JOB_EVENTS_RETENTION_SECONDS": "3 days"}, "is not a number of seconds"),
        (("--ttl", "jobs=1d"), {}, "no target is named 'jobs'"),
        (("--keep-last", "3"), {}, "--keep-last is for an SQL catalog's runs"),
    ],
)
def test_a_bad_ttl_or_flag_is_one_error_line_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    shutil.copy(EXAMPLE / "retention.toml", tmp_path)  # refused before the document is read
    proc = run_exe("plan", "-o", "m.json", *args, cwd=tmp_path, env={**ENV, **env})
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("Error: ") and says in err.splitlines()[0]
    assert "Traceback" not in err and not (tmp_path / "m.json").exists()


def test_config_refuses_targets_without_a_json_catalog_and_unknown_target_keys(
    jobstore: Path,
) -> None:
    toml = (jobstore / "retention.toml").read_text()
    (jobstore / "sql.toml").write_text(toml.replace('store.v1.json"', 'store.db"', 1))
    proc = run_exe("config", "--config", "sql.toml", cwd=jobstore, env=ENV)
    assert proc.returncode == 2
    assert "[[targets]] needs a JSON-document catalog" in proc.stderr.decode()
    (jobstore / "typo.toml").write_text(toml.replace("ttl_env =", "ttl_evn =", 1))
    proc = run_exe("config", "--config", "typo.toml", cwd=jobstore, env=ENV)
    err = proc.stderr.decode()
    assert (
        proc.returncode == 2
        and "unknown setting 'ttl_evn'" in err
        and "did you mean ttl_env" in err
    )


def test_records_changed_or_gone_since_the_plan_are_skipped_never_removed(jobstore: Path) -> None:
    before = _load(jobstore)
    gone = expected(before, 7 * DAY, 3 * DAY)
    _plan(jobstore)
    changed, removed = sorted(gone["job_results"])[:2]
    doc = _load(jobstore)  # the application rewrites its document meanwhile
    doc["job_results"][changed]["result"]["note"] = "rewritten after the plan"
    del doc["job_results"][removed]
    (jobstore / STORE).write_text(json.dumps(doc))
    proc = run_exe("apply", "m.json", cwd=jobstore, env=ENV)
    assert proc.returncode == 3, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert {(s["id"], s["reason"]) for s in report["skipped"]} == {
        (changed, "changed since the plan"),
        (removed, "gone"),
    }
    after = _load(jobstore)
    assert after["job_results"][changed] == doc["job_results"][changed]
    want = {k: v - {changed, removed} for k, v in gone.items()}
    assert after == without(doc, want)


def test_a_writer_racing_the_apply_makes_it_refuse_with_nothing_changed(
    jobstore: Path, tmp_path: Path
) -> None:
    _plan(jobstore)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env.update(
        ENV, FAILPOINT_PAUSE="jobstore.apply.after_tombstone", FAILPOINT_PAUSE_DIR=str(pause)
    )
    exe = Path(sys.executable).parent / "retention"
    proc = subprocess.Popen(
        [str(exe), "apply", "m.json"],
        cwd=jobstore,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not (pause / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    doc = _load(jobstore)  # the application writes between apply's read and its commit
    doc["jobs"]["job-new"] = {"status": "queued", "created_at": NOW_TEXT}
    (jobstore / STORE).write_text(json.dumps(doc))
    (pause / "resume").touch()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 4, err.decode()
    lines = err.decode().splitlines()
    assert (
        lines[0].startswith("Error: ") and "changed since it was read; nothing written" in lines[0]
    )
    assert _load(jobstore) == doc
    assert not [
        p for p in (jobstore / ".retention/jsondoc").rglob("*") if p.is_file()
    ]  # (tombstone and log record went)
    # planned again, it goes through
    _plan(jobstore)
    _ok(run_exe("apply", "m.json", cwd=jobstore, env=ENV))
    assert _load(jobstore) == without(doc, expected(doc, 7 * DAY, 3 * DAY))


def test_undo_refuses_a_record_whose_id_exists_again_and_keeps_it_undoable(
    jobstore: Path,
) -> None:
    before = _load(jobstore)
    gone = expected(before, 7 * DAY, 3 * DAY)
    _plan(jobstore)
    applied = json.loads(_ok(run_exe("apply", "m.json", cwd=jobstore, env=ENV)).stdout)
    back = sorted(gone["job_results"])[0]
    doc = _load(jobstore)  # the application writes a new result under the same job id
    doc["job_results"][back] = {"job_id": back, "created_at": NOW_TEXT, "result": {"new": 1}}
    (jobstore / STORE).write_text(json.dumps(doc))
    proc = run_exe("undo", applied["txid"], cwd=jobstore, env=ENV)
    assert proc.returncode == 3, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["refused_count"] == 1
    assert list(report["undone"][0]["refused"]["job_results"]) == [back]
    now = _load(jobstore)
    assert now["job_results"][back] == doc["job_results"][back]  # the new one stays
    assert now == dict(
        before, job_results={**before["job_results"], back: doc["job_results"][back]}
    )
    del now["job_results"][back]  # once it is gone again, the old one can come back
    (jobstore / STORE).write_text(json.dumps(now))
    proc = _ok(run_exe("undo", applied["txid"], cwd=jobstore, env=ENV))
    assert json.loads(proc.stdout)["restored_count"] == 1
    assert _load(jobstore)["job_results"] == before["job_results"]


def test_a_missing_or_broken_document_is_one_error_line_exit_4(jobstore: Path) -> None:
    store = jobstore / STORE
    store.write_text('{"version": 1, "jobs": {}}')  # no job_results collection
    proc = run_exe("plan", "-o", "m.json", cwd=jobstore, env=ENV)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 4 and lines == [
        f"Error: {store}: no collection 'job_results' (the top level has no 'job_results')"
    ]
    proc = run_exe("config", "--check", cwd=jobstore, env=ENV)  # every problem, each a line
    assert proc.returncode == 4
    assert proc.stderr.decode().splitlines() == [
        f"Error: targets.{name}: {store}: no collection {name!r} (the top level has no {name!r})"
        for name in ("job_results", "job_events")
    ]
    store.write_text('{"version": 1,')
    proc = run_exe("plan", "-o", "m.json", cwd=jobstore, env=ENV)
    err = proc.stderr.decode()
    assert proc.returncode == 4 and err.startswith(f"Error: {store} is not a valid JSON document")
    assert len(err.splitlines()) == 1 and not (jobstore / "m.json").exists()


def test_a_ttl_env_variable_named_retention_something_is_read_not_refused(
    jobstore: Path,
) -> None:
    from retention.config import load_config
    from retention.errors import ConfigError

    toml = jobstore / "retention.toml"
    toml.write_text(
        toml.read_text().replace("ASYNC_JOB_RESULTS_RETENTION_SECONDS", "RETENTION_RESULTS_S")
    )
    cfg = load_config(str(toml), env={"RETENTION_RESULTS_S": "3600"})
    assert {t.name: t.ttl for t in cfg.targets} == {"job_results": "3600s", "job_events": "3d"}
    assert cfg.sources["targets.job_results.ttl"] == "env RETENTION_RESULTS_S"
    with pytest.raises(ConfigError, match="did you mean RETENTION_RESULTS_S"):
        load_config(str(toml), env={"RETENTION_RESULTS_SS": "3600"})


def test_purge_forgets_tombstones_past_their_grace_period_then_undo_is_refused(
    jobstore: Path,
) -> None:
    from retention import jobstore as doc_workflow
    from retention.config import load_config

    cfg = load_config(str(jobstore / "retention.toml"), env=ENV)
    (jobstore / "m.json").write_bytes(doc_workflow.build_plan(cfg, NOW).manifest)
    txid = doc_workflow.apply(cfg, str(jobstore / "m.json")).txid
    assert txid is not None
    proc = _ok(run_exe("purge", cwd=jobstore, env=ENV))  # within the grace period: kept
    assert json.loads(proc.stdout)["purged"] == []
    later = (datetime.now(UTC) + 2 * DAY).isoformat()
    proc = _ok(run_exe("purge", "--now", later, cwd=jobstore, env=ENV))
    assert json.loads(proc.stdout)["purged"] == [txid]
    proc = run_exe("undo", txid, cwd=jobstore, env=ENV)
    assert proc.returncode == 9 and proc.stderr.decode().startswith("Error: no undoable apply")


def test_apply_waits_for_the_applications_lock_file_then_refuses_with_nothing_changed(
    jobstore: Path,
) -> None:
    import filelock

    raw = (jobstore / STORE).read_bytes()
    _plan(jobstore)
    env = {**ENV, "RETENTION_BUSY_TIMEOUT": "1s"}
    lock = filelock.FileLock(str(jobstore / "runtime/async_jobs/store.v1.json.lock"))
    with lock:  # the application is writing (the example's catalog.lock_file)
        t0 = time.monotonic()
        proc = run_exe("apply", "m.json", cwd=jobstore, env=env)
        waited = time.monotonic() - t0
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 4, lines
    assert lines[0].startswith("Error: the application's lock") and "waited 1 s" in lines[0]
    assert waited >= 1 and (jobstore / STORE).read_bytes() == raw
    assert not [p for p in (jobstore / ".retention/jsondoc").rglob("*") if p.is_file()]
    _ok(run_exe("apply", "m.json", cwd=jobstore, env=env))  # free again: it goes through
    assert (jobstore / STORE).read_bytes() != raw
