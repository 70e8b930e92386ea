"""Blob store: streaming, hashing, dedup, and nothing left behind by a failed upload."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from swarmhub.errors import StorageError
from swarmhub.hub import blobs
from swarmhub.hub.blobs import BlobStore, UploadTooLarge, UploadTruncated


async def chunks(
    data: bytes, size: int = 65536, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if fail_at is not None and i >= fail_at:
            raise ConnectionResetError("client went away")
        yield data[i : i + size]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


async def test_store_names_blob_by_sha256_and_makes_it_read_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    info = await store.store_stream(chunks(data), max_size=10 << 20)
    digest = hashlib.sha256(data).hexdigest()
    assert info.sha256 == digest and info.size == len(data)
    assert info.path == tmp_path / "blobs" / digest[:2] / digest
    assert info.path.read_bytes() == data
    assert not os.access(info.path, os.W_OK) or os.geteuid() == 0
    assert info.path.stat().st_mode & 0o222 == 0
    assert files_under(store.tmp_dir) == []


async def test_identical_uploads_share_one_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(200_000)
    a = await store.store_stream(chunks(data, 1000), max_size=1 << 20)
    b = await store.store_stream(chunks(data, 77777), max_size=1 << 20)
    assert a == b
    assert files_under(store.blob_dir) == [a.path]
    assert files_under(store.tmp_dir) == []


async def test_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(UploadTooLarge, match="limit of 100000 bytes"):
        await store.store_stream(chunks(os.urandom(300_000)), max_size=100_000)
    assert files_under(tmp_path) == []


async def test_interrupted_stream_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    data = os.urandom(5 << 20)
    with pytest.raises(UploadTruncated, match="interrupted"):
        await store.store_stream(chunks(data, fail_at=3 << 20), max_size=10 << 20)
    assert files_under(tmp_path) == []


async def test_short_body_against_expected_size_leaves_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    with pytest.raises(UploadTruncated, match="after 1000 of 2000"):
        await store.store_stream(chunks(b"x" * 1000), max_size=1 << 20, expected_size=2000)
    assert files_under(tmp_path) == []


async def test_full_disk_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path)
    real_write = os.write
    calls = 0

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StorageError, match="disk is full"):
        await store.store_stream(chunks(os.urandom(6 << 20)), max_size=10 << 20)
    monkeypatch.undo()
    assert files_under(tmp_path) == []


async def test_stage_then_discard_and_delete(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    staged = await store.stage(chunks(b"hello"), max_size=10)
    assert staged.temp_path.read_bytes() == b"hello"
    store.discard(staged)
    assert files_under(tmp_path) == []
    info = await store.store_stream(chunks(b"hello"), max_size=10)
    assert store.exists(info.sha256)
    assert store.delete(info.sha256) is True
    assert store.delete(info.sha256) is False
    assert not store.exists(info.sha256)
    with pytest.raises(StorageError, match="not a SHA-256"):
        store.path_for("../../etc/passwd")


async def test_clean_tmp_removes_leftovers(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    (store.tmp_dir / "upload-crashed").write_bytes(b"partial")
    assert store.clean_tmp() == 1
    assert files_under(store.tmp_dir) == []


async def test_a_large_upload_is_hashed_off_the_loop_while_the_next_chunks_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 MiB in 64 KiB chunks (aiohttp's usual size). Every hash step runs in a worker
    thread, and each waits until the upload has read past the batch it hashes: it returns
    only if receipt goes on meanwhile (a store that hashed on the loop, or awaited each
    hash before reading on, would leave it waiting). Checked on state, not on a rate."""
    real_sha256 = hashlib.sha256  # the store's module is patched below, and so is this one
    loop_thread = threading.get_ident()
    cond = threading.Condition()
    produced = 0  # bytes the source has handed over
    done = False
    hashed = 0
    threads: list[int] = []
    overlapped: list[bool] = []

    class Sha256:
        def __init__(self) -> None:
            self._real = real_sha256()

        def update(self, data: bytes) -> None:
            nonlocal hashed
            threads.append(threading.get_ident())
            hashed += len(data)
            end = hashed
            if threading.get_ident() == loop_thread:
                overlapped.append(False)  # waiting here would stop the very receipt awaited
            else:  # (the last batch has nothing after it; the deadline guards a hang, once)
                with cond:
                    wait = 10.0 if all(overlapped) else 0.0
                    overlapped.append(cond.wait_for(lambda: produced > end or done, wait))
            self._real.update(data)

        def hexdigest(self) -> str:
            return self._real.hexdigest()

    monkeypatch.setattr(blobs.hashlib, "sha256", Sha256)
    store = BlobStore(tmp_path)
    block = os.urandom(1 << 20)

    async def gen() -> AsyncIterator[bytes]:
        nonlocal produced, done
        for _ in range(64):
            for i in range(0, len(block), 65536):
                with cond:
                    produced += 65536
                    cond.notify_all()
                yield block[i : i + 65536]
        with cond:
            done = True
            cond.notify_all()

    info = await store.store_stream(gen(), max_size=1 << 30)
    assert info.sha256 == real_sha256(block * 64).hexdigest() and info.size == 64 << 20
    assert hashed == 64 << 20 and len(threads) > 1
    assert loop_thread not in threads
    assert all(overlapped), overlapped
