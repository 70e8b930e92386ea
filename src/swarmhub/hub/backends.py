"""Which catalog (and, later, which swarm state and blob store) a hub runs on.

``--db`` chooses the catalog: none or ``sqlite:PATH`` is the embedded SQLite catalog
(default ``DATA/catalog.sqlite3``), ``postgresql://user@host:port/db`` a PostgreSQL
database that any number of hub processes can share (``swarmhub.hub.catalog_pg``).
"""

from __future__ import annotations

from pathlib import Path

from swarmhub.hub.catalog import Catalog, CatalogBase, InvalidError

__all__ = ["open_catalog", "uses_embedded_catalog"]

_CATALOG_NAME = "catalog.sqlite3"  # reconcile.CATALOG_NAME (not imported: no cycle)


def uses_embedded_catalog(db: str | None) -> bool:
    """True when ``db`` names a SQLite file (the data folder then holds the catalog)."""
    return db is None or db.startswith("sqlite:")


def open_catalog(db: str | None, data_dir: Path) -> CatalogBase:
    """Open (create, migrate) the catalog ``db`` names; see the module doc for the forms."""
    if db is None:
        return Catalog(data_dir / _CATALOG_NAME)
    if db.startswith("sqlite:"):
        return Catalog(Path(db.removeprefix("sqlite:")))
    if db.startswith(("postgresql://", "postgres://")):
        from swarmhub.hub.catalog_pg import PgCatalog

        return PgCatalog(db)
    raise InvalidError(f"--db: expected sqlite:PATH or postgresql://..., got {db[:40]!r}")
