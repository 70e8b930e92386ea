"""The hub's catalog: files, collections and tokens, in SQLite (stdlib ``sqlite3``, WAL,
the embedded default) or PostgreSQL (:mod:`swarmhub.hub.catalog_pg`).

:class:`CatalogBase` holds every query once; the backends supply a connection. Every
method is synchronous and short; async code calls them through :meth:`CatalogBase.run`
(a worker thread), so the event loop never waits on the database. The two lookups on
the tracker's hot path — "is this info hash ours, and is it private?" and "is this
passkey live?" — are served from in-memory indexes that are updated inside the same
transactions that change the database, so a revoked passkey or a deleted file stops
working for the very next announce (in other processes sharing a PostgreSQL catalog:
as soon as its notification arrives, milliseconds later).

The schema is versioned in ``schema_migrations``; :data:`MIGRATIONS` lists the steps and
a fresh or older database is brought up to date when it is opened.

Passkeys are not stored. A token's passkey is ``HMAC-SHA256(hub secret, token id)`` (the
hub must be able to put it into every .torrent it hands that user), and the database keeps
only its SHA-256 for lookups; the SQLite catalog keeps the secret in a 0600 file next
to it, so a copied catalog alone neither reveals nor forges a passkey (a PostgreSQL
catalog keeps it in the database, see ``catalog_pg``). Migration 2 replaced the old
random plaintext passkeys: their owners download their .torrent files again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

from swarmhub.errors import SwarmhubError
from swarmhub.metainfo.paths import safe_components

__all__ = [
    "MIGRATIONS",
    "PIN_TTL",
    "ROLES",
    "Catalog",
    "CatalogBase",
    "CatalogError",
    "CollectionRecord",
    "ConflictError",
    "Conn",
    "FileRecord",
    "InvalidError",
    "NotFoundError",
    "TokenRecord",
    "hash_passkey",
    "hash_token",
    "load_or_create_secret",
    "new_file_id",
    "validate_collection_name",
    "validate_file_name",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

ROLES = ("reader", "publisher", "admin")
_COLLECTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CatalogError(SwarmhubError):
    """A catalog request that cannot be honoured; subclasses map to HTTP statuses."""


class NotFoundError(CatalogError):
    """No such file, collection or token (HTTP 404)."""


class ConflictError(CatalogError):
    """The request clashes with what exists (HTTP 409)."""


class InvalidError(CatalogError):
    """A name or value that the hub refuses (HTTP 400)."""


MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE collections (
            name TEXT PRIMARY KEY,
            private INTEGER NOT NULL CHECK (private IN (0, 1)),
            created REAL NOT NULL
        );
        CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            token_sha256 BLOB NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('admin', 'publisher', 'reader')),
            label TEXT NOT NULL DEFAULT '',
            passkey TEXT NOT NULL UNIQUE,
            created REAL NOT NULL,
            revoked_at REAL
        );
        CREATE TABLE files (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            collection TEXT REFERENCES collections(name) ON DELETE RESTRICT,
            created REAL NOT NULL,
            info_hash_v1 BLOB,
            info_hash_v2 BLOB,
            info_hash_v1_torrent BLOB,
            piece_length INTEGER NOT NULL,
            torrent_hybrid BLOB NOT NULL,
            torrent_v1 BLOB NOT NULL,
            published_by TEXT REFERENCES tokens(id)
        );
        CREATE INDEX files_sha256 ON files(sha256);
        CREATE INDEX files_collection ON files(collection);
        CREATE INDEX files_created ON files(created);
        """,
    ),
    (
        2,
        # Plaintext passkeys go; Catalog._derive_passkeys fills in the digests of the
        # derived ones (the unique placeholder keeps the UNIQUE constraint satisfied).
        """
        ALTER TABLE tokens RENAME COLUMN passkey TO passkey_sha256;
        UPDATE tokens SET passkey_sha256 = 'pending:' || id;
        """,
    ),
    (
        3,
        # A publish pins the blob it is about to rely on (CatalogBase.pin_blob), so that
        # no hub sharing the store deletes it before the file's row exists. migrated_rows:
        # what `hub migrate` copied here, so a later run can carry the source's deletions
        # without touching what was published on this catalog itself.
        """
        CREATE TABLE blob_pins (
            sha256 TEXT NOT NULL,
            holder TEXT NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (sha256, holder)
        );
        CREATE TABLE migrated_rows (
            tbl TEXT NOT NULL,
            id TEXT NOT NULL,
            PRIMARY KEY (tbl, id)
        );
        """,
    ),
)

#: Seconds a publish's blob pin lasts at most: a hub that dies mid-publish leaves its pin
#: behind, and all that costs is the blob staying this long after nothing uses it.
PIN_TTL = 3600.0

#: Name of the file next to the catalog that holds the key passkeys are derived with.
SECRET_FILE = "passkey.secret"
_SECRET_SIZE = 32


def hash_token(token: str) -> bytes:
    """What the catalog stores instead of a token: its SHA-256."""
    return hashlib.sha256(token.encode()).digest()


def hash_passkey(passkey: str) -> str:
    """What the catalog stores and indexes instead of a passkey: its SHA-256 (hex)."""
    return hashlib.sha256(passkey.encode()).hexdigest()


def load_or_create_secret(path: Path) -> bytes:
    """The hub's passkey key from ``path``, made (random, mode 0600) on first use.

    A new key is written to a temp file and hard-linked into place, so two processes
    starting at once agree on one key and nobody reads a half-written file.
    """
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(_SECRET_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won: use its key
        finally:
            tmp.unlink()
    data = path.read_bytes()
    if len(data) != _SECRET_SIZE:
        raise CatalogError(
            f"{path.name} in the hub's data folder is damaged ({len(data)} bytes, expected "
            f"{_SECRET_SIZE}); delete it to make a new one (every passkey then changes)"
        )
    return data


def validate_file_name(name: str) -> str:
    """One safe path component (no ``..``, separators, NUL, reserved names) or InvalidError."""
    from swarmhub.errors import MetainfoError

    try:
        return safe_components([name], what="file name")[0]
    except MetainfoError as exc:
        raise InvalidError(str(exc)) from None


def validate_collection_name(name: str) -> str:
    if not _COLLECTION_RE.fullmatch(name):
        raise InvalidError(
            f"invalid collection name {name!r:.80}: use 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One published file (its torrents are fetched separately: they can be large)."""

    id: str
    name: str
    size: int
    sha256: str
    collection: str | None
    private: bool
    created: float
    info_hash_v1: bytes | None
    info_hash_v2: bytes | None
    #: The info hash of the v1-only .torrent (its info dict lacks the v2 keys).
    info_hash_v1_torrent: bytes | None
    piece_length: int
    published_by: str | None

    @property
    def swarm_hashes(self) -> tuple[bytes, ...]:
        """The 20-byte hashes peers announce for this file (hybrid v1, v2 truncated, v1)."""
        found = (self.info_hash_v1, self.info_hash_v2, self.info_hash_v1_torrent)
        return tuple(h[:20] for h in found if h is not None)


#: The tracker's index entry of one swarm hash: file id, private, and every swarm hash of
#: that file.
_HashEntry = tuple[str, bool, tuple[bytes, ...]]


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    name: str
    private: bool
    created: float
    files: int


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as stored: never the secret itself, only what it may do."""

    id: str
    role: str
    label: str
    passkey: str
    created: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


_FILE_COLUMNS = (
    "f.id, f.name, f.size, f.sha256, f.collection, COALESCE(c.private, 0), f.created, "
    "f.info_hash_v1, f.info_hash_v2, f.info_hash_v1_torrent, f.piece_length, f.published_by"
)
_FILE_FROM = "files f LEFT JOIN collections c ON c.name = f.collection"
_TOKEN_COLUMNS = "id, role, label, created, revoked_at"


def _file(row: Sequence[Any]) -> FileRecord:
    return FileRecord(
        id=row[0],
        name=row[1],
        size=row[2],
        sha256=row[3],
        collection=row[4],
        private=bool(row[5]),
        created=row[6],
        info_hash_v1=row[7],
        info_hash_v2=row[8],
        info_hash_v1_torrent=row[9],
        piece_length=row[10],
        published_by=row[11],
    )


class Conn(Protocol):
    """One connection inside :meth:`CatalogBase._tx`: ``?`` placeholders, rows as tuples."""

    def one(self, sql: str, *args: Any) -> Sequence[Any] | None: ...
    def all(self, sql: str, *args: Any) -> list[Sequence[Any]]: ...
    def exec(self, sql: str, *args: Any) -> None: ...
    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None: ...


class CatalogBase:
    """What the hub needs from a catalog, written once in SQL both SQLite and PostgreSQL run.

    A backend supplies :meth:`_tx` (a serialised connection: a lock for SQLite, a pooled
    transaction for PostgreSQL) and a few dialect hooks. Every method is synchronous and
    short; async code calls them through :meth:`run` (a worker thread), so the event
    loop never waits on the database. The tracker's hot-path lookups read in-memory
    indexes that this process updates as it writes; a shared backend also refreshes
    them when another process writes (see ``catalog_pg``).
    """

    #: ``sqlite`` or ``postgresql``; tests and ``migrate`` read it.
    dialect = "sqlite"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        #: 20-byte info hash (v1, or v2 truncated) -> (file id, private) for the tracker.
        self._hashes: dict[bytes, _HashEntry] = {}
        #: SHA-256 (hex) of each live passkey -> token id, for private announces.
        self._passkeys: dict[str, str] = {}

    def _open(self) -> None:
        """Migrate, re-derive passkeys and load the indexes (subclasses call it once)."""
        self._migrate()
        self._derive_passkeys()
        self._load_indexes()

    # -- what a backend provides -----------------------------------------------------------

    def _tx(self) -> AbstractContextManager[Conn]:
        raise NotImplementedError

    def _begin_migration(self, db: Conn) -> None:
        """Inside the migration transaction: keep other processes out until it commits."""

    def _migration_script(self, script: str) -> str:
        return script

    def _lock_publish(self, db: Conn) -> None:
        """Inside add_file: one publish at a time across processes (SQLite's BEGIN
        IMMEDIATE already is that), so two cannot both pass the duplicate check."""

    def _changed(self, db: Conn) -> None:
        """Inside a write that changes the indexes: tell the other processes."""

    def _lock_blob(self, db: Conn, sha256: str) -> None:
        """Inside pin_blob/collect_blob: one of them per blob at a time across processes
        (SQLite's BEGIN IMMEDIATE already serialises every writer)."""

    def _after_rekey(self) -> None:
        """Passkey digests were replaced: make the old ones leave the disk."""

    def _name_contains(self, query: str) -> tuple[str, str]:
        """SQL (one ``?``) and its argument: ``f.name`` contains ``query``, any case."""
        return "instr(casefold(f.name), ?) > 0", query.casefold()

    def _is_unique_violation(self, exc: BaseException) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- plumbing --------------------------------------------------------------------------

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one catalog method in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _migrate(self) -> None:
        with self._tx() as db:
            self._begin_migration(db)
            db.exec(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
                if self.dialect == "sqlite" else
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)"
            )
        for version, script in MIGRATIONS:
            with self._tx() as db:
                self._begin_migration(db)
                row = db.one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                if row is not None and int(row[0]) >= version:
                    continue
                for statement in self._migration_script(script).split(";"):
                    if statement.strip():
                        db.exec(statement)
                db.exec("INSERT INTO schema_migrations(version, applied) VALUES (?, ?)",
                        version, time.time())

    def _derive_passkeys(self) -> None:
        """Store the digest of each token's derived passkey where it is missing or stale.

        Missing: right after migration 2. Stale: the secret was replaced, so every
        passkey changed; the old ones must stop working and the new ones must work.
        """
        with self._tx() as db:
            rows = db.all("SELECT id, passkey_sha256 FROM tokens")
            stale = [(hash_passkey(self.passkey_for(i)), i) for i, d in rows
                     if d != hash_passkey(self.passkey_for(i))]
            if not stale:
                return
            db.many("UPDATE tokens SET passkey_sha256 = ? WHERE id = ?", stale)
            self._changed(db)
        self._after_rekey()
        pending = sum(1 for _, d in rows if str(d).startswith("pending:"))
        if len(stale) > pending:
            log.warning("the passkey secret changed: %d passkey(s) re-derived; their "
                        "owners must download their .torrent files again",
                        len(stale) - pending)

    def passkey_for(self, token_id: str) -> str:
        """A token's passkey (32 hex digits), derived: it is never stored."""
        mac = hmac.new(self._secret, b"swarmhub passkey\0" + token_id.encode(), hashlib.sha256)
        return mac.hexdigest()[:32]

    def _token(self, row: Sequence[Any]) -> TokenRecord:
        token_id, role, label, created, revoked_at = row
        return TokenRecord(token_id, role, label, self.passkey_for(token_id), created,
                           revoked_at)

    def schema_version(self) -> int:
        with self._tx() as db:
            row = db.one("SELECT MAX(version) FROM schema_migrations")
        return int(row[0] or 0) if row is not None else 0

    #: The two queries the indexes are built from (see :meth:`_indexes_from`).
    INDEX_QUERIES = (
        f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM}",
        "SELECT id, passkey_sha256 FROM tokens WHERE revoked_at IS NULL",
    )

    @staticmethod
    def _indexes_from(
        file_rows: Iterable[Sequence[Any]], token_rows: Iterable[Sequence[Any]]
    ) -> tuple[dict[bytes, _HashEntry], dict[str, str]]:
        hashes: dict[bytes, _HashEntry] = {}
        for row in file_rows:
            record = _file(row)
            group = record.swarm_hashes
            for h in group:
                hashes[h] = (record.id, record.private, group)
        passkeys = {str(digest): str(token_id) for token_id, digest in token_rows}
        return hashes, passkeys

    def _read_indexes(
        self, db: Conn
    ) -> tuple[dict[bytes, _HashEntry], dict[str, str]]:
        files_sql, tokens_sql = self.INDEX_QUERIES
        return self._indexes_from(db.all(files_sql), db.all(tokens_sql))

    def _load_indexes(self) -> None:
        """Replace both indexes with what the database holds (one swap each: readers
        see the old or the new dict, never a half-built one)."""
        with self._tx() as db:
            self._hashes, self._passkeys = self._read_indexes(db)

    def _index_file(self, record: FileRecord) -> None:
        group = record.swarm_hashes
        for h in group:
            self._hashes[h] = (record.id, record.private, group)

    # -- tracker hot path (no SQL, no lock: dict reads are atomic) -------------------------

    def lookup_info_hash(self, info_hash: bytes) -> tuple[str, bool] | None:
        """``(file id, private)`` of a catalogued torrent, or None."""
        entry = self._hashes.get(info_hash)
        return None if entry is None else entry[:2]

    def swarms_of(self, info_hash: bytes) -> tuple[bytes, ...]:
        """Every swarm of the file whose swarm ``info_hash`` is (its
        :attr:`FileRecord.swarm_hashes`; just ``info_hash`` when not catalogued): a peer is
        counted once across them (the tracker's ``file_stats``)."""
        entry = self._hashes.get(info_hash)
        return (info_hash,) if entry is None else entry[2]

    def info_hashes(self, *, include_private: bool) -> list[bytes]:
        """Every catalogued 20-byte info hash (for a full scrape)."""
        items = list(self._hashes.items())
        return [h for h, (_, private, _) in items if include_private or not private]

    def file_ids(self) -> set[str]:
        """Ids of every catalogued file (from the index: what the seeder syncs against)."""
        return {file_id for file_id, _, _ in list(self._hashes.values())}

    def passkey_is_live(self, passkey: str) -> bool:
        return self.passkey_owner(passkey) is not None

    def passkey_owner(self, passkey: str) -> str | None:
        """The id of the live token whose passkey this is, or None (unknown or revoked)."""
        return self._passkeys.get(hash_passkey(passkey))

    # -- files -----------------------------------------------------------------------------

    def add_file(
        self,
        *,
        name: str,
        size: int,
        sha256: str,
        collection: str | None,
        info_hash_v1: bytes | None,
        info_hash_v2: bytes | None,
        piece_length: int,
        torrent_hybrid: bytes,
        torrent_v1: bytes,
        published_by: str | None,
        info_hash_v1_torrent: bytes | None = None,
        file_id: str | None = None,
    ) -> FileRecord:
        """Insert a published file; the caller has stored its blob and made its torrents."""
        name = validate_file_name(name)
        file_id = file_id or new_file_id()
        with self._tx() as db:
            if collection is not None:
                row = db.one("SELECT private FROM collections WHERE name = ?", collection)
                if row is None:
                    raise NotFoundError(
                        f"no collection named {collection!r}; an admin creates it with "
                        "POST /api/collections"
                    )
            hashes = (info_hash_v1, info_hash_v2, info_hash_v1_torrent)
            for h in (x[:20] for x in hashes if x is not None):
                if h in self._hashes:
                    raise ConflictError(
                        f"the same torrent is already published as file {self._hashes[h][0]}"
                    )
            # The index may not have heard of another process's publish yet: ask the table.
            self._lock_publish(db)
            same = db.one("SELECT id FROM files WHERE info_hash_v1 = ? OR info_hash_v2 = ?"
                          " OR info_hash_v1_torrent = ? LIMIT 1", *hashes)
            if same is not None:
                raise ConflictError(f"the same torrent is already published as file {same[0]}")
            db.exec(
                "INSERT INTO files (id, name, size, sha256, collection, created, info_hash_v1,"
                " info_hash_v2, info_hash_v1_torrent, piece_length, torrent_hybrid, torrent_v1,"
                " published_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                file_id, name, size, sha256, collection, time.time(), info_hash_v1,
                info_hash_v2, info_hash_v1_torrent, piece_length, torrent_hybrid, torrent_v1,
                published_by,
            )
            row = db.one(f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM} WHERE f.id = ?", file_id)
            assert row is not None
            record = _file(row)
            self._changed(db)
            self._index_file(record)
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        with self._tx() as db:
            row = db.one(f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM} WHERE f.id = ?", file_id)
        return None if row is None else _file(row)

    def find_same(self, sha256: str, name: str, private: bool) -> FileRecord | None:
        """A file with the same bytes, name and privacy: it has the same info hashes."""
        with self._tx() as db:
            row = db.one(
                f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM} WHERE f.sha256 = ? AND f.name = ?"
                " AND COALESCE(c.private, 0) = ? LIMIT 1",
                sha256, name, int(private),
            )
        return None if row is None else _file(row)

    def get_torrent(self, file_id: str, version: str) -> bytes | None:
        """The stored .torrent (``"hybrid"`` or ``"v1"``), with the public announce URL."""
        column = {"hybrid": "torrent_hybrid", "v1": "torrent_v1"}[version]
        with self._tx() as db:
            row = db.one(f"SELECT {column} FROM files WHERE id = ?", file_id)
        return None if row is None else bytes(row[0])

    def list_files(
        self,
        *,
        collection: str | None = None,
        query: str | None = None,
        include_private: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[FileRecord], int]:
        """A page of files (newest first) and the total that match."""
        where: list[str] = []
        args: list[Any] = []
        if collection is not None:
            where.append("f.collection = ?")
            args.append(collection)
        if query:
            sql, arg = self._name_contains(query)
            where.append(sql)
            args.append(arg)
        if not include_private:
            where.append("COALESCE(c.private, 0) = 0")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self._tx() as db:
            total = db.one(f"SELECT COUNT(*) FROM {_FILE_FROM}{clause}", *args)
            rows = db.all(
                f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM}{clause}"
                " ORDER BY f.created DESC, f.id LIMIT ? OFFSET ?",
                *args, max(0, limit), max(0, offset),
            )
        return [_file(r) for r in rows], int(total[0]) if total is not None else 0

    def all_files(self) -> list[FileRecord]:
        with self._tx() as db:
            rows = db.all(f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM}")
        return [_file(r) for r in rows]

    def delete_file(self, file_id: str) -> tuple[FileRecord, bool]:
        """Remove a file; returns it and whether its blob is now unreferenced (to be GC'd)."""
        with self._tx() as db:
            row = db.one(f"SELECT {_FILE_COLUMNS} FROM {_FILE_FROM} WHERE f.id = ?", file_id)
            if row is None:
                raise NotFoundError(f"no file with id {file_id!r}")
            record = _file(row)
            db.exec("DELETE FROM files WHERE id = ?", file_id)
            self._changed(db)
            for h in record.swarm_hashes:
                self._hashes.pop(h, None)
            refs = db.one("SELECT COUNT(*) FROM files WHERE sha256 = ?", record.sha256)
        return record, refs is not None and int(refs[0]) == 0

    def blob_is_referenced(self, sha256: str) -> bool:
        with self._tx() as db:
            row = db.one("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", sha256)
        return row is not None

    # -- blob lifetime across hubs sharing a store -----------------------------------------
    #
    # Blobs are content-addressed and shared: a publish whose bytes are already stored
    # relies on the existing blob (dedup), and a delete removes the blob once no file
    # references it. Between "the blob is there" and "my row is written" a publish holds
    # a pin; deleting checks rows and pins and removes the blob in one transaction under
    # the blob's lock, and pinning takes the same lock. So a publish either pinned first
    # (the delete leaves the blob) or pins after the blob is gone (and stores it again).

    def pin_blob(self, sha256: str, holder: str, ttl: float = PIN_TTL) -> None:
        """Keep blob ``sha256`` from :meth:`collect_blob` until :meth:`unpin_blob` (or
        ``ttl`` seconds, should the holder die); call it *before* looking for the blob."""
        with self._tx() as db:
            self._lock_blob(db, sha256)
            db.exec("INSERT INTO blob_pins (sha256, holder, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (sha256, holder) DO UPDATE SET expires = excluded.expires",
                    sha256, holder, time.time() + ttl)

    def unpin_blob(self, sha256: str, holder: str) -> None:
        with self._tx() as db:
            db.exec("DELETE FROM blob_pins WHERE sha256 = ? AND holder = ?", sha256, holder)

    def collect_blob(self, sha256: str, delete: Callable[[str], object]) -> bool:
        """Call ``delete(sha256)`` if no file references the blob and nobody pins it, in
        the transaction that checked both (see above); True when it was called."""
        with self._tx() as db:
            self._lock_blob(db, sha256)
            db.exec("DELETE FROM blob_pins WHERE expires < ?", time.time())
            if db.one("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", sha256) is not None:
                return False
            if db.one("SELECT 1 FROM blob_pins WHERE sha256 = ? LIMIT 1", sha256) is not None:
                return False
            delete(sha256)
        return True

    # -- collections -----------------------------------------------------------------------

    def add_collection(self, name: str, private: bool) -> CollectionRecord:
        name = validate_collection_name(name)
        try:
            with self._tx() as db:
                db.exec("INSERT INTO collections (name, private, created) VALUES (?, ?, ?)",
                        name, int(private), time.time())
        except Exception as exc:
            if self._is_unique_violation(exc):
                raise ConflictError(f"collection {name!r} already exists") from None
            raise
        found = self.get_collection(name)
        assert found is not None
        return found

    def get_collection(self, name: str) -> CollectionRecord | None:
        with self._tx() as db:
            row = db.one(
                "SELECT c.name, c.private, c.created,"
                " (SELECT COUNT(*) FROM files f WHERE f.collection = c.name)"
                " FROM collections c WHERE c.name = ?",
                name,
            )
        return None if row is None else CollectionRecord(row[0], bool(row[1]), row[2], row[3])

    def list_collections(self) -> list[CollectionRecord]:
        with self._tx() as db:
            rows = db.all(
                "SELECT c.name, c.private, c.created,"
                " (SELECT COUNT(*) FROM files f WHERE f.collection = c.name)"
                " FROM collections c ORDER BY c.name"
            )
        return [CollectionRecord(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    def delete_collection(self, name: str) -> None:
        """Remove an empty collection (files must be deleted first: no silent data loss)."""
        with self._tx() as db:
            row = db.one(
                "SELECT (SELECT COUNT(*) FROM files WHERE collection = ?),"
                " EXISTS(SELECT 1 FROM collections WHERE name = ?)",
                name, name,
            )
            assert row is not None
            if not row[1]:
                raise NotFoundError(f"no collection named {name!r}")
            if row[0]:
                raise ConflictError(
                    f"collection {name!r} still holds {row[0]} file(s); delete them first"
                )
            db.exec("DELETE FROM collections WHERE name = ?", name)

    # -- tokens ----------------------------------------------------------------------------

    def add_token(self, role: str, label: str = "") -> tuple[str, TokenRecord]:
        """Create a token; returns the secret (shown once, never stored) and its record."""
        if role not in ROLES:
            raise InvalidError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if len(label) > 200:
            raise InvalidError("token label is longer than 200 characters")
        secret = secrets.token_urlsafe(32)
        token_id = "tk" + secrets.token_urlsafe(6)
        record = TokenRecord(
            id=token_id,
            role=role,
            label=label,
            passkey=self.passkey_for(token_id),
            created=time.time(),
            revoked_at=None,
        )
        digest = hash_passkey(record.passkey)
        with self._tx() as db:
            db.exec(
                f"INSERT INTO tokens (token_sha256, passkey_sha256, {_TOKEN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                hash_token(secret), digest, record.id, record.role, record.label,
                record.created, record.revoked_at,
            )
            self._changed(db)
            self._passkeys[digest] = record.id
        return secret, record

    def token_for_secret(self, secret: str) -> TokenRecord | None:
        """The token record whose secret this is (revoked ones included), or None."""
        digest = hash_token(secret)
        with self._tx() as db:
            row = db.one(
                f"SELECT token_sha256, {_TOKEN_COLUMNS} FROM tokens WHERE token_sha256 = ?",
                digest,
            )
        if row is None or not hmac.compare_digest(bytes(row[0]), digest):
            return None
        return self._token(row[1:])

    def get_token(self, token_id: str) -> TokenRecord | None:
        with self._tx() as db:
            row = db.one(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", token_id)
        return None if row is None else self._token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with self._tx() as db:
            rows = db.all(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created, id")
        return [self._token(r) for r in rows]

    def revoke_token(self, token_id: str) -> TokenRecord:
        """Revoke now: the next request or announce with it is refused (here at once,
        in the hub's other processes as soon as they hear of it)."""
        with self._tx() as db:
            row = db.one("SELECT passkey_sha256 FROM tokens WHERE id = ?", token_id)
            if row is None:
                raise NotFoundError(f"no token with id {token_id!r}")
            db.exec("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    time.time(), token_id)
            self._changed(db)
            self._passkeys.pop(row[0], None)
        found = self.get_token(token_id)
        assert found is not None
        return found

    def count_tokens(self) -> int:
        with self._tx() as db:
            row = db.one("SELECT COUNT(*) FROM tokens")
        return int(row[0]) if row is not None else 0

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Totals for the API and /metrics."""
        with self._tx() as db:
            files = db.one("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files")
            blobs = db.one(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM"
                " (SELECT sha256, MAX(size) AS size FROM files GROUP BY sha256) AS b"
            )
            collections = db.one("SELECT COUNT(*) FROM collections")
            tokens = db.one("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL")
        assert files and blobs and collections and tokens
        return {
            "files": int(files[0]),
            "file_bytes": int(files[1]),
            "blobs": int(blobs[0]),
            "blob_bytes": int(blobs[1]),
            "collections": int(collections[0]),
            "active_tokens": int(tokens[0]),
        }


class _SqliteConn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def one(self, sql: str, *args: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._db.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return self._db.execute(sql, args).fetchall()

    def exec(self, sql: str, *args: Any) -> None:
        self._db.execute(sql, args)

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql, rows)


class Catalog(CatalogBase):
    """The embedded SQLite catalog at ``path`` (created and migrated on open).

    Why one connection behind a lock: SQLite serialises writers anyway, and one
    connection avoids "database is locked" retries. A write that spans statements runs
    in one transaction (``BEGIN IMMEDIATE``). ``secret`` derives the passkeys; by
    default it is read from (or created as) :data:`SECRET_FILE` in the catalog's folder.

    ``poll`` > 0: other processes write to this file too (``hub --workers``); every
    ``poll`` seconds a thread asks SQLite whether anyone committed (``PRAGMA
    data_version``, one cheap query) and reloads the indexes when so, so a revocation
    through another worker is refused here within ``poll`` seconds.
    """

    def __init__(self, path: Path, *, secret: bytes | None = None, poll: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if secret is None:
            secret = load_or_create_secret(self.path.parent / SECRET_FILE)
        super().__init__(secret)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Deleted or replaced rows (revoked tokens, old passkeys) are zeroed on disk.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.create_function("casefold", 1, _casefold, deterministic=True)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        #: Polls begun, and the poll whose reload last succeeded (counts, for tests: a
        #: write shows in the first poll that starts after it, whatever the machine's load).
        self.polls = 0
        self.reloaded_at_poll = 0
        probe = None
        if poll > 0:
            # The first version is read before the indexes are loaded: a write in between
            # then counts as a change (a later first read would miss it for good).
            probe = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            seen = _data_version(probe)
        try:
            self._open()
        except BaseException:
            if probe is not None:
                probe.close()
            raise
        if probe is not None:
            self._watcher = threading.Thread(target=self._watch, args=(probe, seen, poll),
                                             name="catalog-poll", daemon=True)
            self._watcher.start()

    def _watch(self, probe: sqlite3.Connection, seen: int, poll: float) -> None:
        def version() -> int:
            return _data_version(probe)

        try:
            while not self._stop.wait(poll):
                self.polls += 1
                now = version()
                if now != seen:
                    try:
                        self._load_indexes()
                    except sqlite3.Error as exc:  # retried at the next poll
                        log.warning("cannot reload the catalog's indexes: %s", exc)
                    else:
                        seen = now
                        self.reloaded_at_poll = self.polls
        finally:
            probe.close()

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _after_rekey(self) -> None:
        # Old values leave the disk too: secure_delete zeroed them in the pages, and the
        # checkpoint empties the WAL that still held the old page images.
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(10)
        with self._lock:
            self._db.close()


def _data_version(db: sqlite3.Connection) -> int:
    # fetchall() ends the statement: a half-read one would keep a read transaction, and
    # its snapshot, open, and the version would never change.
    return int(db.execute("PRAGMA data_version").fetchall()[0][0])


def new_file_id() -> str:
    """A short URL-safe random id (72 bits), never starting with ``-``: one in 64 did, and
    ``swarmhub admin files delete -Xy...`` then read it as an option (a usage error)."""
    file_id = secrets.token_urlsafe(9)
    return "_" + file_id[1:] if file_id.startswith("-") else file_id


def _casefold(text: str | None) -> str | None:
    return None if text is None else text.casefold()
