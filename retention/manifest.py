"""The deletion manifest: its format, canonical encoding, signing and verification.

A manifest file is a JSON envelope ``{"alg", "key_id", "payload", "sig"}``. ``payload`` is
the canonical JSON of `Payload` (msgspec, keys sorted, indented for review, no floats) and
``sig`` is HMAC-SHA256 over exactly those payload bytes. Verification slices the payload
bytes out of the envelope (``msgspec.Raw``) and checks the signature *before* decoding
them; nothing is ever re-encoded to verify.

The key lives in the state directory, is created on first use with mode 0600, and is
refused if group or others can read it (as OpenSSH refuses a private key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from journal import fsio
from retention import identity
from retention.durations import format_instant, parse_instant
from retention.errors import ManifestRejected, StorageError
from retention.layout import StateLayout
from retention.policy import PolicySpec

if TYPE_CHECKING:
    from retention.participants import CatalogIdentity

FORMAT = "retention.manifest"
VERSION = 1
ALG = "HMAC-SHA256"


# An alias, because inside `Entry` the name ``bytes`` is the field, not the type.
RawPath = bytes | None


class Entry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One run to delete, as measured when planned."""

    run_id: str | int
    time: str | None  # the run's timestamp (ISO-8601 UTC), None if unparseable
    path: str | None  # artifact dir relative to the artifact root; None: the run has none
    path_raw: RawPath = None  # exact bytes when the path is not valid UTF-8
    exists: bool  # the directory existed when planned
    bytes: int
    files: int
    rows_fp: str  # sha256 of every catalog row of the run (all involved tables)
    dir_fp: str  # sha256 of the tree's metadata; "" when absent
    reason: str

    def rel_path(self) -> RawPath:
        if self.path_raw is not None:
            return self.path_raw
        return None if self.path is None else os.fsencode(self.path)


class Payload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: str
    version: int
    manifest_id: str
    catalog_id: str
    catalog_path: str
    artifact_root: str
    tables: list[str]
    policy: PolicySpec
    policy_digest: str
    policy_text: str
    filter: str | None
    now: str
    expires_at: str
    key_id: str
    considered: int
    kept: int
    total_bytes: int
    entries: list[Entry]


class Envelope(msgspec.Struct, forbid_unknown_fields=True):
    alg: str
    key_id: str
    payload: msgspec.Raw
    sig: str


def canonical(obj: object) -> bytes:
    """Deterministic JSON: keys sorted, fixed indentation."""
    return msgspec.json.format(msgspec.json.encode(obj, order="sorted"), indent=1)


def policy_digest(spec: PolicySpec, filter_sql: str | None) -> str:
    return hashlib.sha256(canonical({"policy": spec, "filter": filter_sql})).hexdigest()


def with_id(payload: Payload) -> Payload:
    """Set ``manifest_id`` to the digest of everything else (same input, same id)."""
    payload.manifest_id = ""
    payload.manifest_id = "m-" + hashlib.sha256(canonical(payload)).hexdigest()[:24]
    return payload


# -- key ---------------------------------------------------------------------------------


def key_id_of(key: bytes) -> str:
    return "k-" + hashlib.sha256(b"retention key id\0" + key).hexdigest()[:16]


def load_key(state: StateLayout, *, create: bool) -> tuple[bytes, str]:
    """The workspace key and its id; created (mode 0600) when missing and ``create``.

    Raises `ManifestRejected` when the key is readable by group or others, is malformed,
    or is missing and ``create`` is False.
    """
    path = state.key
    if not path.exists() and create:
        _create_key(path)
    try:
        st = os.stat(path)
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ManifestRejected(
            f"no signing key at {path}: this workspace has never planned",
            hint="run `retention plan` in this workspace (same --config / state.dir)",
        ) from None
    except PermissionError:
        raise StorageError(f"cannot read the signing key {path}: permission denied") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ManifestRejected(
            f"signing key {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"run: chmod 600 {path}",
        )
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ManifestRejected(f"signing key {path} is malformed (expected 64 hex digits)")
    return key, key_id_of(key)


def _create_key(path: Path) -> None:
    try:
        fsio.ensure_dir(path.parent)
        # Never replaces: when two first plans race, the key that landed first is kept.
        fsio.write_atomic(path, secrets.token_hex(32).encode() + b"\n", 0o600, replace=False)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(
            f"cannot create the signing key {path}: {exc.strerror or exc}",
            hint="check that the state directory (state.dir) is writable",
        ) from None


# -- sign / verify ----------------------------------------------------------------------


def sign(payload: Payload, key: bytes) -> bytes:
    """The manifest file's bytes: the envelope around the canonical payload."""
    body = canonical(payload)
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    env = Envelope(alg=ALG, key_id=payload.key_id, payload=msgspec.Raw(body), sig=sig)
    return msgspec.json.encode(env) + b"\n"


def verify(data: bytes, key: bytes, key_id: str, *, now: datetime) -> Payload:
    """Check a manifest and return its payload.

    Refuses (`ManifestRejected`) anything that is not a manifest, was signed with another
    key, whose signature does not match its bytes, has an unknown format or version, or
    has expired at ``now``. The catalog identity is the caller's check.
    """
    if not data.strip():
        raise ManifestRejected(
            "the manifest is empty",
            hint="the `retention plan` that wrote it probably failed; see its error and plan again",
        )
    try:
        env = msgspec.json.decode(data, type=Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestRejected(
            f"not a retention manifest ({exc})",
            hint="give the file `retention plan` wrote; any edit, even reformatting, breaks it",
        ) from None
    if env.alg != ALG:
        raise ManifestRejected(f"unsupported signature algorithm {env.alg!r}")
    if env.key_id != key_id:
        raise ManifestRejected(
            f"manifest was signed by another workspace (key {env.key_id}, ours is {key_id})",
            hint="plan in this workspace, or use the --config of the workspace that planned it",
        )
    body = bytes(env.payload)
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, env.sig):
        raise ManifestRejected(
            "manifest signature does not match: it was edited or damaged after planning",
            hint="plan again; any edit, even reformatting (jq, an editor), breaks the signature",
        )
    try:
        payload = msgspec.json.decode(body, type=Payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ManifestRejected(f"manifest payload is not understood: {exc}") from None
    if payload.format != FORMAT or payload.version != VERSION:
        raise ManifestRejected(
            f"unsupported manifest format {payload.format!r} version {payload.version}"
        )
    if payload.key_id != env.key_id:
        raise ManifestRejected("manifest key id does not match its envelope")
    expires = parse_instant(payload.expires_at)
    if now >= expires:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} expired at {format_instant(expires)}",
            hint="run `retention plan` again to get a fresh manifest",
        )
    return payload


def read_manifest_bytes(path: str) -> bytes:
    """The bytes of a manifest file (``-`` for stdin)."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ManifestRejected(f"manifest {path} does not exist") from None
    except IsADirectoryError:
        raise ManifestRejected(f"manifest {path} is a directory") from None
    except PermissionError:
        raise ManifestRejected(f"manifest {path} is not readable (permission denied)") from None


def verify_for_workspace(
    data: bytes, state: StateLayout, catalog: CatalogIdentity, *, now: datetime
) -> Payload:
    """`verify` with this workspace's key, then check the manifest belongs to ``catalog``.

    Raises `ManifestRejected` for a manifest planned against another catalog.
    """
    key, key_id = load_key(state, create=False)
    payload = verify(data, key, key_id, now=now)
    current = identity.resolve(catalog, state, create=False)
    if current != payload.catalog_id:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} was planned against another catalog"
            f" ({payload.catalog_path}, {payload.catalog_id}); this one is {catalog.describe()}"
            f" ({current or 'never planned'})",
            hint="plan again against this catalog; a copy of a catalog file is another"
            " catalog until an apply has recorded its identity in it",
        )
    return payload
