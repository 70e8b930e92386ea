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
- The embedded seeder seeds from a local copy: a blob it needs is downloaded whole into
  the cache once (and checked against its SHA-256). Honest limit: the cache is not
  bounded; it holds every blob this hub seeds. A hub that should not keep copies runs
  with ``--peer-listen off`` and serves HTTP (and web seeds) straight from S3.

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
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from swarmhub.errors import StorageError
from swarmhub.hub.blobs import BLOB_MODE, BlobInfo, BlobStore, StagedBlob

__all__ = ["PART_SIZE", "S3BlobStore", "S3Location", "parse_s3_url"]

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


class S3BlobStore(BlobStore):
    """Blobs in S3 at ``url``; ``cache_root/blobs`` caches them, ``tmp_dir`` stages uploads."""

    def __init__(self, url: str, cache_root: Path, *, tmp_dir: Path | None = None,
                 redirect: bool = False) -> None:
        super().__init__(cache_root, tmp_dir=tmp_dir)
        self.location = parse_s3_url(url)
        #: Answer uncached downloads with a presigned redirect instead of streaming.
        self.redirect = redirect
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
