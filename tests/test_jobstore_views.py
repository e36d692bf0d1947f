"""`retention check` and `retention trash` on a JSON-document catalog (issue 10): each kind
of finding is produced by the damage it names, on a real document and state directory, and
a consistent workspace has none. In-process (`retention.jobstore_views`), except where the
command's output is the point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import jobstore
from retention.config import load_config
from retention.jobstore_views import check, explain, log, trash

from .crashkit import BASE_ENV, EXE, crashed
from .test_scenario_jobstore import EXAMPLE, NOW, NOW_TEXT, STORE

ENV = {"RETENTION_MANIFEST_TTL": "3650d"}


def _store(root: Path) -> Path:
    """The example with a store of 20 jobs."""
    shutil.copytree(EXAMPLE, root)
    subprocess.run(
        [sys.executable, "make_sample.py", "--jobs", "20", "--now", NOW_TEXT, "--seed", "9"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    """The example's store after one apply."""
    root = _store(tmp_path / "jobstore")
    cfg = _cfg(root)
    (root / "m.json").write_bytes(jobstore.build_plan(cfg, NOW).manifest)
    assert jobstore.apply(cfg, str(root / "m.json")).delete_count > 0
    return root


def _cfg(root: Path) -> Any:
    return load_config(str(root / "retention.toml"), env=ENV)


def _kinds(root: Path) -> list[str]:
    return [f.kind for f in check(_cfg(root)).findings]


def _tomb(root: Path) -> Path:
    (tomb,) = (root / ".retention/jsondoc").glob("a-*.json")
    return tomb


def test_a_consistent_workspace_has_no_finding_and_counts_the_records(applied: Path) -> None:
    rep = check(_cfg(applied))
    doc = json.loads((applied / STORE).read_bytes())
    assert rep.findings == []
    assert rep.runs_checked == len(doc["job_results"]) + len(doc["job_events"])
    assert rep.document == str((applied / STORE).resolve())


def test_a_record_put_back_by_hand_is_in_both_places_but_one_rewritten_is_not(
    applied: Path,
) -> None:
    removed = json.loads(_tomb(applied).read_bytes())["removed"]["collections"]
    results = removed["job_results"]["records"]
    doc = json.loads((applied / STORE).read_bytes())
    doc["job_results"][results[0]["id"]] = results[0]["record"]  # restored by hand
    doc["job_results"][results[1]["id"]] = {"job_id": results[1]["id"], "other": 1}  # reused
    (applied / STORE).write_text(json.dumps(doc))
    found = check(_cfg(applied)).findings
    assert [(f.kind, f.run_id) for f in found] == [("record_in_both", results[0]["id"])]


def test_a_temp_file_and_a_staging_file_left_behind_are_findings(applied: Path) -> None:
    temp = (applied / STORE).parent / ".store.v1.json.retention-tmp-4242"
    temp.write_text("{}")
    rest = applied / ".retention/jsondoc/u-20260601T000000Z-abcdef.rest.json"
    rest.write_text("{}")
    found = check(_cfg(applied)).findings
    assert sorted((f.kind, f.path) for f in found) == [
        ("staging_orphan", str(rest)),
        ("temp_file", str(temp.resolve())),
    ]


def test_a_damaged_tombstone_is_a_finding_and_the_command_exits_10(applied: Path) -> None:
    _tomb(applied).write_text('{"format_version": 1, "txid": ')
    assert _kinds(applied) == ["tombstone_damaged"]
    out = subprocess.run(
        [EXE, "check"], cwd=applied, env={**BASE_ENV, **ENV}, capture_output=True, timeout=60
    )
    assert out.returncode == 10
    assert "tombstone_damaged: 1 finding" in out.stdout.decode()


def test_trash_lists_each_removed_record_with_its_kind_and_size(applied: Path) -> None:
    tomb = json.loads(_tomb(applied).read_bytes())
    removed = {
        (name, r["id"]) for name, s in tomb["removed"]["collections"].items() for r in s["records"]
    }
    rep = trash(_cfg(applied), NOW)
    assert {(e.target, e.run_id) for e in rep.entries} == removed
    assert rep.runs == rep.undoable_runs == len(removed)
    assert rep.bytes == sum(e.bytes for e in rep.entries) > 0
    assert [a.txid for a in rep.applies] == [tomb["txid"]]
    out = subprocess.run(
        [EXE, "trash", "--limit", "2"],
        cwd=applied,
        env={**BASE_ENV, **ENV},
        capture_output=True,
        timeout=60,
    )
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0, out.stderr
    assert lines[-1].startswith(f"Trash: {len(removed)} records,")
    assert "`retention undo TXID`" in lines[-1]
    assert lines[-2] == f"... {len(removed) - 2:,} more records (--limit 0 for all)"


def test_log_keeps_each_apply_undo_and_purge_and_derives_each_apply_s_state(
    applied: Path,
) -> None:
    cfg = _cfg(applied)
    (first,) = [e.txid for e in log(cfg).entries]
    undo = jobstore.undo(cfg, txid=first, within=None)
    (again_manifest := applied / "m2.json").write_bytes(
        jobstore.build_plan(cfg, NOW + timedelta(minutes=1)).manifest
    )
    second = jobstore.apply(cfg, str(again_manifest))
    jobstore.purge(cfg, everything=True)
    rep = log(cfg)
    assert [(e.action, e.state) for e in rep.entries] == [
        ("purge", "done"),
        ("apply", "purged"),
        ("undo", "done"),
        ("apply", "undone"),
    ]
    purge, applied_again, undone, applied_first = rep.entries
    assert applied_first.txid == first and applied_again.txid == second.txid
    assert undone.targets == [first] and purge.targets == [second.txid]
    assert applied_again.tables == {k: len(v) for k, v in second.deleted_ids.items() if v}
    assert applied_again.runs == second.delete_count == purge.runs
    assert undone.runs == undo.restored_count
    assert applied_first.manifest_id and applied_first.user and applied_first.bytes > 0
    assert [e.txid for e in log(cfg, limit=1).entries] == [purge.txid]
    assert log(cfg, limit=1).total == 4


def test_a_rolled_back_apply_leaves_no_log_record(applied: Path) -> None:
    cfg = _cfg(applied)
    jobstore.undo(cfg, txid=None, within=timedelta(days=1))
    (m := applied / "m2.json").write_bytes(
        jobstore.build_plan(cfg, NOW + timedelta(minutes=1)).manifest
    )
    out = subprocess.run(
        [EXE, "apply", str(m)],
        cwd=applied,
        env={**BASE_ENV, **ENV, "FAILPOINT": "jobstore.apply.after_tombstone"},
        capture_output=True,
        timeout=60,
    )
    assert crashed(out), out.stderr
    before = [e.txid for e in log(cfg).entries]
    assert len(before) == 2  # the apply and its undo: the interrupted apply is left out
    assert jobstore.recover(cfg).recovered[0].action == "rolled back"
    assert [e.txid for e in log(cfg).entries] == before
    assert sorted(p.name for p in (applied / ".retention/jsondoc/log").iterdir()) == sorted(
        f"{t}.json" for t in before
    )


def test_explain_agrees_with_the_plan_for_every_record_and_says_why(tmp_path: Path) -> None:
    """For every record of both targets, explain's verdict is the plan's (removed iff the
    manifest lists it); a kept record names the reason the plan counted it under."""
    root = _store(tmp_path / "jobstore")
    cfg = _cfg(root)
    result = jobstore.build_plan(cfg, NOW)
    (root / "m.json").write_bytes(result.manifest)
    payload = json.loads(result.manifest)["payload"]
    listed = {(t["spec"]["name"], e["id"]) for t in payload["targets"] for e in t["entries"]}
    kept = {t.name: dict(t.kept_by_reason) for t in result.report.targets}
    doc = json.loads((root / STORE).read_bytes())
    ids = set(doc["job_results"]) | {e["event_id"] for e in doc["job_events"] if "event_id" in e}
    seen: dict[str, dict[str, int]] = {"job_results": {}, "job_events": {}}
    for rid in sorted(i for i in ids if isinstance(i, str)):
        for r in explain(cfg, rid, now=NOW, manifest=None).records:
            assert r.removed == ((r.target, rid) in listed), (r.target, rid)
            if not r.removed:
                seen[r.target][r.reason] = seen[r.target].get(r.reason, 0) + 1
    for name, counts in seen.items():  # (records without a usable id are not addressable)
        for reason, n in counts.items():
            assert n <= kept[name][reason], (name, reason)
    entry = sorted(listed)[0]
    e = explain(cfg, entry[1], now=None, manifest=str(root / "m.json"))
    assert e.basis == "manifest" and e.manifest is not None
    assert e.manifest.entries == [entry[0]] and e.manifest.unchanged == {entry[0]: True}
    out = subprocess.run(
        [EXE, "explain", "no-such-record"],
        cwd=root,
        env={**BASE_ENV, **ENV},
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.decode().startswith("Error: no record 'no-such-record' in the targets")


def test_log_since_keeps_the_transactions_from_that_instant_on(applied: Path) -> None:
    cfg = _cfg(applied)
    (entry,) = log(cfg).entries
    at = datetime.fromisoformat(entry.at.replace("Z", "+00:00"))
    assert [e.txid for e in log(cfg, since=at).entries] == [entry.txid]
    assert log(cfg, since=at + timedelta(microseconds=1)).entries == []
