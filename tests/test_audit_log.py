"""Issue 11 item 3 (and item 5's purge parts): one audit row per apply, undo and purge,
written in the transaction of its effect; `retention log`, `retention trash`; `purge
--dry-run`, the confirmation of `purge --all` and its contradictory flags."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from retention import cli as cli_module

from . import crashkit as ck
from .conftest import NOW_TEXT, invoke


def _rows(ws: Path, sql: str, *args: object) -> list[tuple]:
    c = sqlite3.connect(ws / "data/catalog.db")
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def _audit(ws: Path) -> list[dict]:
    c = sqlite3.connect(ws / "data/catalog.db")
    c.row_factory = sqlite3.Row
    try:
        if not c.execute("SELECT 1 FROM sqlite_master WHERE name = '_retention_audit'").fetchone():
            return []
        return [dict(r) for r in c.execute("SELECT * FROM _retention_audit ORDER BY at")]
    finally:
        c.close()


def _plan(*extra: str, out: str = "m.json") -> str:
    r = invoke("plan", "--keep-last", "10", "--now", NOW_TEXT, *extra, "-o", out)
    assert r.exit_code == 0, r.output
    return out


def _apply(manifest: str) -> dict:
    r = invoke("apply", manifest)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _file_bytes(ws: Path) -> bytes:
    return (ws / "data/catalog.db").read_bytes()


# -- the audit rows ----------------------------------------------------------------------


def test_apply_writes_one_audit_row_with_counts_digests_who_and_where_but_no_row_data(
    workspace: Path,
) -> None:
    manifest = _plan()
    rep = _apply(manifest)
    [row] = _audit(workspace)
    assert row["txid"] == rep["txid"] and row["action"] == "apply"
    assert row["runs"] == rep["deleted_runs"] == 30
    assert row["bytes"] == rep["bytes_moved"] > 0
    assert json.loads(row["tables"]) == {"runs": 30, "run_metrics": 90}
    assert row["manifest_id"] == rep["manifest_id"]
    assert row["manifest_digest"] == hashlib.sha256((workspace / manifest).read_bytes()).hexdigest()
    payload = json.loads((workspace / manifest).read_text())["payload"]
    assert row["policy_digest"] == payload["policy_digest"]
    assert row["user"] and row["host"] is not None
    assert row["groups"] is None and row["group_by"] is None  # the policy has no group_by
    # No row data: nothing of the deleted rows (a run's strategy, a metric's value) is in it.
    strategies = {s for (s,) in _rows(workspace, "SELECT strategy FROM _retention_t_runs")}
    text = json.dumps(row)
    assert not any(f'"{s}"' in text for s in strategies)
    assert _rows(workspace, "SELECT txid FROM _retention_tx") == [(rep["txid"],)]


def test_grouped_apply_counts_runs_and_bytes_per_value_of_the_first_group_by_column(
    workspace: Path,
) -> None:
    manifest = _plan("--group-by", "strategy", "--keep-last", "3")
    rep = _apply(manifest)
    [row] = _audit(workspace)
    assert row["group_by"] == "strategy"
    groups = json.loads(row["groups"])
    expect = _rows(
        workspace,
        "SELECT t.strategy, count(*), sum(r.bytes) FROM _retention_t_runs t JOIN _retention_runs r"
        " ON r.run_id = t.__retention_run AND r.txid = t.__retention_txid GROUP BY 1 ORDER BY 1",
    )
    assert [tuple(g) for g in groups] == [("strategy", s, n, b) for s, n, b in expect]
    assert sum(g[2] for g in groups) == rep["deleted_runs"]
    assert sum(g[3] for g in groups) == rep["bytes_moved"]


def test_undo_and_purge_each_write_their_own_audit_row_in_their_transaction(
    workspace: Path,
) -> None:
    rep = _apply(_plan("--group-by", "strategy", "--keep-last", "3"))
    u = invoke("undo", rep["txid"])
    assert u.exit_code == 0, u.output
    utxid = json.loads(u.stdout)["undone"][0]["txid"]
    again = _apply(_plan("--keep-last", "12", out="m2.json"))
    p = invoke("purge", "--all", "--yes")
    assert p.exit_code == 0, p.output
    ptxid = _rows(workspace, "SELECT txid FROM _retention_tx WHERE op = 'purge'")[0][0]
    rows = {r["txid"]: r for r in _audit(workspace)}
    assert set(rows) == {rep["txid"], utxid, again["txid"], ptxid}
    undo = rows[utxid]
    assert undo["action"] == "undo" and undo["target"] == rep["txid"]
    assert (undo["runs"], undo["bytes"]) == (rows[rep["txid"]]["runs"], rows[rep["txid"]]["bytes"])
    assert json.loads(undo["tables"]) == json.loads(rows[rep["txid"]]["tables"])
    assert json.loads(undo["groups"]) == json.loads(rows[rep["txid"]]["groups"])
    purge = rows[ptxid]
    assert purge["action"] == "purge" and purge["target"] == again["txid"]
    assert (purge["runs"], purge["bytes"]) == (again["deleted_runs"], again["bytes_moved"])
    assert json.loads(purge["tables"]) == {"runs": 28, "run_metrics": 84}
    # Kept forever: purge compacts the deletion log, never the audit.
    assert len(_audit(workspace)) == 4


@pytest.mark.parametrize(
    ("point", "rows_after"),
    [("apply.before_commit", 0), ("apply.after_commit", 1)],
)
def test_audit_row_absent_after_a_crash_before_commit_and_exactly_one_after(
    tmp_path: Path, point: str, rows_after: int
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    before = ck.snapshot(ws)
    manifest = ck.plan(ws, keep_last=3)
    p = ck.run(ws, "apply", str(manifest), failpoint=point)
    assert ck.crashed(p), p.stderr
    assert len(_audit(ws)) == rows_after  # the crash itself: committed or not, nothing else
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr
    states = ck.check_invariants(ws, before)
    audit = _audit(ws)
    assert len(audit) == rows_after
    if rows_after:
        assert audit[0]["runs"] == sum(s == "trash" for s in states.values()) == 5
        assert audit[0]["txid"] == _rows(ws, "SELECT txid FROM _retention_tx")[0][0]
    else:
        assert set(states.values()) == {"home"}


def test_purge_crash_before_its_commit_leaves_no_purge_audit_row(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=3)))
    assert p.returncode == 0, p.stderr
    c = ck.run(ws, "purge", "--all", "--yes", failpoint="purge.before_commit")
    assert ck.crashed(c), c.stderr
    assert [a["action"] for a in _audit(ws)] == ["apply"]
    assert ck.run(ws, "recover").returncode == 0
    assert [a["action"] for a in _audit(ws)] == ["apply"]
    c = ck.run(ws, "purge", "--all", "--yes", failpoint="purge.after_mark")
    assert ck.crashed(c), c.stderr
    assert ck.run(ws, "recover").returncode == 0
    assert [a["action"] for a in _audit(ws)] == ["apply", "purge"]


# -- retention log -----------------------------------------------------------------------


def test_log_lists_every_transaction_newest_first_with_who_counts_tables_and_groups(
    workspace: Path,
) -> None:
    rep = _apply(_plan("--group-by", "strategy", "--keep-last", "3"))
    run_id = rep["deleted_run_ids"][0]
    assert invoke("undo", "--run", run_id).exit_code == 0
    before = _file_bytes(workspace)
    r = invoke("log")
    assert r.exit_code == 0, r.output
    assert _file_bytes(workspace) == before  # read-only
    blocks = r.stdout.strip().split("\n\n")
    assert blocks[0].startswith("undo u-") and blocks[1].startswith(f"apply {rep['txid']}")
    assert "Restored: 1 run" in blocks[0] and f"Applies:  {rep['txid']}" in blocks[0]
    assert f"Deleted:  {rep['deleted_runs']} runs" in blocks[1]
    assert "undone since" in blocks[1]  # one run of it was restored
    assert "Rows:     run_metrics" in blocks[1] and "Groups:   by strategy: A " in blocks[1]
    assert "By:       " in blocks[1] and "@" in blocks[1]
    j = json.loads(invoke("log", "--json").stdout)
    assert j["kind"] == "log" and j["version"] == 1 and j["format_version"]
    assert [e["action"] for e in j["entries"]] == ["undo", "apply"]
    apply = j["entries"][1]
    assert apply["tables"] == {"runs": rep["deleted_runs"], "run_metrics": 3 * rep["deleted_runs"]}
    assert {g["column"] for g in apply["groups"]} == {"strategy"}
    assert apply["in_trash"] == rep["deleted_runs"] - 1


def test_log_since_and_limit_select_the_newest_transactions(workspace: Path) -> None:
    _apply(_plan())
    _apply(_plan("--keep-last", "5", out="m2.json"))
    j = json.loads(invoke("log", "--json", "--limit", "1").stdout)
    assert j["total"] == 2 and len(j["entries"]) == 1
    assert j["entries"][0]["runs"] == 5  # the second apply: the 5 runs the first one kept
    assert "1 of 2 transactions shown" in invoke("log", "--limit", "1").stdout
    assert json.loads(invoke("log", "--json", "--since", "7d").stdout)["total"] == 2
    old = invoke("log", "--json", "--since", "1h", "--now", "2099-01-01T00:00:00Z")
    assert json.loads(old.stdout)["entries"] == []
    assert "No transactions since" in invoke("log", "--since", "2099-01-01T00:00:00Z").stdout


def test_log_and_trash_on_a_catalog_never_applied_say_so_and_create_nothing(
    workspace: Path,
) -> None:
    before = _file_bytes(workspace)
    assert invoke("log").stdout.strip() == "No transactions."
    assert "Trash is empty" in invoke("trash").stdout
    assert _file_bytes(workspace) == before
    ours = "SELECT name FROM sqlite_master WHERE name LIKE '\\_ret%' ESCAPE '\\'"
    assert _rows(workspace, ours) == []


# -- retention trash ---------------------------------------------------------------------


def test_trash_lists_each_run_with_path_size_and_deadline_and_limits_the_listing(
    workspace: Path,
) -> None:
    first = _apply(_plan("--keep-last", "30"))
    second = _apply(_plan("--keep-last", "20", out="m2.json"))
    j = json.loads(invoke("trash", "--json").stdout)
    assert j["kind"] == "trash" and j["runs"] == 20
    assert [a["txid"] for a in j["applies"]] == [second["txid"], first["txid"]]  # newest first
    by_run = {e["run_id"]: e for e in j["entries"]}
    assert set(by_run) == set(first["deleted_run_ids"]) | set(second["deleted_run_ids"])
    e = by_run[second["deleted_run_ids"][0]]
    assert e["path"] == e["run_id"] and e["trash"].startswith(f".trash/{second['txid']}/")
    assert e["bytes"] > 0 and e["undo_until"] == second["undo_until"] and e["undoable"]
    text = invoke("trash", "--limit", "4").stdout.splitlines()
    assert text[0].startswith(f"{second['txid']}  deleted ") and "10 runs" in text[0]
    assert sum(line.startswith("  ") for line in text) == 4
    assert "... 16 more runs (--limit 0 for all)" in text
    assert text[-1].startswith("Trash: 20 runs,") and "in 2 applies" in text[-1]
    full = invoke("trash", "--limit", "0").stdout.splitlines()
    assert sum(line.startswith("  ") for line in full) == 20


# -- purge --dry-run, confirmation, flags ------------------------------------------------


def test_purge_dry_run_says_what_would_go_and_changes_nothing(workspace: Path) -> None:
    rep = _apply(_plan())
    before = _file_bytes(workspace)
    trash = sorted(p.name for p in (workspace / "data/backtests/.trash").rglob("*"))
    r = invoke("purge", "--dry-run")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["applies"] == []  # the grace period is not over
    assert "nothing would be purged" in r.stderr
    r = invoke("purge", "--dry-run", "--all")
    j = json.loads(r.stdout)
    assert j["kind"] == "purge-preview" and j["dry_run"]
    assert [a["txid"] for a in j["applies"]] == [rep["txid"]]
    assert (j["runs"], j["bytes"]) == (rep["deleted_runs"], rep["bytes_moved"])
    assert "Nothing was changed." in r.stderr
    assert _file_bytes(workspace) == before
    assert sorted(p.name for p in (workspace / "data/backtests/.trash").rglob("*")) == trash
    assert [a["action"] for a in _audit(workspace)] == ["apply"]


def test_purge_expired_and_all_together_are_refused_as_contradictory(workspace: Path) -> None:
    _apply(_plan())
    r = invoke("purge", "--expired", "--all")
    assert r.exit_code == 2
    assert "contradict" in r.stderr
    assert json.loads(invoke("trash", "--json").stdout)["runs"] == 30


def test_purge_all_on_a_terminal_asks_first_and_purges_nothing_on_no(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply(_plan())
    monkeypatch.setattr(cli_module, "_interactive", lambda: True)
    r = invoke("purge", "--all", input=b"n\n")
    assert r.exit_code == 0
    assert "Purge the trash of 1 apply(s) (30 runs)?" in r.stderr
    assert "Nothing was purged." in r.stderr
    assert json.loads(invoke("trash", "--json").stdout)["runs"] == 30
    r = invoke("purge", "--all", input=b"y\n")
    assert r.exit_code == 0, r.output
    assert json.loads(invoke("trash", "--json").stdout)["runs"] == 0


def test_purge_all_with_yes_or_without_a_terminal_does_not_ask(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _apply(_plan("--keep-last", "30"))
    r = invoke("purge", "--all")  # CliRunner: stdin and stdout are not terminals
    assert r.exit_code == 0 and "Purge the trash" not in r.stderr
    _apply(_plan("--keep-last", "20", out="m2.json"))
    monkeypatch.setattr(cli_module, "_interactive", lambda: True)
    r = invoke("purge", "--all", "--yes")
    assert r.exit_code == 0 and "Purge the trash" not in r.stderr
    assert json.loads(invoke("trash", "--json").stdout)["runs"] == 0


def test_purge_audit_counts_only_what_is_left_after_a_partial_undo(workspace: Path) -> None:
    rep = _apply(_plan("--group-by", "strategy", "--keep-last", "3"))
    back = rep["deleted_run_ids"][0]
    assert invoke("undo", "--run", back).exit_code == 0
    assert invoke("purge", "--all", "--yes").exit_code == 0
    [purge] = [a for a in _audit(workspace) if a["action"] == "purge"]
    n = rep["deleted_runs"] - 1
    assert purge["runs"] == n
    assert json.loads(purge["tables"]) == {"runs": n, "run_metrics": 3 * n}
    assert sum(g[2] for g in json.loads(purge["groups"])) == n
    (size,) = _rows(workspace, "SELECT bytes FROM _retention_runs WHERE run_id = ?", back)[0]
    assert purge["bytes"] == rep["bytes_moved"] - size


def _purge_all_on_a_terminal(ws: Path, *, reply: bytes | None) -> tuple[int, str]:
    """`retention purge --all` with stdin, stdout and stderr on a real pty; at its prompt,
    type ``reply``, or (None) send SIGINT as Ctrl-C would."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [ck.EXE, "purge", "--all"], cwd=ws, env=ck.BASE_ENV, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    out, asked = b"", False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not asked and b"[y/N]" in out:
            asked = True
            if reply is None:
                # As a person would: a moment after the prompt. The prompt is printed just
                # before input() blocks in read(); a signal landing in that gap runs its
                # Python handler only once read() returns (CPython checks for signals on
                # EINTR, not before it blocks), so an instant Ctrl-C waits for Enter.
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
            else:
                os.write(master, reply)
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the process closed its side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert asked, out
    return proc.returncode, out.decode(errors="replace")


def test_purge_all_on_a_real_terminal_asks_and_ctrl_c_at_the_prompt_purges_nothing(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=3)))
    assert p.returncode == 0, p.stderr
    code, screen = _purge_all_on_a_terminal(ws, reply=None)
    assert code == 130, screen
    assert "Purge the trash of 1 apply(s) (3 runs)?" in screen
    assert "Interrupted (SIGINT): nothing was purged." in screen
    code, screen = _purge_all_on_a_terminal(ws, reply=b"n\r")
    assert code == 0 and "Nothing was purged." in screen, screen
    assert [a["action"] for a in _audit(ws)] == ["apply"]
    code, screen = _purge_all_on_a_terminal(ws, reply=b"y\r")
    assert code == 0, screen
    assert "{" not in screen  # no JSON report on a terminal
    assert [a["action"] for a in _audit(ws)] == ["apply", "purge"]


def test_trash_and_purge_dry_run_name_an_interrupted_apply_instead_of_hiding_it(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=6)
    p = ck.run(ws, "apply", str(ck.plan(ws, keep_last=3)), failpoint="apply.after_rename@2")
    assert ck.crashed(p), p.stderr
    t = ck.run(ws, "trash")
    assert t.returncode == 0, t.stderr
    lines = t.stdout.decode().splitlines()
    assert lines[0].startswith("Interrupted transaction a-") and "retention recover" in lines[0]
    assert "Trash is empty" in lines[-1]
    d = ck.run(ws, "purge", "--dry-run", "--all")
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout)["unfinished"] and not json.loads(d.stdout)["running"]
    assert "a purge recovers it first" in d.stderr.decode()
    assert ck.run(ws, "status", "--json").stdout.count(b'"recover_would"') == 1  # unchanged
