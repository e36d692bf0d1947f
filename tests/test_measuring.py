"""Directory measures in forked workers (`retention.measuring`): the same answers as the
caller's own `measure`, whatever becomes of the workers; workers hold none of the caller's
descriptors and do not outlive it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from retention import measuring
from retention.measuring import ForkedMeasurer
from retention.store import LocalStore


def _tree(root: Path, n: int) -> list[tuple[int, bytes]]:
    """``n`` jobs over run directories of every kind measure meets: plain, nested, empty,
    missing, a file, a symlink, names that are not UTF-8."""
    root.mkdir()
    jobs = []
    for i in range(n):
        name = f"run{i:05d}".encode()
        d = root / os.fsdecode(name)
        kind = i % 7
        if kind == 0:
            (d / "sub" / "deeper").mkdir(parents=True)
            (d / "sub" / "deeper" / "f").write_bytes(b"x" * i)
        elif kind == 1:
            d.mkdir()
        elif kind == 2:
            pass  # missing
        elif kind == 3:
            d.write_bytes(b"a file, not a directory")
        elif kind == 4:
            d.symlink_to("/etc")
        elif kind == 5:
            d.mkdir()
            (d / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1")
        else:
            d.mkdir()
            for k in range(4):
                (d / f"f{k}").write_bytes(b"y" * (k + i))
        jobs.append((i, name))
    return jobs


def test_forked_measures_equal_the_callers_own(tmp_path: Path) -> None:
    """Two workers, 700 jobs (several messages each): every measure equals `measure`'s."""
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 700)
    with ForkedMeasurer(store, jobs, workers=2, min_jobs=0) as fm:
        assert fm.forked == 2
        got = [fm.take(k, rel) for k, rel in jobs]
    assert got == [store.measure(rel) for _, rel in jobs]


def test_a_key_not_among_the_jobs_and_few_jobs_are_measured_in_the_caller(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 14)
    with ForkedMeasurer(store, jobs[:10]) as fm:  # under MIN_JOBS: no fork
        assert fm.forked == 0
        assert [fm.take(k, rel) for k, rel in jobs] == [store.measure(r) for _, r in jobs]


def test_workers_finish_while_the_caller_is_busy_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers do not wait for `take`: with a pipe far smaller than their results, a worker
    still measures every job and exits while the caller takes nothing (as plan reads the
    catalog meanwhile), and its results are all there afterwards."""
    monkeypatch.setattr(measuring, "_PIPE_SIZE", 4096)
    store = LocalStore(tmp_path / "arts")
    (tmp_path / "arts" / "d").mkdir(parents=True)
    for k in range(4):
        (tmp_path / "arts" / "d" / f"f{k}").write_bytes(b"z" * k)
    jobs = [(i, b"d") for i in range(3000)]  # about 250 KB of results
    with ForkedMeasurer(store, jobs, workers=1, min_jobs=0) as fm:
        (wk,) = fm._workers
        deadline = time.monotonic() + 30
        while os.waitpid(wk.pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "the worker waits for the caller"
            time.sleep(0.02)
        got = [fm.take(k, rel) for k, rel in jobs]
        assert len(wk.got) == len(jobs)  # delivered by the worker, not measured here
    assert got == [store.measure(b"d")] * len(jobs)


class _SlowInWorkers:
    """`LocalStore.measure`, slowed down in forked workers only (a worker that has much
    more to walk than the caller), counting the measures the caller makes itself."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._caller = os.getpid()
        self.in_caller = 0

    def measure(self, rel: bytes) -> Any:
        if os.getpid() != self._caller:
            time.sleep(0.004)
        else:
            self.in_caller += 1
        return self._store.measure(rel)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_caller_that_would_wait_measures_the_last_jobs_itself(
    tmp_path: Path, workers: int
) -> None:
    """``steal``: while a worker has not delivered the job asked for, the caller measures
    the last jobs nobody has claimed (the workers skip them once marked) instead of
    waiting. Every answer equals `measure`'s; the caller measured exactly the jobs it
    stole (the others came from the workers, the first among them)."""
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 500)
    slow = _SlowInWorkers(store)
    with ForkedMeasurer(slow, jobs, workers=workers, min_jobs=0, steal=True) as fm:
        assert fm.forked == workers
        got = [fm.take(k, rel) for k, rel in jobs]
        assert fm.stolen > 0 and slow.in_caller == fm.stolen
        skipped = 0
        for wk in fm._workers:  # everything they sent: they skipped what was claimed
            while not wk.over:
                fm._decode(wk)
            skipped += sum(1 for row in wk.got if row == measuring._SKIPPED)
        assert 0 < skipped <= fm.stolen
    assert got == [store.measure(rel) for _, rel in jobs]
    slow.in_caller = 0
    with ForkedMeasurer(slow, jobs, workers=1, min_jobs=0) as fm:  # without: it waits
        assert [fm.take(k, rel) for k, rel in jobs[:3]] == [store.measure(r) for _, r in jobs[:3]]
        assert fm.stolen == 0 and slow.in_caller == 0


def test_a_worker_killed_while_the_caller_steals_costs_time_never_an_answer(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 400)
    slow = _SlowInWorkers(store)
    with ForkedMeasurer(slow, jobs, workers=1, min_jobs=0, steal=True) as fm:
        first = [fm.take(k, rel) for k, rel in jobs[:5]]
        assert fm.stolen > 0
        (wk,) = fm._workers
        os.kill(wk.pid, signal.SIGKILL)
        got = first + [fm.take(k, rel) for k, rel in jobs[5:]]
    assert got == [store.measure(rel) for _, rel in jobs]


def test_killed_workers_cost_time_never_an_answer(tmp_path: Path) -> None:
    """Workers SIGKILLed at once: whatever they delivered or not, every take is answered,
    and equals `measure`'s."""
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 600)
    with ForkedMeasurer(store, jobs, workers=3, min_jobs=0) as fm:
        for wk in fm._workers:
            os.kill(wk.pid, signal.SIGKILL)
        got = [fm.take(k, rel) for k, rel in jobs]
    assert got == [store.measure(rel) for _, rel in jobs]


def test_workers_hold_no_lock_of_the_callers(tmp_path: Path) -> None:
    """The caller holds a flock, starts workers (alive: far more jobs than they measure in
    the time taken), then releases its lock: the lock is free at once (a worker holding a
    copy of the descriptor would keep it taken)."""
    store = LocalStore(tmp_path / "arts")
    jobs = _tree(tmp_path / "arts", 70) * 2000  # seconds of work for each worker
    jobs = [(i, rel) for i, (_, rel) in enumerate(jobs)]
    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    with ForkedMeasurer(store, jobs, workers=2, min_jobs=0) as fm:
        time.sleep(0.2)
        alive = [wk.pid for wk in fm._workers if os.waitpid(wk.pid, os.WNOHANG) == (0, 0)]
        assert alive, "the workers should still be measuring"
        os.close(fd)
        other = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a worker holds it
        finally:
            os.close(other)


_DIES = """
import os, sys, time
from pathlib import Path
from retention.measuring import ForkedMeasurer
from retention.store import LocalStore
root = Path(sys.argv[1])
jobs = [(i, b"run%05d" % (i % 50)) for i in range(20000)]
fm = ForkedMeasurer(LocalStore(root), jobs, workers=2, min_jobs=0).__enter__()
print(" ".join(str(w.pid) for w in fm._workers), flush=True)
time.sleep(0.2)
os._exit(9)  # dies without leaving the with block: nobody kills the workers
"""


def test_workers_do_not_outlive_a_caller_that_dies(tmp_path: Path) -> None:
    (tmp_path / "arts").mkdir()
    for i in range(50):
        (tmp_path / "arts" / f"run{i:05d}").mkdir()
    p = subprocess.run(
        [sys.executable, "-c", _DIES, str(tmp_path / "arts")], capture_output=True, timeout=60
    )
    assert p.returncode == 9, p.stderr
    pids = [int(x) for x in p.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids):
            break
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_apply_with_forked_measures_skips_exactly_what_changed_since_the_plan(
    tmp_path: Path,
) -> None:
    """An apply of 300 directories (over `MIN_JOBS`: its drift check runs in workers): one
    directory changed after the plan and one removed are skipped with their reasons, every
    other run is deleted and its directory is in trash."""
    import json

    from retention.measuring import MIN_JOBS

    from . import crashkit as ck

    ws = ck.build(tmp_path / "ws", runs=310)
    manifest = ck.plan(ws, keep_last=10)
    entries = json.loads(manifest.read_bytes())["payload"]["entries"]
    assert len(entries) == 300 >= MIN_JOBS
    arts = ws / "data/backtests"
    changed, gone = entries[7]["run_id"], entries[150]["run_id"]
    (arts / changed / "new-file").write_bytes(b"written after the plan")
    for p in sorted((arts / gone).rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
    (arts / gone).rmdir()
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 3, p.stderr  # some entries skipped
    rep = json.loads(p.stdout)
    skipped = {s["run_id"]: s["reason"] for s in rep["skipped"]}
    assert skipped == {
        changed: "artifact directory changed since the plan",
        gone: "artifact directory changed since the plan (now missing)",
    }
    assert len(rep["deleted_run_ids"]) == 298
    assert (arts / changed).is_dir() and not (arts / entries[0]["run_id"]).exists()


@pytest.mark.parametrize(
    ("cores", "files", "workers"),
    [(2, 4, 1), (2, 10, 1), (2, 11, 2), (2, 40, 2), (1, 4, 1), (1, 40, 1), (4, 4, 3), (8, 40, 4)],
)
def test_apply_leaves_the_main_process_a_core_for_small_directories_only(
    monkeypatch: pytest.MonkeyPatch, cores: int, files: int, workers: int
) -> None:
    """Apply's rule for its measuring workers: with directories of `SMALL_DIR_FILES` (10)
    files or fewer on average (renaming them is then the longer part) one core stays with
    the main process; with larger ones (walking them is) every core measures, at most four
    workers, at least one."""
    from types import SimpleNamespace

    from retention.coordinator import SMALL_DIR_FILES, _apply_workers

    assert SMALL_DIR_FILES == 10
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    entries: list[Any] = [SimpleNamespace(files=files) for _ in range(300)]
    jobs = [(i, b"r%d" % i) for i in range(300)]
    assert _apply_workers(entries, jobs) == workers


def test_a_measure_bounded_to_a_device_does_not_walk_a_directory_on_another(
    tmp_path: Path,
) -> None:
    """Apply's workers measure on the trash's device only (a directory that became a mount
    point since the plan is refused by preflight; walking a whole mounted filesystem would
    hold up every rename behind it): on the same device the measure is the plain one; on
    another, nothing is walked and the fingerprint can never match a plan's."""
    from retention.measuring import OnDevice
    from retention.store import LocalTrashStore

    _tree(tmp_path / "arts", 1)
    store = LocalTrashStore(tmp_path / "arts")
    plain = store.measure(b"run00000")
    assert plain.files > 0 and plain.fingerprint
    assert OnDevice(store, store.trash_device()).measure(b"run00000") == plain
    assert store.measure(b"run00000", device=plain.dev) == plain
    other = store.measure(b"run00000", device=(plain.dev or 0) + 1)
    assert other.exists and other.files == 0 and other.bytes == 0
    assert other.fingerprint == "" and "another filesystem" in (other.error or "")
