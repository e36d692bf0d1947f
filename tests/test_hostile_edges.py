"""Hostile edges of issue 12, item 11: a run tree deeper than PATH_MAX, a purge that stalled
(undo and check during it), and a full state directory or artifact root (every error names
the file it could not write).

Everything runs on real files through the real executable. A full disk is real: a tmpfs of
a few MiB mounted in a private mount namespace (``unshare --user --map-root-user --mount``,
no root needed where unprivileged user namespaces are allowed) and filled up, at an exact
step (``FAILPOINT_PAUSE``), with a file of zeros until ``write(2)`` returns ``ENOSPC``. A
"file too large" is real too: the file size limit of the paused process is lowered with
``prlimit(2)`` (``RLIMIT_FSIZE``; CPython ignores ``SIGXFSZ``, so ``write(2)`` returns
``EFBIG`` instead of the signal ending the process).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retention.store import LocalStore

from . import crashkit as ck
from .conftest import NOW_TEXT

ARTS = Path("data/backtests")
TRASH = ARTS / ".trash"
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")  # 4096 on Linux


def ok(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, (p.returncode, p.stderr.decode())
    return json.loads(p.stdout)


def error_lines(p: subprocess.CompletedProcess) -> list[str]:
    text = p.stderr.decode()
    assert "Traceback" not in text, text
    return [x for x in text.splitlines() if x.startswith(("Error:", "Hint:"))]


def oldest_runs(ws: Path, n: int) -> list[str]:
    c = sqlite3.connect(ws / "data/catalog.db")
    rows = c.execute("SELECT run_id FROM runs ORDER BY created_at LIMIT ?", (n,)).fetchall()
    c.close()
    return [r[0] for r in rows]


def manifest_entries(manifest: Path) -> dict[str, dict]:
    env = json.loads(manifest.read_bytes())
    payload = env["payload"]
    payload = json.loads(payload) if isinstance(payload, str) else payload
    return {e["run_id"]: e for e in payload["entries"]}


# -- (a) a tree deeper than PATH_MAX -----------------------------------------------------------

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def deep_chain(top: Path, depth: int, name: bytes) -> tuple[int, int]:
    """Below ``top``, a chain of ``depth`` directories named ``name``, with a file every
    tenth level and at the bottom, plus a symlink at the bottom. Built with ``mkdirat`` and
    ``openat`` one level at a time: the absolute path soon exceeds PATH_MAX, where plain
    calls fail. Returns (bytes, files) that a correct measure reports for the chain."""
    nbytes = nfiles = 0
    fd = os.open(top, _O_DIR)
    try:
        for level in range(1, depth + 1):
            os.mkdir(name, 0o755, dir_fd=fd)
            nfd = os.open(name, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if level % 10 == 0 or level == depth:
                data = b"level %d\n" % level * (level % 7 + 1)
                f = os.open(b"f.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
                os.write(f, data)
                os.close(f)
                nbytes, nfiles = nbytes + len(data), nfiles + 1
        os.symlink(b"../f.txt", b"link", dir_fd=fd)
        nbytes, nfiles = nbytes + len(b"../f.txt"), nfiles + 1
    finally:
        os.close(fd)
    return nbytes, nfiles


def remove_tree(path: Path) -> None:
    """``rm -rf`` for a tree of any depth, independent of the code under test: walks with
    ``chdir``, so no path is longer than one name and nothing is held per level (pytest's
    own clean-up of old temporary directories recurses, and a tree 2100 levels deep left
    behind would break it for every later session)."""
    if not os.path.lexists(path):
        return
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir(path.parent)
        todo: list[list] = [[os.fsencode(path.name), False]]
        while todo:
            frame = todo[-1]
            name, entered = frame
            if entered:
                os.chdir("..")
                os.rmdir(name)
                todo.pop()
                continue
            if not stat.S_ISDIR(os.lstat(name).st_mode):
                os.unlink(name)
                todo.pop()
                continue
            os.chmod(name, 0o700)
            os.chdir(name)
            frame[1] = True
            todo += [[n, False] for n in os.listdir(b".")]
    finally:
        os.fchdir(here)
        os.close(here)


@pytest.fixture
def ws_path(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Where a test builds its workspace; removed afterwards whatever it holds."""
    yield tmp_path / "ws"
    remove_tree(tmp_path / "ws")


def fd_walk(path: Path) -> tuple[str, int, int]:
    """(content digest, bytes, files) of a tree of any depth: names, types, modes, bytes
    and link targets; sizes of everything but directories, as `measure` counts them.
    Walked with descriptors like the code under test, by a separate implementation."""
    h = hashlib.sha256()
    nbytes = nfiles = 0
    opened = []
    todo = [(os.open(path, _O_DIR), b"")]
    while todo:
        fd, rel = todo.pop()
        opened.append(fd)
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            h.update(b"%s/%s %o\n" % (rel, name, st.st_mode))
            if stat.S_ISDIR(st.st_mode):
                todo.append((os.open(name, _O_DIR, dir_fd=fd), rel + b"/" + name))
                continue
            nbytes, nfiles = nbytes + st.st_size, nfiles + 1
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(name, dir_fd=fd))
            else:
                f = os.open(name, os.O_RDONLY, dir_fd=fd)
                h.update(os.read(f, 1 << 20))
                os.close(f)
    for fd in opened:
        os.close(fd)
    return h.hexdigest(), nbytes, nfiles


def golden_tree(top: Path) -> None:
    """Every kind of entry `measure` sees, with fixed modes, sizes and mtimes (not left to
    the umask or the clock), so its fingerprint is a constant."""
    t = os.fsencode(top)
    os.mkdir(t)
    dirs = [b"a", b"a/b", b"a/b/c", b"z", b"z/empty", b"\xff\xfename", b"\xc3\xa9t\xc3\xa9", b"m"]
    for d in dirs:
        os.mkdir(t + b"/" + d)
    files = {
        b"top.txt": b"hello\n",
        b"a/one.bin": bytes(range(256)) * 3,
        b"a/b/two": b"",
        b"a/b/c/deep.json": b'{"x": 1}',
        b"z/Z": b"upper",
        b"\xff\xfename/raw\x80": b"not utf-8 name",
        b"\xc3\xa9t\xc3\xa9/\xee\x80\x80pua": b"pua",  # sorts after the next one as bytes,
        b"\xc3\xa9t\xc3\xa9/\xed\xb2\x80x": b"lone surrogate bytes",  # before it as text
        b"m/a-b": b"1",
        b"m/a.b": b"2",
        b"m/a": b"3",
        b"m/B": b"4",
    }
    for i, (rel, data) in enumerate(sorted(files.items())):
        p = t + b"/" + rel
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, (0o600, 0o644, 0o755, 0o400)[i % 4])
    os.symlink(b"../top.txt", t + b"/a/link-in")
    os.symlink(b"/etc/hostname", t + b"/z/link-out")
    os.symlink(b"missing", t + b"/z/dangling")
    os.mkfifo(t + b"/m/fifo")
    for d in dirs:
        os.chmod(t + b"/" + d, 0o755)
    os.chmod(t, 0o750)
    os.chmod(t + b"/a/b", 0o700)
    os.chmod(t + b"/z/empty", 0o2775)
    os.chmod(t + b"/m/fifo", 0o640)
    every = []
    for dirpath, dirnames, filenames in os.walk(t, followlinks=False):
        every += [os.path.join(dirpath, n) for n in dirnames + filenames]
    every.sort(key=lambda p: (-p.count(b"/"), p))  # deepest first: children before parents
    for k, p in enumerate(every):
        ns = 1_700_000_000_123_456_789 + k * 1_000_003
        os.utime(p, ns=(ns, ns), follow_symlinks=False)
    os.utime(t, ns=(1_600_000_000_000_000_001,) * 2)


# Computed by the path-based walk that signed every manifest before the descriptor walk
# (retention/store.py at 6fc8405): a manifest planned then must still verify at apply.
GOLDEN = {
    b"run": (858, 16, "f8e61960b0e856fcd9179c6d7c34669dacece3c911d0be938b11565129d49d16"),
    b"run/a": (786, 4, "87e4932c9746303a6731df4239a0838064e3c6d13ed84355d62b5256e0e2a964"),
    b"run/\xff\xfename": (
        14,
        1,
        "a960088ccf44c1e0b7164c3f331dd2452e69cd85e8d8b9440b5ee96a9c568dfd",
    ),
    b"run/z/empty": (0, 0, "30cbfe36aca9f353fad2a4a2df91e0560ac38f36722163b06e612a0018824f6b"),
    b"run/top.txt": (6, 1, "e296d8b2be971b3e9862275bf3eabba3783b2cc74794cd90bb535a951d6ce1f4"),
    b"run/a/link-in": (10, 1, "bb320a64b46f8ed1a390112a1daa0917558b3a081288e97994d9b30a2fe42a05"),
    b"run/m/fifo": (0, 1, "15902c78616a9efdecd01e3a50b658ef82c35905f296c4b161d921fd715e5a9c"),
}


def test_measure_fingerprints_of_ordinary_trees_are_those_already_signed(tmp_path: Path) -> None:
    golden_tree(tmp_path / "run")
    store = LocalStore(tmp_path)
    got = {}
    for rel in GOLDEN:
        m = store.measure(rel)
        assert m.exists and m.error is None, (rel, m)
        got[rel] = (m.bytes, m.files, m.fingerprint)
    assert got == GOLDEN
    assert store.measure(b"missing").exists is False


@pytest.mark.parametrize(
    "depth,name",
    [(24, b"d" * 200), (2100, b"d")],
    ids=["200-byte-names", "2100-levels"],
)
def test_a_run_tree_deeper_than_path_max_is_planned_applied_undone_and_purged(
    ws_path: Path, depth: int, name: bytes
) -> None:
    """Deeper than PATH_MAX (and, with one-letter names, deeper than the descriptors a
    walk keeps open and than Python's recursion limit): plan measures it exactly instead
    of calling it unreadable; apply moves it with one rename; undo brings it back whole;
    purge removes it."""
    ws = ck.build(ws_path, runs=8)
    deep = oldest_runs(ws, 1)[0]
    top = ws / ARTS / deep
    _, small_bytes, small_files = fd_walk(top)
    nbytes, nfiles = deep_chain(top / "plots", depth, name)
    assert len(os.fsencode(top)) + depth * (len(name) + 1) > PATH_MAX
    m = LocalStore(ws / ARTS).measure(os.fsencode(deep))
    assert m.error is None, m.error
    digest, all_bytes, all_files = fd_walk(top)
    assert (m.bytes, m.files) == (all_bytes, all_files)
    assert (m.bytes, m.files) == (small_bytes + nbytes, small_files + nfiles)

    p = ck.run(ws, "plan", "--keep-last", "2", "--now", NOW_TEXT, "-o", "manifest.json")
    assert p.returncode == 0, p.stderr.decode()
    assert b"unreadable" not in p.stderr
    entry = manifest_entries(ws / "manifest.json")[deep]
    assert (entry["exists"], entry["bytes"], entry["files"]) == (True, m.bytes, m.files)
    assert entry["dir_fp"] == m.fingerprint

    rep = ok(ck.run(ws, "apply", "manifest.json"))
    assert deep in rep["deleted_run_ids"] and rep["deleted_runs"] == 6
    assert not top.exists()
    [slot] = [d for d in (ws / TRASH / rep["txid"]).iterdir() if d.name.endswith(deep)]
    assert fd_walk(slot)[0] == digest

    ok(ck.run(ws, "undo", rep["txid"]))
    assert fd_walk(top)[0] == digest
    rep = ok(ck.run(ws, "apply", str(ck.plan(ws, keep_last=3))))  # another manifest
    assert deep in rep["deleted_run_ids"]
    purge = ok(ck.run(ws, "purge", "--all"))
    assert purge["purged"] == [rep["txid"]]
    assert not (ws / TRASH / rep["txid"]).exists()
    assert ok(ck.run(ws, "check", "--json"))["findings"] == []


def test_a_change_below_path_max_depth_is_seen_by_apply(ws_path: Path) -> None:
    """The fingerprint covers the deepest entries: touching the bottom file after the plan
    makes apply skip that run (its directory changed), not move a tree it never saw."""
    ws = ck.build(ws_path, runs=8)
    deep = oldest_runs(ws, 1)[0]
    deep_chain(ws / ARTS / deep / "plots", 24, b"e" * 200)
    manifest = ck.plan(ws, keep_last=2)
    assert manifest_entries(manifest)[deep]["exists"]
    fd = os.open(ws / ARTS / deep / "plots", _O_DIR)
    for _ in range(24):
        nfd = os.open(b"e" * 200, _O_DIR, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.utime(b"f.txt", ns=(1, 1), dir_fd=fd)
    os.close(fd)
    p = ck.run(ws, "apply", str(manifest))
    assert p.returncode == 3, p.stderr.decode()
    rep = json.loads(p.stdout)
    assert deep not in rep["deleted_run_ids"] and rep["deleted_runs"] == 5
    [skip] = [s for s in rep["skipped"] if s["run_id"] == deep]
    assert "changed since the plan" in skip["reason"]
    assert (ws / ARTS / deep).is_dir()


def _no_dac_override() -> list[str]:
    """A command prefix under which even root meets permission bits (as the owner of the
    files): root without CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER; [] when we
    are not root anyway. Skips the test when it cannot be had."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("root, and setpriv (to drop CAP_DAC_OVERRIDE) is not available")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def test_purge_makes_deep_directories_it_may_not_enter_or_write_removable(ws_path: Path) -> None:
    """A directory without write permission (and one without read and search permission)
    far below PATH_MAX: purge makes each ``u+rwx`` through descriptors and removes the
    tree, as a plain ``rm -rf`` cannot. Root runs the purge without CAP_DAC_OVERRIDE, so
    the permission bits bind it as they bind the owner."""
    prefix = _no_dac_override()
    ws = ck.build(ws_path, runs=8)
    deep = oldest_runs(ws, 1)[0]
    deep_chain(ws / ARTS / deep / "plots", 30, b"p" * 200)
    rep = ok(ck.run(ws, "apply", str(ck.plan(ws, keep_last=2))))
    [slot] = [d for d in (ws / TRASH / rep["txid"]).iterdir() if d.name.endswith(deep)]
    fd = os.open(slot / "plots", _O_DIR)
    for level in range(1, 31):
        nfd = os.open(b"p" * 200, _O_DIR, dir_fd=fd)
        if level == 25:
            os.chmod(b"p" * 200, 0o500, dir_fd=fd)  # no write: its entries cannot go
        if level == 29:
            os.chmod(b"p" * 200, 0o000, dir_fd=fd)  # cannot even be listed
            os.close(nfd)
            break
        os.close(fd)
        fd = nfd
    os.close(fd)
    p = subprocess.run(
        [*prefix, ck.EXE, "purge", "--all"], cwd=ws, env=ck.BASE_ENV, capture_output=True
    )
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["purged"] == [rep["txid"]]
    assert not (ws / TRASH / rep["txid"]).exists()


# -- (b), (c) a stalled purge ------------------------------------------------------------------


@pytest.fixture
def stalled_purge(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A workspace whose purge of one apply committed ("purging") and then stopped at a
    directory it may not write into (immutable: ``chattr +i``). Yields (ws, apply txid,
    the immutable directory)."""
    ws = ck.build(tmp_path / "ws", runs=8)
    txid = ok(ck.run(ws, "apply", str(ck.plan(ws, keep_last=4))))["txid"]
    slots = sorted((ws / TRASH / txid).glob("*/plots"))
    stuck = slots[len(slots) // 2]
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here (needs root and a filesystem with it)")
    try:
        p = ck.run(ws, "purge", "--all")
        assert p.returncode == 8, p.stderr.decode()
        assert b"cannot remove trash" in p.stderr
        c = sqlite3.connect(ws / "data/catalog.db")
        state = c.execute("SELECT state FROM _retention_tx WHERE txid = ?", (txid,)).fetchone()
        c.close()
        assert state == ("purging",)
        yield ws, txid, stuck
    finally:
        if stuck.exists():
            subprocess.run(["chattr", "-i", str(stuck)], check=True)


def test_undo_within_during_a_stalled_purge_says_it_is_unfinished_and_how_to_finish_it(
    stalled_purge: tuple[Path, str, Path],
) -> None:
    ws, txid, _ = stalled_purge
    for args in (("--within", "1h"), (txid,)):
        p = ck.run(ws, "undo", *args)
        assert p.returncode == 9, (args, p.stderr.decode())
        text = "\n".join(error_lines(p))
        assert "already purged" not in text and "was purged" not in text, text
        assert "being purged" in text and "did not finish" in text, text
        assert "`retention recover`" in text, text
        assert p.stdout == b""


def test_check_during_a_stalled_purge_reports_the_unfinished_purge_not_missing_runs(
    stalled_purge: tuple[Path, str, Path],
) -> None:
    ws, txid, _ = stalled_purge
    p = ck.run(ws, "check", "--json")
    assert p.returncode == 10, p.stderr.decode()
    findings = json.loads(p.stdout)["findings"]
    kinds = [f["kind"] for f in findings]
    assert "trash_missing" not in kinds, findings
    assert "trash_orphan" not in kinds, findings
    # The cause, once: the purge of this apply did not finish, and what finishes it.
    [purge] = findings
    assert purge["kind"] == "interrupted", purge
    assert "purge" in purge["detail"] and txid in purge["detail"], purge
    assert "`retention recover`" in purge["detail"], purge
    human = ck.run(ws, "check")
    assert human.returncode == 10
    assert human.stdout.decode().splitlines()[0].startswith("interrupted: ")


def test_a_stalled_purge_finished_by_recover_leaves_nothing_to_undo_or_check(
    stalled_purge: tuple[Path, str, Path],
) -> None:
    ws, txid, stuck = stalled_purge
    subprocess.run(["chattr", "-i", str(stuck)], check=True)
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr.decode()
    assert not (ws / TRASH / txid).exists()
    assert ok(ck.run(ws, "check", "--json"))["findings"] == []
    p = ck.run(ws, "undo", "--within", "1h")
    assert p.returncode == 9
    assert "purged" in "\n".join(error_lines(p)) and b"being purged" not in p.stderr


# -- (d) a full disk, a file size limit: the error names the file --------------------------------

# Runs inside `unshare --user --map-root-user --mount`: mounts a small tmpfs on the
# workspace, copies the template into it, plans (the catalog binding is by device and
# inode, so on the tmpfs), then runs the command paused at a failpoint, fills the tmpfs
# while it waits, lets it go on, and records what it printed; then frees the space and
# records what `recover` and `check` say. The tmpfs vanishes with the namespace.
_NS_DRIVER = r"""
import errno, json, os, subprocess, sys, time
ws, template, out, exe, point = sys.argv[1:6]
args = json.loads(sys.argv[6])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "retention-test", ws], check=True)
subprocess.run(["cp", "-a", template + "/.", ws], check=True)
def run(*a, env=None):
    return subprocess.run([exe, *a], cwd=ws, env={**os.environ, **(env or {})},
                          capture_output=True, timeout=120)
def fill():
    fd = os.open(os.path.join(ws, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\0" * 4096
    try:
        while True:
            os.write(fd, block)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
res = {}
if args[0] == "apply":
    p = run("plan", "--keep-last", "2", "-o", "manifest.json")
    assert p.returncode == 0, p.stderr
if point == "start":
    fill()
    p = run(*args)
else:
    pause = out + ".pause"
    os.mkdir(pause)
    proc = subprocess.Popen([exe, *args], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "FAILPOINT_PAUSE": point,
                                 "FAILPOINT_PAUSE_DIR": pause})
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(pause, "paused")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    fill()
    open(os.path.join(pause, "resume"), "w").close()
    stdout, stderr = proc.communicate(timeout=120)
    p = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
res["rc"], res["stderr"] = p.returncode, p.stderr.decode()
res["ws"] = ws
os.unlink(os.path.join(ws, "filler"))
r = run("recover")
res["recover_rc"], res["recover_stderr"] = r.returncode, r.stderr.decode()
c = run("check", "--json")
res["check_rc"], res["check"] = c.returncode, c.stdout.decode()
json.dump(res, open(out, "w"))
"""


def _unshare() -> list[str]:
    exe = shutil.which("unshare")
    if exe is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(
        [exe, "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"no user and mount namespaces here: {probe.stderr.decode().strip()}")
    return [exe, "--user", "--map-root-user", "--mount"]


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 runs: an apply of 98 journals intents longer than a page (4 KiB), so its append
    needs a new page of a full tmpfs."""
    return ck.build(tmp_path_factory.mktemp("full") / "template", runs=100)


@pytest.mark.parametrize(
    "point,args,names",
    [
        ("journal.append.before_write@1", ["apply", "manifest.json"], ".retention/journal.wal"),
        ("apply.after_begin@1", ["apply", "manifest.json"], "TRASH.json"),
        ("start", ["plan", "--keep-last", "2", "-o", "m.json"], ".retention/key"),
    ],
    ids=["journal", "trash-index", "key"],
)
def test_a_full_disk_error_names_the_file_it_could_not_write(
    tmp_path: Path, many_runs: Path, point: str, args: list[str], names: str
) -> None:
    prefix = _unshare()
    ws, out = tmp_path / "ws", tmp_path / "result.json"
    ws.mkdir()
    driver = [sys.executable, "-c", _NS_DRIVER, str(ws), str(many_runs), str(out), ck.EXE]
    p = subprocess.run(
        [*prefix, *driver, point, json.dumps(args)],
        env=ck.BASE_ENV,
        capture_output=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr.decode()
    res = json.loads(out.read_text())
    stderr = res["stderr"]
    assert "Traceback" not in stderr, stderr
    assert res["rc"] in (7, 8), stderr
    [error] = [x for x in stderr.splitlines() if x.startswith("Error:")]
    assert names in error and ("disk full" in error or "No space left" in error), error
    # With the space back, recovery finishes or rolls back, and nothing is inconsistent.
    assert res["recover_rc"] == 0, res["recover_stderr"]
    assert res["check_rc"] == 0 and json.loads(res["check"])["findings"] == [], res["check"]


@pytest.mark.parametrize(
    "point,names",
    [
        ("journal.append.before_write@1", ".retention/journal.wal"),
        ("apply.after_begin@1", "TRASH.json"),
    ],
    ids=["journal", "trash-index"],
)
def test_a_file_size_limit_error_names_the_file_it_could_not_write(
    tmp_path: Path, point: str, names: str
) -> None:
    """``RLIMIT_FSIZE`` lowered (``prlimit``) while apply waits at ``point``: the next write
    past the limit fails with ``EFBIG``, "file too large". One clear error naming the file,
    never a traceback; `recover` (no limit) then finishes or rolls back."""
    ws = ck.build(tmp_path / "ws", runs=8)
    manifest = ck.plan(ws, keep_last=2)
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**ck.BASE_ENV, "FAILPOINT_PAUSE": point, "FAILPOINT_PAUSE_DIR": str(pause)}
    proc = subprocess.Popen(
        [ck.EXE, "apply", str(manifest)],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (pause / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    journal = ws / ".retention/journal.wal"
    limit = journal.stat().st_size if names.endswith("journal.wal") else 64
    hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
    (pause / "resume").touch()
    _, stderr_b = proc.communicate(timeout=120)
    stderr = stderr_b.decode()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode in (7, 8), stderr
    [error] = [x for x in stderr.splitlines() if x.startswith("Error:")]
    assert names in error and "file too large" in error.lower(), error
    r = ck.run(ws, "recover")
    assert r.returncode == 0, r.stderr.decode()
    assert ok(ck.run(ws, "check", "--json"))["findings"] == []
