"""PeerProtocol asks the kernel to wake it once a partial frame is whole (``SO_RCVLOWAT``)
on a real loopback connection: set to the rest of a Piece frame while one is incomplete,
back to 1 once the frame is in, and never for the last segment or so of a frame. Reads
that leave the frame partial are not parsed at all; the block still arrives whole."""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import sys
import termios
from typing import Any

import pytest
from test_peer_receive import BLOCK, INFO_HASH, StubTorrent, block_bytes, stub_session

from conftest import until
from swarmhub.engine.peer import _LOWAT_MAX, _LOWAT_MIN, PeerProtocol
from swarmhub.wire import messages as m

#: Event-loop turns in which a readable socket would have been read (each turn polls the
#: selector): counted, not timed.
_TURNS = 20


def _lowat(proto: PeerProtocol) -> int:
    assert proto.transport is not None
    sock: Any = proto.transport.get_extra_info("socket")
    value: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
    return value


def _unread(proto: PeerProtocol) -> int:
    """Bytes in our socket's receive queue that we have not read (``FIONREAD``)."""
    assert proto.transport is not None
    sock: Any = proto.transport.get_extra_info("socket")
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


async def _pair() -> tuple[PeerProtocol, StubTorrent, asyncio.StreamWriter, asyncio.Server]:
    """Our protocol dialled to a remote we write raw bytes from; handshake and HaveAll done."""
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_conn(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put(w)

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    torrent = StubTorrent()
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: PeerProtocol(stub_session(torrent), torrent),  # type: ignore[arg-type]
        "127.0.0.1", port)
    remote = await asyncio.wait_for(accepted.get(), 10)
    remote.write(m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20))
                 + m.encode(m.HaveAll()))
    await until(lambda: len(torrent.events) >= 2, "the handshake and HaveAll")
    return proto, torrent, remote, server


def _blocks(torrent: StubTorrent) -> list[tuple[Any, ...]]:
    return [e for e in torrent.events if e[0] == "block"]


async def test_a_partial_block_sets_the_low_water_mark_to_its_rest_then_back_to_1() -> None:
    proto, torrent, remote, server = await _pair()
    try:
        assert _lowat(proto) == 1
        frame = m.encode(m.Piece(3, BLOCK, block_bytes(3, BLOCK)))
        head = 2000
        remote.write(frame[:head])
        await until(lambda: proto._frame_rest > 0, "the partial frame")
        rest = len(frame) - head
        assert proto._frame_rest == rest
        assert _lowat(proto) == min(rest, _LOWAT_MAX)
        # More of it, still below the mark: the kernel holds it and does not wake us.
        remote.write(frame[head:head + 3000])
        await until(lambda: _unread(proto) == 3000, "the second part in our socket")
        for _ in range(_TURNS):  # loop turns in which a readable socket would be read
            await asyncio.sleep(0)
        assert _unread(proto) == 3000 and proto._frame_rest == rest
        assert _blocks(torrent) == []
        remote.write(frame[head + 3000:])
        await until(lambda: len(_blocks(torrent)) == 1, "the block")
        assert _blocks(torrent) == [("block", 3, BLOCK, block_bytes(3, BLOCK))]
        assert _lowat(proto) == 1 and proto._frame_rest == 0
        # The next frame's last few KB only: one segment wakes us anyway, no setting.
        frame2 = m.encode(m.Piece(4, 0, block_bytes(4, 0)))
        cut = len(frame2) - _LOWAT_MIN
        remote.write(frame2[:cut])
        await until(lambda: proto._frame_rest == _LOWAT_MIN, "the second partial frame")
        assert _lowat(proto) == 1
        remote.write(frame2[cut:])
        await until(lambda: len(_blocks(torrent)) == 2, "the second block")
        assert proto.transport is not None and torrent.disconnected == []
    finally:
        proto.close("done")
        remote.close()
        server.close()
        await server.wait_closed()


def _read(proto: PeerProtocol, data: bytes) -> None:
    """A read of ``data`` as the event loop makes it (into the buffer we offer)."""
    buf = proto.get_buffer(-1)
    buf[:len(data)] = data
    proto.buffer_updated(len(data))


async def test_a_read_that_takes_part_of_the_rest_lowers_the_mark_to_what_is_missing() -> None:
    """After a read that filled its buffer the event loop reads again at once, and that
    read may take part of the rest the mark was set for. The mark must follow: above what
    is still missing, the frame's last bytes stayed in the kernel until more came (a lone
    seeder's last block, which nothing follows, waited for the request timeout)."""
    proto, torrent, remote, server = await _pair()
    try:
        frame = m.encode(m.Piece(3, BLOCK, block_bytes(3, BLOCK)))
        head, more = 2000, 3000
        _read(proto, frame[:head])  # a read ending in the frame: the mark is its rest
        assert _lowat(proto) == len(frame) - head
        _read(proto, frame[head:head + more])  # the loop's next read: part of the rest
        missing = len(frame) - head - more
        assert proto._frame_rest == missing and _blocks(torrent) == []
        assert _lowat(proto) == missing
        remote.write(frame[head + more:])  # the rest, and nothing after it
        await until(lambda: len(_blocks(torrent)) == 1, "the block")
        assert _blocks(torrent) == [("block", 3, BLOCK, block_bytes(3, BLOCK))]
        assert _lowat(proto) == 1
        # Less than a segment missing after such a read: no mark at all.
        frame2 = m.encode(m.Piece(4, 0, block_bytes(4, 0)))
        _read(proto, frame2[:head])
        _read(proto, frame2[head:len(frame2) - _LOWAT_MIN])
        assert proto._frame_rest == _LOWAT_MIN and _lowat(proto) == 1
        remote.write(frame2[len(frame2) - _LOWAT_MIN:])
        await until(lambda: len(_blocks(torrent)) == 2, "the second block")
    finally:
        proto.close("done")
        remote.close()
        server.close()
        await server.wait_closed()


async def test_a_peer_that_closes_mid_frame_is_noticed_despite_the_mark() -> None:
    proto, torrent, remote, server = await _pair()
    try:
        frame = m.encode(m.Piece(1, 0, block_bytes(1, 0)))
        remote.write(frame[:1000])
        await until(lambda: _lowat(proto) > 1, "the low-water mark")
        remote.close()
        await until(lambda: bool(torrent.disconnected), "the disconnect")
        assert _blocks(torrent) == []
    finally:
        proto.close("done")
        server.close()
        await server.wait_closed()


def test_setting_the_mark_under_uvloop_makes_no_socket_object() -> None:
    """uvloop's ``get_extra_info("socket")`` is a pseudo-socket that makes a socket object
    (with a getsockname and a getsockopt) per setsockopt; a lab peer sets the mark ~1,300
    times. Ours is made once per connection (and detached at close: the fd is the
    transport's)."""
    uvloop = pytest.importorskip("uvloop")
    made: list[object] = []
    counting = [False]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if counting[0] and event == "socket.__new__":
            made.append(args)

    sys.addaudithook(hook)  # (cannot be removed: it counts only while asked)

    async def run() -> None:
        proto, _, remote, server = await _pair()
        try:
            counting[0] = True
            for want in range(2, 52):
                proto._set_lowat(want)
            counting[0] = False
            assert _lowat(proto) == 51 and made == []
            proto.close("done")
            assert proto._sock is None  # detached: the transport closes the fd
        finally:
            remote.close()
            server.close()
            await server.wait_closed()

    uvloop.run(run())
