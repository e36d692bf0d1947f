"""Scenario 5 on a real PostgreSQL server, through the real executable: the tenants example
(`examples/tenants/make_sample.py --catalog URL`, `retention-postgres.toml`) planned,
applied in batches with the cleanup written back, undone to the exact rows; an apply killed
at every failpoint and recovered; a writer working during an apply; a second retention
kept out. Each test gets a database of its own (`pg_url`, tests/pgkit.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from retention.check import check
from retention.config import load_config
from retention.planner import build_plan

from . import crashkit as ck
from .pgkit import pg_connect, pg_database
from .test_scenario_tenants import EXAMPLE, TENANTS, expected_removed

NOW = "2026-06-01T00:00:00+00:00"
NOW_DT = datetime.fromisoformat(NOW)
ENV = {"RETENTION_MANIFEST_TTL": "3650d"}
PER = 40  # executions per tenant: 200 in all, 3 steps each


def make(tmp: Path, url: str, per: int = PER) -> tuple[Path, dict[str, str]]:
    """The example's PostgreSQL config in ``tmp``, the sample's tables in ``url`` and its
    directories under ``tmp/executions``; the environment that points retention there."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE / "retention-postgres.toml", tmp / "retention.toml")
    subprocess.run(
        [
            sys.executable,
            str(EXAMPLE / "make_sample.py"),
            *("--catalog", url, "--artifacts", str(tmp / "executions")),
            *("--per-tenant", str(per), "--now", NOW),
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    env = {**ck.BASE_ENV, "RETENTION_CATALOG_PATH": url, **ENV}
    return tmp, env


def run(ws: Path, env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ck.EXE, *args], cwd=ws, env={**env, **extra}, capture_output=True, timeout=120
    )


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with pg_connect(url) as conn:
        return list(conn.execute(sql))


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the application's three tables, typed as PostgreSQL gives them."""
    return {
        t: rows(url, f"SELECT * FROM {t} ORDER BY {key}")
        for t, key in (
            ("executions", "id"),
            ("execution_steps", "id"),
            ("execution_retention_policies", "tenant_id"),
        )
    }


def ids(url: str) -> set[str]:
    return {r[0] for r in rows(url, "SELECT id FROM executions")}


def trees(ws: Path) -> dict[str, str]:
    """Each tenant's directory tree (names, modes, bytes), trash left out."""
    return {t: ck.tree(ws / "executions" / t) for t in TENANTS}


def homes(ws: Path) -> set[str]:
    return {p.name for p in (ws / "executions").glob("*/*") if p.parent.name != ".trash"}


def plan(ws: Path, env: dict[str, str]) -> list[str]:
    out = run(ws, env, "plan", "--now", NOW, "-o", "m.json")
    assert out.returncode == 0, out.stderr
    return [e["run_id"] for e in json.loads((ws / "m.json").read_bytes())["payload"]["entries"]]


def test_each_tenant_loses_what_its_row_allows_in_batches_with_the_cleanup_written_back(
    tmp_path: Path, pg_url: str
) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    everyone = ids(pg_url)
    want = expected_removed(PER)
    removed = set().union(*want.values())
    assert set(plan(ws, env)) == removed
    applied = run(ws, env, "apply", "m.json", "--batch-size", "25")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert [b["runs"] for b in report["batches"]] == [25] * (len(removed) // 25) + (
        [len(removed) % 25] if len(removed) % 25 else []
    )
    # per tenant, summed over the batches
    assert {g["value"]: g["runs"] for g in report["groups"]} == {
        t: len(v) for t, v in want.items() if v
    }
    assert ids(pg_url) == everyone - removed
    steps = {r[0] for r in rows(pg_url, "SELECT execution_id FROM execution_steps")}
    assert steps == everyone - removed  # CASCADE children tombstoned and deleted first
    assert homes(ws) == everyone - removed
    written = {
        r[0]: (r[1], r[2])
        for r in rows(
            pg_url,
            "SELECT tenant_id, last_cleanup_at IS NOT NULL, last_cleanup_deleted_count"
            " FROM execution_retention_policies",
        )
    }
    assert written["globex"] == (False, None)  # disabled: left alone
    for tenant in ("acme", "initech", "umbrella"):
        assert written[tenant] == (True, len(want[tenant])), tenant  # summed over the batches
    # our tables are in a schema of their own, the application's untouched by it
    ours = {
        r[0] for r in rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'retention'")
    }
    assert {"_retention_tx", "_retention_runs", "_retention_t_executions"} <= ours
    assert not [
        r
        for r in rows(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        if r[0].startswith("_retention")
    ]
    assert run(ws, env, "check").returncode == 0
    assert plan(ws, env) == []  # a second plan removes nothing


def test_undo_brings_back_every_row_exactly_with_its_types(tmp_path: Path, pg_url: str) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    before = snapshot(pg_url)
    dirs = trees(ws)
    plan(ws, env)
    assert run(ws, env, "apply", "m.json", "--batch-size", "30").returncode == 0
    undone = run(ws, env, "undo", "--within", "24h")
    assert undone.returncode == 0, undone.stderr
    after = snapshot(pg_url)
    assert after["executions"] == before["executions"]
    assert after["execution_steps"] == before["execution_steps"]
    assert trees(ws) == dirs
    assert run(ws, env, "check").returncode == 0


def probe_points(ws: Path, env: dict[str, str]) -> list[str]:
    """The failpoints a batched apply passes, in order, each with its hit number: every
    point of the first batch, and the commit points of the second."""
    plan(ws, env)
    log = ws / "points.log"
    out = run(ws, env, "apply", "m.json", "--batch-size", "40", FAILPOINT_LOG=str(log))
    assert out.returncode == 0, out.stderr
    seen: dict[str, int] = {}
    points = []
    for name in log.read_text().split():
        if not name.startswith("apply."):
            continue
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1 or (seen[name] == 2 and "commit" in name):
            points.append(f"{name}@{seen[name]}")
    return points


@pytest.mark.slow
def test_an_apply_killed_at_every_failpoint_is_recovered_and_undone_to_the_exact_rows(
    tmp_path: Path, pg_server: str
) -> None:
    """Each case starts from a copy of one sample: the database by CREATE DATABASE ...
    TEMPLATE, the directories by copying the tree; two cases at a time."""
    with pg_database(pg_server) as template:
        base, _ = make(tmp_path / "template", template)
        with pg_database(pg_server, template=template) as url:
            probe = tmp_path / "probe"
            shutil.copytree(base, probe, symlinks=True)
            points = probe_points(probe, {**ck.BASE_ENV, "RETENTION_CATALOG_PATH": url, **ENV})
        assert "apply.after_commit@1" in points and "apply.before_commit@2" in points

        def one(n_point: tuple[int, str]) -> list[str]:
            n, point = n_point
            with pg_database(pg_server, template=template) as url:
                ws = tmp_path / f"case{n}"
                shutil.copytree(base, ws, symlinks=True)
                return crash_case(
                    ws, {**ck.BASE_ENV, "RETENTION_CATALOG_PATH": url, **ENV}, url, point
                )

        with ThreadPoolExecutor(2) as pool:
            failures = [f for found in pool.map(one, enumerate(points)) for f in found]
    assert not failures, "\n".join(failures)


def plan_here(ws: Path, url: str) -> None:
    """`retention plan` in this process (a subprocess costs more than planning 200 runs)."""
    with ck.inside(ws):
        cfg = load_config(None, env={"RETENTION_CATALOG_PATH": url, **ENV})
        (ws / "m.json").write_bytes(build_plan(cfg, NOW_DT).manifest)


def findings_here(ws: Path, url: str) -> list[Any]:
    """`retention check`'s findings, computed in this process (read-only)."""
    with ck.inside(ws):
        return list(check(load_config(None, env={"RETENTION_CATALOG_PATH": url})).findings)


def crash_case(ws: Path, env: dict[str, str], url: str, point: str) -> list[str]:
    """Kill an apply at ``point``, recover, check; undo what committed; compare."""
    before, dirs = snapshot(url), trees(ws)
    before_ids = {x[0] for x in before["executions"]}
    plan_here(ws, url)
    p = run(ws, env, "apply", "m.json", "--batch-size", "40", FAILPOINT=point)
    if not ck.crashed(p):
        return [f"{point}: not killed ({p.returncode})"]
    r = run(ws, env, "recover")
    if r.returncode != 0:
        return [f"{point}: recover {r.returncode} {r.stderr[-300:]!r}"]
    if found := findings_here(ws, url):
        return [f"{point}: check found {found[:3]}"]
    failures = []
    present = ids(url)
    # whole runs: a run's rows are all there with its directory at home, or none of it
    steps = {x[0] for x in rows(url, "SELECT execution_id FROM execution_steps")}
    if steps != present or homes(ws) != present:
        failures.append(f"{point}: a run is half there")
    # committed: the first batch at or after its catalog commit, or any point of the second
    # batch (the first is done by then); rolled back otherwise
    committed = point.endswith("@2") or point.split("@")[0] in (
        "apply.after_commit",
        "apply.after_journal_commit",
        "apply.before_done",
    )
    if committed and present == before_ids:
        failures.append(f"{point}: a committed batch was rolled back")
    if not committed and present != before_ids:
        failures.append(f"{point}: an uncommitted batch was kept")
    if present != before_ids:
        u = run(ws, env, "undo", "--within", "24h")
        if u.returncode != 0:
            failures.append(f"{point}: undo {u.returncode} {u.stderr[-300:]!r}")
    after = snapshot(url)
    if (after["executions"], after["execution_steps"]) != (
        before["executions"],
        before["execution_steps"],
    ):
        failures.append(f"{point}: rows differ after recover and undo")
    if trees(ws) != dirs:
        failures.append(f"{point}: directories differ after recover and undo")
    return failures


def start_paused(ws: Path, env: dict[str, str], point: str, *args: str) -> tuple[Any, Path]:
    sync = ws.parent / f"sync-{time.monotonic_ns()}"
    sync.mkdir()
    proc = subprocess.Popen(
        [ck.EXE, *args],
        cwd=ws,
        env={**env, "FAILPOINT_PAUSE": point, "FAILPOINT_PAUSE_DIR": str(sync)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (sync / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never paused at {point}: {proc.communicate()[1].decode()}")
        time.sleep(0.01)
    return proc, sync


def resume(proc: Any, sync: Path) -> subprocess.CompletedProcess:
    (sync / "resume").touch()
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_a_writer_inserting_for_the_same_tenants_during_the_commit_is_not_touched(
    tmp_path: Path, pg_url: str
) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    removed = set(plan(ws, env))
    everyone = ids(pg_url)
    proc, sync = start_paused(ws, env, "apply.before_commit", "apply", "m.json")
    # The apply's transaction is open, its deletes done: the application goes on writing.
    t0 = time.monotonic()
    with pg_connect(pg_url) as conn:
        for tenant in TENANTS:
            conn.execute(
                "INSERT INTO executions VALUES (%s, %s, NULL, '2020-01-01T00:00:00Z', 'completed')",
                (f"{tenant}-new", tenant),
            )
            conn.execute(
                "INSERT INTO execution_steps (execution_id, name) VALUES (%s, 'fetch')",
                (f"{tenant}-new",),
            )
    assert time.monotonic() - t0 < 5  # inserts of other rows do not wait for the apply
    done = resume(proc, sync)
    assert done.returncode == 0, done.stderr
    new = {f"{t}-new" for t in TENANTS}
    assert ids(pg_url) == (everyone - removed) | new
    assert {r[0] for r in rows(pg_url, "SELECT execution_id FROM execution_steps")} >= new


def test_a_row_the_application_holds_locked_refuses_the_apply_after_the_lock_timeout(
    tmp_path: Path, pg_url: str
) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    removed = sorted(plan(ws, env))
    before = snapshot(pg_url)
    with pg_connect(pg_url, autocommit=False) as app:
        app.execute("SELECT * FROM executions WHERE id = %s FOR UPDATE", (removed[0],))
        t0 = time.monotonic()
        out = run(ws, env, "apply", "m.json", RETENTION_BUSY_TIMEOUT="1s")
        waited = time.monotonic() - t0
        app.rollback()
    assert out.returncode == 4, out.stderr
    err = out.stderr.decode()
    assert err.startswith("Error: catalog postgresql://") and "busy" in err, err
    assert waited < 30
    assert snapshot(pg_url) == before  # nothing changed
    assert homes(ws) == {r[0] for r in before["executions"]}
    again = run(ws, env, "apply", "m.json")  # the lock gone, the same manifest applies
    assert again.returncode == 0, again.stderr


def test_a_second_retention_writing_to_the_same_database_is_refused_with_exit_6(
    tmp_path: Path, pg_url: str
) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    plan(ws, env)
    other = tmp_path / "other"  # another workspace (another host, say): its own state dir
    other.mkdir()
    shutil.copy(ws / "retention.toml", other / "retention.toml")
    (other / "executions").symlink_to(ws / "executions")
    proc, sync = start_paused(ws, env, "apply.after_begin", "apply", "m.json")
    try:
        second = run(other, env, "recover")
    finally:
        done = resume(proc, sync)
    assert second.returncode == 6, second.stderr
    assert second.stderr.decode().startswith(
        "Error: another retention process is writing to catalog postgresql://"
    )
    assert done.returncode == 0, done.stderr


def test_a_password_in_the_url_is_never_printed(tmp_path: Path, pg_url: str) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    bad = pg_url.replace("postgres@", "postgres:s3cret@").replace("127.0.0.1", "127.0.0.1", 1)
    wrong = bad.rsplit("/", 1)[0] + "/no_such_database"
    out = run(ws, {**env, "RETENTION_CATALOG_PATH": wrong}, "plan", "--now", NOW, "-o", "x.json")
    assert out.returncode == 4
    err = out.stderr.decode()
    assert err.startswith("Error: cannot connect to catalog postgresql://postgres:***@"), err
    assert "s3cret" not in err
    shown = run(ws, {**env, "RETENTION_CATALOG_PATH": bad}, "config")
    assert "s3cret" not in shown.stdout.decode() + shown.stderr.decode()


def test_undo_leaves_a_run_whose_id_exists_again_and_restores_the_others(
    tmp_path: Path, pg_url: str
) -> None:
    ws, env = make(tmp_path / "ws", pg_url)
    before = snapshot(pg_url)
    removed = sorted(plan(ws, env))
    assert run(ws, env, "apply", "m.json").returncode == 0
    taken = removed[0]  # the application writes a new execution under the same id
    with pg_connect(pg_url) as conn:
        conn.execute("INSERT INTO executions VALUES (%s, 'acme', NULL, now(), 'running')", (taken,))
    undone = run(ws, env, "undo", "--within", "24h")
    assert undone.returncode == 3, undone.stderr  # done, with a conflict
    report = json.loads(undone.stdout)
    conflicts = [c for u in report["undone"] for c in u["conflicts"]]
    assert [c["run_id"] for c in conflicts] == [taken]
    back = ids(pg_url)
    assert back == {r[0] for r in before["executions"]}
    new = rows(pg_url, f"SELECT status FROM executions WHERE id = '{taken}'")
    assert new == [("running",)]  # the application's row, not the deleted one
    steps = {r[0] for r in rows(pg_url, "SELECT execution_id FROM execution_steps")}
    assert steps == back - {taken}  # its old steps stay in trash with it
    # the one finding: the application's new row has no directory (the old one is in trash)
    chk = run(ws, env, "check", "--json")
    assert chk.returncode == 10
    found = json.loads(chk.stdout)["findings"]
    assert [(f["kind"], f["run_id"]) for f in found] == [("row_without_dir", taken)]


def test_a_numeric_run_id_on_a_text_id_column_is_looked_up_as_text(
    tmp_path: Path, pg_url: str
) -> None:
    """A command line has only text: on PostgreSQL's typed id column it is looked up as
    that type only (comparing text with an integer would be an SQL error, not 'not found')."""
    ws, env = make(tmp_path / "ws", pg_url)
    out = run(ws, env, "undo", "--run", "123")
    assert out.returncode == 9
    assert out.stderr.decode().startswith("Error: run '123' is not in trash")
    out = run(ws, env, "explain", "123")
    assert out.returncode == 2
    assert out.stderr.decode().startswith("Error: run '123' is not in the catalog")
