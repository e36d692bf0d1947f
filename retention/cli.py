"""The command-line interface: a thin click layer over the library.

Every command parses options, calls one library function and renders its result. Errors a
user can cause are `RetentionError`s, rendered once in `RetentionGroup.invoke` as
``Error: <message>`` (plus ``Hint: ...``) on stderr with the error's exit code.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from retention import __version__
from retention.completion import complete_txids
from retention.errors import (
    EXIT_INCONSISTENT,
    EXIT_PARTIAL,
    CatalogError,
    Interrupted,
    RetentionError,
    StorageError,
    UsageError,
    from_environment,
    interrupt_exit_code,
)
from retention.reporting import document, safe_text

if TYPE_CHECKING:
    from retention.config import Config

# `retention --help` imports click, this module, the errors and the reporting helpers and
# nothing else; the config (msgspec, tomllib), the durations, the journal and every library
# module load inside the command that needs them (start-up time, issue 13;
# tests/test_startup.py pins it).


class _LazyViews:
    """`retention.views`, imported on first use: it brings the planner and the catalog
    along, which `--help`, `config` and a no-op `status` never need (start-up
    time, issue 13)."""

    def __getattr__(self, name: str) -> Any:
        from retention import views as module

        return getattr(module, name)


views: Any = _LazyViews()


class RetentionGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        from retention.reporting import Progress

        Progress.quiet = False  # until -q says otherwise (tests invoke in one process)
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


def _say(text: str = "", *, err: bool = False, level: int = 0) -> None:
    """Print one line for people; control characters in it (from a run id, a path, a
    message) are escaped, so nothing can forge a line or reach the terminal as a sequence.

    ``level``: -1 always (errors), 0 unless -q (except ``Error:`` / ``Warning:`` lines),
    1 only with -v."""
    if level >= 1 and not _verbose():
        return
    if level == 0 and _quiet() and not text.startswith(("Error:", "Warning:")):
        return
    click.echo(safe_text(text), err=err)


def _render(ctx: click.Context, exc: RetentionError) -> None:
    # An interruption is the operator's doing, not an error: its message says what happened.
    _say(
        exc.message if isinstance(exc, Interrupted) else f"Error: {exc.message}",
        err=True,
        level=-1,
    )
    if exc.hint:
        _say(f"Hint: {exc.hint}", err=True, level=-1)
    ctx.exit(exc.exit_code)


def _interruptible(f: Any) -> Any:
    """SIGINT/SIGTERM stop the command at its next safe point (`retention.workspace.SIGNALS`)
    instead of raising KeyboardInterrupt anywhere, also while its report is printed. One the
    command did not report itself (it came after the work was done) is said last; either
    way the exit code is 128 + the signal's number (130, 143)."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        from retention.signals import SIGNALS, signal_name

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
                level=-1,
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
    # --catalog / --artifact-root of show, apply and undo (`_path_options`)
    from retention.config import load_config

    overrides = {**ctx.meta.get("retention.paths", {}), **overrides}
    cfg = load_config(ctx.obj["config"], overrides=overrides)
    ctx.meta["retention.cfg"] = cfg
    return cfg


def _now(value: str | None) -> datetime:
    from retention.durations import parse_instant

    return parse_instant(value) if value else datetime.now(UTC)


# -- output for people and machines: -q / -v, --json, --output-json, --metrics-file --------


def _obj() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return {} if ctx is None else ctx.ensure_object(dict)


def _quiet() -> bool:
    return bool(_obj().get("quiet"))


def _verbose() -> bool:
    return bool(_obj().get("verbose"))


def _verbosity_flag(name: str) -> Any:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            ctx.ensure_object(dict)[name] = True

    return store


_QUIET = click.Option(
    ["-q", "--quiet"],
    is_flag=True,
    expose_value=False,
    callback=_verbosity_flag("quiet"),
    help="Print errors and warnings only (no summary, no progress); JSON output is unchanged.",
)
_VERBOSE = click.Option(
    ["-v", "--verbose"],
    is_flag=True,
    expose_value=False,
    callback=_verbosity_flag("verbose"),
    help="Print more detail (e.g. every skipped, deleted or restored run).",
)


class RetentionCommand(click.Command):
    """Every subcommand: ``-q`` / ``-v`` (also accepted before the subcommand), refused
    together (exit 2)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [_QUIET, _VERBOSE]

    def invoke(self, ctx: click.Context) -> Any:
        from retention.reporting import Progress

        obj = ctx.ensure_object(dict)
        if obj.get("quiet") and obj.get("verbose"):
            raise UsageError("-q/--quiet and -v/--verbose contradict each other: give one")
        Progress.quiet = bool(obj.get("quiet"))
        return super().invoke(ctx)


def _path_options(f: Any) -> Any:
    """``--catalog`` and ``--artifact-root`` as plan has them; `_config` applies them."""

    def store(key: str) -> Any:
        def cb(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
            if value is not None:
                ctx.meta.setdefault("retention.paths", {})[key] = value

        return cb

    f = click.option(
        "--artifact-root",
        expose_value=False,
        callback=store("artifact_root"),
        help="Artifact root (overrides artifacts.root); a manifest planned for another is refused.",
    )(f)
    return click.option(
        "--catalog",
        expose_value=False,
        callback=store("catalog_path"),
        help="Catalog file (overrides catalog.path); a manifest planned against another"
        " catalog is refused.",
    )(f)


def _emit_report(report: object) -> None:
    """A mutating command's report: JSON on stdout unless stdout is a terminal (then only
    with --json), and the same bytes in --output-json FILE (atomically)."""
    ctx = click.get_current_context()
    opts = ctx.meta.get("retention.out", {})
    ctx.meta["retention.report"] = report
    data = document(report)
    if opts.get("json") or not sys.stdout.isatty():
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    target = opts.get("output_json")
    if target:
        try:
            from journal import fsio

            fsio.write_atomic(Path(target), bytes(data), 0o644)
        except OSError as exc:  # the work is done: said after the summary, exit 8
            ctx.meta["retention.unwritten"] = f"cannot write {target}: {exc.strerror or exc}"


def _exit_code_of(exc: BaseException) -> int:
    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, RetentionError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return interrupt_exit_code(signal.SIGINT)
    if isinstance(exc, Exception):
        mapped = from_environment(exc)
        return mapped.exit_code if mapped is not None else 1
    return 1


def _reported(command: str, *, metrics: bool = True) -> Any:
    """``--json``, ``--output-json FILE`` and (``metrics``) ``--metrics-file PATH`` for a
    mutating command that reports with `_emit_report`. The metrics file is written last,
    also when the command fails (its exit code, duration, the last success kept)."""

    def decorate(f: Any) -> Any:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            opts = ctx.meta.setdefault("retention.out", {})
            paths = [opts.get("output_json"), opts.get("metrics_file")]
            if paths[0] and paths[1] and os.path.abspath(paths[0]) == os.path.abspath(paths[1]):
                raise UsageError("--output-json and --metrics-file name the same file")
            t0, code = time.monotonic(), 0
            try:
                f(*args, **kwargs)
            except BaseException as exc:
                code = _exit_code_of(exc)
                reported = ctx.meta.get("retention.report") is not None
                if isinstance(exc, click.exceptions.Exit) and reported:
                    # exit 3 (skipped), 9 (an undo of several refused), 130/143 after the
                    # commit: the report says what was done; exit 8 only instead of 0 or 3
                    _after_report(ctx, command, code, t0, kwargs, strict=code in (0, 3))
                else:
                    _write_metrics(ctx, command, code, t0, kwargs, failed=True)
                raise
            _after_report(ctx, command, code, t0, kwargs)

        options = [
            click.option(
                "--json",
                "json",
                is_flag=True,
                expose_value=False,
                callback=_store_out("json"),
                help="Print the JSON report on stdout even on a terminal (it is printed"
                " whenever stdout is not one).",
            ),
            click.option(
                "--output-json",
                type=click.Path(dir_okay=False),
                expose_value=False,
                callback=_store_out("output_json"),
                help="Also write the JSON report to FILE (atomically).",
            ),
        ]
        if metrics:
            options.append(
                click.option(
                    "--metrics-file",
                    type=click.Path(dir_okay=False),
                    metavar="PATH",
                    expose_value=False,
                    callback=_store_out("metrics_file"),
                    help="Write Prometheus metrics to PATH (atomically; node_exporter's"
                    " textfile collector), also on failure.",
                )
            )
        for option in reversed(options):
            run = option(run)
        return run

    return decorate


def _store_out(key: str) -> Any:
    def cb(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            ctx.meta.setdefault("retention.out", {})[key] = value

    return cb


def _after_report(
    ctx: click.Context,
    command: str,
    code: int,
    t0: float,
    kwargs: dict[str, Any],
    *,
    strict: bool = True,
) -> None:
    """After a command that did its work: -v detail, the metrics file, and exit 8 if an
    output file asked for could not be written (the report on stdout says what was done)."""
    report = ctx.meta.get("retention.report")
    opts = ctx.meta.get("retention.out", {})
    if _verbose() and report is not None:
        for line in _detail_lines(command, report):
            _say(line, err=True)
    unwritten = ctx.meta.get("retention.unwritten")
    if unwritten is None and opts.get("output_json"):
        _say(f"Report written to {opts['output_json']}.", err=True, level=1)
    failed = _write_metrics(ctx, command, 8 if unwritten and strict else code, t0, kwargs)
    if failed and unwritten is None:
        unwritten = failed
    if unwritten is not None and not strict:  # keep the command's own exit code
        _say(f"Warning: {unwritten}", err=True)
    elif unwritten is not None:
        raise StorageError(unwritten, hint="the work itself is done: see the report on stdout")


def _detail_lines(command: str, report: Any) -> list[str]:
    lines: list[str] = []
    if _is_jsondoc(report):
        from retention.jobstore import detail_lines

        return detail_lines(command, report)
    if command == "apply":
        lines += [f"Deleted {rid}" for rid in report.deleted_run_ids]
        if len(report.skipped) > 10:  # the summary counted them by reason
            for sk in report.skipped:
                lines.append(f"Skipped {sk.run_id}: {sk.reason}")
        lines += [f"Purged the trash of {t}" for t in report.purged]
    elif command == "undo":
        for u in report.undone:
            lines += [f"Restored {rid} (from {u.target})" for rid in u.restored]
    elif command == "purge":
        lines += [f"Purged the trash of {t}" for t in report.purged]
    return lines


def _write_metrics(
    ctx: click.Context,
    command: str,
    code: int,
    t0: float,
    kwargs: dict[str, Any],
    *,
    failed: bool = False,
) -> str | None:
    """Write --metrics-file if given; returns why it could not be (None: written)."""
    from retention import metrics

    path = ctx.meta.get("retention.out", {}).get("metrics_file")
    if not path:
        return None
    report: Any = None if failed else ctx.meta.get("retention.report")
    elapsed = time.monotonic() - t0
    try:
        if report is None:
            outcome = metrics.Outcome(command, code, elapsed, time.time())
        elif _is_jsondoc(report):
            from retention.jobstore import metrics_outcome

            outcome = metrics_outcome(command, report, code, elapsed)
        else:
            cfg = ctx.meta.get("retention.cfg")
            if getattr(report, "duration_ms", None) is not None:
                elapsed = report.duration_ms / 1000
            groups, restored = None, None
            if command == "apply" and cfg is not None:
                groups = _apply_groups(cfg, report, kwargs.get("manifest"))
            if command == "undo" and cfg is not None:
                restored = views.restored_bytes(cfg, [u.txid for u in report.undone])
            outcome = metrics.outcome_of(
                command,
                report,
                exit_code=code,
                duration_seconds=elapsed,
                finished_at=time.time(),
                bytes_restored=restored,
                groups=groups,
            )
        metrics.write_metrics(Path(path), outcome)
    except (OSError, RetentionError) as exc:
        why = exc.message if isinstance(exc, RetentionError) else exc.strerror or str(exc)
        if failed:  # never hide the command's own error
            _say(f"Warning: cannot write metrics file {path}: {why}", err=True)
            return None
        return f"cannot write metrics file {path}: {why}"
    _say(f"Metrics written to {path}.", err=True, level=1)
    return None


def _is_jsondoc(report: Any) -> bool:
    """A report of `retention.jobstore` (a JSON-document catalog's command)."""
    return type(report).__name__.startswith("Jsondoc")


def _ttl_flags(values: tuple[str, ...]) -> dict[str, str]:
    """``--ttl NAME=DURATION`` (repeatable): target name -> duration."""
    out: dict[str, str] = {}
    for text in values:
        name, sep, duration = text.partition("=")
        if not sep or not name.strip() or not duration.strip():
            raise UsageError(
                f"--ttl expects NAME=DURATION, got {text!r}", hint="e.g. --ttl job_results=7d"
            )
        if name.strip() in out:
            raise UsageError(f"--ttl {name.strip()} is given twice")
        out[name.strip()] = duration.strip()
    return out


def _apply_groups(cfg: Config, report: Any, manifest: str | None) -> Any:
    """Per-group counts of a grouped manifest's apply (None: not grouped, or unknown)."""
    if manifest is None or not report.deleted_runs:
        return None
    columns = views.manifest_group_by(manifest, report.manifest_id)
    if not columns:
        return None
    txids = [report.txid, *(getattr(b, "txid", None) for b in getattr(report, "batches", []))]
    return views.apply_group_counts(cfg, sorted({t for t in txids if t}), columns)


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Config file (default ./retention.toml; env RETENTION_CONFIG).",
)


@click.group(cls=RetentionGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retention")
@config_option
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_verbosity_flag("quiet"),
    help="Errors and warnings only (as after any command).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=_verbosity_flag("verbose"),
    help="More detail (as after any command).",
)
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


cli.command_class = RetentionCommand  # -q / -v on every subcommand


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
@click.option(
    "--ttl",
    "ttls",
    multiple=True,
    metavar="NAME=DURATION",
    help="A JSON-document catalog's target TTL (repeatable): over its ttl_env variable and"
    " its ttl in the file.",
)
@click.option(
    "--output-json",
    type=click.Path(dir_okay=False),
    help="Also write the plan's JSON report to FILE, atomically (JSON-document catalog).",
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
    ttls: tuple[str, ...],
    output_json: str | None,
    output: str | None,
    **policy: Any,
) -> None:
    """Evaluate the policy and write a signed deletion manifest (stdout or -o FILE).

    Read-only: the catalog is opened read-only and no artifact is touched. A human summary
    goes to stderr. Exit 3 if some candidates were left out (unreadable or outside the root),
    or if no candidate's timestamp could be read (see retention config --check).
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
        target_ttls=_ttl_flags(ttls) or None,
    )
    if not output and sys.stdout.isatty():
        raise UsageError(
            "refusing to write the signed manifest to a terminal",
            hint="redirect it (retention plan ... > manifest.json) or use -o manifest.json",
        )
    if cfg.is_json_catalog:
        flags = {k: v for k, v in policy.items() if v not in (None, ())}
        flags.update(
            {
                "artifact_root": artifact_root,
                "allow_remove_all": allow_remove_all or None,
                "allow_missing_dirs": allow_missing_dirs or None,
                "erase": erase,
                "explain": explain_id,
            }
        )
        given = sorted(k for k, v in flags.items() if v not in (None, ()))
        if given:
            flag = "--" + given[0].replace("_", "-").replace("keep-tags", "keep-tag")
            raise UsageError(
                f"{flag} is for an SQL catalog's runs; a JSON-document catalog's records"
                " expire by their target's TTL",
                hint="set ttl in [[targets]], or plan --ttl NAME=DURATION",
            )
        _plan_document(cfg, _now(now_text), output, output_json)
        return
    if output_json:
        raise UsageError(
            "plan --output-json is for a JSON-document catalog (catalog.path ending in .json)",
            hint="an SQL catalog's plan is reviewed with `retention show MANIFEST --json`",
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
    from retention.onboarding import undated_plan_lines

    undated = undated_plan_lines(cfg, result)  # no candidate's timestamp could be read
    for line in [*undated, *views.plan_summary(result, output, datetime.now(UTC))]:
        _say(line, err=True)
    for line in views.explain_lines(explained) if explained is not None else ():
        _say(line, err=True)
    if result.skipped or undated:
        ctx.exit(EXIT_PARTIAL)


def _plan_document(cfg: Config, now: datetime, output: str | None, output_json: str | None) -> None:
    """plan for a JSON-document catalog: the manifest (stdout or -o), the summary on
    stderr, the JSON report in --output-json FILE."""
    from journal import fsio
    from retention.jobstore import build_plan as plan_document
    from retention.jobstore import plan_lines

    result = plan_document(cfg, now, output)
    if output:
        from retention.views import write_output

        write_output(Path(output), result.manifest)
    else:
        sys.stdout.buffer.write(result.manifest)
        sys.stdout.flush()
    for line in plan_lines(result.report):
        _say(line, err=True)
    if output_json:
        try:
            fsio.write_atomic(Path(output_json), document(result.report), 0o644)
        except OSError as exc:
            raise StorageError(
                f"cannot write {output_json}: {exc.strerror or exc}",
                hint="the manifest itself is written",
            ) from None


@cli.command()
@_config_opt
@_path_options
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
    if cfg.is_json_catalog:
        from retention import jobstore

        if kept:
            raise UsageError("show --kept is for an SQL catalog's runs")
        shown = jobstore.show(cfg, manifest, datetime.now(UTC), None if as_json else top)
        if as_json:
            _emit(shown)
        else:
            for line in jobstore.show_lines(shown):
                _say(line)
        return
    verified = views.load_verified(cfg, manifest, datetime.now(UTC))
    views.refuse_other_root(cfg, verified.payload)
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
    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention import jobstore_views

        doc_report = jobstore_views.explain(cfg, run_id, now=now, manifest=manifest)
        if as_json:
            _emit(doc_report)
        else:
            for line in jobstore_views.explain_lines(doc_report):
                _say(line)
        return
    report = run_explain(cfg, run_id, now=now, manifest=manifest)
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
    help="Also open the catalog read-only, check the configuration against it and list"
    " every table a plan would touch, with row counts, and how many timestamps"
    " catalog.time_format reads. Every problem is reported, each on its own line on stderr"
    " (exit 4 if any).",
)
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool, check: bool) -> None:
    """Print the effective configuration and where each value came from."""
    from retention.config import render_config
    from retention.onboarding import check_config, check_lines, problem_lines

    cfg = _config(ctx)
    if check and cfg.is_json_catalog:
        from retention import jobstore

        doc_check = jobstore.check_config(cfg)
        if as_json:
            both = {"config": cfg, "check": doc_check}
            sys.stdout.buffer.write(document(both, "config-report", order="sorted"))
        else:
            _say(f"# config file: {cfg.config_file or '(none: built-in defaults)'}")
            rows = render_config(cfg)
            width = max(len(k) for k, _, _ in rows)
            for key, value, source in rows:
                _say(f"{key:<{width}}  {value}    # {source}")
            _say("")
            for line in jobstore.check_lines(doc_check):
                _say(line)
        for problem in doc_check.problems:
            _say(f"Error: {problem}", err=True)
        if doc_check.problems:
            ctx.exit(CatalogError.exit_code)
        return
    checked, tables = check_config(cfg) if check else (None, None)
    if as_json:
        data: Any = cfg if checked is None else {"config": cfg, "tables": tables, "check": checked}
        sys.stdout.buffer.write(document(data, "config-report", order="sorted"))
    else:
        _say(f"# config file: {cfg.config_file or '(none: built-in defaults)'}")
        rows = render_config(cfg)
        width = max(len(k) for k, _, _ in rows)
        for key, value, source in rows:
            _say(f"{key:<{width}}  {value}    # {source}")
        if checked is not None:
            _say("")
            for line in views.tables_lines(tables) if tables is not None else ():
                _say(line)
            for line in check_lines(checked, tables is not None):
                _say(line)
    if checked is not None and checked.problems:
        for line in problem_lines(checked):
            _say(line, err=True)
        ctx.exit(CatalogError.exit_code)


def _confirm(question: str) -> bool | None:
    """Ask on the terminal (default no; end of input is no); None after Ctrl-C, which
    stops the prompt at once (the command's own handler would wait for Enter)."""
    hit: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        hit.append(signum)
        raise KeyboardInterrupt

    saved = signal.signal(signal.SIGINT, on_sigint)
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        return None if hit else False
    finally:
        signal.signal(signal.SIGINT, saved)


def _interactive() -> bool:
    """Whether a person is at the terminal (stdin and stdout both are one): then
    ``purge --all`` asks before it purges (tests replace this)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _emit(report: object) -> None:
    """JSON for machines on stdout (``--json``), led by ``format_version`` and ``kind``."""
    sys.stdout.buffer.write(document(report))
    sys.stdout.flush()


@cli.command()
@_config_opt
@_path_options
@click.argument("manifest", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    metavar="N",
    help="Commit in batches of at most N runs, each its own transaction (apply.batch_size):"
    " atomic per batch, not as a whole; applying the manifest again continues.",
)
@_reported("apply")
@click.pass_context
@_interruptible
def apply(ctx: click.Context, manifest: str, batch_size: int | None) -> None:
    """Apply exactly MANIFEST: move its directories to trash, delete its rows in one
    transaction, purge expired trash. JSON report on stdout (on a terminal only with
    --json), summary on stderr.

    Exit 3 if some entries were skipped (changed since the plan, or could not be moved).
    """
    cfg = _config(ctx, batch_size=batch_size)
    if cfg.is_json_catalog:
        from retention import jobstore

        if batch_size is not None or ctx.meta.get("retention.paths", {}).get("artifact_root"):
            flag = "--batch-size" if batch_size is not None else "--artifact-root"
            raise UsageError(f"{flag} is for an SQL catalog; a JSON document is one commit")
        doc_report = jobstore.apply(cfg, manifest)
        _emit_report(doc_report)
        for line in jobstore.apply_lines(doc_report):
            _say(line, err=True)
        if doc_report.interrupted:
            _say(doc_report.interrupted.message, err=True, level=-1)
        ctx.exit(doc_report.exit_code)
    from retention.coordinator import apply_manifest

    report = apply_manifest(cfg, manifest)
    _emit_report(report)
    for line in views.apply_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True, level=-1)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.option(
    "--resolve",
    type=click.Choice(["committed", "rolled-back"]),
    help="JSON-document catalog: decide an interrupted apply or undo that the document's"
    " digest cannot (the application rewrote the document since): committed if its records"
    " were removed (apply) or are back (undo), else rolled-back.",
)
@_reported("recover", metrics=False)
@click.pass_context
@_interruptible
def recover(ctx: click.Context, resolve: str | None) -> None:
    """Finish or roll back an interrupted apply, undo or purge."""
    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention import jobstore

        doc_report = jobstore.recover(cfg, resolve)  # type: ignore[arg-type]
        _emit_report(doc_report)
        for line in jobstore.recover_lines(doc_report):
            _say(line, err=True)
        ctx.exit(doc_report.exit_code)
    if resolve is not None:
        raise UsageError(
            "--resolve is for a JSON-document catalog; an SQL catalog's interrupted"
            " transactions are decided by the catalog itself"
        )
    from retention.coordinator import recover as run_recover

    report = run_recover(cfg)
    _emit_report(report)
    for line in views.recover_lines(report.recovered):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True, level=-1)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@_path_options
@click.argument("txid", required=False, shell_complete=complete_txids)
@click.option("--within", help="Undo every apply younger than this (e.g. 24h).")
@click.option(
    "--run",
    "run_ids",
    multiple=True,
    help="Restore just this run (repeatable), from whichever apply holds it in trash.",
)
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@_reported("undo")
@click.pass_context
@_interruptible
def undo(
    ctx: click.Context,
    txid: str | None,
    within: str | None,
    run_ids: tuple[str, ...],
    now_text: str | None,
) -> None:
    """Bring back the runs deleted by apply TXID, by every apply within a window, or
    single runs (--run RUN_ID, repeatable; a run sharing a row with it comes back too).

    A run whose id or directory exists again is a conflict: it stays in trash (exit 3).
    """
    from retention.durations import parse_duration

    if sum((txid is not None, within is not None, bool(run_ids))) != 1:
        raise UsageError(
            "give either a TXID or --within DURATION (e.g. --within 24h), or --run RUN_ID"
        )
    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention import jobstore

        if run_ids:
            raise UsageError("--run is for an SQL catalog's runs; give a TXID or --within")
        doc_report = jobstore.undo(
            cfg,
            txid=txid,
            within=parse_duration(within) if within else None,
            now=_now(now_text),
        )
        _emit_report(doc_report)
        for line in jobstore.undo_lines(doc_report):
            _say(line, err=True)
        if doc_report.interrupted:
            _say(doc_report.interrupted.message, err=True, level=-1)
        ctx.exit(doc_report.exit_code)
    from retention.trashops import undo as run_undo

    report = run_undo(
        cfg,
        txid=txid,
        within=parse_duration(within) if within else None,
        now=_now(now_text),
        runs=list(run_ids) or None,
    )
    _emit_report(report)
    for line in views.undo_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True, level=-1)
    ctx.exit(report.exit_code)


@cli.command()
@_config_opt
@click.option(
    "--expired",
    "expired",
    is_flag=True,
    help="Only trash whose grace period is over (the default).",
)
@click.option("--all", "everything", is_flag=True, help="Empty the whole trash (no undo after).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only say what would be purged (applies, runs, bytes); change nothing.",
)
@click.option(
    "-y", "--yes", is_flag=True, help="Do not ask for confirmation (--all on a terminal)."
)
@click.option(
    "--vacuum",
    is_flag=True,
    help="Then give the catalog's free pages back to the filesystem: PRAGMA"
    " incremental_vacuum where its auto_vacuum is incremental (short), else VACUUM, which"
    " rewrites the whole file under an exclusive lock (the application waits) and needs free"
    " disk for a copy of it and as much again.",
)
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@_reported("purge")
@click.pass_context
@_interruptible
def purge(
    ctx: click.Context,
    expired: bool,
    everything: bool,
    dry_run: bool,
    yes: bool,
    vacuum: bool,
    now_text: str | None,
) -> None:
    """Remove trash whose grace period is over (or, with --all, all of it).

    Reports the catalog file's size before and after, and its free pages (the space the
    dropped tombstones took, which SQLite reuses). Exit 4 or 8 if --vacuum failed (the
    purge itself is done). --dry-run changes nothing. --all on a terminal asks first
    (unless --yes).
    """
    if expired and everything:
        raise UsageError("--expired and --all contradict each other: give one of them")
    if dry_run and (vacuum or ctx.meta.get("retention.out", {}).get("metrics_file")):
        raise UsageError("--dry-run changes nothing: it takes neither --vacuum nor --metrics-file")
    cfg, now = _config(ctx), _now(now_text)
    if cfg.is_json_catalog:
        from retention import jobstore

        if dry_run or vacuum:
            flag = "--dry-run" if dry_run else "--vacuum"
            raise UsageError(f"purge {flag} is for an SQL catalog")
        question = "Forget every tombstone? Those applies can never be undone after this"
        if everything and not yes and _interactive() and not _confirm(question):
            _say("Nothing was purged.", err=True)
            ctx.exit(0)
        doc_report = jobstore.purge(cfg, everything=everything, now=now)
        _emit_report(doc_report)
        for line in jobstore.purge_lines(doc_report):
            _say(line, err=True)
        ctx.exit(doc_report.exit_code)
    from retention.trashops import purge as run_purge
    from retention.trashops import purge_preview, purge_preview_lines

    if dry_run or (everything and not yes and _interactive()):
        preview = purge_preview(cfg, everything=everything, now=now)
        if dry_run:
            _emit_report(preview)
            ctx.meta.pop("retention.report", None)  # not a purge's report (no metrics)
            for line in purge_preview_lines(preview):
                _say(line, err=True)
            ctx.exit(0)
        if not preview.applies:
            _say("Trash is empty; nothing to purge.", err=True)
        else:
            for line in purge_preview_lines(preview)[:-1]:
                _say(line, err=True)
            question = (
                f"Purge the trash of {len(preview.applies):,} apply(s) ({preview.runs:,} runs)?"
                " They can never be undone after this"
            )
            answer = _confirm(question)
            if answer is None:  # Ctrl-C at the prompt
                _say("Interrupted (SIGINT): nothing was purged.", err=True, level=-1)
                ctx.exit(interrupt_exit_code(signal.SIGINT))
            if not answer:
                _say("Nothing was purged.", err=True)
                ctx.exit(0)
    report = run_purge(cfg, everything=everything, vacuum=vacuum, now=now)
    _emit_report(report)
    for line in views.purge_lines(report):
        _say(line, err=True)
    if report.interrupted:
        _say(report.interrupted.message, err=True, level=-1)
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

    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention import jobstore

        now = _now(now_text)
        doc_status = jobstore.status(cfg, now)
        if as_json:
            _emit(doc_status)
        else:
            for line in jobstore.status_lines(doc_status, now):
                _say(line)
        return
    report = run_status(cfg, _now(now_text))
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

    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention.jobstore_views import check as run_check
    report = run_check(cfg)
    if as_json:
        _emit(report)
    else:
        if _verbose() and ctx.get_parameter_source("limit") is ParameterSource.DEFAULT:
            limit = 0  # -v: every finding
        for line in check_lines(report, limit):
            _say(line)
    if report.findings:
        ctx.exit(EXIT_INCONSISTENT)


@cli.command("log")
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@click.option("--since", help="Only transactions younger than this (e.g. 7d), or since an instant.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="At most this many transactions, newest first (0: all).",
)
@click.option("--now", "now_text", help="Take this ISO-8601 time as now (for --since).")
@click.pass_context
def log_cmd(
    ctx: click.Context, as_json: bool, since: str | None, limit: int, now_text: str | None
) -> None:
    """What retention did, newest first, like `git log`: each apply, undo and purge with
    who ran it where, runs and bytes, rows per table and runs per group (read-only)."""
    from retention.durations import parse_duration, parse_instant
    from retention.history import log, log_lines

    cutoff = None
    if since:
        try:
            cutoff = _now(now_text) - parse_duration(since)
        except UsageError:
            cutoff = parse_instant(since)
    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention.jobstore_views import log
    report = log(cfg, since=cutoff, limit=limit)
    if as_json:
        _emit(report)
    else:
        for line in log_lines(report):
            _say(line)


@cli.command("trash")
@_config_opt
@click.option("--json", "as_json", is_flag=True, help="Every run in trash, on stdout.")
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="Run lines listed (0: all); the totals always count every run.",
)
@click.option("--now", "now_text", help="Take this ISO-8601 time as now.")
@click.pass_context
def trash_cmd(ctx: click.Context, as_json: bool, limit: int, now_text: str | None) -> None:
    """List the runs in trash, like `trash-list`: per apply, each run with its original
    path, size and undo deadline (read-only). `retention undo --run RUN_ID` restores one."""
    from retention.history import trash, trash_lines

    cfg = _config(ctx)
    if cfg.is_json_catalog:
        from retention.jobstore_views import trash
    report = trash(cfg, _now(now_text), limit=0 if as_json else limit)
    if as_json:
        _emit(report)
    else:
        for line in trash_lines(report, limit):
            _say(line)


def main() -> None:
    from retention.signals import SIGNALS

    SIGNALS.persistent = True  # this process ends with the command (see Signals.persistent)
    cli(prog_name="retention")
