"""Apply, undo and purge at scale, without timing anything (issue 13).

* undo's reads go one range of `READ_BATCH` run ids per statement: each such statement
  must be driven by its range (ids looked up in the ``(txid, run)`` index), never walk all
  the tombstones of the transaction once per range, which made undo quadratic in the runs
  at 100,000 runs while each statement looked fine on its own;
* purge removes the runs' trash slots a few at a time (`store._rmtree_all`): every tree
  is attempted even when one fails, the first error is raised, progress counts each one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from retention import store, tombstones

from .test_undo_scale import _undo_instructions


def test_undo_reads_by_range_grow_linearly(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ranges of 10 run ids, doubling the runs doubles the ranges: the instructions of
    undo at most double (within a margin). A range statement that walked every tombstone
    of the transaction would make them grow fourfold."""
    monkeypatch.setattr(tombstones, "READ_BATCH", 10)
    small = _undo_instructions(workspace / "small", 150, monkeypatch)
    large = _undo_instructions(workspace / "large", 300, monkeypatch)
    assert large / small < 2.6, (small, large)


def _tree(root: Path, n: int) -> list[bytes]:
    paths = []
    for k in range(n):
        d = root / f"{k:03d}-run"
        (d / "sub").mkdir(parents=True)
        (d / "a.txt").write_bytes(b"x")
        (d / "sub" / "b.txt").write_bytes(b"y")
        paths.append(os.fsencode(d))
    return paths


def test_rmtree_all_removes_every_tree_and_counts_each(tmp_path: Path) -> None:
    paths = _tree(tmp_path, 3 * store.RM_THREADS + 1)
    seen = []
    store._rmtree_all(paths, lambda: seen.append(1))
    assert len(seen) == len(paths)
    assert list(tmp_path.iterdir()) == []


def test_rmtree_all_attempts_all_then_raises_the_first_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _tree(tmp_path, 3 * store.RM_THREADS)
    real = store._rmtree
    failing = {paths[2], paths[5]}

    def rmtree(path: bytes) -> None:
        if path in failing:
            raise PermissionError(13, "denied", os.fsdecode(path))
        real(path)

    monkeypatch.setattr(store, "_rmtree", rmtree)
    with pytest.raises(PermissionError) as err:
        store._rmtree_all(paths)
    assert err.value.filename == os.fsdecode(paths[2])
    assert sorted(os.fsencode(p) for p in tmp_path.iterdir()) == sorted(failing)


def test_purge_tx_removes_slots_in_parallel_and_fixes_permissions(tmp_path: Path) -> None:
    """A trash with more slots than threads, one of them unreadable (rm -rf would stop):
    all gone, the transaction directory too."""
    root = tmp_path / "arts"
    tx = root / ".trash" / "a-20261130T000000Z-abcdef"
    tx.mkdir(parents=True)
    _tree(tx, 3 * store.RM_THREADS)
    (tx / "TRASH.json").write_text("{}")
    locked = tx / "001-run" / "sub"
    locked.chmod(0)
    s = store.LocalTrashStore(root)
    s.purge_tx(tx.name)
    assert not tx.exists()
    assert stat.S_ISDIR((root / ".trash").lstat().st_mode)
