"""The signed manifest: any edit, an expired manifest, another workspace's key, garbage,
and a key readable by others are all refused (exit 5 through the CLI)."""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from retention import manifest
from retention.config import load_config
from retention.errors import ManifestRejected
from retention.layout import StateLayout
from retention.manifest import canonical, load_key, verify
from retention.planner import build_plan

from .conftest import NOW, NOW_TEXT, invoke


def _plan(keep_last: int = 37, **overrides) -> bytes:
    """A manifest of the workspace (40 runs; keep_last 37 gives 3 entries)."""
    cfg = load_config(None, overrides={"keep_last": keep_last, **overrides})
    return build_plan(cfg, NOW).manifest


def _key(state_dir: str = ".retention") -> tuple[bytes, str]:
    return load_key(StateLayout(Path(state_dir)), create=False)


def _payload_span(data: bytes) -> tuple[int, int]:
    start = data.index(b'"payload":') + len(b'"payload":')
    end = data.rindex(b',"sig":')
    assert data[start : start + 1] == b"{" and data[end - 1 : end] == b"}"
    return start, end


def _one_line_error(stderr: str) -> str:
    lines = stderr.splitlines()
    assert lines and lines[0].startswith("Error: "), stderr
    assert all(line.startswith("Hint: ") for line in lines[1:]), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def small(workspace: Path) -> bytes:
    data = _plan()
    assert len(msgspec.json.decode(data)["payload"]["entries"]) == 3
    return data


def test_untouched_manifest_verifies_and_round_trips(small: bytes) -> None:
    key, key_id = _key()
    payload = verify(small, key, key_id, now=NOW)
    assert [e.run_id for e in payload.entries] == [
        "bt-20241101-00000",
        "bt-20241119-00001",
        "bt-20241207-00002",
    ]
    # The signed bytes are exactly the canonical encoding of the decoded payload.
    start, end = _payload_span(small)
    assert canonical(payload) == small[start:end]


def test_sign_with_id_gives_the_bytes_of_with_id_then_sign(small: bytes) -> None:
    """The canonical bytes computed once give what `with_id` then `sign` give: the same id,
    the same file, byte for byte, even when the filter's and entries' texts hold what the
    top-level key looks like (quoted, with newlines)."""
    key, key_id = _key()
    payload = verify(small, key, key_id, now=NOW)
    for tricky in ('\n "manifest_id": ""', '"manifest_id": ""', "\n", ""):
        p = msgspec.structs.replace(
            payload,
            filter=tricky or None,
            entries=[msgspec.structs.replace(e, reason=e.reason + tricky) for e in payload.entries],
        )
        twin = msgspec.structs.replace(p)
        signed = manifest.sign_with_id(p, key)
        assert signed == manifest.sign(manifest.with_id(twin), key)
        assert p.manifest_id == twin.manifest_id and p.manifest_id.startswith("m-")
        assert verify(signed, key, key_id, now=NOW) == p


def test_flipping_any_single_byte_of_the_payload_is_refused(small: bytes) -> None:
    key, key_id = _key()
    start, end = _payload_span(small)
    assert end - start > 1000
    for offset in range(start, end):
        for mask in (0x01, 0x20):
            data = bytearray(small)
            data[offset] ^= mask
            with pytest.raises(ManifestRejected):
                verify(bytes(data), key, key_id, now=NOW)


def test_flipping_any_single_byte_anywhere_in_the_file_is_refused(small: bytes) -> None:
    key, key_id = _key()
    for offset in range(len(small)):
        data = bytearray(small)
        data[offset] ^= 0x04
        with pytest.raises(ManifestRejected):
            verify(bytes(data), key, key_id, now=NOW)


def test_equivalent_json_with_other_whitespace_is_refused_nothing_is_re_encoded(
    small: bytes,
) -> None:
    key, key_id = _key()
    start, end = _payload_span(small)
    body = small[start:end]
    compact = msgspec.json.encode(msgspec.json.decode(body))
    assert msgspec.json.decode(compact) == msgspec.json.decode(body)
    with pytest.raises(ManifestRejected, match="signature does not match"):
        verify(small[:start] + compact + small[end:], key, key_id, now=NOW)
    tabbed = body.replace(b"\n ", b"\n\t", 1)
    with pytest.raises(ManifestRejected, match="signature does not match"):
        verify(small[:start] + tabbed + small[end:], key, key_id, now=NOW)


def _mutations(p: dict) -> list[tuple[str, dict]]:
    out = []

    def mut(name, fn):
        q = json.loads(json.dumps(p))
        fn(q)
        assert q != p, name
        out.append((name, q))

    e0 = p["entries"][0]
    for field, value in e0.items():
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = value + 1
        elif isinstance(value, str):
            new = value + "x"
        else:
            new = "other"
        mut(f"entries[0].{field}", lambda q, f=field, v=new: q["entries"][0].__setitem__(f, v))
    for field, value in p.items():
        if field == "entries":
            continue
        if isinstance(value, int):
            new = value + 1
        elif isinstance(value, str):
            new = value + "x"
        elif isinstance(value, list):
            new = [*value, "x"]
        elif isinstance(value, dict):
            new = {**value, "keep_last": 1}
        else:
            new = "other"
        mut(field, lambda q, f=field, v=new: q.__setitem__(f, v))
    mut("entry dropped", lambda q: q["entries"].pop())
    mut("entry added", lambda q: q["entries"].append(dict(q["entries"][0], run_id="bt-new")))
    mut("entries reordered", lambda q: q["entries"].reverse())
    mut("expiry extended", lambda q: q.__setitem__("expires_at", "2099-01-01T00:00:00Z"))
    return out


def test_changing_any_field_and_keeping_the_old_signature_is_refused(small: bytes) -> None:
    key, key_id = _key()
    start, end = _payload_span(small)
    original = msgspec.json.decode(small[start:end])
    muts = _mutations(original)
    assert len(muts) > 25
    for name, changed in muts:
        body = canonical(changed)
        with pytest.raises(ManifestRejected) as info:
            verify(small[:start] + body + small[end:], key, key_id, now=NOW)
        assert "signature does not match" in info.value.message, name


def test_a_few_tampered_manifests_are_refused_by_show_with_exit_5(small: bytes) -> None:
    start, end = _payload_span(small)
    text = small.decode()
    cases = {"flip-first": start, "flip-middle": (start + end) // 2, "flip-last": end - 1}
    for name, offset in cases.items():
        Path(name).write_bytes(small[:offset] + bytes([small[offset] ^ 1]) + small[offset + 1 :])
    Path("bytes-edited").write_text(text.replace('"bytes": ', '"bytes": 1', 1))
    Path("id-edited").write_text(text.replace("bt-20241207-00002", "bt-20261030-00039"))
    for name in [*cases, "bytes-edited", "id-edited"]:
        result = invoke("show", name)
        assert result.exit_code == 5, (name, result.stderr)
        _one_line_error(result.stderr)
        assert result.stdout == ""
    result = invoke("show", "id-edited")
    assert result.stderr.splitlines() == [
        "Error: manifest signature does not match: it was edited or damaged after planning",
        "Hint: plan again; any edit, even reformatting (jq, an editor), breaks the signature",
    ]


def test_expired_manifest_is_refused(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "2h")
    data = _plan()
    key, key_id = _key()
    verify(data, key, key_id, now=NOW + timedelta(hours=2) - timedelta(seconds=1))
    with pytest.raises(ManifestRejected, match="expired at 2026-11-01T02:00:00Z"):
        verify(data, key, key_id, now=NOW + timedelta(hours=2))
    # Through the CLI, `show` checks against the real clock: a 2026-11-01 plan with a 2h TTL.
    Path("m.json").write_bytes(data)
    monkeypatch.setenv("RETENTION_MANIFEST_TTL", "3650d")
    result = invoke("show", "m.json")
    assert result.exit_code == 5
    line = _one_line_error(result.stderr)
    assert line.startswith("Error: manifest m-") and line.endswith(
        "expired at 2026-11-01T02:00:00Z"
    )
    assert "Hint: run `retention plan` again" in result.stderr


def test_manifest_signed_by_another_workspace_key_is_refused(workspace: Path) -> None:
    data = _plan()
    other = _plan(state_dir=str(workspace / "other-state"))
    assert _key("other-state")[1] != _key()[1]
    key, key_id = _key()
    verify(data, key, key_id, now=NOW)
    with pytest.raises(ManifestRejected, match="signed by another workspace"):
        verify(other, key, key_id, now=NOW)
    # Claiming our key id in the envelope does not help: the HMAC is still the other key's.
    forged = other.replace(_key("other-state")[1].encode(), key_id.encode())
    with pytest.raises(ManifestRejected):
        verify(forged, key, key_id, now=NOW)
    Path("other.json").write_bytes(other)
    result = invoke("show", "other.json")
    assert result.exit_code == 5
    assert _one_line_error(result.stderr).startswith(
        "Error: manifest was signed by another workspace (key k-"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "Error: the manifest is empty"),
        (b"hello", "Error: not a retention manifest ("),
        (b"{}", "Error: not a retention manifest (Object missing required field `alg`)"),
        (b"[1, 2]", "Error: not a retention manifest ("),
        (b"\xff\xfe\x00garbage", "Error: not a retention manifest ("),
        (
            b'{"alg":"HMAC-SHA256","key_id":"k-x","payload":{},"sig":"00"}',
            "Error: manifest was signed by another workspace",
        ),
        (
            b'{"alg":"none","key_id":"k-x","payload":{},"sig":""}',
            "Error: unsupported signature algorithm 'none'",
        ),
    ],
    ids=["empty", "text", "empty-object", "array", "binary", "unknown-key", "alg-none"],
)
def test_garbage_manifest_is_refused_with_one_line(
    workspace: Path, content: bytes, message: str
) -> None:
    _plan()  # the workspace has a key
    Path("bad.json").write_bytes(content)
    result = invoke("show", "bad.json")
    assert result.exit_code == 5
    assert _one_line_error(result.stderr).startswith(message)


def test_missing_manifest_file_is_refused_with_one_line(workspace: Path) -> None:
    _plan()
    result = invoke("show", "nope.json")
    assert result.exit_code == 5
    assert result.stderr == "Error: manifest nope.json does not exist\n"


def test_manifest_is_refused_when_the_workspace_has_no_key(workspace: Path) -> None:
    Path("m.json").write_bytes(b'{"alg":"HMAC-SHA256","key_id":"k-x","payload":{},"sig":""}')
    result = invoke("show", "m.json")
    assert result.exit_code == 5
    assert _one_line_error(result.stderr).startswith("Error: no signing key at ")
    assert not Path(".retention/key").exists()  # show never creates a key


# -- the key file --------------------------------------------------------------------------


def test_key_is_created_mode_0600_on_first_plan_even_with_a_permissive_umask(
    workspace: Path,
) -> None:
    assert not Path(".retention/key").exists()
    old = os.umask(0)
    try:
        result = invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    st = os.stat(".retention/key")
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert len(bytes.fromhex(Path(".retention/key").read_text().strip())) == 32
    # A second plan reuses it, and the manifest names it.
    before = Path(".retention/key").read_bytes()
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT).exit_code == 0
    assert Path(".retention/key").read_bytes() == before
    assert msgspec.json.decode(Path("m.json").read_bytes())["key_id"] == manifest.key_id_of(
        bytes.fromhex(before.decode().strip())
    )


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_key_readable_by_others_is_refused_by_plan_and_show(workspace: Path, mode: int) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    key = Path(".retention/key")
    os.chmod(key, mode)
    for args in (("plan", "--keep-last", "37", "--now", NOW_TEXT), ("show", "m.json")):
        result = invoke(*args)
        assert result.exit_code == 5, args
        lines = result.stderr.splitlines()
        assert lines[0] == (
            f"Error: signing key {key.absolute()} is accessible by others (mode {mode:04o})"
        )
        assert lines[1] == f"Hint: run: chmod 600 {key.absolute()}"
        assert "chmod 600" in lines[1]
        assert result.stdout == ""
    os.chmod(key, 0o600)
    assert invoke("show", "m.json").exit_code == 0


def test_owner_read_only_key_is_accepted(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    os.chmod(".retention/key", 0o400)
    assert invoke("show", "m.json").exit_code == 0


def test_malformed_key_is_refused(workspace: Path) -> None:
    assert invoke("plan", "--keep-last", "37", "--now", NOW_TEXT, "-o", "m.json").exit_code == 0
    Path(".retention/key").write_text("not hex\n")
    result = invoke("show", "m.json")
    assert result.exit_code == 5
    assert _one_line_error(result.stderr).endswith("is malformed (expected 64 hex digits)")
