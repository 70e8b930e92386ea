"""Turn a magnet link into a full torrent by asking peers (BEP 9, plus BEP 52 hashes).

A short-lived connection per peer: handshake, extension handshake, ``ut_metadata``
requests for every 16 KiB piece of the info dict, checked against the magnet's info hash.
For v2 torrents the piece layers of files larger than one piece are then requested with
BEP 52 ``hash request`` messages and checked against each file's pieces root, so the
download can verify every piece. Up to ``max_peers_at_once`` peers are tried
concurrently and the first complete, verified answer wins. A peer that makes no progress
(no handshake, no metadata piece, no hashes) for ``peer_timeout`` seconds is dropped and
the next candidate is tried, and the whole fetch honours the caller's ``timeout`` (the
command's ``--timeout``): a silent peer once made ``--timeout 10`` wait 60 s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time

from swarmhub.bencode import bencode
from swarmhub.engine.mse_transport import open_stream
from swarmhub.errors import MetainfoError, RemoteProtocolError, SwarmhubError
from swarmhub.metainfo import Magnet, load_torrent
from swarmhub.metainfo.merkle import next_pow2, root_from_layer
from swarmhub.metainfo.model import BLOCK_SIZE, Metainfo
from swarmhub.wire import messages as m
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection
from swarmhub.wire.extensions import (
    METADATA_PIECE_SIZE,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    decode_ext_handshake,
    decode_metadata_message,
    encode_ext_handshake,
    encode_metadata_message,
)

__all__ = ["fetch_metadata"]

log = logging.getLogger(__name__)

_OUR_UT_METADATA = 3
MAX_METADATA = 64 << 20
HASHES_PER_REQUEST = 512


class _Exchange:
    """One peer connection that only talks about metadata and hashes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer_id: bytes, peer_timeout: float = 10.0) -> None:
        self.reader = reader
        self.writer = writer
        self.peer_id = peer_id
        self.conn = PeerConnection(our_reserved=m.make_reserved(extension=True, fast=True))
        self.peer_timeout = peer_timeout
        self._deadline = time.monotonic() + peer_timeout

    def progress(self) -> None:
        """The peer sent something useful: give it another ``peer_timeout`` seconds."""
        self._deadline = time.monotonic() + self.peer_timeout

    async def next(self) -> m.Message:
        """The next message; TimeoutError when the peer made no progress for too long
        (keep-alives and chatter do not count)."""
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no progress for {self.peer_timeout:g} s")
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), left)
                except TimeoutError:
                    raise TimeoutError(f"no progress for {self.peer_timeout:g} s") from None
                self.conn.receive_data(data)
                continue
            if ev is CLOSED:
                raise RemoteProtocolError("peer closed the connection")
            return ev  # type: ignore[return-value]

    def send(self, msg: m.Message) -> None:
        self.writer.write(self.conn.send(msg))

    async def run(self, magnet: Magnet) -> Metainfo:
        self.send(m.Handshake(self.conn.our_reserved, magnet.info_hash, self.peer_id))
        hs = await self.next()
        if not isinstance(hs, m.Handshake) or hs.info_hash != magnet.info_hash:
            raise RemoteProtocolError("peer answered for another torrent")
        if not self.conn.extension:
            raise RemoteProtocolError("peer does not support the extension protocol")
        self.progress()
        self.send(m.Extended(0, encode_ext_handshake(m={"ut_metadata": _OUR_UT_METADATA},
                                                     v="swarmhub/0.1")))
        their_id, size = 0, 0
        while not (their_id and size):
            ev = await self.next()
            if isinstance(ev, m.Extended) and ev.ext_id == 0:
                ext = decode_ext_handshake(ev.payload)
                their_id = ext.m.get("ut_metadata", 0)
                size = ext.metadata_size or 0
                if not their_id or not 0 < size <= MAX_METADATA:
                    raise RemoteProtocolError("peer cannot send metadata")
                self.progress()
        count = -(-size // METADATA_PIECE_SIZE)
        for piece in range(count):
            self.send(m.Extended(their_id, encode_metadata_message(MetadataRequest(piece))))
        pieces: dict[int, bytes] = {}
        while len(pieces) < count:
            ev = await self.next()
            if not (isinstance(ev, m.Extended) and ev.ext_id == _OUR_UT_METADATA):
                continue
            msg = decode_metadata_message(ev.payload)
            if isinstance(msg, MetadataReject):
                raise RemoteProtocolError(f"peer rejected metadata piece {msg.piece}")
            if isinstance(msg, MetadataData) and 0 <= msg.piece < count:
                if msg.piece not in pieces:
                    self.progress()
                pieces[msg.piece] = msg.data
        info = b"".join(pieces[i] for i in range(count))[:size]
        if magnet.info_hash_v1 and hashlib.sha1(info).digest() != magnet.info_hash_v1:
            raise RemoteProtocolError("metadata does not match the magnet's btih hash")
        if magnet.info_hash_v2 and hashlib.sha256(info).digest() != magnet.info_hash_v2:
            raise RemoteProtocolError("metadata does not match the magnet's btmh hash")
        outer: dict[bytes, object] = {b"info": _raw(info)}
        if magnet.trackers:
            outer[b"announce-list"] = [[t.encode()] for t in magnet.trackers]
        if magnet.web_seeds:
            outer[b"url-list"] = [u.encode() for u in magnet.web_seeds]
        meta = load_torrent(bencode(outer), require_piece_layers=False)
        if meta.info_hash_v2 is not None and meta.info_hash_v1 is None:
            layers = await self._piece_layers(meta)
            outer[b"piece layers"] = layers
            meta = load_torrent(bencode(outer))
        return meta

    async def _piece_layers(self, meta: Metainfo) -> dict[bytes, bytes]:
        """BEP 52: ask for the piece layer of every file larger than one piece."""
        base = (meta.piece_length // BLOCK_SIZE).bit_length() - 1
        wanted: dict[tuple[bytes, int], int] = {}
        layers: dict[bytes, list[bytes]] = {}
        for f in meta.files:
            if f.pad or f.pieces_root is None or f.length <= meta.piece_length:
                continue
            n = -(-f.length // meta.piece_length)
            layers[f.pieces_root] = [b""] * n
            # The piece layer is the block tree's leaves (padded to a power of two) seen
            # `base` levels up; ask for proofs up to just below the root, as libtorrent does.
            width = next_pow2(-(-f.length // BLOCK_SIZE)) >> base
            proof_layers = max(0, width.bit_length() - 2)
            for index in range(0, n, HASHES_PER_REQUEST):
                length = min(HASHES_PER_REQUEST, next_pow2(n - index))
                wanted[(f.pieces_root, index)] = length
                self.send(m.HashRequest(f.pieces_root, base, index, length, proof_layers))
        while wanted:
            ev = await self.next()
            if isinstance(ev, m.HashReject):
                raise RemoteProtocolError("peer rejected a hash request")
            if not isinstance(ev, m.Hashes) or (ev.pieces_root, ev.index) not in wanted:
                continue
            del wanted[(ev.pieces_root, ev.index)]
            self.progress()
            got = [ev.hashes[i:i + 32] for i in range(0, ev.length * 32, 32)]
            layer = layers[ev.pieces_root]
            for i, h in enumerate(got):
                if ev.index + i < len(layer):
                    layer[ev.index + i] = h
        out: dict[bytes, bytes] = {}
        for f in meta.files:
            if f.pieces_root in layers:
                hashes = layers[f.pieces_root]
                if root_from_layer(hashes, meta.piece_length, f.length) != f.pieces_root:
                    raise RemoteProtocolError("peer sent piece layer hashes that do not match")
                out[f.pieces_root] = b"".join(hashes)
        return out


def _raw(info: bytes) -> object:
    from swarmhub.bencode import bdecode

    return bdecode(info)


async def fetch_metadata(magnet: Magnet, peers: list[tuple[str, int]], peer_id: bytes, *,
                         timeout: float | None = 60.0, peer_timeout: float = 10.0,
                         max_peers_at_once: int = 8, encryption: str = "off",
                         stated_timeout: float | None = None) -> Metainfo:
    """Ask ``peers`` for the torrent behind ``magnet``; the first verified answer wins.

    At most ``max_peers_at_once`` peers are asked at a time; one that fails, or makes no
    progress for ``peer_timeout`` seconds, makes room for the next. ``timeout`` (None:
    none) bounds the whole fetch. ``encryption`` is the session's MSE mode (see
    :func:`~swarmhub.engine.mse_transport.open_stream`). Raises :class:`MetainfoError`
    listing why each peer failed; an expired ``timeout`` is named as ``stated_timeout``
    when given (the user's --timeout, of which ``timeout`` is only what was left).
    """
    if not peers:
        raise MetainfoError("a magnet link needs peers: give --peer HOST:PORT or --tracker URL "
                            "(the link has no x.pe peers)")
    errors: list[str] = []

    async def one(addr: tuple[str, int]) -> Metainfo:
        writer = None
        try:
            reader, writer = await open_stream(addr, magnet.info_hash, encryption, peer_timeout)
            return await _Exchange(reader, writer, peer_id, peer_timeout).run(magnet)
        except (OSError, TimeoutError, SwarmhubError) as exc:
            errors.append(f"{addr[0]}:{addr[1]}: {exc or type(exc).__name__}")
            raise
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    waiting = collections.deque(peers)
    running: dict[asyncio.Task[Metainfo], tuple[str, int]] = {}
    try:
        async with asyncio.timeout(timeout):
            while waiting or running:
                while waiting and len(running) < max(1, max_peers_at_once):
                    addr = waiting.popleft()
                    running[asyncio.ensure_future(one(addr))] = addr
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    del running[task]
                    if not task.cancelled() and task.exception() is None:
                        return task.result()
    except TimeoutError:
        busy = ", ".join(f"{h}:{p}" for h, p in running.values())
        said = stated_timeout if stated_timeout is not None else timeout
        secs = f"{said:.0f}" if said is not None and said >= 1 else f"{said:.1g}"
        errors.append(f"no answer within {secs} s"
                      + (f" (still waiting for {busy})" if busy else ""))
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    raise MetainfoError("could not get the torrent's metadata from any peer: "
                        + "; ".join(errors))
