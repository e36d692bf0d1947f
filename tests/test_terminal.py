"""Terminal manners: no JSON on a terminal (the summary instead), progress with percent,
rate and ETA on a terminal and never in a pipe, -q / -v, contradictory flags, and
--catalog / --artifact-root on show, apply and undo. The terminal is a real pty."""

from __future__ import annotations

import json
import os
import re
import select
import sqlite3
import subprocess
from pathlib import Path

import pytest

from retention import sample
from retention.cli import cli
from retention.reporting import Progress

from . import crashkit as ck
from .conftest import NOW, invoke


def on_terminal(
    cwd: Path, *args: str, stdout_tty: bool = True, stderr_tty: bool = True
) -> tuple[int, str, str]:
    """Run the real `retention` with stdout and/or stderr on a pty of its own (a pipe
    otherwise); returns the exit code and what each stream received, raw."""
    fds: dict[str, tuple[int, int]] = {}
    for name, tty in (("stdout", stdout_tty), ("stderr", stderr_tty)):
        if tty:
            fds[name] = os.openpty()
    proc = subprocess.Popen(
        [ck.EXE, *args],
        cwd=cwd,
        env=ck.BASE_ENV,
        stdin=subprocess.DEVNULL,
        stdout=fds["stdout"][1] if "stdout" in fds else subprocess.PIPE,
        stderr=fds["stderr"][1] if "stderr" in fds else subprocess.PIPE,
    )
    readers: dict[int, str] = {}
    for name, (master, slave) in fds.items():
        os.close(slave)
        readers[master] = name
    if proc.stdout is not None:
        readers[proc.stdout.fileno()] = "stdout"
    if proc.stderr is not None:
        readers[proc.stderr.fileno()] = "stderr"
    got = {"stdout": b"", "stderr": b""}
    open_fds = set(readers)
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 60)
        assert ready, "the command hung"
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            if not chunk:
                open_fds.discard(fd)
            got[readers[fd]] += chunk
    code = proc.wait(timeout=60)
    for master, _ in fds.values():
        os.close(master)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return code, got["stdout"].decode(), got["stderr"].decode()


PROGRESS = re.compile(r"moving to trash: +\d+% [\d,]+/10 +[\d,]+/s +ETA \d+:\d\d")


def test_apply_on_a_terminal_shows_the_summary_and_no_json(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    code, out, err = on_terminal(workspace, "apply", str(m))
    assert code == 0, err
    assert out == ""  # nothing at all on stdout: the report is for machines
    assert "Applied m-" in err and "10 runs deleted" in err
    assert "format_version" not in err and "{" not in err


def test_apply_json_flag_prints_the_report_even_on_a_terminal(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    code, out, err = on_terminal(workspace, "apply", str(m), "--json", stderr_tty=False)
    assert code == 0, err
    report = json.loads(out.replace("\r\n", "\n"))
    assert report["kind"] == "apply-report" and report["deleted_runs"] == 10
    assert "Applied m-" in err


def test_apply_in_a_pipe_prints_json_on_stdout_and_the_summary_on_stderr(
    workspace: Path,
) -> None:
    m = ck.plan(workspace, keep_last=30)
    code, out, err = on_terminal(workspace, "apply", str(m), stdout_tty=False)
    assert code == 0
    assert json.loads(out)["deleted_runs"] == 10
    assert "Applied m-" in err


def test_progress_line_with_percent_rate_and_eta_on_a_terminal(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    code, _, err = on_terminal(workspace, "apply", str(m), stdout_tty=False)
    assert code == 0, err
    assert PROGRESS.search(err), err
    assert "\r\x1b[K" in err  # the line is redrawn in place and erased when done
    assert re.search(r"committing: +\d+% \d+/\d+ ", err), err  # one step per statement
    code, _, err = on_terminal(workspace, "undo", "--within", "3650d", stdout_tty=False)
    assert code == 0, err
    assert re.search(r"moving back from trash: +\d+% [\d,]+/10 ", err), err
    code, _, err = on_terminal(
        workspace, "plan", "--keep-last", "5", "-o", "m2.json", stdout_tty=False
    )
    assert code == 0, err
    assert re.search(r"measuring: +\d+% [\d,]+/35 +[\d,]+/s", err), err
    code, _, err = on_terminal(workspace, "apply", "m2.json", stdout_tty=False)
    assert code == 0, err
    code, _, err = on_terminal(workspace, "purge", "--all", "--yes", stdout_tty=False)
    assert code == 0, err
    assert re.search(r"purging: +\d+% [\d,]+/35 +[\d,]+/s", err), err  # one step per run


def test_no_progress_line_in_a_pipe_nor_with_quiet(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    p = ck.run(workspace, "apply", str(m))
    assert p.returncode == 0
    assert b"moving to trash" not in p.stderr and b"\r" not in p.stderr
    assert b"Applied m-" in p.stderr
    code, out, err = on_terminal(workspace, "undo", "--within", "3650d", "-q")
    assert code == 0
    assert out == "" and err == ""  # quiet on a terminal: nothing (no JSON, no summary)


def test_progress_text_says_percent_rate_and_eta() -> None:
    class Tty:
        def __init__(self) -> None:
            self.text = ""

        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    bar = Progress("moving to trash", 4_000, stream=Tty())  # type: ignore[arg-type]
    bar.done = 1_000
    line = bar.line(bar._start + 2.0)
    assert line == "moving to trash:   25% 1,000/4,000  500/s  ETA 0:06"
    bar.done = 0
    assert bar.line(bar._start + 1.0) == "moving to trash:    0% 0/4,000  0/s"
    assert Progress("x", 3, stream=open(os.devnull, "w")).enabled is False  # noqa: SIM115


def test_quiet_prints_no_summary_but_keeps_the_json_report(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "-q")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert json.loads(result.stdout)["deleted_runs"] == 10
    assert invoke("status", "-q").stdout == ""


def test_quiet_still_prints_errors(workspace: Path) -> None:
    result = invoke("-q", "apply", "nowhere.json")
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ")


def test_verbose_lists_every_deleted_and_restored_run(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "-v", "--output-json", "r.json")
    assert result.exit_code == 0
    ids = json.loads(result.stdout)["deleted_run_ids"]
    for rid in ids:
        assert f"Deleted {rid}\n" in result.stderr
    assert "Report written to r.json." in result.stderr
    assert "Deleted " not in invoke("undo", "--within", "3650d").stderr  # not without -v
    m = ck.plan(workspace, keep_last=25)
    applied = invoke("-v", "apply", str(m))  # before the subcommand works too
    assert applied.exit_code == 0 and "Deleted " in applied.stderr
    result = invoke("undo", "--within", "3650d", "-v")
    assert sum(line.startswith("Restored ") for line in result.stderr.splitlines()) == 15


def test_quiet_and_verbose_together_are_refused(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    for args in (["apply", str(m), "-q", "-v"], ["-q", "apply", str(m), "-v"], ["status", "-qv"]):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "contradict" in result.stderr
    db = sqlite3.connect(workspace / "data" / "catalog.db")
    assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 40  # nothing applied
    db.close()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_takes_quiet_and_verbose(name: str) -> None:
    opts = {o for p in cli.commands[name].params for o in getattr(p, "opts", [])}
    assert {"-q", "--quiet", "-v", "--verbose"} <= opts


def _other_workspace(workspace: Path) -> tuple[Path, Path]:
    """A second catalog and artifact root beside the workspace's own."""
    other = workspace / "other"
    sample.build(other, runs=12, now=NOW)
    return other / "data" / "catalog.db", other / "data" / "backtests"


def test_apply_and_show_take_catalog_and_artifact_root_as_plan_does(workspace: Path) -> None:
    catalog, root = _other_workspace(workspace)
    flags = ["--catalog", str(catalog), "--artifact-root", str(root)]
    plan = invoke("plan", "--keep-last", "4", *flags, "-o", "m.json")
    assert plan.exit_code == 0, plan.stderr
    shown = invoke("show", "m.json", *flags)
    assert shown.exit_code == 0, shown.stderr
    assert "8 runs" in shown.stdout
    result = invoke("apply", "m.json", *flags)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["deleted_runs"] == 8
    assert len(os.listdir(root)) == 4 + 1  # the kept runs and .trash
    undone = invoke("undo", "--within", "3650d", *flags)
    assert undone.exit_code == 0, undone.stderr
    assert len(os.listdir(root)) == 12 + 1


def test_a_manifest_of_another_catalog_or_root_is_refused_naming_both(workspace: Path) -> None:
    catalog, root = _other_workspace(workspace)
    plan = invoke(
        "plan", "--keep-last", "4", "--catalog", str(catalog), "--artifact-root", str(root)
    )
    Path("m.json").write_bytes(plan.stdout_bytes)
    # without the flags: the workspace's own catalog, which is another one
    for command in ("show", "apply"):
        result = invoke(command, "m.json")
        assert result.exit_code == 5, (command, result.stderr)
        assert str(catalog) in result.stderr and "data/catalog.db" in result.stderr
    # the right catalog but the workspace's own artifact root
    for command in ("show", "apply"):
        result = invoke(command, "m.json", "--catalog", str(catalog))
        assert result.exit_code == 5, (command, result.stderr)
        assert str(root) in result.stderr
        assert str(workspace / "data" / "backtests") in result.stderr
    assert len(os.listdir(root)) == 12  # nothing moved, no trash made


def test_contradictory_output_flags_are_refused(workspace: Path) -> None:
    m = ck.plan(workspace, keep_last=30)
    result = invoke("apply", str(m), "--output-json", "same", "--metrics-file", "same")
    assert result.exit_code == 2
    assert "Error: " in result.stderr


def test_a_terminal_session_shows_progress_and_summaries_and_never_json(
    workspace: Path,
) -> None:
    """plan, show, apply, status, trash, undo --run, log, each with stdout and stderr on a
    pty: what they show has the progress lines and the summaries, and no JSON."""
    screen = ""
    session: list[tuple[str, ...]] = [
        ("plan", "--keep-last", "30", "-o", "m.json"),
        ("show", "m.json"),
        ("apply", "m.json"),
        ("status",),
        ("trash",),
    ]
    for args in session:
        code, out, err = on_terminal(workspace, *args)
        assert code == 0, (args, out, err)
        screen += out + err
    run_id = json.loads(Path("m.json").read_text())["payload"]["entries"][0]["run_id"]
    for args in (("undo", "--run", str(run_id)), ("log",)):
        code, out, err = on_terminal(workspace, *args)
        assert code == 0, (args, out, err)
        screen += out + err
    assert re.search(r"measuring: +\d+% ", screen)
    assert PROGRESS.search(screen)
    assert "10 of 40 runs would be deleted" in screen
    assert "Apply with: retention apply m.json" in screen
    assert "Applied m-" in screen and "10 runs deleted" in screen
    assert "Trash:" in screen
    assert '{"' not in screen and "format_version" not in screen
