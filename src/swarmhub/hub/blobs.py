"""Content-addressed blob store: ``DATA/blobs/ab/<sha256 hex>``, written by streaming.

Why content addressing: two uploads of the same bytes share one blob (dedup), the blob's
name is its ETag, and a blob that exists is complete and verified by construction — it
only gets its name by an atomic ``rename`` after the last byte was hashed and fsynced.

An upload streams into a temp file under ``DATA/tmp`` while it is hashed. Chunks are
gathered into ~1 MiB batches and each batch is hashed and written in a worker thread
(hashlib and ``os.write`` release the GIL), overlapping with the receipt of the next
batch, so the event loop never hashes large buffers and memory stays at about two
batches whatever the file size. Anything that stops the upload early (client gone,
short body, size limit, full disk, cancellation) removes the temp file before the
error propagates, so no partial blob can ever be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from swarmhub.errors import StorageError

__all__ = [
    "BATCH_SIZE",
    "BLOB_MODE",
    "BlobInfo",
    "BlobStore",
    "StagedBlob",
    "UploadStalled",
    "UploadTooLarge",
    "UploadTruncated",
]

log = logging.getLogger(__name__)

#: Blobs are immutable and only the hub reads them; the seed/ hard links share this mode.
BLOB_MODE = 0o400
#: Bytes gathered before one hash+write job goes to a thread.
BATCH_SIZE = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class UploadTooLarge(StorageError):
    """The upload is larger than the hub accepts; nothing was stored."""


class UploadTruncated(StorageError):
    """The upload ended before its end (client gone, short body); nothing was stored."""


class UploadStalled(UploadTruncated):
    """No byte of the upload arrived within the progress timeout; nothing was stored."""


class _ChunkReader(Protocol):
    async def read_chunk(self, size: int = ...) -> bytes: ...


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob: its SHA-256 (hex), its size and where it lives."""

    sha256: str
    size: int
    path: Path


@dataclass(slots=True)
class StagedBlob:
    """A fully received, fsynced upload in ``DATA/tmp``, not yet named by its hash."""

    sha256: str
    size: int
    temp_path: Path


async def _chunks(source: object, size: int) -> AsyncIterator[bytes]:
    """Bytes from an aiohttp ``BodyPartReader``/``StreamReader`` or any async iterator."""
    read_chunk = getattr(source, "read_chunk", None)
    if read_chunk is not None and not hasattr(source, "iter_any"):
        # BodyPartReader: read_chunk(size) returns b"" after the part's boundary.
        while True:
            chunk = await read_chunk(size)
            if not chunk:
                return
            yield bytes(chunk)
    iter_any = getattr(source, "iter_any", None)
    if iter_any is not None:  # StreamReader
        async for chunk in iter_any():
            yield bytes(chunk)
        return
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            yield bytes(chunk)
        return
    raise TypeError(f"cannot read an upload from {type(source).__name__}")


class BlobStore:
    """Blobs under ``root/blobs``, temp files under ``tmp_dir`` (default ``root/tmp``;
    on the same file system: a finished upload is renamed into place).

    Several hub processes may share one ``root`` (``--blobs``), each with its own
    ``tmp_dir`` in its data folder, so that no hub's start-up sweep of its temp files
    can touch another's upload in flight.
    """

    def __init__(self, root: Path, *, tmp_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp" if tmp_dir is None else Path(tmp_dir)
        self.blob_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this hex digest lives (whether or not it exists)."""
        if not _HEX64.fullmatch(sha256):
            raise StorageError(f"not a SHA-256 hex digest: {sha256!r:.80}")
        return self.blob_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def clean_tmp(self) -> int:
        """Remove temp files left by a crash (call once at startup); returns how many."""
        gone = 0
        for entry in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
                gone += 1
        return gone

    # -- writing -------------------------------------------------------------------------

    async def stage(
        self,
        source: object,
        max_size: int,
        *,
        expected_size: int | None = None,
        progress_timeout: float | None = None,
    ) -> StagedBlob:
        """Receive ``source`` into a temp file, hashing it; the caller commits or discards.

        Raises :class:`UploadTooLarge` past ``max_size`` bytes, :class:`UploadTruncated`
        when the stream fails or ends before ``expected_size``, :class:`UploadStalled`
        when no chunk arrives for ``progress_timeout`` seconds (a stalled client must not
        hold a temp file forever), :class:`StorageError` when the disk refuses (full,
        read-only). In every error case the temp file is gone.
        """
        loop = asyncio.get_running_loop()
        temp = self.tmp_dir / f"upload-{secrets.token_hex(8)}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        digest = hashlib.sha256()
        size = 0
        pending: asyncio.Future[None] | None = None

        def absorb(data: bytes) -> None:
            digest.update(data)
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]

        try:
            batch: list[bytes] = []
            batched = 0
            chunks = _chunks(source, BATCH_SIZE).__aiter__()
            while True:
                try:
                    async with asyncio.timeout(progress_timeout):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                except (StorageError, asyncio.CancelledError):
                    raise
                except TimeoutError:
                    raise UploadStalled(
                        f"no upload progress for {progress_timeout:g} s after {size} bytes"
                    ) from None
                except Exception as exc:  # aiohttp payload errors, resets, bad multipart
                    raise UploadTruncated(
                        f"upload interrupted after {size} bytes: {exc or type(exc).__name__}"
                    ) from None
                size += len(chunk)
                if size > max_size:
                    raise UploadTooLarge(
                        f"upload is larger than the hub's limit of {max_size} bytes"
                    )
                batch.append(chunk)
                batched += len(chunk)
                if batched >= BATCH_SIZE:
                    data = b"".join(batch)
                    batch.clear()
                    batched = 0
                    try:
                        if pending is not None:
                            await pending
                    except OSError as exc:
                        pending = None
                        raise self._disk_error(exc) from None
                    pending = loop.run_in_executor(None, absorb, data)
            if expected_size is not None and size != expected_size:
                raise UploadTruncated(f"upload ended after {size} of {expected_size} bytes")
            try:
                if pending is not None:
                    done, pending = pending, None
                    await done
                tail = b"".join(batch)
                await loop.run_in_executor(None, absorb, tail)
                await loop.run_in_executor(None, os.fsync, fd)
            except OSError as exc:
                raise self._disk_error(exc) from None
        except BaseException:
            if pending is not None:
                # The worker still writes to fd: let it finish before closing it.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            os.close(fd)
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        os.close(fd)
        return StagedBlob(digest.hexdigest(), size, temp)

    def commit(self, staged: StagedBlob) -> BlobInfo:
        """Give a staged upload its content name; an existing identical blob wins (dedup)."""
        final = self.path_for(staged.sha256)
        try:
            if final.is_file():
                staged.temp_path.unlink()
            else:
                final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(staged.temp_path, BLOB_MODE)
                os.rename(staged.temp_path, final)
                _fsync_dir(final.parent)
        except OSError as exc:
            self.discard(staged)
            raise self._disk_error(exc) from None
        return BlobInfo(staged.sha256, staged.size, final)

    def discard(self, staged: StagedBlob) -> None:
        """Drop a staged upload (the request failed after staging)."""
        with contextlib.suppress(OSError):
            staged.temp_path.unlink()

    async def store_stream(
        self, source: object, max_size: int, *, expected_size: int | None = None
    ) -> BlobInfo:
        """Stage and commit in one step: the whole upload, or nothing and an error."""
        staged = await self.stage(source, max_size, expected_size=expected_size)
        return await asyncio.to_thread(self.commit, staged)

    def delete(self, sha256: str) -> bool:
        """Remove a blob nobody references any more (the catalog decides); True if removed."""
        try:
            self.path_for(sha256).unlink()
        except FileNotFoundError:
            return False
        log.info("removed unreferenced blob %s", sha256)
        return True

    def close(self) -> None:
        """Nothing to release for a local folder (the S3 store closes its client)."""

    def _disk_error(self, exc: OSError) -> StorageError:
        # Clients see the message: the server's paths go to the log only.
        log.warning("cannot store an upload under %s: %s", self.root, exc)
        if exc.errno == errno.ENOSPC:
            return StorageError("the hub's disk is full; nothing was stored")
        return StorageError(f"the hub cannot store the upload: {exc.strerror}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
