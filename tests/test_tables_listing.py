"""`show MANIFEST` and `config --check` list every table a plan touches (issue 14, item 3).

The runs table, tables found through declared foreign keys, tables named in
``catalog.child_tables``, and children of children, each with how it was found and its rows
(for `show`: the rows the manifest's runs have there; for `config --check`: the rows of the
runs ``catalog.filter`` selects), so that a missing table is noticed before apply. Expected
counts are computed here with plain SQL, not with retention's code.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from .conftest import NOW_TEXT, invoke

# A schema with every way to be found: steps (foreign key), step_logs (foreign keys to
# both steps and runs: two paths), notes (named), note_tags (named, references notes),
# links (foreign key declared ON DELETE CASCADE), and audit (a run_id that no plan touches).
# (ON DELETE SET NULL and RESTRICT are issue 15's: not pinned here.)
SCHEMA = """
CREATE TABLE runs (id TEXT PRIMARY KEY, created_at TEXT, kind TEXT);
CREATE TABLE steps (step_id INTEGER PRIMARY KEY, run_id TEXT REFERENCES runs(id), n INTEGER);
CREATE TABLE step_logs (
    step_id INTEGER REFERENCES steps(step_id), run_id TEXT REFERENCES runs(id), line TEXT);
CREATE TABLE notes (note_id TEXT PRIMARY KEY, run_ref TEXT, body TEXT);
CREATE TABLE note_tags (note_id TEXT, tag TEXT);
CREATE TABLE links (url TEXT, run_id TEXT REFERENCES runs(id) ON DELETE CASCADE);
CREATE TABLE audit (at TEXT, run_id TEXT, what TEXT);
"""
CONFIG = """
[catalog]
path = "catalog.db"
runs_table = "runs"
id_column = "id"
time_columns = ["created_at"]
filter = "kind = 'train'"
child_tables = [
  { table = "notes", column = "run_ref" },
  { table = "note_tags", column = "note_id", parent_table = "notes", parent_column = "note_id" },
]
[artifacts]
root = "artifacts"
path_template = "{id}"
[policy]
keep_last = 2
"""


@pytest.fixture
def catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Six runs a month apart (four of kind 'train'), with rows in every table."""
    db = sqlite3.connect(tmp_path / "catalog.db")
    db.executescript(SCHEMA)
    for i in range(6):
        run = f"r{i}"
        db.execute(
            "INSERT INTO runs VALUES (?, ?, ?)",
            (run, f"2026-0{i + 1}-01T00:00:00", "train" if i < 4 else "eval"),
        )
        for n in range(2):
            step = db.execute("INSERT INTO steps VALUES (NULL, ?, ?)", (run, n)).lastrowid
            db.execute("INSERT INTO step_logs VALUES (?, ?, 'ok')", (step, run))
            db.execute("INSERT INTO step_logs VALUES (?, ?, 'done')", (step, run))
        db.execute("INSERT INTO notes VALUES (?, ?, 'x')", (f"n{i}", run))
        db.executemany(
            "INSERT INTO note_tags VALUES (?, ?)", [(f"n{i}", t) for t in ("a", "b", "c")]
        )
        db.execute("INSERT INTO links VALUES ('https://x', ?)", (run,))
        db.execute("INSERT INTO audit VALUES ('now', ?, 'created')", (run,))
        (tmp_path / "artifacts" / run).mkdir(parents=True)
        (tmp_path / "artifacts" / run / "f.txt").write_text(run)
    db.commit()
    db.close()
    (tmp_path / "retention.toml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    for k in ("RETENTION_CONFIG", "RETENTION_CATALOG_PATH", "RETENTION_CHILD_TABLES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    return tmp_path / "catalog.db"


def _rows(db: Path, runs: list[str]) -> dict[str, int]:
    marks = ",".join("?" * len(runs))
    con = sqlite3.connect(db)
    q = {
        "runs": f"SELECT count(*) FROM runs WHERE id IN ({marks})",
        "steps": f"SELECT count(*) FROM steps WHERE run_id IN ({marks})",
        "step_logs": f"SELECT count(*) FROM step_logs WHERE run_id IN ({marks})",
        "notes": f"SELECT count(*) FROM notes WHERE run_ref IN ({marks})",
        "note_tags": (
            "SELECT count(*) FROM note_tags WHERE note_id IN"
            f" (SELECT note_id FROM notes WHERE run_ref IN ({marks}))"
        ),
        "links": f"SELECT count(*) FROM links WHERE run_id IN ({marks})",
    }
    try:
        return {t: con.execute(sql, runs).fetchone()[0] for t, sql in q.items()}
    finally:
        con.close()


def _totals(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        return {
            t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("runs", "steps", "step_logs", "notes", "note_tags", "links")
        }
    finally:
        con.close()


def _hop(table: str, col: str, parent: str, pcol: str, found: str, on_delete: str | None):
    return {
        "table": table,
        "columns": [col],
        "parent": parent,
        "parent_columns": [pcol],
        "found": found,
        "on_delete": on_delete,
    }


STEPS = _hop("steps", "run_id", "runs", "id", "foreign key", "NO ACTION")
NOTES = _hop("notes", "run_ref", "runs", "id", "child_tables", None)
EXPECTED_PATHS = {
    "runs": ("runs table", 0, []),
    "links": (
        "foreign key",
        1,
        [[_hop("links", "run_id", "runs", "id", "foreign key", "CASCADE")]],
    ),
    "notes": ("child_tables", 1, [[NOTES]]),
    "steps": ("foreign key", 1, [[STEPS]]),
    "step_logs": (
        "foreign key",
        2,
        [
            [_hop("step_logs", "run_id", "runs", "id", "foreign key", "NO ACTION")],
            [_hop("step_logs", "step_id", "steps", "step_id", "foreign key", "NO ACTION"), STEPS],
        ],
    ),
    "note_tags": (
        "child_tables",
        2,
        [[_hop("note_tags", "note_id", "notes", "note_id", "child_tables", None), NOTES]],
    ),
}


def _check_tables(report: dict, rows: dict[str, int], totals: dict[str, int]) -> None:
    tables = report["tables"]
    assert tables[0]["table"] == "runs"
    assert [t["depth"] for t in tables] == sorted(t["depth"] for t in tables)
    got = {t["table"]: (t["found"], t["depth"], t["paths"]) for t in tables}
    assert got.keys() == EXPECTED_PATHS.keys()
    for name, (found, depth, paths) in EXPECTED_PATHS.items():
        assert got[name][:2] == (found, depth), name
        canonical = sorted(json.dumps(p, sort_keys=True) for p in paths)
        assert sorted(json.dumps(p, sort_keys=True) for p in got[name][2]) == canonical, name
    assert {t["table"]: t["rows"] for t in tables} == rows
    assert {t["table"]: t["total_rows"] for t in tables} == totals
    assert report["not_included"] == [{"table": "audit", "column": "run_id"}]


def test_config_check_lists_every_table_with_rows_of_the_considered_runs(catalog: Path) -> None:
    before = hashlib.sha256(catalog.read_bytes()).hexdigest()
    result = invoke("config", "--check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["tables"]
    considered = ["r0", "r1", "r2", "r3"]  # kind = 'train'
    assert report["runs"] == 4
    assert report["rows_of"] == "the 4 runs selected by catalog.filter"
    # step_logs rows are reached along two paths; each counts once.
    assert _rows(catalog, considered)["step_logs"] == 16
    _check_tables(report, _rows(catalog, considered), _totals(catalog))
    assert hashlib.sha256(catalog.read_bytes()).hexdigest() == before  # read-only

    human = invoke("config", "--check")
    assert human.exit_code == 0, human.output
    out = human.stdout
    assert "catalog.child_tables" in out  # the configuration comes first, as without --check
    lines = out[out.index("Tables a plan touches") :].splitlines()
    assert lines[0] == (
        "Tables a plan touches (6), with the rows of the 4 runs selected by catalog.filter"
        " / all rows in the table:"
    )
    assert lines[1:8] == [
        "  runs            4 /  6  the runs table",
        "    links         4 /  6  links.run_id -> runs.id (foreign key, ON DELETE CASCADE)",
        "    notes         4 /  6  notes.run_ref -> runs.id (child_tables)",
        "    steps         8 / 12  steps.run_id -> runs.id (foreign key)",
        "      note_tags  12 / 18  note_tags.note_id -> notes.note_id (child_tables)",
        "      step_logs  16 / 24  step_logs.run_id -> runs.id (foreign key)",
        "                          step_logs.step_id -> steps.step_id (foreign key)",
    ]
    assert lines[8] == "Not touched, though named like a run id: audit.run_id."
    assert lines[9].startswith("  Hint: if those rows belong to a run, name their table in")


def test_show_lists_the_rows_the_manifests_runs_have_in_each_table(catalog: Path) -> None:
    plan = invoke("plan", "--now", NOW_TEXT, "-o", "m.json")
    assert plan.exit_code == 0, plan.output
    show = invoke("show", "--json", "m.json")
    assert show.exit_code == 0, show.output
    report = json.loads(show.stdout)
    assert sorted(report["run_ids"]) == ["r0", "r1"]  # the two oldest 'train' runs
    tables = report["tables"]
    assert (tables["runs"], tables["rows_of"]) == (2, "this manifest's 2 runs")
    _check_tables(tables, _rows(catalog, ["r0", "r1"]), _totals(catalog))

    human = invoke("show", "m.json").stdout
    assert "Tables a plan touches (6), with the rows of this manifest's 2 runs" in human
    assert "      note_tags  6 / 18  note_tags.note_id -> notes.note_id (child_tables)" in human
    assert human.rstrip().endswith("Apply with: retention apply m.json")

    # After apply the manifest's runs have no rows left anywhere; the totals went down.
    applied = invoke("apply", "m.json")
    assert applied.exit_code == 0, applied.output
    after = json.loads(invoke("show", "--json", "m.json").stdout)["tables"]
    assert {t["table"]: t["rows"] for t in after["tables"]} == dict.fromkeys(EXPECTED_PATHS, 0)
    assert {t["table"]: t["total_rows"] for t in after["tables"]} == _totals(catalog)
    assert _totals(catalog)["note_tags"] == 12


def test_default_layout_lists_run_metrics_found_both_ways(workspace: Path) -> None:
    result = invoke("config", "--check")
    assert result.exit_code == 0, result.output
    assert "Tables a plan touches (2), with the rows of all 40 runs" in result.stdout
    assert (
        "  run_metrics  120 / 120  run_metrics.run_id -> runs.run_id (foreign key, child_tables)"
        in result.stdout
    )


def test_config_check_refuses_a_configuration_the_catalog_does_not_match(
    catalog: Path,
) -> None:
    toml = catalog.parent / "retention.toml"
    toml.write_text(toml.read_text().replace('table = "note_tags"', 'table = "note_tag"'))
    assert invoke("config").exit_code == 0  # without --check, the catalog is not opened
    result = invoke("config", "--check")
    assert result.exit_code == 4
    assert result.stderr.splitlines()[0] == (
        "Error: catalog has no table 'note_tag' (named in catalog.child_tables)"
    )


def test_set_null_and_blocking_references_are_listed_with_what_a_plan_does(
    catalog: Path,
) -> None:
    """Rows that stay: a SET NULL reference has its column set; a RESTRICT one keeps the run."""
    db = sqlite3.connect(catalog)
    db.executescript(
        """
        CREATE TABLE issues (id INTEGER PRIMARY KEY,
                             run_id TEXT REFERENCES runs(id) ON DELETE SET NULL);
        CREATE TABLE holds (id INTEGER PRIMARY KEY,
                            step_id INTEGER REFERENCES steps(step_id) ON DELETE RESTRICT);
        INSERT INTO issues (run_id) VALUES ('r0'), ('r1'), ('r5'), (NULL);
        INSERT INTO holds (step_id) SELECT step_id FROM steps WHERE run_id = 'r1' AND n = 0;
        """
    )
    db.commit()
    db.close()
    report = json.loads(invoke("config", "--check", "--json").stdout)["tables"]
    got = {t["table"]: t for t in report["tables"]}
    assert {t: (got[t]["action"], got[t]["depth"], got[t]["rows"]) for t in got} == {
        "runs": ("delete", 0, 4),
        "links": ("delete", 1, 4),
        "notes": ("delete", 1, 4),
        "steps": ("delete", 1, 8),
        "note_tags": ("delete", 2, 12),
        "step_logs": ("delete", 2, 16),
        "issues": ("set null", 1, 2),  # r0 and r1 are among the considered runs, r5 is not
        "holds": ("blocks", 2, 1),
    }
    assert got["holds"]["paths"] == [
        [
            _hop("holds", "step_id", "steps", "step_id", "foreign key", "RESTRICT"),
            STEPS,
        ]
    ]
    assert report["not_included"] == [{"table": "audit", "column": "run_id"}]
    out = invoke("config", "--check").stdout
    assert (
        "    issues        2 /  4  issues.run_id -> runs.id (foreign key, ON DELETE SET NULL):"
        " the rows stay, the column is set to NULL"
    ) in out
    assert (
        "      holds       1 /  1  holds.step_id -> steps.step_id (foreign key, ON DELETE"
        " RESTRICT): a run that such a row references is left out of the plan"
    ) in out

    # The plan leaves r1 out (held); show counts r0's issue, and no holds row.
    assert invoke("plan", "--now", NOW_TEXT, "-o", "m.json").exit_code == 3
    shown = json.loads(invoke("show", "--json", "m.json").stdout)
    assert shown["run_ids"] == ["r0"]
    rows = {t["table"]: t["rows"] for t in shown["tables"]["tables"]}
    assert (rows["issues"], rows["holds"]) == (1, 0)
