"""Rendering for people (stderr) and progress on a terminal. JSON goes to stdout elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line counter on stderr, only when stderr is a terminal; at most 10 updates/s."""

    def __init__(self, label: str, total: int | None = None, stream: TextIO | None = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            total = f"/{self.total}" if self.total is not None else ""
            self.stream.write(f"\r{self.label}: {self.done}{total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._last:
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
