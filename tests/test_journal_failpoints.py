"""Failpoints: inert unless armed, counted, logged, and exiting with 86 at the armed hit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from journal.failpoints import (
    FAILPOINT_EXIT_CODE,
    JOURNAL_FAILPOINTS,
    declare,
    declared,
    failpoint,
    hits,
    reset_hits,
)

REPO = Path(__file__).resolve().parent.parent


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAILPOINT", "FAILPOINT_LOG")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


CHILD = textwrap.dedent(
    """
    from journal.failpoints import declare, failpoint
    declare("test.child.point")
    for i in range(1, 4):
        print(f"before hit {i}", flush=True)
        failpoint("test.child.point")
    print("survived", flush=True)
    """
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # a FAILPOINT inherited from the shell would kill the test runner itself
    monkeypatch.delenv("FAILPOINT", raising=False)
    monkeypatch.delenv("FAILPOINT_LOG", raising=False)


def test_exit_code_is_86_and_journal_declares_its_own_points() -> None:
    assert FAILPOINT_EXIT_CODE == 86
    assert set(JOURNAL_FAILPOINTS) <= declared()
    assert set(JOURNAL_FAILPOINTS) == {
        "journal.append.before_write",
        "journal.append.before_fsync",
        "journal.append.after_fsync",
        "journal.truncate.before_fsync",
        "journal.reset.before_rename",
    }


def test_undeclared_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="undeclared failpoint"):
        failpoint("journal.no.such.point")


def test_declare_rejects_empty_and_at_sign_names() -> None:
    for bad in ("", "a@b"):
        with pytest.raises(ValueError):
            declare(bad)


def test_unarmed_failpoint_returns_and_counts_hits_per_name() -> None:
    declare("test.count.a", "test.count.b")
    reset_hits()
    failpoint("test.count.a")
    failpoint("test.count.a")
    failpoint("test.count.b")
    assert hits()["test.count.a"] == 2
    assert hits()["test.count.b"] == 1
    snapshot = hits()
    snapshot["test.count.a"] = 99  # a copy: mutating it changes nothing
    assert hits()["test.count.a"] == 2
    reset_hits()
    assert hits() == {}


def test_armed_for_another_name_does_not_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    declare("test.other.a", "test.other.b")
    monkeypatch.setenv("FAILPOINT", "test.other.b")
    failpoint("test.other.a")  # returns: only test.other.b is armed


def test_malformed_hit_number_raises_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    declare("test.malformed")
    for spec in ("test.malformed@x", "test.malformed@0"):
        monkeypatch.setenv("FAILPOINT", spec)
        with pytest.raises(ValueError, match="FAILPOINT"):
            failpoint("test.malformed")


def test_failpoint_log_appends_one_line_per_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare("test.log.a", "test.log.b")
    log = tmp_path / "fp.log"
    monkeypatch.setenv("FAILPOINT_LOG", str(log))
    failpoint("test.log.a")
    failpoint("test.log.b")
    failpoint("test.log.a")
    assert log.read_text().splitlines() == ["test.log.a", "test.log.b", "test.log.a"]


def test_child_armed_at_second_hit_exits_86_after_printing_twice(tmp_path: Path) -> None:
    log = tmp_path / "fp.log"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=_child_env(FAILPOINT="test.child.point@2", FAILPOINT_LOG=str(log)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == FAILPOINT_EXIT_CODE, proc.stderr
    assert proc.stdout.splitlines() == ["before hit 1", "before hit 2"]
    # the log line is written before the exit decision, so the fatal hit is recorded too
    assert log.read_text().splitlines() == ["test.child.point"] * 2


def test_child_armed_without_number_exits_at_first_hit_and_unarmed_survives() -> None:
    armed = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=_child_env(FAILPOINT="test.child.point"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert armed.returncode == FAILPOINT_EXIT_CODE, armed.stderr
    assert armed.stdout.splitlines() == ["before hit 1"]
    unarmed = subprocess.run(
        [sys.executable, "-c", CHILD],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unarmed.returncode == 0, unarmed.stderr
    assert unarmed.stdout.splitlines()[-1] == "survived"
