"""Fuzz over journals of interrupted applies (issue 12, "Must show", the journal part).

An apply is killed at a failpoint drawn from every point it passes through (with lowered
batch sizes, so the journal holds two intents records and the renames two batches); then
its journal is damaged: a flipped bit anywhere, a cut at any length, a frame duplicated or
dropped. `retention recover` must then

* never print a traceback, and exit 0, 7 or 8 (7 and 8 with one ``Error:`` line);
* never exit 0 while a run's row and directory disagree: each run has its row and its
  directory at home, or no row and its directory in trash under a tombstone.

A journal cut or flipped inside the BEGIN record of an apply that had already moved
directories loses the whole transaction (the reader takes the damaged BEGIN for a torn
tail); recovery then finds a ``.trash/<txid>`` holding moved directories that neither the
journal nor the catalog knows, and stops with exit 7 (the test below pins that case).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from journal.reader import read_journal

from . import crashkit as ck

RUNS, KEEP = 8, 4  # 4 moves
# two intents records (2 + 2 moves) and two move batches, so that frames and batch edges
# are there to damage
ENV = {"RETENTION_MOVE_BATCH": "2", "RETENTION_INTENT_BATCH": "2"}
EXITS = (0, 7, 8)


def run(ws: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    env = {**ck.BASE_ENV, **ENV, **extra}
    return subprocess.run([ck.EXE, *args], cwd=ws, env=env, capture_output=True, timeout=60)


@dataclass
class Crashed:
    """A workspace whose apply was killed at ``point``, kept as a template per point."""

    ws: Path
    txid: str | None  # the apply's txid, if its trash directory exists


_plan_lock = threading.Lock()


def crash_at(template: Path, ws: Path, point: str) -> Crashed:
    shutil.copytree(template, ws, symlinks=True)
    with _plan_lock:  # crashkit.plan changes the working directory
        manifest = ck.plan(ws, keep_last=KEEP)
    p = run(ws, "apply", str(manifest), FAILPOINT=point)
    assert ck.crashed(p), (point, p.returncode, p.stderr)
    trash = ws / "data/backtests/.trash"
    txids = [d.name for d in trash.iterdir()] if trash.is_dir() else []
    return Crashed(ws, txids[0] if txids else None)


@dataclass
class World:
    before: dict
    points: list[str]
    tmp: Path
    crashed: dict[str, Crashed]  # one crashed workspace per point, copied per example
    seen: Counter[str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("journal-fuzz")
    template = ck.build(tmp / "template", runs=RUNS)
    probe = tmp / "probe"
    shutil.copytree(template, probe, symlinks=True)
    log = tmp / "apply.log"
    p = run(probe, "apply", str(ck.plan(probe, keep_last=KEEP)), FAILPOINT_LOG=str(log))
    assert p.returncode == 0, p.stderr
    points = ck.hits(log)
    assert sum(x.startswith("apply.after_move_batch") for x in points) == 3  # 2 + 2 + final
    # Every crash once, two at a time (the apply is a subprocess).
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(
            lambda n_p: crash_at(template, tmp / f"crashed-{n_p[0]}", n_p[1]), enumerate(points)
        )
        crashed = dict(zip(points, done, strict=True))
    return World(ck.snapshot(template), points, tmp, crashed, Counter())


# -- damage ---------------------------------------------------------------------------------------


def frames(data: bytes, path: Path) -> list[tuple[int, int]]:
    """(start, end) of each valid frame of the journal bytes ``data`` (read from ``path``)."""
    res = read_journal(path)
    if not res.offsets:
        return []
    return list(zip(res.offsets, [*res.offsets[1:], res.good_length], strict=True))


damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("dup"), st.integers(0, 16), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 16), st.just(0)),
)


def apply_damage(path: Path, how: tuple[str, int, int | bool]) -> str:
    """Damage the journal at ``path``; returns what was done, for the failure message."""
    data = bytearray(path.read_bytes())
    kind, n, arg = how
    spans = frames(bytes(data), path)
    if kind == "flip":
        off = n % len(data)
        data[off] ^= 1 << int(arg)
        done = f"flip bit {arg} of byte {off}/{len(data)}"
    elif kind == "cut":
        cut = n % (len(data) + 1)
        done = f"cut at {cut}/{len(data)}"
        del data[cut:]
    elif not spans:
        return f"{kind}: no frame to {kind} (header only)"
    elif kind == "dup":
        a, b = spans[n % len(spans)]
        at = len(data) if arg else b
        data[at:at] = data[a:b]
        done = f"dup frame {n % len(spans)} of {len(spans)} {'at the end' if arg else 'in place'}"
    else:
        a, b = spans[n % len(spans)]
        del data[a:b]
        done = f"drop frame {n % len(spans)} of {len(spans)}"
    path.write_bytes(bytes(data))
    return done


# -- what must hold ----------------------------------------------------------------------------


def disagreements(ws: Path, before: dict) -> list[str]:
    """Runs whose row and directory disagree: a row without its directory at home, or no
    row while the directory is not in trash under a tombstone (or is still at home)."""
    db = sqlite3.connect(ws / "data/catalog.db")
    tomb: dict[str, bytes] = {}
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = '_retention_runs'").fetchone():
        for rid, trash in db.execute(
            "SELECT run_id, trash FROM _retention_runs WHERE state = 'trash'"
        ):
            tomb[rid] = trash
    db.close()
    rows = ck.dump(ws)
    arts = ws / "data/backtests"
    out = []
    for rid in before["rows"]:
        home = arts / rid
        if rid in rows:
            if not home.is_dir():
                out.append(f"{rid}: row present, directory not at home")
        elif os.path.lexists(home):
            out.append(f"{rid}: no row, directory at home")
        elif rid not in tomb or not (arts / os.fsdecode(tomb[rid])).is_dir():
            out.append(f"{rid}: no row, directory not in trash under a tombstone")
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 30 s on two quiet cores; generous for a busy machine
def test_recover_of_a_damaged_journal_never_exits_0_with_a_row_and_directory_disagreeing(
    world: World,
) -> None:
    counter = iter(range(10**6))

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(point=st.sampled_from(world.points), how=damage)
    def one(point: str, how: tuple[str, int, int | bool]) -> None:
        crashed = world.crashed[point]
        ws = world.tmp / f"ex{next(counter)}"
        shutil.copytree(crashed.ws, ws, symlinks=True)
        done = apply_damage(ws / ".retention/journal.wal", how)
        r = run(ws, "recover")
        err = r.stderr.decode(errors="replace")
        where = f"{point}, {done}: exit {r.returncode}\n{err}"
        assert "Traceback" not in err, where
        assert r.returncode in EXITS, where
        if r.returncode != 0:
            errors = [x for x in err.splitlines() if x.startswith("Error:")]
            assert len(errors) == 1, where
        else:
            bad = disagreements(ws, world.before)
            assert not bad, f"{where}\n" + "\n".join(bad)
        event(f"exit {r.returncode}")
        world.seen[f"exit {r.returncode}"] += 1
        shutil.rmtree(ws)

    one()
    print(f"journal fuzz outcomes: {dict(world.seen)}")  # shown with -s


def test_recover_stops_when_the_begin_of_an_apply_that_moved_directories_is_lost(
    world: World, tmp_path: Path
) -> None:
    crashed = world.crashed["apply.after_rename@2"]
    ws = tmp_path / "ws"
    shutil.copytree(crashed.ws, ws, symlinks=True)
    j = ws / ".retention/journal.wal"
    first = read_journal(j).offsets[0]
    j.write_bytes(j.read_bytes()[: first + 30])  # cut inside BEGIN: intents go with it
    r = run(ws, "recover")
    assert "Traceback" not in r.stderr.decode()
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert len(disagreements(ws, world.before)) == 2  # nothing moved back on a guess
