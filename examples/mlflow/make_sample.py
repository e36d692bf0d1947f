"""Build a real MLflow tracking store to try `retention` on, through MLflow's own client.

    python make_sample.py                  # mlruns.db and mlruns/ beside this script
    python make_sample.py --dir /tmp/store --runs 200

The store is what a ``sqlite:///mlruns.db`` tracking URI keeps: an SQLite database created
by MLflow's migrations, and an artifact tree at ``mlruns/<experiment_id>/<run_uuid>/artifacts/``
(``mlflow server`` serves artifacts from ``./mlartifacts`` by default, with the same layout
under it: point ``artifacts.root`` there). Everything is written through
`mlflow.tracking.MlflowClient` (needs ``mlflow-skinny``, ``sqlalchemy`` and ``alembic``):
a few experiments, runs with params, tags, metric histories, a logged dataset input (rows in
``inputs`` and ``input_tags``), a few artifact files, for some runs a logged model that the
run outputs (``inputs`` rows with ``source_id`` = the run, ``logged_model_metrics``) or takes
as input, and for some a trace linked to the run (``entity_associations``).

Run ``i`` (0-based) is soft-deleted with ``client.delete_run`` when ``i % 3 == 1``, and its
``deleted_time`` is then moved to ``--deleted-days-ago`` days back (MLflow stamps "now";
the only write made without the client). When ``i % 6 == 2`` it is soft-deleted two days
ago: too young for ``max_age = "30d"``. The rest stay active.

Prints a JSON summary on stdout: the store's paths and the run ids by state.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DAY_MS = 86_400_000


def _quiet_mlflow() -> None:
    # No network here and none wanted: MLflow 3 sends usage telemetry unless told not to.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Traces are exported by a background thread unless this is off; the store must hold
    # them before the run they are linked to is soft-deleted.
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def state_of(i: int) -> str:
    """Which state run ``i`` ends in: active, deleted_old or deleted_recent."""
    if i % 3 == 1:
        return "deleted_old"
    if i % 6 == 2:
        return "deleted_recent"
    return "active"


def build(
    out: Path,
    *,
    runs: int = 12,
    experiments: int = 3,
    deleted_days_ago: int = 40,
    seed: int = 7,
) -> dict[str, Any]:
    """Create ``out/mlruns.db`` and ``out/mlruns/`` (refuses if the database exists).

    Returns the summary that the command prints.
    """
    out = out.absolute()
    db = out / "mlruns.db"
    if db.exists():
        raise SystemExit(f"{db} exists already; remove it (and mlruns/) or pick another --dir")
    _quiet_mlflow()
    import mlflow
    from mlflow.entities import (
        Dataset,
        DatasetInput,
        InputTag,
        LoggedModelInput,
        LoggedModelOutput,
        Metric,
        Param,
        RunTag,
    )
    from mlflow.tracking import MlflowClient

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    by_state: dict[str, list[str]] = {"active": [], "deleted_old": [], "deleted_recent": []}
    deleted_at: dict[str, int] = {}
    # A sqlite:/// store puts artifacts under ./mlruns of the current directory: that is
    # MLflow's default artifact root, so the layout is the one users have.
    previous_uri = mlflow.get_tracking_uri()
    with contextlib.chdir(out):
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        mlflow.set_tracking_uri(f"sqlite:///{db}")  # where the tracer exports traces
        exp_ids = [client.create_experiment(f"sample-{n}") for n in range(experiments)]
        datasets = {
            e: Dataset(
                name=f"train-{e}",
                digest=f"{rng.getrandbits(32):08x}",
                source_type="local",
                source=json.dumps({"uri": f"file:///data/train-{e}.parquet"}),
                schema=json.dumps({"mlflow_colspec": [{"name": "x", "type": "double"}]}),
                profile=json.dumps({"num_rows": 1000}),
            )
            for e in exp_ids
        }
        last_model: dict[str, str] = {}
        for i in range(runs):
            exp = exp_ids[(i + i // 3) % len(exp_ids)]  # spreads every state over them
            start = now_ms - (60 - i * 50 // max(runs, 1)) * DAY_MS
            run = client.create_run(
                exp, start_time=start, run_name=f"run-{i:04d}", tags={"team": f"t{i % 2}"}
            )
            rid = run.info.run_id
            history = [
                Metric(key, value, start + step * 1000, step)
                for step in range(8)
                for key, value in (
                    ("loss", round(1.0 / (step + 1) + rng.random() / 10, 6)),
                    ("accuracy", round(0.5 + step / 20 + rng.random() / 50, 6)),
                )
            ]
            client.log_batch(
                rid,
                metrics=history,
                params=[
                    Param("lr", str(rng.choice([0.1, 0.01, 0.001]))),
                    Param("batch_size", str(rng.choice([32, 64, 128]))),
                    Param("seed", str(i)),
                ],
                tags=[RunTag("stage", rng.choice(["dev", "prod"]))],
            )
            client.log_inputs(
                rid,
                datasets=[
                    DatasetInput(
                        datasets[exp],
                        tags=[
                            InputTag("mlflow.data.context", "training"),
                            InputTag("split", f"fold-{i % 3}"),
                        ],
                    )
                ],
                models=[LoggedModelInput(last_model[exp])] if exp in last_model else None,
            )
            client.log_text(rid, f"run {i} of {runs}\n", "notes.txt")
            client.log_dict(rid, {"i": i, "seed": seed}, "config/run.json")
            with tempfile.TemporaryDirectory() as staging:
                blob = Path(staging) / "model.bin"
                blob.write_bytes(rng.randbytes(2048 + 512 * (i % 4)))
                client.log_artifact(rid, str(blob), "weights")
            if i % 4 == 3:  # a logged model this run outputs, with a metric tied to the run
                model = client.create_logged_model(exp, name=f"model-{i}", source_run_id=rid)
                client.log_outputs(rid, [LoggedModelOutput(model.model_id, step=7)])
                client.log_metric(rid, "val_loss", 0.25, timestamp=start, model_id=model.model_id)
                last_model[exp] = model.model_id
            if i % 4 == 1:  # a trace linked to the run (entity_associations: trace -> run)
                span = client.start_trace(f"query-{i}", experiment_id=exp, inputs={"q": i})
                client.end_trace(span.trace_id, outputs={"answer": i})
                client.link_traces_to_run([span.trace_id], rid)
            client.set_terminated(rid, "FINISHED", end_time=start + 60_000)
            state = state_of(i)
            by_state[state].append(rid)
            if state != "active":
                client.delete_run(rid)
                days = deleted_days_ago if state == "deleted_old" else 2
                deleted_at[rid] = now_ms - days * DAY_MS
    mlflow.set_tracking_uri(previous_uri)
    # MLflow stamps deleted_time with "now"; age the deletions as if they had happened then.
    con = sqlite3.connect(db)
    with con:
        con.executemany(
            "UPDATE runs SET deleted_time = ? WHERE run_uuid = ?",
            [(t, r) for r, t in deleted_at.items()],
        )
    con.close()
    return {
        "store": str(db),
        "artifact_root": str(out / "mlruns"),
        "experiments": exp_ids,
        **by_state,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path(__file__).parent, help="where to build")
    ap.add_argument("--runs", type=int, default=12, help="how many runs (default 12)")
    ap.add_argument("--experiments", type=int, default=3, help="how many experiments")
    ap.add_argument("--deleted-days-ago", type=int, default=40, help="age of old deletions")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.runs < 0 or args.experiments < 1:
        ap.error("--runs must be >= 0 and --experiments >= 1")
    summary = build(
        args.dir,
        runs=args.runs,
        experiments=args.experiments,
        deleted_days_ago=args.deleted_days_ago,
        seed=args.seed,
    )
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    states = ("active", "deleted_old", "deleted_recent")
    counts = ", ".join(f"{len(summary[k])} {k}" for k in states)
    print(f"Built {summary['store']}: {counts}.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
