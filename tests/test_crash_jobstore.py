"""Crash sweeps over apply and undo on the JSON-document catalog (issue 10): the real
executable is killed (``os._exit``, no cleanup) at every failpoint the command passes
through (listed from ``FAILPOINT_LOG``), then ``retention recover`` runs, and the document
must be entirely the old or entirely the new value, with no temp file left beside it,
`retention check` must find nothing, and undo (or apply again) must still work. The
expected values are computed with `json` from the sample, as in
tests/test_scenario_jobstore.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from retention import jobstore
from retention.config import load_config
from retention.jobstore_views import check

from .crashkit import EXE, crashed, hits
from .test_scenario_jobstore import (
    ENV,
    EXAMPLE,
    NOW,
    NOW_TEXT,
    STORE,
    expected,
    without,
)

DAY = timedelta(days=1)


def _env() -> dict[str, str]:
    from .crashkit import BASE_ENV

    return {**BASE_ENV, **ENV}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small store (16 jobs) and the example's config, copied for each case."""
    root = tmp_path_factory.mktemp("jobstore-sample")
    shutil.rmtree(root)
    shutil.copytree(EXAMPLE, root)
    subprocess.run(
        [sys.executable, "make_sample.py", "--jobs", "16", "--now", NOW_TEXT, "--seed", "5"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    return root


def _case(sample: Path, where: Path) -> Path:
    shutil.copytree(sample, where)
    return where


def _cfg(root: Path) -> Any:
    return load_config(str(root / "retention.toml"), env=ENV)


def _plan(root: Path) -> Path:
    """The manifest, planned in-process (fast; the sweep is about apply and undo)."""
    result = jobstore.build_plan(_cfg(root), NOW)
    (root / "m.json").write_bytes(result.manifest)
    return root / "m.json"


def _run(root: Path, *args: str, failpoint: str | None = None, log: Path | None = None):
    env = _env()
    if failpoint:
        env["FAILPOINT"] = failpoint
    if log:
        env["FAILPOINT_LOG"] = str(log)
    return subprocess.run([EXE, *args], cwd=root, env=env, capture_output=True, timeout=60)


def _doc(root: Path) -> dict[str, Any]:
    with open(root / STORE, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def _temp_files(root: Path) -> list[str]:
    return [p.name for p in (root / STORE).parent.iterdir() if ".retention-tmp-" in p.name]


def _kinds(root: Path) -> set[str]:
    """What `retention check` finds (in-process: the sweeps run many cases)."""
    return {f.kind for f in check(_cfg(root)).findings}


def _recover(root: Path) -> None:
    """`retention check` names the interruption (and a temp file the kill left), and
    nothing else; `retention recover` finishes it, after which check finds nothing."""
    assert _kinds(root) <= {"interrupted", "temp_file"}
    proc = _run(root, "recover")
    assert proc.returncode == 0, proc.stderr.decode()
    assert not _temp_files(root)
    assert _kinds(root) == set()


def _points(root: Path, *args: str) -> list[str]:
    """Every failpoint hit the command passes through, but ``journal.append.before_fsync``:
    for a kill (not a power cut) it leaves the very file ``after_fsync`` leaves (the record
    is in the page cache either way), so it is asserted to be passed and not killed at
    (power cuts of the journal are tests/test_journal_failpoints.py's)."""
    log = root / "failpoints.log"
    proc = _run(root, *args, log=log)
    assert proc.returncode == 0, proc.stderr.decode()
    points = hits(log)
    assert any(p.startswith("journal.append.before_fsync@") for p in points)
    return [p for p in points if not p.startswith("journal.append.before_fsync@")]


def _sweep(cases: list[str], one: Any) -> None:
    with ThreadPoolExecutor(2) as pool:
        for point, problem in zip(cases, pool.map(one, cases), strict=True):
            assert problem is None, f"{point}: {problem}"


@pytest.mark.slow
def test_apply_killed_at_every_failpoint_recovers_to_the_old_or_the_new_document(
    sample: Path, tmp_path: Path
) -> None:
    old = _doc(sample)
    new = without(old, expected(old, 7 * DAY, 3 * DAY))
    assert new != old
    probe = _case(sample, tmp_path / "probe")
    _plan(probe)
    points = _points(probe, "apply", "m.json")
    names = {p.split("@")[0] for p in points}
    assert {"jsondoc.after_temp_fsync", "jsondoc.after_rename"} <= names
    assert {"jobstore.apply.after_begin", "jobstore.apply.after_replace"} <= names
    assert _doc(probe) == new

    def one(point: str) -> str | None:
        root = _case(sample, tmp_path / point.replace("@", "-"))
        _plan(root)
        proc = _run(root, "apply", "m.json", failpoint=point)
        if not crashed(proc):
            return f"not killed: exit {proc.returncode} {proc.stderr.decode()}"
        _recover(root)
        doc = _doc(root)
        cfg = _cfg(root)
        if doc == new:  # committed: undo brings the old document back
            jobstore.undo(cfg, txid=None, within=timedelta(days=1))
            if _kinds(root):
                return f"check after undo: {_kinds(root)}"
            return None if _doc(root) == old else "undo after recovery did not restore"
        if doc != old:
            return "the document is neither the old nor the new one"
        report = jobstore.apply(cfg, str(root / "m.json"))  # rolled back: apply again
        if _kinds(root):
            return f"check after apply: {_kinds(root)}"
        return None if _doc(root) == new and report.delete_count else "apply again failed"

    _sweep(points, one)


@pytest.mark.slow
def test_undo_killed_at_every_failpoint_recovers_to_the_applied_or_the_restored_document(
    sample: Path, tmp_path: Path
) -> None:
    old = _doc(sample)
    new = without(old, expected(old, 7 * DAY, 3 * DAY))

    def applied(where: Path) -> Path:
        root = _case(sample, where)
        jobstore.apply(_cfg(root), str(_plan(root)))
        assert _doc(root) == new
        return root

    probe = applied(tmp_path / "probe")
    points = _points(probe, "undo", "--within", "24h")
    names = {p.split("@")[0] for p in points}
    assert {"jsondoc.after_temp_fsync", "jsondoc.after_rename"} <= names
    assert {"jobstore.undo.after_begin", "jobstore.undo.before_done"} <= names
    assert _doc(probe) == old

    def one(point: str) -> str | None:
        root = applied(tmp_path / point.replace("@", "-"))
        proc = _run(root, "undo", "--within", "24h", failpoint=point)
        if not crashed(proc):
            return f"not killed: exit {proc.returncode} {proc.stderr.decode()}"
        _recover(root)
        doc = _doc(root)
        cfg = _cfg(root)
        if doc == old:  # the undo committed: nothing is left to undo, a plan deletes again
            if jobstore.undo(cfg, txid=None, within=timedelta(days=1)).undone:
                return "the undo was finished but its apply is still undoable"
            jobstore.apply(cfg, str(_plan(root)))
            return None if _doc(root) == new else "plan and apply after recovery failed"
        if doc != new:
            return "the document is neither the applied nor the restored one"
        jobstore.undo(cfg, txid=None, within=timedelta(days=1))  # rolled back: undo again
        if _kinds(root):
            return f"check after undo: {_kinds(root)}"
        return None if _doc(root) == old else "undo again failed"

    _sweep(points, one)


def test_recover_stops_when_the_document_was_rewritten_meanwhile_until_resolved(
    sample: Path, tmp_path: Path
) -> None:
    old = _doc(sample)
    new = without(old, expected(old, 7 * DAY, 3 * DAY))
    root = _case(sample, tmp_path / "rewritten")
    _plan(root)
    assert crashed(_run(root, "apply", "m.json", failpoint="jsondoc.after_rename"))
    assert _doc(root) == new
    rewritten = dict(new, version=2)  # the application writes before anyone recovers
    (root / STORE).write_text(json.dumps(rewritten))
    for command in (("recover",), ("undo", "--within", "24h")):
        proc = _run(root, *command)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 7, lines
        assert lines[0].startswith("Error: cannot tell whether apply")
        assert lines[1].startswith("Hint: ") and "--resolve committed" in lines[1]
    assert _doc(root) == rewritten  # nothing touched
    proc = _run(root, "recover", "--resolve", "committed")
    assert proc.returncode == 0, proc.stderr.decode()
    proc = _run(root, "undo", "--within", "24h")  # the records come back into it
    assert proc.returncode == 0, proc.stderr.decode()
    assert _doc(root) == dict(old, version=2)


def test_an_sql_configuration_sharing_the_state_directory_never_decides_a_document_s_tx(
    sample: Path, tmp_path: Path
) -> None:
    """A JSON apply killed after its replacement, then an SQL catalog's command on the same
    state directory: it must refuse (exit 7), not roll back by presumed abort (its catalog
    has no txid row to ask); the job store's own recover then rolls forward."""
    from . import crashkit as ck

    old = _doc(sample)
    new = without(old, expected(old, 7 * DAY, 3 * DAY))
    root = _case(sample, tmp_path / "shared")
    _plan(root)
    assert crashed(_run(root, "apply", "m.json", failpoint="jobstore.apply.after_replace"))
    sql = ck.build(tmp_path / "sql", runs=4)
    env = {**_env(), "RETENTION_STATE_DIR": str(root / ".retention")}
    for command in (("recover",), ("status",), ("purge", "--expired")):
        proc = subprocess.run([EXE, *command], cwd=sql, env=env, capture_output=True, timeout=60)
        if command == ("status",):
            assert proc.returncode == 0, proc.stderr.decode()  # read-only: it looks
            continue
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 7, lines
        assert lines[0].startswith("Error: the journal ") and "of the JSON document" in lines[0]
    assert _doc(root) == new
    _recover(root)
    assert _doc(root) == new
