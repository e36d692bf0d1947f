"""Journal payloads of retention's transactions (msgspec, with a format version).

The journal itself only frames opaque bytes; these structs are what retention puts in them.
"""

from __future__ import annotations

import msgspec

RECORD_VERSION = 1
KIND_MOVES = "moves"


class Begin(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Payload of BEGIN: what the transaction is (``op`` = apply | undo | purge)."""

    version: int = RECORD_VERSION
    op: str
    manifest_id: str | None = None
    manifest_digest: str | None = None
    catalog_id: str
    artifact_root: str
    created_at: str
    grace_until: str | None = None
    targets: list[str] = []  # undo/purge: the apply txids acted on
    moves: int = 0


class Move(msgspec.Struct, array_like=True, frozen=True):
    """One directory that may move between its home and its place in trash (relative to the
    artifact root). Direction-free: recovery decides which side it must end on."""

    run_id: str | int
    home: bytes
    trash: bytes


class Moves(msgspec.Struct, forbid_unknown_fields=True):
    """An intent record: a batch of moves, written before any of them happens."""

    version: int
    moves: list[Move]


# Built on first use: a command whose journal holds nothing unfinished decodes neither.
_moves_decoder: msgspec.msgpack.Decoder[Moves] | None = None
_begin_decoder: msgspec.msgpack.Decoder[Begin] | None = None


def encode(obj: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(obj)


def decode_begin(data: bytes) -> Begin:
    global _begin_decoder
    if _begin_decoder is None:
        _begin_decoder = msgspec.msgpack.Decoder(Begin)
    return _begin_decoder.decode(data)


def decode_moves(data: bytes) -> Moves:
    global _moves_decoder
    if _moves_decoder is None:
        _moves_decoder = msgspec.msgpack.Decoder(Moves)
    return _moves_decoder.decode(data)
