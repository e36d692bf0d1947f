"""The command-line interface: a thin click layer over the library.

Every command parses options, calls one library function and renders its result. Errors a
user can cause are `RetentionError`s, rendered once in `RetentionGroup.invoke` as
``Error: <message>`` (plus ``Hint: ...``) on stderr with the error's exit code.
"""

from __future__ import annotations

import functools
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import msgspec

from retention import __version__, views
from retention.config import Config, load_config, render_config
from retention.durations import parse_duration, parse_instant
from retention.errors import (
    EXIT_INCONSISTENT,
    EXIT_PARTIAL,
    Interrupted,
    RetentionError,
    UsageError,
    from_environment,
    interrupt_exit_code,
)
from retention.reporting import safe_text


class RetentionGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RetentionError as exc:
            _render(ctx, exc)
        except KeyboardInterrupt:  # Ctrl-C outside a mutating command's safe points
            _render(ctx, Interrupted(signal.SIGINT, "Interrupted (SIGINT); nothing was changed."))
        except Exception as exc:  # disk full, permission denied, fsync failed: not bugs
            mapped = from_environment(exc)
            if mapped is None:
                raise
            _render(ctx, mapped)


def _say(text: str = "", *, err: bool = False) -> None:
    """Print one line for people; control characters in it (from a run id, a path, a
    message) are escaped, so nothing can forge a line or reach the terminal as a sequence."""
    click.echo(safe_text(text), err=err)


def _render(ctx: click.Context, exc: RetentionError) -> None:
    # An interruption is the operator's doing, not an error: its message says what happened.
    _say(exc.message if isinstance(exc, Interrupted) else f"Error: {exc.message}", err=True)
    if exc.hint:
        _say(f"Hint: {exc.hint}", err=True)
    ctx.exit(exc.exit_code)


def _interruptible(f: Any) -> Any:
    """SIGINT/SIGTERM stop the command at its next safe point (`retention.workspace.SIGNALS`)
    instead of raising KeyboardInterrupt anywhere, also while its report is printed. One the
    command did not report itself (it came after the work was done) is said last; either
    way the exit code is 128 + the signal's number (130, 143)."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        from retention.workspace import SIGNALS, signal_name

        code = 0
        with SIGNALS.catching():
            try:
                f(*args, **kwargs)
            except click.exceptions.Exit as done:
                code = done.exit_code
            late = SIGNALS.signum
        if late is not None and code != interrupt_exit_code(late):
            _say(
                f"Interrupted ({signal_name(late)}) after the work was done; nothing was left"
                " half-done.",
                err=True,
            )
            code = interrupt_exit_code(late)
        if code:
            raise click.exceptions.Exit(code)

    return run


def _erasure(text: str | None, policy: dict[str, Any]) -> tuple[str, str] | None:
    """``--erase COLUMN=VALUE``; refused beside policy flags, which it would ignore."""
    if text is None:
        return None
    column, sep, value = text.partition("=")
    if not sep or not column.strip() or not value:
        raise UsageError(
            f"--erase expects COLUMN=VALUE, got {text!r}", hint="e.g. --erase org_id=42"
        )
    given = sorted(k for k, v in policy.items() if v not in (None, ()))
    if given:
        flag = "--" + given[0].replace("_", "-").replace("keep-tags", "keep-tag")
        raise UsageError(
            f"--erase cannot be combined with {flag}: an erasure request ignores the policy"
        )
    return column.strip(), value


def _config(ctx: click.Context, **overrides: Any) -> Config:
    return load_config(ctx.obj["config"], overrides=overrides)


def _now(value: str | None) -> datetime:
    return parse_instant(value) if value else datetime.now(UTC)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default ./retention.toml; env RETENTION_CONFIG).",
)


@click.group(cls=RetentionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retention")
@config_option
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Delete old runs (catalog rows plus artifact directories) safely.

    \b
    Exit codes: 0 ok, 2 usage/config, 3 done with skipped entries, 4 catalog,
    5 manifest refused, 6 locked, 7 recovery, 8 filesystem, 9 undo refused,
    10 check found inconsistencies, 130/143 interrupted by SIGINT/SIGTERM.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_path


def _config_opt(f: Any) -> Any:
    """Allow --config after the subcommand too (``retention plan --config x.toml``)."""

    def store(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)["config"] = value

    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=store,
        is_eager=True,
        help="Config file (default ./retention.toml; env RETENTION_CONFIG).",
    )(f)


class KeepCount(click.ParamType):
    """A rule's count: N >= 0, or ``unlimited`` / -1 (restic's "keep all")."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif str(value).strip().lower() == "unlimited":
            return -1
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a count: give N >= 0, or unlimited (-1)", param, ctx)
        if number < -1:
            self.fail(f"{value} is not a count: give N >= 0, or unlimited (-1)", param, ctx)
        return number


def _policy_options(f: Any) -> Any:
    """The rules of ``plan`` (restic's ``forget`` options, plus ours); each flag replaces only
    its own setting of the ``[policy]`` table."""
    count = KeepCount()
    options = [
        click.option("--keep-last", type=count, help="Keep the newest N runs (unlimited: -1)."),
        click.option("--max-age", help="Keep runs younger than this, from now (180d, 12h, 1y)."),
    ]
    for unit, noun in (
        ("hourly", "hour"),
        ("daily", "day"),
        ("weekly", "ISO week"),
        ("monthly", "month"),
        ("yearly", "year"),
    ):
        options.append(
            click.option(
                f"--keep-{unit}",
                type=count,
                help=f"Keep the newest run of each of the latest N {noun}s with runs.",
            )
        )
    options.append(
        click.option(
            "--keep-within",
            metavar="D",
            help="Keep every run within D of the newest run (restic's 1y2m3d4h; m = months).",
        )
    )
    for unit in ("hourly", "daily", "weekly", "monthly", "yearly"):
        options.append(
            click.option(
                f"--keep-within-{unit}",
                metavar="D",
                help=f"Keep the newest run of each {unit[:-2] if unit == 'daily' else unit}"
                " period within D of the newest run.",
            )
        )
    options += [
        click.option(
            "--keep-tag",
            "keep_tags",
            multiple=True,
            metavar="TAG[,TAG]",
            help="Keep runs carrying all these tags (repeatable; '' = untagged runs);"
            " tags from policy.tags_column.",
        ),
        click.option(
            "--tz",
            help="Take calendar periods in this IANA zone (default: each"
            " run's recorded UTC offset, UTC for naive and epoch times).",
        ),
        click.option(
            "--checkpoint",
            type=click.Choice(["last", "first"]),
            help="Which run of a period the calendar rules keep: last (newest, restic) or"
            " first (oldest).",
        ),
        click.option(
            "--min-keep",
            type=click.IntRange(min=0),
            metavar="N",
            help="Never keep fewer than N runs, however old (the newest go last).",
        ),
        click.option(
            "--group-by",
            metavar="COLUMN[,COLUMN]",
            help="Apply the policy per group of runs with equal values of these columns of"
            " the runs table (policy.group_by): counts, floors and budgets per group.",
        ),
        click.option(
            "--max-total-size",
            metavar="SIZE",
            help="Size budget (50G, 512M; binary units): while the kept runs hold more, the"
            " oldest unprotected ones go, calendar checkpoints last.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@_config_opt
@_policy_options
@click.option("--catalog", "catalog_path", help="Catalog file (overrides catalog.path).")
@click.option("--artifact-root", help="Artifact root (overrides artifacts.root).")
@click.option("--state-dir", help="State directory (overrides state.dir).")
@click.option("--now", "now_text", help="Evaluate the policy at this ISO-8601 time.")
@click.option(
    "--allow-remove-all",
    is_flag=True,
    help="Allow a plan that removes every run of the runs table (policy.allow_remove_all).",
)
@click.option(
    "--allow-missing-dirs",
    is_flag=True,
    help="Allow a plan whose candidates all lack an artifact directory while the root holds"
    " other directories (artifacts.allow_missing_dirs).",
)
@click.option(
    "--erase",
    metavar="COLUMN=VALUE",
    help="Plan an erasure request instead of the policy: every run whose COLUMN is VALUE"
    " (and every run depending on one) goes, whatever the rules, pins and floors; apply"
    " purges them at once (no grace period, no undo).",
)
@click.option(
    "--explain",
    "explain_id",
    metavar="RUN_ID",
    help="Also explain this run's verdict (after the summary, on stderr): its reasons, what"
    " each rule saw, and whether it is in the manifest.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write manifest here.")
@click.pass_context
def plan(
    ctx: click.Context,
    catalog_path: str | None,
    artifact_root: str | None,
    state_dir: str | None,
    now_text: str | None,
    allow_remove_all: bool,
    allow_missing_dirs: bool,
    output: str | None,
    **policy: Any,
) -> None:
    """Evaluate the policy and write a signed deletion manifest (stdout or -o FILE).

    Read-only: the catalog is opened read-only and no artifact is touched. A human summary
    goes to stderr. Exit 3 if some candidates were left out (unreadable or outside the root).
    """
    from retention.planner import build_plan

    explain_id = policy.pop("explain_id")  # not a policy setting
    erase = _erasure(policy.pop("erase"), policy)
    policy["keep_tags"] = policy["keep_tags"] or None  # () when not given
    cfg = _config(
        ctx,
        **policy,
        catalog_path=catalog_path,
        artifact_root=artifact_root,
        state_dir=state_dir,
        # A flag only ever allows; absent, the environment or the file decides.
        allow_remove_all=True if allow_remove_all else None,
        allow_missing_dirs=True if allow_missing_dirs else None,
    )
    if not output and sys.stdout.isatty():
        raise UsageError(
            "refusing to write the signed manifest to a terminal",
            hint="redirect it (retention plan ... > manifest.json) or use -o manifest.json",
        )
    result = build_plan(cfg, _now(now_text), erase=erase)
    explained = None
    if explain_id is not None:  # before any output: an unknown run id writes nothing
        from retention.explain import explain_plan

        explained = explain_plan(cfg, result, explain_id)
    if output:
        from retention.views import write_output

        write_output(Path(output), result.manifest)
    else:
        sys.stdout.buffer.write(result.manifest)
        sys.stdout.flush()
    for line in views.plan_summary(result, output, datetime.now(UTC)):
        _say(line, err=True)
    for line in views.explain_lines(explained) if explained is not None else ():
        _say(line, err=True)
    if result.skipped:
        ctx.exit(EXIT_PARTIAL)


@cli.command()
@_config_opt
@click.argument("manifest", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option(
    "--top",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many of the largest (and with --kept, of the kept runs) to list.",
)
@click.option(
    "--kept",
    is_flag=True,
    help="Also show the runs the manifest keeps, counted per rule: its policy re-evaluated"
    " at its now against the catalog as it is now (read-only).",
)
@click.pass_context
def show(ctx: click.Context, manifest: str, as_json: bool, top: int, kept: bool) -> None:
    """Verify a manifest (signature, expiry, catalog) and show what it would delete."""
    cfg = _config(ctx)
    verified = views.load_verified(cfg, manifest, datetime.now(UTC))
    kept_side = None
    if kept:
        from retention.explain import kept_report

        kept_side = kept_report(cfg, verified.payload)
    if as_json:
        _emit(views.show_report(verified, top, kept_side))
    else:
        for line in views.show_lines(verified, top, manifest, kept_side):
            _say(line)


@cli.command()
@_config_opt
@click.argument("run_id")
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--now", "now_text", help="Evaluate the policy at this ISO-8601 time.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.pass_context
def explain(
    ctx: click.Context, run_id: str, manifest: str | None, now_text: str | None, as_json: bool
) -> None:
    """Explain why the policy keeps or removes RUN_ID (read-only).

    Without MANIFEST: the configured policy at now (or --now). With MANIFEST: its policy at
    its own now, against the catalog as it is now, and whether the run is one of its
    entries. Exit 2 if neither the catalog nor the manifest holds RUN_ID.
    """
    from retention.explain import explain as run_explain

    if manifest is not None and now_text is not None:
        raise UsageError(
            "--now cannot be given with a MANIFEST: its policy is evaluated at its own now"
        )
    now = _now(now_text) if manifest is None else None
    report = run_explain(_config(ctx), run_id, now=now, manifest=manifest)
    if as_json:
        _emit(report)
    else:
        for line in views.explain_lines(report):
            _say(line)


@cli.command("config")
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option(
    "--check",
    is_flag=True,
    help="Also open the catalog read-only, validate the configuration against it and list"
    " every table a plan would touch, with row counts (exit 4 on a catalog problem).",
)
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool, check: bool) -> None:
    """Print the effective configuration and where each value came from."""
    cfg = _config(ctx)
    tables = views.config_tables_report(cfg) if check else None
    if as_json:
        data: Any = cfg if tables is None else {"config": cfg, "tables": tables}
        sys.stdout.buffer.write(msgspec.json.encode(data, order="sorted") + b"\n")
        return
    _say(f"# config file: {cfg.config_file or '(none: built-in defaults)'}")
    rows = render_config(cfg)
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        _say(f"{key:<{width}}  {value}    # {source}")
    if tables is not None:
        _say("")
        for line in views.tables_lines(tables):
            _say(line)


def _emit(report: object) -> None:
    """JSON for machines on stdout."""
    sys.stdout.buffer.write(msgspec.json.encode(report) + b"\n")
    sys.stdout.flush()


@cli.command()
@_config_opt
@click.argument("manifest", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Commit in batches of at most N runs, each its own transaction (apply.batch_size):"
    " atomic per batch, not as a whole; applying the manifest again continues.",
)
@click.pass_context
@_interruptible
def apply(ctx: click.Context, manifest: str, batch_size: int | None) -> None:
    """Apply exactly MANIFEST: move its directories to trash, delete its rows in one
    transaction, purge expired trash. JSON report on stdout, summary on stderr.

    Exit 3 if some entries were skipped (changed since the plan, or could not be moved).
    """
    from retention.coordinator import apply_manifest

    report = apply_manifest(_config(ctx, batch_size=batch_size), manifest)
    _emit(report)
    for line in views.apply_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.pass_context
@_interruptible
def recover(ctx: click.Context) -> None:
    """Finish or roll back an interrupted apply, undo or purge."""
    from retention.coordinator import recover as run_recover

    report = run_recover(_config(ctx))
    _emit(report)
    for line in views.recover_lines(report.recovered):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.argument("txid", required=False)
@click.option("--within", help="Undo every apply younger than this (e.g. 24h).")
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@click.pass_context
@_interruptible
def undo(ctx: click.Context, txid: str | None, within: str | None, now_text: str | None) -> None:
    """Bring back the runs deleted by apply TXID, or by every apply within a window.

    A run whose id or directory exists again is a conflict: it stays in trash (exit 3).
    """
    from retention.trashops import undo as run_undo

    if (txid is None) == (within is None):
        raise UsageError("give either a TXID or --within DURATION (e.g. --within 24h)")
    report = run_undo(
        _config(ctx),
        txid=txid,
        within=parse_duration(within) if within else None,
        now=_now(now_text),
    )
    _emit(report)
    for line in views.undo_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.option(
    "--expired",
    "mode",
    flag_value="expired",
    default=True,
    help="Only trash whose grace period is over (the default).",
)
@click.option("--all", "mode", flag_value="all", help="Empty the whole trash (no undo after).")
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then give the catalog's free pages back to the filesystem: PRAGMA"
    " incremental_vacuum where its auto_vacuum is incremental (short), else VACUUM, which"
    " rewrites the whole file under an exclusive lock (the application waits) and needs free"
    " disk for a copy of it and as much again.",
)
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@click.pass_context
@_interruptible
def purge(ctx: click.Context, mode: str, vacuum: bool, now_text: str | None) -> None:
    """Remove trash whose grace period is over (or, with --all, all of it).

    Reports the catalog file's size before and after, and its free pages (the space the
    dropped tombstones took, which SQLite reuses). Exit 4 or 8 if --vacuum failed (the
    purge itself is done).
    """
    from retention.trashops import purge as run_purge

    report = run_purge(_config(ctx), everything=mode == "all", vacuum=vacuum, now=_now(now_text))
    _emit(report)
    for line in views.purge_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, now_text: str | None) -> None:
    """Show a running or interrupted transaction, trash per transaction and the undo
    window, and how much of the catalog file the tombstones take (read-only)."""
    from retention.status import status as run_status
    from retention.status import status_lines

    report = run_status(_config(ctx), _now(now_text))
    if as_json:
        _emit(report)
    else:
        for line in status_lines(report):
            _say(line)


@cli.command()
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="Every finding, machine-readable, on stdout.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Lines per kind of finding (0: all).",
)
@click.pass_context
def check(ctx: click.Context, as_json: bool, limit: int) -> None:
    """Compare catalog, artifacts, trash and journal both ways (read-only).

    Findings are grouped by kind, causes first. A transaction running in another process
    is named, not counted. Exit 10 if anything is inconsistent.
    """
    from retention.check import check as run_check
    from retention.check import check_lines

    report = run_check(_config(ctx))
    if as_json:
        _emit(report)
    else:
        for line in check_lines(report, limit):
            _say(line)
    if report.findings:
        ctx.exit(EXIT_INCONSISTENT)


def main() -> None:
    from retention.workspace import SIGNALS

    SIGNALS.persistent = True  # this process ends with the command (see Signals.persistent)
    cli(prog_name="retention")
