"""Catalog identity: the lineage id a manifest is bound to.

The rule (also in README.md):

1. If the catalog records a lineage id (table ``_retention_meta``, written by the first
   apply inside its commit transaction), that is the identity. The catalog is authoritative.
2. Otherwise (no apply has committed yet; ``plan`` never writes the catalog) the identity is
   the one bound to this catalog *file* in the state directory (``catalog-id.json``), keyed
   by its real path, device and inode; ``plan`` creates the binding on first use.
3. Apply refuses a manifest whose catalog id differs from the identity resolved by the same
   rule, and records the id in the catalog when it commits.

So a manifest planned against one catalog is refused by any other file, even one with the
same rows; a byte copy made *after* the first apply carries the lineage id and is treated as
the same catalog, as a restored backup should be.
"""

from __future__ import annotations

import secrets

import msgspec

from journal import fsio
from retention.errors import StorageError
from retention.layout import StateLayout
from retention.participants import CatalogIdentity

BINDING_VERSION = 1


class Bindings(msgspec.Struct, forbid_unknown_fields=True):
    version: int = BINDING_VERSION
    bindings: dict[str, str] = msgspec.field(default_factory=dict)


def _read(state: StateLayout) -> Bindings:
    try:
        data = state.catalog_binding.read_bytes()
    except FileNotFoundError:
        return Bindings()
    try:
        return msgspec.json.decode(data, type=Bindings)
    except msgspec.DecodeError as exc:
        raise StorageError(f"{state.catalog_binding} is damaged: {exc}") from None


def resolve(catalog: CatalogIdentity, state: StateLayout, *, create: bool) -> str | None:
    """The catalog's lineage id by the rule above; None if it has none and ``create`` is False.

    With ``create`` it may write the binding file in the state directory (never the catalog).
    """
    stored = catalog.stored_lineage()
    if stored:
        return stored
    locator = catalog.locator()
    b = _read(state)
    if locator in b.bindings:
        return b.bindings[locator]
    if not create:
        return None
    lineage = "cat-" + secrets.token_hex(12)
    b.bindings[locator] = lineage
    try:
        fsio.ensure_dir(state.root)
        fsio.write_atomic(state.catalog_binding, msgspec.json.encode(b, order="sorted"), 0o600)
    except OSError as exc:
        raise StorageError(
            f"cannot write {state.catalog_binding}: {exc.strerror or exc}",
            hint="check that the state directory is writable (state.dir)",
        ) from None
    return lineage
