"""Tools for crash tests: build a workspace, snapshot it, run the real executable armed
with a failpoint, and check the invariants after recovery: every run is whole at home,
or deleted into trash (undoable), or purged; nothing orphaned; `retention check` clean."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from journal.failpoints import FAILPOINT_EXIT_CODE
from retention import sample
from retention.config import load_config
from retention.failpoints import BESIDE
from retention.planner import build_plan

from .conftest import NOW

EXE = str(Path(sys.executable).parent / "retention")
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("RETENTION_", "FAILPOINT"))}
BASE_ENV["RETENTION_MANIFEST_TTL"] = "3650d"


def build(root: Path, runs: int = 8, *, wal: bool = False) -> Path:
    """A scenario-1 workspace with a symlink (to outside the root) and an odd mode inside one
    run, so that trees are compared with modes and links."""
    sample.build(root, runs=runs, now=NOW)
    if wal:
        c = sqlite3.connect(root / "data/catalog.db")
        assert c.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        c.close()
    first = sorted((root / "data/backtests").iterdir())[0]
    (first / "link-out").symlink_to("/etc/hostname")
    os.chmod(first / "params.json", 0o600)
    return root


_CWD_LOCK = threading.RLock()


@contextmanager
def inside(root: Path) -> Iterator[None]:
    """Run in-process code with ``root`` as the working directory, one thread at a time:
    the working directory belongs to the whole process, and the sweeps call these helpers
    from a thread pool (two threads changing it in turn once left a worker inside a
    workspace that was then removed, and every later test of that worker failed). The
    previous directory is kept as a descriptor, so it is returned to even if it was
    renamed meanwhile."""
    with _CWD_LOCK:
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(root)
            yield
        finally:
            os.fchdir(here)
            os.close(here)


def plan(root: Path, keep_last: int = 2) -> Path:
    """Write a manifest (in-process, fast) that deletes all but the newest ``keep_last``."""
    with inside(root):
        cfg = load_config(
            None, env={"RETENTION_MANIFEST_TTL": "3650d"}, overrides={"keep_last": keep_last}
        )
        result = build_plan(cfg, NOW)
    path = root / "manifest.json"
    path.write_bytes(result.manifest)
    return path


def run(root: Path, *args: str, failpoint: str | None = None, log: Path | None = None):
    env = dict(BASE_ENV)
    if failpoint:
        env["FAILPOINT"] = failpoint
    if log:
        env["FAILPOINT_LOG"] = str(log)
    return subprocess.run([EXE, *args], cwd=root, env=env, capture_output=True, timeout=60)


def start_paused(
    ws: Path, point: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``retention ARGS`` in ``ws`` (``env`` added to the base environment) and wait
    until it is paused at failpoint ``point``; returns the process and its pause directory
    (`resume` lets it go on)."""
    sync = ws.parent / f"sync-{time.monotonic_ns()}"
    sync.mkdir()
    proc = subprocess.Popen(
        [EXE, *args],
        cwd=ws,
        env={**BASE_ENV, **(env or {}), "FAILPOINT_PAUSE": point, "FAILPOINT_PAUSE_DIR": str(sync)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    while not (sync / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _, err = proc.communicate()
            raise AssertionError(f"never paused at {point}: {proc.returncode} {err.decode()}")
        time.sleep(0.01)
    return proc, sync


def resume(proc: subprocess.Popen[bytes], sync: Path) -> subprocess.CompletedProcess[bytes]:
    """Let a process `start_paused` paused go on; wait for it to end."""
    (sync / "resume").touch()
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def hits(log: Path) -> list[str]:
    """Every (name@n) a logged run passed through, in order; not the points its helper
    processes pass (`retention.failpoints.BESIDE`: crashing there never ends the run)."""
    seen: Counter[str] = Counter()
    out = []
    for name in log.read_text().split():
        if name in BESIDE:
            continue
        seen[name] += 1
        out.append(f"{name}@{seen[name]}")
    return out


def tree(path: Path) -> str:
    """Content hash of a tree: names, types, modes, file bytes, link targets."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        rel = os.path.relpath(dirpath, path)
        h.update(f"D {rel} {os.lstat(dirpath).st_mode:o}\n".encode())
        for name in sorted(
            filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        ):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if os.path.islink(p):
                h.update(f"L {rel}/{name} {os.readlink(p)}\n".encode())
            else:
                h.update(f"F {rel}/{name} {st.st_mode:o} ".encode())
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    return h.hexdigest()


def dump(root: Path) -> dict[str, dict]:
    """Every row of the involved tables, by run id: (runs row, sorted metric rows)."""
    c = sqlite3.connect(root / "data/catalog.db")
    out: dict[str, dict] = {}

    def typed(table: str) -> str:
        # typeof() next to each value: 1 and 1.0, or '1' and 1, are different rows.
        cols = [r[1] for r in c.execute(f"PRAGMA table_info({table})")]
        return ", ".join(["rowid", *(f"typeof({x}), {x}" for x in cols)])

    for row in c.execute(f"SELECT run_id, {typed('runs')} FROM runs"):
        out.setdefault(row[0], {})["run"] = row[1:]
    for row in c.execute(f"SELECT run_id, {typed('run_metrics')} FROM run_metrics ORDER BY rowid"):
        out.setdefault(row[0], {}).setdefault("metrics", []).append(row[1:])
    c.close()
    return out


def snapshot(root: Path) -> dict:
    arts = root / "data/backtests"
    return {
        "rows": dump(root),
        "trees": {d.name: tree(d) for d in arts.iterdir() if d.name != ".trash"},
    }


def check_invariants(root: Path, before: dict, *, allow_purged: bool = False) -> dict[str, str]:
    """The invariants after recovery; returns each run's state (home/trash/purged)."""
    c = sqlite3.connect(root / "data/catalog.db")
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    has_tomb = c.execute("SELECT 1 FROM sqlite_master WHERE name = '_retention_runs'").fetchone()
    tomb = {}
    if has_tomb:
        for rid, txid, trash, state in c.execute(
            "SELECT r.run_id, r.txid, r.trash, r.state FROM _retention_runs r"
            " JOIN _retention_tx t ON t.txid = r.txid WHERE r.state != 'restored'"
        ):
            tomb[rid] = (txid, trash, state)
    c.close()
    rows = dump(root)
    arts = root / "data/backtests"
    states = {}
    for rid, orig in before["rows"].items():
        home = arts / rid
        if rid in rows:
            assert rows[rid] == orig, f"{rid}: rows differ from the original"
            assert home.is_dir(), f"{rid}: rows present but directory not at home"
            assert tree(home) == before["trees"][rid], f"{rid}: tree changed"
            assert rid not in tomb, f"{rid}: present but tombstoned"
            states[rid] = "home"
        else:
            assert rid in tomb, f"{rid}: rows gone without a tombstone (orphan)"
            assert not os.path.lexists(home), f"{rid}: rows gone but directory still at home"
            txid, trash, state = tomb[rid]
            slot = arts / os.fsdecode(trash)
            if state == "trash":
                assert slot.is_dir(), f"{rid}: deleted but not in trash"
                assert tree(slot) == before["trees"][rid], f"{rid}: tree in trash differs"
                states[rid] = "trash"
            else:
                assert allow_purged and state == "purged", f"{rid}: unexpected state {state}"
                assert not os.path.lexists(slot), f"{rid}: purged but still in trash"
                states[rid] = "purged"
    # Nothing in trash that the catalog does not know (no orphan directories).
    trash_root = arts / ".trash"
    known = {os.fsdecode(t[1]) for t in tomb.values() if t[1] is not None and t[2] == "trash"}
    if trash_root.exists():
        for txdir in trash_root.iterdir():
            for entry in txdir.iterdir():
                if entry.name == "TRASH.json":
                    continue
                rel = f".trash/{txdir.name}/{entry.name}"
                assert rel in known, f"orphan in trash: {rel}"
    # The journal has nothing unfinished, and `retention check` agrees there is nothing wrong.
    # In this process (the same code as `status --json` and `check --json`, without two
    # interpreter start-ups per case: the sweeps check the invariants hundreds of times).
    st, chk = status_and_check(root)
    assert b'"interrupted":[]' in st, st
    assert b'"findings":[]' in chk, chk
    return states


def status_and_check(root: Path) -> tuple[bytes, bytes]:
    """The JSON of `retention status` and `retention check` on ``root``, computed in this
    process with the workspace's own configuration (read-only, as the commands are)."""
    from datetime import UTC, datetime

    import msgspec

    from retention.check import check
    from retention.status import status

    with inside(root):
        cfg = load_config(
            None, env={k: v for k, v in BASE_ENV.items() if k.startswith("RETENTION_")}
        )
        return (
            msgspec.json.encode(status(cfg, datetime.now(UTC))),
            msgspec.json.encode(check(cfg)),
        )


def crashed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == FAILPOINT_EXIT_CODE
