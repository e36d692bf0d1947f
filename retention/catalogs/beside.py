"""An apply's row fingerprints taken beside its renames, in a process of their own.

At its commit point an apply compares each run's rows with the fingerprint the plan signed
(`SqlCatalog.fingerprints`): at a million runs, reading and hashing the 400,000 rows of
100,000 runs is a second of the commit, on one core, with the catalog's write lock held.
On an SQLite catalog in WAL mode (readers never hold a writer up) that comparison is made
instead by a fresh interpreter (``python -m retention.catalogs.beside``), on its own
read-only connection, while the main process renames the directories; the commit then only
asks SQLite whether any other connection committed since the comparison began (``PRAGMA
data_version``, read once before the helper starts and again inside the write
transaction). If one did, or the helper failed in any way, the commit computes the
fingerprints itself, as it always did: the answer is only ever a shortcut to the same
result.

A fresh interpreter, not a fork: SQLite's per-process lock bookkeeping must not be
inherited from a process that has the catalog open.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from retention.config import Config

RunId = str | int

FORMAT = "retention.beside-fingerprints"

# Fewer runs than this: the commit fingerprints them itself (a 100 ms interpreter start-up
# buys nothing for a few thousand runs, whose fingerprints take milliseconds).
MIN_RUNS = 10_000


class Request(msgspec.Struct, kw_only=True):
    """What the helper reads on stdin: the catalog and each run with its plan-time digest."""

    format: str = FORMAT
    version: int = 1
    config: Config
    runs: list[RunId]
    rows_fps: list[str]


class Answer(msgspec.Struct, kw_only=True):
    """What the helper writes on stdout: the runs the commit must leave alone."""

    format: str = FORMAT
    version: int = 1
    gone: list[RunId]  # no row in the runs table any more
    changed: list[RunId]  # rows differ from the plan's


class Known(msgspec.Struct, frozen=True):
    """An answer, valid while ``data_version`` (of the applying connection) is unchanged."""

    data_version: int
    gone: frozenset[RunId]
    changed: frozenset[RunId]


def compare(fingerprints: dict[RunId, str], runs: list[RunId], rows_fps: list[str]) -> Answer:
    """Which of ``runs`` are gone and which changed, given the current ``fingerprints``.

    The one comparison both the helper and the commit make (`commit_delete`)."""
    gone: list[RunId] = []
    changed: list[RunId] = []
    for rid, expected in zip(runs, rows_fps, strict=True):
        fp = fingerprints.get(rid)
        if fp is None:
            gone.append(rid)
        elif fp != expected:
            changed.append(rid)
    return Answer(gone=gone, changed=changed)


# How long `Beside.result` waits for an answer: a helper stuck on anything (it never waits
# on a lock in WAL mode) costs the apply this much, then the commit compares itself.
WAIT_S = 30.0
WAIT_PER_RUN_S = 0.001


def start(
    cfg: Config, data_version: int, runs: list[RunId], rows_fps: list[str]
) -> Beside | NotBeside:
    """A helper for these runs, or `NotBeside` where none can start (no interpreter to
    run, no process or pipe to spare, a request that cannot be encoded): the commit then
    compares the rows itself. ``data_version`` must be read before this is called."""
    if getattr(sys, "frozen", False) or not sys.executable:
        return NotBeside()
    try:
        return Beside(cfg, data_version, runs, rows_fps)
    except Exception:  # never a reason to fail the apply: the shortcut is only that
        return NotBeside()


class Beside:
    """The helper of one apply transaction (`start`). ``result()`` waits for its answer
    (None when there is none to use); ``close()`` ends it, whatever state it is in."""

    def __init__(self, cfg: Config, data_version: int, runs: list[RunId], rows_fps: list[str]):
        self._data_version = data_version
        self._wait = WAIT_S + WAIT_PER_RUN_S * len(runs)
        request = msgspec.msgpack.encode(Request(config=cfg, runs=runs, rows_fps=rows_fps))
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            # -P: not the working directory (the user's) first on sys.path, where a
            # retention.py of theirs would be imported instead of ours.
            [sys.executable, "-P", "-m", "retention.catalogs.beside"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        # The request is megabytes: a thread feeds the pipe while the interpreter starts.
        self._feeder = threading.Thread(target=self._feed, args=(request,), daemon=True)
        self._feeder.start()

    def _feed(self, request: bytes) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        # OSError: the helper is gone (result() finds it failed); ValueError: its pipe was
        # closed meanwhile.
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(request)
            proc.stdin.close()

    def result(self, stop: Callable[[], bool] | None = None) -> Known | None:
        """The helper's answer, or None if it failed, took longer than its wait, or
        ``stop()`` said to stop waiting (checked four times a second). Once only."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return None
        try:
            out = _read_all(proc.stdout.fileno(), time.monotonic() + self._wait, stop)
            code = None if out is None else proc.wait()
        except OSError:
            out = code = None
        finally:
            self.close()
        if out is None or code != 0:
            return None
        try:
            answer = msgspec.msgpack.decode(out, type=Answer)
        except msgspec.DecodeError:
            return None
        if answer.format != FORMAT or answer.version != 1:
            return None
        return Known(self._data_version, frozenset(answer.gone), frozenset(answer.changed))

    def close(self) -> None:
        """Kill the helper if it still runs and reap it; no thread of ours is left
        (measuring workers are forked later, for the next batch: no thread may run then)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._feeder.join()  # its write fails at once once the helper is gone
        for pipe in (proc.stdout, proc.stdin):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()

    def __enter__(self) -> Beside:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_all(fd: int, deadline: float, stop: Callable[[], bool] | None) -> bytes | None:
    """Everything until end of file on ``fd``, or None past ``deadline`` or on ``stop()``."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or (stop is not None and stop()):
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 0.25))
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


class NotBeside:
    """No helper (another backend, a rollback-journal catalog, a small apply)."""

    def result(self, stop: Callable[[], bool] | None = None) -> Known | None:
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> NotBeside:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def main() -> int:
    """The helper: read a `Request`, compare on a read-only connection, write an `Answer`."""
    # A Ctrl-C reaches the whole process group: die quietly; the apply goes on without us.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from retention.catalogs.sqlite import SqliteCatalog
    from retention.failpoints import failpoint

    req = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=Request)
    if req.format != FORMAT or req.version != 1:
        return 2
    with SqliteCatalog(req.config, readonly=True) as cat:
        cat.load_ids(req.runs)
        answer = compare(cat.fingerprints(), req.runs, req.rows_fps)
    failpoint("beside.before_answer")
    out: Any = sys.stdout.buffer
    out.write(msgspec.msgpack.encode(answer))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
