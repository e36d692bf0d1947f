"""What apply's speed-ups (issue 13) must not change: a failpoint still reads the
environment at every call, and a directory's fingerprint is still the same bytes."""

import hashlib
import os
from pathlib import Path

import pytest

from journal.failpoints import declare, failpoint, hits, reset_hits
from retention.store import LocalStore


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAILPOINT", "FAILPOINT_LOG", "FAILPOINT_PAUSE"):
        monkeypatch.delenv(name, raising=False)


def test_failpoint_sees_the_environment_change_between_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The unarmed fast path looks at os.environ's own dict: what monkeypatch (or any code
    # assigning os.environ[...]) sets or removes after a thousand unarmed calls is seen
    # at the very next call, and hits are counted on the fast path too.
    declare("test.speed.point")
    reset_hits()
    for _ in range(1000):
        failpoint("test.speed.point")
    assert hits()["test.speed.point"] == 1000
    log = tmp_path / "fp.log"
    monkeypatch.setenv("FAILPOINT_LOG", str(log))
    failpoint("test.speed.point")
    monkeypatch.delenv("FAILPOINT_LOG")
    failpoint("test.speed.point")
    assert log.read_text().splitlines() == ["test.speed.point"]
    monkeypatch.setenv("FAILPOINT", "test.speed.point@x")  # malformed: raises, not ignored
    with pytest.raises(ValueError, match="FAILPOINT"):
        failpoint("test.speed.point")
    monkeypatch.delenv("FAILPOINT")
    monkeypatch.setenv("FAILPOINT_PAUSE", "test.speed.point@0")  # only PAUSE set: read too
    with pytest.raises(ValueError, match="1-based"):
        failpoint("test.speed.point")
    assert hits()["test.speed.point"] == 1004


def _reference_fingerprint(top: bytes) -> str:
    """The path-based walk that made the manifests already signed (pre-order, each
    directory's entries sorted by name bytes, one record per entry, subdirectories visited
    last name first), written out independently of `retention.store`."""
    st = os.lstat(top)
    h = hashlib.sha256(b"%o 0 %d\0" % (st.st_mode, st.st_mtime_ns))
    stack = [b""]
    while stack:
        rel = stack.pop()
        here = top + b"/" + rel if rel else top
        prefix = rel + b"/" if rel else b""
        subdirs = []
        for name in sorted(os.listdir(here)):
            s = os.lstat(here + b"/" + name)
            if os.path.isdir(here + b"/" + name) and not os.path.islink(here + b"/" + name):
                h.update(b"%s%s\0%o 0 %d\0" % (prefix, name, s.st_mode, s.st_mtime_ns))
                subdirs.append(prefix + name)
            else:
                h.update(b"%s%s\0%o %d %d\0" % (prefix, name, s.st_mode, s.st_size, s.st_mtime_ns))
        stack.extend(subdirs)
    return h.hexdigest()


def test_measure_fingerprint_is_the_same_bytes_as_the_path_based_walk(tmp_path: Path) -> None:
    # Entries hashed in one update per directory instead of one per entry: the digest of a
    # tree with files, nested directories, a symlink, an empty file and a name that is not
    # UTF-8 must stay what the original walk computed (dir_fp of signed manifests).
    run = tmp_path / "run"
    (run / "b" / "deep").mkdir(parents=True)
    (run / "a").mkdir()
    (run / "model.bin").write_bytes(b"x" * 700)
    (run / "empty").write_bytes(b"")
    (run / "b" / "deep" / "log.txt").write_text("hello")
    (run / "a" / "z.csv").write_text("1,2\n")
    os.symlink("/etc/passwd", run / "link")
    with open(os.fsencode(run) + b"/caf\xe9", "wb") as f:
        f.write(b"latin-1 name")
    m = LocalStore(tmp_path).measure(b"run")
    assert m.exists and m.error is None
    assert m.files == 6
    assert m.bytes == 700 + 0 + 5 + 4 + len("/etc/passwd") + len(b"latin-1 name")
    assert m.fingerprint == _reference_fingerprint(os.fsencode(run))
