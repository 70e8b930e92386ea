"""Pieces we verify go into the upload read cache while a connected peer lacks them:
with direct writes the page cache holds no copy, so serving them was a disk read each."""

from __future__ import annotations

import asyncio
import concurrent.futures
from types import SimpleNamespace

from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.uploads import KEEP_WRITTEN_PIECES, Uploader
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

PIECE = 32 * 1024


def _uploader(peers: list[SimpleNamespace], settings: Settings | None = None) -> Uploader:
    torrent = SimpleNamespace(
        settings=settings or Settings(), swarm=SimpleNamespace(peers={i: p for i, p in
                                                                      enumerate(peers)}),
        meta=SimpleNamespace(piece_length=PIECE, piece_size=lambda index: PIECE))
    return Uploader(torrent, RateLimiter(0))  # type: ignore[arg-type]


def _peer(have: set[int], *, closed: bool = False, interested: bool = True,
          pieces: int = 8) -> SimpleNamespace:
    return SimpleNamespace(have=[int(i in have) for i in range(pieces)], closed=closed,
                           peer_interested=interested)


def test_a_piece_a_peer_lacks_is_cached_as_a_copy() -> None:
    up = _uploader([_peer({0, 1}), _peer({1})])
    buf = bytearray(b"x" * PIECE)
    up.keep_written(1, buf)
    assert 1 not in up._cache  # everyone has it: no one will ask
    up.keep_written(0, buf)
    assert up._cache[0] == bytes(buf)
    buf[:4] = b"yyyy"  # the piece buffer is reused for the next piece: the cache is not
    assert up._cache[0][:4] == b"xxxx"


def test_nothing_is_cached_for_seeds_closed_peers_or_without_a_cache() -> None:
    buf = bytearray(PIECE)
    seeds_only = _uploader([_peer(set(range(8))), _peer({3}, closed=True)])
    seeds_only.keep_written(2, buf)  # the seed has it; the peer lacking it is closed
    assert not seeds_only._cache
    # A super-seeding seed shows no pieces but is not interested in ours: no copy.
    super_seed = _uploader([_peer(set(), interested=False)])
    super_seed.keep_written(2, buf)
    assert not super_seed._cache
    no_cache = _uploader([_peer(set())], Settings(read_cache_bytes=0))
    no_cache.keep_written(0, buf)
    assert not no_cache._cache


def test_the_cache_stays_within_its_bytes() -> None:
    up = _uploader([_peer(set())], Settings(read_cache_bytes=4 * PIECE))
    for i in range(8):
        up.keep_written(i, bytearray(PIECE))
    assert list(up._cache) == [4, 5, 6, 7]  # the most recent pieces, oldest dropped first


def test_pieces_kept_as_written_are_a_bounded_ring_within_a_larger_cache() -> None:
    """A cache larger than the torrent still keeps at most KEEP_WRITTEN_PIECES of the
    pieces we verified, the newest (their memory is reused, not fresh pages each); a
    piece read from disk does not count against them."""
    n = KEEP_WRITTEN_PIECES + 10
    up = _uploader([_peer(set(), pieces=n + 1)], Settings(read_cache_bytes=4 * n * PIECE))
    up._cache[n] = b"r" * PIECE  # a disk read, cached before the written pieces
    for i in range(n):
        up.keep_written(i, bytearray(PIECE))
    assert list(up._cache) == [n, *range(10, n)]


async def test_a_piece_read_back_after_the_cache_dropped_its_written_copy_is_not_the_rings(
) -> None:
    """A written piece that the byte limit dropped and a read put back is a read piece:
    when the ring of written pieces overflows, it stays."""
    up = _uploader([_peer(set(), pieces=200)], Settings(read_cache_bytes=4 * PIECE))
    for i in range(4):
        up.keep_written(i, bytearray(PIECE))
    up.keep_written(4, bytearray(PIECE))  # the byte limit drops piece 0; the ring holds it
    assert 0 not in up._cache
    fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    fut.set_result(b"r" * PIECE)
    up._read_done(0, fut)  # read back from disk
    assert up._cache[0] == b"r" * PIECE
    for i in range(5, 5 + KEEP_WRITTEN_PIECES):
        up.keep_written(i, bytearray(PIECE))
        up._cache.move_to_end(0)  # asked for again and again: the newest use
    assert up._cache[0] == b"r" * PIECE


async def test_reads_ahead_the_next_pieces_a_deep_queue_asks_for() -> None:
    """A deep queue spanning pieces: the next ones are read while the first is sent, at
    most ``disk_threads`` beyond it, each once, none already cached."""
    read: list[int] = []

    def read_into(offset: int, buf: bytearray) -> None:
        read.append(offset // PIECE)
        buf[:] = bytes([offset // PIECE]) * PIECE

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        up = _uploader([_peer(set())], Settings(disk_threads=2, read_cache_bytes=16 * PIECE))
        up.torrent.session = SimpleNamespace(disk_pool=pool)  # type: ignore[attr-defined]
        up.torrent.storage = SimpleNamespace(  # type: ignore[attr-defined]
            read_into=read_into, read_cached=lambda offset, buf: False)  # not in the page cache
        up._cache[1] = b"c" * PIECE
        queue = [m.Request(i, b * 16384, 16384) for i in (0, 1, 2, 3, 4) for b in (0, 1)]
        up.read_ahead(queue)
        up.read_ahead(queue)  # reads under way are not started again
        assert sorted(up._reads) == [0, 2]  # 1 is cached; 3 and 4 lie beyond the depth
        await asyncio.gather(*up._reads.values())
        await asyncio.sleep(0)  # the done callbacks
        assert sorted(read) == [0, 2]
        assert up._cache[2] == bytes([2]) * PIECE and not up._reads
        small = _uploader([_peer(set())], Settings(disk_threads=2, read_cache_bytes=4 * PIECE))
        small.read_ahead(queue)  # a cache this small keeps no reads ahead
        assert not small._reads


async def test_a_piece_cached_takes_the_buffer_of_one_the_cache_dropped() -> None:
    """Disk reads and copies of written pieces fill the buffers of pieces that left the
    cache (fresh memory is zeroed and faulted in, page by page), never one something still
    holds: a write's queued view of it, or a task's reference."""
    def read_into(offset: int, buf: bytearray) -> None:
        buf[:] = bytes([offset // PIECE]) * PIECE

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        up = _uploader([_peer(set())], Settings(read_cache_bytes=2 * PIECE))
        up.torrent.session = SimpleNamespace(disk_pool=pool)  # type: ignore[attr-defined]
        up.torrent.storage = SimpleNamespace(  # type: ignore[attr-defined]
            read_into=read_into, read_cached=lambda offset, buf: False)  # not in the page cache
        first = await up.read_piece(0)
        view = memoryview(first)[:16]  # a write still queued holds a view of it
        del first
        await up.read_piece(1)
        await up.read_piece(2)  # the cache drops piece 0: kept from reuse by the view
        assert not up._spare and list(up._cache) == [1, 2]
        del view
        held = up._cache[1]  # a serving task still holds piece 1
        await up.read_piece(3)  # the cache drops piece 1: not reused either
        assert not up._spare and list(up._cache) == [2, 3]
        del held
        second = id(up._cache[2])
        await up.read_piece(4)  # the cache drops piece 2, which nothing holds: a spare
        assert [id(b) for b in up._spare] == [second] and list(up._cache) == [3, 4]
        up.keep_written(5, bytearray(b"w" * PIECE))  # the copy of piece 5 takes it
        assert id(up._cache[5]) == second and up._cache[5] == b"w" * PIECE
        assert up._cache[4] == bytes([4]) * PIECE and len(up._spare) == 1  # piece 3's
