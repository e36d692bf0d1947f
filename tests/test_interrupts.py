"""SIGINT and SIGTERM during apply, undo and purge (issue 11 item 2), on the real executable.

A subprocess is paused at a known step (``FAILPOINT_PAUSE``), signalled there, and resumed:
the signal is noticed at the next safe point. Before the commit the transaction is rolled
back in that process; after it, it is finished. Either way the command says what happened,
exits 130 (SIGINT) or 143 (SIGTERM), prints no traceback and no "Aborted!", and the
workspace passes `crashkit.check_invariants` (rows, trees, trash, `status` and `check`)
with every run whole at home or whole in trash: nothing half-changed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from retention.errors import Interrupted
from retention.signals import Signals

from . import crashkit as ck
from .conftest import invoke
from .crashkit import start_paused

CODE = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAME = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ck.build(tmp_path_factory.mktemp("interrupts") / "ws", runs=8)


def fresh(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def signal_and_finish(
    proc: subprocess.Popen[bytes], sync: Path, sig: int, *, again: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Send ``sig`` while paused, resume, and wait for the end. With ``again``, keep
    sending it (every few ms) until the process has exited: every later one must be
    ignored without leaving anything half-done."""
    proc.send_signal(sig)
    time.sleep(0.05)  # delivered and handled while the pause loop sleeps
    (sync / "resume").touch()
    if again:
        while proc.poll() is None:
            proc.send_signal(sig)
            time.sleep(0.002)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def clean_exit(p: subprocess.CompletedProcess[bytes], sig: int) -> str:
    err = p.stderr.decode()
    assert p.returncode == CODE[sig], (p.returncode, err)
    assert "Traceback" not in err and "Aborted!" not in err, err
    assert f"retention: {NAME[sig]} received" in err, err
    return err


def applied_txid(ws: Path) -> str:
    p = ck.run(ws, "apply", str(ck.plan(ws)))
    assert p.returncode == 0, p.stderr
    return str(json.loads(p.stdout)["txid"])


# -- apply -----------------------------------------------------------------------------------

APPLY_BEFORE = [
    # (pause point, the printed outcome)
    ("apply.after_begin", "nothing had moved, nothing was deleted."),
    ("apply.after_rename@3", "rolled back 3 directories, nothing was deleted."),
    # inside the catalog transaction, before COMMIT: the transaction itself rolls back
    ("apply.before_commit", "rolled back 6 directories, nothing was deleted."),
]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize(("point", "outcome"), APPLY_BEFORE, ids=[p for p, _ in APPLY_BEFORE])
def test_signal_before_the_commit_rolls_the_apply_back(
    template: Path, tmp_path: Path, point: str, outcome: str, sig: int
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    proc, sync = start_paused(ws, point, "apply", str(ck.plan(ws)))
    p = signal_and_finish(proc, sync, sig)
    err = clean_exit(p, sig)
    assert f"Interrupted ({NAME[sig]}): {outcome}" in err, err
    assert p.stdout == b""  # nothing was applied: no report
    states = ck.check_invariants(ws, before)
    assert set(states.values()) == {"home"}, states
    assert not (ws / "data/backtests/.trash").exists() or not any(
        (ws / "data/backtests/.trash").iterdir()
    )


APPLY_AFTER = ["apply.after_commit", "apply.after_journal_commit", "apply.before_done"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("point", APPLY_AFTER)
def test_signal_after_the_commit_finishes_the_apply(
    template: Path, tmp_path: Path, point: str, sig: int
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    proc, sync = start_paused(ws, point, "apply", str(ck.plan(ws)))
    p = signal_and_finish(proc, sync, sig)
    err = clean_exit(p, sig)
    assert "after the commit, then stopping" not in err  # the phase is said as it is
    assert f"retention: {NAME[sig]} received: finishing the committed transaction" in err, err
    rep = json.loads(p.stdout)
    assert rep["deleted_runs"] == 6
    assert rep["interrupted"]["signal"] == NAME[sig]
    assert rep["interrupted"]["exit_code"] == CODE[sig]
    line = f"Interrupted ({NAME[sig]}) after the commit: finished, 6 runs deleted"
    assert line in err and f"retention undo {rep['txid']}" in err, err
    assert err.rstrip().splitlines()[-1].startswith(line)  # the last word
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()) == ["home"] * 2 + ["trash"] * 6, states
    # ... and it is an ordinary apply: undo brings everything back.
    assert ck.run(ws, "undo", rep["txid"]).returncode == 0
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_a_signal_after_the_commit_skips_the_purge_of_expired_trash(
    template: Path, tmp_path: Path
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    env = {"RETENTION_GRACE_PERIOD": "1s"}
    first = subprocess.run(
        [ck.EXE, "apply", str(ck.plan(ws, keep_last=6))],
        cwd=ws,
        env={**ck.BASE_ENV, **env},
        capture_output=True,
        timeout=60,
    )
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)["txid"]
    time.sleep(1.2)  # its grace period is over: the next apply would purge it
    proc, sync = start_paused(ws, "apply.after_commit", "apply", str(ck.plan(ws)), env=env)
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = clean_exit(p, signal.SIGINT)
    rep = json.loads(p.stdout)
    assert rep["purged"] == [] and rep["deleted_runs"] == 4
    assert "; the purge of expired trash was skipped." in rep["interrupted"]["message"]
    assert rep["interrupted"]["message"] in err
    st = json.loads(ck.run(ws, "status", "--json").stdout)
    assert {t["txid"]: t["state"] for t in st["trash"]}[old] == "applied"  # not purged
    ck.check_invariants(ws, before)


def test_signals_during_the_roll_back_are_ignored_and_leave_nothing_half_done(
    tmp_path: Path,
) -> None:
    """Ctrl-C, then Ctrl-C again and again while the apply stops and rolls back: each
    later one is ignored with a message (kill -9 is the way to stop at once, and then the
    journal makes the next command finish the roll-back); one roll-back, run to its end."""
    ws = ck.build(tmp_path / "ws", runs=60)
    before = ck.snapshot(ws)
    proc, sync = start_paused(ws, "apply.after_rename@40", "apply", str(ck.plan(ws)))
    proc.send_signal(signal.SIGINT)
    p = signal_and_finish(proc, sync, signal.SIGINT, again=True)
    err = clean_exit(p, signal.SIGINT)
    assert "retention: SIGINT ignored: still " in err, err
    assert f"kill -9 {proc.pid}" in err, err
    assert "Interrupted (SIGINT): rolled back 40 directories, nothing was deleted." in err, err
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_the_second_signal_message_names_the_phase(capfd: pytest.CaptureFixture[str]) -> None:
    """In-process: what a signal is told during a roll-back (short, and hard to catch from
    outside at exactly that moment); the handlers are put back afterwards."""
    sigs = Signals()
    with sigs.catching():
        assert signal.getsignal(signal.SIGINT) == sigs._handle
        sigs.phase = "rolling back"
        sigs._handle(signal.SIGINT, None)
        sigs._handle(signal.SIGTERM, None)  # ignored: said only
        assert sigs.signum == signal.SIGINT
        sigs.stop("nothing")  # not "before": nothing raises, the roll-back goes on
        sigs.begin()
        with pytest.raises(Interrupted) as stopped:
            sigs.stop("nothing was deleted")
    assert (stopped.value.exit_code, stopped.value.message) == (
        130,
        "Interrupted (SIGINT): nothing was deleted.",
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    err = capfd.readouterr().err.splitlines()
    assert err[0] == "retention: SIGINT received: rolling back, then stopping"
    assert err[1].startswith("retention: SIGTERM ignored: still rolling back, which leaves")


# -- undo --------------------------------------------------------------------------------------

UNDO_BEFORE = [
    ("undo.after_begin", "nothing had moved, nothing of {t} was restored."),
    ("undo.after_rename@2", "rolled back 2 directories, nothing of {t} was restored."),
    ("undo.before_commit", "rolled back 6 directories, nothing of {t} was restored."),
]


@pytest.mark.parametrize(("point", "outcome"), UNDO_BEFORE, ids=[p for p, _ in UNDO_BEFORE])
def test_signal_before_the_commit_rolls_the_undo_back(
    template: Path, tmp_path: Path, point: str, outcome: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    txid = applied_txid(ws)
    proc, sync = start_paused(ws, point, "undo", txid)
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = clean_exit(p, signal.SIGINT)
    assert f"Interrupted (SIGINT): {outcome.format(t=txid)}" in err, err
    assert p.stdout == b""
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()) == ["home"] * 2 + ["trash"] * 6, states
    # Still undoable, whole.
    assert ck.run(ws, "undo", txid).returncode == 0
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


@pytest.mark.parametrize("point", ["undo.after_commit", "undo.before_done"])
def test_signal_after_the_commit_finishes_the_undo(
    template: Path, tmp_path: Path, point: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    txid = applied_txid(ws)
    proc, sync = start_paused(ws, point, "undo", txid)
    p = signal_and_finish(proc, sync, signal.SIGTERM)
    err = clean_exit(p, signal.SIGTERM)
    rep = json.loads(p.stdout)
    assert [u["target"] for u in rep["undone"]] == [txid]
    assert len(rep["undone"][0]["restored"]) == 6
    assert rep["interrupted"]["exit_code"] == 143
    assert "Interrupted (SIGTERM) after the commit: finished, 6 runs restored." in err, err
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_signal_during_an_undo_of_several_applies_keeps_those_undone_before(
    template: Path, tmp_path: Path
) -> None:
    """``undo --within``: the newest apply is undone (committed) when the signal comes
    during the second: that one is rolled back, the first stays undone, both are said."""
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    older = applied_txid(ws)  # keep_last=2 -> 6 runs
    m = ck.plan(ws, keep_last=1)
    newer = json.loads(ck.run(ws, "apply", str(m)).stdout)["txid"]  # 1 more run
    # The undo goes newest first: the newer apply's one run, then the older one's six.
    proc, sync = start_paused(ws, "undo.after_rename@3", "undo", "--within", "1h")
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = clean_exit(p, signal.SIGINT)
    rep = json.loads(p.stdout)
    assert [u["target"] for u in rep["undone"]] == [newer]
    assert rep["interrupted"]["exit_code"] == 130
    assert f"nothing of {older} was restored." in err and f"Not undone: {older}." in err, err
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()) == ["home"] * 2 + ["trash"] * 6, states


# -- purge -------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["purge.after_begin", "purge.before_commit"])
def test_signal_before_the_commit_purges_nothing(
    template: Path, tmp_path: Path, point: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    txid = applied_txid(ws)
    proc, sync = start_paused(ws, point, "purge", "--all")
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = clean_exit(p, signal.SIGINT)
    assert "Interrupted (SIGINT): nothing was purged." in err, err
    assert p.stdout == b""
    states = ck.check_invariants(ws, before)
    assert sorted(states.values()) == ["home"] * 2 + ["trash"] * 6, states
    assert ck.run(ws, "undo", txid).returncode == 0  # still undoable


@pytest.mark.parametrize("point", ["purge.after_mark", "purge.after_remove", "purge.before_done"])
def test_signal_after_the_commit_finishes_the_purge(
    template: Path, tmp_path: Path, point: str
) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    txid = applied_txid(ws)
    proc, sync = start_paused(ws, point, "purge", "--all", "--vacuum")
    p = signal_and_finish(proc, sync, signal.SIGTERM)
    err = clean_exit(p, signal.SIGTERM)
    rep = json.loads(p.stdout)
    assert rep["purged"] == [txid] and rep["vacuum"] is None  # the vacuum was not started
    msg = (
        "Interrupted (SIGTERM) after the commit: finished, the trash of 1 apply purged"
        " (6 runs); the vacuum was skipped."
    )
    assert rep["interrupted"]["message"] == msg and msg in err, err
    states = ck.check_invariants(ws, before, allow_purged=True)
    assert sorted(states.values()) == ["home"] * 2 + ["purged"] * 6, states


# -- elsewhere ----------------------------------------------------------------------------------


def test_recover_finishes_before_it_stops(template: Path, tmp_path: Path) -> None:
    ws = fresh(template, tmp_path / "ws")
    before = ck.snapshot(ws)
    assert ck.crashed(ck.run(ws, "apply", str(ck.plan(ws)), failpoint="apply.after_rename@4"))
    proc, sync = start_paused(ws, "reconcile.after_rename@2", "recover")
    p = signal_and_finish(proc, sync, signal.SIGINT)
    err = clean_exit(p, signal.SIGINT)
    assert "finishing the recovery of an interrupted transaction, then stopping" in err, err
    rep = json.loads(p.stdout)
    assert [r["action"] for r in rep["recovered"]] == ["rolled back"]
    assert "Interrupted (SIGINT): the recovery was finished first" in err, err
    assert set(ck.check_invariants(ws, before).values()) == {"home"}


def test_ctrl_c_in_a_read_only_command_is_not_a_traceback(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("retention.check.check", interrupted)
    result = invoke("check")
    assert result.exit_code == 130
    assert result.stderr == "Interrupted (SIGINT); nothing was changed.\n"
