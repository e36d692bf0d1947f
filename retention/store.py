"""The artifact store seam, and its local-filesystem implementation.

An artifact store measures an artifact directory, moves it into trash, moves it back, and
purges trash. Paths are bytes relative to the artifact root (names need not be UTF-8).
Nothing outside the artifact root is ever touched: a path that escapes it (``..``, an
absolute path elsewhere, or a symlinked parent leading out) is refused, and walks never
follow symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from journal import fsio
from retention.config import Config
from retention.errors import ConfigError, StorageError
from retention.layout import (
    TRASH_DIRNAME,
    is_trash_index_name,
    trash_index_rel,
    trash_root_rel,
    trash_tx_rel,
)


class OutsideRoot(ValueError):
    """The artifact path is not inside the artifact root."""


class UnsafeTrash(StorageError):
    """A directory of the trash is not a plain directory inside the artifact root."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"refusing to use the trash: {what}; nothing was moved or removed through it",
            hint="a symlink there could lead out of the artifact root: put the real directory"
            " back (see its TRASH.json) or remove the link, then run the command again",
        )


@dataclass(frozen=True, init=False)
class Measure:
    """What a directory looked like: ``exists`` False means nothing at that path."""

    exists: bool
    bytes: int = 0
    files: int = 0
    fingerprint: str = ""
    error: str | None = None  # set when the tree could not be read completely
    dev: int | None = None  # device of the top entry (a mount point has its own)

    def __init__(
        self,
        exists: bool,
        bytes: int = 0,
        files: int = 0,
        fingerprint: str = "",
        error: str | None = None,
        dev: int | None = None,
    ) -> None:
        # The generated __init__ of a frozen dataclass, written out: the fields go into the
        # instance's __dict__ directly, not through one object.__setattr__ call each (half
        # the cost of a measure's result; one per candidate directory). Still frozen.
        d = self.__dict__
        d["exists"] = exists
        d["bytes"] = bytes
        d["files"] = files
        d["fingerprint"] = fingerprint
        d["error"] = error
        d["dev"] = dev


def display(path: bytes | str) -> str:
    """A path for messages and JSON: valid UTF-8 always (bytes that are not UTF-8 appear as
    ``\\xff`` escapes; the exact bytes travel in dedicated ``*_raw`` fields)."""
    if isinstance(path, str):
        path = os.fsencode(path)
    return path.decode("utf-8", "backslashreplace")


def text_and_raw(path: bytes) -> tuple[str, bytes | None]:
    """A path as JSON carries it: readable text, plus the exact bytes only when they are
    not UTF-8 (lossless without making every path base64)."""
    try:
        return path.decode("utf-8"), None
    except UnicodeDecodeError:
        return path.decode("utf-8", "replace"), path


def ancestors(rel: bytes) -> list[bytes]:
    """Proper ancestors of a relative path: ``a/b/c`` -> ``a``, ``a/b``."""
    parts = rel.split(b"/")
    return [b"/".join(parts[:k]) for k in range(1, len(parts))]


_SCHEME = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*):")
_TRASH_B = os.fsencode(TRASH_DIRNAME)
_TRASH_SLASH = _TRASH_B + b"/"


@functools.lru_cache(maxsize=8)
def _root_bytes(root: Path) -> bytes:
    return os.fsencode(os.path.abspath(root))


def _normpath(p: bytes) -> bytes:
    # normpath is the costly step at a million runs; most paths are already normal.
    if b"//" in p or b"/./" in p or p.startswith(b"./") or p.endswith((b"/", b"/.")) or p == b".":
        return os.path.normpath(p)
    return p


def relative_artifact_path(root: Path, value: str | bytes) -> bytes:
    """Normalise a path (relative to ``root``, absolute, or a ``file://`` URI) to bytes
    relative to ``root``. Raises `OutsideRoot` when it would leave the root, name the root
    itself or the trash, has a ``..`` component or a NUL byte, or another URI scheme."""
    original = raw = os.fsencode(value) if isinstance(value, str) else value
    if b":" in raw:
        scheme = _SCHEME.match(raw)
        if scheme and scheme.group(1).lower() != b"file":
            # e.g. MLflow's "mlflow-artifacts:/..." or "s3://...": no directory under the
            # root; taken as a relative name it would look missing, and apply would orphan
            # the real one.
            raise OutsideRoot(
                f"{display(raw)}: unsupported URI scheme {display(scheme.group(1))!r} (only file:)"
            )
        if raw.startswith(b"file:"):
            try:
                u = urlparse(os.fsdecode(raw))
            except ValueError as exc:  # "file://[ab/x": an unclosed IPv6 host
                raise OutsideRoot(f"{display(raw)} is not a valid file: URI ({exc})") from None
            if u.netloc not in ("", "localhost"):
                raise OutsideRoot(f"{display(raw)} names another host ({u.netloc})")
            raw = os.fsencode(unquote(u.path))
    # Refused, not repaired: normalising exp1/../exp2/run-9 would quietly name another run's
    # directory, and a NUL byte makes every system call fail.
    if b"\0" in raw:
        raise OutsideRoot(f"{display(original)!r} contains a NUL byte")
    if b".." in raw and b".." in raw.split(b"/"):
        raise OutsideRoot(f"{display(original)} contains a '..' component")
    if raw.startswith(b"/"):
        root_b = _root_bytes(root)
        norm = _normpath(raw)
        if not norm.startswith(root_b + b"/"):
            raise OutsideRoot(f"{display(raw)} is outside the artifact root {root}")
        rel = norm[len(root_b) + 1 :]
    else:
        rel = _normpath(raw)
    if rel in (b".", b"") or rel.startswith(b"/"):
        raise OutsideRoot(f"{display(raw)} is outside the artifact root {root}")
    if rel.split(b"/", 1)[0] == _TRASH_B:
        raise OutsideRoot(f"{display(raw)} is inside the trash")
    return rel


def _parent(path: bytes) -> bytes:
    """`os.path.dirname` of an absolute path under the root, in normal form (the root is
    absolute and a relative path is normal: the parent is all before the last slash)."""
    return path[: path.rindex(b"/")] or b"/"


class LocalStore:
    """Artifact directories on a local filesystem under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self._root_b = os.fsencode(self.root)
        self._real_root = os.fsencode(os.path.realpath(self.root))
        self._parent_ok: dict[bytes, bool] = {}
        # `os.path.dirname` of the root joined with any one name
        self._root_parent = os.path.dirname(self._root_b + b"/x")
        self._trash_dev: int | None = None
        self._parent_dev: dict[bytes, int] = {}

    def abspath(self, rel: bytes) -> bytes:
        return self._root_b + b"/" + rel

    def parent_device(self, rel: bytes) -> int:
        """The device of ``rel``'s parent directory (``lstat``; raises `OSError`), looked up
        once per parent: keyed by the part of ``rel`` before its last "/", so that most
        paths cost a dict lookup."""
        head = rel.rpartition(b"/")[0]
        dev = self._parent_dev.get(head)
        if dev is None:
            dev = self._parent_dev[head] = os.lstat(_parent(self.abspath(rel))).st_dev
        return dev

    def trash_device(self) -> int:
        """The device of ``.trash`` (of the root before the first apply creates it): where
        a directory must be for one rename to move it into trash. Looked up once."""
        if self._trash_dev is None:
            trash = self.abspath(os.fsencode(TRASH_DIRNAME))
            self._trash_dev = os.lstat(trash if os.path.isdir(trash) else self.root).st_dev
        return self._trash_dev

    def check_contained(self, rel: bytes) -> None:
        """Raise `OutsideRoot` if a symlinked parent of ``rel`` leads out of the root.

        The final component may itself be a symlink: it is moved as a link, never followed.
        """
        # (Most paths are one name, whose parent is the same: computed once.)
        parent = os.path.dirname(self.abspath(rel)) if b"/" in rel else self._root_parent
        ok = self._parent_ok.get(parent)
        if ok is None:
            real = os.path.realpath(parent)
            ok = real == self._real_root or real.startswith(self._real_root + b"/")
            self._parent_ok[parent] = ok
        if not ok:
            raise OutsideRoot(
                f"{display(rel)}: a parent directory is a symlink leading out of the root"
            )

    def measure(self, rel: bytes, *, device: int | None = None) -> Measure:
        """Size, file count and a metadata fingerprint of the tree at ``rel`` (read-only).

        With ``device``, a directory on another device (a mount point) is not walked: its
        measure has an empty fingerprint (never a plan's) and says why in ``error``. Never
        follows symlinks. The fingerprint covers every entry's relative name, type,
        mode, size and mtime (not contents: reading every byte would cost more than the
        delete). Unreadable parts are reported in ``error``. Each directory is opened
        relative to its parent (`_DirPath`), so a tree deeper than PATH_MAX is measured like
        any other (one rename moves it, so plan must not refuse it).
        """
        top = self._root_b + b"/" + rel
        try:
            fd = os.open(top, _O_DIR)
        except FileNotFoundError:
            return Measure(False)
        except OSError as exc:  # not a directory (a file, a symlink), or unreadable
            return _measure_unopened(top, exc)
        st = os.fstat(fd)  # a directory (O_DIRECTORY): its record has size 0
        if device is not None and st.st_dev != device:
            os.close(fd)
            why = f"{_shown(top)} is on another filesystem (a mount point): not walked"
            return Measure(True, 0, 0, "", why, st.st_dev)
        sha256 = _SHA256 or _load_sha256()
        parts = [b"%o 0 %d\0" % (st.st_mode, st.st_mtime_ns)]
        try:
            subdirs, total, files, error = _hash_entries(fd, b"", top, parts)
        except OSError as exc:
            os.close(fd)
            why = f"cannot read {_shown(top)}: {exc.strerror}"
            return Measure(True, 0, 0, sha256(parts[0]).hexdigest(), why, st.st_dev)
        if not subdirs:  # most run directories: the whole tree hashed in one call
            os.close(fd)
            fingerprint = sha256(b"".join(parts)).hexdigest()
            return Measure(True, total, files, fingerprint, error or None, st.st_dev)
        h = sha256(b"".join(parts))
        total, files, problem = _measure_tree(fd, top, h, subdirs, total, files, error)
        return Measure(True, total, files, h.hexdigest(), problem, st.st_dev)


# hashlib.sha256 once the first measure has loaded it (`_load_sha256`): not at import, as
# OpenSSL's load is a few ms of every start-up (status and --help never measure).
_SHA256: Callable[[bytes], Any] | None = None


def _load_sha256() -> Callable[[bytes], Any]:
    global _SHA256
    import hashlib

    _SHA256 = hashlib.sha256
    return _SHA256


def _measure_unopened(top: bytes, open_error: OSError) -> Measure:
    """`LocalStore.measure` of ``top`` when it could not be opened as a directory: a file
    or a symlink (measured as one entry, never followed), or an unreadable directory."""
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return Measure(False)
    except OSError as exc:
        return Measure(False, error=f"{exc.strerror}")
    mode = st.st_mode
    is_dir = mode & 0o170000 == stat.S_IFDIR
    h = (_SHA256 or _load_sha256())(
        b"%o %d %d\0" % (mode, 0 if is_dir else st.st_size, st.st_mtime_ns)
    )
    if not is_dir:
        return Measure(True, st.st_size, 1, h.hexdigest(), dev=st.st_dev)
    why = f"cannot read {_shown(top)}: {open_error.strerror}"
    return Measure(True, 0, 0, h.hexdigest(), why, dev=st.st_dev)


class LocalTrashStore(LocalStore):
    """`LocalStore` plus the moves of a transaction. See `participants.ArtifactStore`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._dirty: set[bytes] = set()
        self._tx_ok: set[bytes] = set()  # transaction directories checked by _verify_tx_dir

    def verify_trash(self) -> None:
        """Refuse a ``.trash`` that is not a real directory inside the root (a symlink there
        would send moves, and purge's removals, out of the root). Raises `OutsideRoot`."""
        trash = self.abspath(os.fsencode(TRASH_DIRNAME))
        try:
            st = os.lstat(trash)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise OutsideRoot(f"{display(trash)} is not a directory (a symlink?)")
        real = os.path.realpath(trash)
        if os.path.dirname(real) != self._real_root:
            raise OutsideRoot(f"{display(trash)} resolves outside the artifact root")

    def _verify_tx_dir(self, rel: bytes) -> None:
        """Before anything opens, moves from or removes a path under ``.trash/<txid>``:
        refuse (`UnsafeTrash`) when that directory is not a plain directory (a symlink to a
        directory elsewhere would carry directories from outside into the root, or remove
        them). Absent is fine. Checked with ``lstat`` once per transaction directory and
        again after every `sync` (so a batch never runs on a stale answer)."""
        if not rel.startswith(_TRASH_SLASH):  # (most calls: a run's home, checked at once)
            return
        parts = rel.split(b"/", 2)
        txdir = parts[0] + b"/" + parts[1]
        if txdir in self._tx_ok:
            return
        problem = tx_dir_problem(self.abspath(txdir))
        if problem is not None:
            raise UnsafeTrash(f"{display(self.abspath(txdir))} {problem}")
        self._tx_ok.add(txdir)

    def lexists(self, rel: bytes) -> bool:
        self._verify_tx_dir(rel)
        return os.path.lexists(self.abspath(rel))

    def device(self, rel: bytes) -> int | None:
        try:
            return os.lstat(self.abspath(rel)).st_dev
        except (FileNotFoundError, NotADirectoryError):
            return None

    def same_filesystem(self, rel: bytes, dev_of_rel: int | None = None) -> bool:
        """Whether ``rel`` can be renamed into trash (same device as the trash).
        ``dev_of_rel``: its device if already known (from `measure`)."""
        dev = self.parent_device(rel)
        # A directory that is itself a mount point has its own device: check it too.
        if dev_of_rel is None:
            dev_of_rel = os.lstat(self.abspath(rel)).st_dev
        return dev == self.trash_device() and dev_of_rel == dev

    def ensure_dir(self, rel: bytes) -> None:
        fsio.ensure_dir(self.abspath(rel), 0o755)

    def move(self, src: bytes, dst: bytes) -> None:
        """Rename ``src`` to ``dst`` (both relative to the root); never replaces ``dst``.

        One atomic rename (never a copy): raises `OSError` (``EXDEV`` for another
        filesystem, ``FileExistsError`` if ``dst`` exists) and then changes nothing. Not
        durable until `sync`.
        """
        self._verify_tx_dir(src)
        self._verify_tx_dir(dst)
        a, b = self.abspath(src), self.abspath(dst)
        fsio.rename_noreplace(a, b)
        self._dirty.add(_parent(a))  # to fsync
        self._dirty.add(_parent(b))

    def describe(self, rel: bytes) -> str:
        """Where ``rel`` is, for messages (readable even when not UTF-8)."""
        return display(self.abspath(rel))

    def write_index(self, txid: str, data: bytes) -> None:
        """Create ``.trash/<txid>/`` and write its TRASH.json durably (before any move)."""
        self.ensure_dir(trash_tx_rel(txid))
        self._verify_tx_dir(trash_tx_rel(txid))
        fsio.write_atomic(self.abspath(trash_index_rel(txid)), data, 0o644)

    def purge_tx(self, txid: str, advance: Callable[[], None] | None = None) -> None:
        """Remove ``.trash/<txid>`` and everything in it; a missing file is fine; never
        follows symlinks; a directory we may not write into is made writable by its owner
        first (as ``rm -rf`` cannot). Not durable until `sync_trash`. Raises `OSError`,
        or `UnsafeTrash` (nothing removed) when ``.trash/<txid>`` is a symlink. Each run's
        slot is removed on its own first, a few at a time (`_rmtree_all`), and
        ``advance()``, if given, called after each (a progress line)."""
        self._tx_ok.clear()  # look again now, right before removing
        self._verify_tx_dir(trash_tx_rel(txid))
        path = self.abspath(trash_tx_rel(txid))
        try:
            slots = [e.name for e in os.scandir(path) if not is_trash_index_name(e.name)]
        except OSError:  # absent, not a directory, unreadable: `_rmtree` deals with it
            slots = []
        _rmtree_all([path + b"/" + name for name in slots], advance)
        _rmtree(path)

    def sync_trash(self) -> None:
        """Make removals from ``.trash`` durable (one fsync)."""
        root = self.abspath(trash_root_rel())
        if os.path.isdir(root):
            fsio.fsync_dir(root)

    def drop_tx_dir(self, txid: str) -> bool:
        """Remove ``.trash/<txid>`` if it holds nothing but our index (TRASH.json and any
        temp file a kill left while writing it), then fsync ``.trash``; returns whether it
        did. Anything else found there is left alone: we remove only what we put there.
        Idempotent (absent is fine)."""
        self._tx_ok.clear()
        self._verify_tx_dir(trash_tx_rel(txid))
        txdir = self.abspath(trash_tx_rel(txid))
        try:
            names = os.listdir(txdir)
        except FileNotFoundError:
            return False
        if not all(is_trash_index_name(n) for n in names):
            return False
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(txdir + b"/" + n)
        try:
            os.rmdir(txdir)
        except FileNotFoundError:
            return False
        fsio.fsync_dir(self.abspath(trash_root_rel()))
        return True

    def tx_dirs_holding_moves(self) -> list[str]:
        """Txids (names under ``.trash``) whose directory holds anything but its index.
        Read-only; never follows a symlink (an unsafe entry is `trash_problems`' to report)."""
        trash = self.abspath(trash_root_rel())
        out = []
        for name in _trash_names(trash):
            path = trash + b"/" + name
            if tx_dir_problem(path) is not None:
                continue
            try:
                inside = os.listdir(path)
            except (NotADirectoryError, FileNotFoundError):
                continue
            if any(not is_trash_index_name(n) for n in inside):
                out.append(os.fsdecode(name))
        return out

    def sync(self) -> int:
        """fsync every directory a move touched since the last sync; returns how many."""
        dirs = sorted(self._dirty)
        for d in dirs:
            fsio.fsync_dir(d)
        self._dirty.clear()
        self._tx_ok.clear()
        return len(dirs)


def tx_dir_problem(path: bytes) -> str | None:
    """Why ``path`` (a ``.trash/<txid>`` directory) must not be used, or None when it is a
    plain directory or absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return f"is a symlink (to {display(os.readlink(path))}), not a directory"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    return None


def _trash_names(trash: bytes) -> list[bytes]:
    """The entries of a ``.trash`` directory, sorted (none when it is absent)."""
    try:
        return sorted(os.listdir(trash))
    except (FileNotFoundError, NotADirectoryError):
        return []


def trash_problems(root: Path) -> list[tuple[bytes, str]]:
    """Entries of ``<root>/.trash`` that are not plain directories: (relative path, why).
    Read-only; for `retention check` and `retention status`."""
    trash = os.fsencode(root) + b"/" + _TRASH_B
    out = []
    for name in _trash_names(trash):
        problem = tx_dir_problem(trash + b"/" + name)
        if problem is not None:
            out.append((_TRASH_B + b"/" + name, problem))
    return out


def require_artifact_root(cfg: Config) -> None:
    """Refuse a missing artifact root: every candidate would look as if it had no directory,
    and apply would delete rows whose directories live elsewhere."""
    root = Path(cfg.artifact_root)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise ConfigError(
            f"artifact root {root} {what} (artifacts.root, from {cfg.sources['artifact_root']})",
            hint="point artifacts.root (or --artifact-root) at the directory holding the runs'"
            " artifacts",
        )


# -- walking by descriptors ----------------------------------------------------------------

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Descriptors a walk keeps open at most (ordinary trees never reach it): deeper ancestors
# are closed and reopened through ".." on the way back up, so that a tree thousands of
# levels deep needs neither that many descriptors nor paths longer than one name.
_HELD_FDS = 64


class _DirPath:
    """The directories from a walk's top down to the current one, each opened relative to
    its parent (``openat``, ``O_NOFOLLOW``: never through a symlink), so that no system call
    of the walk takes a path longer than one name and PATH_MAX never applies.

    At most `_HELD_FDS` descriptors stay open. An ancestor closed to stay under that is
    reopened through ``..`` of its child when the walk comes back up, and must then be the
    same directory (device and inode): if the tree was moved meanwhile the walk stops with
    an `OSError` instead of going on somewhere else. Owns every descriptor it holds."""

    def __init__(self, fd: int) -> None:
        self.fds = [fd]
        self.ids: list[tuple[int, int] | None] = [None]  # set when the descriptor is closed

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def descend(self, name: bytes | str) -> None:
        """Open ``name`` in the current directory and make it the current one. Raises
        `OSError` (nothing changed): ``ELOOP``/``ENOTDIR`` for a symlink or a non-directory."""
        self.fds.append(os.open(name, _O_DIR, dir_fd=self.fds[-1]))
        self.ids.append(None)
        k = len(self.fds) - 1 - _HELD_FDS
        if k >= 0 and self.fds[k] >= 0:
            st = os.fstat(self.fds[k])
            self.ids[k] = (st.st_dev, st.st_ino)
            os.close(self.fds[k])
            self.fds[k] = -1

    def ascend(self) -> None:
        """Close the current directory; its parent becomes the current one."""
        fd = self.fds.pop()
        self.ids.pop()
        try:
            if self.fds and self.fds[-1] < 0:
                parent = os.open(b"..", _O_DIR, dir_fd=fd)
                st = os.fstat(parent)
                if (st.st_dev, st.st_ino) != self.ids[-1]:
                    os.close(parent)
                    raise OSError(errno.ESTALE, "a directory was moved during the walk")
                self.fds[-1] = parent
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)
        self.fds.clear()
        self.ids.clear()


def _shown(path: bytes) -> str:
    """A path for a message; the middle of one longer than PATH_MAX is elided."""
    if len(path) > 1024:
        path = path[:480] + b"/.../" + path[-480:]
    return display(path)


# os.fsencode's encoding and error handler, for callers that encode a name per run without
# its call (``name.encode(FS_ENCODING, FS_ERRORS)`` is ``os.fsencode(name)`` for a str).
FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _hash_entries(
    fd: int, rel: bytes, top: bytes, parts: list[bytes]
) -> tuple[list[bytes], int, int, str]:
    """Append the records of the entries of the directory open at ``fd`` (``rel`` under the
    measured top), sorted by name bytes, to ``parts`` (the bytes to hash, in order). Returns
    (its subdirectories' names, bytes, files, first error or ""). Raises `OSError` when the
    directory cannot be listed (nothing appended then)."""
    listed = os.listdir(fd)
    if not listed:
        return [], 0, 0, ""
    # A descriptor lists names as str (surrogate-escaped): back to the exact bytes, all in
    # one encode (a name holds neither NUL nor "/", so splitting at NUL gives each name's
    # bytes, as os.fsencode of each would), sorted as bytes (not as text: a name that is
    # not UTF-8 sorts elsewhere as text, and the fingerprint would change).
    names = "\0".join(listed).encode(FS_ENCODING, FS_ERRORS).split(b"\0")
    names.sort()
    subdirs = []
    nbytes = nfiles = 0
    error = ""
    prefix = rel + b"/" if rel else b""
    append = parts.append
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            error = error or f"cannot stat {_shown(top + b'/' + prefix + name)}: {exc.strerror}"
            continue
        mode = st.st_mode
        if mode & 0o170000 == 0o040000:  # S_IFDIR
            append(b"%s%s\0%o 0 %d\0" % (prefix, name, mode, st.st_mtime_ns))
            subdirs.append(name)
        else:
            size = st.st_size
            append(b"%s%s\0%o %d %d\0" % (prefix, name, mode, size, st.st_mtime_ns))
            nfiles += 1
            nbytes += size
    return subdirs, nbytes, nfiles, error


def _measure_tree(
    fd: int, top: bytes, h: Any, subdirs: list[bytes], total: int, files: int, error: str
) -> tuple[int, int, str | None]:
    """Hash every entry under the subdirectories ``subdirs`` of the directory open at
    ``fd`` (``top``, whose own entries are hashed already: ``total`` bytes, ``files``
    files, ``error``) into ``h``; closes ``fd``. The walk and the bytes hashed are exactly
    those of the path-based walk that made the manifests already signed (pre-order; a
    directory's entries sorted by name bytes; subdirectories visited last name first), so
    their fingerprints stay valid. Returns (bytes, files, first error or None)."""
    dirs = _DirPath(fd)
    pending, rels = [subdirs], [b""]
    parts: list[bytes] = []
    try:
        while pending:
            if not pending[-1]:
                pending.pop()
                rels.pop()
                if pending:
                    dirs.ascend()
                continue
            name = pending[-1].pop()  # last name first, as the path-based walk's stack
            rel = rels[-1] + b"/" + name if rels[-1] else name
            try:
                dirs.descend(name)
            except OSError as exc:
                error = error or f"cannot read {_shown(top + b'/' + rel)}: {exc.strerror}"
                continue
            try:
                sub, nbytes, nfiles, why = _hash_entries(dirs.fd, rel, top, parts)
            except OSError as exc:
                why, sub, nbytes, nfiles = (
                    f"cannot read {_shown(top + b'/' + rel)}: {exc.strerror}",
                    [],
                    0,
                    0,
                )
            # One update per directory: the same bytes in the same order as one per entry
            # (so the same digest), without holding a huge tree's records at once.
            h.update(b"".join(parts))
            parts.clear()
            total, files, error = total + nbytes, files + nfiles, error or why
            pending.append(sub)
            rels.append(rel)
    except OSError as exc:  # the tree moved under the walk (see `_DirPath.ascend`)
        error = error or f"cannot read {_shown(top)}: {exc.strerror}"
    finally:
        dirs.close()
    return total, files, error or None


def _rmtree(path: bytes) -> None:
    """Remove ``path`` and everything under it, as ``rm -rf`` would, but: never follows a
    symlink (one is removed as a link); a missing entry is fine (absent ``path`` too); a
    directory we may not read, search or write is first made ``u+rwx`` (we own what we put
    in trash, and ``rm -rf`` stops there); and any depth: every directory is opened
    relative to its parent (`_DirPath`), so a tree deeper than PATH_MAX is removed like any
    other (``shutil.rmtree`` recurses, which a tree 1000 levels deep also defeats). Raises
    `OSError` for anything else (an immutable file, ``EBUSY``): what could be removed is."""
    parent, name = os.path.split(path)
    try:
        dirs = _DirPath(os.open(parent or b".", _O_DIR))
    except FileNotFoundError:
        return
    try:
        try:
            st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            _retry_in(dirs.fd, functools.partial(os.unlink, name, dir_fd=dirs.fd))
            return
        if not _descend_fixing(dirs, name):
            return
        names: list[bytes | str] = [name]
        pending = [_entries(dirs.fd)]
        while pending:
            if pending[-1]:
                entry, is_dir = pending[-1].pop()
                if is_dir and _descend_fixing(dirs, entry):
                    names.append(entry)
                    pending.append(_entries(dirs.fd))
                elif not is_dir:
                    _retry_in(dirs.fd, functools.partial(os.unlink, entry, dir_fd=dirs.fd))
                continue
            pending.pop()
            dirs.ascend()
            done = names.pop()
            _retry_in(dirs.fd, functools.partial(os.rmdir, done, dir_fd=dirs.fd))
    finally:
        dirs.close()


# Trees `_rmtree_all` removes at once. unlink and rmdir release the GIL and mostly wait
# for the filesystem's journal: four at a time removed a trash of run directories about
# twice as fast as one (and than ``rm -rf``) on the project's 2-core machine.
RM_THREADS = 4


def _rmtree_all(paths: list[bytes], advance: Callable[[], None] | None = None) -> None:
    """`_rmtree` each of ``paths`` (independent trees: none inside another), `RM_THREADS`
    at a time, each thread taking the next path when done; ``advance()`` after each (under
    a lock). Every tree is attempted; then the first error (in ``paths`` order) is raised."""
    if len(paths) < 2 * RM_THREADS:
        for p in paths:
            _rmtree(p)
            if advance is not None:
                advance()
        return
    import threading

    lock = threading.Lock()
    todo = iter(enumerate(paths))
    errors: dict[int, Exception] = {}

    def work() -> None:
        while True:
            with lock:
                nxt = next(todo, None)
            if nxt is None:
                return
            k, p = nxt
            try:
                _rmtree(p)
            except Exception as exc:  # an OSError; a bug too, raised in the caller's thread
                with lock:
                    errors[k] = exc
            if advance is not None:
                with lock:
                    advance()

    threads = [
        threading.Thread(target=work, name=f"retention-rm-{n}", daemon=True)
        for n in range(RM_THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[min(errors)]


def _entries(fd: int) -> list[tuple[str, bool]]:
    """(name, is a real directory) of each entry of the directory open at ``fd``; the type
    comes from the directory itself (``d_type``), an ``lstat`` only where it does not say
    (which needs search permission: made ``u+rwx`` then)."""
    for attempt in range(2):
        try:
            with os.scandir(fd) as it:
                return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        except PermissionError:
            if attempt:
                raise
            _make_accessible(fd)
    return []  # pragma: no cover - the loop returns or raises


def _make_accessible(fd: int) -> None:
    """``chmod u+rwx`` the directory open at ``fd``."""
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_IRWXU)


def _retry_in(fd: int, op: Callable[[], None]) -> None:
    """``op`` (an unlink or rmdir in the directory open at ``fd``); after a permission
    error, once more with that directory made accessible. Gone already is fine."""
    try:
        op()
    except FileNotFoundError:
        return
    except PermissionError:
        _make_accessible(fd)
        with contextlib.suppress(FileNotFoundError):
            op()


def _descend_fixing(dirs: _DirPath, name: bytes | str) -> bool:
    """`_DirPath.descend` into ``name``, a directory we may not read or search made
    ``u+rwx`` first (its parent too); False when it is gone. Something put there instead
    of the directory (a file, a symlink) is unlinked, never followed, and False returned."""
    for attempt in range(3):
        try:
            dirs.descend(name)
            return True
        except FileNotFoundError:
            return False
        except PermissionError:
            if attempt == 0:
                _make_accessible(dirs.fd)  # the parent may lack search permission
                continue
            if attempt == 1:
                st = os.stat(name, dir_fd=dirs.fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    _chmod_dir_in(dirs.fd, name, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
                    continue
            raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            _retry_in(dirs.fd, functools.partial(os.unlink, name, dir_fd=dirs.fd))
            return False
    return False  # pragma: no cover - the loop returns or raises


def _chmod_dir_in(fd: int, name: bytes | str, mode: int) -> None:
    """chmod the directory ``name`` in the directory open at ``fd``, never through a
    symlink put there meanwhile (``O_PATH`` + ``/proc/self/fd`` where ``fchmodat`` cannot
    refuse symlinks itself)."""
    try:
        os.chmod(name, mode, dir_fd=fd, follow_symlinks=False)
    except NotImplementedError:
        pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.chmod(f"/proc/self/fd/{pfd}", mode)
        finally:
            os.close(pfd)
