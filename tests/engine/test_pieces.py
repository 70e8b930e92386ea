"""Pieces: hash-then-write of an assembled piece, with the write handed from the hash pool
to the disk pool (one event-loop wake-up per piece). A good piece is on disk when its
verify returns; a bad one is never written and brings its block digests; a verify given
up before its hash ran writes nothing. Real thread pools and files; no peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from swarmhub.engine.pieces import Pieces
from swarmhub.metainfo.create import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import TorrentStorage

PIECE = 64 * 1024
BLOCK = 16 * 1024


def _close(storage: TorrentStorage, session: SimpleNamespace) -> None:
    storage.close()
    session.hash_pool.shutdown()
    session.disk_pool.shutdown()


def _setup(tmp_path: Path, version: TorrentVersion) -> tuple[Metainfo, bytes, TorrentStorage,
                                                             SimpleNamespace]:
    data = os.urandom(3 * PIECE)
    src = tmp_path / "src" / "payload"
    src.parent.mkdir()
    src.write_bytes(data)
    meta = create_torrent(src, version=version, piece_length=PIECE)
    storage = TorrentStorage(meta, tmp_path / "dst")
    storage.open()
    session = SimpleNamespace(
        settings=Settings(), hash_pool=ThreadPoolExecutor(2), disk_pool=ThreadPoolExecutor(1))
    return meta, data, storage, session


def _on_disk(tmp_path: Path) -> bytes:
    return (tmp_path / "dst" / "payload").read_bytes()


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
async def test_good_piece_is_written_before_verify_returns(
        tmp_path: Path, version: TorrentVersion) -> None:
    meta, data, storage, session = _setup(tmp_path, version)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    try:
        pieces.buffers[1] = bytearray(data[PIECE:2 * PIECE])
        ok, digests = await pieces.verify(1, want_digests=False)
        assert (ok, digests) == (True, None)
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == data[PIECE:2 * PIECE]
        # asked for (a piece that failed before): the block digests come with it
        pieces.buffers[2] = bytearray(data[2 * PIECE:])
        ok, digests = await pieces.verify(2, want_digests=True)
        assert ok and digests == {
            b: hashlib.sha1(data[2 * PIECE + b:2 * PIECE + b + BLOCK]).digest()
            for b in range(0, PIECE, BLOCK)}
    finally:
        _close(storage, session)


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
async def test_bad_piece_is_not_written_and_names_its_blocks(
        tmp_path: Path, version: TorrentVersion) -> None:
    meta, data, storage, session = _setup(tmp_path, version)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    try:
        bad = bytearray(data[:PIECE])
        bad[BLOCK + 5] ^= 0xFF
        pieces.buffers[0] = bad
        ok, digests = await pieces.verify(0, want_digests=False)
        assert not ok and digests is not None
        assert digests[BLOCK] != hashlib.sha1(data[BLOCK:2 * BLOCK]).digest()
        assert digests[0] == hashlib.sha1(data[:BLOCK]).digest()
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)  # never written
    finally:
        _close(storage, session)


async def test_a_write_error_reaches_the_verify(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.V1)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]

    def broken(offset: int, view: object) -> None:
        raise OSError(28, "No space left on device")

    storage.write = broken  # type: ignore[method-assign]
    try:
        pieces.buffers[0] = bytearray(data[:PIECE])
        with pytest.raises(OSError, match="No space"):
            await pieces.verify(0, want_digests=False)
    finally:
        _close(storage, session)


async def test_a_verify_given_up_before_its_hash_writes_nothing(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.V1)
    session.hash_pool.shutdown()
    session.hash_pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    session.hash_pool.submit(gate.wait, 30)  # the only hash thread is busy
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    try:
        pieces.buffers[0] = bytearray(data[:PIECE])
        task = asyncio.ensure_future(pieces.verify(0, want_digests=False))
        await asyncio.sleep(0)  # the hash job is queued behind the busy thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        session.hash_pool.shutdown(wait=True)  # the queued job ran and saw the cancel
        session.disk_pool.shutdown(wait=True)
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)
    finally:
        gate.set()
        storage.close()
