"""One peer connection: a thin asyncio adapter over the sans-IO :class:`PeerConnection`.

The protocol object only moves bytes: it feeds what the socket gives to the wire core and
hands each message to :class:`Peer`, the handle the torrent's swarm core knows the peer
by. The peer answers extension and hash traffic itself and passes the rest to its torrent
(a :class:`~swarmhub.engine.services.PeerHost`), whose core keeps the per-peer state.
Anything the peer does wrong closes *this* connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from swarmhub.engine.flow import BACKLOG, RATE, SOON, ReadGate, reply_limit
from swarmhub.engine.peerstate import RateMeter  # re-exported: its old home
from swarmhub.engine.pex import PexPeer
from swarmhub.engine.picker import make_block
from swarmhub.engine.services import PeerHost, PeerServices
from swarmhub.errors import LocalProtocolError, RemoteProtocolError, SwarmhubError
from swarmhub.wire import messages as m
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection, Phase
from swarmhub.wire.extensions import (
    METADATA_PIECE_SIZE,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_ext_handshake,
    decode_metadata_message,
    decode_pex,
    encode_ext_handshake,
    encode_metadata_message,
)

__all__ = ["Peer", "PeerProtocol", "RateMeter"]

log = logging.getLogger(__name__)

#: Our BEP 10 extension ids (what we ask peers to use when they talk to us).
EXT_IDS = {"ut_pex": 1, "ut_metadata": 2}
_UT_METADATA = EXT_IDS["ut_metadata"]
_UT_PEX = EXT_IDS["ut_pex"]
_U32_FROM = struct.Struct(">I").unpack_from
#: Blocks handed to the torrent per call on the receive fast path (512 KiB):
#: large enough that per-call work is small per block, small enough that a peer leaving
#: our replies unread is noticed within a batch.
PIECE_BATCH = 32


class Peer:
    """One connected peer of one torrent: the handle the swarm core knows it by.

    It keeps only what the wire needs (extension ids, the client name) and a way to
    write; everything about choking, pieces and requests lives in the torrent's swarm
    core (:class:`~swarmhub.engine.peerstate.PeerState`).
    """

    def __init__(self, proto: PeerProtocol, torrent: PeerHost, remote_id: bytes) -> None:
        self.proto = proto
        self.torrent = torrent
        self.remote_id = remote_id
        self.addr = proto.addr
        self.conn = proto.conn
        self.ext_ids: dict[str, int] = {}
        self.client = ""
        #: we dialled it (so ``addr`` is where it listens)
        self.outgoing = False
        #: BEP 11 state with this peer (the torrent makes it once the peer offers ut_pex)
        self.pex: PexPeer | None = None
        self.upload_wakeup = asyncio.Event()
        self.closed = False

    # -- sending ------------------------------------------------------------------
    def send(self, msg: m.Message) -> None:
        if self.closed:
            return
        try:
            data = self.conn.send(msg)
        except LocalProtocolError as exc:  # our bug, not the peer's: make it loud
            log.error("peer %s: not sending %s: %s", self.addr, type(msg).__name__, exc)
            return
        self.proto.write(data)

    def send_many(self, msgs: tuple[m.Message, ...]) -> None:
        """Several messages in one write (a batch of requests, Choke + rejects)."""
        if self.closed:
            return
        if len(msgs) == 1:
            self.send(msgs[0])
            return
        data = self._encode(msgs, "sending a batch of")
        if data is not None:
            self.proto.write(data)

    def announce(self, msgs: tuple[m.Message, ...], data: bytes | None = None,
                 choked: bool = False) -> bytes | None:
        """Messages that may wait a little (the Haves of a piece we just got, told to
        every peer): they ride along with the next bytes we send this peer, or go out
        within ``ANNOUNCE_DELAY`` (``CHOKED_ANNOUNCE_DELAY`` for a peer we choke: it
        cannot ask us for them yet; see :meth:`PeerProtocol.write_later`).

        ``data``: their bytes as another open connection of this torrent packed them
        (the same for every such connection: same messages, same piece count), used as
        they are when ours is open too. Returns the bytes for the next peer (None until
        an open connection packed them)."""
        if self.closed:
            return data
        delay = CHOKED_ANNOUNCE_DELAY if choked else ANNOUNCE_DELAY
        if self.conn.our_phase is not Phase.OPEN:  # send() decides (a first message...)
            packed = self._encode(msgs, "announcing")
            if packed is not None:
                self.proto.write_later(packed, delay)
            return data
        if data is None:
            data = self._encode(msgs, "announcing")
            if data is None:
                return None
        self.proto.write_later(data, delay)
        return data

    def _encode(self, msgs: tuple[m.Message, ...], what: str) -> bytes | None:
        """The wire bytes of ``msgs``, or None (logged as our bug) if one is invalid."""
        try:
            return self.conn.send_all(msgs)
        except LocalProtocolError as exc:
            log.error("peer %s: not %s %d: %s", self.addr, what, len(msgs), exc)
            return None

    @property
    def fast(self) -> bool:
        return bool(self.conn.fast)

    def close(self, reason: str) -> None:
        self.proto.close(reason)

    def __repr__(self) -> str:
        return f"<Peer {self.addr[0]}:{self.addr[1]} {self.client or self.remote_id[:8]!r}>"

    # -- incoming messages ------------------------------------------------------------
    def handle(self, ev: m.Message) -> None:
        """Dispatch one message from the peer: blocks and swarm messages to the torrent,
        extension and hash traffic here."""
        t = self.torrent
        if type(ev) is m.Piece:
            t.on_block(self, ev)
            return
        match ev:
            case m.Extended(ext_id=0, payload=payload):
                hs = decode_ext_handshake(payload)
                self.ext_ids = dict(hs.m)
                t.on_ext_handshake(self, hs)
                if hs.v:
                    self.client = hs.v
                t.on_message(self, ev)
            case m.Extended(ext_id=ext_id, payload=payload) if ext_id == _UT_METADATA:
                self._on_metadata(payload)
                t.on_message(self, ev)
            case m.Extended(ext_id=ext_id, payload=payload) if ext_id == _UT_PEX:
                if t.pex_enabled:  # never for private torrents nor with --no-pex
                    t.on_pex(self, decode_pex(payload))
            case m.HashRequest():
                hashes = t.hashes_for(ev)
                if hashes is None:
                    self.send(m.HashReject(ev.pieces_root, ev.base_layer, ev.index, ev.length,
                                           ev.proof_layers))
                else:
                    self.send(m.Hashes(ev.pieces_root, ev.base_layer, ev.index, ev.length,
                                       ev.proof_layers, hashes))
                t.on_message(self, ev)
            case _:
                t.on_message(self, ev)

    def _on_metadata(self, payload: bytes) -> None:
        """BEP 9: hand out our info dict in 16 KiB pieces (never for private torrents)."""
        msg = decode_metadata_message(payload)
        their_id = self.ext_ids.get("ut_metadata")
        if not isinstance(msg, MetadataRequest) or not their_id:
            return
        info = self.torrent.meta.info_bytes
        start = msg.piece * METADATA_PIECE_SIZE
        reply: MetadataData | MetadataReject
        if self.torrent.meta.private or not 0 <= start < len(info):
            reply = MetadataReject(msg.piece)
        else:
            reply = MetadataData(msg.piece, len(info), info[start:start + METADATA_PIECE_SIZE])
        self.send(m.Extended(their_id, encode_metadata_message(reply)))

    def send_ext_handshake(self, listen_port: int) -> None:
        t = self.torrent
        payload = encode_ext_handshake(
            m={} if t.meta.private else {
                name: ext_id for name, ext_id in EXT_IDS.items()
                if name != "ut_pex" or t.pex_enabled},
            v=t.settings.user_agent,
            p=listen_port or None,
            reqq=t.settings.max_outstanding_incoming_requests,
            metadata_size=None if t.meta.private else len(t.meta.info_bytes),
            yourip=_ip_bytes(self.addr[0]),
            # BEP 21: a seed wants nothing; a finished peer that hears it leaves this
            # address undialled (libtorrent: a seed closes such a peer)
            upload_only=t.swarm.upload_only,
        )
        self.send(m.Extended(0, payload))


def _ip_bytes(host: str) -> bytes | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host)
        except OSError:
            continue
    return None


#: Bytes read from the socket at a time, into one buffer per connection (eight blocks).
_READ_SIZE = 128 * 1024
#: What that buffer grows to (doubling) while reads fill it: a fast peer's blocks then
#: come in fewer, larger reads (1 GiB on loopback: 11 k reads of 94 KiB on average with
#: 128 KiB; each read costs a callback, a batch through the core and a request refill:
#: 0.12-0.15 leecher CPU-s per GiB less with 512 KiB). Slow peers never fill 128 KiB.
_READ_MAX = 512 * 1024
#: Least free space a read gets: a partial frame is moved to the front to make room.
_MIN_READ = 32 * 1024
#: ``SO_RCVLOWAT`` while a frame is incomplete: the kernel wakes us once the rest of it is
#: in (a shaped link delivers a 16 KiB block in ~11 segments, each a wake-up, a read and a
#: pass through our parser otherwise). Only when more than one segment is missing (below
#: that the next segment wakes us anyway: a setting would cost more than it saves), and
#: at most ``_LOWAT_MAX``: Linux grows the receive buffer, and clamps the window, for a
#: mark its buffer cannot hold twice over. A frame in progress is one the peer must
#: finish; an EOF, an error or a full receive window wake us regardless.
_LOWAT_MIN = 4 * 1024
_LOWAT_MAX = 32 * 1024


#: Longest an announcement (:meth:`Peer.announce`) waits for other bytes to the same peer.
#: Why: a leecher tells each of its N peers about every piece it gets, one 9-byte Have at
#: a time: with 32 KiB pieces at N=32 that was ~32 k writes, and as many wake-ups of the
#: receivers (and packets through the lab's delay line), per peer and 32 MiB; most now
#: ride with a request or a block, the rest go out a few at a time. At 20 ms a lab peer
#: (a piece every ~25 ms) still wrote most Haves alone; 100 ms cut its CPU a further ~5 %
#: (netns lab, N=32). At 100 ms each peer still made ~7,800 such writes per 32 MiB at
#: N=32 (every flush writes to each peer holding some, and wakes each of them for a read);
#: 250 ms: median peer CPU after the start gate 1.29 -> 1.12 s and 2.13 -> 1.81x the bound
#: (N=32, 3 alternating runs each, load 25-40), N=16 unchanged (1.15 / 1.16x). Peers learn
#: of a piece up to 0.25 s later: the time a 512 KiB piece takes on a 20 mbit link.
ANNOUNCE_DELAY = 0.25
#: The same for a peer we choke: it cannot ask us for the piece until we unchoke it, and
#: our Unchoke carries whatever is held (each write takes the held bytes first). Why: at
#: N=32 a peer unchokes ~4 of its ~31 peers, and every 0.25 s flush woke each of the
#: others for a read of a few Haves. 2.0 s was tried (peercpu-22; netns lab, 10 ms, median
#: peer CPU-s after the gate / x the bound, alternating runs): N=32 p2p 1.00 -> 0.94 /
#: 1.66 -> 1.58, hybrid 0.99 -> 0.94 / 1.68 -> 1.59 (5 runs each, load 9-21), but N=16
#: p2p 1.20, 1.14 -> 1.31, 1.30x and hybrid 1.17, 1.18 -> 1.32, 1.27x (2 runs each; likely a
#: choked peer learns late that it wants our pieces, and the choker unchokes the interested).
CHOKED_ANNOUNCE_DELAY = 1.0
#: Per event loop and delay: the protocols with announcements held, flushed by one timer.
_HELD: dict[tuple[asyncio.AbstractEventLoop, float], list[PeerProtocol]] = {}


def _hold(proto: PeerProtocol, delay: float) -> None:
    loop = asyncio.get_running_loop()
    key = (loop, delay)
    held = _HELD.get(key)
    if held is None:
        held = _HELD[key] = []
        loop.call_later(delay, _flush_held, key)
    held.append(proto)


def _flush_held(key: tuple[asyncio.AbstractEventLoop, float]) -> None:
    for proto in _HELD.pop(key, ()):
        proto.flush_later()


_FAST_IDS = (m.MessageId.PIECE, m.MessageId.REQUEST, m.MessageId.HAVE)
_PIECE_ID, _REQUEST_ID, _HAVE_ID = (int(i) for i in _FAST_IDS)


def _frames_to_next_piece(view: memoryview, pos: int, end: int) -> int:
    """End of the complete frames from ``pos`` up to the next Piece, Request or Have frame (the
    ones with a fast path; the first frame counts whatever it is: the fast path declined
    it); ``pos`` if that one is partial."""
    p = pos
    while end - p >= 4:
        length: int = _U32_FROM(view, p)[0]
        if p + 4 + length > end or (p > pos and length and view[p + 4] in _FAST_IDS):
            break
        p += 4 + length
    return p


def _fits(view: memoryview, pos: int, end: int) -> bool:
    """The partial frame at ``pos`` fits our buffer with a read's room to spare."""
    if end - pos < 4:
        return True
    length: int = _U32_FROM(view, pos)[0]
    return 4 + length <= len(view) - _MIN_READ


class PeerProtocol(asyncio.BufferedProtocol):
    """Moves bytes between the socket and the wire core; owns nothing else.

    A buffered protocol: the event loop reads straight into our preallocated buffer (no
    bytes object per read), and the Piece frames in it go to the torrent as views of that
    buffer, one batch per read (the torrent copies each block into its piece buffer: the
    only copy on the way to the disk). ``data_received`` stays for the MSE layer, which
    hands over what it decrypted.
    """

    def __init__(self, session: PeerServices, torrent: PeerHost | None = None) -> None:
        self.session = session
        self.torrent = torrent
        self.conn = PeerConnection(our_reserved=session.reserved)
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.addr: tuple[str, int] = ("?", 0)
        self.closed = asyncio.get_running_loop().create_future()
        self._gate: ReadGate | None = None
        self._cork: bytearray | None = None  # writes held while handling received messages
        #: inside buffer_updated: the corks of its runs (blocks, Haves, Requests, others)
        #: are written once, at its end (see _flush)
        self._reading = False
        self._uncorking: Callable[[], None] | None = None  # see run_uncorked
        self._later = bytearray()  # announcements waiting for other bytes or the timer
        self._held = 0.0  # the soonest timer _later is listed under (while it holds bytes)
        self._writable = asyncio.Event()
        self._writable.set()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._read_view: memoryview | None = None  # made on first read (not for MSE)
        self._read_start = 0  # bytes of _read_view not handled yet: [start:end]
        self._read_end = 0
        self._offered = 0  # bytes the last get_buffer offered
        self._grow = False  # the last read filled them: a larger buffer next time
        self._setsockopt: Callable[[int, int, int], None] | None = None
        self._sock: socket.socket | None = None  # the transport's fd, for _setsockopt
        self._lowat = 1  # our socket's SO_RCVLOWAT
        self._frame_rest = 0  # bytes still missing from the partial frame we hold
        self._pump_soon: asyncio.Handle | None = None  # see _pump

    # -- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave like one.
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tr
        peername = transport.get_extra_info("peername")
        if peername:
            self.addr = (str(peername[0]), int(peername[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    # Our own object over the transport's fd (never closed by us: see
                    # close()). Why: uvloop's pseudo-socket makes a socket object per
                    # call, with a getsockname and a getsockopt of its own; a lab peer
                    # sets SO_RCVLOWAT ~1,300 times (perf, N=32: 1.4 % of its CPU).
                    self._sock = socket.socket(sock.family, sock.type, 0, sock.fileno())
                    self._setsockopt = self._sock.setsockopt
        high = self.session.settings.send_buffer_bytes
        tr.set_write_buffer_limits(high=high, low=high // 4)
        self._gate = ReadGate(tr, reply_limit(high))
        self.session.pending.add(self)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(
            self.session.settings.handshake_timeout, self.close, "handshake timed out"
        )
        if self.torrent is not None:
            self._send_handshake(self.session.handshake_for(self.torrent))

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._read_view
        start, end = self._read_start, self._read_end
        if view is None or self._grow:
            # First read, or the last one filled what it was offered: (double) the buffer,
            # keeping the partial frame at its front.
            self._grow = False
            size = _READ_SIZE if view is None else min(_READ_MAX, 2 * len(view))
            new = memoryview(bytearray(size))
            n = end - start
            if n:
                assert view is not None
                new[:n] = view[start:end]
            view = self._read_view = new
            start, end = self._read_start, self._read_end = 0, n
        if start == end:
            self._read_start = self._read_end = 0
            self._offered = len(view)
            return view
        if len(view) - end < _MIN_READ:  # move the partial frame to the front
            n = end - start
            view[:n] = view[start:end]
            self._read_start, self._read_end = 0, n
            self._offered = len(view) - n
            return view[n:]
        self._offered = len(view) - end
        return view[end:]

    def buffer_updated(self, nbytes: int) -> None:
        if nbytes == self._offered and self._read_view is not None \
                and len(self._read_view) < _READ_MAX:
            self._grow = True
        self._read_end += nbytes
        rest = self._frame_rest = self._frame_rest - nbytes
        if rest > 0:  # the partial frame is still partial: nothing to parse
            if self._lowat > rest:
                # This read took part of the rest the mark was set for (the event loop
                # reads again at once after a read that filled its buffer): a mark above
                # what is still missing keeps the frame's last bytes in the kernel until
                # more bytes come, and a lone seeder's last block (nothing follows it)
                # waited for the request timeout, 20 s.
                self._set_lowat(rest if rest > _LOWAT_MIN else 1)
            return
        self._reading = True
        try:
            self._read_frames()
        finally:
            self._reading = False
            if self._cork is not None:
                self._flush()

    def _read_frames(self) -> None:
        """Hand the complete frames of our read buffer on, the fast ways where we can."""
        view = self._read_view
        assert view is not None
        pos, end = self._read_start, self._read_end
        conn = self.conn
        while pos < end and self.transport is not None:
            peer = self.peer
            if peer is not None and not conn.buffered and self._gate_open():
                # Each fast path takes a run of its one kind of frame: only the one the
                # first frame's id names is asked (a seed's reads are Haves and Requests,
                # and each probe that found nothing was two calls and a flush).
                kind = view[pos + 4] if end - pos > 4 else -1
                if kind == _PIECE_ID:
                    pos = self._pieces(peer, view, pos, end)
                    if pos == end or self.transport is None:
                        break
                    kind = view[pos + 4] if end - pos > 4 else -1
                if kind in (_REQUEST_ID, _HAVE_ID) and self._gate_open():
                    at = pos
                    if kind == _REQUEST_ID:
                        pos = self._requests(peer, view, pos, end)
                    else:
                        pos = self._haves(peer, view, pos, end)
                    if pos != at:
                        continue  # then blocks again, or whatever follows
                if self._gate_open():
                    stop = _frames_to_next_piece(view, pos, end)
                    if stop > pos:  # not blocks: the wire core parses them
                        conn.receive_data(view[pos:stop])  # copied: our buffer stays ours
                        pos = stop
                        self._pump()
                        continue
                    if _fits(view, pos, end):
                        break  # a partial frame: kept for the next read to complete
            elif conn.buffered < len(view) and (peer is None or self._gate_open()):
                # The wire core holds the start of a frame (the handshake, or one the last
                # read cut): give it just the rest, so the frames after it go the fast way.
                need = conn.missing()
                if need is not None and 0 < need <= end - pos:
                    conn.receive_data(view[pos : pos + need])
                    pos += need
                    if conn.missing() == 0:
                        self._pump()
                    continue
            # Whatever cannot go the fast way (a pause, a huge frame): the wire core has it.
            conn.receive_data(view[pos:end])
            pos = end
            self._pump()
        self._read_start = pos
        if pos >= end or self.transport is None:
            self._read_start = self._read_end = self._frame_rest = 0
            if self._lowat != 1:
                self._set_lowat(1)
        else:
            self._wait_for_frame(view, pos, end)

    def _wait_for_frame(self, view: memoryview, pos: int, end: int) -> None:
        """``view[pos:end]`` starts a frame: skip reads until it is whole, and ask the
        kernel to wake us only then (``_LOWAT_MIN``)."""
        if end - pos < 4:
            self._frame_rest = 0
            want = 1
        else:
            rest = self._frame_rest = pos + 4 + _U32_FROM(view, pos)[0] - end
            want = min(rest, _LOWAT_MAX) if rest > _LOWAT_MIN else 1
        if want != self._lowat:
            self._set_lowat(want)

    def _set_lowat(self, want: int) -> None:
        setsockopt = self._setsockopt
        if setsockopt is None or self.transport is None:
            return
        try:
            setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
        except OSError:
            self._setsockopt = None  # not for this socket: wake per read, as before
            return
        self._lowat = want

    def _pieces(self, peer: Peer, view: memoryview, pos: int, end: int) -> int:
        """Hand the complete Piece frames from ``pos`` on to the torrent, as views of our
        read buffer; returns where the first other frame (or the partial one) starts.

        The hot path: the blocks of a read go over in batches of at most ``PIECE_BATCH``
        (one call, so the core's per-peer work runs once per batch), the replies they
        cause (request refills) corked into one write per read. Stops between batches
        when the peer leaves our replies unread (the rest then waits in the wire core
        until it drains)."""
        pieces_at = self.conn.pieces_at
        torrent = peer.torrent
        on_blocks = torrent.on_blocks
        # the Block our request was recorded by (found, not made: see BlockTable.find)
        table = torrent.swarm.picker.blocks
        find = table.find if table is not None else make_block
        if self._cork is None:
            self._cork = bytearray()
        try:
            while True:
                blocks, starts, pos, error = pieces_at(view, pos, end, PIECE_BATCH, find)
                if blocks:
                    on_blocks(peer, view, blocks, starts)
                if error is not None:
                    self.close(f"protocol error: {error}")
                    return end
                if self.transport is None:
                    return end
                if len(blocks) < PIECE_BATCH:
                    break  # not a Piece next (or not all of it yet)
                if not self._gate_open():
                    assert self._gate is not None
                    self._gate.pause(BACKLOG)  # resume_writing pumps (and reads) again
                    break
        except SwarmhubError as exc:
            self.close(f"error: {exc}")
            return end
        finally:
            self._flush()
        return pos

    def _requests(self, peer: Peer, view: memoryview, pos: int, end: int) -> int:
        """Hand the run of complete Request frames from ``pos`` on to the torrent in one
        call (a seeder's hot path: one per block it sends; it was a core dispatch and an
        action flush each), in parts when the read gate has less room than a reject for
        each; returns where the run ends, or where the peer's unread replies made us stop
        (the rest then goes through the wire core when they drain)."""
        try:
            reqs, stop = self.conn.requests_at(view, pos, end)
        except RemoteProtocolError as exc:
            self.close(f"protocol error: {exc}")
            return end
        if not reqs:
            return pos
        on_requests = peer.torrent.on_requests
        gate = self._gate
        if self._cork is None:
            self._cork = bytearray()
        try:
            done, count = 0, len(reqs)
            while done < count:
                # As many as the gate has room for: each may cork one 17-byte reject, so
                # its bound stays exact (their blocks go out after the run: run_uncorked).
                room = count if gate is None else gate.room(len(self._cork or b"")) // 17
                run = reqs if not done and room >= count else reqs[done:done + max(1, room)]
                on_requests(peer, run)
                done += len(run)
                pos += 17 * len(run)
                if self.transport is None:
                    return end
                if gate is not None and (gate.paused(BACKLOG)
                                         or gate.over(len(self._cork or b""))):
                    break
        except SwarmhubError as exc:
            self.close(f"error: {exc}")
            return end
        finally:
            self._flush()
        assert pos <= stop
        return pos

    def _haves(self, peer: Peer, view: memoryview, pos: int, end: int) -> int:
        """Hand the run of complete Have frames from ``pos`` on to the torrent in one call
        (the Haves of every peer's pieces: most of a swarm's messages); returns where the
        run ends. Their replies (Interested, requests) are corked into one write."""
        indices, stop = self.conn.haves_at(view, pos, end)
        if not indices:
            return pos
        if self._cork is None:
            self._cork = bytearray()
        try:
            peer.torrent.on_haves(peer, indices)
        except SwarmhubError as exc:
            self.close(f"error: {exc}")
            return end
        finally:
            self._flush()
        return end if self.transport is None else stop

    def _gate_open(self) -> bool:
        gate = self._gate
        return gate is None or gate.open()

    def _pump(self) -> None:
        """Handle the messages received so far, unless the peer leaves our replies unread:
        then stop reading (the rest stays in ``conn``, unparsed) until it drains.

        We only stay paused while the transport holds more than the gate's limit, which is
        above its high-water mark, so ``resume_writing`` is sure to call us again. When
        the socket took a gate's worth of replies at once, the rest waits for a later
        callback (reading paused meanwhile): uvloop keeps a write's buffers until its
        write callback in the next loop iteration while it already counts them as sent,
        so going on at once held one 8 MiB cork per round (a seeder's peak +66 to +108 MB
        under a 40,000-request ``ut_metadata`` flood, about one run in six)."""
        if self._pump_soon is not None or self.transport is None:
            return  # a later callback carries on (in order: the rest waits in ``conn``)
        gate = self._gate
        if not self._handle_received():
            if gate is not None:
                gate.resume(BACKLOG)  # every message handled: read again
            return
        assert gate is not None
        if gate.over():
            if not gate.paused(BACKLOG):
                log.debug("peer %s leaves over %d bytes unread: not reading from it "
                          "until they drain", self.addr, gate.limit)
            gate.pause(BACKLOG)
        elif self.transport is not None:
            gate.pause(SOON)
            self._pump_soon = asyncio.get_running_loop().call_soon(self._pump_later)

    def _pump_later(self) -> None:
        self._pump_soon = None
        self._pump()
        gate = self._gate
        if gate is not None and self._pump_soon is None:
            gate.resume(SOON)

    def _handle_received(self) -> bool:
        """Handle received messages until none is left (False) or the replies would pass
        the gate's limit (True). Replies are corked into one buffer and written once at
        the end: thousands of 17-byte rejects as separate writes cost far more memory
        (and syscalls) than their bytes."""
        conn = self.conn
        gate = self._gate
        if self._cork is None:
            self._cork = bytearray()
        try:
            while True:
                if gate is not None and gate.over(len(self._cork or b"")):
                    return True
                ev = conn.next_event()
                if ev is NEED_DATA:
                    return False
                if ev is CLOSED:
                    self.close("peer closed the connection")
                    return False
                peer = self.peer
                if peer is not None:
                    peer.handle(ev)  # type: ignore[arg-type]
                elif isinstance(ev, m.Handshake):
                    self._on_handshake(ev)
                if self.transport is None:
                    return False
        except RemoteProtocolError as exc:
            self.close(f"protocol error: {exc}")
        except SwarmhubError as exc:
            self.close(f"error: {exc}")
        finally:
            self._flush()
        return False

    def run_uncorked(self, fn: Callable[[], None]) -> bool:
        """While our writes are corked (a receive callback): call ``fn`` (once, however
        often asked) just before the cork is written, so that what it writes goes in the
        same write; False when not corked (``fn`` not called)."""
        if self._cork is None:
            return False
        if self._uncorking is None:
            self._uncorking = fn
        return True

    def _flush(self) -> None:
        """Write the cork (after what ``run_uncorked`` asked for). Inside a read it stays
        corked for the next run of the same read while the read gate has room for it: a
        read of blocks, Haves and blocks again made a write of requests per run of blocks,
        each a segment of its own (and a wake-up of the peer)."""
        while (fn := self._uncorking) is not None:  # (what fn does may ask again)
            self._uncorking = None
            if self.transport is not None:
                fn()
        cork = self._cork
        if self._reading and cork is not None and self.transport is not None:
            gate = self._gate
            if gate is None or not gate.over(len(cork)):
                return
        self._cork = None
        if cork and self.transport is not None:
            if self._later:
                cork[:0] = self._later
                self._later.clear()
            self.transport.write(cork)

    def eof_received(self) -> bool | None:
        self.close("peer closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed")

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        gate = self._gate
        if gate is not None and gate.paused(BACKLOG):
            self._pump()  # the messages held back while the peer was not reading

    # -- helpers ------------------------------------------------------------------------
    async def wait_writable(self) -> None:
        await self._writable.wait()

    def write(self, data: bytes) -> None:
        if self._cork is not None:
            self._cork += data
        elif self.transport is not None and data:
            if self._later:
                later, self._later = self._later, bytearray()
                self.transport.writelines([later, data])
            else:
                self.transport.write(data)

    @property
    def writable(self) -> bool:
        """The transport takes writes (it has not asked us to pause)."""
        return self._writable.is_set()

    def writelines(self, parts: list[bytes | memoryview | bytearray]) -> None:
        """Write ``parts`` (blocks: views of cached pieces) without copying them: while
        corked, what the cork holds goes first in the same writev and the cork starts
        anew (the transport may keep the old one: it is never touched again)."""
        if self.transport is None:
            return
        cork = self._cork
        if cork is not None:
            if self._later:
                cork[:0] = self._later
                self._later.clear()
            if cork:
                self._cork = bytearray()
                parts = [cork, *parts]
        elif self._later:
            later, self._later = self._later, bytearray()
            parts = [later, *parts]
        self.transport.writelines(parts)

    def write_later(self, data: bytes, delay: float = ANNOUNCE_DELAY) -> None:
        """Send ``data`` with the next write to this peer, or within ``delay`` seconds."""
        if self.transport is None or not data:
            return
        if self._cork is not None:  # the cork goes out at the end of this callback
            self._cork += data
            return
        if not self._later or delay < self._held:
            _hold(self, delay)  # (still listed under a later timer: a no-op flush then)
            self._held = delay
        self._later += data

    def flush_later(self) -> None:
        """Write the held announcements now (the timer's call)."""
        if self._later and self.transport is not None and self._cork is None:
            later, self._later = self._later, bytearray()
            self.transport.write(later)

    def pause_reading(self, seconds: float) -> None:
        """Stop reading for a while (download rate limit)."""
        gate = self._gate
        if self.transport is None or gate is None or gate.paused(RATE):
            return
        gate.pause(RATE)

        def resume() -> None:
            if self.transport is not None:
                gate.resume(RATE)

        asyncio.get_running_loop().call_later(seconds, resume)

    def _on_handshake(self, hs: m.Handshake) -> None:
        session = self.session
        outgoing = self.torrent is not None
        torrent = session.torrent_for_hash(hs.info_hash)
        if torrent is None:
            self.close("handshake for a torrent we do not have")
            return
        if self.torrent is None:  # incoming: answer the hash the peer used (or upgrade)
            self.torrent = torrent
            self._send_handshake(session.handshake_for(torrent, hs))
        elif torrent is not self.torrent:
            self.close("peer answered for another torrent")
            return
        if hs.peer_id == session.peer_id:
            self.close("connected to ourselves")
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.session.pending.discard(self)
        reason = torrent.can_accept(self.addr, hs.peer_id, outgoing)
        if reason:
            self.close(reason)
            return
        meta = torrent.meta
        # The piece geometry lets the wire core refuse out-of-range blocks both ways.
        self.conn.set_num_pieces(meta.num_pieces, piece_length=meta.piece_length,
                                 total_length=meta.total_length)
        self.peer = Peer(self, torrent, hs.peer_id)
        self.peer.outgoing = outgoing
        torrent.on_peer_connected(self.peer)

    def _send_handshake(self, hs: m.Handshake) -> None:
        self.conn.set_our_reserved(hs.reserved)  # per torrent: the BEP 52 upgrade bit
        self.write(self.conn.send(hs))

    def close(self, reason: str) -> None:
        self.session.pending.discard(self)
        self._uncorking = None
        self._reading = False
        if self._cork is not None:
            self._flush()  # what we said before closing still goes out (or is aborted)
        self.flush_later()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._pump_soon is not None:
            self._pump_soon.cancel()
            self._pump_soon = None
        transport, self.transport = self.transport, None
        sock, self._sock, self._setsockopt = self._sock, None, None
        if sock is not None:
            sock.detach()  # the fd is the transport's: it closes it
        if transport is not None:
            log.debug("closing %s: %s", self.addr, reason)
            # A graceful close waits to flush the write buffer, forever if the peer never
            # reads: drop what a slow or hostile peer left unread (and its memory) at once.
            unread = transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]
            transport.abort() if "error" in reason or unread else transport.close()
        self._writable.set()
        peer, self.peer = self.peer, None
        if peer is not None and not peer.closed:
            peer.closed = True
            peer.upload_wakeup.set()
            peer.torrent.on_peer_disconnected(peer, reason)
        if not self.closed.done():
            self.closed.set_result(reason)
