"""Durable file-system primitives. Every durable write goes through the same steps.

Contracts:

* `fsync_file` / `fsync_dir` turn a failed ``fsync`` into `FsyncError`, which callers must
  treat as fatal and never retry: after a failed fsync Linux may already have dropped the
  dirty pages and cleared the error flag, so a second fsync can succeed while the data is lost.
* `write_atomic` leaves either the old file or the complete new file at `path`, never a
  mix, and the new content and its directory entry are durable when it returns.
* `rename_noreplace` never replaces an existing destination of any kind.
* `ensure_dir` makes each directory it creates durable by fsyncing the parent.

`stats` counts fsyncs (``stats["fsync_file"]``, ``stats["fsync_dir"]``) so tests can check
that the expected number of barriers happened.

Fault injection (tests only), inert unless armed through the environment, which is read at
every fsync, in the style of `journal.failpoints`:

* ``FAULT_FSYNC_EIO=<name>@N`` makes the Nth (1-based; ``@N`` may be left out for 1) fsync
  whose target's base name is ``<name>`` fail with ``EIO`` instead of calling ``fsync(2)``,
  as a kernel reporting a writeback error does; ``*`` matches every target, so ``*@7`` is
  the seventh fsync of the process. Only that one call fails and every later fsync
  succeeds, as on Linux, where the error is reported once and then cleared: so a caller
  that retried would "succeed", which is exactly what must never happen. The caller sees
  the usual `FsyncError`. A target is the absolute path of the directory, or of the file
  behind the descriptor (``/proc/self/fd``), or ``fd <n>`` where that cannot be read.
* ``FAULT_FSYNC_LOG=<file>`` appends one line per fsync attempt, ``fsync_file ok <target>``
  or ``fsync_dir EIO <target>`` (the injected failure), so a test sees every barrier and
  that a failed one was never attempted again. It may be the same file as
  ``FAILPOINT_LOG``: lines are appended in the order they happen (a failpoint line has no
  space, an fsync line has two).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import Counter
from collections.abc import Callable
from typing import IO

from journal.errors import FsyncError

StrPath = str | os.PathLike[str] | bytes | os.PathLike[bytes]

stats: Counter[str] = Counter()

FAULT_FSYNC_ENV = "FAULT_FSYNC_EIO"
FAULT_FSYNC_LOG_ENV = "FAULT_FSYNC_LOG"
_fault_hits: Counter[str] = Counter()


def _display(path: StrPath) -> str:
    return os.fsdecode(path)


def _parse_fault(spec: str) -> tuple[str, int]:
    name, sep, count = spec.rpartition("@")
    if not sep:
        name, count = spec, "1"
    try:
        n = int(count)
    except ValueError:
        raise ValueError(f"{FAULT_FSYNC_ENV}={spec!r}: the hit number must be an integer") from None
    if not name or n < 1:
        raise ValueError(f"{FAULT_FSYNC_ENV}={spec!r}: expected <name>@N, N 1-based")
    return name, n


def _fd_target(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _fsync(fd: int, kind: str, target: Callable[[], str]) -> None:
    """``os.fsync(fd)``, unless a fault armed for this call (see the module docstring)
    raises ``OSError(EIO)`` instead. `target` is only called when armed or logging."""
    spec = os.environ.get(FAULT_FSYNC_ENV)
    log = os.environ.get(FAULT_FSYNC_LOG_ENV)
    if spec or log:
        where = target()
        fail = False
        if spec:
            name, nth = _parse_fault(spec)
            if name == "*" or os.path.basename(where.rstrip("/")) == name:
                _fault_hits[spec] += 1
                fail = _fault_hits[spec] == nth
        if log:
            with open(log, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"{kind} {'EIO' if fail else 'ok'} {where}\n")
        if fail:
            raise OSError(errno.EIO, os.strerror(errno.EIO))  # as from os.fsync: no name
    os.fsync(fd)


def reset_fault_hits() -> None:
    """Zero the per-process counters of ``FAULT_FSYNC_EIO`` (for in-process tests)."""
    _fault_hits.clear()


def fsync_file(f: int | IO[bytes] | IO[str]) -> None:
    """fsync an open file (fd or file object). Raises `FsyncError` on failure; never retries.

    A file object is *not* flushed first: callers writing through a buffered object must
    flush it themselves (the journal writes with ``os.write`` so there is no user buffer).
    """
    fd = f if isinstance(f, int) else f.fileno()
    name = "" if isinstance(f, int) else str(getattr(f, "name", ""))
    stats["fsync_file"] += 1
    try:
        _fsync(fd, "fsync_file", lambda: _fd_target(fd))
    except OSError as e:
        raise FsyncError(name or _fd_target(fd), e) from e


def fsync_dir(path: StrPath) -> None:
    """fsync a directory so entries created, renamed or removed in it are durable.

    Raises `FsyncError` if the fsync itself fails; `OSError` (e.g. `FileNotFoundError`,
    `NotADirectoryError`) if the directory cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        stats["fsync_dir"] += 1
        try:
            _fsync(fd, "fsync_dir", lambda: os.path.abspath(_display(path)))
        except OSError as e:
            raise FsyncError(_display(path), e) from e
    finally:
        os.close(fd)


def _step_error(step: str, path: StrPath, e: OSError) -> OSError:
    # OSError(errno, ...) instantiates the matching subclass (FileNotFoundError, ...), so
    # callers can still catch by type; the message says which step failed.
    return OSError(e.errno, f"{step}: {e.strerror}", _display(path))


def write_atomic(
    path: StrPath,
    data: bytes,
    mode: int = 0o644,
    *,
    before_rename: Callable[[], None] | None = None,
    replace: bool = True,
) -> None:
    """Replace `path` with `data` atomically and durably, with permission bits `mode`.

    With ``replace=False`` an existing `path` is never replaced: the temp file is hard
    linked into place instead of renamed, and `FileExistsError` is raised (nothing
    changed) if `path` already exists. For files created once, like a key.

    Steps: remove whatever is at ``.<basename>.tmp-<pid>`` in the same directory (never
    written through: a planted symlink or hard link there only loses its name), create it
    anew (``O_EXCL | O_NOFOLLOW``), fchmod, write all, fsync, close, ``os.replace`` onto
    `path`, fsync the parent directory. On an error the temp file is removed (best effort)
    and the error is raised: `FsyncError` for an fsync, otherwise an `OSError` of the
    original errno whose message names the step (a `FileExistsError` from the create step
    means something was put at the temp name meanwhile; it is left alone). If the error
    happens after the rename, `path` may already hold the new content (not yet durable).
    `before_rename`, if given, is called after the temp file is durable and before the
    rename (a hook for failpoints).
    """
    path_b = os.fsencode(path)
    parent, base = os.path.split(path_b)
    parent = parent or b"."
    tmp = os.path.join(parent, b"." + base + b".tmp-" + str(os.getpid()).encode())
    renamed = False
    try:
        # Whatever is at the temp name (left by a dead process of the same pid, or planted:
        # a symlink, or a hard link to a file elsewhere) is removed, never written through:
        # O_EXCL makes a new inode or fails, and never follows a symlink put back meanwhile.
        step = "remove leftover temp file"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        step = "create temp file"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            step = "chmod temp file"
            os.fchmod(fd, mode)  # the umask applied at create time must not win
            step = "write temp file"
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            step = "fsync temp file"
            fsync_file(fd)
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        if replace:
            step = "rename temp file onto"
            os.replace(tmp, path_b)
        else:
            step = "link temp file to"
            try:
                os.link(tmp, path_b)
            except FileExistsError:
                _unlink_quietly(tmp)
                raise
            _unlink_quietly(tmp)
        renamed = True
        step = "fsync directory of"
        fsync_dir(parent)
    except FsyncError:
        if not renamed:
            _unlink_quietly(tmp)
        raise
    except FileExistsError as e:
        if step == "link temp file to":
            raise  # replace=False and `path` exists: the caller's signal, no wrapping
        # something appeared at the temp name between unlink and create: not ours to remove
        raise _step_error(step, path, e) from e
    except OSError as e:
        if not renamed:
            _unlink_quietly(tmp)
        raise _step_error(step, path, e) from e


def _unlink_quietly(path: bytes) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276}


def _load_renameat2() -> tuple[str | None, Callable[[bytes, bytes], int] | None]:
    """How to call renameat2 here (``"renameat2"``, ``"syscall"`` or None) and a function
    of (src, dst) that calls it and returns 0 or the errno. The ctypes function is set up
    once: redoing its argument types at every call was a tenth of a rename's cost."""
    import ctypes
    import platform

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None, None
    get_errno = ctypes.get_errno
    if hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int

        def call(src: bytes, dst: bytes) -> int:
            return 0 if fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0 else get_errno()

        return "renameat2", call
    machine = platform.machine().lower()
    if hasattr(libc, "syscall") and machine in _SYS_RENAMEAT2:
        sys_fn = libc.syscall
        sys_fn.restype = ctypes.c_long
        nr = ctypes.c_long(_SYS_RENAMEAT2[machine])
        at, flags = ctypes.c_int(_AT_FDCWD), ctypes.c_uint(_RENAME_NOREPLACE)

        def call_syscall(src: bytes, dst: bytes) -> int:
            rc = sys_fn(nr, at, ctypes.c_char_p(src), at, ctypes.c_char_p(dst), flags)
            return 0 if rc == 0 else get_errno()

        return "syscall", call_syscall
    return None, None


# How to call renameat2, looked up on the first rename: ctypes is not imported by a process
# that renames nothing (`retention status`, `--help`).
_UNKNOWN = "not looked up yet"
_rename_impl: str | None = _UNKNOWN
_rename_call: Callable[[bytes, bytes], int] | None = None


def _renameat2(src: bytes, dst: bytes) -> int:
    """Return 0 on success, else the errno. Raise `NotImplementedError` if unavailable."""
    global _rename_impl, _rename_call
    if _rename_impl == _UNKNOWN:
        _rename_impl, _rename_call = _load_renameat2()
    if _rename_impl is None or _rename_call is None:
        raise NotImplementedError
    return _rename_call(src, dst)


def rename_noreplace(src: StrPath, dst: StrPath) -> None:
    """Rename `src` to `dst` atomically, refusing to replace anything at `dst`.

    Raises `FileExistsError` (errno EEXIST, filename `dst`) if `dst` exists, whether file,
    directory (even empty, which plain ``rename`` would silently replace) or symlink; other
    failures raise `OSError` with errno set. Does not fsync: callers fsync the parent
    directories they need durable.

    Uses ``renameat2(RENAME_NOREPLACE)``. Where the kernel or file system lacks it (ENOSYS,
    or EINVAL from a file system that rejects the flag) it falls back to
    ``lexists(dst)`` then ``os.rename``: in that fallback a `dst` created by another process
    between the check and the rename can still be replaced. Callers that need the guarantee
    must hold a lock that excludes other writers of `dst`.
    """
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    try:
        err = _renameat2(src_b, dst_b)
    except NotImplementedError:
        err = errno.ENOSYS
    if err == 0:
        return
    if err == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), _display(dst))
    if err not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err), _display(src), None, _display(dst))
    # Fallback: racy check-then-rename (see docstring).
    if os.path.lexists(dst_b):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), _display(dst))
    os.rename(src_b, dst_b)


def ensure_dir(path: StrPath, mode: int = 0o700) -> bool:
    """Create `path` and any missing parents (like ``mkdir -p``), each with `mode`
    (subject to the umask), fsyncing the parent of every directory created.

    Returns True if it created at least one directory, False if `path` already existed as a
    directory. Raises `FileExistsError` / `NotADirectoryError` if a component is not a
    directory, `FsyncError` if a parent fsync fails, `OSError` otherwise.
    """
    p = os.path.abspath(os.fsencode(path))
    missing: list[bytes] = []
    cur = p
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created = False
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            # created concurrently by someone else: they fsync its parent, but we do too
            # since our callers rely on it being durable when we return
        else:
            created = True
        fsync_dir(os.path.dirname(d))
    return created
