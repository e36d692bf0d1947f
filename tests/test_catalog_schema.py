"""Catalog identity (`retention.identity`) and plans over a non-default schema.

Identity rule, proven below:

* before the first apply, ``plan`` binds the catalog *file* (real path, device, inode) to a
  new lineage id in ``<state>/catalog-id.json``; a manifest is accepted only by that file;
* once an apply has committed, the catalog itself records the lineage id in
  ``_retention_meta`` and that wins: a byte copy made after it is the same catalog, another
  lineage is another catalog.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import msgspec
import pytest

from .conftest import NOW_TEXT, invoke

# -- identity ------------------------------------------------------------------------------


def _plan_to(path: str, *extra: str) -> dict:
    result = invoke("plan", "--keep-last", "30", "--now", NOW_TEXT, "-o", path, *extra)
    assert result.exit_code == 0, result.stderr
    return msgspec.json.decode(Path(path).read_bytes())["payload"]


def _show(monkeypatch: pytest.MonkeyPatch, catalog: Path | None, manifest: str):
    if catalog is None:
        monkeypatch.delenv("RETENTION_CATALOG_PATH", raising=False)
    else:
        monkeypatch.setenv("RETENTION_CATALOG_PATH", str(catalog))
    return invoke("show", manifest)


def _record_lineage(catalog: Path, lineage: str) -> None:
    """What the first apply does in its commit transaction (simulated by hand)."""
    db = sqlite3.connect(catalog)
    db.execute("CREATE TABLE IF NOT EXISTS _retention_meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT OR REPLACE INTO _retention_meta VALUES ('lineage_id', ?)", (lineage,))
    db.commit()
    db.close()


def test_show_refuses_a_manifest_planned_against_another_catalog_file(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = workspace / "data" / "catalog.db"
    b = workspace / "copy" / "catalog.db"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    payload = _plan_to("a.json")
    assert payload["catalog_id"].startswith("cat-")
    assert _show(monkeypatch, None, "a.json").exit_code == 0

    result = _show(monkeypatch, b, "a.json")
    assert result.exit_code == 5
    lines = result.stderr.splitlines()
    assert lines[0] == (
        f"Error: manifest {payload['manifest_id']} was planned against another catalog"
        f" ({payload['catalog_path']}, {payload['catalog_id']}); this one is {b}"
        " (never planned)"
    )
    assert "another catalog" in lines[0]
    assert lines[1].startswith("Hint: plan again against this catalog")
    assert result.stdout == ""

    # Planning against the copy binds it to a lineage of its own: still another catalog.
    payload_b = _plan_to("b.json")
    assert payload_b["catalog_id"] != payload["catalog_id"]
    assert _show(monkeypatch, b, "a.json").exit_code == 5
    assert _show(monkeypatch, None, "b.json").exit_code == 5
    assert _show(monkeypatch, b, "b.json").exit_code == 0
    assert _show(monkeypatch, None, "a.json").exit_code == 0


def test_binding_before_first_apply_is_the_file_path_and_inode_in_the_state_dir(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = workspace / "data" / "catalog.db"
    payload = _plan_to("a.json")
    bindings = json.loads(Path(".retention/catalog-id.json").read_text())["bindings"]
    st = a.stat()
    assert bindings == {
        f"sqlite:{os.path.realpath(a)}#dev={st.st_dev},ino={st.st_ino}": payload["catalog_id"]
    }
    # A second plan reuses the binding; planning never writes the catalog.
    assert _plan_to("a2.json")["catalog_id"] == payload["catalog_id"]
    con = sqlite3.connect(a)
    assert "_retention_meta" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.close()

    # Same path, new file (a copy moved over it): another inode, so another catalog.
    tmp = workspace / "data" / "catalog.db.new"
    shutil.copyfile(a, tmp)
    os.replace(tmp, a)
    result = _show(monkeypatch, None, "a.json")
    assert result.exit_code == 5
    assert "another catalog" in result.stderr.splitlines()[0]

    # Losing the state dir's binding before the first apply loses the identity too.
    shutil.copyfile(".retention/catalog-id.json", "saved.json")
    os.unlink(".retention/catalog-id.json")
    assert _show(monkeypatch, None, "a2.json").exit_code == 5


def test_after_first_apply_the_lineage_in_the_catalog_wins_and_travels_with_copies(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = workspace / "data" / "catalog.db"
    payload = _plan_to("a.json")
    _record_lineage(a, payload["catalog_id"])
    assert _show(monkeypatch, None, "a.json").exit_code == 0

    # The state dir's binding no longer matters: the catalog is authoritative.
    os.unlink(".retention/catalog-id.json")
    assert _show(monkeypatch, None, "a.json").exit_code == 0

    # A byte copy made after the first apply (a restored backup) is the same catalog.
    b = workspace / "backup.db"
    shutil.copyfile(a, b)
    assert _show(monkeypatch, b, "a.json").exit_code == 0
    assert _plan_to("b.json", "--catalog", str(b))["catalog_id"] == payload["catalog_id"]
    assert not Path(".retention/catalog-id.json").exists()  # nothing new bound

    # A catalog whose recorded lineage differs is another catalog, whatever its path.
    _record_lineage(b, "cat-000000000000000000000000")
    result = _show(monkeypatch, b, "a.json")
    assert result.exit_code == 5
    assert result.stderr.splitlines()[0].endswith(
        f"was planned against another catalog ({payload['catalog_path']},"
        f" {payload['catalog_id']}); this one is {b} (cat-000000000000000000000000)"
    )


def test_a_copy_made_before_the_first_apply_stays_foreign_after_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = workspace / "data" / "catalog.db"
    early_copy = workspace / "early.db"
    shutil.copyfile(a, early_copy)
    payload = _plan_to("a.json")
    _record_lineage(a, payload["catalog_id"])
    assert _show(monkeypatch, early_copy, "a.json").exit_code == 5


# -- a non-default schema ------------------------------------------------------------------

# MLflow-like: text ids, epoch-ms INTEGER start times, artifacts at {experiment_id}/{run_uuid};
# params and metrics declare foreign keys, metric_points is a grandchild (through metrics),
# tags has no foreign key and is named in the config; notes is unrelated.
SCHEMA = """
CREATE TABLE runs (
    run_uuid TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, start_time INTEGER,
    artifact_uri TEXT, name TEXT);
CREATE TABLE params (
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid), key TEXT, value TEXT,
    PRIMARY KEY (run_uuid, key));
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY, run_uuid TEXT NOT NULL REFERENCES runs(run_uuid), key TEXT);
CREATE TABLE metric_points (
    metric_id INTEGER NOT NULL REFERENCES metrics(id), step INTEGER, value REAL);
CREATE TABLE tags (run_uuid TEXT NOT NULL, key TEXT, value TEXT);
CREATE TABLE notes (run_uuid TEXT, body TEXT);
"""
DAY_MS = 86_400_000


@pytest.fixture
def ml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace dir as cwd (catalog built by `_mlflow`), clean environment."""
    ws = tmp_path / "ml"
    ws.mkdir()
    monkeypatch.chdir(ws)
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return ws


NOW_MS = 1793491200000  # 2026-11-01T00:00:00Z


def _mlflow(root: Path, runs: list[tuple[str, str, int]], *, toml: str = "") -> Path:
    """Build the catalog and artifact dirs; ``runs`` is (run_uuid, experiment_id, age_days)."""
    art = root / "artifacts"
    art.mkdir()
    db = sqlite3.connect(root / "mlruns.db")
    db.executescript(SCHEMA)
    for n, (run, exp, age) in enumerate(runs):
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?)",
            (run, exp, NOW_MS - age * DAY_MS, f"file://{art}/{exp}/{run}", f"run {n}"),
        )
        db.execute("INSERT INTO params VALUES (?, 'lr', ?)", (run, str(n)))
        cur = db.execute("INSERT INTO metrics (run_uuid, key) VALUES (?, 'loss')", (run,))
        db.executemany(
            "INSERT INTO metric_points VALUES (?, ?, ?)",
            [(cur.lastrowid, s, s / 10) for s in range(3)],
        )
        db.execute("INSERT INTO tags VALUES (?, 'owner', 'me')", (run,))
        db.execute("INSERT INTO notes VALUES (?, 'hello')", (run,))
        d = art / exp / run
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.bin").write_bytes(b"m" * (100 + n))
    db.commit()
    db.close()
    (root / "retention.toml").write_text(
        '[catalog]\npath = "mlruns.db"\nid_column = "run_uuid"\n'
        'time_columns = ["start_time"]\n'
        'child_tables = [{table = "tags", column = "run_uuid"}]\n'
        '[artifacts]\nroot = "artifacts"\n' + toml
    )
    return art


TEMPLATE = 'path_template = "{experiment_id}/{run_uuid}"\n'
RUNS = [
    ("0f3a-old", "exp1", 400),
    ("1b2c-old", "exp2", 200),
    ("2d4e-new", "exp1", 5),
    ("3e5f-new", "exp2", 1),
]


def _plan(*extra: str, code: int = 0) -> tuple[dict, str]:
    result = invoke("plan", "--max-age", "90d", "--now", NOW_TEXT, *extra)
    assert result.exit_code == code, result.stderr
    return msgspec.json.decode(result.stdout)["payload"], result.stderr


def test_non_default_schema_plans_text_ids_epoch_ms_template_and_grandchildren(
    ml: Path,
) -> None:
    ws = ml
    _mlflow(ws, RUNS, toml=TEMPLATE)
    payload, _ = _plan()
    entries = payload["entries"]
    assert [(e["run_id"], e["path"], e["bytes"], e["files"]) for e in entries] == [
        ("0f3a-old", "exp1/0f3a-old", 100, 1),
        ("1b2c-old", "exp2/1b2c-old", 101, 1),
    ]
    assert [e["time"] for e in entries] == ["2025-09-27T00:00:00Z", "2026-04-15T00:00:00Z"]
    assert all(e["exists"] for e in entries)
    # Tables reachable through declared foreign keys (transitively) and the configured one.
    assert payload["tables"] == ["runs", "metrics", "params", "tags", "metric_points"]
    assert payload["artifact_root"] == str(ws / "artifacts")


def _fps(*extra: str) -> dict[str, str]:
    return {e["run_id"]: e["rows_fp"] for e in _plan(*extra)[0]["entries"]}


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE tags SET value = 'you' WHERE run_uuid = '0f3a-old'",  # configured, no FK
        "INSERT INTO tags VALUES ('0f3a-old', 'extra', '1')",
        "DELETE FROM tags WHERE run_uuid = '0f3a-old'",
        "UPDATE metric_points SET value = 9 WHERE metric_id = 1 AND step = 2",  # grandchild
        "UPDATE params SET value = 'x' WHERE run_uuid = '0f3a-old'",  # child with FK
        "UPDATE runs SET name = 'renamed' WHERE run_uuid = '0f3a-old'",
    ],
)
def test_rows_fingerprint_changes_when_any_row_of_the_run_changes(ml: Path, sql) -> None:
    ws = ml
    _mlflow(ws, RUNS, toml=TEMPLATE)
    before = _fps()
    db = sqlite3.connect("mlruns.db")
    assert db.execute(sql).rowcount >= 1
    db.commit()
    db.close()
    after = _fps()
    assert after["0f3a-old"] != before["0f3a-old"]
    assert after["1b2c-old"] == before["1b2c-old"]


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE notes SET body = 'bye'",  # unrelated: no FK, not configured
        "UPDATE tags SET value = 'you' WHERE run_uuid = '2d4e-new'",  # a kept run's row
        "INSERT INTO metric_points VALUES (3, 9, 9.0)",  # metric 3 belongs to a kept run
    ],
)
def test_rows_fingerprint_ignores_rows_of_other_runs_and_unrelated_tables(ml: Path, sql) -> None:
    ws = ml
    _mlflow(ws, RUNS, toml=TEMPLATE)
    before = _fps()
    db = sqlite3.connect("mlruns.db")
    db.execute(sql)
    db.commit()
    db.close()
    assert _fps() == before


def test_path_column_with_file_uris_absolute_and_relative_paths(ml: Path) -> None:
    ws = ml
    art = _mlflow(ws, RUNS, toml='path_column = "artifact_uri"\n')
    (art / "exp 3" / "4a-old").mkdir(parents=True)
    (art / "exp 3" / "4a-old" / "x").write_bytes(b"12345")
    db = sqlite3.connect("mlruns.db")
    db.executemany(
        "INSERT INTO runs (run_uuid, experiment_id, start_time, artifact_uri) VALUES (?,?,?,?)",
        [
            ("4a-old", "exp3", NOW_MS - 300 * DAY_MS, f"file://{art}/exp%203/4a-old"),
            ("5b-old", "exp1", NOW_MS - 300 * DAY_MS, str(art / "exp1" / "5b-old")),
            ("6c-old", "exp1", NOW_MS - 300 * DAY_MS, "exp1/6c-old"),
            ("7d-old", "exp1", NOW_MS - 300 * DAY_MS, None),
            ("8e-old", "exp1", NOW_MS - 300 * DAY_MS, ""),
        ],
    )
    db.commit()
    db.close()
    payload, _ = _plan()
    got = {e["run_id"]: (e["path"], e["exists"], e["bytes"]) for e in payload["entries"]}
    assert got == {
        "0f3a-old": ("exp1/0f3a-old", True, 100),
        "1b2c-old": ("exp2/1b2c-old", True, 101),
        "4a-old": ("exp 3/4a-old", True, 5),
        "5b-old": ("exp1/5b-old", False, 0),
        "6c-old": ("exp1/6c-old", False, 0),
        "7d-old": (None, False, 0),
        "8e-old": (None, False, 0),
    }


def _add_old_runs(uris: list[tuple[str, str | None, str]]) -> None:
    db = sqlite3.connect("mlruns.db")
    db.executemany(
        "INSERT INTO runs (run_uuid, experiment_id, start_time, artifact_uri) VALUES (?,?,?,?)",
        [(r, e, NOW_MS - 300 * DAY_MS, u) for r, e, u in uris],
    )
    db.commit()
    db.close()


def test_path_column_outside_the_artifact_root_is_left_out_and_reported(
    ml: Path,
) -> None:
    ws = ml
    art = _mlflow(ws, RUNS, toml='path_column = "artifact_uri"\n')
    outside = ws.parent / "outside"
    (outside / "victim").mkdir(parents=True)
    (outside / "victim" / "keep.txt").write_text("precious")
    _add_old_runs(
        [
            ("x1", "e", str(outside / "victim")),
            ("x2", "e", f"file://{outside}/victim"),
            ("x3", "e", "../outside/victim"),
            ("x4", "e", f"{art}/../outside/victim"),
            ("x5", "e", str(art)),  # the root itself
            ("x6", "e", "."),
            ("x7", "e", f"{art}/.trash/tx-1/000000-r"),  # the trash
            ("x8", "e", f"{art}x/sibling"),  # shares the root's name as a prefix
            ("x9", "e", f"file://{art}/exp1/%2E%2E/exp2/1b2c-old"),  # another run's dir
        ]
    )
    payload, stderr = _plan(code=3)
    assert sorted(e["run_id"] for e in payload["entries"]) == ["0f3a-old", "1b2c-old"]
    for run in ("x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9"):
        assert f"Skipped {run}: artifact path refused: " in stderr, run
    assert f"Skipped x1: artifact path refused: {outside}/victim is outside the artifact root" in (
        stderr
    )
    assert payload["kept"] == 2 + 9
    assert (outside / "victim" / "keep.txt").read_text() == "precious"


def test_template_value_with_dot_dot_is_left_out_and_reported(ml: Path) -> None:
    ws = ml
    art = _mlflow(ws, RUNS, toml=TEMPLATE)
    # "../x" escapes the root; "exp1/../exp2/1b2c-old" would stay inside but name another
    # run's directory; "." and ".." name the root or above. All are refused.
    _add_old_runs(
        [
            ("x", "..", "-"),
            ("../exp2/1b2c-old", "exp1", "-"),
            ("..", "exp1", "-"),
            ("nul\0byte", "exp1", "-"),  # would make lstat raise
        ]
    )
    payload, stderr = _plan(code=3)
    assert sorted(e["run_id"] for e in payload["entries"]) == ["0f3a-old", "1b2c-old"]
    assert "Skipped ../exp2/1b2c-old: artifact path refused: exp1/../exp2/1b2c-old contains" in (
        stderr
    )
    # (human lines escape control characters: the NUL shows as \x00)
    for run in ("x", "../exp2/1b2c-old", "..", "nul\\x00byte"):
        assert f"Skipped {run}: artifact path refused: " in stderr, (run, stderr)
    assert [e["path"] for e in payload["entries"]].count("exp2/1b2c-old") == 1
    assert (art / "exp2" / "1b2c-old" / "model.bin").exists()


def test_symlinked_parent_leading_out_of_the_root_is_refused(ml: Path) -> None:
    ws = ml
    art = _mlflow(ws, RUNS, toml=TEMPLATE)
    outside = ws.parent / "outside"
    (outside / "r-sym").mkdir(parents=True)
    (outside / "r-sym" / "keep.txt").write_text("precious")
    (art / "exp9").symlink_to(outside, target_is_directory=True)
    (art / "exp8").symlink_to(art / "exp1", target_is_directory=True)  # stays inside: fine
    (art / "exp1" / "r-in").mkdir()
    _add_old_runs([("r-sym", "exp9", "-"), ("r-in", "exp8", "-")])
    payload, stderr = _plan(code=3)
    assert sorted(e["run_id"] for e in payload["entries"]) == ["0f3a-old", "1b2c-old", "r-in"]
    assert (
        "Skipped r-sym: artifact path refused: exp9/r-sym: a parent directory is a symlink"
        " leading out of the root"
    ) in stderr
    assert (outside / "r-sym" / "keep.txt").read_text() == "precious"


def test_final_component_symlink_is_measured_as_a_link_not_followed(ml: Path) -> None:
    ws = ml
    art = _mlflow(ws, RUNS, toml=TEMPLATE)
    outside = ws.parent / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 100_000)
    (art / "exp1" / "r-link").symlink_to(outside, target_is_directory=True)
    _add_old_runs([("r-link", "exp1", "-")])
    payload, _ = _plan()
    e = next(e for e in payload["entries"] if e["run_id"] == "r-link")
    assert e["exists"] and e["files"] == 1
    assert e["bytes"] == len(str(outside))  # the link itself, not its target


def test_file_uri_naming_another_host_is_refused(ml: Path) -> None:
    art = _mlflow(ml, RUNS, toml='path_column = "artifact_uri"\n')
    (art / "exp1" / "remote").mkdir()
    _add_old_runs(
        [
            ("remote", "exp1", f"file://nas01{art}/exp1/remote"),
            ("local", "exp1", f"file://localhost{art}/exp1/local"),
        ]
    )
    payload, stderr = _plan(code=3)
    assert "Skipped remote: artifact path refused: " in stderr
    assert "local" in [e["run_id"] for e in payload["entries"]]
