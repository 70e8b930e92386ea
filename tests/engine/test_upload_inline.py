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


def setup(settings: Settings | None = None) -> tuple[Uploader, Any, RequestQueue, list[Any]]:
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
                              meta=SimpleNamespace(piece_length=PIECE), clock=lambda: 1.0,
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
