"""Journal: transaction states, durability (fsync counts), sticky failure, idle reset,
and real crashes of a child process at every journal failpoint."""

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from journal import (
    ABORTED,
    BEGIN,
    COMMITTED,
    DONE,
    INTENT,
    CorruptJournal,
    Journal,
    JournalError,
    Record,
    TxStatus,
    fsio,
    read_journal,
)
from journal.failpoints import FAILPOINT_EXIT_CODE
from journal.record import HEADER, HEADER_SIZE, encode_record

REPO = Path(__file__).resolve().parent.parent


def _fsyncs() -> int:
    return fsio.stats["fsync_file"]


def _kinds(j: Journal, txid: str) -> list[str]:
    return [r.kind for r in j.transactions()[txid].records]


def test_open_creates_header_only_file_durably_with_mode_0600(tmp_path: Path) -> None:
    p = tmp_path / "journal.wal"
    before = dict(fsio.stats)
    with Journal.open(p) as j:
        assert j.path == str(p)
        assert j.transactions() == {} and j.unfinished() == []
    assert p.read_bytes() == HEADER
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert fsio.stats["fsync_file"] > before.get("fsync_file", 0)
    assert fsio.stats["fsync_dir"] > before.get("fsync_dir", 0)


def test_open_in_missing_directory_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Journal.open(tmp_path / "no-dir" / "journal.wal")


def test_commit_path_states_begin_append_commit_done_and_reopen(tmp_path: Path) -> None:
    p = tmp_path / "journal.wal"
    with Journal.open(p) as j:
        j.begin("t1", b"plan")
        assert j.transactions()["t1"].status is TxStatus.ACTIVE
        j.append("t1", INTENT, b"step-1")
        j.append("t1", "app.note", b"any kind")
        j.commit("t1")
        tx = j.transactions()["t1"]
        assert tx.status is TxStatus.COMMITTED and tx.decision is TxStatus.COMMITTED
        j.append("t1", INTENT, b"finish-step")  # finishing steps after the decision
        j.done("t1")
        assert j.transactions()["t1"].status is TxStatus.DONE
        states = j.transactions()
    with Journal.open(p) as j2:
        assert j2.transactions() == states
        tx = j2.transactions()["t1"]
        assert tx.begin == b"plan"
        assert [r.kind for r in tx.records] == [
            BEGIN,
            INTENT,
            "app.note",
            COMMITTED,
            INTENT,
            DONE,
        ]
        assert tx.records[1] == Record(1, INTENT, "t1", b"step-1")
        assert j2.unfinished() == []


def test_abort_path_states_begin_abort_done_and_reopen(tmp_path: Path) -> None:
    p = tmp_path / "journal.wal"
    with Journal.open(p) as j:
        j.begin("t1")
        j.append("t1", INTENT, b"x")
        j.abort("t1", b"why")
        assert j.transactions()["t1"].status is TxStatus.ABORTED
        j.append("t1", "rollback", b"undo x")
        with Journal.open(p) as peek:  # another reader sees the decision already
            assert peek.transactions()["t1"].status is TxStatus.ABORTED
        j.done("t1")
    with Journal.open(p) as j2:
        tx = j2.transactions()["t1"]
        assert tx.status is TxStatus.DONE and tx.decision is TxStatus.ABORTED
        assert tx.records[2] == Record(1, ABORTED, "t1", b"why")


def test_unfinished_lists_non_done_transactions_in_begin_order(tmp_path: Path) -> None:
    p = tmp_path / "journal.wal"
    with Journal.open(p) as j:
        for t in ("c", "a", "b", "d"):
            j.begin(t)
        j.commit("a")
        j.abort("b")
        j.done("c")
        assert list(j.transactions()) == ["c", "a", "b", "d"]
    with Journal.open(p) as j2:
        assert [(t.txid, t.status) for t in j2.unfinished()] == [
            ("a", TxStatus.COMMITTED),
            ("b", TxStatus.ABORTED),
            ("d", TxStatus.ACTIVE),
        ]


def test_transactions_returns_copies_that_cannot_change_the_journal(tmp_path: Path) -> None:
    with Journal.open(tmp_path / "j.wal") as j:
        j.begin("t")
        j.transactions()["t"].status = TxStatus.DONE
        j.transactions()["t"].records.clear()
        assert j.transactions()["t"].status is TxStatus.ACTIVE
        assert _kinds(j, "t") == [BEGIN]


def test_invalid_calls_raise_value_error_and_write_nothing(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    with Journal.open(p) as j:
        j.begin("t")
        size = p.stat().st_size
        with pytest.raises(ValueError, match="already exists"):
            j.begin("t")
        with pytest.raises(ValueError):
            j.begin("")
        with pytest.raises(ValueError, match="unknown transaction"):
            j.append("nope", INTENT)
        for method in (j.commit, j.abort, j.done):
            with pytest.raises(ValueError, match="unknown transaction"):
                method("nope")
        for kind in (BEGIN, COMMITTED, ABORTED, DONE, ""):
            with pytest.raises(ValueError):
                j.append("t", kind)
        assert p.stat().st_size == size
        j.done("t")
        size = p.stat().st_size
        with pytest.raises(ValueError, match="done"):
            j.append("t", INTENT)
        with pytest.raises(ValueError, match="already exists"):
            j.begin("t")  # txids are never reused, even after DONE
        with pytest.raises(ValueError):
            j.commit("t")  # done without a decision
        assert p.stat().st_size == size


def test_repeating_a_decision_is_a_no_op_and_the_other_decision_is_refused(
    tmp_path: Path,
) -> None:
    p = tmp_path / "j.wal"
    with Journal.open(p) as j:
        j.begin("c")
        j.commit("c")
        j.begin("a")
        j.abort("a")
        size, syncs = p.stat().st_size, _fsyncs()
        j.commit("c")
        j.abort("a")
        assert (p.stat().st_size, _fsyncs()) == (size, syncs)  # no write, no fsync
        with pytest.raises(ValueError, match="already committed"):
            j.abort("c")
        with pytest.raises(ValueError, match="already aborted"):
            j.commit("a")
        j.done("c")
        j.done("a")
        size = p.stat().st_size
        j.done("c")  # recovery re-running done is a no-op too
        j.commit("c")  # and so is re-running the decision of a finished tx
        j.abort("a")
        assert p.stat().st_size == size
        with pytest.raises(ValueError):
            j.abort("c")
    assert [r.kind for r in read_journal(p).records].count(COMMITTED) == 1


def test_each_durable_call_fsyncs_once_and_unsynced_batch_fsyncs_once_on_sync(
    tmp_path: Path,
) -> None:
    p = tmp_path / "j.wal"
    with Journal.open(p) as j:
        for call in (
            lambda: j.begin("t"),
            lambda: j.append("t", INTENT, b"1"),
            lambda: j.commit("t"),
            lambda: j.done("t"),
        ):
            before = _fsyncs()
            call()
            assert _fsyncs() - before == 1
        j.begin("u")
        before = _fsyncs()
        for i in range(5):
            j.append("u", INTENT, bytes([i]), sync=False)
        assert _fsyncs() == before
        # unsynced records are already in the file for any reader
        assert len(read_journal(p).records) == 10
        j.sync()
        assert _fsyncs() - before == 1


def test_open_of_existing_journal_fsyncs_what_it_read(tmp_path: Path) -> None:
    """Records another process wrote without fsync are made durable before anyone acts on
    them."""
    p = tmp_path / "j.wal"
    with Journal.open(p) as j:
        j.begin("t")
        j.append("t", INTENT, sync=False)
    before = _fsyncs()
    with Journal.open(p) as j2:
        assert _kinds(j2, "t") == [BEGIN, INTENT]
    assert _fsyncs() - before == 1


def test_reset_if_idle_resets_only_when_every_transaction_is_done(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    with Journal.open(p) as j:
        assert j.reset_if_idle() is False  # header only: nothing to reset
        j.begin("a")
        j.begin("b")
        j.commit("a")
        j.done("a")
        size = p.stat().st_size
        assert j.reset_if_idle() is False  # b is still active
        assert p.stat().st_size == size
        j.abort("b")
        assert j.reset_if_idle() is False  # b aborted but not done
        j.done("b")
        assert j.reset_if_idle() is True
        assert p.read_bytes() == HEADER
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert j.transactions() == {}
        assert j.reset_if_idle() is False
        j.begin("a")  # forgotten txids may start again; appends go to the new file
        j.append("a", INTENT, b"x")
    assert sorted(os.listdir(tmp_path)) == ["j.wal"]
    with Journal.open(p) as j2:
        assert _kinds(j2, "a") == [BEGIN, INTENT]


def test_open_rewrites_header_of_empty_or_header_prefix_file(tmp_path: Path) -> None:
    p = tmp_path / "j.wal"
    for content in (b"", HEADER[:3]):
        p.write_bytes(content)
        with Journal.open(p) as j:
            j.begin("t")
        r = read_journal(p)
        assert [x.kind for x in r.records] == [BEGIN] and not r.torn
        assert p.read_bytes()[:HEADER_SIZE] == HEADER


@pytest.mark.parametrize(
    ("records", "bad_index"),
    [
        ([Record(1, INTENT, "x")], 0),  # record before its begin
        ([Record(1, BEGIN, "x"), Record(1, BEGIN, "x")], 1),
        ([Record(1, BEGIN, "x"), Record(1, COMMITTED, "x"), Record(1, ABORTED, "x")], 2),
        ([Record(1, BEGIN, "x"), Record(1, DONE, "x"), Record(1, INTENT, "x")], 2),
        ([Record(1, BEGIN, "x"), Record(2, INTENT, "x")], 1),  # unknown record version
    ],
)
def test_replay_refuses_records_that_break_transaction_rules(
    tmp_path: Path, records: list[Record], bad_index: int
) -> None:
    p = tmp_path / "j.wal"
    p.write_bytes(HEADER + b"".join(encode_record(r) for r in records))
    offset = read_journal(p).offsets[bad_index]
    before = p.read_bytes()
    with pytest.raises(CorruptJournal) as ei:
        Journal.open(p)
    assert ei.value.offset == offset
    assert p.read_bytes() == before


def test_closed_journal_refuses_writes(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "j.wal")
    j.begin("t")
    j.close()
    j.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        j.append("t", INTENT)


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAILPOINT", "FAILPOINT_LOG")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


STICKY_CHILD = textwrap.dedent(
    """
    import errno, os, resource, signal, sys
    from journal import Journal, JournalError
    path = sys.argv[1]
    j = Journal.open(path)
    j.begin("t", b"plan")
    # a real write failure: the file size limit makes write() fail with EFBIG midway
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = os.path.getsize(path) + 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        j.append("t", "intent", b"x" * 200)
    except OSError as e:
        print("write failed", errno.errorcode[e.errno])
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    for call in (lambda: j.append("t", "intent", b"small"), lambda: j.commit("t"), j.sync):
        try:
            call()
        except JournalError as e:
            print("refused:", e)
    """
)


def test_failed_write_is_sticky_and_leaves_a_torn_tail_that_open_repairs(
    tmp_path: Path,
) -> None:
    p = tmp_path / "j.wal"
    proc = subprocess.run(
        [sys.executable, "-c", STICKY_CHILD, str(p)],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "write failed EFBIG"
    assert len(lines) == 4
    assert all("unusable after a failed write; run recover" in x for x in lines[1:])
    r = read_journal(p)
    assert r.torn and [x.kind for x in r.records] == [BEGIN]  # partial frame on disk
    with Journal.open(p) as j:
        assert p.stat().st_size == r.good_length
        assert j.transactions()["t"].status is TxStatus.ACTIVE
        j.abort("t")


CRASH_CHILD = textwrap.dedent(
    """
    import sys
    from journal import Journal
    with Journal.open(sys.argv[1]) as j:
        j.begin("t1", b"plan")
        j.append("t1", "intent", b"step")
        j.commit("t1")
        j.done("t1")
        assert j.reset_if_idle()
    print("finished")
    """
)

# the transaction's records in write order; STATES[n] = what n durable records mean
KINDS = [BEGIN, INTENT, COMMITTED, DONE]
STATES: list[tuple[TxStatus, list[str]] | None] = [
    None,
    (TxStatus.ACTIVE, KINDS[:1]),
    (TxStatus.ACTIVE, KINDS[:2]),
    (TxStatus.COMMITTED, KINDS[:3]),
    (TxStatus.DONE, KINDS[:4]),
]


def _prepare(path: Path) -> bytes:
    """A journal holding a finished tx t0 plus a torn tail, so the child's open repairs it
    (hitting journal.truncate.before_fsync)."""
    with Journal.open(path) as j:
        j.begin("t0")
        j.done("t0")
    good = path.read_bytes()
    path.write_bytes(good + b"\x00\x00\x01")
    return good


def _run_child(path: Path, failpoint: str | None, log: Path | None = None) -> int:
    extra = {"FAILPOINT": failpoint} if failpoint else {}
    if log is not None:
        extra["FAILPOINT_LOG"] = str(log)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(path)],
        env=_child_env(**extra),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode in (0, FAILPOINT_EXIT_CODE), proc.stderr
    if proc.returncode == 0:
        assert proc.stdout.strip() == "finished"
    return proc.returncode


def _assert_usable_after_recovery(path: Path) -> None:
    with Journal.open(path) as j:
        for tx in j.unfinished():
            if tx.status is TxStatus.ACTIVE:
                j.abort(tx.txid)
            j.done(tx.txid)
        j.begin("after")
        j.done("after")
    r = read_journal(path)
    assert not r.torn and r.records[-1] == Record(1, DONE, "after")


def test_uncrashed_child_hits_every_journal_failpoint_in_order(tmp_path: Path) -> None:
    """Guards the sweep below: each armed point is really reached by the child."""
    p = tmp_path / "j.wal"
    _prepare(p)
    log = tmp_path / "fp.log"
    assert _run_child(p, None, log) == 0
    appends = ["before_write", "before_fsync", "after_fsync"]
    assert log.read_text().splitlines() == [
        "journal.truncate.before_fsync",
        *[f"journal.append.{a}" for _ in KINDS for a in appends],
        "journal.reset.before_rename",
    ]
    assert p.read_bytes() == HEADER
    _assert_usable_after_recovery(p)


@pytest.mark.parametrize(
    ("point", "hit"),
    [("journal.truncate.before_fsync", 1), ("journal.reset.before_rename", 1)]
    + [
        (f"journal.append.{a}", n)
        for a in ("before_write", "before_fsync", "after_fsync")
        for n in range(1, len(KINDS) + 1)
    ],
)
def test_child_killed_at_failpoint_leaves_a_readable_consistent_journal(
    tmp_path: Path, point: str, hit: int
) -> None:
    p = tmp_path / "j.wal"
    good = _prepare(p)
    assert _run_child(p, f"{point}@{hit}") == FAILPOINT_EXIT_CODE
    r = read_journal(p)  # never CorruptJournal
    with Journal.open(p) as j:
        txs = j.transactions()
        assert txs["t0"].status is TxStatus.DONE
        t1 = txs.get("t1")
        got = None if t1 is None else (t1.status, [x.kind for x in t1.records])
    if point == "journal.truncate.before_fsync":
        # truncated (page cache survives a process crash) or still torn: same records
        assert r.records == read_journal(p).records and got is None
        assert p.read_bytes() == good
    elif point == "journal.reset.before_rename":
        assert got == STATES[4]
        assert r.file_length > HEADER_SIZE  # old file still in place
    elif point == "journal.append.before_write":
        assert got == STATES[hit - 1]
    elif point == "journal.append.before_fsync":
        # written but not fsynced: a process crash keeps it, a power cut might not
        assert got in (STATES[hit - 1], STATES[hit])
    else:
        assert got == STATES[hit]
    _assert_usable_after_recovery(p)
