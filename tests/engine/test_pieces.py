"""Pieces: hash-then-write of an assembled piece, with the write handed from the hash pool
to the disk pool. A good piece is on disk when its verify returns; a bad one is never
written and brings its block digests; a verify given up before its hash ran writes nothing.
Small pieces completed while the hash pool is busy share one hash job (that writes them) and
one loop wake-up, and each still gets its own verdict. Real thread pools and files; no peers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import until
from swarmhub.engine.pieces import Pieces
from swarmhub.errors import InconsistentHashesError
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
        settings=Settings(), hash_pool=ThreadPoolExecutor(2), disk_pool=ThreadPoolExecutor(1),
        hash_threads=2)
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
    session.hash_pool, session.hash_threads = ThreadPoolExecutor(1), 1
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


# -- small pieces: batched hand-offs ----------------------------------------------------------

def _busy_hash_pool(session: SimpleNamespace) -> threading.Event:
    """One hash thread, held busy until the returned gate is set."""
    session.hash_pool.shutdown()
    session.hash_pool, session.hash_threads = ThreadPoolExecutor(1), 1
    gate = threading.Event()
    session.hash_pool.submit(gate.wait, 60)
    return gate


def _count_calls(obj: object, name: str) -> list[object]:
    """Record the first argument of each call of ``obj.name`` (still calling it)."""
    calls: list[object] = []
    real = getattr(obj, name)

    def wrapper(*args: object, **kw: object) -> object:
        calls.append(args[0])
        return real(*args, **kw)

    setattr(obj, name, wrapper)
    return calls


async def _verify_while_busy(pieces: Pieces, session: SimpleNamespace, gate: threading.Event,
                             chunks: dict[int, bytes]) -> list[tuple[bool, object]]:
    """Complete ``chunks`` while the hash thread is busy, then free it: the verdicts."""
    tasks = []
    for index, chunk in chunks.items():
        pieces.buffers[index] = bytearray(chunk)
        tasks.append(asyncio.ensure_future(pieces.verify(index, want_digests=False)))
    await until(lambda: len(pieces._queue) == len(chunks), "every piece queued")
    gate.set()
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("version", [TorrentVersion.V1, TorrentVersion.HYBRID])
async def test_small_pieces_queued_while_the_pool_is_busy_share_one_batch(
        tmp_path: Path, version: TorrentVersion) -> None:
    meta, data, storage, session = _setup(tmp_path, version)
    gate = _busy_hash_pool(session)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    writes = _count_calls(session.disk_pool, "submit")
    wakeups = _count_calls(asyncio.get_running_loop(), "call_soon_threadsafe")
    try:
        chunks = {i: data[i * PIECE:(i + 1) * PIECE] for i in range(3)}
        verdicts = await _verify_while_busy(pieces, session, gate, chunks)
        assert verdicts == [(True, None)] * 3
        assert _on_disk(tmp_path) == data
        # three pieces: one hash job (that writes them too), one loop wake-up
        assert pieces.batches == 1
        assert writes == []
        assert len(wakeups) == 1
    finally:
        gate.set()
        _close(storage, session)


async def test_a_bad_piece_in_a_batch_is_rejected_alone(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    gate = _busy_hash_pool(session)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    try:
        bad = bytearray(data[PIECE:2 * PIECE])
        bad[3 * BLOCK] ^= 1
        chunks = {0: data[:PIECE], 1: bytes(bad), 2: data[2 * PIECE:]}
        verdicts = await _verify_while_busy(pieces, session, gate, chunks)
        assert pieces.batches == 1
        assert [ok for ok, _ in verdicts] == [True, False, True]
        digests = verdicts[1][1]
        assert isinstance(digests, dict)
        assert [b for b in digests if digests[b] != hashlib.sha1(
            data[PIECE + b:PIECE + b + BLOCK]).digest()] == [3 * BLOCK]
        disk = _on_disk(tmp_path)
        assert disk[:PIECE] == data[:PIECE] and disk[2 * PIECE:] == data[2 * PIECE:]
        assert disk[PIECE:2 * PIECE] == bytes(PIECE)  # never written
    finally:
        gate.set()
        _close(storage, session)


async def test_a_write_error_in_a_batch_reaches_its_piece_alone(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.V1)
    gate = _busy_hash_pool(session)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    real = storage.write

    def write(offset: int, view: memoryview) -> None:
        if offset == PIECE:
            raise OSError(28, "No space left on device")
        real(offset, view)

    storage.write = write  # type: ignore[method-assign]
    try:
        tasks = []
        for i in range(3):
            pieces.buffers[i] = bytearray(data[i * PIECE:(i + 1) * PIECE])
            tasks.append(asyncio.ensure_future(pieces.verify(i, want_digests=False)))
        await until(lambda: len(pieces._queue) == 3, "every piece queued")
        gate.set()
        got = await asyncio.gather(*tasks, return_exceptions=True)
        assert pieces.batches == 1
        assert got[0] == (True, None) and got[2] == (True, None)
        assert isinstance(got[1], OSError)
    finally:
        gate.set()
        _close(storage, session)


async def test_a_lone_small_piece_does_not_wait_for_company(tmp_path: Path) -> None:
    """An idle pool takes a piece at once: its verify returns with no other piece coming."""
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.V1)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    try:
        for i in range(3):
            pieces.buffers[i] = bytearray(data[i * PIECE:(i + 1) * PIECE])
            assert await pieces.verify(i, want_digests=False) == (True, None)
        assert pieces.batches == 3
        assert _on_disk(tmp_path) == data
    finally:
        _close(storage, session)


async def test_large_pieces_skip_the_batch_queue(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    pieces.batch_below = PIECE  # 64 KiB counts as large here
    try:
        pieces.buffers[1] = bytearray(data[PIECE:2 * PIECE])
        assert await pieces.verify(1, want_digests=False) == (True, None)
        assert pieces.batches == 0
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == data[PIECE:2 * PIECE]
    finally:
        _close(storage, session)


# -- large hybrid pieces: one hash job, decided by v2 -----------------------------------------

def _large(pieces: Pieces) -> Pieces:
    pieces.batch_below = PIECE  # 64 KiB counts as large here
    return pieces


async def test_a_large_hybrid_piece_is_one_hash_job(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    pieces = _large(Pieces(meta, storage, session))  # type: ignore[arg-type]
    jobs = _count_calls(session.hash_pool, "submit")
    try:
        pieces.buffers[1] = bytearray(data[PIECE:2 * PIECE])
        assert await pieces.verify(1, want_digests=False) == (True, None)
        assert len(jobs) == 1
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == data[PIECE:2 * PIECE]
    finally:
        _close(storage, session)


async def test_a_large_hybrid_piece_with_bad_data_is_rejected(tmp_path: Path) -> None:
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    pieces = _large(Pieces(meta, storage, session))  # type: ignore[arg-type]
    try:
        bad = bytearray(data[PIECE:2 * PIECE])
        bad[BLOCK + 5] ^= 1
        pieces.buffers[1] = bad
        ok, digests = await pieces.verify(1, want_digests=False)
        assert not ok and digests is not None
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == bytes(PIECE)
    finally:
        _close(storage, session)


@pytest.mark.parametrize("large", [False, True], ids=["batched", "large"])
async def test_a_hybrid_piece_whose_hashes_disagree_raises_and_is_not_written(
        tmp_path: Path, large: bool) -> None:
    """Piece 0 (in the SHA-1 sample) matches its v2 hash, not the torrent's SHA-1: the
    verify raises InconsistentHashesError (the driver fails the torrent with it)."""
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    if large:
        _large(pieces)
    v1 = pieces.verifier._v1
    assert v1 is not None
    pieces.verifier._v1 = bytes(20) + v1[20:]
    try:
        pieces.buffers[0] = bytearray(data[:PIECE])
        with pytest.raises(InconsistentHashesError, match="piece 0"):
            await pieces.verify(0, want_digests=False)
        assert _on_disk(tmp_path)[:PIECE] == bytes(PIECE)
    finally:
        _close(storage, session)


async def test_a_hash_job_dropped_by_a_closing_pool_frees_its_waiter(tmp_path: Path) -> None:
    """The session shuts its pools down with ``cancel_futures``: a piece's hash job still
    queued never runs; its waiter hears it, and nothing is written."""
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.HYBRID)
    pieces = _large(Pieces(meta, storage, session))  # type: ignore[arg-type]
    busy = threading.Event()
    try:
        for _ in range(2):  # both hash threads taken: the piece's job stays queued
            session.hash_pool.submit(busy.wait, 60)
        jobs = _count_calls(session.hash_pool, "submit")
        pieces.buffers[1] = bytearray(data[PIECE:2 * PIECE])
        verify = asyncio.ensure_future(pieces.verify(1, want_digests=False))
        await until(lambda: len(jobs) > 0, "the piece's hash job queued")
        session.hash_pool.shutdown(wait=False, cancel_futures=True)
        busy.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(verify, 30)
        assert _on_disk(tmp_path)[PIECE:2 * PIECE] == bytes(PIECE)
    finally:
        busy.set()
        _close(storage, session)


async def test_small_pieces_completed_in_one_loop_iteration_share_one_batch(
        tmp_path: Path) -> None:
    """An idle pool: the pieces one loop iteration completes (one busy read of many
    sockets) still go in one job, submitted when that iteration ends."""
    meta, data, storage, session = _setup(tmp_path, TorrentVersion.V1)
    pieces = Pieces(meta, storage, session)  # type: ignore[arg-type]
    jobs = _count_calls(session.hash_pool, "submit")
    try:
        for i in range(3):
            pieces.buffers[i] = bytearray(data[i * PIECE:(i + 1) * PIECE])
        verdicts = await asyncio.gather(*(pieces.verify(i, want_digests=False)
                                          for i in range(3)))
        assert verdicts == [(True, None)] * 3
        assert len(jobs) == 1 and pieces.batches == 1
        assert _on_disk(tmp_path) == data
    finally:
        _close(storage, session)
