"""Hostile manifests and state files (issue 12, items 5-8 and part of 11).

Every manifest here is *validly signed*: it is a real plan's payload, changed, and signed
again with the workspace's own key, as someone who can read the key could do. The signature
therefore passes, and what is tested is that apply checks every entry on its own (the same
refusals as plan), that every field's domain is part of the schema, and that each bad input
gets one ``Error:`` line, a documented exit code and no change. Also: the size limit on
manifests, signing keys and state directories of the wrong kind, and state files written
through a planted symlink.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import filelock
import msgspec
import pytest
from click.testing import Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retention.config import load_config
from retention.layout import StateLayout
from retention.manifest import load_key, read_manifest_bytes, verify
from retention.planner import build_plan
from retention.store import LocalStore

from . import crashkit as ck
from .conftest import NOW, NOW_TEXT, invoke

ROOT = Path("data/backtests")
INT64_MAX = 2**63 - 1
DOCUMENTED_EXIT_CODES = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10}


# -- helpers ---------------------------------------------------------------------------------


def plan_payload(keep_last: int = 37) -> dict[str, Any]:
    """The payload of a real plan of the current workspace, as plain JSON values."""
    cfg = load_config(None, overrides={"keep_last": keep_last})
    data = build_plan(cfg, NOW).manifest
    return msgspec.json.decode(data)["payload"]


def resign(payload: dict[str, Any], state_dir: str = ".retention") -> bytes:
    """A manifest file around ``payload``, signed with the workspace's real key.

    Built by hand (HMAC-SHA256 over exactly the payload bytes), not with the code under
    test, so any JSON the payload holds is signed as it is.
    """
    key, key_id = load_key(StateLayout(Path(state_dir)), create=False)
    body = json.dumps(payload, sort_keys=True, indent=1).encode()
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    return (
        b'{"alg":"HMAC-SHA256","key_id":"'
        + key_id.encode()
        + b'","payload":'
        + body
        + b',"sig":"'
        + sig.encode()
        + b'"}\n'
    )


def apply_signed(payload: dict[str, Any], name: str = "hostile.json") -> Result:
    Path(name).write_bytes(resign(payload))
    return invoke("apply", name)


def one_error(result: Result, code: int) -> str:
    """The single ``Error:`` line of a refused command (exit code, no traceback, hints only)."""
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("Error: "), result.stderr
    assert all(line.startswith("Hint: ") for line in lines[1:]), result.stderr
    return lines[0]


def skipped(result: Result) -> dict[Any, str]:
    return {s["run_id"]: s["reason"] for s in json.loads(result.stdout)["skipped"]}


def aim_at(entry: dict[str, Any], rel: bytes) -> None:
    """Point a manifest entry at ``rel`` (relative to the artifact root) *with* the correct
    measurements, as a forger with the key would: exists, fingerprint, size."""
    m = LocalStore(ROOT).measure(rel)
    try:
        entry["path"], entry["path_raw"] = rel.decode(), None
    except UnicodeDecodeError:
        entry["path"] = rel.decode("utf-8", "replace")
        entry["path_raw"] = base64.b64encode(rel).decode()
    entry.update(exists=m.exists, dir_fp=m.fingerprint, bytes=m.bytes, files=m.files)


# -- item 5: apply refuses what plan refuses; state files never written through a symlink ---


@pytest.mark.parametrize("how", ["path", "dot-slash", "path_raw"])
def test_apply_skips_a_signed_entry_inside_the_trash_and_leaves_it_there(
    workspace: Path, how: str
) -> None:
    payload = plan_payload()
    name = b".trash/pl\xffanted" if how == "path_raw" else b".trash/planted"
    planted = ROOT / os.fsdecode(name)
    (planted / "sub").mkdir(parents=True)
    (planted / "sub" / "f.txt").write_text("someone else's trash\n")
    target = b"./" + name if how == "dot-slash" else name
    victim = payload["entries"][0]
    aim_at(victim, target)
    before = ck.tree(planted)
    result = apply_signed(payload)
    assert result.exit_code == 3, result.stderr
    assert "inside the trash" in skipped(result)[victim["run_id"]]
    assert planted.is_dir() and ck.tree(planted) == before
    assert victim["run_id"] in ck.dump(Path("."))  # its rows stay


def test_apply_refuses_a_signed_dotdot_path_naming_the_dotdot_not_a_symlink(
    workspace: Path,
) -> None:
    payload = plan_payload()
    outside = Path("outside-victim")
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "data.bin").write_bytes(b"\1" * 100)
    victim = payload["entries"][0]
    aim_at(victim, b"../../outside-victim")
    before = ck.tree(outside)
    result = apply_signed(payload)
    assert result.exit_code == 3, result.stderr
    reason = skipped(result)[victim["run_id"]]
    assert "'..' component" in reason and "symlink" not in reason
    assert ck.tree(outside) == before


def test_apply_gives_its_drift_workers_only_paths_that_pass_plans_refusals(
    workspace: Path,
) -> None:
    """Apply's measuring workers start before the catalog checks (`_Paths.jobs`, forked on
    at once): a path with a '..' component, one inside the trash, one under a parent
    symlinked out of the root and two overlapping ones are never handed to them, so no
    process of apply ever walks outside the root; every other planned directory is."""
    from retention.coordinator import _Paths
    from retention.manifest import Payload
    from retention.store import LocalTrashStore

    payload = plan_payload(keep_last=10)
    outside = Path("outside-victim")
    (outside / "keep").mkdir(parents=True)
    (ROOT / ".trash" / "planted").mkdir(parents=True)
    os.symlink(outside.absolute(), ROOT / "escape")
    entries = payload["entries"]
    aim_at(entries[0], b"../../outside-victim")
    aim_at(entries[1], b".trash/planted")
    aim_at(entries[2], b"escape/keep")
    aim_at(entries[4], entries[3]["path"].encode())  # two entries, one directory
    decoded = msgspec.json.decode(msgspec.json.encode(payload), type=Payload)
    paths = _Paths(LocalTrashStore(Path(payload["artifact_root"])), decoded)
    assert paths.refused.keys() == {0, 1, 2}
    assert "'..' component" in paths.refused[0] and "inside the trash" in paths.refused[1]
    assert "symlink leading out of the root" in paths.refused[2]
    assert paths.overlaps == {3, 4}
    planned = {i for i, e in enumerate(entries) if e["exists"]}
    assert {i for i, _ in paths.jobs} == planned - {0, 1, 2, 3, 4}
    assert len(paths.jobs) >= 20  # the rest of the plan: every directory it found


def test_apply_skips_a_signed_entry_whose_path_and_path_raw_disagree(workspace: Path) -> None:
    # path_raw wins in Entry.rel_path(); it must not name another directory than `path`
    # says (here a kept run's, measured correctly), whatever a review of `path` showed.
    payload = plan_payload()
    victim = payload["entries"][0]
    kept = ROOT / "bt-20261030-00039"
    before = ck.tree(kept)
    shown = victim["path"]
    aim_at(victim, os.fsencode(kept.name))
    victim["path"] = shown
    victim["path_raw"] = base64.b64encode(os.fsencode(kept.name)).decode()
    result = apply_signed(payload)
    assert result.exit_code == 3, result.stderr
    assert "disagree" in skipped(result)[victim["run_id"]]
    assert ck.tree(kept) == before


@pytest.mark.parametrize("command", ["apply", "recover"])
def test_lock_owner_is_never_written_through_a_planted_symlink(
    workspace: Path, command: str
) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    precious = Path("precious.txt")
    precious.write_text("precious\n")
    os.symlink(precious.absolute(), ".retention/lock.owner")
    result = invoke(*([command, "m.json"] if command == "apply" else [command]))
    assert result.exit_code == 0, result.stderr
    assert precious.read_text() == "precious\n"


def test_a_lock_owner_that_is_a_fifo_does_not_hang_the_second_process(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    exe = Path(sys.executable).parent / "retention"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETENTION_")}
    env["RETENTION_MANIFEST_TTL"] = "3650d"
    with filelock.FileLock(".retention/lock", timeout=0):
        os.mkfifo(".retention/lock.owner")
        try:
            p = subprocess.run(
                [str(exe), "apply", "m.json"], env=env, capture_output=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the second process hung reading the lock owner (a FIFO)")
    assert p.returncode == 6, p.stderr
    assert p.stderr.decode().startswith("Error: another retention process holds")


# -- item 6: a size limit, and the manifest held once --------------------------------------


def test_manifest_over_the_configured_size_limit_is_refused_with_exit_5(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    size = Path("m.json").stat().st_size
    before = ck.snapshot(workspace)
    monkeypatch.setenv("RETENTION_MANIFEST_MAX_SIZE", str(size - 1))
    line = one_error(invoke("apply", "m.json"), 5)
    assert "manifest.max_size" in line and str(size - 1) in line
    line = one_error(invoke("apply", "-", input=Path("m.json").read_bytes()), 5)
    assert "manifest.max_size" in line
    assert ck.snapshot(workspace) == before
    monkeypatch.setenv("RETENTION_MANIFEST_MAX_SIZE", "1KiB")
    assert "1024" in one_error(invoke("apply", "m.json"), 5)
    monkeypatch.setenv("RETENTION_MANIFEST_MAX_SIZE", str(size))
    assert invoke("apply", "m.json").exit_code == 0


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5GiB", "12 parsecs"])
def test_a_bad_manifest_size_limit_is_a_configuration_error(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RETENTION_MANIFEST_MAX_SIZE", value)
    line = one_error(invoke("apply", "m.json"), 2)
    assert line.startswith("Error: manifest.max_size (from env RETENTION_MANIFEST_MAX_SIZE): "), (
        line
    )


def test_a_sparse_manifest_beyond_the_default_limit_is_refused_before_reading(
    workspace: Path,
) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT).exit_code == 0
    with open("huge.json", "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: nothing is written, nothing must be read
    tracemalloc.start()
    try:
        line = one_error(invoke("apply", "huge.json"), 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "manifest.max_size" in line
    assert peak < 64 << 20, peak


def test_a_manifest_is_held_once_while_it_is_read_and_verified(workspace: Path) -> None:
    payload = plan_payload()
    payload["policy_text"] = "x" * (24 << 20)  # a big payload that decodes to one big string
    Path("big.json").write_bytes(resign(payload))
    size = Path("big.json").stat().st_size
    key, key_id = load_key(StateLayout(Path(".retention")), create=False)
    tracemalloc.start()
    try:
        data = read_manifest_bytes("big.json")
        after_read, read_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decoded = verify(data, key, key_id, now=NOW)
        verify_peak = tracemalloc.get_traced_memory()[1] - after_read
    finally:
        tracemalloc.stop()
    assert len(decoded.policy_text) == 24 << 20
    assert read_peak < size * 1.1, (read_peak, size)
    # The decoded string is one more copy; the file's bytes must not be copied again.
    assert verify_peak < size * 1.3, (verify_peak, size)


# -- item 7: keys and state directories of the wrong kind ----------------------------------


def _commands() -> list[tuple[str, ...]]:
    return [
        ("plan", "--keep-last", "37", "--now", NOW_TEXT),
        ("show", "m.json"),
        ("apply", "m.json"),
    ]


def test_a_signing_key_that_is_not_utf8_is_one_error_line_exit_5(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    key = Path(".retention/key")
    key.write_bytes(b"\xff\xfe" + os.urandom(62) + b"\n")
    os.chmod(key, 0o600)
    for args in _commands():
        assert one_error(invoke(*args), 5).endswith("is malformed (expected 64 hex digits)"), args


def test_a_signing_key_that_is_a_directory_is_one_error_line_exit_5(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    key = Path(".retention/key")
    key.unlink()
    key.mkdir(mode=0o700)
    for args in _commands():
        line = one_error(invoke(*args), 5)
        assert line == f"Error: signing key {key.absolute()} is a directory, not a file", args


def test_a_state_directory_that_is_a_regular_file_is_one_error_line_exit_8(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    Path("state-file").write_text("not a directory\n")
    monkeypatch.setenv("RETENTION_STATE_DIR", "state-file")
    before = ck.snapshot(workspace)
    for args in [*_commands(), ("recover",), ("purge",), ("undo", "--within", "24h")]:
        line = one_error(invoke(*args), 8)
        assert line == (
            f"Error: state directory {workspace / 'state-file'} is a regular file, not a directory"
        ), args
    assert ck.snapshot(workspace) == before
    assert Path("state-file").read_text() == "not a directory\n"


# -- items 8 and 11: every field's domain is part of the schema ----------------------------


def _set(field: str, value: Any, entry: int | None = 0) -> Any:
    def change(p: dict[str, Any]) -> None:
        (p if entry is None else p["entries"][entry])[field] = value

    return change


def _nul_raw(p: dict[str, Any]) -> None:
    e = p["entries"][0]
    e["path_raw"] = base64.b64encode(e["path"].encode() + b"\0\xff").decode()


def _sum_overflows(p: dict[str, Any]) -> None:
    # Each within range; their sum (recorded as one INTEGER) is not.
    for e in p["entries"][:2]:
        e["bytes"] = 2**62


HOSTILE_FIELDS = {
    "nul-in-path": _set("path", "bt-2024\x001101-00000"),
    "nul-in-path_raw": _nul_raw,
    "run_id-above-int64": _set("run_id", 2**63),
    "run_id-below-int64": _set("run_id", -(2**63) - 1),
    "bytes-above-int64": _set("bytes", 2**63),
    "bytes-negative": _set("bytes", -1),
    "files-negative": _set("files", -7),
    "bytes-sum-above-int64": _sum_overflows,
    "total_bytes-negative": _set("total_bytes", -1, None),
    "expires_at-not-an-instant": _set("expires_at", "tomorrow", None),
    "expires_at-no-such-day": _set("expires_at", "2099-02-30T00:00:00Z", None),
    "now-not-an-instant": _set("now", "yesterday", None),
    "time-not-an-instant": _set("time", "a while ago"),
    "time-no-such-day": _set("time", "2024-04-31T00:00:00Z"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FIELDS))
def test_a_signed_field_outside_its_domain_is_refused_with_exit_5(
    workspace: Path, case: str
) -> None:
    payload = plan_payload()
    HOSTILE_FIELDS[case](payload)
    Path("hostile.json").write_bytes(resign(payload))
    before = ck.snapshot(workspace)
    for command in ("show", "apply"):
        line = one_error(invoke(command, "hostile.json"), 5)
        assert line.startswith("Error: manifest"), (command, line)
    assert ck.snapshot(workspace) == before
    assert not (ROOT / ".trash").exists()


def test_run_ids_at_the_edges_of_the_int64_range_are_accepted(workspace: Path) -> None:
    payload = plan_payload()
    payload["entries"][0]["run_id"] = INT64_MAX
    payload["entries"][1]["run_id"] = -(2**63)
    result = apply_signed(payload)
    assert result.exit_code == 3, result.stderr  # unknown ids: skipped, not refused
    assert skipped(result) == {
        INT64_MAX: "no longer in the catalog",
        -(2**63): "no longer in the catalog",
    }


# -- a fuzz over re-signed manifests ---------------------------------------------------------


def _base(tmp: Path) -> Path:
    """A workspace with things a forged manifest may aim at: a directory outside the root
    and a directory already in trash."""
    from retention import sample

    base = tmp / "base"
    sample.build(base, runs=40, now=NOW)
    (base / "outside" / "victim").mkdir(parents=True)
    (base / "outside" / "victim" / "f.txt").write_text("outside the root\n")
    (base / "data/backtests/.trash/a-old/000000-old").mkdir(parents=True)
    (base / "data/backtests/.trash/a-old/000000-old/f.txt").write_text("old trash\n")
    return base


HOSTILE_PATHS: list[bytes] = [
    b"../../outside/victim",
    b".trash/a-old/000000-old",
    b"./.trash/a-old/000000-old",
    b".trash",
    b".",
    b"",
    b"/etc",
    b"a\0b",
    b"bt-20261030-00039",  # a kept run's directory
    b"bt-20261030-00039/plots",
    b"x/../bt-20261030-00039",
    b"file:///etc",
    b"s3://bucket/run",
    b"\xff\xfe",
]


@st.composite
def mutations(draw: st.DrawFn, n_entries: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, n_entries - 1))
        kind = draw(
            st.sampled_from(
                ["aim", "path", "run_id", "bytes", "files", "expiry", "time", "drop", "dup"]
            )
        )
        if kind == "aim":
            ops.append((kind, i, draw(st.sampled_from(HOSTILE_PATHS))))
        elif kind == "path":
            ops.append((kind, i, draw(st.text(max_size=12))))
        elif kind == "run_id":
            ops.append(
                (
                    kind,
                    i,
                    draw(
                        st.one_of(
                            st.integers(-(2**70), 2**70),
                            st.text(max_size=20),
                            st.sampled_from(["bt-20261030-00039", "bt-20261029-00038"]),
                        )
                    ),
                )
            )
        elif kind in ("bytes", "files"):
            ops.append((kind, i, draw(st.integers(-(2**70), 2**70))))
        elif kind in ("expiry", "time"):
            ops.append(
                (kind, i, draw(st.one_of(st.text(max_size=25), st.just("2099-01-01T00:00:00Z"))))
            )
        else:
            ops.append((kind, i))
    return ops


def _mutate(payload: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    entries = payload["entries"]
    for op in ops:
        kind, i = op[0], op[1] % max(len(entries), 1)
        if not entries and kind not in ("expiry",):
            continue
        if kind == "aim":
            rel = op[2]
            if b"\0" in rel or not rel:
                entries[i]["path"] = os.fsdecode(rel)
            else:
                aim_at(entries[i], rel)
        elif kind == "path":
            entries[i]["path"], entries[i]["path_raw"] = op[2], None
        elif kind in ("run_id", "bytes", "files"):
            entries[i][kind] = op[2]
        elif kind == "expiry":
            payload["expires_at"] = op[2]
        elif kind == "time":
            entries[i]["time"] = op[2]
        elif kind == "drop":
            entries.pop(i)
        elif kind == "dup":
            entries.append(dict(entries[i]))


@pytest.mark.slow
def test_fuzz_re_signed_manifests_are_refused_or_applied_within_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in list(os.environ):
        if k.startswith("RETENTION_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    base = _base(tmp_path)
    counter = iter(range(10**6))

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops=mutations(n_entries=10))
    def one(ops: list[tuple[Any, ...]]) -> None:
        ws = tmp_path / f"ws{next(counter)}"
        shutil.copytree(base, ws, symlinks=True)
        monkeypatch.chdir(ws)
        payload = plan_payload(keep_last=30)
        _mutate(payload, ops)
        before = ck.snapshot(ws)
        outside, old_trash = ck.tree(ws / "outside"), ck.tree(ROOT / ".trash/a-old")
        Path("m.json").write_bytes(resign(payload))
        result = invoke("apply", "m.json")  # a bug raises here: catch_exceptions=False
        assert result.exit_code in DOCUMENTED_EXIT_CODES, (result.exit_code, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout
        if result.exit_code not in (0, 3):
            assert result.stderr.startswith("Error: "), result.stderr
        after = ck.snapshot(ws)
        named = {e["run_id"] for e in payload["entries"]}
        # The top-level directories the manifest names (a forger may aim at any of them).
        tops = {os.path.normpath(e["path"]).split("/")[0] for e in payload["entries"] if e["path"]}
        for rid, rows in before["rows"].items():
            if rid not in named:
                assert after["rows"].get(rid) == rows, f"rows of {rid} (not in the manifest)"
        for name, tree in before["trees"].items():
            if name not in tops:
                assert after["trees"].get(name) == tree, f"directory {name} (not in the manifest)"
        assert ck.tree(ws / "outside") == outside
        assert ck.tree(ROOT / ".trash/a-old") == old_trash
        if result.exit_code not in (0, 3):
            assert after == before
        monkeypatch.chdir(tmp_path)  # never left inside a removed directory
        shutil.rmtree(ws)

    one()


def test_show_counts_runs_gone_entry_by_entry_when_a_signed_manifest_repeats_one(
    workspace: Path,
) -> None:
    """A signed manifest listing one existing run twice has no run gone from the catalog
    (as apply's preflight finds: it skips none as "no longer in the catalog"); one entry
    for a run deleted since counts once."""
    payload = plan_payload()
    entries = payload["entries"]
    entries.append(dict(entries[0]))
    Path("dup.json").write_bytes(resign(payload))
    report = json.loads(invoke("show", "--json", "dup.json").stdout)
    assert report["no_longer_in_catalog"] == 0
    db = sqlite3.connect("data/catalog.db")
    db.execute("DELETE FROM runs WHERE run_id = ?", (entries[1]["run_id"],))
    db.commit()
    db.close()
    report = json.loads(invoke("show", "--json", "dup.json").stdout)
    assert report["no_longer_in_catalog"] == 1
