"""The implementations honour the participant contract (the seams a PostgreSQL catalog and
an object store will implement next)."""

from pathlib import Path

from retention.catalogs import open_catalog
from retention.config import load_config
from retention.participants import ArtifactStore, Catalog
from retention.store import LocalTrashStore

from . import crashkit as ck


def test_local_store_and_sqlite_catalog_implement_the_protocols(tmp_path: Path) -> None:
    ws = ck.build(tmp_path / "ws", runs=2)
    cfg = load_config(None, env={"RETENTION_CATALOG_PATH": str(ws / "data/catalog.db")})
    assert isinstance(LocalTrashStore(ws / "data/backtests"), ArtifactStore)
    with open_catalog(cfg, readonly=False) as cat:
        assert isinstance(cat, Catalog)
