"""The JSON-document catalog, low level: read a document, list its records, remove and put
back records, and replace the file atomically (issue 10). No CLI and no planner here.

A document is one JSON object in one file that an application rewrites (the async job
store: ``{"version": 1, "jobs": {...}, "job_results": {...}, "job_events": [...]}``).
Record kinds live in *collections* addressed by a dotted path into it (``job_results``,
``a.b``), each a list of records or a map of id -> record, described by a `CollectionSpec`.

Contracts:

* `load` reads the bytes once; `Document.digest` is their sha256 (hex). Nothing writes the
  application's document except `replace`, and nothing is ever added to it (no bookkeeping
  field): a crashed apply is decided by comparing `digest_of` with the digests recorded
  before the rename (`commit_state`).
* `records` yields one compact `Facts` per record, read-only. A record that cannot be
  addressed (no id, a duplicate id, not an object) or whose state or timestamp cannot be
  read carries an issue (`Facts.issues`) and must be kept: its ``time`` is None, or its
  ``terminal`` is False.
* `remove` and `restore` are pure: they return the new document's bytes (and what was
  removed, or refused); the parsed value of everything else and the order of every key and
  list element are kept. The bytes are re-encoded with msgspec in the document's layout
  (compact, ``json.dumps``'s default spacing, or indented; a final newline kept): the
  parsed value is the contract, not the bytes (``\\u00e9`` comes back as UTF-8, a key given
  twice keeps its last value, as every JSON reader here does).
* `replace` is the commit point: under the application's lock file if one is named, it
  refuses unless the document still has the digest it was read with, then writes a temp
  file beside it (``.<name>.retention-tmp-<pid>``, `temp_files`), fsyncs it, renames it onto
  the document and fsyncs the directory. A crash leaves the old or the new document,
  whole, and perhaps a temp file, which recovery removes (`remove_temp_files`) under the
  workspace lock.
* Failpoints ``jsondoc.after_temp_fsync`` (before the rename) and ``jsondoc.after_rename``
  (before the directory fsync), declared with retention's own in `retention.failpoints`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

from journal import fsio
from retention.durations import manifest_instant, parse_stored_time
from retention.errors import CatalogError, ConfigError, StorageError
from retention.failpoints import failpoint

FORMAT_VERSION = 1  # of `Removed`, the tombstones undo keeps in the state directory
DEFAULT_TERMINAL = ("completed", "failed", "canceled")
KEY_ID = "@key"  # `CollectionSpec.id`: the record's id is its key in a map
DEFAULT_LOCK_TIMEOUT = 10.0  # seconds `replace` waits for the application's lock file
TEMP_MARK = ".retention-tmp-"  # temp files are ".<document name>.retention-tmp-<pid>"

# Facts.issues: why a record must be kept whatever the policy says.
NOT_OBJECT = "not an object"
NO_ID = "no id"
DUPLICATE_ID = "duplicate id"
NO_TIMESTAMP = "no timestamp"
BAD_TIMESTAMP = "malformed timestamp"
NO_STATE = "no state"
OWNER_MISSING = "owner missing"
OWNER_AMBIGUOUS = "owner ambiguous"

_JOIN = re.compile(r"([^\[\]]+)\[([^\[\]]+)\]\.([^\[\].]+)")

Position = int | str  # an index in a list, a key in a map


# -- specs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Join:
    """``jobs[job_id].status``: the record's ``job_id`` names a record of ``jobs`` (its map
    key, or its id field), whose ``status`` is the record's state."""

    collection: str
    key_field: str
    field: str


def parse_state(text: str) -> str | Join:
    """A state source: a field name, or a join ``collection[key_field].field``. Raises
    `ConfigError` for a string that has brackets but is not a join."""
    m = _JOIN.fullmatch(text)
    if m:
        return Join(m.group(1), m.group(2), m.group(3))
    if not text or "[" in text or "]" in text:
        raise ConfigError(
            f"invalid state {text!r}",
            hint="name a field of the record, or join its owner: jobs[job_id].status",
        )
    return text


class CollectionSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One record kind of a document (what a config's ``[[targets]]`` entry will carry).

    ``path`` is dotted into the document (``job_results``, ``a.b``); ``id`` is a field of
    the record or ``@key`` (its key in a map); ``timestamp`` the fields tried in order (the
    first present and not null counts; if it does not parse the record has no time and is
    kept, it does not fall through, as ``catalog.time_columns`` on SQLite); ``state`` a
    field or a join (`parse_state`); ``terminal`` the states that may go.
    """

    name: str
    path: str
    id: str
    timestamp: tuple[str, ...]
    state: str | None = None
    terminal: tuple[str, ...] = DEFAULT_TERMINAL
    time_format: str = "auto"  # as catalog.time_format: auto, iso, epoch_s, epoch_ms

    def __post_init__(self) -> None:
        where = f"collection {self.name!r}"
        if not self.name:
            raise ConfigError("a collection needs a name")
        if not self.path or any(not part for part in self.path.split(".")):
            raise ConfigError(f"{where}: invalid path {self.path!r}", hint="e.g. job_results, a.b")
        if not self.id:
            raise ConfigError(f"{where}: empty id", hint="a field of the record, or @key")
        if not self.timestamp or any(not t for t in self.timestamp):
            raise ConfigError(f"{where}: timestamp must name at least one field")
        if self.time_format not in ("auto", "iso", "epoch_s", "epoch_ms"):
            raise ConfigError(f"{where}: invalid time_format {self.time_format!r}")
        if self.state is not None:
            try:
                parse_state(self.state)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))

    @property
    def state_source(self) -> str | Join | None:
        return None if self.state is None else parse_state(self.state)


class Facts(msgspec.Struct, frozen=True, gc=False):
    """What a planner needs of one record. ``id`` is None when the record has none that can
    address it; ``state`` None when it has none (or its owner is missing); ``terminal``
    whether ``state`` is one of the spec's terminal states (True when the spec names no
    state); ``issues`` the reasons to keep it whatever the policy (constants above)."""

    id: str | None
    position: Position
    time: datetime | None
    state: str | None
    terminal: bool
    issues: tuple[str, ...] = ()


# -- on disk: what remove took out, for undo ------------------------------------------------


class RemovedRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One removed record. ``position``: its index in the list or its key in the map as it
    was read. ``after``: the id (key, in a map) of the nearest record before it that stayed;
    None with ``at_start`` when none did, None without it when that record has no id (then
    `restore` falls back to the index)."""

    id: str
    position: Position
    after: str | None
    at_start: bool
    record: Any


class RemovedSet(msgspec.Struct, frozen=True, kw_only=True):
    """The records removed from one collection (self-describing: `restore` needs no spec)."""

    name: str
    path: str
    kind: Literal["list", "map"]
    id: str  # the spec's id: a field name or "@key"
    records: list[RemovedRecord]
    missing: list[str] = []  # asked for but not in the document (stale): nothing removed


class Removed(msgspec.Struct, frozen=True, kw_only=True):
    """What one `remove` took out of a document: undo's tombstone, kept in the state
    directory (`encode_removed` / `decode_removed`). ``old_digest`` is the document read,
    ``new_digest`` the document written."""

    format_version: int = FORMAT_VERSION
    document: str
    old_digest: str
    new_digest: str
    collections: dict[str, RemovedSet]

    def count(self) -> int:
        return sum(len(s.records) for s in self.collections.values())


def encode_removed(removed: Removed) -> bytes:
    return msgspec.json.encode(removed)


def decode_removed(data: bytes, where: str = "tombstone") -> Removed:
    """Decode `encode_removed`'s bytes; `CatalogError` for anything else."""
    try:
        version = msgspec.json.decode(data, type=_Versioned).format_version
    except msgspec.MsgspecError as exc:
        raise CatalogError(f"{where}: not a JSON-document tombstone: {exc}") from None
    if version != FORMAT_VERSION:
        raise CatalogError(
            f"{where}: tombstone format {version}, this retention reads {FORMAT_VERSION}",
            hint="undo with the retention version that applied",
        )
    try:
        return msgspec.json.decode(data, type=Removed)
    except msgspec.MsgspecError as exc:
        raise CatalogError(f"{where}: invalid tombstone: {exc}") from None


class _Versioned(msgspec.Struct):
    format_version: int


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """How the document's bytes were laid out, so a rewrite looks like the application's:
    ``indent`` -1 compact, 0 ``json.dumps``'s default (``", "`` and ``": "``), N spaces."""

    indent: int = -1
    final_newline: bool = False


@dataclass(frozen=True, slots=True)
class Document:
    """A document as read: ``data`` is the parsed top-level object (never changed in place),
    ``digest`` the sha256 (hex) of the bytes read, ``size`` their length."""

    path: Path
    data: dict[str, Any]
    digest: str
    size: int
    layout: Layout


def digest(data: bytes) -> str:
    """The content digest used throughout: sha256, hex."""
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its status, from one open (so the status is of those bytes)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return f.read(), st
    except FileNotFoundError:
        raise CatalogError(f"catalog {path} does not exist", hint="check catalog.path") from None
    except IsADirectoryError:
        raise CatalogError(f"catalog {path} is a directory, not a JSON document") from None
    except PermissionError as exc:
        raise CatalogError(
            f"cannot read {path}: {exc.strerror}", hint="check its permissions"
        ) from None
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror or exc}") from None


def load(path: str | os.PathLike[str]) -> Document:
    """Read and parse a document. Raises `CatalogError` (one line: the file, what is wrong,
    the byte offset when msgspec gives one) if it is missing, unreadable, not JSON, or not
    an object at the top level."""
    p = Path(path)
    raw, _ = _read(p)
    try:
        data = msgspec.json.decode(raw)
    except msgspec.MsgspecError as exc:
        text = str(exc).replace("\n", " ")
        if not raw.strip():
            text = "the file is empty"
        raise CatalogError(f"{p} is not a valid JSON document: {text}") from None
    if not isinstance(data, dict):
        raise CatalogError(
            f"{p}: the top level is a JSON {_kind(data)}, expected an object",
            hint="the catalog must be one JSON object holding the collections",
        )
    return Document(p, data, digest(raw), len(raw), _layout(raw))


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


_WS = b" \t\r\n"


def _layout(raw: bytes) -> Layout:
    """Guess the layout from the first key of the top-level object."""
    final_newline = raw.endswith(b"\n")
    i = raw.find(b"{") + 1
    j = i
    while j < len(raw) and raw[j] in _WS:
        j += 1
    gap = raw[i:j]
    if b"\n" in gap:
        spaces = gap.rsplit(b"\n", 1)[1]
        return Layout(len(spaces) if spaces.strip(b" ") == b"" else 2, final_newline)
    if j >= len(raw) or raw[j] != ord('"'):
        return Layout(-1, final_newline)
    k = j + 1
    while k < len(raw) and raw[k] != ord('"'):
        k += 2 if raw[k] == ord("\\") else 1
    if raw[k + 1 : k + 3] == b": ":
        return Layout(0, final_newline)
    return Layout(-1, final_newline)


def encode(data: Any, layout: Layout = Layout()) -> bytes:
    """Encode a document in `layout` (key order as given)."""
    out = msgspec.json.encode(data)
    if layout.indent >= 0:
        out = msgspec.json.format(out, indent=layout.indent)
    return out + b"\n" if layout.final_newline else out


def _resolve(doc: Document, path: str) -> list[Any] | dict[str, Any]:
    node: Any = doc.data
    for depth, part in enumerate(path.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(path.split(".")[:depth]) or "the top level"
            raise CatalogError(f"{doc.path}: no collection {path!r} ({where} has no {part!r})")
        node = node[part]
    if not isinstance(node, list | dict):
        raise CatalogError(
            f"{doc.path}: {path!r} is a JSON {_kind(node)}, expected an array or an object"
        )
    return node


def _entries(coll: list[Any] | dict[str, Any]) -> Iterator[tuple[Position, Any]]:
    if isinstance(coll, list):
        return iter(enumerate(coll))
    return iter(coll.items())


def _ids(coll: list[Any] | dict[str, Any], id_field: str) -> list[str | None]:
    """Every record's id, in order: its key in a map (``@key``), else its `id_field`: a
    string as it is, an integer in decimal; None for anything else (a float, a boolean,
    null, an object: such an id cannot address a record) or a record that is not an
    object."""
    if id_field == KEY_ID:
        return list(coll) if isinstance(coll, dict) else [None] * len(coll)
    values = coll.values() if isinstance(coll, dict) else coll
    out: list[str | None] = []
    for rec in values:
        v = rec.get(id_field) if type(rec) is dict else None
        out.append(v if type(v) is str else str(v) if type(v) is int else None)
    return out


def _parse_time(value: object, fmt: str) -> datetime | None:
    """`parse_stored_time`, skipping its number attempt for text that is plainly ISO-8601
    (four digits and a dash cannot be a number): the same result, twice as fast."""
    if fmt in ("auto", "iso") and type(value) is str and value[4:5] == "-" and value[:4].isdigit():
        if value[-1:] == "Z":  # what applications write: fromisoformat reads the Z itself
            with contextlib.suppress(ValueError):
                # (5 times faster than the general way)
                return manifest_instant(datetime.fromisoformat(value))
        return parse_stored_time(value, "iso")
    return parse_stored_time(value, fmt)


class _Owners:
    """The owner collection of a join, indexed once: owner id -> its state (None when it
    has none), and the ids more than one owner carries."""

    def __init__(self, doc: Document, join: Join, spec: CollectionSpec | None) -> None:
        coll = _resolve(doc, spec.path if spec is not None else join.collection)
        # Without a spec for the owners: a map is keyed by its keys, a list by the join's
        # key field (a job list whose records carry ``job_id``).
        if spec is not None:
            id_field = spec.id
        else:
            id_field = KEY_ID if isinstance(coll, dict) else join.key_field
        ids = _ids(coll, id_field)
        values = coll.values() if isinstance(coll, dict) else coll
        field = join.field
        self.state: dict[str, str | None] = {}
        for rid, rec in zip(ids, values, strict=True):
            if rid is not None and type(rec) is dict:
                v = rec.get(field)
                self.state[rid] = v if type(v) is str else None
        counts = Counter(ids)
        self.ambiguous = {rid for rid, n in counts.items() if n > 1 and rid is not None}


def records(
    doc: Document, spec: CollectionSpec, owners: Mapping[str, CollectionSpec] | None = None
) -> Iterator[Facts]:
    """The facts of every record of `spec`'s collection, in document order. Read-only.

    A join's owner collection is ``owners[join.collection]`` if given (its path and id),
    else the path ``join.collection`` in the document (a map by key; a list by the join's
    key field). Raises `CatalogError` if a collection is not in the document or is not an
    array or an object."""
    coll = _resolve(doc, spec.path)
    ids = _ids(coll, spec.id)
    counts = Counter(ids)
    source = spec.state_source
    index: _Owners | None = None
    key_field = ""
    if isinstance(source, Join):
        index = _Owners(doc, source, (owners or {}).get(source.collection))
        key_field = source.key_field
    terminal = frozenset(spec.terminal)
    fields = spec.timestamp
    fmt = spec.time_format
    shared: dict[tuple[str, ...], tuple[str, ...]] = {(): ()}  # one copy of each issue set
    entries: Iterable[tuple[Position, Any]] = (
        coll.items() if isinstance(coll, dict) else enumerate(coll)
    )
    for (pos, rec), rid in zip(entries, ids, strict=True):
        if type(rec) is not dict:
            issues: tuple[str, ...] = (NOT_OBJECT,)
            yield Facts(None, pos, None, None, False, shared.setdefault(issues, issues))
            continue
        found: list[str] = []
        if rid is None:
            found.append(NO_ID)
        elif counts[rid] > 1:
            found.append(DUPLICATE_ID)
            rid = None  # never addressable: remove would not know which one
        t: datetime | None = None
        for name in fields:
            value = rec.get(name)
            if value is not None:
                t = _parse_time(value, fmt)
                if t is None:
                    found.append(BAD_TIMESTAMP)
                break
        else:
            found.append(NO_TIMESTAMP)
        state: str | None = None
        is_terminal = True
        if isinstance(source, str):
            value = rec.get(source)
            state = value if type(value) is str else None
            if state is None:
                found.append(NO_STATE)
            is_terminal = state in terminal
        elif index is not None:
            value = rec.get(key_field)
            key = value if type(value) is str else str(value) if type(value) is int else None
            if key is not None and key in index.ambiguous:
                found.append(OWNER_AMBIGUOUS)
            elif key is None or key not in index.state:
                found.append(OWNER_MISSING)
            else:
                state = index.state[key]
                if state is None:
                    found.append(NO_STATE)
            is_terminal = state in terminal
        issues = tuple(found)
        yield Facts(rid, pos, t, state, is_terminal, shared.setdefault(issues, issues))


# -- changing (pure: bytes out) -------------------------------------------------------------


def _replaced(data: dict[str, Any], parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `data` with the value at `parts` replaced (only the dicts on the way are
    copied; key order kept)."""
    out = dict(data)
    head, rest = parts[0], parts[1:]
    out[head] = _replaced(data[head], rest, value) if rest else value
    return out


def _specs_by_name(
    specs: Iterable[CollectionSpec] | Mapping[str, CollectionSpec],
) -> dict[str, CollectionSpec]:
    if isinstance(specs, Mapping):
        return dict(specs)
    return {s.name: s for s in specs}


def remove(
    doc: Document,
    removals: Mapping[str, Iterable[str]],
    specs: Iterable[CollectionSpec] | Mapping[str, CollectionSpec],
) -> tuple[bytes, Removed]:
    """The document without the records ``removals`` names (collection name -> ids), and
    what was removed (with positions and neighbours, for `restore`).

    Everything else keeps its parsed value and its order. An id not in the collection any
    more is listed in ``RemovedSet.missing`` (a stale entry: skipped, nothing lost). Raises
    `CatalogError` for an unknown collection name, two names for the same collection, or an
    id that more than one record carries (never a guess at which one is meant)."""
    by_name = _specs_by_name(specs)
    data = doc.data
    sets: dict[str, RemovedSet] = {}
    paths: dict[str, str] = {}
    for name, ids in removals.items():
        spec = by_name.get(name)
        if spec is None:
            raise CatalogError(f"{doc.path}: no collection named {name!r} is configured")
        if spec.path in paths:
            raise CatalogError(
                f"{doc.path}: collections {paths[spec.path]!r} and {name!r} are both {spec.path!r}"
            )
        paths[spec.path] = name
        wanted = set(ids)
        coll = _resolve(doc, spec.path)
        all_ids = _ids(coll, spec.id)
        counts = Counter(all_ids)
        for wanted_id in wanted:
            if counts.get(wanted_id, 0) > 1:
                raise CatalogError(
                    f"{doc.path}: id {wanted_id!r} is carried by {counts[wanted_id]} records of"
                    f" {spec.path!r}; nothing removed"
                )
        kept_list: list[Any] = []
        kept_map: dict[str, Any] = {}
        taken: list[RemovedRecord] = []
        after: str | None = None
        at_start = True
        for (pos, rec), rid in zip(_entries(coll), all_ids, strict=True):
            if rid is not None and rid in wanted:
                taken.append(
                    RemovedRecord(id=rid, position=pos, after=after, at_start=at_start, record=rec)
                )
                continue
            at_start = False
            if isinstance(pos, str):
                kept_map[pos] = rec
                after = pos  # in a map, the neighbour is found again by its key
            else:
                kept_list.append(rec)
                after = rid if rid is not None and counts[rid] == 1 else None
        new: list[Any] | dict[str, Any] = kept_list if isinstance(coll, list) else kept_map
        found = {r.id for r in taken}
        sets[name] = RemovedSet(
            name=name,
            path=spec.path,
            kind="list" if isinstance(coll, list) else "map",
            id=spec.id,
            records=taken,
            missing=sorted(wanted - found),
        )
        if taken:
            data = _replaced(data, spec.parts, new)
    out = encode(data, doc.layout)
    return out, Removed(
        document=str(doc.path),
        old_digest=doc.digest,
        new_digest=digest(out),
        collections=sets,
    )


def restore(doc: Document, removed: Removed) -> tuple[bytes, dict[str, dict[str, str]]]:
    """The document with `removed`'s records put back, and those refused (collection name ->
    id -> why), reported, never raised.

    A list record goes back after the record that preceded it when it was removed (found by
    id), or at its index if that one is gone or had no id; several that went together come
    back in their order. A map record goes back under its key, after the key it followed.
    On the document `remove` wrote, that is exactly the document `remove` read. Refused: a
    record whose id (or key) exists again, and every record of a collection that is no
    longer there or no longer the same kind."""
    data = doc.data
    refused: dict[str, dict[str, str]] = {}
    for name, rset in removed.collections.items():
        if not rset.records:
            continue
        why = refused.setdefault(name, {})
        try:
            coll = _resolve(doc, rset.path)
        except CatalogError:
            for r in rset.records:
                why[r.id] = f"the collection {rset.path!r} is no longer in the document"
            continue
        kind = "list" if isinstance(coll, list) else "map"
        if kind != rset.kind:
            for r in rset.records:
                why[r.id] = f"{rset.path!r} is now a{'n array' if kind == 'list' else 'n object'}"
            continue
        cur_ids = _ids(coll, rset.id)
        counts = Counter(cur_ids)
        keys = list(coll) if isinstance(coll, dict) else None
        back: list[RemovedRecord] = []
        for r in rset.records:
            if r.id in counts:
                why[r.id] = "a record with this id exists again"
            elif keys is not None and not isinstance(r.position, str):
                why[r.id] = "not a map record"
            elif keys is not None and r.position in coll:
                why[r.id] = f"its key {r.position!r} is taken again"
            else:
                back.append(r)
        if not why:
            del refused[name]
        if not back:
            continue
        # Where each goes: after the element at index k of the current collection (-1:
        # at the start), found by its neighbour's id or key, else by the index it had.
        anchors: dict[str, int] = {}
        if keys is not None:
            anchors = {k: i for i, k in enumerate(keys)}
        else:
            for i, rid in enumerate(cur_ids):
                if rid is not None and counts[rid] == 1:
                    anchors[rid] = i
        slots: dict[int, list[RemovedRecord]] = {}
        ordered = sorted(
            rset.records, key=lambda r: r.position if isinstance(r.position, int) else 0
        )
        rank = {id(r): n for n, r in enumerate(ordered)}
        size = len(coll)
        for r in back:
            if r.at_start:
                k = -1
            elif r.after is not None and r.after in anchors:
                k = anchors[r.after]
            elif isinstance(r.position, int):
                # the index it would have among the records that stayed, then clamped
                k = min(r.position - rank[id(r)], size) - 1
            else:
                k = size - 1  # a map key whose neighbour is gone: at the end
            slots.setdefault(k, []).append(r)
        for group in slots.values():  # their order when removed (lists: by index)
            group.sort(key=lambda r: rank[id(r)] if isinstance(r.position, int) else 0)
        new: list[Any] | dict[str, Any]
        if keys is None:
            assert isinstance(coll, list)
            out_list = [r.record for r in slots.get(-1, ())]
            for i, rec in enumerate(coll):
                out_list.append(rec)
                out_list.extend(r.record for r in slots.get(i, ()))
            new = out_list
        else:
            assert isinstance(coll, dict)
            out_map = {str(r.position): r.record for r in slots.get(-1, ())}
            for i, key in enumerate(keys):
                out_map[key] = coll[key]
                out_map.update((str(r.position), r.record) for r in slots.get(i, ()))
            new = out_map
        data = _replaced(data, tuple(rset.path.split(".")), new)
    return encode(data, doc.layout), refused


# -- the commit point ------------------------------------------------------------------------


def temp_path(path: str | os.PathLike[str], pid: int | None = None) -> Path:
    """Where `replace` writes the new document before the rename."""
    p = Path(path)
    return p.with_name(f".{p.name}{TEMP_MARK}{os.getpid() if pid is None else pid}")


def temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Temp files `replace` left beside the document (a crash before the rename)."""
    p = Path(os.path.realpath(path))
    prefix = f".{p.name}{TEMP_MARK}"
    try:
        names = os.listdir(p.parent)
    except FileNotFoundError:
        return []
    return sorted(
        p.parent / n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()
    )


def remove_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove `temp_files` and make that durable. Only under the workspace lock (no other
    retention process may be writing one). Returns what it removed."""
    gone = []
    for t in temp_files(path):
        with contextlib.suppress(FileNotFoundError):
            t.unlink()
            gone.append(t)
    if gone:
        fsio.fsync_dir(gone[0].parent)
    return gone


def digest_of(path: str | os.PathLike[str]) -> str | None:
    """The digest of the document as it is now; None if there is none."""
    try:
        return digest(Path(path).read_bytes())
    except FileNotFoundError:
        return None


def commit_state(
    path: str | os.PathLike[str], old_digest: str, new_digest: str
) -> Literal["new", "old", "other"]:
    """Recovery's decision for a replacement that may have been interrupted: ``new`` (the
    rename happened: committed), ``old`` (it did not), ``other`` (neither: the application
    rewrote the document since, or it is gone; the journal must say which it was)."""
    now = digest_of(path)
    if now == new_digest:
        return "new"
    if now == old_digest:
        return "old"
    return "other"


@contextlib.contextmanager
def _app_lock(lock_file: str | os.PathLike[str] | None, timeout: float) -> Iterator[None]:
    if lock_file is None:
        yield
        return
    import filelock  # (50 ms of imports: not for the read-only commands)

    lock = filelock.FileLock(os.fspath(lock_file), timeout=timeout)
    try:
        lock.acquire(poll_interval=0.02)
    except filelock.Timeout:
        raise CatalogError(
            f"the application's lock {os.fspath(lock_file)} is held by another process"
            f" (waited {timeout:g} s); nothing written",
            hint="retry when the application's write finishes",
        ) from None
    except OSError as exc:
        raise StorageError(
            f"cannot take the application's lock {os.fspath(lock_file)}: {exc.strerror or exc}"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _changed(before: os.stat_result, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return True
    same = (before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    return same != (now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns, now.st_ctime_ns)


def replace(
    path: str | os.PathLike[str],
    new_bytes: bytes,
    expected_digest: str,
    lock_file: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> str:
    """Replace the document with `new_bytes` if it still has `expected_digest`: the commit
    point. Returns the new digest.

    Under `lock_file` (the application's, `filelock`, waiting at most `timeout` seconds;
    `CatalogError` if it cannot be had) when given. Re-reads the document and refuses with
    `CatalogError`, nothing written, if its digest differs. Then: temp file beside it with
    the document's permission bits (and owner, when allowed), write, fsync, failpoint
    ``jsondoc.after_temp_fsync``, a last check that the document was not rewritten
    meanwhile (by a writer that ignores the lock), rename onto it, failpoint
    ``jsondoc.after_rename``, fsync of the directory. A symlinked path replaces the file it
    points to. An `OSError` before the rename removes the temp file and is raised (with
    the file's name); `journal.FsyncError` is fatal, never retried. If the error comes after
    the rename, the new document may be in place: `commit_state` tells.
    """
    target = Path(os.path.realpath(path))
    with _app_lock(lock_file, timeout):
        current, st = _read(target)
        if digest(current) != expected_digest:
            raise CatalogError(
                f"{target}: the document changed since it was read; nothing written",
                hint="the application rewrote it meanwhile: plan again",
            )
        del current
        tmp = temp_path(target)
        renamed = False
        step = "remove leftover temp file"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # left by a dead process that had our pid
            step = "create temp file"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                step = "chmod temp file"
                os.fchmod(fd, st.st_mode & 0o7777)
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, st.st_uid, st.st_gid)
                step = "write temp file"
                view = memoryview(new_bytes)
                while view:
                    view = view[os.write(fd, view) :]
                fsio.fsync_file(fd)
            finally:
                os.close(fd)
            failpoint("jsondoc.after_temp_fsync")
            if _changed(st, target) and digest_of(target) != expected_digest:
                raise CatalogError(
                    f"{target}: the document changed while it was being replaced (a writer"
                    " that does not take the lock); nothing written",
                    hint="name the application's lock file in catalog.lock_file, then plan again",
                )
            step = "rename temp file onto"
            os.replace(tmp, target)
            renamed = True
            failpoint("jsondoc.after_rename")
            fsio.fsync_dir(target.parent)
        except BaseException as exc:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            if isinstance(exc, OSError) and not renamed:
                # the errno kept (disk full stays ENOSPC), the step and the file named
                raise OSError(exc.errno, f"{step}: {exc.strerror}", str(target)) from exc
            raise
    return digest(new_bytes)
