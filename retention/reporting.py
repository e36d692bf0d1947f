"""Rendering for people (stderr), progress on a terminal, and the JSON documents commands
write for machines (stdout, ``--output-json``): each one starts with ``format_version`` and
``kind``."""

from __future__ import annotations

import contextlib
import gc
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

# Every JSON report and every ``--json`` output starts with these two keys. The version is
# "MAJOR.MINOR": a new MINOR only adds fields (readers ignore what they do not know); a new
# MAJOR renames, removes or changes the meaning of one.
FORMAT_VERSION = "1.0"

# The ``kind`` of each document, by the class of the object encoded; any other class is
# named from its own name (``LogReport`` -> ``log-report``).
KINDS = {
    "ApplyReport": "apply-report",
    "UndoReport": "undo-report",
    "PurgeReport": "purge-report",
    "RecoverReport": "recover-report",
    "ShowReport": "show-report",
    "StatusReport": "status-report",
    "CheckReport": "check-report",
    "Explanation": "explain-report",
    "Config": "config-report",
    "TablesReport": "tables-report",
    "PurgePreview": "purge-preview",  # purge --dry-run
    "LogReport": "log-report",
    "TrashReport": "trash-report",
}


def kind_of(obj: object) -> str:
    name = type(obj).__name__
    if name in KINDS:
        return KINDS[name]
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


def document(obj: object, kind: str | None = None, *, order: Any = None) -> bytes:
    """``obj`` as one JSON object whose first keys are ``format_version`` and ``kind``
    (then its own fields, unchanged), newline-terminated. A field of ``obj`` of either name
    wins."""
    import msgspec  # not at import: `--help` and `config` print no document

    body = msgspec.json.encode(obj, order=order)
    if not body.startswith(b"{"):
        raise TypeError(f"a JSON document must be an object, not {type(obj).__name__}")
    fields: set[str] = set(getattr(obj, "__struct_fields__", ()))
    if isinstance(obj, dict):
        fields = {str(k) for k in obj}
    head = {
        k: v
        for k, v in (("format_version", FORMAT_VERSION), ("kind", kind or kind_of(obj)))
        if k not in fields
    }
    if not head:
        return body + b"\n"
    prefix = msgspec.json.encode(head)[:-1]  # without its closing brace
    rest = body[1:]
    return prefix + (rest if rest == b"}" else b"," + rest) + b"\n"


# -- progress ------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One line on stderr, only when stderr is a terminal (never in a pipe or a file):
    ``moving to trash:  45% 4,326/9,612  1,203/s  ETA 0:04``; at most 10 updates/s,
    erased when done.

    Not click's ``progressbar``: on a stream that is not a terminal it still prints its
    label once, and it has no rate; this line is what ``rsync --info=progress2`` shows.
    Output is switched off for the whole process by `Progress.quiet` (``-q``).
    """

    quiet = False  # set by the CLI for -q: no progress line at all
    interval = 0.1

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = (
            not Progress.quiet and hasattr(self.stream, "isatty") and self.stream.isatty()
        )
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0
        self._shown = False

    def line(self, now: float | None = None) -> str:
        """The text of the line (without the carriage return)."""
        elapsed = max((now if now is not None else time.monotonic()) - self._start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label}:"]
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            parts.append(f"{pct:3.0f}% {self.done:,}/{self.total:,}")
        else:
            parts.append(f"{self.done:,}")
        parts.append(f"{rate:,.0f}/s")
        if self.total and self.done:
            left = max(self.total - self.done, 0) / rate if rate > 0 else 0.0
            parts.append(f"ETA {_clock(left)}")
        return "  ".join(parts)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._shown = True
            self.stream.write("\r\033[K" + safe_text(self.line(now)))
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


# Control characters (C0, DEL, C1) as visible escapes: a run id, path or message holding
# them must not move the cursor, forge a line ("Applied ...") or send a terminal sequence.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def safe_text(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``...): what every
    line for people goes through before it is printed."""
    return text.translate(_ESCAPES)


@contextlib.contextmanager
def without_cyclic_gc() -> Iterator[None]:
    """Python's cyclic collector off while a plan builds its million small objects (runs,
    verdicts, entries: none of them in a cycle): it would walk them all again and again as
    they pile up (a fifth of a grouped plan's time at a million runs). Reference counting
    still frees everything; the collector's previous state comes back after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
