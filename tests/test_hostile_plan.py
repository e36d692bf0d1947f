"""Hostile inputs to `plan` (issue 12 items 3, 9, 11, 12; issue 14 item 2): each is refused
with one clear line and a documented exit code, or left out with a reason, never planned
into a manifest that apply would get wrong."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retention.config import load_config
from retention.errors import ConfigError
from retention.store import LocalStore

from .conftest import NOW_TEXT, invoke
from .test_cli_errors import error_line, hint_line

PLAN = ("plan", "--keep-last", "10", "--now", NOW_TEXT)
ARTS = Path("data/backtests")
OLDEST = "bt-20241101-00000"  # a candidate of PLAN in the 40-run workspace
EXE = str(Path(sys.executable).parent / "retention")


def _toml(workspace: Path, text: str) -> None:
    (workspace / "retention.toml").write_text(text)


def _catalog(workspace: Path, sql: str, *params: object) -> list[tuple]:
    db = sqlite3.connect(workspace / "data/catalog.db")
    try:
        rows = db.execute(sql, params).fetchall()
        db.commit()
        return rows
    finally:
        db.close()


def _entries(stdout: str | bytes) -> list[dict]:
    return json.loads(stdout)["payload"]["entries"]


# -- item 3: a path template that names nothing --------------------------------------------


@pytest.mark.parametrize(
    "template", ["{run_id!r}", "{run_id:>30}", "{run_id!s}", "exp/{run_id:x<3}", "{run_id[0]}"]
)
def test_path_template_with_a_conversion_or_format_spec_is_refused_at_config_load(
    workspace: Path, template: str
) -> None:
    _toml(workspace, f'[artifacts]\npath_template = "{template}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(None, env={})
    assert info.value.message.startswith("artifacts.path_template (from file retention.toml)")
    result = invoke(*PLAN)
    line = error_line(result, 2)
    assert line.startswith("Error: artifacts.path_template (from file ")
    assert template in line
    assert "{column}" in hint_line(result)
    assert result.stdout == ""
    assert not Path(".retention").exists()  # refused before anything is written


def test_path_template_from_the_environment_is_checked_the_same_way(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETENTION_PATH_TEMPLATE", "{run_id!a}")
    line = error_line(invoke(*PLAN), 2)
    assert line.startswith("Error: artifacts.path_template (from env RETENTION_PATH_TEMPLATE)")


def test_a_plan_whose_candidates_have_no_directory_while_the_root_holds_others_is_refused(
    workspace: Path,
) -> None:
    # Every path the template names is missing, yet the root is full of run directories:
    # a wrong template. Apply would delete 30 rows and orphan 30 real directories.
    _toml(workspace, '[artifacts]\npath_template = "runs/{run_id}"\n')
    result = invoke(*PLAN)
    line = error_line(result, 2)
    assert "30 candidates have no artifact directory" in line
    assert "artifacts.path_template 'runs/{run_id}'" in line
    assert "bt-20" in line  # an example of a directory no run claims
    hint = hint_line(result)
    assert "--allow-missing-dirs" in hint and "artifacts.allow_missing_dirs" in hint
    assert result.stdout == ""


def test_rows_without_directories_are_planned_when_the_operator_says_they_are_expected(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(workspace, '[artifacts]\npath_template = "runs/{run_id}"\n')
    flag = invoke(*PLAN, "--allow-missing-dirs")
    assert flag.exit_code == 0, flag.stderr
    entries = _entries(flag.stdout)
    assert len(entries) == 30 and not any(e["exists"] for e in entries)
    assert "30 candidates without an artifact directory on disk" in flag.stderr
    _toml(
        workspace,
        '[artifacts]\npath_template = "runs/{run_id}"\nallow_missing_dirs = true\n',
    )
    assert invoke(*PLAN).exit_code == 0
    _toml(workspace, '[artifacts]\npath_template = "runs/{run_id}"\n')
    monkeypatch.setenv("RETENTION_ALLOW_MISSING_DIRS", "yes")
    assert invoke(*PLAN).exit_code == 0
    monkeypatch.setenv("RETENTION_ALLOW_MISSING_DIRS", "perhaps")
    line = error_line(invoke(*PLAN), 2)
    assert line.startswith("Error: artifacts.allow_missing_dirs (from env")


def test_candidates_without_directories_are_planned_when_other_runs_have_theirs(
    workspace: Path,
) -> None:
    # The template works (kept runs have their directories): these candidates simply never
    # wrote artifacts. Not refused.
    candidates = [e["run_id"] for e in _entries(invoke(*PLAN).stdout)]
    for rid in candidates:
        shutil.rmtree(ARTS / rid)
    result = invoke(*PLAN)
    assert result.exit_code == 0, result.stderr
    assert not any(e["exists"] for e in _entries(result.stdout))


def test_an_artifact_root_without_directories_is_not_a_wrong_template(workspace: Path) -> None:
    shutil.rmtree(ARTS)
    ARTS.mkdir()
    (ARTS / "README").write_text("no runs wrote artifacts here\n")
    result = invoke(*PLAN)
    assert result.exit_code == 0, result.stderr
    assert len(_entries(result.stdout)) == 30


# -- item 9: BLOB run ids ------------------------------------------------------------------


def test_blob_run_ids_are_refused_at_plan_time_with_the_reason(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _catalog(
        workspace,
        "INSERT INTO runs (run_id, created_at) VALUES (?, '2020-01-01T00:00:00')",
        b"\x01\x02",
    )
    result = invoke(*PLAN)
    line = error_line(result, 4)
    assert "BLOB" in line and "x'0102'" in line
    assert "TEXT and INTEGER" in line
    assert "typeof(run_id)" in hint_line(result)
    assert result.stdout == ""
    assert not Path(".retention").exists()
    # The hint's way out works: the BLOB run is left out by the filter, the rest planned.
    monkeypatch.setenv("RETENTION_FILTER", "typeof(run_id) IN ('text', 'integer')")
    ok = invoke(*PLAN)
    assert ok.exit_code == 0, ok.stderr
    assert len(_entries(ok.stdout)) == 30


# -- item 11 (part): filter and protect must mean the same thing in plan and apply ----------


@pytest.mark.parametrize("setting", ["filter", "protect"])
@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("1=1) --", "')'"),
        ("1=1) OR (1=1", "')'"),  # valid in plan's WHERE (...), another meaning in AND (...)
        ("1=1 -- keep", "comment"),
        ("1=1 /* x */", "comment"),
        ("1=1; DROP TABLE runs", "';'"),
        ("(1=1", "'('"),
        ("run_id = 'x", "unterminated"),
    ],
)
def test_a_filter_or_protect_that_would_not_survive_apply_wrapping_is_refused(
    workspace: Path, setting: str, expr: str, problem: str
) -> None:
    _toml(workspace, f"[catalog]\n{setting} = {json.dumps(expr)}\n")
    with pytest.raises(ConfigError):
        load_config(None, env={})
    result = invoke(*PLAN)
    line = error_line(result, 2)
    assert line.startswith(f"Error: catalog.{setting} (from file ")
    assert problem in line and repr(expr) in line
    assert "balanced parentheses" in hint_line(result)
    assert result.stdout == "" and not Path(".retention").exists()


def test_comment_and_bracket_characters_inside_literals_pass_plan_and_apply(
    workspace: Path,
) -> None:
    _toml(
        workspace,
        "[catalog]\n"
        """filter = "run_id != 'x--y;)' AND \\"strategy\\" != '/*' AND [run_id] != 'it''s'"\n"""
        """protect = "run_id = '((' OR `run_id` = 'a)b'"\n""",
    )
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    result = invoke("apply", "m.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["deleted_runs"] == 30


# -- item 12: a run directory that is a mount point ----------------------------------------


def test_the_device_decision_refuses_a_foreign_device_on_real_measures(workspace: Path) -> None:
    # A real tree measured by the real store; only the device numbers are made to differ,
    # as a mount point (or a parent on another filesystem) would make them.
    from retention.planner import device_refusal

    root = Path(os.path.abspath(ARTS))
    m = LocalStore(root).measure(OLDEST.encode())
    assert m.exists and m.dev is not None
    home = os.lstat(root).st_dev
    assert device_refusal(m, home, home) is None
    mounted = device_refusal(dataclasses.replace(m, dev=m.dev + 1), home, home)
    assert mounted is not None and "mount point" in mounted
    elsewhere = device_refusal(m, home, home + 1)
    assert elsewhere is not None and "another filesystem than the trash" in elsewhere
    assert device_refusal(LocalStore(root).measure(b"no-such-run"), home, home) is None


_MOUNT_AND_RUN = r"""
import os, shutil, subprocess, sys
target, stage, *command = sys.argv[1:]
shutil.copytree(target, stage, symlinks=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
# Same names, modes, sizes and mtimes: the directory's fingerprint does not change.
shutil.copytree(stage, target, symlinks=True, dirs_exist_ok=True)
p = subprocess.run(command)
sys.exit(p.returncode)
"""


@functools.cache
def _private_mounts() -> bool:
    """Whether this test can mount a tmpfs in a private mount namespace (root, or user
    namespaces allowed); the mount never leaves that namespace."""
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"retention-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        p = subprocess.run(
            ["unshare", "-rm", "--propagation", "private", "mount", "-t", "tmpfs", "t", probe],
            capture_output=True,
            timeout=30,
        )
        return p.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        probe.rmdir()


def _with_mount(workspace: Path, run_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `retention ARGS` in a private mount namespace where ``run_dir`` is a tmpfs mount
    point holding a copy of its tree (same fingerprint)."""
    if not _private_mounts():
        pytest.skip("cannot mount a tmpfs in a private mount namespace (unshare -rm)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_MANIFEST_TTL"] = "3650d"
    stage = workspace / "mount-stage"  # outside the artifact root
    namespace = ["unshare", "-rm", "--propagation", "private"]
    script = [sys.executable, "-c", _MOUNT_AND_RUN, str(run_dir), str(stage)]
    return subprocess.run(
        [*namespace, *script, EXE, *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        timeout=120,
    )


def test_a_candidate_directory_that_is_a_mount_point_is_left_out_of_the_plan(
    workspace: Path,
) -> None:
    p = _with_mount(workspace, workspace / ARTS / OLDEST, *PLAN, "-o", "m.json")
    stderr = p.stderr.decode()
    assert p.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert f"Skipped {OLDEST}: artifact directory " in stderr
    assert "is a mount point" in stderr
    ids = [e["run_id"] for e in _entries(Path("m.json").read_bytes())]
    assert len(ids) == 29 and OLDEST not in ids


def test_a_kept_run_whose_directory_is_a_mount_point_is_not_walked_for_the_budget(
    workspace: Path,
) -> None:
    """Plan walks directories on the trash's filesystem only: the newest run's directory,
    a mount point holding 8 MiB, is not walked to size it for the budget (its size is
    unknown, counted as 0), so the other runs fit the budget and nothing is removed. The
    same 8 MiB on the root's own filesystem put the kept runs over it."""
    arts = workspace / ARTS
    newest = sorted(d.name for d in arts.iterdir())[-1]
    others = sum(f.stat().st_size for d in arts.iterdir() for f in d.rglob("*") if f.is_file())
    (arts / newest / "big.bin").write_bytes(b"x" * (8 << 20))
    size = str(others + (1 << 20))
    budget = ("plan", "--max-total-size", size, "--allow-remove-all", "--now", NOW_TEXT)
    p = _with_mount(workspace, arts / newest, *budget, "-o", "mounted.json")
    assert p.returncode == 0, p.stderr.decode()
    assert _entries(Path("mounted.json").read_bytes()) == []
    result = invoke(*budget, "-o", "plain.json")  # no mount: the 8 MiB are counted
    assert result.exit_code == 0, result.stderr
    assert len(_entries(Path("plain.json").read_bytes())) > 0


def test_apply_skips_only_the_entry_whose_directory_became_a_mount_point(
    workspace: Path,
) -> None:
    assert invoke(*PLAN, "-o", "m.json").exit_code == 0
    p = _with_mount(workspace, workspace / ARTS / OLDEST, "apply", "m.json")
    assert p.returncode == 3, p.stderr.decode()
    report = json.loads(p.stdout)
    assert report["deleted_runs"] == 29
    assert [s["run_id"] for s in report["skipped"]] == [OLDEST]
    assert "mount point or on another filesystem" in report["skipped"][0]["reason"]
    # Its row and its directory stay; every other candidate is gone.
    assert _catalog(workspace, "SELECT count(*) FROM runs WHERE run_id = ?", OLDEST) == [(1,)]
    assert (workspace / ARTS / OLDEST / "equity.csv").is_file()
    assert _catalog(workspace, "SELECT count(*) FROM runs") == [(11,)]


# -- issue 14 item 2: the remove-everything guard --------------------------------------------


def test_remove_all_guard_counts_the_whole_table_when_a_filter_is_set(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gc-like policy: every run the filter selects is old enough, which is normal. The
    # table keeps the 21 runs the filter does not select, so nothing says "everything".
    monkeypatch.setenv("RETENTION_FILTER", "created_at < '2025-10-01'")
    result = invoke("plan", "--max-age", "30d", "--now", NOW_TEXT)
    assert result.exit_code == 0, result.stderr
    selected = _catalog(workspace, "SELECT count(*) FROM runs WHERE created_at < '2025-10-01'")
    assert len(_entries(result.stdout)) == selected[0][0] == 19


def test_remove_all_guard_states_what_it_counts(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke("plan", "--max-age", "1d", "--now", NOW_TEXT)
    assert error_line(result, 2) == "Error: refusing to remove every run: all 40 runs in 'runs'"
    assert hint_line(result) == (
        "Hint: pass --allow-remove-all (or set policy.allow_remove_all = true)"
        " if that is really intended"
    )
    monkeypatch.setenv("RETENTION_FILTER", "created_at IS NOT NULL")
    result = invoke("plan", "--max-age", "1d", "--now", NOW_TEXT)
    assert error_line(result, 2) == (
        "Error: refusing to remove every run: all 40 runs selected by catalog.filter"
        " (of 40 in 'runs')"
    )


def test_remove_all_can_be_allowed_in_config_for_scheduled_jobs(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _toml(workspace, "[policy]\nallow_remove_all = true\n")
    result = invoke("plan", "--max-age", "1d", "--now", NOW_TEXT)
    assert result.exit_code == 0, result.stderr
    assert len(_entries(result.stdout)) == 40
    shown = invoke("config").stdout
    assert "policy.allow_remove_all" in shown and "true" in shown
    _toml(workspace, "[policy]\nallow_remove_all = false\n")
    assert invoke("plan", "--max-age", "1d", "--now", NOW_TEXT).exit_code == 2
    monkeypatch.setenv("RETENTION_ALLOW_REMOVE_ALL", "true")
    assert invoke("plan", "--max-age", "1d", "--now", NOW_TEXT).exit_code == 0
    monkeypatch.delenv("RETENTION_ALLOW_REMOVE_ALL")
    _toml(workspace, '[policy]\nallow_remove_all = "sure"\n')
    line = error_line(invoke("plan", "--max-age", "1d", "--now", NOW_TEXT), 2)
    assert line.startswith("Error: policy.allow_remove_all (from file ")
    assert "expected true or false" in line


# -- ids that name more than one row ---------------------------------------------------


def bare_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """``tmp_path`` as the current directory, with an empty artifact root and the path of
    a catalog still to create: (artifact root, catalog file). Manifests get a long TTL."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    arts = tmp_path / "data" / "backtests"
    arts.mkdir(parents=True)
    return arts, tmp_path / "data" / "catalog.db"


def _twin_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_column: bool) -> Path:
    """A catalog whose id column is neither unique nor case-sensitive: "A" (old) and "a"
    (new) are one id to SQLite's NOCASE, "B" is there twice (old and new), "c" is alone
    (old). Each old run has its own directory, and so does each new one."""
    arts, db = bare_workspace(tmp_path, monkeypatch)
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE runs (run_id TEXT COLLATE NOCASE, created_at INTEGER, dir TEXT)")
    rows = [("A", 1, "A-old"), ("a", 9, "a-new"), ("B", 2, "B-old"), ("B", 8, "B-new")]
    rows.append(("c", 3, "c-old"))
    c.executemany(
        "INSERT INTO runs VALUES (?, ?, ?)", [(r, 1_600_000_000 + t, d) for r, t, d in rows]
    )
    c.commit()
    c.close()
    for _, _, d in rows:
        (arts / d).mkdir()
        (arts / d / "f").write_text(d)
    (tmp_path / "retention.toml").write_text(
        '[artifacts]\npath_column = "dir"\n'
        if by_column
        else '[artifacts]\npath_template = "{dir}"\n'
    )
    return tmp_path


def _runs(ws: Path) -> list[tuple]:
    c = sqlite3.connect(ws / "data" / "catalog.db")
    try:
        return sorted(c.execute("SELECT run_id, dir FROM runs").fetchall())
    finally:
        c.close()


@pytest.mark.parametrize("by_column", [False, True])
def test_a_candidate_whose_id_names_a_kept_run_too_is_skipped_and_nothing_of_it_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_column: bool
) -> None:
    """Deleting run "A" by its id would delete the kept run "a" too (NOCASE), and deleting
    the old "B" the new one: plan skips both candidates with the reason (no traceback,
    whichever way the paths are read), and apply deletes only "c"."""
    ws = _twin_ids(tmp_path, monkeypatch, by_column)
    before = _runs(ws)
    result = invoke("plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "m.json")
    assert result.exit_code == 3, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("Skipped ")]
    assert sorted(said) == [
        f"Skipped {rid}: its id names 2 rows of 'runs' (repeated, or equal under the column's"
        " collation): deleting it would delete them all"
        for rid in ("A", "B")
    ]
    assert [e["run_id"] for e in json.loads(Path("m.json").read_text())["payload"]["entries"]] == [
        "c"
    ]
    applied = invoke("apply", "m.json")
    assert applied.exit_code == 0, applied.stderr
    assert _runs(ws) == [r for r in before if r[0] != "c"]
    left = sorted(p.name for p in (ws / "data" / "backtests").iterdir() if p.name != ".trash")
    assert left == ["A-old", "B-new", "B-old", "a-new"]


def test_apply_skips_a_manifest_entry_whose_id_names_a_kept_run_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest from before plan skipped such ids (its row fingerprint taken over both
    rows, so nothing looks changed) still deletes neither: apply's commit drops the run."""
    import hashlib
    import hmac

    import msgspec

    from retention.catalogs import open_catalog
    from retention.layout import StateLayout
    from retention.manifest import load_key

    ws = _twin_ids(tmp_path, monkeypatch, False)
    before = _runs(ws)
    assert invoke("plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "m.json").exit_code == 3
    doc = json.loads(Path("m.json").read_text())
    payload = doc["payload"]
    entry = dict(payload["entries"][0], run_id="A", path="A-old", reason="removed: forged")
    cfg = load_config(None)
    with open_catalog(cfg) as cat:
        cat.load_ids(["A"])
        entry["rows_fp"] = cat.fingerprints()["A"]
    from retention.store import LocalStore as _Store

    m = _Store(ws / "data" / "backtests").measure(b"A-old")
    entry.update(exists=m.exists, dir_fp=m.fingerprint, bytes=m.bytes, files=m.files)
    payload["entries"] = [entry, *payload["entries"]]
    key, key_id = load_key(StateLayout(Path(".retention")), create=False)
    body = json.dumps(payload, sort_keys=True, indent=1).encode()
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    Path("forged.json").write_bytes(
        msgspec.json.encode({"alg": "HMAC-SHA256", "key_id": key_id, "sig": sig})[:-1]
        + b',"payload":'
        + body
        + b"}\n"
    )
    result = invoke("apply", "forged.json", "--json")
    assert result.exit_code == 3, result.stderr
    skipped = {s["run_id"]: s["reason"] for s in json.loads(result.stdout)["skipped"]}
    assert "names 2 rows of 'runs'" in skipped["A"]
    assert _runs(ws) == [r for r in before if r[0] != "c"]
    assert (ws / "data" / "backtests" / "A-old" / "f").read_text() == "A-old"


@pytest.mark.parametrize(
    ("schema", "ids"),
    [
        # a child column compared case-blind, under a case-sensitive key: "a" is not "A"'s
        (
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER, dir TEXT);"
            " CREATE TABLE metrics (run_id TEXT COLLATE NOCASE REFERENCES runs(run_id), v);"
            " CREATE TABLE notes (id INTEGER PRIMARY KEY,"
            " run_ref TEXT COLLATE NOCASE REFERENCES runs(run_id) ON DELETE SET NULL, body)",
            ["A", "a", "B"],
        ),
        # an INTEGER child column under a TEXT key: 42 is '42', not '042' (whose own rows
        # the INTEGER column stored as 42 too: by the foreign key they are '42''s)
        (
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at INTEGER, dir TEXT);"
            " CREATE TABLE metrics (run_id INTEGER REFERENCES runs(run_id), v);"
            " CREATE TABLE notes (id INTEGER PRIMARY KEY,"
            " run_ref INTEGER REFERENCES runs(run_id) ON DELETE SET NULL, body)",
            ["042", "42", "B"],
        ),
    ],
)
def test_child_rows_go_with_the_run_their_foreign_key_names_not_a_look_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: str, ids: list
) -> None:
    """A child column declared with another collation or type than the run id it
    references compares "a" equal to "A", or 42 to '042'; SQLite's foreign keys do not
    (the parent key's collation and affinity). Deleting the oldest run deletes exactly the
    child rows SQLite's own foreign key check says reference it, sets exactly those
    references to NULL, and undo gives all back: a kept look-alike's rows are never
    touched (they used to be deleted with it)."""
    arts, db = bare_workspace(tmp_path, monkeypatch)
    c = sqlite3.connect(db)
    c.executescript(schema)
    for k, rid in enumerate(ids):
        c.execute("INSERT INTO runs VALUES (?, ?, ?)", (rid, 1_600_000_000 + k, f"d{k}"))
        c.executemany("INSERT INTO metrics VALUES (?, ?)", [(rid, f"{k}-1"), (rid, f"{k}-2")])
        c.execute("INSERT INTO notes (run_ref, body) VALUES (?, ?)", (rid, f"note {k}"))
        (arts / f"d{k}").mkdir()
    c.commit()
    c.close()
    # The oracle: the rows whose foreign key SQLite finds broken once the oldest run is gone
    # (in a copy of the catalog).
    shutil.copy(db, tmp_path / "oracle.db")
    o = sqlite3.connect(tmp_path / "oracle.db", isolation_level=None)
    o.execute("DELETE FROM runs WHERE run_id = ?", (ids[0],))
    orphans = {(t, rowid) for t, rowid, _, _ in o.execute("PRAGMA foreign_key_check")}
    o.close()
    # ("A" has rows of its own; '042' has none: the INTEGER column stored its 42s, which
    # the foreign key reads as '42''s.)
    assert len(orphans) == (3 if ids[0] == "A" else 0)
    (tmp_path / "retention.toml").write_text(
        '[catalog]\nchild_tables = [{ table = "metrics", column = "run_id" }]\n'
        '[artifacts]\npath_template = "{dir}"\n'
    )

    def dump() -> dict[str, list[tuple]]:
        con = sqlite3.connect(db)
        try:
            return {
                t: con.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall()
                for t in ("runs", "metrics", "notes")
            }
        finally:
            con.close()

    before = dump()
    assert invoke("plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    applied = invoke("apply", "m.json")
    assert applied.exit_code == 0, applied.stderr
    after = dump()
    assert after["runs"] == before["runs"][1:]
    assert after["metrics"] == [m for m in before["metrics"] if ("metrics", m[0]) not in orphans]
    assert after["notes"] == [
        (n[0], n[1], None, n[3]) if ("notes", n[0]) in orphans else n for n in before["notes"]
    ]
    txid = json.loads(applied.stdout)["txid"]
    undone = invoke("undo", txid)
    assert undone.exit_code == 0, undone.stderr
    assert dump() == before


def test_a_look_alike_added_after_the_plan_costs_only_its_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A protected run "a" added after the plan, under a NOCASE id column, is found by the
    commit's protect re-check for the manifest's "A": only "A" is left (its id now names
    two rows), "B" is still deleted, and no report names a run the manifest does not list."""
    arts, db = bare_workspace(tmp_path, monkeypatch)
    c = sqlite3.connect(db)
    c.execute(
        "CREATE TABLE runs (run_id TEXT COLLATE NOCASE, created_at INTEGER, dir TEXT,"
        " keep INTEGER DEFAULT 0)"
    )
    for k, rid in enumerate("ABCD"):
        c.execute(
            "INSERT INTO runs (run_id, created_at, dir) VALUES (?, ?, ?)",
            (rid, 1_600_000_000 + k, f"d{k}"),
        )
        (arts / f"d{k}").mkdir()
    c.commit()
    (tmp_path / "retention.toml").write_text(
        '[catalog]\nprotect = "keep = 1"\n[artifacts]\npath_template = "{dir}"\n'
    )
    assert invoke("plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    c.execute("INSERT INTO runs VALUES ('a', 1600000009, 'd9', 1)")
    c.commit()
    result = invoke("apply", "m.json", "--json")
    assert result.exit_code == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["deleted_run_ids"] == ["B"]
    assert {s["run_id"] for s in report["skipped"]} == {"A"}
    assert sorted(r for (r,) in c.execute("SELECT run_id FROM runs")) == ["A", "C", "D", "a"]
    c.close()
