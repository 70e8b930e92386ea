"""Blobs in S3 (any S3-compatible server), with the hub's data folder as a local cache.

``--store s3://BUCKET/PREFIX?endpoint=http://HOST:PORT&region=R``; credentials come from
the usual places (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws``...), as
for any botocore client. The client is aiobotocore (botocore's maintained asyncio port).

What lives where:

- S3 holds every blob (``PREFIX/ab/<sha256>``): it is the copy all hub processes share.
  A publish stages and hashes the upload locally as before, uploads it (multipart past
  :data:`PART_SIZE`), then keeps it in the local cache: S3 has it before the catalog row
  is written, so no hub ever lists a file whose blob is not in S3.
- The local ``DATA/blobs`` folder is this hub's cache. HTTP downloads of a cached blob
  go out with sendfile as before; a blob that is not cached is streamed from S3 (the
  client's ranges become ranged GETs, conditionals are answered by the hub), or, with
  ``--s3-redirect``, answered with a 307 to a presigned S3 URL that serves the ranges
  itself.
- The embedded seeder reads the pieces peers ask for (:class:`BlobPieceStorage`): from
  the local copy when this hub has one (it took the upload), otherwise by ranged GETs
  from S3 kept in a :class:`PieceCache`, an LRU bounded in bytes (``--s3-piece-cache``),
  so a hub seeds any number of files without holding them. (Pieces are verified by the
  peers that receive them, as for any seeder.) ``fetch`` (a whole verified copy) is for
  ``hub migrate``.

Why a private event loop: the blob store's interface is synchronous (the hub calls
``commit`` and ``delete`` from worker threads, like the catalog), so the S3 client lives
on a loop of its own in one thread; streaming downloads await it from the hub's loop
through ``asyncio.wrap_future``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarmhub.errors import StorageError
from swarmhub.hub.blobs import BLOB_MODE, BlobInfo, BlobStore, StagedBlob
from swarmhub.metainfo.model import Metainfo
from swarmhub.storage.files import TorrentStorage

__all__ = ["PART_SIZE", "BlobPieceStorage", "PieceCache", "S3BlobStore", "S3Location",
           "parse_s3_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Uploads larger than this go up in parts of this size (S3's minimum part is 5 MiB).
PART_SIZE = 16 << 20
#: Bytes asked of S3 per read while streaming a download.
_CHUNK = 1 << 20
_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket/prefix?endpoint=http://host:9000&region=us-east-1``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"--store: expected s3://BUCKET/PREFIX?endpoint=URL, got {url!r}")
    query = urllib.parse.parse_qs(parts.query)
    return S3Location(
        bucket=parts.netloc,
        prefix=parts.path.strip("/"),
        endpoint=query.get("endpoint", [None])[0],
        region=query.get("region", ["us-east-1"])[0],
    )


#: Default bytes of S3 pieces the seeder keeps in memory (``--s3-piece-cache``).
PIECE_CACHE_BYTES = 64 << 20


class PieceCache:
    """Byte ranges of blobs, least recently used first out, at most ``capacity`` bytes.

    Thread-safe: the seeder's disk threads read through it. A range larger than the
    whole capacity is handed out but not kept.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.size = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple[str, int, int], data: bytes) -> None:
        if len(data) > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= len(old)
            self._items[key] = data
            self.size += len(data)
            while self.size > self.capacity:
                _, gone = self._items.popitem(last=False)
                self.size -= len(gone)

    def ranges(self) -> list[tuple[str, int, int]]:
        """Cached ranges, least recently used first."""
        with self._lock:
            return list(self._items)


class S3BlobStore(BlobStore):
    """Blobs in S3 at ``url``; ``cache_root/blobs`` caches them, ``tmp_dir`` stages uploads."""

    def __init__(self, url: str, cache_root: Path, *, tmp_dir: Path | None = None,
                 redirect: bool = False, piece_cache: int = PIECE_CACHE_BYTES) -> None:
        super().__init__(cache_root, tmp_dir=tmp_dir)
        self.location = parse_s3_url(url)
        #: Answer uncached downloads with a presigned redirect instead of streaming.
        self.redirect = redirect
        #: Pieces the seeder read from S3 (not from a local copy).
        self.pieces = PieceCache(piece_cache)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blobs-s3",
                                        daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self._closed = False
        try:
            self._client: Any = self._call(self._connect())
        except BaseException:
            self.close()
            raise

    async def _connect(self) -> Any:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        # Checksums only where S3 requires them: S3-compatible servers (rclone, MinIO...)
        # do not all speak botocore's newer flexible checksums, and the hub verifies the
        # blob's SHA-256 itself.
        config = AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        client = get_session().create_client(
            "s3", endpoint_url=self.location.endpoint, region_name=self.location.region,
            config=config)
        return await self._stack.enter_async_context(client)

    def _call(self, awaitable: Awaitable[T]) -> T:
        if threading.current_thread() is self._thread:
            raise RuntimeError("an S3BlobStore method was called from its own loop")

        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(_TIMEOUT)

    async def _on_loop(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the S3 loop from another running loop."""

        async def wait() -> T:
            return await awaitable

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(wait(), self._loop))

    def key(self, sha256: str) -> str:
        self.path_for(sha256)  # validates the digest
        head = f"{self.location.prefix}/" if self.location.prefix else ""
        return f"{head}{sha256[:2]}/{sha256}"

    # -- the BlobStore interface -----------------------------------------------------------

    def remote_size(self, sha256: str) -> int | None:
        """The size of the blob in S3, or None when S3 does not hold it."""
        from botocore.exceptions import ClientError

        try:
            head = self._call(self._client.head_object(Bucket=self.location.bucket,
                                                       Key=self.key(sha256)))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._s3_error("look up", exc) from None
        return int(head["ContentLength"])

    def exists(self, sha256: str) -> bool:
        return super().exists(sha256) or self.remote_size(sha256) is not None

    def commit(self, staged: StagedBlob) -> BlobInfo:
        """Upload to S3 (unless it holds these bytes already), then cache locally."""
        try:
            if self.remote_size(staged.sha256) != staged.size:
                self._call(self._upload(staged.temp_path, self.key(staged.sha256),
                                        staged.size))
        except BaseException:
            self.discard(staged)
            raise
        return super().commit(staged)

    def put_file(self, sha256: str, path: Path, size: int) -> None:
        """Upload a verified blob file as is (``hub migrate``); no local cache copy."""
        if self.remote_size(sha256) != size:
            self._call(self._upload(path, self.key(sha256), size))

    async def _upload(self, path: Path, key: str, size: int) -> None:
        bucket = self.location.bucket
        try:
            if size <= PART_SIZE:
                data = await asyncio.to_thread(path.read_bytes)
                await self._client.put_object(Bucket=bucket, Key=key, Body=data)
                return
            upload = await self._client.create_multipart_upload(Bucket=bucket, Key=key)
            uid = upload["UploadId"]
            try:
                parts = []
                with open(path, "rb") as fh:
                    for number, offset in enumerate(range(0, size, PART_SIZE), 1):
                        body = await asyncio.to_thread(os.pread, fh.fileno(), PART_SIZE,
                                                       offset)
                        done = await self._client.upload_part(
                            Bucket=bucket, Key=key, UploadId=uid, PartNumber=number,
                            Body=body)
                        parts.append({"PartNumber": number, "ETag": done["ETag"]})
                await self._client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._client.abort_multipart_upload(Bucket=bucket, Key=key,
                                                              UploadId=uid)
                raise
        except OSError as exc:
            raise StorageError(f"cannot read the staged upload: {exc.strerror}") from None
        except Exception as exc:
            raise self._s3_error("store", exc) from None

    def delete(self, sha256: str) -> bool:
        """Remove the blob from S3 and from the cache (the catalog no longer lists it)."""
        cached = super().delete(sha256)
        try:
            self._call(self._client.delete_object(Bucket=self.location.bucket,
                                                  Key=self.key(sha256)))
        except Exception as exc:
            log.warning("cannot delete blob %s from S3: %s", sha256, exc)
            return cached
        return True

    # -- the local copy the seeder needs ---------------------------------------------------

    def fetch(self, sha256: str) -> Path:
        """The cached blob, downloaded whole from S3 first if need be (and verified)."""
        final = self.path_for(sha256)
        if final.is_file():
            return final
        temp = self.tmp_dir / f"fetch-{secrets.token_hex(8)}"
        try:
            digest = self._call(self._download(sha256, temp))
            if digest != sha256:
                raise StorageError(f"S3 holds other bytes under blob {sha256} (their SHA-256 "
                                   f"is {digest}); not using them")
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(temp, BLOB_MODE)
            os.replace(temp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return final

    async def _download(self, sha256: str, temp: Path) -> str:
        digest = hashlib.sha256()
        try:
            obj = await self._client.get_object(Bucket=self.location.bucket,
                                                Key=self.key(sha256))
        except Exception as exc:
            raise self._s3_error("fetch", exc) from None
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async with obj["Body"] as body:
                while chunk := await body.read(_CHUNK):
                    digest.update(chunk)
                    await asyncio.to_thread(os.write, fd, chunk)
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot cache blob {sha256}: {exc.strerror}") from None
        except Exception as exc:  # the connection broke off mid-body
            raise self._s3_error("fetch", exc) from None
        finally:
            os.close(fd)
        return digest.hexdigest()

    # -- the seeder's pieces ----------------------------------------------------------------

    def read_range(self, sha256: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of a blob: the local copy if there is one, else
        the piece cache, else one ranged GET (blocking: call it from a worker thread)."""
        path = self.path_for(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        else:
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            if len(data) == length:
                return data
        key = (sha256, offset, length)
        cached = self.pieces.get(key)
        if cached is not None:
            return cached
        data = self._call(self._get_range(sha256, offset, length))
        if len(data) != length:
            raise StorageError(f"S3 returned {len(data)} of {length} bytes of blob {sha256}")
        self.pieces.put(key, data)
        return data

    async def _get_range(self, sha256: str, offset: int, length: int) -> bytes:
        try:
            obj = await self._client.get_object(
                Bucket=self.location.bucket, Key=self.key(sha256),
                Range=f"bytes={offset}-{offset + length - 1}")
            async with obj["Body"] as body:
                data: bytes = await body.read()
        except Exception as exc:
            raise self._s3_error("read", exc) from None
        return data

    # -- serving straight from S3 ----------------------------------------------------------

    async def read_span(self, sha256: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes [start, end) of a blob, streamed from S3 by one ranged GET."""
        if end <= start:
            return
        obj = await self._on_loop(self._client.get_object(
            Bucket=self.location.bucket, Key=self.key(sha256), Range=f"bytes={start}-{end - 1}"))
        body = obj["Body"]
        try:
            while chunk := await self._on_loop(body.read(_CHUNK)):
                yield chunk
        finally:
            body.close()

    async def presigned_url(self, sha256: str, *, filename: str, expires: int = 300) -> str:
        """A URL S3 itself serves (ranges included) for ``expires`` seconds."""
        disposition = "attachment; filename*=UTF-8''" + urllib.parse.quote(filename, safe="")
        url: str = await self._on_loop(self._client.generate_presigned_url(
            "get_object", ExpiresIn=expires,
            Params={"Bucket": self.location.bucket, "Key": self.key(sha256),
                    "ResponseContentDisposition": disposition}))
        return url

    # -- plumbing --------------------------------------------------------------------------

    def _s3_error(self, what: str, exc: BaseException) -> StorageError:
        log.warning("S3 %s failed (bucket %s): %s", what, self.location.bucket, exc)
        return StorageError(f"the hub's blob store (S3) failed to {what} a blob; retry later")

    def close(self) -> None:
        """Close the client and stop the S3 loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(30)
        except Exception as exc:
            log.warning("closing the S3 client: %s", exc)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()


class BlobPieceStorage(TorrentStorage):
    """A seeded torrent's bytes read from a blob (:meth:`S3BlobStore.read_range`): no
    files on disk to open, create, check or sync. The hub's torrents hold one file each,
    so piece space is the blob (no pad files)."""

    def __init__(self, meta: Metainfo, store: S3BlobStore, sha256: str) -> None:
        super().__init__(meta, store.tmp_dir)
        if len(meta.data_files) != 1:
            raise StorageError("a blob seeds a torrent of exactly one file")
        self.store = store
        self.sha256 = sha256

    def exists(self) -> bool:
        return True

    def set_selection(self, wanted: tuple[bool, ...] | list[bool] | None) -> None:
        """Seeding only: every byte is there."""

    def open(self, create: bool = True) -> None:
        """Nothing to open."""

    def sync(self) -> None:
        """Nothing written."""

    def close(self) -> None:
        """Nothing held."""

    def stat_files(self) -> tuple[tuple[int, int], ...]:
        return ((self.meta.total_length, 0),)

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        return self.store.read_range(self.sha256, offset, length)

    def read_into(self, offset: int, buf: bytearray | memoryview) -> None:
        view = memoryview(buf).cast("B")
        view[:] = self.read(offset, len(view))

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise StorageError("a blob is read-only")
