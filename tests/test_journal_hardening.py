"""Journal hardening: the journal file is never followed or written through a planted
symlink, FIFO or directory, and `write_atomic` never writes through whatever was planted at
its temp name (a symlink, or a hard link to a file elsewhere).

The promise: a state file we write lands at its own path, as a new inode; anything else at
the journal's path is refused with one clear error and nothing changes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from journal import CorruptJournal, Journal, JournalError, fsio, replay
from journal.record import HEADER
from journal.writer import UnsafeJournal

from . import crashkit as ck

VICTIM = b"precious bytes that are not a journal\n"


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "elsewhere" / "victim"
    v.parent.mkdir()
    v.write_bytes(VICTIM)
    return v


def _valid_journal(path: Path) -> bytes:
    with Journal.open(path) as j:
        j.begin("t1", b"x")
    return path.read_bytes()


# -- the journal file ------------------------------------------------------------------------


def test_open_refuses_a_journal_path_that_is_a_symlink_to_a_file_and_writes_nothing(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path)
    jpath = tmp_path / "journal.wal"
    jpath.symlink_to(victim)
    with pytest.raises(UnsafeJournal) as ei:
        Journal.open(jpath)
    assert isinstance(ei.value, CorruptJournal) and isinstance(ei.value, JournalError)
    assert "symlink" in str(ei.value) and str(victim) in str(ei.value)
    assert victim.read_bytes() == VICTIM
    assert jpath.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "journal.wal"]


def test_open_refuses_a_symlink_even_to_a_valid_journal_and_never_appends_to_it(
    tmp_path: Path,
) -> None:
    real = tmp_path / "elsewhere" / "real.wal"
    real.parent.mkdir()
    content = _valid_journal(real)
    jpath = tmp_path / "journal.wal"
    jpath.symlink_to(real)
    with pytest.raises(UnsafeJournal, match="symlink"):
        Journal.open(jpath)
    assert real.read_bytes() == content


def test_open_refuses_a_dangling_symlink_and_creates_nothing_at_its_target(
    tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere" / "created-through-link"
    target.parent.mkdir()
    jpath = tmp_path / "journal.wal"
    jpath.symlink_to(target)
    with pytest.raises(UnsafeJournal, match="symlink"):
        Journal.open(jpath)
    assert not target.exists()


def test_open_refuses_a_fifo_without_hanging(tmp_path: Path) -> None:
    jpath = tmp_path / "journal.wal"
    os.mkfifo(jpath)
    box: list[BaseException | None] = []

    def attempt() -> None:
        try:
            Journal.open(jpath)
        except BaseException as exc:  # collected for the main thread
            box.append(exc)
        else:
            box.append(None)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "Journal.open hung on a FIFO"
    assert isinstance(box[0], UnsafeJournal) and "FIFO" in str(box[0])
    # a reader on the other end does not make it acceptable either
    rfd = os.open(jpath, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(UnsafeJournal, match="FIFO"):
            Journal.open(jpath)
    finally:
        os.close(rfd)
    assert stat.S_ISFIFO(os.lstat(jpath).st_mode)


def test_open_refuses_a_directory(tmp_path: Path) -> None:
    jpath = tmp_path / "journal.wal"
    jpath.mkdir()
    with pytest.raises(UnsafeJournal, match="directory"):
        Journal.open(jpath)


def test_replay_refuses_a_symlink_and_a_fifo_without_reading_through(tmp_path: Path) -> None:
    real = tmp_path / "real.wal"
    _valid_journal(real)
    link = tmp_path / "link.wal"
    link.symlink_to(real)
    with pytest.raises(UnsafeJournal, match="symlink"):
        replay(link)
    fifo = tmp_path / "fifo.wal"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeJournal, match="FIFO"):
        replay(fifo)  # lstat first: never blocks in open()
    assert set(replay(real)) == {"t1"}


def test_unsafe_journal_error_survives_pickling() -> None:
    import pickle

    exc = UnsafeJournal("/x/journal.wal", 0, "is a symlink (to /y)")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is UnsafeJournal and str(back) == str(exc) and back.path == exc.path


def test_an_ordinary_journal_still_opens_appends_and_resets(tmp_path: Path) -> None:
    jpath = tmp_path / "journal.wal"
    with Journal.open(jpath) as j:
        j.begin("t1")
        j.done("t1")
        assert j.reset_if_idle()
        j.begin("t2")
    assert set(replay(jpath)) == {"t2"}
    assert stat.S_IMODE(jpath.stat().st_mode) == 0o600


# -- the journal through the CLI ---------------------------------------------------------------


def _one_error_line(stderr: bytes) -> str:
    err = stderr.decode()
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("Error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_recover_and_apply_refuse_a_symlinked_journal_with_one_error_and_change_nothing(
    tmp_path: Path,
) -> None:
    ws = ck.build(tmp_path / "ws", runs=8)
    manifest = ck.plan(ws, keep_last=4)
    state = ws / ".retention"
    state.mkdir(exist_ok=True)
    victim = _victim(tmp_path)
    (state / "journal.wal").symlink_to(victim)
    before = ck.snapshot(ws)
    for args in (("recover",), ("apply", str(manifest))):
        p = ck.run(ws, *args)
        assert p.returncode == 7, (args, p.returncode, p.stderr)
        line = _one_error_line(p.stderr)
        assert "symlink" in line and "journal" in line, line
    assert victim.read_bytes() == VICTIM
    assert ck.snapshot(ws) == before
    assert not (ws / "data/backtests/.trash").exists() or not any(
        (ws / "data/backtests/.trash").iterdir()
    )
    # read-only commands report it instead of reading through it
    st = ck.run(ws, "status", "--json")
    assert st.returncode == 0, st.stderr
    assert "symlink" in json.loads(st.stdout)["journal_error"]
    chk = ck.run(ws, "check", "--json")
    assert chk.returncode == 10, chk.stderr
    assert "journal_corrupt" in {f["kind"] for f in json.loads(chk.stdout)["findings"]}
    # Once the link is replaced by a real journal, everything works again.
    (state / "journal.wal").unlink()
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 0, p.stderr
    assert victim.read_bytes() == VICTIM


# -- write_atomic's temp file ------------------------------------------------------------------


def _tmp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}"


def test_write_atomic_never_writes_through_a_hard_link_planted_at_its_temp_name(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path)
    target = tmp_path / "state.json"
    os.link(victim, _tmp_name(target))
    fsio.write_atomic(target, b"new state", 0o600)
    assert victim.read_bytes() == VICTIM  # O_TRUNC through the link would have emptied it
    assert victim.stat().st_nlink == 1  # our temp name was unlinked, never reused
    assert target.read_bytes() == b"new state"
    assert target.stat().st_ino != victim.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "state.json"]


def test_write_atomic_replaces_a_symlink_planted_at_its_temp_name(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    target = tmp_path / "state.json"
    _tmp_name(target).symlink_to(victim)
    fsio.write_atomic(target, b"new state", 0o644)
    assert victim.read_bytes() == VICTIM
    assert target.read_bytes() == b"new state" and not target.is_symlink()
    assert not os.path.lexists(_tmp_name(target))


def test_write_atomic_without_replace_never_writes_through_a_planted_hard_link(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path)
    key = tmp_path / "key"
    os.link(victim, _tmp_name(key))
    fsio.write_atomic(key, b"secret\n", 0o600, replace=False)
    assert victim.read_bytes() == VICTIM
    assert key.read_bytes() == b"secret\n" and key.stat().st_nlink == 1
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_write_atomic_with_a_directory_at_its_temp_name_fails_naming_the_step(
    tmp_path: Path,
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    (_tmp_name(target)).mkdir()
    with pytest.raises(OSError) as ei:
        fsio.write_atomic(target, b"new")
    assert not isinstance(ei.value, FileExistsError)
    assert "leftover temp file" in str(ei.value)
    assert ei.value.errno in (errno.EISDIR, errno.EPERM)
    assert target.read_bytes() == b"old"


def test_journal_reset_never_writes_through_a_link_planted_at_its_temp_name(
    tmp_path: Path,
) -> None:
    victim = _victim(tmp_path)
    jpath = tmp_path / "journal.wal"
    with Journal.open(jpath) as j:
        j.begin("t1")
        j.done("t1")
        os.link(victim, _tmp_name(jpath))
        assert j.reset_if_idle()
        j.begin("t2")  # appends go to the fresh journal, not to the victim
    assert victim.read_bytes() == VICTIM
    assert jpath.read_bytes().startswith(HEADER) and set(replay(jpath)) == {"t2"}
