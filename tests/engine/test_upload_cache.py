"""Pieces we verify go into the upload read cache while a connected peer lacks them:
with direct writes the page cache holds no copy, so serving them was a disk read each."""

from __future__ import annotations

from types import SimpleNamespace

from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.uploads import Uploader
from swarmhub.settings import Settings

PIECE = 32 * 1024


def _uploader(peers: list[SimpleNamespace], settings: Settings | None = None) -> Uploader:
    torrent = SimpleNamespace(
        settings=settings or Settings(), swarm=SimpleNamespace(peers={i: p for i, p in
                                                                      enumerate(peers)}),
        meta=SimpleNamespace(piece_length=PIECE))
    return Uploader(torrent, RateLimiter(0))  # type: ignore[arg-type]


def _peer(have: set[int], *, closed: bool = False, interested: bool = True
          ) -> SimpleNamespace:
    return SimpleNamespace(have=[int(i in have) for i in range(8)], closed=closed,
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
