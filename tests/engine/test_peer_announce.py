"""Announcements (the Haves of a piece we just got, :meth:`Peer.announce`) wait for the next
bytes we send that peer, or the shared timer, and never overtake or fall behind other
writes: the peer sees every message once, in the order we queued them."""

from __future__ import annotations

from typing import Any

from test_peer_receive import INFO_HASH, StubTorrent, StubTransport, feed, stub_session

from conftest import until
from swarmhub.engine.peer import Peer, PeerProtocol
from swarmhub.wire import messages as m
from swarmhub.wire.connection import NEED_DATA, PeerConnection


class LinesTransport(StubTransport):
    def writelines(self, parts: list[Any]) -> None:
        self.written.append(b"".join(bytes(p) for p in parts))


async def _peer() -> tuple[PeerProtocol, Peer, LinesTransport, StubTorrent]:
    torrent = StubTorrent()
    proto = PeerProtocol(stub_session(torrent), torrent)  # type: ignore[arg-type]
    transport = LinesTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    hs = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveAll())
    feed(proto, hs, [len(hs)])
    assert proto.peer is not None
    transport.written.clear()
    return proto, proto.peer, transport, torrent


def _decode(written: list[bytes]) -> list[m.Message]:
    """What the remote would parse from our writes."""
    conn = PeerConnection(our_reserved=m.make_reserved())
    conn.receive_data(m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"L" * 20)))
    conn.send(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20))
    out: list[m.Message] = []
    conn.receive_data(b"".join(written))
    while (ev := conn.next_event()) is not NEED_DATA:
        if not isinstance(ev, m.Handshake):
            out.append(ev)  # type: ignore[arg-type]
    return out


async def test_announcements_ride_with_the_next_write_in_order() -> None:
    proto, peer, transport, _ = await _peer()
    peer.announce((m.Have(1),))
    peer.announce((m.Have(2),))
    assert transport.written == []  # held
    peer.send(m.Interested())
    assert len(transport.written) == 1  # one write: the Haves first, then ours
    proto.writelines([m.encode(m.Have(3))])
    assert _decode(transport.written) == [m.Have(1), m.Have(2), m.Interested(), m.Have(3)]
    proto.close("done")


async def test_announcements_alone_go_out_on_the_timer() -> None:
    proto, peer, transport, _ = await _peer()
    peer.announce((m.Have(4), m.Have(5)))
    assert transport.written == []
    await until(lambda: bool(transport.written), "the held Haves on the shared timer")
    assert _decode(transport.written) == [m.Have(4), m.Have(5)]
    proto.close("done")


async def test_replies_corked_during_a_read_follow_older_announcements() -> None:
    proto, peer, transport, torrent = await _peer()
    peer.announce((m.Have(6),))

    def reply() -> None:  # a block makes the torrent answer (a request refill, say)
        peer.announce((m.Have(7),))
        peer.send(m.Request(0, 0, 16384))

    torrent.on_each_block = reply
    frame = m.encode(m.Piece(0, 0, bytes(16384)))
    feed(proto, frame, [len(frame)])
    assert len(transport.written) == 1  # the read's one corked write
    assert _decode(transport.written) == [m.Have(6), m.Have(7), m.Request(0, 0, 16384)]
    proto.close("done")


async def test_closing_sends_what_was_held() -> None:
    proto, peer, transport, _ = await _peer()
    peer.announce((m.Have(9),))
    proto.close("done")
    assert _decode(transport.written) == [m.Have(9)]
    peer.announce((m.Have(10),))  # after the close: dropped, as any write
    assert _decode(transport.written) == [m.Have(9)]


async def test_bytes_packed_by_another_open_connection_are_sent_as_they_are() -> None:
    proto, peer, transport, _ = await _peer()
    peer.send(m.Interested())  # our first message out: the connection is open
    packed = peer.announce((m.Have(11),))
    assert packed == m.encode(m.Have(11))  # ours is open: the next peer may use them
    other = m.encode(m.Have(12))  # what another connection of the torrent packed
    assert peer.announce((m.Have(12),), other) is other
    proto.close("done")
    assert _decode(transport.written) == [m.Interested(), m.Have(11), m.Have(12)]


async def test_a_connection_not_open_yet_packs_its_own_and_hands_the_bytes_on() -> None:
    torrent = StubTorrent()
    proto = PeerProtocol(stub_session(torrent), torrent)  # type: ignore[arg-type]
    transport = LinesTransport()
    proto.connection_made(transport)  # our handshake is out, theirs is not in
    peer = Peer(proto, torrent, b"R" * 20)  # type: ignore[arg-type]
    wrong = m.encode(m.Have(99))
    # not open: our first message after the handshake may be a bitfield, so the bytes
    # an open connection packed are not used as they are (send() decides)
    assert peer.announce((m.Have(1),), wrong) is wrong  # handed on untouched
    proto.close("done")
    written = b"".join(transport.written)
    assert m.encode(m.Have(1)) in written
    assert m.encode(m.Have(99)) not in written


async def test_announcements_to_a_peer_we_choke_wait_for_the_longer_timer() -> None:
    fast_proto, fast, fast_out, _ = await _peer()
    slow_proto, slow, slow_out, _ = await _peer()
    for p in (fast, slow):
        p.send(m.Interested())  # open
    fast_out.written.clear()
    slow_out.written.clear()
    slow.announce((m.Have(11),), choked=True)
    fast.announce((m.Have(12),))
    await until(lambda: bool(fast_out.written), "the unchoked peer's Haves on the short timer")
    assert slow_out.written == []  # still held: the longer timer fires later
    fast.announce((m.Have(13),), choked=True)  # a peer held on both timers is fine
    await until(lambda: bool(slow_out.written), "the choked peer's Haves on the long timer")
    assert _decode(slow_out.written) == [m.Have(11)]
    await until(lambda: len(fast_out.written) == 2, "the second, choked, Have")
    assert _decode(fast_out.written) == [m.Have(12), m.Have(13)]
    for proto in (fast_proto, slow_proto):
        proto.close("done")


async def test_a_shorter_delay_moves_held_announcements_forward() -> None:
    proto, peer, transport, _ = await _peer()
    other_proto, other, other_out, _ = await _peer()
    for p in (peer, other):
        p.send(m.Interested())
    transport.written.clear()
    other_out.written.clear()
    peer.announce((m.Have(14),), choked=True)
    peer.announce((m.Have(15),))  # now unchoked: both go on the short timer
    other.announce((m.Have(10),))  # on the same short timer, listed after
    await until(lambda: bool(other_out.written), "the short timer")
    assert _decode(transport.written) == [m.Have(14), m.Have(15)]
    for p in (proto, other_proto):
        p.close("done")


async def test_the_replies_to_one_read_leave_in_one_write() -> None:
    """Blocks, Haves, blocks and an Interested in one read: the refills each run of blocks
    causes, and the reply to the Interested, are one write (each run was a write, a segment
    and a wake-up of the peer of its own), in the order they were made."""
    proto, peer, transport, torrent = await _peer()
    asked = iter(range(100))

    def refill() -> None:  # each block makes the torrent ask for another
        peer.send(m.Request(next(asked) % 16, 0, 16384))

    torrent.on_each_block = refill
    data = (m.encode(m.Piece(0, 0, bytes(16384))) + m.encode(m.Have(3))
            + m.encode(m.Piece(0, 16384, bytes(16384))) + m.encode(m.Have(4))
            + m.encode(m.Piece(0, 32768, bytes(16384))))
    feed(proto, data, [len(data)])
    assert torrent.have_runs == [1, 1]  # the runs were handled apart, as before
    assert len(transport.written) == 1
    assert _decode(transport.written) == [m.Request(i, 0, 16384) for i in range(3)]
    peer.send(m.Request(9, 0, 16384))  # outside a read: written at once
    assert len(transport.written) == 2
    proto.close("done")


async def test_replies_past_the_read_gate_are_written_mid_read() -> None:
    """A read's replies are held for its end only while the read gate has room for them:
    past it they are written at once (the gate then sees them and stops the read)."""
    proto, peer, transport, torrent = await _peer()
    assert proto._gate is not None
    limit = proto._gate.limit
    big = m.Extended(7, bytes(limit))  # one reply larger than the gate's limit

    def reply() -> None:
        peer.send(big)

    torrent.on_each_block = reply
    data = m.encode(m.Piece(0, 0, bytes(16384))) + m.encode(m.Have(3))
    written_during: list[int] = []
    real_on_haves = torrent.on_haves

    def on_haves(p: Any, indices: list[int]) -> None:  # the Haves come after the block
        written_during.append(len(transport.written))
        real_on_haves(p, indices)

    torrent.on_haves = on_haves  # type: ignore[method-assign]
    feed(proto, data, [len(data)])
    assert written_during == [1]  # the block's reply went out before the Haves' run
    proto.close("done")
