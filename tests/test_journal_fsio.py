"""fsio: atomic replace, no-replace rename, mkdir -p, and the fsync counters."""

import errno
import os
import stat
from pathlib import Path

import pytest

from journal import fsio
from journal.errors import FsyncError
from journal.fsio import ensure_dir, fsync_dir, fsync_file, rename_noreplace, write_atomic


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_write_atomic_creates_file_with_exact_content_and_mode_despite_umask(
    tmp_path: Path,
) -> None:
    target = tmp_path / "state.bin"
    old_umask = os.umask(0o077)
    try:
        write_atomic(target, b"hello\x00world", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"hello\x00world"
    assert _mode(target) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["state.bin"]  # no temp file left


def test_write_atomic_replaces_content_and_mode_and_fsyncs_file_and_dir(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old content that is longer")
    target.chmod(0o666)
    before = fsio.stats.copy()
    write_atomic(str(target), b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert fsio.stats["fsync_file"] - before["fsync_file"] == 1
    assert fsio.stats["fsync_dir"] - before["fsync_dir"] == 1
    assert sorted(os.listdir(tmp_path)) == ["state.bin"]


def test_write_atomic_accepts_bytes_path_and_calls_hook_before_rename(tmp_path: Path) -> None:
    target = tmp_path / "b.bin"
    target.write_bytes(b"old")
    seen: list[bytes] = []
    write_atomic(
        os.fsencode(target), b"new", before_rename=lambda: seen.append(target.read_bytes())
    )
    assert seen == [b"old"]  # at hook time the old content is still in place
    assert target.read_bytes() == b"new"


def test_write_atomic_error_keeps_errno_type_and_names_step_and_path(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "f"
    with pytest.raises(FileNotFoundError) as ei:
        write_atomic(target, b"x")
    assert ei.value.errno == errno.ENOENT
    assert "create temp file" in str(ei.value)
    assert str(target) in str(ei.value)


def test_rename_noreplace_refuses_existing_empty_directory_and_leaves_both(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "inner").write_text("payload")
    dst = tmp_path / "dst"
    dst.mkdir()  # plain os.rename would silently replace this empty directory
    with pytest.raises(FileExistsError) as ei:
        rename_noreplace(src, dst)
    assert ei.value.errno == errno.EEXIST
    assert ei.value.filename == str(dst)
    assert (src / "inner").read_text() == "payload"
    assert dst.is_dir() and os.listdir(dst) == []


def test_rename_noreplace_refuses_existing_file_and_dangling_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_text("new")
    dst = tmp_path / "dst"
    dst.write_text("old")
    with pytest.raises(FileExistsError):
        rename_noreplace(str(src), str(dst))
    assert src.read_text() == "new"
    assert dst.read_text() == "old"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        rename_noreplace(os.fsencode(src), os.fsencode(link))
    assert link.is_symlink() and src.exists()


def test_rename_noreplace_moves_directory_when_destination_absent(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.mkdir()
    (src / "f").write_text("x")
    dst = tmp_path / "b"
    rename_noreplace(src, dst)
    assert not src.exists()
    assert (dst / "f").read_text() == "x"


def test_rename_noreplace_missing_source_raises_oserror_with_errno(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        rename_noreplace(tmp_path / "nope", tmp_path / "dst")
    assert ei.value.errno == errno.ENOENT


def test_rename_noreplace_fallback_without_renameat2_still_refuses_and_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forces the check-then-rename fallback (used where renameat2 is unsupported)."""
    monkeypatch.setattr(fsio, "_rename_impl", None)
    src = tmp_path / "src"
    src.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(src, dst)
    assert src.is_dir() and dst.is_dir()
    rename_noreplace(src, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir() and not src.exists()


def test_fsync_counters_count_file_and_dir_fsyncs(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    before = fsio.stats.copy()
    with open(f, "rb+") as fh:
        fsync_file(fh)
        fsync_file(fh.fileno())
    fsync_dir(tmp_path)
    fsync_dir(os.fsencode(tmp_path))
    assert fsio.stats["fsync_file"] - before["fsync_file"] == 2
    assert fsio.stats["fsync_dir"] - before["fsync_dir"] == 2


def test_failed_fsync_raises_fsync_error_not_retried(tmp_path: Path) -> None:
    r, w = os.pipe()  # fsync on a pipe fails with EINVAL
    try:
        with pytest.raises(FsyncError) as ei:
            fsync_file(r)
        assert ei.value.errno == errno.EINVAL
        assert "fsync" in str(ei.value)
    finally:
        os.close(r)
        os.close(w)


def test_fsync_dir_of_missing_directory_is_plain_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "gone")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(f)


def test_ensure_dir_creates_parents_fsyncing_each_parent_and_reports_creation(
    tmp_path: Path,
) -> None:
    target = tmp_path / "a" / "b" / "c"
    before = fsio.stats["fsync_dir"]
    assert ensure_dir(target) is True
    assert target.is_dir()
    assert _mode(target) == 0o700 & ~_umask()
    assert fsio.stats["fsync_dir"] - before == 3  # one parent fsync per directory created
    before = fsio.stats["fsync_dir"]
    assert ensure_dir(str(target)) is False
    assert fsio.stats["fsync_dir"] == before


def test_ensure_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        ensure_dir(tmp_path / "f" / "sub")
    with pytest.raises(FileExistsError):
        ensure_dir(tmp_path / "f")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_write_atomic_without_replace_never_replaces_and_leaves_no_temp(tmp_path) -> None:
    import pytest

    from journal import fsio

    target = tmp_path / "key"
    fsio.write_atomic(target, b"first", 0o600, replace=False)
    with pytest.raises(FileExistsError):
        fsio.write_atomic(target, b"second", 0o600, replace=False)
    assert target.read_bytes() == b"first"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
