"""``swarmhub hub migrate``: copy a hub's catalog (and blobs) to another backend.

For example from the embedded SQLite catalog and data folder to PostgreSQL and S3::

    swarmhub hub migrate --from sqlite:DATA/catalog.sqlite3 --to postgresql://hub@db/hub \\
        --from-blobs DATA --to-blobs 's3://bucket/prefix?endpoint=http://s3:9000'

Readers see no downtime: the old hub keeps serving while the copy runs (SQLite's WAL lets
it read a live catalog). The copy is idempotent and can be run again: files, collections
and tokens that are new since the last run are added and revocations carried over
(``ON CONFLICT``), so the switch is: migrate while the old hub serves, stop it (or stop
publishing), migrate again, start the new hubs. Deletions are carried over too: the
target remembers which rows a migration copied (``migrated_rows``), and a copied file or
collection the source no longer has is deleted from the target (with the file's blob in
the target store, unless another file there still uses it), while what was published on
the target itself is left alone. The passkey secret is copied too, so every .torrent
already handed out keeps working; a target that already has other tokens or files is
refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from swarmhub.errors import StorageError
from swarmhub.hub.backends import open_catalog
from swarmhub.hub.blobs import BLOB_MODE, BlobStore
from swarmhub.hub.catalog import (
    SECRET_FILE,
    Catalog,
    CatalogBase,
    CatalogError,
    ConflictError,
    NotFoundError,
)

__all__ = ["MigrateReport", "migrate"]

log = logging.getLogger(__name__)

_TABLES = (
    ("collections", ("name", "private", "created"), "name", ()),
    ("tokens", ("id", "token_sha256", "role", "label", "passkey_sha256", "created",
                "revoked_at"), "id", ("revoked_at",)),
    ("files", ("id", "name", "size", "sha256", "collection", "created", "info_hash_v1",
               "info_hash_v2", "info_hash_v1_torrent", "piece_length", "torrent_hybrid",
               "torrent_v1", "published_by"), "id", ()),
)


@dataclass
class MigrateReport:
    rows: dict[str, int]
    blobs_copied: int = 0
    blobs_present: int = 0
    #: Rows a previous run copied that the source no longer has, deleted from the target.
    deleted: dict[str, int] = field(default_factory=dict)
    blobs_removed: int = 0

    def summary(self) -> str:
        rows = ", ".join(f"{n} {table}" for table, n in self.rows.items())
        gone = ", ".join(f"{n} {table}" for table, n in self.deleted.items())
        return (f"copied {rows}; blobs: {self.blobs_copied} copied, {self.blobs_present} "
                f"already there; deleted at the source since the last run: {gone or 'none'}"
                f" ({self.blobs_removed} blob(s) removed)")


def _copy_secret(src: CatalogBase, dst: CatalogBase) -> None:
    """The target derives the same passkeys as the source (old .torrent files work)."""
    secret = src._secret
    if dst._secret == secret:
        return
    with dst._tx() as db:
        row = db.one("SELECT (SELECT COUNT(*) FROM tokens) + (SELECT COUNT(*) FROM files)")
    if row is not None and int(row[0]):
        raise CatalogError("the target catalog already holds tokens or files of another "
                           "hub (another passkey secret); migrate into an empty one")
    if isinstance(dst, Catalog):
        path = dst.path.parent / SECRET_FILE
        tmp = path.with_name(f".{SECRET_FILE}.migrate")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    else:
        with dst._tx() as db:
            db.exec("UPDATE swarmhub_secret SET value = ? WHERE name = 'passkey'", secret)
    dst._secret = secret


def _copy_rows(src: CatalogBase, dst: CatalogBase) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, columns, key, updated in _TABLES:
        cols = ", ".join(columns)
        with src._tx() as db:
            rows = [tuple(r) for r in db.all(f"SELECT {cols} FROM {table}")]
        marks = ", ".join("?" for _ in columns)
        conflict = (f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in updated)}"
                    if updated else "DO NOTHING")
        index = columns.index(key)
        with dst._tx() as db:
            db.many(f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT ({key}) {conflict}", rows)
            db.many("INSERT INTO migrated_rows (tbl, id) VALUES (?, ?) "
                    "ON CONFLICT (tbl, id) DO NOTHING", [(table, r[index]) for r in rows])
            dst._changed(db)
        counts[table] = len(rows)
    dst._load_indexes()
    return counts


def _carry_deletions(src: CatalogBase, dst: CatalogBase, report: MigrateReport,
                     store: BlobStore | None) -> None:
    """Delete from ``dst`` the files and collections an earlier run copied that ``src``
    no longer has (files first: a collection is deleted only once empty)."""
    for table, key in (("files", "id"), ("collections", "name")):
        with src._tx() as db:
            alive = {str(r[0]) for r in db.all(f"SELECT {key} FROM {table}")}
        with dst._tx() as db:
            copied = {str(r[0]) for r in db.all("SELECT id FROM migrated_rows WHERE tbl = ?",
                                                table)}
        gone = sorted(copied - alive)
        done = 0
        for name in gone:
            try:
                if table == "files":
                    record, _ = dst.delete_file(name)
                    if store is not None and dst.collect_blob(record.sha256, store.delete):
                        report.blobs_removed += 1
                else:
                    dst.delete_collection(name)
                done += 1
            except NotFoundError:
                pass  # deleted on the target too
            except ConflictError as exc:  # files published on the target live in it
                log.warning("collection %s was deleted at the source but is kept: %s",
                            name, exc)
                continue
            with dst._tx() as db:
                db.exec("DELETE FROM migrated_rows WHERE tbl = ? AND id = ?", table, name)
        if done:
            report.deleted[table] = done


def _blob_store(spec: str, work: Path) -> BlobStore:
    if spec.startswith("s3://"):
        from swarmhub.hub.blobs_s3 import S3BlobStore

        return S3BlobStore(spec, work / "cache", tmp_dir=work / "tmp")
    return BlobStore(Path(spec), tmp_dir=work / "tmp")


def _copy_blobs(shas: dict[str, int], src_spec: str, dst_spec: str,
                report: MigrateReport, work: Path) -> None:
    from swarmhub.hub.blobs_s3 import S3BlobStore

    src, dst = _blob_store(src_spec, work / "src"), _blob_store(dst_spec, work / "dst")
    try:
        for sha, size in sorted(shas.items()):
            if isinstance(dst, S3BlobStore):
                if dst.remote_size(sha) == size:
                    report.blobs_present += 1
                    continue
            elif dst.path_for(sha).is_file():
                report.blobs_present += 1
                continue
            path = src.fetch(sha) if isinstance(src, S3BlobStore) else src.path_for(sha)
            if not path.is_file():
                raise StorageError(f"the source has no blob {sha}; nothing of it was copied")
            if isinstance(dst, S3BlobStore):
                dst.put_file(sha, path, size)
            else:
                final = dst.path_for(sha)
                final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                tmp = dst.tmp_dir / f"migrate-{sha}"
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
                os.chmod(tmp, BLOB_MODE)
                os.replace(tmp, final)
            if isinstance(src, S3BlobStore):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # the migration's own cache copy
            report.blobs_copied += 1
    finally:
        src.close()
        dst.close()


def migrate(source: str, target: str, *, work: Path, from_blobs: str | None = None,
            to_blobs: str | None = None) -> MigrateReport:
    """Copy the catalog ``source`` to ``target`` (and the blobs, when both are given)."""
    src = open_catalog(source, work)
    try:
        dst = open_catalog(target, work)
        try:
            _copy_secret(src, dst)
            report = MigrateReport(_copy_rows(src, dst))
            if from_blobs is not None and to_blobs is not None:
                shas = {r.sha256: r.size for r in src.all_files()}
                _copy_blobs(shas, from_blobs, to_blobs, report, work)
            store = None if to_blobs is None else _blob_store(to_blobs, work / "gc")
            try:
                _carry_deletions(src, dst, report, store)
            finally:
                if store is not None:
                    store.close()
        finally:
            dst.close()
    finally:
        src.close()
    return report
