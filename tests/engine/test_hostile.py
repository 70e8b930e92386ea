"""Section 5 of the engine-core issue: scripted hostile peers against real sessions.

Each scripted peer speaks the wire protocol through our sans-IO :class:`PeerConnection`
over a loopback socket, and misbehaves in one way: lying about blocks and flooding
unrequested ones, idling forever at the connection cap, or never unchoking.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from hostile import poll
from test_transfer import make_data

from swarmhub.engine.session import Session
from swarmhub.errors import RemoteProtocolError
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection

Script = Callable[["Scripted"], Awaitable[None]]


class Scripted:
    """One scripted connection: send messages, read the next ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 meta: Metainfo) -> None:
        self.reader, self.writer, self.meta = reader, writer, meta
        self.conn = PeerConnection(our_reserved=m.make_reserved(extension=False, fast=True))
        self.conn.set_num_pieces(meta.num_pieces)
        self.peer_id = os.urandom(20)

    def send(self, *msgs: m.Message) -> None:
        for msg in msgs:
            self.writer.write(self.conn.send(msg))

    async def handshake(self) -> None:
        self.send(m.Handshake(self.conn.our_reserved, self.meta.info_hash, self.peer_id))
        await self.writer.drain()
        while await self.next() is None:
            pass

    async def next(self, timeout: float = 30.0) -> m.Message | None:
        """The next message (None: the handshake), raising EOFError when closed."""
        while True:
            ev = self.conn.next_event()
            if ev is CLOSED:
                raise EOFError
            if ev is not NEED_DATA:
                return None if isinstance(ev, m.Handshake) else ev  # type: ignore[return-value]
            data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            self.conn.receive_data(data)


@contextlib.asynccontextmanager
async def scripted_server(meta: Metainfo, script: Script) -> AsyncIterator[int]:
    """A listening scripted peer; yields its port."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Scripted(reader, writer, meta)
        # RemoteProtocolError: our dialer's encrypted handshake first (prefer mode); a
        # plaintext-only peer hangs up and the dialer retries in plaintext.
        with contextlib.suppress(EOFError, ConnectionError, TimeoutError, OSError,
                                 RemoteProtocolError):
            await script(peer)
        writer.close()

    def start(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(handle(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(start, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def liar_and_flooder(peer: Scripted) -> None:
    """Claims every piece, answers each request with garbage and sends unrequested
    garbage blocks besides."""
    await peer.handshake()
    peer.send(m.HaveAll(), m.Unchoke())
    junk = os.urandom(16384)
    flood = 0
    while True:
        msg = await peer.next()
        if isinstance(msg, m.Request):
            peer.send(m.Piece(msg.index, msg.begin, junk[:msg.length]))
            index = flood % peer.meta.num_pieces
            size = min(16384, peer.meta.piece_size(index))
            peer.send(m.Piece(index, 0, junk[:size]))  # unrequested
            flood += 7
            await peer.writer.drain()


async def test_a_banned_liars_blocks_never_get_the_honest_seeder_banned(tmp_path: Path) -> None:
    # Large pieces and two sources serving at once: most pieces mix both senders' blocks.
    src = make_data(tmp_path / "src" / "payload", [6_000_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=256 * 1024)
    plain = Settings(super_seeding=False)
    async with scripted_server(meta, liar_and_flooder) as liar_port, \
            Session(plain, state_dir=tmp_path / "sa") as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        await seeder.add(meta, src.parent)
        t = await leecher.add(meta, tmp_path / "dl",
                              peers=[("127.0.0.1", liar_port), ("127.0.0.1", port)])
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.error is None and t.hash_failures >= 1
        assert ("127.0.0.1", seeder.peer_id) not in t.banned
        assert len(t.banned) == 1
    got = tmp_path / "dl" / meta.name / "file0.bin"
    assert got.read_bytes() == (src / "file0.bin").read_bytes()


async def idler(peer: Scripted, keepalive: asyncio.Event) -> None:
    """Connects, says it has nothing, and sends a keep-alive each time ``keepalive`` is
    set (the test sets it once the seeder's clock has passed the idle limit); the
    handshakes are done."""
    peer.send(m.HaveNone())
    await peer.writer.drain()
    while True:
        await keepalive.wait()
        keepalive.clear()
        peer.send(m.KeepAlive())
        await peer.writer.drain()


async def test_idle_peers_at_the_cap_make_room_for_a_real_leecher(tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [300_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    # The seeder's clock is stepped past peer_idle_evict instead of waited out: the
    # leecher's 30 s wait below cannot reach the 60 s limit in real time.
    # Plain seeding: super-seeding would hand out a piece at a time on its own clock rules.
    capped = Settings(max_connections_per_torrent=3, peer_idle_evict=60.0, super_seeding=False)
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    async with Session(capped, state_dir=tmp_path / "sa") as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, src.parent, clock=clock)
        idlers = []
        kicks = [asyncio.Event() for _ in range(3)]
        for kick in kicks:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            peer = Scripted(reader, writer, meta)
            await peer.handshake()
            idlers.append(asyncio.ensure_future(idler(peer, kick)))
        await poll(lambda: len(st.peers) == 3, 30, "the three idlers are connected")
        offset += st.settings.peer_idle_evict + 1  # idle long enough to be evicted
        stepped = clock()
        # Keep-alives after the step: received, yet the peers stay evictable.
        for kick in kicks:
            kick.set()
        await poll(lambda: all(ps.last_recv >= stepped for ps in st.swarm.peers.values()),
                   30, "each idler's keep-alive after the step was read")
        assert len(st.peers) == 3
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        try:
            await asyncio.wait_for(t.complete.wait(), 30)
        finally:
            for task in idlers:
                task.cancel()
            await asyncio.gather(*idlers, return_exceptions=True)
        assert t.error is None


async def never_unchokes(peer: Scripted) -> None:
    await peer.handshake()
    peer.send(m.HaveAll())
    while True:
        await peer.next()


async def test_a_download_nobody_unchokes_says_so(tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [100_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=32 * 1024)
    async with scripted_server(meta, never_unchokes) as port, \
            Session(state_dir=tmp_path / "s") as leecher:
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        await poll(lambda: bool(t.peers), 30, "the leecher is connected")
        status = t.status()
        assert status.stalled is not None and "none ever unchoked us" in status.stalled
