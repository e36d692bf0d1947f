"""`LocalStore.measure` hashes exactly the bytes it always did.

Fingerprints are in signed manifests already: a measure made faster must give the same
digest, bytes, files and error texts. Each tree here is built with fixed modes (``chmod``,
whatever the umask) and fixed mtimes (``os.utime``, bottom-up, symlinks too), so its
fingerprint is a constant: the digests pinned below were computed by the measure of before
the per-directory speed-ups, and any change to a hashed byte fails here."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retention.store import _HELD_FDS, LocalStore, Measure

T_NS = 1_600_000_000_123_456_789  # every entry's mtime (ns)


def _settle(top: bytes) -> None:
    """Give every entry under ``top`` (and ``top``) the mtime `T_NS`, deepest first (a
    directory's mtime changes when its entries do), never through a symlink."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in dirnames + filenames:
            os.utime(dirpath + b"/" + name, ns=(T_NS, T_NS), follow_symlinks=False)
    os.utime(top, ns=(T_NS, T_NS), follow_symlinks=False)


def _file(path: bytes, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def _dir(path: bytes, mode: int = 0o755) -> None:
    os.mkdir(path)
    os.chmod(path, mode)


def _flat_tree(top: bytes) -> None:
    """The common run directory: files only, one of them not UTF-8."""
    _dir(top)
    _file(top + b"/MLmodel", b"m" * 300)
    _file(top + b"/conda.yaml", b"c" * 128, 0o600)
    _file(top + b"/model.pkl", b"p" * 1024)
    _file(top + b"/caf\xe9", b"latin-1 name")
    _settle(top)


def _nested_tree(top: bytes) -> None:
    """Files, nested directories (visited last name first), an empty directory, a symlink
    (hashed as a link, never followed), a FIFO, an executable, and names whose order as
    bytes differs from their order as text (``\\xff`` is not UTF-8; U+F8FF is)."""
    _dir(top)
    _file(top + b"/model.bin", b"x" * 700)
    _file(top + b"/empty", b"", 0o600)
    _file(top + b"/run.sh", b"#!/bin/sh\n", 0o755)
    _file(top + b"/\xff", b"ff")
    _file(top + b"/\xef\xa3\xbf", b"private use")
    _file(top + b"/caf\xc3\xa9", b"utf-8 name")
    os.symlink(b"model.bin", top + b"/link")
    os.mkfifo(top + b"/fifo")
    os.chmod(top + b"/fifo", 0o640)
    _dir(top + b"/a")
    _file(top + b"/a/z.csv", b"1,2\n")
    _dir(top + b"/b", 0o750)
    _dir(top + b"/b/deep")
    _file(top + b"/b/deep/log.txt", b"hello")
    _dir(top + b"/b/deep/void", 0o700)
    _dir(top + b"/b/\xfe")
    _file(top + b"/b/\xfe/x", b"x")
    _settle(top)


def _deep_tree(top: bytes, depth: int) -> None:
    """``depth`` nested directories ``d``, each holding a file ``f`` of its depth's size:
    deeper than `_HELD_FDS`, so the walk closes ancestors and reopens them through ``..``."""
    _dir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for k in range(depth):
            os.mkdir(b"d", 0o755, dir_fd=fd)
            os.chmod(b"d", 0o755, dir_fd=fd)
            f = os.open(b"f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"q" * k)
            os.close(f)
            os.chmod(b"f", 0o644, dir_fd=fd)
            nxt = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    _settle(top)


def _fields(m: Measure) -> tuple[Any, ...]:
    return (m.exists, m.bytes, m.files, m.fingerprint, m.error)


def _store(tmp_path: Path, build: Callable[[bytes], None]) -> LocalStore:
    build(os.fsencode(tmp_path / "run"))
    return LocalStore(tmp_path)


def test_flat_directory_hashes_its_records_byte_for_byte(tmp_path: Path) -> None:
    """The flat fast path (no subdirectory: the whole tree hashed in one call) hashes the
    top's record, then each entry's ``name NUL mode-octal size mtime NUL`` sorted by name
    bytes: spelled out here, and pinned."""
    m = _store(tmp_path, _flat_tree).measure(b"run")
    expected = (
        b"40755 0 %d\0" % T_NS
        + b"MLmodel\x00100644 300 %d\0" % T_NS
        + b"caf\xe9\x00100644 12 %d\0" % T_NS
        + b"conda.yaml\x00100600 128 %d\0" % T_NS
        + b"model.pkl\x00100644 1024 %d\0" % T_NS
    )
    assert m.fingerprint == hashlib.sha256(expected).hexdigest()
    assert _fields(m) == (
        True,
        300 + 128 + 1024 + 12,
        4,
        "d5c7fb6b7a4cc7a1196ca5f32ef62f56d46e7584f126b71ed25caf821d1b4ac7",
        None,
    )
    assert m.dev == os.lstat(tmp_path / "run").st_dev


def test_nested_tree_fingerprint_is_pinned(tmp_path: Path) -> None:
    """The walk (pre-order, entries sorted as bytes, subdirectories last name first,
    symlinks and FIFOs hashed as themselves, empty directories, non-UTF-8 names) gives the
    digest it gave before the speed-ups."""
    m = _store(tmp_path, _nested_tree).measure(b"run")
    assert _fields(m) == (
        True,
        700 + 0 + 10 + 2 + 11 + 10 + len(b"model.bin") + 0 + 4 + 5 + 1,
        11,  # the FIFO and the symlink count as files
        "5b6754497de392a10265c21f09697e76889834d8b2475268142dd5fe11487066",
        None,
    )


def test_tree_deeper_than_the_held_descriptors_is_pinned(tmp_path: Path) -> None:
    """A tree deeper than `_HELD_FDS` (ancestors closed, reopened through ``..``) is
    measured completely, to the same digest as before."""
    depth = _HELD_FDS + 6
    m = _store(tmp_path, lambda top: _deep_tree(top, depth)).measure(b"run")
    assert _fields(m) == (
        True,
        sum(range(depth)),
        depth,
        "47cdd3ff4f79920838bc829019c227c41d128ef91fa31dbaf02af1c8435d2e3d",
        None,
    )


def test_empty_directory_file_and_symlink_tops_are_pinned(tmp_path: Path) -> None:
    """A top that is an empty directory, a file, or a symlink (to a directory: measured as
    the link, never followed) hashes its own record only; a missing top does not exist."""
    root = os.fsencode(tmp_path)
    _dir(root + b"/empty")
    _file(root + b"/file", b"12345")
    _dir(root + b"/target")
    _file(root + b"/target/inside", b"not reached")
    os.symlink(b"target", root + b"/link")
    for name in (b"empty", b"file", b"link", b"target/inside", b"target"):
        os.utime(root + b"/" + name, ns=(T_NS, T_NS), follow_symlinks=False)
    store = LocalStore(tmp_path)
    assert _fields(store.measure(b"empty")) == (
        True,
        0,
        0,
        hashlib.sha256(b"40755 0 %d\0" % T_NS).hexdigest(),
        None,
    )
    assert _fields(store.measure(b"file")) == (
        True,
        5,
        1,
        hashlib.sha256(b"100644 5 %d\0" % T_NS).hexdigest(),
        None,
    )
    assert _fields(store.measure(b"link")) == (
        True,
        len(b"target"),
        1,
        hashlib.sha256(b"120777 6 %d\0" % T_NS).hexdigest(),
        None,
    )
    assert store.measure(b"absent") == Measure(exists=False)
    assert store.measure(b"file/below") == Measure(exists=False, error="Not a directory")


def test_unlistable_top_and_unstatable_entry_report_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors (injected: root reads everything) keep their texts and what is hashed: a top
    that cannot be listed hashes its own record only; an entry that cannot be stat'ed is
    left out (the others still counted) and the first such error reported."""
    store = _store(tmp_path, _flat_tree)
    top = os.fsencode(tmp_path / "run")
    real_listdir, real_stat = os.listdir, os.stat

    def no_listing(path: Any = None) -> list[Any]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "listdir", no_listing)
    assert _fields(store.measure(b"run")) == (
        True,
        0,
        0,
        hashlib.sha256(b"40755 0 %d\0" % T_NS).hexdigest(),
        f"cannot read {os.fsdecode(top)}: Permission denied",
    )
    monkeypatch.setattr(os, "listdir", real_listdir)

    def stat_refusing(name: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if name in (b"caf\xe9", b"model.pkl"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_stat(name, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_refusing)
    expected = (
        b"40755 0 %d\0" % T_NS
        + b"MLmodel\x00100644 300 %d\0" % T_NS
        + b"conda.yaml\x00100600 128 %d\0" % T_NS
    )
    assert _fields(store.measure(b"run")) == (
        True,
        428,
        2,
        hashlib.sha256(expected).hexdigest(),
        f"cannot stat {os.fsdecode(top)}/caf\\xe9: Permission denied",
    )


def test_measure_stays_a_frozen_dataclass() -> None:
    """`Measure`'s hand-written __init__ (no setattr per field) keeps what the generated
    one gave: defaults, keywords, equality and hash, frozen, `dataclasses.replace`."""
    m = Measure(True, 10, 2, "ab", None, 7)
    assert m == Measure(exists=True, bytes=10, files=2, fingerprint="ab", dev=7)
    assert hash(m) == hash(Measure(True, 10, 2, "ab", None, 7))
    assert Measure(False) == Measure(False, 0, 0, "", None, None)
    assert repr(m) == (
        "Measure(exists=True, bytes=10, files=2, fingerprint='ab', error=None, dev=7)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.bytes = 1  # type: ignore[misc]
    assert dataclasses.replace(m, files=3) == Measure(True, 10, 3, "ab", None, 7)
    assert [f.name for f in dataclasses.fields(Measure)] == [
        "exists",
        "bytes",
        "files",
        "fingerprint",
        "error",
        "dev",
    ]


def test_importing_the_store_does_not_load_hashlib() -> None:
    """hashlib (OpenSSL) is loaded by the first measure of a directory, not by importing
    `retention.store` (which `retention status` does)."""
    code = (
        "import sys, retention.store\nprint('hashlib' in sys.modules, '_hashlib' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
