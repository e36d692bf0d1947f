"""Directory measures (`LocalStore.measure`) in forked worker processes.

Plan and apply measure every candidate directory: at a million runs, 100,000 directories
and about half of each command's CPU. In a thread, that work takes turns with the catalog's
on the GIL (each SQLite row step releases it and must win it back), so the two cost their
sum. Forked workers run beside the caller for real, on other cores: worker ``w`` of ``W``
measures jobs ``w, w + W, ...`` in order and streams the results back through a pipe,
which a thread of the caller's drains as it fills (a pipe holds a few hundred measures:
undrained, workers would wait for the caller, which reads the catalog meanwhile); `take`
returns one, waiting for it if need be; or, with ``steal`` (plan's, which leaves itself a
core while it reads the catalog), measuring the last jobs nobody has claimed in the caller
instead of waiting (marked in a shared map the workers read, so that they skip them).

What a worker does is exactly `measure` (read-only: ``open``/``lstat``/``listdir``, never
following a symlink), so its results are the ones the caller would have computed. Anything
a worker did not deliver (it died, was killed, or was never started) the caller measures
itself, so a lost worker costs time, never a wrong or missing answer. Workers keep no
signal handler of the caller's: SIGINT and SIGTERM kill them at once (a Ctrl-C reaches the
whole process group; the caller's own handler decides what the command does), they die
with the caller (``PR_SET_PDEATHSIG`` on Linux, else at their next write into the closed
pipe), hold no descriptor of the caller's but their pipe (the workspace lock, the
catalog), and leave through ``os._exit`` (no atexit handler, no flush of the caller's
buffers). Leaving the
``with`` block kills and reaps them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import signal
import struct
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from retention.store import Measure

# Fewer jobs than this are measured in the caller: a fork costs a few milliseconds.
MIN_JOBS = 256
_FRAME = 256  # measures per message
_PIPE_SIZE = 1 << 20  # Linux's default most an unprivileged process may ask for
_LEN = struct.Struct("<I")

_Row = tuple[bool, int, int, str, str | None, int | None]


class Measures(Protocol):
    """What the workers run: `LocalStore.measure` (any artifact store's)."""

    def measure(self, rel: bytes) -> Measure: ...


class BoundMeasures(Protocol):
    """A store whose `measure` can be kept to one device (`LocalStore.measure`)."""

    def measure(self, rel: bytes, *, device: int | None = None) -> Measure: ...


class OnDevice:
    """What plan's and apply's workers measure: `LocalStore.measure` kept to the trash's
    device. A directory on another (a mount point, which neither plan nor apply will rename
    into trash) is not walked: its measure says why, and its fingerprint is empty."""

    __slots__ = ("_device", "_store")

    def __init__(self, store: BoundMeasures, device: int) -> None:
        self._store = store
        self._device = device

    def measure(self, rel: bytes) -> Measure:
        return self._store.measure(rel, device=self._device)


def default_workers(reserve: int = 0) -> int:
    """One worker per core, at most four (the tree walk is system calls: more would only
    queue on the same disk); ``reserve``: cores left to the caller (at least one worker)."""
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may run on (Linux)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores - reserve, 4))


class _Worker:
    __slots__ = ("buf", "chunks", "eof", "fd", "got", "over", "pid")

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.chunks: list[bytes] = []  # read by the drain thread, not yet decoded
        self.eof = False  # the drain thread saw EOF (set under the lock, after the chunks)
        self.buf = bytearray()
        self.got: list[_Row | None] = []
        self.over = False  # every chunk up to EOF decoded: nothing more will come


class ForkedMeasurer:
    """`LocalStore.measure` of each of ``jobs`` (a key, a path relative to the root) in
    ``workers`` forked processes; `take` returns the measure of a job by its key (a key not
    among the jobs, or one no worker delivered, is measured in the caller). Workers run
    ahead of `take` as far as they can: what they deliver waits in memory (under 100 bytes
    a measure) until taken."""

    def __init__(
        self,
        store: Measures,
        jobs: Sequence[tuple[Any, bytes]],
        *,
        workers: int | None = None,
        min_jobs: int = MIN_JOBS,
        steal: bool = False,
    ) -> None:
        self._store = store
        self._jobs = jobs
        self._at = {k: i for i, (k, _) in enumerate(jobs)}
        self._n = workers if workers is not None else default_workers()
        self._min = min_jobs
        self._workers: list[_Worker] = []
        self._decoder = msgspec.msgpack.Decoder(list[_Row])
        self._cond = threading.Condition()
        self._drainer: threading.Thread | None = None
        # With ``steal``, a `take` that would wait measures the last jobs not yet claimed
        # in this process instead, and marks them in ``_claimed`` (shared with the workers,
        # which skip a marked job): the caller is one more walker once it has nothing
        # else to do, so that plan can leave it a core of its own while it reads the catalog.
        self._steal = steal
        self._claimed: mmap.mmap | None = None
        self._tail = len(jobs)  # jobs from here on were the caller's to steal
        self._stolen: dict[int, Measure] = {}
        self._stolen_count = 0

    def __enter__(self) -> ForkedMeasurer:
        n = min(self._n, len(self._jobs))
        if len(self._jobs) >= max(self._min, 1) and hasattr(os, "fork"):
            try:
                if self._steal:  # anonymous and shared: the workers see the caller's marks
                    self._claimed = mmap.mmap(-1, len(self._jobs))
                for w in range(n):
                    self._fork(w, n)
                # Forks first: a thread must not be running while this process forks.
                self._drainer = threading.Thread(
                    target=self._drain, name="retention-measures", daemon=True
                )
                self._drainer.start()
            except (OSError, RuntimeError):  # no process, descriptor or thread to spare
                self.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill and reap every worker (idempotent)."""
        for wk in self._workers:
            with contextlib.suppress(OSError):
                os.kill(wk.pid, signal.SIGKILL)
        # A killed worker's pipe ends at once (it held the only write end): the drain
        # thread sees EOF on every pipe and returns; only then are the pipes closed.
        if self._drainer is not None:
            self._drainer.join()
            self._drainer = None
        for wk in self._workers:
            with contextlib.suppress(OSError):
                os.close(wk.fd)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(wk.pid, 0)
        self._workers.clear()
        self._stolen.clear()
        if self._claimed is not None:  # every worker is gone: nobody reads it any more
            self._claimed.close()
            self._claimed = None

    @property
    def forked(self) -> int:
        """How many workers were started."""
        return len(self._workers)

    @property
    def stolen(self) -> int:
        """How many jobs the caller measured itself instead of waiting (``steal``)."""
        return self._stolen_count

    def _fork(self, w: int, n: int) -> None:
        r, wfd = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # Linux: more room, fewer wakeups
            import fcntl

            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(wfd)
            raise
        if pid == 0:  # the worker: never returns
            _work(self._store, self._jobs, w, n, wfd, parent, self._claimed)
        os.close(wfd)
        self._workers.append(_Worker(pid, r))

    def take(self, key: Any, rel: bytes) -> Measure:
        i = self._at.get(key)
        if i is None or not self._workers:
            return self._store.measure(rel)
        m = self._stolen.pop(i, None)
        if m is not None:  # measured here (``steal``)
            return m
        nw = len(self._workers)
        wk, pos = self._workers[i % nw], i // nw
        while len(wk.got) <= pos and not wk.over:
            if self._claimed is not None and self._tail - 1 > i:
                self._steal_one()  # instead of waiting
                self._decode(wk, wait=False)
            else:
                self._decode(wk)
        row = wk.got[pos] if pos < len(wk.got) else None
        # Not delivered (the worker died), taken already, or skipped (claimed by this
        # process: defensive, as a claimed job's measure is taken from `_stolen`).
        if row is None or row[1] < 0:
            return self._store.measure(rel)
        wk.got[pos] = None
        exists, nbytes, files, fp, error, dev = row
        return Measure(exists, nbytes, files, fp, error, dev)

    def _drain(self) -> None:
        """The drain thread: read every worker's pipe as it fills, so that workers keep
        measuring while this process is busy elsewhere (a pipe holds a few hundred measures:
        without it, workers would stop and wait for `take`). Only reads and appends; the
        decoding is `take`'s. Returns once every pipe has ended."""
        by_fd = {wk.fd: wk for wk in self._workers}
        try:
            poll = select.poll()
            for fd in by_fd:
                poll.register(fd, select.POLLIN)
            while by_fd:
                for fd, _ in poll.poll():
                    wk = by_fd[fd]
                    try:
                        data = os.read(fd, 1 << 20)  # EINTR is retried (PEP 475)
                    except OSError:
                        data = b""
                    with self._cond:
                        if data:
                            wk.chunks.append(data)
                        else:
                            wk.eof = True
                            poll.unregister(fd)
                            del by_fd[fd]
                        self._cond.notify_all()
        finally:
            # Whatever stops this thread (even an error of its own), `take` must never wait
            # for it: the pipes it no longer reads end here, and the caller measures the rest.
            with self._cond:
                for wk in by_fd.values():
                    wk.eof = True
                self._cond.notify_all()

    def _steal_one(self) -> None:
        """Measure the last job not yet claimed, here (marked first: a worker that has not
        reached it skips it; one that took it already measures it too, harmlessly), unless
        its worker delivered it already (with several workers, one may be done while
        another is still walking)."""
        assert self._claimed is not None
        self._tail = t = self._tail - 1
        nw = len(self._workers)
        if len(self._workers[t % nw].got) > t // nw:
            return
        self._claimed[t] = 1
        self._stolen[t] = self._store.measure(self._jobs[t][1])
        self._stolen_count += 1

    def _decode(self, wk: _Worker, *, wait: bool = True) -> None:
        """Wait for more of ``wk``'s pipe (unless not ``wait``) and decode every whole
        message in it."""
        with self._cond:
            while wait and not wk.chunks and not wk.eof:
                self._cond.wait()
            chunks, wk.chunks = wk.chunks, []
            if not chunks:
                if wk.eof:  # EOF, every chunk before it decoded already
                    wk.over = True
                return
        buf = wk.buf
        for data in chunks:
            buf += data
        at = 0
        while len(buf) - at >= _LEN.size:
            (n,) = _LEN.unpack_from(buf, at)
            if len(buf) - at - _LEN.size < n:
                break
            body = bytes(buf[at + _LEN.size : at + _LEN.size + n])
            at += _LEN.size + n
            try:
                wk.got.extend(self._decoder.decode(body))
            except msgspec.DecodeError:  # cannot happen from our worker; be safe: stop
                wk.over = True
                break
        del buf[:at]


# What a worker sends for a job the caller claimed (`ForkedMeasurer._steal_one`): a byte
# count no measure has.
_SKIPPED: _Row = (False, -1, 0, "", None, None)


def _work(
    store: Measures,
    jobs: Sequence[tuple[Any, bytes]],
    w: int,
    n: int,
    fd: int,
    parent: int,
    claimed: mmap.mmap | None,
) -> None:
    """A worker's whole life: measure jobs ``w, w + n, ...`` in order (but those the caller
    ``claimed``), write them to ``fd``, exit."""
    code = 0
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)
        # Keep only the pipe: the workspace lock's and the catalog's descriptors stay with
        # the caller (a lock must never outlive the process that took it).
        os.closerange(3, fd)
        os.closerange(fd + 1, _max_fd())
        encode = msgspec.msgpack.Encoder().encode
        measure = store.measure
        rows: list[_Row] = []
        for i in range(w, len(jobs), n):
            if claimed is not None and claimed[i]:
                rows.append(_SKIPPED)
            else:
                m = measure(jobs[i][1])
                rows.append((m.exists, m.bytes, m.files, m.fingerprint, m.error, m.dev))
            if len(rows) == _FRAME:
                _send(fd, encode(rows))
                rows.clear()
        if rows:
            _send(fd, encode(rows))
    except BaseException:  # the caller measures whatever was not delivered
        code = 1
    finally:
        os._exit(code)


def _send(fd: int, body: bytes) -> None:
    data = memoryview(_LEN.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data) :]


def _max_fd() -> int:
    try:
        return max(int(os.sysconf("SC_OPEN_MAX")), 1024)
    except (ValueError, OSError):
        return 65536


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the caller dies (a worker must not keep measuring,
    or hold anything, for a dead command)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the caller died before prctl: nobody will read
            os._exit(1)
    except Exception:
        pass
