"""The catalog after a power cut: a hot rollback journal left by a writer that died in the
middle of a transaction (any writer: the application, not only retention). Issue 12, items
13 and 14.

A *hot* journal is ``<catalog>-journal`` with a valid header and no process holding the
write lock: the database file may hold half of the interrupted transaction, and the next
connection that reads it must first copy the journal's original pages back. A ``mode=ro``
connection cannot (SQLITE_READONLY_ROLLBACK); a read-write one does it while it opens, and
it unlinks the journal before our ``synchronous = EXTRA`` applies (``PRAGMA synchronous``
loads the schema itself), so retention fsyncs the catalog's directory after that open.

Every hot journal here is real: a subprocess is SIGKILLed in the middle of a large write
transaction on a rollback-journal (DELETE mode) catalog with a one-page cache, so pages of
the transaction are already in the database file when it dies.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retention.errors import RecoveryError, catalog_error, from_environment

from .conftest import NOW_TEXT, invoke, run_exe

CATALOG = Path("data/catalog.db")
JOURNAL_MAGIC = bytes.fromhex("d9d505f920a163d7")  # a rollback journal's header

# The writer: one big transaction that rewrites every table, with a one-page cache so
# SQLite must spill dirty pages into the database file (journal synced first) long before
# any commit. It says "ready" when the spill has happened and waits to be killed.
_WRITER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
mode = db.execute("PRAGMA journal_mode").fetchone()[0]
assert mode == "delete", mode
db.execute("PRAGMA cache_size = 1")
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE runs SET strategy = 'half-written', created_at = '1970-01-01T00:00:00Z'")
db.execute("DELETE FROM run_metrics")
db.executemany(
    "INSERT INTO run_metrics (run_id, name, value, blob) VALUES (?, 'x', 1.0, zeroblob(4000))",
    ((f"ghost-{i}",) for i in range(600)),
)
print("ready", flush=True)
time.sleep(120)
"""


def _rows(catalog: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the catalog's tables, read without touching a hot journal (a copy)."""
    db = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        return {
            "runs": db.execute("SELECT * FROM runs ORDER BY run_id").fetchall(),
            "run_metrics": db.execute("SELECT * FROM run_metrics ORDER BY id").fetchall(),
        }
    finally:
        db.close()


def _kill_mid_transaction(catalog: Path) -> None:
    """SIGKILL a writer in the middle of a large transaction; leaves a hot journal."""
    before = catalog.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(catalog)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    journal = Path(f"{catalog}-journal")
    assert journal.read_bytes()[:8] == JOURNAL_MAGIC  # a valid header: the journal is hot
    assert catalog.read_bytes() != before  # half of the transaction is in the database file


def _error_and_hint(result, code: int) -> tuple[str, str]:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    hints = [line for line in result.stderr.splitlines() if line.startswith("Hint: ")]
    assert len(errors) == 1 and len(hints) == 1, result.stderr
    return errors[0], hints[0]


READ_ONLY = (
    ("status",),
    ("status", "--json"),
    ("check",),
    ("check", "--json"),
    ("plan", "--keep-last", "10", "--now", NOW_TEXT, "-o", "again.json"),
    ("show", "m.json"),
    ("config", "--check"),
)


def test_read_only_commands_on_a_hot_journal_say_recover_then_recover_rolls_it_back(
    workspace: Path,
) -> None:
    assert invoke("plan", "--keep-last", "10", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    committed = _rows(CATALOG)
    _kill_mid_transaction(CATALOG)
    journal = Path(f"{CATALOG}-journal")
    catalog_bytes, journal_bytes = CATALOG.read_bytes(), journal.read_bytes()

    for args in READ_ONLY:
        error, hint = _error_and_hint(invoke(*args), 7)
        assert error == (
            f"Error: catalog {workspace / CATALOG} holds an interrupted transaction"
            f" (a hot rollback journal, {workspace / CATALOG}-journal, left by a writer that"
            " stopped in the middle of a write); a read-only command cannot roll it back"
        ), args
        assert "retention recover" in hint, args
        assert "readonly" not in error
    # Read-only means read-only: nothing was rolled back, nothing planned.
    assert CATALOG.read_bytes() == catalog_bytes
    assert journal.read_bytes() == journal_bytes
    assert not Path("again.json").exists()

    result = invoke("recover")
    assert result.exit_code == 0, result.stderr
    assert not journal.exists()
    assert _rows(CATALOG) == committed  # the pre-transaction rows, nothing half-written

    for args in READ_ONLY:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.stderr)
    check = json.loads(invoke("check", "--json").stdout)
    assert check["findings"] == [] and check["runs_checked"] == 40
    assert Path("again.json").read_bytes() == Path("m.json").read_bytes()


def test_hot_journal_from_the_real_executable_is_exit_7_with_a_hint(workspace: Path) -> None:
    _kill_mid_transaction(CATALOG)
    proc = run_exe("status", cwd=workspace)
    stderr = proc.stderr.decode()
    assert proc.returncode == 7, stderr
    assert [line[:6] for line in stderr.splitlines()] == ["Error:", "Hint: "]
    assert "interrupted transaction" in stderr and "retention recover" in stderr
    assert run_exe("recover", cwd=workspace).returncode == 0
    assert run_exe("status", cwd=workspace).returncode == 0


def test_a_mutating_command_rolls_a_hot_journal_back_first(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "10", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    committed = _rows(CATALOG)
    _kill_mid_transaction(CATALOG)
    result = invoke("apply", "m.json")
    assert result.exit_code == 0, result.stderr
    assert not Path(f"{CATALOG}-journal").exists()
    kept = {r[0] for r in _rows(CATALOG)["runs"]}
    assert len(kept) == 10 and kept < {r[0] for r in committed["runs"]}
    assert not any(r[1].startswith("ghost-") for r in _rows(CATALOG)["run_metrics"])
    assert json.loads(invoke("check", "--json").stdout)["findings"] == []


def test_the_sqlite_error_of_a_hot_journal_maps_to_exit_7_everywhere(workspace: Path) -> None:
    """A hot journal met after the open (the application died while we read) is mapped
    the same way by the one SQLite-error mapping, not as a permissions problem."""
    _kill_mid_transaction(CATALOG)
    db = sqlite3.connect(f"file:{CATALOG}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as info:
        db.execute("SELECT count(*) FROM runs").fetchone()
    db.close()
    for mapped in (catalog_error(info.value, CATALOG), from_environment(info.value)):
        assert isinstance(mapped, RecoveryError) and mapped.exit_code == 7
        assert "interrupted transaction" in mapped.message
        assert mapped.hint is not None and "retention recover" in mapped.hint


def test_a_wal_catalog_after_a_killed_writer_needs_no_recover(workspace: Path) -> None:
    """WAL has no hot journal: readers ignore uncommitted frames, read-only works as is."""
    db = sqlite3.connect(CATALOG)
    assert db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal"
    db.close()
    committed = _rows(CATALOG)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER.replace('"delete"', '"wal"'), str(CATALOG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert Path(f"{CATALOG}-wal").stat().st_size > 0
    for args in READ_ONLY[:5]:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.stderr)
    assert _rows(CATALOG) == committed


# -- item 14: the directory is fsynced after the hot journal is unlinked ----------------

_STRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _strace_events(log: Path, cwd: Path) -> list[tuple[str, str | None, int]]:
    """(syscall, path it acted on, result) in order; fds are resolved through openat."""
    fds: dict[int, str] = {}
    events: list[tuple[str, str | None, int]] = []
    for line in log.read_text().splitlines():
        m = _STRACE_LINE.match(line)
        if not m:
            continue
        call, args, result = m.group(2), m.group(3), int(m.group(4))
        path: str | None = None
        if call in ("openat", "unlink", "unlinkat"):
            q = _QUOTED.search(args)
            path = os.path.normpath(os.path.join(cwd, q.group(1))) if q else None
            if call == "openat" and result >= 0 and path is not None:
                fds[result] = path
        elif call in ("fsync", "fdatasync", "close"):
            fd = int(args.split(",")[0])
            path = fds.get(fd)
            if call == "close":
                fds.pop(fd, None)
        events.append((call, path, result))
    return events


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_recover_fsyncs_the_catalog_directory_after_sqlite_unlinks_a_hot_journal(
    workspace: Path, tmp_path: Path
) -> None:
    _kill_mid_transaction(CATALOG)
    log = tmp_path / "strace.log"
    exe = Path(sys.executable).parent / "retention"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    trace = "trace=openat,close,fsync,fdatasync,unlink,unlinkat"
    proc = subprocess.run(
        ["strace", "-f", "-s", "4096", "-o", str(log), "-e", trace, str(exe), "recover"],
        cwd=workspace,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    events = _strace_events(log, workspace)
    catalog_dir = str(workspace / "data")
    journal = str(workspace / CATALOG) + "-journal"
    unlinks = [n for n, (c, p, r) in enumerate(events) if c.startswith("unlink") and p == journal]
    assert len(unlinks) == 1 and events[unlinks[0]][2] == 0, events
    dir_fsyncs = [
        n for n, (c, p, r) in enumerate(events) if c == "fsync" and p == catalog_dir and r == 0
    ]
    assert any(n > unlinks[0] for n in dir_fsyncs), (unlinks, dir_fsyncs)
    assert not Path(journal).exists()


# Without strace: the same order seen from inside the real CLI in a subprocess, through
# Python's audit hook for os.open (fsync_dir opens the directory with O_DIRECTORY).
_AUDITED = r"""
import json, os, sys
catalog_dir, journal, out = sys.argv[1:4]
seen = []
code = None

def hook(event, args):
    if event == "open" and isinstance(args[2], int) and args[2] & os.O_DIRECTORY:
        if os.path.realpath(args[0]) == catalog_dir:
            seen.append(os.path.lexists(journal))

sys.addaudithook(hook)
from journal import fsio
from retention.cli import cli
try:
    cli(["recover"])
except SystemExit as e:
    code = e.code
with open(out, "w") as f:
    json.dump({"code": code, "journal_present_at_dir_opens": seen, "stats": fsio.stats}, f)
"""


def test_recover_opens_the_catalog_directory_for_fsync_after_the_journal_is_gone(
    workspace: Path, tmp_path: Path
) -> None:
    _kill_mid_transaction(CATALOG)
    journal = Path(f"{workspace / CATALOG}-journal")
    out = tmp_path / "seen.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    catalog_dir = os.path.realpath(workspace / "data")
    proc = subprocess.run(
        [sys.executable, "-c", _AUDITED, catalog_dir, str(journal), str(out)],
        cwd=workspace,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    seen = json.loads(out.read_text())
    assert seen["code"] == 0, proc.stderr.decode()
    # The catalog's directory is opened (to be fsynced) once the journal is unlinked.
    assert seen["journal_present_at_dir_opens"][:1] == [False], seen
    assert seen["stats"]["fsync_dir"] >= 1
    assert not journal.exists()
