"""``--metrics-file PATH``: what apply, undo and purge did, in Prometheus' text exposition
format, for node_exporter's textfile collector (or any scraper of such a file).

The file is replaced atomically (a hidden temp file beside it, fsync, rename, fsync of the
directory): a scrape sees the old file or the new one, never half of one; the temp name
(``.NAME.tmp-PID``) does not end in ``.prom``, so the collector never reads it.

Every series has a ``command`` label. One file may serve several commands: the series of
the other commands found in it are kept as they are, those of this command replaced. A
command that fails still writes its exit code, duration and run time; its
``retention_last_success_timestamp_seconds`` is then the one the file held before.

Written by hand, not with ``prometheus_client`` (a test dependency only): the format is a
few lines of text, and a runtime dependency for it would be one more package on every
host that runs retention from cron. The tests parse the file with
``prometheus_client.parser``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journal import fsio

# name -> (help, type); the order of the file.
FAMILIES: dict[str, tuple[str, str]] = {
    "retention_last_run_timestamp_seconds": (
        "When the command last finished, successfully or not (Unix time).",
        "gauge",
    ),
    "retention_last_success_timestamp_seconds": (
        "When the command last finished its work: exit 0, or 3 (done, some entries skipped"
        " or conflicting) (Unix time).",
        "gauge",
    ),
    "retention_last_exit_code": ("The exit code of the command's last run.", "gauge"),
    "retention_last_duration_seconds": ("How long the command's last run took.", "gauge"),
    "retention_last_runs": (
        "Runs the last run of the command acted on, by outcome: deleted (apply), restored"
        " (undo), purged (purge), skipped (apply), conflicts (undo).",
        "gauge",
    ),
    "retention_last_bytes": (
        "Bytes of artifact directories the last run acted on, by outcome: deleted (moved to"
        " trash by apply), restored (undo), purged (purge).",
        "gauge",
    ),
    "retention_last_group_runs": (
        "Runs deleted by the last apply of a grouped manifest (policy.group_by), per group.",
        "gauge",
    ),
    "retention_last_group_bytes": (
        "Bytes deleted by the last apply of a grouped manifest (policy.group_by), per group.",
        "gauge",
    ),
}

SUCCESS_CODES = (0, 3)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Sample:
    name: str
    labels: Labels
    value: float


@dataclass
class GroupCount:
    group: str  # "org_id=acme, region=eu", as plan's summary names it
    runs: int
    bytes: int


@dataclass
class Outcome:
    """What one command did, for the metrics file."""

    command: str  # apply | undo | purge
    exit_code: int
    duration_seconds: float
    finished_at: float  # Unix time
    runs: dict[str, int] = field(default_factory=dict)  # outcome -> runs (empty: failed)
    bytes: dict[str, int] = field(default_factory=dict)  # outcome -> bytes
    groups: list[GroupCount] | None = None  # apply of a grouped manifest

    @property
    def succeeded(self) -> bool:
        return self.exit_code in SUCCESS_CODES


# -- the text format -----------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(samples: list[Sample]) -> str:
    """The exposition text: one HELP and TYPE per family (known families first, in
    `FAMILIES` order), then its samples sorted by labels."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        by_name.setdefault(s.name, []).append(s)
    names = [n for n in FAMILIES if n in by_name] + sorted(n for n in by_name if n not in FAMILIES)
    out: list[str] = []
    for name in names:
        help_text, kind = FAMILIES.get(name, ("", "untyped"))
        if help_text:
            out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for s in sorted(by_name[name], key=lambda s: s.labels):
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels)
            value = _number(s.value)
            out.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
    return "\n".join(out) + "\n"


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> list[Sample]:
    """The samples of a file this module wrote (comments skipped; a line it cannot read is
    dropped: the previous file is a convenience, never a reason to fail)."""
    out: list[Sample] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels: list[tuple[str, str]] = []
        rest = m.group(2) or ""
        pos = 0
        ok = True
        while pos < len(rest):
            lm = _LABEL.match(rest, pos)
            if lm is None or lm.end() == pos:
                ok = False
                break
            labels.append((lm.group(1), _unescape(lm.group(2))))
            pos = lm.end()
        try:
            value = float(m.group(3))
        except ValueError:
            ok = False
        if ok:
            out.append(Sample(m.group(1), tuple(sorted(labels)), value))
    return out


def _read_previous(path: Path) -> list[Sample]:
    try:
        return parse(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


# -- one command's samples -----------------------------------------------------------------


def samples_for(outcome: Outcome, previous: list[Sample]) -> list[Sample]:
    """This command's samples; the last success time comes from ``previous`` when this run
    did not succeed (absent if it never did)."""
    cmd = ("command", outcome.command)
    out = [
        Sample("retention_last_run_timestamp_seconds", (cmd,), outcome.finished_at),
        Sample("retention_last_exit_code", (cmd,), outcome.exit_code),
        Sample("retention_last_duration_seconds", (cmd,), round(outcome.duration_seconds, 3)),
    ]
    if outcome.succeeded:
        out.append(Sample("retention_last_success_timestamp_seconds", (cmd,), outcome.finished_at))
    else:
        out += [
            s
            for s in previous
            if s.name == "retention_last_success_timestamp_seconds" and cmd in s.labels
        ]
    for what, n in outcome.runs.items():
        out.append(Sample("retention_last_runs", _labels(cmd, ("outcome", what)), n))
    for what, n in outcome.bytes.items():
        out.append(Sample("retention_last_bytes", _labels(cmd, ("outcome", what)), n))
    for g in outcome.groups or ():
        labels = _labels(cmd, ("outcome", "deleted"), ("group", g.group))
        out.append(Sample("retention_last_group_runs", labels, g.runs))
        out.append(Sample("retention_last_group_bytes", labels, g.bytes))
    return out


def _labels(*pairs: tuple[str, str]) -> Labels:
    return tuple(sorted(pairs))


def write_metrics(path: Path, outcome: Outcome) -> None:
    """Replace ``path`` atomically with the file holding ``outcome`` (and the other
    commands' series it held). Raises `OSError` (or `journal.FsyncError`)."""
    previous = _read_previous(path)
    cmd = ("command", outcome.command)
    kept = [s for s in previous if cmd not in s.labels]
    text = render(kept + samples_for(outcome, previous))
    fsio.write_atomic(path, text.encode("utf-8"), 0o644)


def outcome_of(
    command: str,
    report: object,
    *,
    exit_code: int,
    duration_seconds: float,
    finished_at: float,
    bytes_restored: int | None = None,
    groups: list[GroupCount] | None = None,
) -> Outcome:
    """The `Outcome` of an apply, undo or purge from its report (``ApplyReport``,
    ``UndoReport``, ``PurgeReport``); ``bytes_restored`` is undo's, which its report does
    not hold (the deletion log does)."""
    r: Any = report
    out = Outcome(command, exit_code, duration_seconds, finished_at, groups=groups)
    if command == "apply":
        out.runs = {"deleted": r.deleted_runs, "skipped": len(r.skipped)}
        out.bytes = {"deleted": r.bytes_moved}
    elif command == "undo":
        out.runs = {
            "restored": sum(len(u.restored) for u in r.undone),
            "conflicts": sum(len(u.conflicts) for u in r.undone),
        }
        if bytes_restored is not None:
            out.bytes = {"restored": bytes_restored}
    elif command == "purge":
        out.runs = {"purged": r.runs}
        out.bytes = {"purged": r.bytes}
    return out
