"""SIGINT and SIGTERM during a mutating command: a stop at the next safe point.

A module of its own, with nothing heavy imported: the CLI's entry point sets
`Signals.persistent` before anything else, and `retention --help` must not pay for the
workspace, the catalog and the journal to do that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, ClassVar

from retention.errors import Interrupted


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, ... (``signal 42`` for an unnamed number)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Signals:
    """SIGINT and SIGTERM while a mutating command runs: a stop at the next safe point.

    The first signal is only remembered (and acknowledged on stderr); the work looks at it
    with `stop` at its safe points. Before a transaction's commit point (`phase` "before"),
    `stop` raises `Interrupted` and the caller rolls the transaction back in this process;
    after it ("committed") nothing stops: the transaction is finished (rolled forward) and
    the command reports the interruption after it. A second signal, while rolling back or
    finishing, is ignored with a message that says how to stop at once anyway (SIGKILL):
    the journal makes the next command, or `retention recover`, finish the job then. So a
    second Ctrl-C never leaves a half state behind. SIGKILL and power loss are the
    journal's, as always.

    `catching` installs the handlers (main thread only) and is re-entrant: the CLI holds it
    for the whole command, so that a signal while the report is printed is not a
    traceback either; the library holds it while a workspace is open. The previous
    handlers come back when the outermost `catching` ends (unless `persistent`: ignored).
    """

    def __init__(self) -> None:
        self._depth = 0
        self._saved: dict[signal.Signals, Any] = {}
        self.signum: int | None = None
        self.phase = "before"  # before | committed | rolling back | recovering
        # Set by the command-line entry point, whose process ends with the command: SIGINT
        # and SIGTERM are then ignored after it, so that a signal in its last instants never
        # becomes a KeyboardInterrupt ("Aborted!", exit 1) or a death by the signal after
        # the report was printed. Never in a library user.
        self.persistent = False

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    @contextlib.contextmanager
    def catching(self) -> Iterator[Signals]:
        if self._depth == 0:
            self.signum, self.phase = None, "before"
            if threading.current_thread() is threading.main_thread():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    self._saved[signum] = signal.signal(signum, self._handle)
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0 and self.persistent:
                # The work is over and reported: ignore signals until the process exits
                # (SIG_IGN, as Python's finalization would put SIG_DFL back over a handler).
                for signum in self._saved:
                    signal.signal(signum, signal.SIG_IGN)
            elif self._depth == 0:
                for signum, handler in self._saved.items():
                    signal.signal(signum, signal.SIG_DFL if handler is None else handler)
                self._saved.clear()

    # What the process is doing in each phase, for the messages a signal gets.
    _DOING: ClassVar[dict[str, str]] = {
        "before": "stopping",
        "committed": "finishing the committed transaction (it only goes forward)",
        "rolling back": "rolling back",
        "recovering": "finishing the recovery of an interrupted transaction",
    }

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        doing = self._DOING.get(self.phase, "stopping")
        if self.signum is None:
            self.signum = signum
            if self.phase == "before":
                text = (
                    f"{name} received: stopping at the next safe point (what was moved goes"
                    " back; a second signal is ignored)"
                )
            else:
                text = f"{name} received: {doing}, then stopping"
        else:
            text = (
                f"{name} ignored: still {doing}, which leaves nothing half-done; to stop at"
                f" once anyway, kill -9 {os.getpid()}: the next retention command (or"
                " `retention recover`) then finishes or rolls back from the journal"
            )
        # os.write, not print: the handler may run while the main thread is inside a write
        # to sys.stderr, and buffered streams are not re-entrant.
        with contextlib.suppress(OSError):
            os.write(2, f"retention: {text}\n".encode())

    def stop(self, what: str) -> None:
        """A safe point before a commit: raise `Interrupted` if a signal came (``what`` is
        the outcome so far, e.g. "nothing deleted"; the roll-back completes the message)."""
        if self.signum is not None and self.phase == "before":
            raise Interrupted(self.signum, f"Interrupted ({self.name}): {what}.")

    def committed(self) -> None:
        """The current transaction passed its commit point: a signal now finishes it."""
        self.phase = "committed"

    def begin(self) -> None:
        """A new transaction starts (nothing of it is committed)."""
        self.phase = "before"


SIGNALS = Signals()
