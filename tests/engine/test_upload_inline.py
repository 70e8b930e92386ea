"""Blocks of cached pieces go out from the callback that got their requests (the core's
Serve action), in the same write as that callback's other replies; the peer's serving
task is woken only for what that cannot send (a disk read, a rate limit, a full socket).
Stub torrent, peer and transport: no sockets, no clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from swarmhub.engine.peer import PeerProtocol
from swarmhub.engine.peerstate import RequestQueue
from swarmhub.engine.ratelimit import RateLimiter
from swarmhub.engine.uploads import Uploader
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.connection import PeerConnection

PIECE = 32 * 1024
BLOCK = 16 * 1024


class Peer(SimpleNamespace):
    __hash__ = object.__hash__  # a handle: hashable by identity


class Proto:
    """What the uploader uses of a PeerProtocol; ``corked`` plays a receive callback."""

    def __init__(self) -> None:
        self.writable = True
        self.corked = False
        self.pending: list[Any] = []
        self.writes: list[list[bytes]] = []

    def run_uncorked(self, fn: Any) -> bool:
        if self.corked:
            self.pending.append(fn)
        return self.corked

    def writelines(self, parts: list[Any]) -> None:
        self.writes.append([bytes(p) for p in parts])


def _page_cache(pieces: set[int]) -> Any:
    """A storage whose ``pieces`` are in the page cache (each byte its piece's index)."""
    def read_cached(offset: int, buf: bytearray) -> bool:
        index = offset // PIECE
        if index not in pieces:
            return False
        buf[:] = bytes([index]) * len(buf)
        return True
    return SimpleNamespace(read_cached=read_cached)


def setup(settings: Settings | None = None, cached: set[int] | None = None,
          ) -> tuple[Uploader, Any, RequestQueue, list[Any]]:
    conn = PeerConnection(our_reserved=m.make_reserved())
    conn.send(m.Handshake(m.make_reserved(), bytes(20), b"L" * 20))
    conn.set_num_pieces(4, piece_length=PIECE, total_length=4 * PIECE)
    peer = Peer(proto=Proto(), conn=conn, closed=False,
                           upload_wakeup=asyncio.Event())
    incoming = RequestQueue()
    sent: list[Any] = []
    swarm = SimpleNamespace(
        peers={peer: SimpleNamespace(incoming=incoming)},
        upload_budget=lambda now: 0,  # pieces leave fast: no upload turns
        blocks_sent=lambda handle, served, size, now: sent.append((handle, list(served), size)))
    torrent = SimpleNamespace(settings=settings or Settings(), swarm=swarm,
                              meta=SimpleNamespace(piece_length=PIECE,
                                                   piece_size=lambda index: PIECE),
                              storage=_page_cache(cached or set()), clock=lambda: 1.0,
                              _flush=lambda: None)
    up = Uploader(torrent, RateLimiter(0))  # type: ignore[arg-type]
    up._cache[0] = bytes(range(256)) * (PIECE // 256)
    return up, peer, incoming, sent


def test_cached_blocks_are_written_at_once_in_one_write_without_the_task() -> None:
    up, peer, incoming, sent = setup()
    for begin in (0, BLOCK):
        incoming.append(m.Request(0, begin, BLOCK))
    up.wake(peer)
    assert not peer.upload_wakeup.is_set()  # nothing left for the task
    assert not incoming
    [parts] = peer.proto.writes  # one writelines: header + block, twice
    data = up._cache[0]
    assert b"".join(parts) == b"".join(
        m.encode(m.Piece(0, b, data[b:b + BLOCK])) for b in (0, BLOCK))
    assert sent == [(peer, [m.Request(0, 0, BLOCK), m.Request(0, BLOCK, BLOCK)], PIECE)]


def test_inside_a_receive_callback_the_blocks_wait_for_its_end() -> None:
    up, peer, incoming, sent = setup()
    peer.proto.corked = True
    incoming.append(m.Request(0, 0, BLOCK))
    up.wake(peer)
    incoming.append(m.Request(0, BLOCK, BLOCK))
    up.wake(peer)
    assert not peer.proto.writes and not sent  # not yet: the callback goes on
    for fn in peer.proto.pending:
        fn()
    assert len(peer.proto.writes) == 1 and len(sent) == 1 and sent[0][2] == PIECE
    assert not peer.upload_wakeup.is_set()


def test_pieces_in_the_page_cache_are_read_and_written_at_once() -> None:
    """A piece not cached but in the page cache is read on the spot (no disk pool, no
    task) and goes in the same write; one the disk must read stops the batch there."""
    up, peer, incoming, sent = setup(cached={1, 2})
    for index in (0, 1, 2, 3):
        incoming.append(m.Request(index, 0, BLOCK))
    up.wake(peer)
    [parts] = peer.proto.writes
    assert b"".join(parts)[-BLOCK:] == bytes([2]) * BLOCK
    assert [r.index for r in sent[0][1]] == [0, 1, 2]
    assert list(incoming) == [m.Request(3, 0, BLOCK)] and peer.upload_wakeup.is_set()
    assert not up._reads  # the task reads piece 3 from the disk pool


def test_a_batch_never_reads_out_a_piece_of_its_own() -> None:
    """Pieces read during a batch push the cache's oldest out: never one of the batch
    (its buffer would be reused under the write), so a small cache ends the batch."""
    up, peer, incoming, sent = setup(Settings(read_cache_bytes=4 * PIECE), cached={1, 2, 3})
    for index in (4, 5, 6):  # older than piece 0, which the batch starts with
        up._cache[index] = bytes([index]) * PIECE
    up._cache.move_to_end(0, last=False)
    for index in (0, 1, 2, 3):
        incoming.append(m.Request(index, 0, BLOCK))
    up.wake(peer)
    served = [r.index for r in sent[0][1]]
    assert 0 in up._cache and all(i in up._cache for i in served)
    [parts] = peer.proto.writes
    assert b"".join(parts)[13:13 + BLOCK] == up._cache[0][:BLOCK]


def test_the_task_is_woken_for_what_cannot_go_at_once() -> None:
    # A piece not cached (a disk read): the cached block ahead of it goes, the task reads.
    up, peer, incoming, sent = setup()
    incoming.append(m.Request(0, 0, BLOCK))
    incoming.append(m.Request(1, 0, BLOCK))
    up.wake(peer)
    assert len(peer.proto.writes) == 1 and list(incoming) == [m.Request(1, 0, BLOCK)]
    assert peer.upload_wakeup.is_set()
    # A full socket, a rate limit: for the task (upload turns: test_upload_turn_waits).
    for settings, writable in ((Settings(), False), (Settings(upload_rate_limit=100_000), True)):
        up, peer, incoming, sent = setup(settings)
        peer.proto.writable = writable
        incoming.append(m.Request(0, 0, BLOCK))
        up.wake(peer)
        assert peer.upload_wakeup.is_set() and not peer.proto.writes and not sent


class Transport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def close(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.writes.append([bytes(data)])

    def writelines(self, parts: list[Any]) -> None:
        self.writes.append([bytes(p) for p in parts])


async def test_a_deferred_write_goes_with_the_corked_replies_first_and_uncopied() -> None:
    session = SimpleNamespace(settings=SimpleNamespace(send_buffer_bytes=1 << 20,
                                                       handshake_timeout=60.0),
                              pending=set(), reserved=m.make_reserved())
    proto = PeerProtocol(session)  # type: ignore[arg-type]
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    block = memoryview(b"b" * BLOCK)
    calls: list[int] = []

    def deferred() -> None:
        calls.append(1)
        proto.writelines([b"head", block])

    proto._cork = bytearray()
    proto.write(b"reply1")
    assert proto.run_uncorked(deferred)
    assert proto.run_uncorked(deferred)  # asked twice: called once
    proto.write(b"reply2")
    assert not transport.writes and not calls
    proto._flush()  # the end of the receive callback
    assert calls == [1]
    assert transport.writes == [[b"reply1reply2", b"head", bytes(block)]]
    assert not proto.run_uncorked(deferred)  # not corked: the caller writes itself
    # Asked again by what the deferred call did (its core actions): still before the end.
    again: list[int] = []

    def first() -> None:
        proto.run_uncorked(lambda: again.append(1))

    proto._cork = bytearray()
    proto.run_uncorked(first)
    proto._flush()
    assert again == [1]
    proto.close("done")
