"""Pieces: the smallest pieces (under ``INLINE_BELOW``) are hashed and written on the event
loop, through the page cache: no pool hop, no O_DIRECT wait. A good piece is on disk when
its verify returns, a bad one is never written and names its blocks, and while a selection
change holds the files the write waits for it on the disk pool (never on the loop)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_pieces import _on_disk

from conftest import until
from swarmhub.engine.pieces import INLINE_BELOW, Pieces
from swarmhub.metainfo.create import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import TorrentStorage

PIECE = 32 * 1024
BLOCK = 16 * 1024


class _NoPool:
    """A pool that must not be used (the inline path takes no hop)."""

    def submit(self, *args: Any, **kw: Any) -> Any:
        raise AssertionError("a small piece went to a thread pool")

    def shutdown(self, wait: bool = True) -> None:
        pass


class _Pool(ThreadPoolExecutor):
    """A real pool that records what it is given."""

    def __init__(self) -> None:
        super().__init__(1)
        self.given: list[object] = []

    def submit(self, fn: Any, /, *args: Any, **kw: Any) -> Any:
        self.given.append(fn)
        return super().submit(fn, *args, **kw)


def _setup(tmp_path: Path, version: TorrentVersion = TorrentVersion.V1
           ) -> tuple[Metainfo, bytes, TorrentStorage, SimpleNamespace]:
    assert PIECE < INLINE_BELOW
    data = os.urandom(3 * PIECE)
    src = tmp_path / "src" / "payload"
    src.parent.mkdir()
    src.write_bytes(data)
    meta = create_torrent(src, version=version, piece_length=PIECE)
    storage = TorrentStorage(meta, tmp_path / "dst", direct_writes=True)
    storage.open()
    no_pool = _NoPool()
    return meta, data, storage, SimpleNamespace(
        settings=Settings(), hash_pool=no_pool, disk_pool=no_pool, hash_threads=2)


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
async def test_a_small_piece_is_checked_and_written_on_the_loop(
        tmp_path: Path, version: TorrentVersion) -> None:
    meta, data, storage, session = _setup(tmp_path, version)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    direct: list[object] = []
    real = storage._write_direct

    def spy(handle: Any, view: memoryview, offset: int) -> int:
        direct.append(offset)
        return real(handle, view, offset)

    storage._write_direct = spy  # type: ignore[method-assign]
    try:
        for index, want in ((2, False), (1, True)):  # asked for: the block digests come
            piece = data[index * PIECE:(index + 1) * PIECE]
            pieces.buffers[index] = bytearray(piece)
            expected = {b: hashlib.sha1(piece[b:b + BLOCK]).digest()
                        for b in range(0, PIECE, BLOCK)} if want else None
            assert await pieces.verify(index, want_digests=want) == (True, expected)
            assert _on_disk(tmp_path)[index * PIECE:(index + 1) * PIECE] == piece
        # a bad one is never written, and its digests name the bad block
        wrong = bytearray(data[:PIECE])
        wrong[BLOCK + 5] ^= 0xFF
        pieces.buffers[0] = wrong
        verdict, named = await pieces.verify(0, want_digests=False)
        assert not verdict and named is not None
        assert named[0] == hashlib.sha1(data[:BLOCK]).digest() != named[BLOCK]
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)
        assert direct == []  # the page cache: O_DIRECT would wait for the device
        assert pieces.batches == 0
    finally:
        storage.close()


async def test_a_small_piece_waits_for_a_selection_change_on_the_disk_pool(
        tmp_path: Path) -> None:
    """The loop never waits for the files' lock: the write goes to the disk pool, which
    writes it once the selection change let go, and then the verify returns."""
    meta, data, storage, session = _setup(tmp_path)
    session.disk_pool = pool = _Pool()
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    holding, release = threading.Event(), threading.Event()

    def change() -> None:
        with storage._selection_lock.exclusive():
            holding.set()
            release.wait(60)

    changer = threading.Thread(target=change)
    changer.start()
    try:
        holding.wait(60)
        pieces.buffers[0] = bytearray(data[:PIECE])
        task = asyncio.ensure_future(pieces.verify(0, want_digests=False))
        await until(lambda: bool(pool.given), "the write handed to the disk pool")
        assert pool.given == [storage.write]
        assert not task.done()
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)  # not yet
        release.set()
        assert await task == (True, None)
        assert _on_disk(tmp_path)[:PIECE] == data[:PIECE]
    finally:
        release.set()
        changer.join()
        pool.shutdown()
        storage.close()


Done = tuple[int, object, bool]


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
def test_start_verify_settles_a_small_piece_at_once_without_a_task(
        tmp_path: Path, version: TorrentVersion) -> None:
    """No task per small piece: ``done`` is called before ``start_verify`` returns (not
    ``later``), the piece is on disk and its buffer released; a bad one too, with its
    digests; nothing is spawned."""
    meta, data, storage, session = _setup(tmp_path, version)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    done: list[Done] = []
    spawned: list[object] = []
    try:
        pieces.buffers[1] = bytearray(data[PIECE:2 * PIECE])
        pieces.start_verify(1, False, False, lambda *a: done.append(a), spawned.append)
        assert done == [(1, (True, None), False)]
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == data[PIECE:2 * PIECE]
        assert 1 not in pieces.buffers
        wrong = bytearray(data[:PIECE])
        wrong[5] ^= 0xFF
        pieces.buffers[0] = wrong
        pieces.start_verify(0, False, False, lambda *a: done.append(a), spawned.append)
        index, (ok, named), later = done[1]  # type: ignore[misc]
        assert (index, ok, later) == (0, False, False) and named is not None
        assert named[0] != hashlib.sha1(data[:BLOCK]).digest()
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)
        assert spawned == []
    finally:
        storage.close()


async def test_start_verify_uses_a_task_for_larger_pieces_and_held_files(
        tmp_path: Path) -> None:
    """A piece not under ``inline_below``, and a small one while a selection change holds
    the files, are verified in a spawned task (``later``)."""
    meta, data, storage, session = _setup(tmp_path)
    session.disk_pool = pool = _Pool()
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    done: list[Done] = []
    spawned: list[Any] = []
    try:
        pieces.inline_below = PIECE  # 32 KiB pieces are not "small" now
        pieces.batch_below = 0
        pieces.buffers[2] = bytearray(data[2 * PIECE:])
        session.hash_pool = pool
        pieces.start_verify(2, False, False, lambda *a: done.append(a), spawned.append)
        assert done == [] and len(spawned) == 1
        await spawned.pop()
        assert done == [(2, (True, None), True)]
        pieces.inline_below = INLINE_BELOW
        with storage._selection_lock.exclusive():
            pieces.buffers[0] = bytearray(data[:PIECE])
            pieces.start_verify(0, False, False, lambda *a: done.append(a), spawned.append)
            assert len(done) == 1 and len(spawned) == 1 and 0 in pieces.buffers
        await spawned.pop()
        assert done[1] == (0, (True, None), True)
        assert _on_disk(tmp_path) == data[:PIECE] + bytes(PIECE) + data[2 * PIECE:]
    finally:
        pool.shutdown()
        storage.close()
