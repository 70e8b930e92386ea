"""The catalog in PostgreSQL (asyncpg), shared by any number of hub processes.

Same schema and migrations as the SQLite catalog (:data:`~swarmhub.hub.catalog.MIGRATIONS`,
with PostgreSQL's types: BYTEA for BLOB, DOUBLE PRECISION for REAL, BIGINT for INTEGER),
applied at start under an advisory lock so that hubs starting together migrate once.

Why asyncpg behind a synchronous interface: the hub calls its catalog through
:meth:`CatalogBase.run` (a worker thread) and reads the tracker's indexes from memory
without any I/O; keeping that contract keeps every caller (API, tracker, reconcile, the
CLI) the same for both backends. asyncpg runs on a private event loop in one thread of
its own and the methods wait on it; its pool serves the worker threads concurrently.

Other processes' writes: every write that changes the indexes (files, tokens, passkey
re-derivation) sends ``NOTIFY swarmhub_catalog`` in its transaction; each process
LISTENs on a dedicated connection and reloads both indexes when told (and after every
reconnect, in case it missed one), so a token revoked through one hub is refused by all
within milliseconds, well inside the one second the design allows. A reload rebuilds the
indexes from two queries: fine for catalogs of up to some hundred thousand files.

The passkey secret lives in the database (table ``swarmhub_secret``, made on first start)
because every process must derive the same passkeys. So, unlike with SQLite, a database
dump *does* reveal it: protect dumps like the database itself, or pass ``secret=`` (the
CLI does not yet offer a flag for that).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import asyncpg

from swarmhub.hub.catalog import CatalogBase, CatalogError, Conn

__all__ = ["CHANNEL", "PgCatalog"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The LISTEN/NOTIFY channel that tells the hub's processes to reload their indexes.
CHANNEL = "swarmhub_catalog"
_MIGRATION_LOCK = 0x5377_6172_6D68  # "Swarmh": one advisory lock id for migrations
_PUBLISH_LOCK = _MIGRATION_LOCK + 1  # add_file's duplicate check, one at a time
_TYPES = {"BLOB": "BYTEA", "REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT"}
_TYPES_RE = re.compile(r"\b(BLOB|REAL|INTEGER)\b")
_TIMEOUT = 60.0


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """``?`` placeholders as ``$1, $2...`` (the catalog's SQL has no ``?`` in literals)."""
    parts = sql.split("?")
    return "".join(p + (f"${i}" if i < len(parts) else "") for i, p in enumerate(parts, 1))


class _PgConn:
    def __init__(self, catalog: PgCatalog, conn: Any) -> None:
        self._catalog = catalog
        self._conn = conn
        #: Set by ``_changed``: this transaction also writes this process's indexes.
        self.changes_indexes = False

    def one(self, sql: str, *args: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self._catalog._call(
            self._conn.fetchrow(_numbered(sql), *args))
        return row

    def all(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = self._catalog._call(
            self._conn.fetch(_numbered(sql), *args))
        return rows

    def exec(self, sql: str, *args: Any) -> None:
        self._catalog._call(self._conn.execute(_numbered(sql), *args))

    def many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._catalog._call(self._conn.executemany(_numbered(sql), rows))


class PgCatalog(CatalogBase):
    """The catalog in the PostgreSQL database at ``dsn`` (``postgresql://user@host/db``)."""

    dialect = "postgresql"

    def __init__(self, dsn: str, *, secret: bytes | None = None, pool_size: int = 8) -> None:
        self.dsn = dsn
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="catalog-pg",
                                        daemon=True)
        self._thread.start()
        self._closed = False
        self._pool: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._dirty: asyncio.Event | None = None
        #: Index reloads done because of a notification (for tests and /metrics).
        self.reloads = 0
        # This process's index-changing writes: started (a version) and still open. A
        # reload whose rows were read while one was open, or that one began or ended
        # during, may miss what it wrote to the indexes itself: it is not applied.
        self._writes = threading.Lock()
        self._write_version = 0
        self._writing = 0
        try:
            try:
                self._pool = self._call(self._make_pool(pool_size))
            except (OSError, asyncpg.PostgresError) as exc:
                raise CatalogError(f"cannot open the PostgreSQL catalog: {exc}") from None
            super().__init__(secret if secret is not None else self._shared_secret())
            self._open()
            self._call(self._start_watcher())
        except BaseException:
            self.close()
            raise

    # -- the private loop ------------------------------------------------------------------

    async def _make_pool(self, size: int) -> Any:
        # Created inside the private loop, which the pool then belongs to.
        return await asyncpg.create_pool(self.dsn, min_size=1, max_size=size,
                                         command_timeout=_TIMEOUT)

    def _call(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the catalog's loop and wait for it (never from that loop)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a PgCatalog method was called from its own loop")

        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(_TIMEOUT)

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        conn = self._call(self._pool.acquire())
        db = _PgConn(self, conn)
        try:
            tx = conn.transaction()
            self._call(tx.start())
            try:
                yield db
            except BaseException:
                self._call(tx.rollback())
                raise
            self._call(tx.commit())
        finally:
            if db.changes_indexes:
                with self._writes:
                    self._writing -= 1
                    self._write_version += 1
            self._call(self._pool.release(conn))

    def _shared_secret(self) -> bytes:
        """The passkey key every process of this hub shares, made on first start."""
        with self._tx() as db:
            db.exec("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)
            db.exec("CREATE TABLE IF NOT EXISTS swarmhub_secret "
                    "(name TEXT PRIMARY KEY, value BYTEA NOT NULL)")
            db.exec("INSERT INTO swarmhub_secret (name, value) VALUES ('passkey', ?) "
                    "ON CONFLICT (name) DO NOTHING", secrets.token_bytes(32))
            row = db.one("SELECT value FROM swarmhub_secret WHERE name = 'passkey'")
        assert row is not None
        return bytes(row[0])

    # -- dialect hooks ---------------------------------------------------------------------

    def _begin_migration(self, db: Conn) -> None:
        db.exec("SELECT pg_advisory_xact_lock(?)", _MIGRATION_LOCK)

    def _lock_publish(self, db: Conn) -> None:
        db.exec("SELECT pg_advisory_xact_lock(?)", _PUBLISH_LOCK)

    def _lock_blob(self, db: Conn, sha256: str) -> None:
        # One lock id per blob (64 bits of a hash of its name: a collision only makes two
        # blobs wait for each other). Statements after it see every commit before it.
        key = int.from_bytes(hashlib.sha256(sha256.encode()).digest()[:8], "big", signed=True)
        db.exec("SELECT pg_advisory_xact_lock(?)", key)

    def _migration_script(self, script: str) -> str:
        return _TYPES_RE.sub(lambda m: _TYPES[m.group(1)], script)

    def _changed(self, db: Conn) -> None:
        assert isinstance(db, _PgConn)
        if not db.changes_indexes:
            db.changes_indexes = True
            with self._writes:
                self._writing += 1
                self._write_version += 1
        db.exec(f"NOTIFY {CHANNEL}")

    def _name_contains(self, query: str) -> tuple[str, str]:
        return "strpos(lower(f.name), ?) > 0", query.lower()

    def _is_unique_violation(self, exc: BaseException) -> bool:
        return isinstance(exc, asyncpg.UniqueViolationError)

    # -- other processes' writes -----------------------------------------------------------

    async def _start_watcher(self) -> None:
        self._dirty = asyncio.Event()
        listening = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(listening), name="catalog-listen")
        await asyncio.wait_for(listening.wait(), _TIMEOUT)

    async def _watch(self, listening: asyncio.Event) -> None:
        """LISTEN for changes and reload the indexes; reconnect (and reload) when cut off."""
        assert self._dirty is not None
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                await conn.add_listener(CHANNEL, self._notified)
                # Changes made before LISTEN took effect (since the indexes were loaded,
                # or while disconnected) sent no notification here: reload once.
                self._dirty.set()
                listening.set()
                while not conn.is_closed():
                    try:
                        await asyncio.wait_for(self._dirty.wait(), 1.0)
                    except TimeoutError:
                        continue
                    self._dirty.clear()
                    if not await self._reload():
                        await asyncio.sleep(0.01)  # one of our writes is open: let it end
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                    TimeoutError) as exc:
                log.warning("catalog change feed lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close(timeout=5)

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._dirty is not None:
            self._dirty.set()

    async def _reload(self) -> bool:
        """Replace the indexes with the database's; False (and another reload due) when
        one of this process's own writes overlapped the read: its rows may be missing from
        what was read while its entries are already in the indexes, and replacing them
        would drop a token or file this process just added (until the next notification)."""
        files_sql, tokens_sql = self.INDEX_QUERIES
        with self._writes:
            version, writing = self._write_version, self._writing
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            file_rows = await conn.fetch(files_sql)
            token_rows = await conn.fetch(tokens_sql)
        with self._writes:
            if writing or self._write_version != version:
                if self._dirty is not None:
                    self._dirty.set()
                return False
            self._hashes, self._passkeys = self._indexes_from(file_rows, token_rows)
        self.reloads += 1
        return True

    def close(self) -> None:
        """Stop listening, close the pool and the loop (idempotent)."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            if self._watcher is not None:
                self._watcher.cancel()
                await asyncio.gather(self._watcher, return_exceptions=True)
            if self._pool is not None:
                await asyncio.wait_for(self._pool.close(), 10)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(_TIMEOUT)
        except Exception as exc:  # closing must not hide what made us close
            log.warning("closing the PostgreSQL catalog: %s", exc)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
