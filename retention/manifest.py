"""The deletion manifest: its format, canonical encoding, signing and verification.

A manifest file is a JSON envelope ``{"alg", "key_id", "payload", "sig"}``. ``payload`` is
the canonical JSON of `Payload` (msgspec, keys sorted, indented for review, no floats) and
``sig`` is HMAC-SHA256 over exactly those payload bytes. Verification slices the payload
bytes out of the envelope (``msgspec.Raw``) and checks the signature *before* decoding
them; nothing is ever re-encoded to verify.

Every field's domain is part of the schema (`msgspec.Meta` constraints), so a manifest
signed with the right key but holding a NUL byte in a path, an integer SQLite cannot store,
a negative size or a time that is not an instant is refused when it is decoded.

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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec

from journal import fsio
from retention import identity
from retention.config import DEFAULT_MANIFEST_MAX_SIZE
from retention.durations import format_bytes, format_instant, parse_instant
from retention.errors import ManifestRejected, StorageError, UsageError
from retention.layout import STATE_DIR_HINT, StateLayout, file_kind, require_state_dir
from retention.policy import PolicySpec
from retention.store import (
    FS_ENCODING,
    FS_ERRORS,
    OutsideRoot,
    display,
    relative_artifact_path,
    text_and_raw,
)

if TYPE_CHECKING:
    from retention.participants import CatalogIdentity

FORMAT = "retention.manifest"
VERSION = 1
ALG = "HMAC-SHA256"


# An alias, because inside `Entry` the name ``bytes`` is the field, not the type.
RawPath = bytes | None

# -- field domains (checked while decoding; a violation is a `msgspec.ValidationError`) -----

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite's INTEGER
SqlInt = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
# A NUL byte makes every system call on a path fail (and SQLite text ambiguous).
NoNulText = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*\Z")]
# What `format_instant` writes, years 1100 to 8000 as `parse_instant` accepts; the day of
# the month is checked by a real parse (the pattern cannot see 2024-04-31).
Instant = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(1[1-9][0-9]{2}|[2-7][0-9]{3}|8000)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
        r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?Z\Z"
    ),
]


class Entry(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One run to delete, as measured when planned."""

    run_id: SqlInt | str
    time: Instant | None  # the run's timestamp (ISO-8601 UTC), None if unparseable
    path: NoNulText | None  # artifact dir relative to the artifact root; None: it has none
    path_raw: RawPath = None  # exact bytes when the path is not valid UTF-8
    exists: bool  # the directory existed when planned
    bytes: Count
    files: Count
    rows_fp: str  # sha256 of every catalog row of the run (all involved tables)
    dir_fp: str  # sha256 of the tree's metadata; "" when absent
    reason: str

    def __post_init__(self) -> None:
        # What `Meta` cannot express; msgspec turns a ValueError here into a ValidationError
        # naming the entry, so decoding refuses the manifest.
        if self.path_raw is not None and b"\0" in self.path_raw:
            raise ValueError("path_raw contains a NUL byte")
        if self.time is not None:
            datetime.fromisoformat(self.time)  # "day is out of range for month"

    def rel_path(self) -> RawPath:
        if self.path_raw is not None:
            return self.path_raw
        # os.fsencode without its call (apply asks for every entry's path a few times)
        return None if self.path is None else self.path.encode(FS_ENCODING, FS_ERRORS)

    def checked_rel_path(self, root: Path) -> RawPath:
        """`rel_path`, refused (`OutsideRoot`) unless it is exactly what plan would have
        written: the refusals of `relative_artifact_path` (a ``..`` component, a NUL byte,
        the root itself, anything inside the trash, another URI scheme), a path that is not
        in its normal relative form, and ``path`` and ``path_raw`` naming different things
        (``path_raw`` wins in `rel_path`, but ``path`` is what a reviewer reads)."""
        rel = self.rel_path()
        if rel is None:
            return None
        normal = relative_artifact_path(root, rel)
        if normal != rel:
            raise OutsideRoot(f"{display(rel)} is not a plain relative path ({display(normal)})")
        if text_and_raw(rel) != (self.path, self.path_raw):
            raise OutsideRoot(f"path {self.path!r} and path_raw {display(rel)!r} disagree")
        return rel


class Payload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    format: str
    version: int
    manifest_id: str
    catalog_id: str
    catalog_path: NoNulText
    artifact_root: NoNulText
    tables: list[str]
    policy: PolicySpec
    policy_digest: str
    policy_text: str
    filter: str | None
    now: Instant
    expires_at: Instant
    key_id: str
    considered: Count
    kept: Count
    total_bytes: Count
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
    payload.manifest_id = _manifest_id(canonical(payload))
    return payload


def _manifest_id(blank: bytes) -> str:
    """The id of the manifest whose canonical bytes, ``manifest_id`` empty, are ``blank``."""
    return "m-" + hashlib.sha256(blank).hexdigest()[:24]


# -- key ---------------------------------------------------------------------------------


def key_id_of(key: bytes) -> str:
    return "k-" + hashlib.sha256(b"retention key id\0" + key).hexdigest()[:16]


def load_key(state: StateLayout, *, create: bool) -> tuple[bytes, str]:
    """The workspace key and its id; created (mode 0600) when missing and ``create``.

    Raises `ManifestRejected` when the key is readable by group or others, is not a regular
    file, is malformed (not hex, not ASCII), or is missing and ``create`` is False;
    `StorageError` when it cannot be read or the state directory is not a directory.
    """
    require_state_dir(state)
    path = state.key
    if create and not os.path.lexists(path):
        _create_key(path)
    try:
        st, raw = _read_key_file(path)
    except FileNotFoundError:
        raise ManifestRejected(
            f"no signing key at {path}: this workspace has never planned",
            hint="run `retention plan` in this workspace (same --config / state.dir)",
        ) from None
    except PermissionError:
        raise StorageError(f"cannot read the signing key {path}: permission denied") from None
    except OSError as exc:
        raise StorageError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestRejected(
            f"signing key {path} is {file_kind(st.st_mode)}, not a file",
            hint="move it away; `retention plan` creates a new key (and older manifests"
            " are then refused)",
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ManifestRejected(
            f"signing key {path} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"run: chmod 600 {path}",
        )
    try:
        key = bytes.fromhex(raw.decode("ascii").strip()) if len(raw) <= _KEY_FILE_MAX else b""
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 32:
        raise ManifestRejected(f"signing key {path} is malformed (expected 64 hex digits)")
    return key, key_id_of(key)


_KEY_FILE_MAX = 4096


def _read_key_file(path: Path) -> tuple[os.stat_result, bytes]:
    """The key file's status and (for a regular file) its first bytes. Opened non-blocking,
    so a FIFO planted at its name cannot hang us."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        return st, os.read(fd, _KEY_FILE_MAX + 1) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)


def _create_key(path: Path) -> None:
    try:
        fsio.ensure_dir(path.parent)
    except OSError as exc:
        raise StorageError(
            f"cannot create the state directory {path.parent}: {exc.strerror or exc}",
            hint=STATE_DIR_HINT,
        ) from None
    try:
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
    return sign_struct(payload, payload.key_id, key)


def sign_with_id(payload: Payload, key: bytes) -> bytes:
    """`with_id`, then `sign`, the canonical bytes computed once (at a hundred thousand
    entries each time is a tenth of a second or more). The id is the digest of the bytes
    with an empty ``manifest_id``; the signed bytes are those with the id in its place. A
    top-level key is the one line of the indented JSON that begins with a newline and a
    single space (deeper keys have more; no string holds a raw newline)."""
    payload.manifest_id = ""
    blank = canonical(payload)
    payload.manifest_id = ident = _manifest_id(blank)
    body = blank.replace(_EMPTY_ID, b'\n "manifest_id": "%s"' % ident.encode(), 1)
    assert len(body) == len(blank) + len(ident), "canonical JSON without its manifest_id"
    del blank  # (a copy of the whole manifest: never three at once)
    return _envelope(body, payload.key_id, key)


_EMPTY_ID = b'\n "manifest_id": ""'


def sign_struct(payload: msgspec.Struct, key_id: str, key: bytes) -> bytes:
    """The envelope around any payload's canonical bytes (`sign` for `Payload`; the
    JSON-document catalog's manifest, `retention.jobstore`, is signed the same way)."""
    return _envelope(canonical(payload), key_id, key)


def _envelope(body: bytes, key_id: str, key: bytes) -> bytes:
    sig = hmac.new(key, body, hashlib.sha256).hexdigest()
    env = Envelope(alg=ALG, key_id=key_id, payload=msgspec.Raw(body), sig=sig)
    return msgspec.json.encode(env) + b"\n"


def verify(data: bytes | bytearray, key: bytes, key_id: str, *, now: datetime) -> Payload:
    """Check a manifest and return its payload.

    Refuses (`ManifestRejected`) anything that is not a manifest, was signed with another
    key, whose signature does not match its bytes, has an unknown format or version, holds
    a field outside its domain, or has expired at ``now``. The catalog identity is the
    caller's check. The payload is verified and decoded where it lies in ``data``: the
    file's bytes are never copied.
    """
    body = open_envelope(data, key, key_id)
    try:
        payload = msgspec.json.decode(body, type=Payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if _format_of(body) == DOCUMENT_FORMAT:
            raise ManifestRejected(
                "this manifest was planned for a JSON-document catalog, and this workspace's"
                " catalog is an SQL one",
                hint="apply it with the configuration that planned it (--config)",
            ) from None
        raise ManifestRejected(f"manifest payload is not understood: {exc}") from None
    if payload.format != FORMAT or payload.version != VERSION:
        raise ManifestRejected(
            f"unsupported manifest format {payload.format!r} version {payload.version}"
        )
    if payload.key_id != key_id:
        raise ManifestRejected("manifest key id does not match its envelope")
    expires = _instant(payload, "expires_at", payload.expires_at)
    _instant(payload, "now", payload.now)
    if sum(e.bytes for e in payload.entries) > INT64_MAX:
        raise ManifestRejected(
            f"manifest {payload.manifest_id}: the sizes of its entries add up to more than"
            " a catalog can record"
        )
    if now >= expires:
        raise ManifestRejected(
            f"manifest {payload.manifest_id} expired at {format_instant(expires)}",
            hint="run `retention plan` again to get a fresh manifest",
        )
    return payload


DOCUMENT_FORMAT = "retention.jsondoc-manifest"  # retention.jobstore's (issue 10)


class _Format(msgspec.Struct):
    format: str = ""


def _format_of(body: memoryview) -> str:
    try:
        return msgspec.json.decode(body, type=_Format).format
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def open_envelope(data: bytes | bytearray, key: bytes, key_id: str) -> memoryview:
    """The payload bytes of a manifest envelope, once its algorithm, key id and signature
    are checked (`ManifestRejected` otherwise): a view into ``data``, not a copy."""
    if not data or data.isspace():
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
    body = memoryview(env.payload)  # a view into ``data``, not a copy
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, env.sig):
        raise ManifestRejected(
            "manifest signature does not match: it was edited or damaged after planning",
            hint="plan again; any edit, even reformatting (jq, an editor), breaks the signature",
        )
    return body


def _instant(payload: Payload, name: str, text: str) -> datetime:
    try:
        return parse_instant(text)
    except UsageError:
        raise ManifestRejected(
            f"manifest {payload.manifest_id}: {name} {text!r} is not an instant"
        ) from None


_READ_CHUNK = 1 << 20
_SIZE_HINT = (
    "a manifest of a million runs is about 500 MiB; if this one is genuine, raise"
    " manifest.max_size (RETENTION_MANIFEST_MAX_SIZE)"
)


def _too_large(what: str, size: int | None, limit: int) -> ManifestRejected:
    have = "larger" if size is None else f"{format_bytes(size)} ({size} bytes), larger"
    return ManifestRejected(
        f"{what} is {have} than manifest.max_size ({format_bytes(limit)}, {limit} bytes)",
        hint=_SIZE_HINT,
    )


def _read_rest(read: Callable[[int], bytes | None], buf: bytearray, limit: int) -> bool:
    """Append what ``read`` still gives to ``buf``; False once it holds more than ``limit``."""
    while len(buf) <= limit:
        chunk = read(min(_READ_CHUNK, limit + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    return len(buf) <= limit


def read_manifest_bytes(path: str, max_size: int | None = None) -> bytearray:
    """The bytes of a manifest file (``-`` for stdin), read once into one buffer.

    Refuses (`ManifestRejected`) a manifest larger than ``max_size`` (``manifest.max_size``,
    default 1 GiB): a file by its size, before reading anything; a pipe once it has given
    one byte more than the limit. Also refuses what is neither a file nor a pipe.
    """
    limit = DEFAULT_MANIFEST_MAX_SIZE if max_size is None else max_size
    buf = bytearray()
    if path == "-":
        if not _read_rest(sys.stdin.buffer.read, buf, limit):
            raise _too_large("the manifest on stdin", None, limit)
        return buf
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise ManifestRejected(f"manifest {path} does not exist") from None
    except IsADirectoryError:
        raise ManifestRejected(f"manifest {path} is a directory") from None
    except PermissionError:
        raise ManifestRejected(f"manifest {path} is not readable (permission denied)") from None
    with f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            if st.st_size > limit:
                raise _too_large(f"manifest {path}", st.st_size, limit)
            buf = bytearray(st.st_size + 1)  # one more: a file that grew is seen growing
            n = 0
            with memoryview(buf) as view:
                while n < len(view):
                    got = f.readinto(view[n:])
                    if not got:
                        break
                    n += got
            grew = n == len(buf)
            del buf[n:]
            if not grew:
                return buf
        elif not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            raise ManifestRejected(f"manifest {path} is {file_kind(st.st_mode)}, not a file")
        if not _read_rest(f.read, buf, limit):
            raise _too_large(f"manifest {path}", None, limit)
    return buf


def verify_for_workspace(
    data: bytes | bytearray, state: StateLayout, catalog: CatalogIdentity, *, now: datetime
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
