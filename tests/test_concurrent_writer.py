"""No long read transaction against the application (issue 15, item 3).

The application keeps writing while a large undo and a large purge run: a writer process
inserts a row into the catalog every 50 ms, with the busy timeout retention itself uses
(``catalog.busy_timeout``), and records how long each write took. The catalog is in
rollback-journal mode, the harder case: there, a read lock held by retention (a statement
not read to its end, a read transaction) keeps every writer from committing.

Each command is also paused in the middle of its directory work for longer than the busy
timeout (a pausing failpoint: undo between two renames, purge after removing the trash and
before marking it purged), and an exclusive lock is taken on the catalog meanwhile: it is
granted at once, so retention holds nothing on the catalog across its directory work.

Only the writer's latencies are asserted (each < the busy timeout, none refused), never a
duration of retention itself.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from . import crashkit as ck

RUNS, CHILD_ROWS, KEEP = 2000, 10, 100
BUSY_TIMEOUT_S = 3
PAUSE_S = BUSY_TIMEOUT_S + 0.5  # longer than the writer would wait for a lock held meanwhile

WRITER = r"""
import json, os, sqlite3, sys, time
db, stop, out, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
conn = sqlite3.connect(db, isolation_level=None, timeout=timeout)
writes, errors = [], []
while not os.path.exists(stop):
    t0 = time.monotonic()
    try:
        conn.execute("INSERT INTO app_events (at) VALUES (?)", (time.time(),))
    except sqlite3.Error as exc:
        errors.append(str(exc))
    writes.append(time.monotonic() - t0)
    time.sleep(0.05)
with open(out, "w") as f:
    json.dump({"latencies": writes, "errors": errors}, f)
"""


def _build(root: Path) -> Path:
    """The default layout, rollback-journal catalog: RUNS runs with CHILD_ROWS metric rows
    each and a one-file artifact directory each, plus a table the application writes to."""
    arts = root / "data/backtests"
    arts.mkdir(parents=True)
    db = sqlite3.connect(root / "data/catalog.db")
    db.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, created_at TEXT);
        CREATE TABLE run_metrics (id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(run_id), name TEXT, value REAL);
        CREATE INDEX run_metrics_run ON run_metrics(run_id);
        CREATE TABLE app_events (id INTEGER PRIMARY KEY, at REAL);
        """
    )
    ids = [f"run-{i:05d}" for i in range(RUNS)]
    db.executemany(
        "INSERT INTO runs VALUES (?, ?)",
        (
            (rid, f"2025-{1 + i // 400:02d}-01T00:{(i // 60) % 60:02d}:{i % 60:02d}")
            for i, rid in enumerate(ids)
        ),
    )
    db.executemany(
        "INSERT INTO run_metrics (run_id, name, value) VALUES (?, ?, ?)",
        ((rid, f"m{k}", k / 3) for rid in ids for k in range(CHILD_ROWS)),
    )
    db.commit()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    for rid in ids:
        (arts / rid).mkdir()
        (arts / rid / "result.csv").write_bytes(b"x" * 64)
    return root


class Writer:
    """The application: a process inserting a row every 50 ms until stopped."""

    def __init__(self, ws: Path, tmp: Path) -> None:
        tmp.mkdir()
        self.stop, self.out = tmp / "stop", tmp / "writes.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(ws / "data/catalog.db"),
                str(self.stop),
                str(self.out),
                str(BUSY_TIMEOUT_S),
            ]
        )

    def finish(self) -> dict:
        self.stop.touch()
        assert self.proc.wait(timeout=60) == 0
        return json.loads(self.out.read_text())


def _run_paused(ws: Path, tmp: Path, args: list[str], point: str) -> dict:
    """Run ``retention ARGS`` paused at ``point`` for PAUSE_S; while paused, an exclusive
    lock on the catalog must be granted at once (retention holds no lock on it)."""
    sync = tmp / "sync"
    sync.mkdir(parents=True)
    env = {
        **ck.BASE_ENV,
        "RETENTION_BUSY_TIMEOUT": f"{BUSY_TIMEOUT_S}s",
        "FAILPOINT_PAUSE": point,
        "FAILPOINT_PAUSE_DIR": str(sync),
    }
    proc = subprocess.Popen(
        [ck.EXE, *args], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not (sync / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    probe = sqlite3.connect(ws / "data/catalog.db", isolation_level=None, timeout=1)
    try:
        probe.execute("BEGIN EXCLUSIVE")  # the writer's locks last milliseconds
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        raise AssertionError(f"retention holds a lock on the catalog at {point}: {exc}") from None
    finally:
        probe.close()
    time.sleep(PAUSE_S)
    (sync / "resume").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def _assert_never_waited_long(writes: dict, what: str) -> None:
    lat = writes["latencies"]
    assert writes["errors"] == [], (what, writes["errors"])
    # It kept writing throughout: at least one write per 50 ms of the pause alone.
    assert len(lat) >= PAUSE_S / 0.1, (what, len(lat))
    assert max(lat) < BUSY_TIMEOUT_S, (what, max(lat))


def test_a_writer_never_waits_longer_than_the_busy_timeout_during_undo_and_purge(
    tmp_path: Path,
) -> None:
    ws = _build(tmp_path / "ws")
    txid = json.loads(ck.run(ws, "apply", str(ck.plan(ws, keep_last=KEEP))).stdout)["txid"]
    deleted = RUNS - KEEP

    writer = Writer(ws, tmp_path / "w1")
    rep = _run_paused(ws, tmp_path / "undo", ["undo", txid], "undo.after_rename@1000")
    _assert_never_waited_long(writer.finish(), "undo")
    assert len(rep["undone"][0]["restored"]) == deleted

    ck.run(ws, "apply", str(ck.plan(ws, keep_last=KEEP - 1)))
    writer = Writer(ws, tmp_path / "w2")
    rep = _run_paused(ws, tmp_path / "purge", ["purge", "--all"], "purge.after_remove@1")
    _assert_never_waited_long(writer.finish(), "purge")
    assert rep["runs"] == deleted + 1

    db = sqlite3.connect(ws / "data/catalog.db")
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == KEEP - 1
    assert db.execute("SELECT count(*) FROM _retention_t_run_metrics").fetchone()[0] == 0
    db.close()
    assert not os.listdir(ws / "data/backtests/.trash")
