"""Which catalog and blob store a hub runs on (the swarm state: ``hub.swarmstate``).

``--db`` chooses the catalog: none or ``sqlite:PATH`` is the embedded SQLite catalog
(default ``DATA/catalog.sqlite3``), ``postgresql://user@host:port/db`` a PostgreSQL
database that any number of hub processes can share (``swarmhub.hub.catalog_pg``).

Blobs: in the data folder (default), in a folder several hubs share (``--blobs DIR``),
or in S3 (``--store s3://...``, ``swarmhub.hub.blobs_s3``; the data folder caches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarmhub.hub.blobs import BlobStore
from swarmhub.hub.catalog import Catalog, CatalogBase, InvalidError

__all__ = ["open_blob_store", "open_catalog", "uses_embedded_catalog"]

_CATALOG_NAME = "catalog.sqlite3"  # reconcile.CATALOG_NAME (not imported: no cycle)


def uses_embedded_catalog(db: str | None) -> bool:
    """True when ``db`` names a SQLite file (the data folder then holds the catalog)."""
    return db is None or db.startswith("sqlite:")


def open_catalog(db: str | None, data_dir: Path, *, poll: float = 0.0) -> CatalogBase:
    """Open (create, migrate) the catalog ``db`` names; see the module doc for the forms.
    ``poll``: a SQLite file other processes write too is checked that often (seconds)."""
    if db is None:
        return Catalog(data_dir / _CATALOG_NAME, poll=poll)
    if db.startswith("sqlite:"):
        return Catalog(Path(db.removeprefix("sqlite:")), poll=poll)
    if db.startswith(("postgresql://", "postgres://")):
        from swarmhub.hub.catalog_pg import PgCatalog

        return PgCatalog(db)
    raise InvalidError(f"--db: expected sqlite:PATH or postgresql://..., got {db[:40]!r}")


def open_blob_store(config: Any) -> BlobStore:
    """The blob store a :class:`~swarmhub.hub.api.HubConfig` asks for."""
    tmp = config.data_dir / "tmp"  # per hub: its start-up sweep touches only its uploads
    if config.store is not None:
        if config.blob_dir is not None:
            raise InvalidError("--store and --blobs exclude each other: with S3 the data "
                               "folder is the local cache")
        from swarmhub.hub.blobs_s3 import S3BlobStore

        return S3BlobStore(config.store, config.data_dir, tmp_dir=tmp,
                           redirect=config.s3_redirect, piece_cache=config.s3_piece_cache)
    return BlobStore(config.blob_dir or config.data_dir, tmp_dir=tmp)
