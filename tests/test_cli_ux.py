"""What an operator sees: refusals that prevent mistakes, and no traceback for odd input."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from . import crashkit as ck
from .conftest import invoke


def test_plan_refuses_to_print_the_manifest_on_a_terminal(workspace: Path) -> None:
    master, slave = os.openpty()
    try:
        p = subprocess.run(
            [ck.EXE, "plan"], cwd=workspace, env=ck.BASE_ENV, stdout=slave, stderr=subprocess.PIPE
        )
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 2
    assert p.stderr.decode().startswith(
        "Error: refusing to write the signed manifest to a terminal"
    )


def test_a_missing_artifact_root_is_refused_before_it_can_orphan_directories(
    workspace: Path,
) -> None:
    result = invoke("plan", "--artifact-root", "nowhere", "-o", "m.json")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: artifact root {workspace / 'nowhere'} does not exist")
    assert not Path("m.json").exists()
    m = ck.plan(workspace)
    os.environ["RETENTION_ARTIFACT_ROOT"] = str(workspace / "nowhere")
    try:
        result = invoke("apply", str(m))
    finally:
        del os.environ["RETENTION_ARTIFACT_ROOT"]
    assert result.exit_code == 2 and "does not exist" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["undo", "--within", "10000y"],
        ["undo", "--within", "99999999999y"],
        ["plan", "--now", "9999-12-31T12:00:00", "-o", "m.json"],
        ["plan", "--max-age", "99999999999y", "-o", "m.json"],
    ],
    ids=["within-10000y", "within-huge", "now-9999", "max-age-huge"],
)
def test_out_of_range_durations_and_times_are_usage_errors(workspace: Path, args: list) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr


def test_a_config_file_that_is_not_utf8_is_a_config_error(workspace: Path) -> None:
    Path("retention.toml").write_bytes(b"\xff\xfe[\x00p\x00")
    result = invoke("config")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: config file retention.toml is not UTF-8 text")


def test_commands_run_from_the_wrong_directory_leave_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{}")
    for args in (["apply", "m.json"], ["recover"], ["purge"], ["undo", "--within", "1h"]):
        p = ck.run(tmp_path, *args)
        assert p.returncode == 4, (args, p.stderr)
        assert "no retention.toml here" in p.stderr.decode()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_apply_summary_counts_skips_and_says_how_long_undo_works(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m))
    assert "Undo with: retention undo a-" in result.stderr and "(until " in result.stderr
    status = invoke("status")
    assert "undo possible until" in status.stdout and "Last apply: a-" in status.stdout


def test_plan_warns_when_now_is_far_from_the_clock(workspace: Path) -> None:
    os.environ["RETENTION_MANIFEST_TTL"] = "1d"
    try:
        past = invoke("plan", "--now", "2020-01-01T00:00:00Z", "-o", "m.json")
        future = invoke(
            "plan", "--now", "2099-01-01T00:00:00Z", "--allow-remove-all", "-o", "f.json"
        )
    finally:
        os.environ["RETENTION_MANIFEST_TTL"] = "3650d"
    assert past.stderr.startswith("Warning: this manifest expired at 2020-01-02 00:00Z")
    assert future.stderr.startswith("Warning: --now is in the future")


def test_plan_warns_over_an_interrupted_transaction(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    assert ck.crashed(ck.run(workspace, "apply", str(m), failpoint="apply.after_rename@2"))
    result = invoke("plan", "--keep-last", "30", "-o", "again.json")
    assert result.stderr.startswith("Warning: transaction a-")
    assert "run `retention recover` first" in result.stderr.splitlines()[0]
