"""The artifact store seam, and its local-filesystem implementation.

An artifact store measures an artifact directory, moves it into trash, moves it back, and
purges trash. Paths are bytes relative to the artifact root (names need not be UTF-8).
Nothing outside the artifact root is ever touched: a path that escapes it (``..``, an
absolute path elsewhere, or a symlinked parent leading out) is refused, and walks never
follow symlinks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
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


@dataclass(frozen=True)
class Measure:
    """What a directory looked like: ``exists`` False means nothing at that path."""

    exists: bool
    bytes: int = 0
    files: int = 0
    fingerprint: str = ""
    error: str | None = None  # set when the tree could not be read completely
    dev: int | None = None  # device of the top entry (a mount point has its own)


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
            u = urlparse(os.fsdecode(raw))
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


class LocalStore:
    """Artifact directories on a local filesystem under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self._root_b = os.fsencode(self.root)
        self._real_root = os.fsencode(os.path.realpath(self.root))
        self._parent_ok: dict[bytes, bool] = {}

    def abspath(self, rel: bytes) -> bytes:
        return self._root_b + b"/" + rel

    def check_contained(self, rel: bytes) -> None:
        """Raise `OutsideRoot` if a symlinked parent of ``rel`` leads out of the root.

        The final component may itself be a symlink: it is moved as a link, never followed.
        """
        parent = os.path.dirname(self.abspath(rel))
        ok = self._parent_ok.get(parent)
        if ok is None:
            real = os.path.realpath(parent)
            ok = real == self._real_root or real.startswith(self._real_root + b"/")
            self._parent_ok[parent] = ok
        if not ok:
            raise OutsideRoot(
                f"{display(rel)}: a parent directory is a symlink leading out of the root"
            )

    def measure(self, rel: bytes) -> Measure:
        """Size, file count and a metadata fingerprint of the tree at ``rel`` (read-only).

        Walks with ``lstat`` and never follows symlinks. The fingerprint covers every
        entry's relative name, type, mode, size and mtime (not contents: reading every byte
        would cost more than the delete). Unreadable parts are reported in ``error``.
        """
        top = self.abspath(rel)
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            return Measure(exists=False)
        except OSError as exc:
            return Measure(exists=False, error=f"{exc.strerror}")
        h = hashlib.sha256()
        total = files = 0
        error: str | None = None
        h.update(
            b"%o %d %d\0"
            % (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime_ns)
        )
        if not stat.S_ISDIR(st.st_mode):
            total = st.st_size
            return Measure(True, total, 1, h.hexdigest(), dev=st.st_dev)
        stack = [b""]
        while stack:
            sub = stack.pop()
            path = top + (b"/" + sub if sub else b"")
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                error = error or f"cannot read {display(path)}: {exc.strerror}"
                continue
            for e in entries:
                name = sub + b"/" + e.name if sub else e.name
                try:
                    est = e.stat(follow_symlinks=False)
                except OSError as exc:
                    error = error or f"cannot stat {display(e.path)}: {exc.strerror}"
                    continue
                is_dir = stat.S_ISDIR(est.st_mode)
                size = 0 if is_dir else est.st_size
                h.update(name + b"\0%o %d %d\0" % (est.st_mode, size, est.st_mtime_ns))
                if is_dir:
                    stack.append(name)
                else:
                    files += 1
                    total += size
        return Measure(True, total, files, h.hexdigest(), error, dev=st.st_dev)


class LocalTrashStore(LocalStore):
    """`LocalStore` plus the moves of a transaction. See `participants.ArtifactStore`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._dirty: set[bytes] = set()
        self._tx_ok: set[bytes] = set()  # transaction directories checked by _verify_tx_dir
        self._trash_dev: int | None = None
        self._parent_dev: dict[bytes, int] = {}

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
        parts = rel.split(b"/", 2)
        if len(parts) < 2 or parts[0] != _TRASH_B:
            return
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

    def same_filesystem(self, rel: bytes, dev_of_rel: int | None = None) -> bool:
        """Whether ``rel`` can be renamed into trash (same device as the trash).
        ``dev_of_rel``: its device if already known (from `measure`)."""
        if self._trash_dev is None:
            trash = self.abspath(os.fsencode(TRASH_DIRNAME))
            self._trash_dev = os.lstat(trash if os.path.isdir(trash) else self.root).st_dev
        parent = os.path.dirname(self.abspath(rel))
        dev = self._parent_dev.get(parent)
        if dev is None:
            dev = self._parent_dev[parent] = os.lstat(parent).st_dev
        # A directory that is itself a mount point has its own device: check it too.
        if dev_of_rel is None:
            dev_of_rel = os.lstat(self.abspath(rel)).st_dev
        return dev == self._trash_dev and dev_of_rel == dev

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
        self._dirty.add(os.path.dirname(a))
        self._dirty.add(os.path.dirname(b))

    def describe(self, rel: bytes) -> str:
        """Where ``rel`` is, for messages (readable even when not UTF-8)."""
        return display(self.abspath(rel))

    def write_index(self, txid: str, data: bytes) -> None:
        """Create ``.trash/<txid>/`` and write its TRASH.json durably (before any move)."""
        self.ensure_dir(trash_tx_rel(txid))
        self._verify_tx_dir(trash_tx_rel(txid))
        fsio.write_atomic(self.abspath(trash_index_rel(txid)), data, 0o644)

    def purge_tx(self, txid: str) -> None:
        """Remove ``.trash/<txid>`` and everything in it; a missing file is fine; never
        follows symlinks; a directory we may not write into is made writable by its owner
        first (as ``rm -rf`` cannot). Not durable until `sync_trash`. Raises `OSError`,
        or `UnsafeTrash` (nothing removed) when ``.trash/<txid>`` is a symlink."""
        self._tx_ok.clear()  # look again now, right before removing
        self._verify_tx_dir(trash_tx_rel(txid))
        _rmtree(self.abspath(trash_tx_rel(txid)))

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
        try:
            names = sorted(os.listdir(trash))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for name in names:
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


def trash_problems(root: Path) -> list[tuple[bytes, str]]:
    """Entries of ``<root>/.trash`` that are not plain directories: (relative path, why).
    Read-only; for `retention check` and `retention status`."""
    trash = os.fsencode(root) + b"/" + _TRASH_B
    try:
        names = sorted(os.listdir(trash))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
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


def _rmtree(path: bytes) -> None:
    def onerror(func: Callable[..., Any], p: Any, exc_info: tuple[Any, ...]) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError):
            parent = os.path.dirname(p)
            os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | stat.S_IRWXU)
                shutil.rmtree(p, onerror=onerror)
            else:
                func(p)
            return
        raise exc

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=onerror)
