"""Catalog implementations, one module per backend, behind the participant contract of
`retention.participants`: `sqlite` (the embedded default), `postgres` (a ``postgresql://``
URL in ``catalog.path``) and `jsondoc` (a JSON document). Nothing outside this package
branches on the kind of catalog."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retention.config import Config
    from retention.tombstones import TrashCatalog

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(path: object) -> bool:
    """Whether ``catalog.path`` names a PostgreSQL database (a ``postgresql://`` URL)."""
    return str(path).strip().lower().startswith(POSTGRES_SCHEMES)


def catalog_class(cfg: Config) -> type[TrashCatalog]:
    """The implementation for ``cfg.catalog_path``, imported on use (a command that never
    opens a catalog pays for neither driver)."""
    if is_postgres(cfg.catalog_path):
        from retention.catalogs.postgres import PostgresCatalog

        return PostgresCatalog
    from retention.catalogs.sqlite import SqliteCatalog

    return SqliteCatalog


def open_catalog(cfg: Config, *, readonly: bool = True) -> TrashCatalog:
    """The catalog ``cfg`` names, opened read-only (plan, status, check, show...) or for
    writing (apply, undo, purge, recover)."""
    return catalog_class(cfg)(cfg, readonly=readonly)


def open_bare(cfg: Config) -> TrashCatalog:
    """The catalog connected read-only, its schema not read (`config --check` reports every
    problem of the schema, not only the first)."""
    cls = catalog_class(cfg)
    cat = cls.__new__(cls)
    cat.cfg = cfg
    cat.readonly = True
    cat._open()
    return cat


def open_catalog_file(cfg: Config, *, readonly: bool = True) -> Any:
    """The catalog's storage as such (its size, giving free space back): `CatalogFile`
    for an SQLite file; for PostgreSQL, whose server owns its storage, an object that
    reports nothing and refuses to vacuum."""
    if is_postgres(cfg.catalog_path):
        from retention.catalogs.postgres import ServerStorage

        return ServerStorage(cfg, readonly=readonly)
    from retention.catalogs.sqlite import CatalogFile

    return CatalogFile(cfg, readonly=readonly)
