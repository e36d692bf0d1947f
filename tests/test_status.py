"""`retention status` through the real executable: interrupted transactions and what recover
would do with each (crashes injected with FAILPOINT), trash per transaction, the grace
period in force, the last apply; and status itself writes nothing (journal and catalog
bytes unchanged, no file created)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from retention.durations import human_instant, parse_instant

from . import crashkit as ck

ARTS = Path("data/backtests")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ck.build(tmp_path_factory.mktemp("status") / "ws", runs=8)


def fresh(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def files(ws: Path) -> dict[str, str]:
    """Hash of every file of the catalog and the state directory (and which exist)."""
    out = {}
    for d in (ws / "data", ws / ".retention"):
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    out[str(p.relative_to(ws))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def status(ws: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `retention status` and assert that it changed no byte of journal or catalog."""
    before = files(ws)
    p = subprocess.run(
        [ck.EXE, "status", *args],
        cwd=ws,
        env={**ck.BASE_ENV, **(env or {})},
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert files(ws) == before, "status wrote to the catalog or the state directory"
    return p


APPLY_CRASHES = [
    ("apply.after_rename@2", "active", "roll back"),
    ("apply.before_commit@1", "active", "roll back"),  # a hot SQLite rollback journal
    ("apply.after_commit@1", "active", "roll forward"),
    ("apply.after_journal_commit@1", "committed", "roll forward"),
]


@pytest.mark.parametrize(
    ("point", "state", "would"), APPLY_CRASHES, ids=[c[0] for c in APPLY_CRASHES]
)
def test_status_shows_an_interrupted_apply_and_what_recover_would_do(
    template: Path, tmp_path: Path, point: str, state: str, would: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    assert ck.crashed(ck.run(ws, "apply", str(ck.plan(ws)), failpoint=point))
    if point == "apply.before_commit@1":
        assert (ws / "data/catalog.db-journal").exists()
    rep = json.loads(status(ws, "--json").stdout)
    [i] = rep["interrupted"]
    assert (i["op"], i["state"], i["recover_would"]) == ("apply", state, would)
    assert i["txid"].startswith("a-")
    text = status(ws).stdout.decode()
    assert "Interrupted transactions (run `retention recover`):" in text
    assert f"{i['txid']} (apply, {state}): recover would {would}" in text
    # And recover does what status said.
    r = json.loads(ck.run(ws, "recover").stdout)
    assert [(x["txid"], x["action"]) for x in r["recovered"]] == [
        (i["txid"], "rolled forward" if would == "roll forward" else "rolled back")
    ]
    assert json.loads(status(ws, "--json").stdout)["interrupted"] == []


@pytest.mark.parametrize(
    ("op", "point", "would"),
    [
        ("undo", "undo.before_commit@1", "roll back"),
        ("undo", "undo.after_commit@1", "roll forward"),
        ("purge", "purge.after_begin@1", "roll back"),
        ("purge", "purge.after_mark@1", "roll forward"),
    ],
)
def test_status_shows_an_interrupted_undo_or_purge(
    template: Path, tmp_path: Path, op: str, point: str, would: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    txid = json.loads(ck.run(ws, "apply", str(ck.plan(ws))).stdout)["txid"]
    args = ["undo", txid] if op == "undo" else ["purge", "--all"]
    assert ck.crashed(ck.run(ws, *args, failpoint=point))
    [i] = json.loads(status(ws, "--json").stdout)["interrupted"]
    assert (i["op"], i["state"], i["recover_would"]) == (op, "active", would)
    assert i["txid"].startswith(op[0] + "-")


def test_status_reports_trash_per_transaction_grace_period_and_last_apply(
    template: Path, tmp_path: Path
) -> None:
    ws = fresh(template, tmp_path / "ws")
    assert not (ws / ".retention").exists()
    empty = json.loads(status(ws, "--json").stdout)
    assert (empty["interrupted"], empty["trash"], empty["last_apply"]) == ([], [], None)
    assert not (ws / ".retention").exists(), "status created the state directory"

    env = {"RETENTION_GRACE_PERIOD": "36h"}
    a = subprocess.run(
        [ck.EXE, "apply", str(ck.plan(ws))],
        cwd=ws,
        env={**ck.BASE_ENV, **env},
        capture_output=True,
        timeout=60,
    )
    assert a.returncode == 0, a.stderr
    applied = json.loads(a.stdout)
    rep = json.loads(status(ws, "--json", env=env).stdout)
    assert rep["grace_period"] == "36h"
    assert rep["interrupted"] == []
    [t] = rep["trash"]
    expected_bytes = 0
    for rid in applied["deleted_run_ids"]:
        for dirpath, _, names in os.walk(ws / ARTS / ".trash" / applied["txid"]):
            if rid in dirpath:
                expected_bytes += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in names)
    assert applied["bytes_moved"] == expected_bytes > 0
    assert (t["txid"], t["state"], t["runs"], t["bytes"], t["undoable"]) == (
        applied["txid"],
        "applied",
        6,
        expected_bytes,
        True,
    )
    deleted_at, until = parse_instant(t["deleted_at"]), parse_instant(t["grace_until"])
    assert (until - deleted_at).total_seconds() == 36 * 3600
    assert abs(deleted_at - parse_instant(rep["now"])).total_seconds() < 60
    assert (rep["undoable_runs"], rep["undoable_bytes"]) == (6, expected_bytes)
    # The saved report is the apply's own (the document keys are added when printed).
    envelope = ("format_version", "kind")
    saved = {k: v for k, v in applied.items() if k not in envelope}
    assert rep["last_apply"] == {**saved, "state_now": "applied"}

    text = status(ws, env=env).stdout.decode()
    assert "Grace period: 36h." in text
    assert "No interrupted transaction." in text
    assert f"{applied['txid']}  6 runs" in text
    assert f"undo possible until {human_instant(t['grace_until'])}" in text
    assert "Undoable: 6 runs" in text

    # Purged trash is no longer listed; the last apply still is.
    assert ck.run(ws, "purge", "--all").returncode == 0
    rep = json.loads(status(ws, "--json").stdout)
    assert (rep["trash"], rep["undoable_runs"]) == ([], 0)
    assert rep["last_apply"] == {**saved, "state_now": "purged"}
    text = status(ws).stdout.decode()
    assert "Trash is empty; nothing to undo." in text and "(purged since)" in text


def _summed(ws: Path) -> dict[str, tuple[int, int]]:
    """Runs and bytes in trash per apply, summed over the tombstones (what status showed
    before it read them off the applies' own rows)."""
    import sqlite3

    c = sqlite3.connect(ws / "data/catalog.db")
    try:
        return {
            t: (n, b)
            for t, n, b in c.execute(
                "SELECT txid, count(*), sum(bytes) FROM _retention_runs"
                " WHERE state = 'trash' GROUP BY txid"
            )
        }
    finally:
        c.close()


def _shown(ws: Path) -> dict[str, tuple[int, int]]:
    rep = json.loads(status(ws, "--json").stdout)
    return {t["txid"]: (t["runs"], t["bytes"]) for t in rep["trash"] if t["runs"]}


def test_status_trash_counts_equal_the_tombstones_sum_through_partial_undo_and_purge(
    tmp_path: Path,
) -> None:
    """status counts an untouched apply from its own row and sums the others: after two
    applies, a single run undone, a whole apply undone and a purge interrupted half way,
    what it shows per apply is what summing the tombstones gives."""
    ws = ck.build(tmp_path / "ws", runs=12)
    first = json.loads(ck.run(ws, "apply", str(ck.plan(ws, keep_last=8))).stdout)
    second = json.loads(ck.run(ws, "apply", str(ck.plan(ws, keep_last=4))).stdout)
    assert _shown(ws) == _summed(ws) and len(_summed(ws)) == 2
    assert ck.run(ws, "undo", "--run", first["deleted_run_ids"][0]).returncode == 0
    assert _shown(ws) == _summed(ws)
    assert _summed(ws)[first["txid"]][0] == len(first["deleted_run_ids"]) - 1
    assert ck.run(ws, "undo", second["txid"]).returncode == 0
    assert _shown(ws) == _summed(ws) and second["txid"] not in _shown(ws)
    third = json.loads(ck.run(ws, "apply", str(ck.plan(ws, keep_last=6))).stdout)
    assert ck.crashed(ck.run(ws, "purge", "--all", failpoint="purge.after_mark@1"))
    assert _shown(ws) == _summed(ws) and third["txid"] in _shown(ws)
    assert ck.run(ws, "recover").returncode == 0
    assert _shown(ws) == _summed(ws) == {}
