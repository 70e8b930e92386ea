"""A hybrid torrent is verified by v2 with SHA-1 only on a sample; a piece outside the
sample whose SHA-1 is wrong (an inconsistent torrent) must not reach a peer that checks
SHA-1: its first upload to a v1 connection checks it and stops the torrent."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

from hostile import poll
from test_hostile import Scripted, scripted_server
from test_transfer import make_data

from swarmhub.engine.session import Session
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.wire import messages as m

PIECE = 32 * 1024


def _inconsistent(src: Path) -> Metainfo:
    """A 4-piece hybrid torrent whose SHA-1 of piece 1 (outside the sample: 0 and the
    last) describes other data; its v2 hashes are right."""
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=PIECE)
    assert meta.num_pieces == 4 and meta.pieces_v1 is not None
    v1 = meta.pieces_v1
    return dataclasses.replace(meta, pieces_v1=v1[:20] + bytes(20) + v1[40:])


async def _connect(port: int, meta: Metainfo, info_hash: bytes) -> Scripted:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = Scripted(reader, writer, meta)
    peer.send(m.Handshake(peer.conn.our_reserved, info_hash, peer.peer_id))
    while await peer.next() is None:
        pass
    peer.send(m.Interested())
    while not isinstance(await peer.next(), m.Unchoke):
        pass
    return peer


async def _piece(peer: Scripted, index: int) -> m.Message:
    """Ask for the first block of piece ``index``; the answer (EOFError: hung up)."""
    peer.send(m.Request(index, 0, 16384))
    while True:
        msg = await peer.next()
        if isinstance(msg, m.Piece | m.RejectRequest):
            return msg


def _honest(data: bytes, go: asyncio.Event | None = None) -> Callable[[Scripted],
                                                                     Awaitable[None]]:
    """A seed that serves ``data`` (once ``go`` is set)."""
    async def honest(peer: Scripted) -> None:
        await peer.handshake()
        if go is not None:
            await go.wait()
        peer.send(m.HaveAll(), m.Unchoke())
        while True:
            msg = await peer.next()
            if isinstance(msg, m.Request):
                start = msg.index * PIECE + msg.begin
                peer.send(m.Piece(msg.index, msg.begin, data[start:start + msg.length]))
    return honest


async def test_a_v1_peer_never_gets_a_piece_whose_sha1_is_wrong(tmp_path: Path) -> None:
    """Downloaded while no v1 peer wanted it: checked before its first upload to one."""
    src = make_data(tmp_path / "src" / "payload", [4 * PIECE])
    meta = _inconsistent(src)
    data = (src / "file0.bin").read_bytes()
    async with scripted_server(meta, _honest(data)) as seed_port, \
            Session(Settings(super_seeding=False), state_dir=tmp_path / "s") as session:
        port = await session.listen("127.0.0.1", 0)
        t = await session.add(meta, tmp_path / "dl", peers=[("127.0.0.1", seed_port)])
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.error is None  # v2 decided every piece: piece 1's SHA-1 went unchecked
        assert meta.info_hash_v2 is not None
        v2_peer = await _connect(port, meta, meta.info_hash_v2[:20])
        got = await _piece(v2_peer, 1)  # it checks SHA-256: served without a SHA-1 check
        assert isinstance(got, m.Piece) and got.data == data[PIECE:PIECE + 16384]
        assert t.error is None
        v1_peer = await _connect(port, meta, meta.info_hash)
        got = await _piece(v1_peer, 2)  # consistent: checked once, then served
        assert isinstance(got, m.Piece) and got.data == data[2 * PIECE:2 * PIECE + 16384]
        try:
            got = await _piece(v1_peer, 1)
        except EOFError:
            pass
        else:
            raise AssertionError(f"piece 1 reached a v1 peer: {type(got).__name__}")
        await poll(lambda: t.error is not None, 30, "the torrent stopped")
        assert t.error is not None and "inconsistent torrent: piece 1" in t.error


async def test_a_piece_a_v1_peer_waits_for_has_its_sha1_checked_when_verified(
        tmp_path: Path) -> None:
    """A v1 peer interested in us while we download: the pieces it lacks get their SHA-1
    checked in the verification itself (no hop of their own at the upload), and the
    inconsistent piece stops the torrent before anyone asked for it."""
    src = make_data(tmp_path / "src" / "payload", [4 * PIECE])
    meta = _inconsistent(src)
    data = (src / "file0.bin").read_bytes()
    go = asyncio.Event()
    async with scripted_server(meta, _honest(data, go)) as seed_port, \
            Session(Settings(super_seeding=False), state_dir=tmp_path / "s") as session:
        port = await session.listen("127.0.0.1", 0)
        t = await session.add(meta, tmp_path / "dl", peers=[("127.0.0.1", seed_port)])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        v1_peer = Scripted(reader, writer, meta)
        await v1_peer.handshake()
        v1_peer.send(m.HaveNone(), m.Interested())
        await poll(lambda: sum(ps.peer_interested for ps in t.swarm.peers.values()) == 1,
                   30, "the v1 peer is interested in us")
        go.set()  # now the seed serves
        await poll(lambda: t.error is not None, 30, "the torrent stopped")
        assert "inconsistent torrent: piece 1" in (t.error or "")
        assert not t.uploads._v1_checks  # found by the verification, not at an upload
