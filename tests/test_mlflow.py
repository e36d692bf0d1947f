"""A real MLflow tracking store, end to end: examples/mlflow/ as the README documents it.

The store is built once per module by ``examples/mlflow/make_sample.py`` through
``MlflowClient`` (SQLite via SQLAlchemy and Alembic, local artifacts) and copied for each
test. The real ``retention`` executable runs plan, apply, undo, apply again (a new plan) and
``purge --all`` with ``examples/mlflow/retention.toml``; after each step the store is read
back through ``MlflowClient`` only (search_runs over every view type, get_run, metric
histories, logged models, linked traces, list_artifacts and the artifact files' contents),
and the SQLite file is checked for dangling rows: ``PRAGMA foreign_key_check`` and the
references MLflow does not declare (inputs -> runs, input_tags -> inputs,
entity_associations -> runs, latest_metrics <-> metrics).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import invoke, run_exe

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mlflow"
# MLflow's own store code trips a SQLAlchemy deprecation; not ours to act on.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
    pytest.mark.xdist_group("mlflow"),  # one worker builds the store once
]

# References to a run, or to a run's rows, that MLflow's SQLite schema does not declare
# (so PRAGMA foreign_key_check cannot see them); each query counts the dangling rows.
UNDECLARED = {
    "inputs.destination_id -> runs (dataset inputs)": (
        "SELECT count(*) FROM inputs WHERE destination_type = 'RUN'"
        " AND destination_id NOT IN (SELECT run_uuid FROM runs)"
    ),
    "inputs.source_id -> runs (model inputs and outputs)": (
        "SELECT count(*) FROM inputs WHERE source_type IN ('RUN_INPUT', 'RUN_OUTPUT')"
        " AND source_id NOT IN (SELECT run_uuid FROM runs)"
    ),
    "input_tags.input_uuid -> inputs": (
        "SELECT count(*) FROM input_tags WHERE input_uuid NOT IN (SELECT input_uuid FROM inputs)"
    ),
    "entity_associations.destination_id -> runs": (
        "SELECT count(*) FROM entity_associations WHERE destination_type = 'run'"
        " AND destination_id NOT IN (SELECT run_uuid FROM runs)"
    ),
    "latest_metrics without metrics": (
        "SELECT count(*) FROM latest_metrics AS l WHERE NOT EXISTS (SELECT 1 FROM metrics AS m"
        " WHERE m.run_uuid = l.run_uuid AND m.key = l.key)"
    ),
    "metrics without latest_metrics": (
        "SELECT count(*) FROM metrics AS m WHERE NOT EXISTS (SELECT 1 FROM latest_metrics AS l"
        " WHERE m.run_uuid = l.run_uuid AND m.key = l.key)"
    ),
}
# Every table whose rows a plan deletes with their run, and how each is found. Not here:
# issues, whose source_run_id declares ON DELETE SET NULL: the rows stay, the column is set
# (the sample has none).
TOUCHED = {
    "runs": "runs table",
    "metrics": "foreign key",
    "latest_metrics": "foreign key",
    "params": "foreign key",
    "tags": "foreign key",
    "logged_model_metrics": "foreign key",
    "inputs": "child_tables",
    "input_tags": "child_tables",
    "entity_associations": "child_tables",
}


@pytest.fixture(scope="module", autouse=True)
def quiet_mlflow() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("DO_NOT_TRACK", "true")
        mp.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
        yield


def _make_sample() -> Any:
    """examples/mlflow/make_sample.py as a module (imported in-process: MLflow is imported
    once for the whole file)."""
    spec = importlib.util.spec_from_file_location("make_sample", EXAMPLE / "make_sample.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A store built by make_sample.py (never changed: tests work on copies)."""
    where = tmp_path_factory.mktemp("mlflow-template")
    return where, _make_sample().build(where, runs=12)


@dataclass
class Store:
    dir: Path
    db: Path
    experiments: list[str]
    active: list[str]
    deleted_old: list[str]
    deleted_recent: list[str]

    def run_dir(self, experiment_id: str, run_id: str) -> Path:
        return self.dir / "mlruns" / experiment_id / run_id


@pytest.fixture
def store(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Store:
    """A copy of the template with the example's retention.toml beside it, as the current
    directory (for the read-only commands run in-process).

    MLflow records absolute artifact paths; the copy's rows are pointed at the copy's own
    artifact root, as one does after moving a store.
    """
    src, summary = template
    dst = tmp_path / "store"
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    shutil.copytree(src, dst)
    shutil.copy(EXAMPLE / "retention.toml", dst / "retention.toml")
    old, new = str(src / "mlruns") + "/", str(dst / "mlruns") + "/"
    con = sqlite3.connect(dst / "mlruns.db")
    with con:
        for table, col in (
            ("runs", "artifact_uri"),
            ("experiments", "artifact_location"),
            ("logged_models", "artifact_location"),
        ):
            con.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (old, new))
    con.close()
    monkeypatch.chdir(dst)
    return Store(
        dst,
        dst / "mlruns.db",
        summary["experiments"],
        summary["active"],
        summary["deleted_old"],
        summary["deleted_recent"],
    )


# -- reading the store through MLflow's client -------------------------------------------


@dataclass
class Snapshot:
    views: dict[str, list[str]]  # view type -> run ids search_runs finds
    runs: dict[str, dict[str, Any]]  # run id -> everything the client tells about it
    models: dict[str, Any]  # logged model id -> source run and metrics (with their run ids)
    traces: list[str]  # every trace of the experiments (they stay when a linked run goes)


def _client(store: Store) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store.db}")


def _artifacts(client: Any, run_id: str) -> dict[str, Any]:
    """What the client lists at the top of a run's artifacts, and every file's contents as
    it downloads them (one listing per directory level would cost a run lookup each)."""
    listed = sorted((i.path, i.is_dir, i.file_size) for i in client.list_artifacts(run_id))
    with tempfile.TemporaryDirectory() as dst:
        local = Path(client.download_artifacts(run_id, "", dst))
        files = {
            p.relative_to(local).as_posix(): p.read_bytes()
            for p in sorted(local.rglob("*"))
            if p.is_file()
        }
    assert sorted({name.split("/")[0] for name in files}) == [path for path, _, _ in listed]
    return {"listed": listed, "files": files}


def _traces(client: Any, store: Store, run_id: str | None) -> list[str]:
    """Ids of the traces linked to a run (or of every trace of the experiments)."""
    found = client.search_traces(locations=store.experiments, run_id=run_id, max_results=500)
    assert found.token is None
    return sorted(t.info.trace_id for t in found)


def read_store(store: Store) -> Snapshot:
    from mlflow.entities import ViewType

    client = _client(store)
    views = {}
    for name, vt in (
        ("active", ViewType.ACTIVE_ONLY),
        ("deleted", ViewType.DELETED_ONLY),
        ("all", ViewType.ALL),
    ):
        found = client.search_runs(store.experiments, run_view_type=vt, max_results=1000)
        assert found.token is None  # every run on one page
        views[name] = sorted(r.info.run_id for r in found)
    runs = {}
    for run_id in views["all"]:
        run = client.get_run(run_id)
        history = {
            key: sorted(
                (m.key, m.value, m.timestamp, m.step)
                for m in client.get_metric_history(run_id, key)
            )
            for key in run.data.metrics
        }
        runs[run_id] = {
            "run": run.to_dictionary(),
            "history": history,
            "artifacts": _artifacts(client, run_id),
            "traces": _traces(client, store, run_id),
        }
    models = {
        m.model_id: (
            m.source_run_id,
            sorted((x.key, x.value, x.timestamp, x.step, x.run_id) for x in m.metrics or []),
        )
        for m in client.search_logged_models(store.experiments)
    }
    return Snapshot(views, runs, models, _traces(client, store, None))


def assert_removed(store: Store, removed: list[str], before: Snapshot) -> None:
    """The removed runs are gone for MLflow's client: no run, no history, no artifacts."""
    from mlflow.exceptions import MlflowException

    client = _client(store)
    for run_id in removed:
        with pytest.raises(MlflowException) as err:
            client.get_run(run_id)
        assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        for key in before.runs[run_id]["history"]:
            assert client.get_metric_history(run_id, key) == []
        with pytest.raises(MlflowException):
            client.list_artifacts(run_id)
        with pytest.raises(MlflowException):  # search_traces(run_id=...) looks the run up
            _traces(client, store, run_id)
        exp = before.runs[run_id]["run"]["info"]["experiment_id"]
        assert not store.run_dir(exp, run_id).exists()


def assert_as_after_apply(store: Store, before: Snapshot) -> None:
    """Every run but the old soft-deleted ones is complete and unchanged; those are gone,
    with their rows in every table (metrics logged to a logged model included)."""
    after = read_store(store)
    removed = set(store.deleted_old)
    assert after.views == {
        "active": before.views["active"],
        "deleted": sorted(store.deleted_recent),
        "all": sorted(set(before.views["all"]) - removed),
    }
    for run_id in after.views["all"]:
        assert after.runs[run_id] == before.runs[run_id], run_id
    assert_removed(store, store.deleted_old, before)
    # Logged models are experiment-scoped and stay (mlflow gc keeps them too); only their
    # metrics logged by a removed run go with that run.
    assert after.models == {
        mid: (src, [m for m in metrics if m[4] not in removed])
        for mid, (src, metrics) in before.models.items()
    }
    assert after.traces == before.traces
    assert_no_dangling(store)


def dangling(store: Store) -> dict[str, int]:
    """Rows that reference a missing row, per reference (an empty dict when clean)."""
    con = sqlite3.connect(f"file:{store.db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        found: dict[str, int] = {}
        for table, _, parent, _ in con.execute("PRAGMA foreign_key_check"):
            key = f"{table} -> {parent} (declared)"
            found[key] = found.get(key, 0) + 1
        for what, sql in UNDECLARED.items():
            n = con.execute(sql).fetchone()[0]
            if n:
                found[what] = n
        return found
    finally:
        con.close()


def assert_no_dangling(store: Store) -> None:
    assert dangling(store) == {}
    check = invoke("check")  # in-process: the mutating commands run as real processes
    assert check.exit_code == 0, check.output


def rows_of(store: Store, run_ids: list[str]) -> dict[str, int]:
    """Rows the given runs have in each touched table, counted with plain SQL."""
    marks = ",".join("?" * len(run_ids))
    con = sqlite3.connect(f"file:{store.db}?mode=ro", uri=True)
    of_run = f"(destination_id IN ({marks}) OR source_id IN ({marks}))"
    queries = {
        "runs": f"SELECT count(*) FROM runs WHERE run_uuid IN ({marks})",
        **{
            t: f"SELECT count(*) FROM {t} WHERE run_uuid IN ({marks})"
            for t in ("metrics", "latest_metrics", "params", "tags")
        },
        "logged_model_metrics": (
            f"SELECT count(*) FROM logged_model_metrics WHERE run_id IN ({marks})"
        ),
        "inputs": f"SELECT count(*) FROM inputs WHERE {of_run}",
        "input_tags": (
            "SELECT count(*) FROM input_tags WHERE input_uuid IN"
            f" (SELECT input_uuid FROM inputs WHERE {of_run})"
        ),
        "entity_associations": (
            f"SELECT count(*) FROM entity_associations WHERE destination_id IN ({marks})"
        ),
    }
    try:
        return {
            t: con.execute(sql, run_ids * sql.count(f"({marks})")).fetchone()[0]
            for t, sql in queries.items()
        }
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[tuple[str, str]]:
    """Every file under ``root`` with a digest of its contents."""
    return sorted(
        (p.relative_to(root).as_posix(), digest(p)) for p in root.rglob("*") if p.is_file()
    )


def plan(store: Store, name: str) -> Path:
    out = run_exe("plan", "-o", name, cwd=store.dir)
    assert out.returncode == 0, out.stderr.decode()
    return store.dir / name


# -- the tests ---------------------------------------------------------------------------


def test_plan_apply_undo_apply_purge_read_back_through_mlflow(store: Store) -> None:
    before = read_store(store)
    assert before.views["deleted"] == sorted(store.deleted_old + store.deleted_recent)
    assert len(before.views["all"]) == 12 and len(store.deleted_old) == 4
    assert any(before.models.values()), "the sample logs models with metrics"
    assert_no_dangling(store)
    expected_rows = rows_of(store, store.deleted_old)
    for table in ("input_tags", "logged_model_metrics", "entity_associations"):
        assert expected_rows[table] > 0, table
    assert any(before.runs[r]["traces"] for r in store.deleted_old)

    # plan: read-only, exactly the soft-deleted runs older than 30 days.
    untouched = (digest(store.db), tree(store.dir / "mlruns"))
    first = plan(store, "first.json")
    assert (digest(store.db), tree(store.dir / "mlruns")) == untouched
    show = invoke("show", "--json", first.name)
    assert show.exit_code == 0, show.output
    report = json.loads(show.stdout)
    assert sorted(report["run_ids"]) == sorted(store.deleted_old)
    # Every table the plan touches, how it was found, and the rows these runs have there.
    listed = {t["table"]: t for t in report["tables"]["tables"] if t["table"] != "issues"}
    assert {t: v["found"] for t, v in listed.items()} == TOUCHED
    assert {t: v["rows"] for t, v in listed.items()} == expected_rows
    assert listed["input_tags"]["depth"] == 2
    assert {t["action"] for t in listed.values()} == {"delete"}
    issues = next(t for t in report["tables"]["tables"] if t["table"] == "issues")
    assert (issues["found"], issues["action"], issues["rows"]) == ("foreign key", "set null", 0)

    # apply
    applied = run_exe("apply", first.name, cwd=store.dir)
    assert applied.returncode == 0, applied.stderr.decode()
    assert json.loads(applied.stdout)["deleted_runs"] == 4
    assert_as_after_apply(store, before)

    # undo: every run back, identical to before, through the client
    undone = run_exe("undo", "--within", "24h", cwd=store.dir)
    assert undone.returncode == 0, undone.stderr.decode()
    assert read_store(store) == before
    assert rows_of(store, store.deleted_old) == expected_rows
    assert_no_dangling(store)

    # apply again, from a new plan
    second = plan(store, "second.json")
    assert json.loads(invoke("show", "--json", second.name).stdout)["run_ids"] == report["run_ids"]
    again = run_exe("apply", second.name, cwd=store.dir)
    assert again.returncode == 0, again.stderr.decode()
    txid = json.loads(again.stdout)["txid"]
    assert_as_after_apply(store, before)

    # purge --all: the trash is gone, the store reads as after apply, undo is refused
    purged = run_exe("purge", "--all", cwd=store.dir)
    assert purged.returncode == 0, purged.stderr.decode()
    assert not any((store.dir / "mlruns" / ".trash").glob("*/*"))
    assert_as_after_apply(store, before)
    purged_state = (digest(store.db), tree(store.dir / "mlruns"))
    refused = run_exe("undo", txid, cwd=store.dir)
    assert refused.returncode == 9, refused.stderr.decode()
    assert (digest(store.db), tree(store.dir / "mlruns")) == purged_state


def test_an_issue_keeps_its_row_with_a_null_source_run_and_gets_it_back_on_undo(
    store: Store,
) -> None:
    """issues.source_run_id declares ON DELETE SET NULL: after apply (and after purge) the
    issue is still there with a NULL source run, and undo puts its source back. The rows
    are inserted with SQL, as MLflow's issue tracking writes them (the sample's client
    calls create none)."""
    con = sqlite3.connect(store.db)
    with con:
        for n, run_id in enumerate([store.deleted_old[0], store.active[0]]):
            (exp,) = con.execute(
                "SELECT experiment_id FROM runs WHERE run_uuid = ?", (run_id,)
            ).fetchone()
            con.execute(
                "INSERT INTO issues (issue_id, experiment_id, name, description, status,"
                " source_run_id, created_timestamp, last_updated_timestamp)"
                " VALUES (?, ?, ?, 'seen in a run', 'open', ?, 1, 1)",
                (f"iss-{n}", exp, f"issue {n}", run_id),
            )
    con.close()

    def sources() -> dict[str, str | None]:
        c = sqlite3.connect(store.db)
        out = dict(c.execute("SELECT issue_id, source_run_id FROM issues").fetchall())
        c.close()
        return out

    before = sources()
    gone = store.deleted_old[0]
    applied = run_exe("apply", plan(store, "first.json").name, cwd=store.dir)
    assert applied.returncode == 0, applied.stderr.decode()
    assert sources() == {"iss-0": None, "iss-1": store.active[0]}
    undone = run_exe("undo", "--within", "24h", cwd=store.dir)
    assert undone.returncode == 0, undone.stderr.decode()
    assert sources() == before and before["iss-0"] == gone
    again = run_exe("apply", plan(store, "second.json").name, cwd=store.dir)
    assert again.returncode == 0, again.stderr.decode()
    assert run_exe("purge", "--all", cwd=store.dir).returncode == 0
    assert sources() == {"iss-0": None, "iss-1": store.active[0]}
    assert_no_dangling(store)


def test_without_input_tags_in_the_config_its_rows_are_left_dangling(store: Store) -> None:
    """The mistake the MLflow section warns about: ``input_tags`` references ``inputs``, not
    the runs, so nothing finds it unless it is named. ``config --check`` does not list it,
    and an apply leaves exactly those runs' input tags behind (which the checks above see).
    """
    toml = store.dir / "retention.toml"
    text = toml.read_text()
    assert 'table = "input_tags"' in text
    toml.write_text("".join(x for x in text.splitlines(True) if 'table = "input_tags"' not in x))
    tags_of_removed = rows_of(store, store.deleted_old)["input_tags"]
    assert tags_of_removed > 0

    listing = invoke("config", "--check", "--json")
    assert listing.exit_code == 0, listing.output
    tables = {t["table"] for t in json.loads(listing.stdout)["tables"]["tables"]}
    assert tables - {"issues"} == set(TOUCHED) - {"input_tags"}

    manifest = plan(store, "m.json")
    applied = run_exe("apply", manifest.name, cwd=store.dir)
    assert applied.returncode == 0, applied.stderr.decode()
    assert dangling(store) == {"input_tags.input_uuid -> inputs": tags_of_removed}


def test_make_sample_refuses_to_overwrite_a_store(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit, match="exists already"):
        _make_sample().main(["--dir", str(store.dir)])
