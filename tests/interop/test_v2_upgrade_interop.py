"""BEP 52 upgrade bit against libtorrent 2.x, both directions, in-process sessions.

What libtorrent does with the bit: on a torrent with a v2 info hash its handshake carries
the v1 hash with the bit set. Answering ours, the 2.1.1 wheel here echoes the v1 hash with
the bit (both bits: upgraded on our side); its current source (bt_peer_connection.cpp)
answers the truncated v2 hash without the bit and counts the connection as v2, the only
kind it serves hash requests on. We answer its bit that way too, and it downloads over
the upgraded connection. Either way our uploads to it need no SHA-1 check. On a v1
torrent nobody sets the bit.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from interop.harness import LtPeer, compare_trees, make_test_data
from swarmhub.engine.peer import Peer
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.wire import messages as m

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

PIECE = 64 * 1024


class _Seen:
    """(their info hash, their bit, our bit, v2 upgrade negotiated, a v1 peer to us?) of
    each connection as it opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ends: list[tuple[bytes, bool, bool, bool, bool]] = []
        connected = Torrent.on_peer_connected

        def seen(t: Torrent, peer: Peer) -> None:
            hs = peer.conn.their_handshake
            assert hs is not None
            self.ends.append((hs.info_hash, m.has_bit(hs.reserved, m.RESERVED_V2_UPGRADE),
                              m.has_bit(peer.conn.our_reserved, m.RESERVED_V2_UPGRADE),
                              peer.conn.v2_upgrade, t.uploads._speaks_v1(peer)))
            connected(t, peer)

        monkeypatch.setattr(Torrent, "on_peer_connected", seen)


def _torrent(work: Path, version: TorrentVersion) -> tuple[Metainfo, Path, Path]:
    data = make_test_data(work / "src", [1_500_007, 300_000], seed=21)
    meta = create_torrent(data, version=version, piece_length=PIECE)
    tfile = work / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    return meta, data, tfile


@pytest.mark.parametrize("version", [TorrentVersion.HYBRID, TorrentVersion.V1],
                         ids=lambda v: v.value)
async def test_we_dial_libtorrent(tmp_path: Path, version: TorrentVersion,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Our handshake on a hybrid torrent carries the bit; libtorrent answers it."""
    meta, data, tfile = _torrent(tmp_path, version)
    seen = _Seen(monkeypatch)
    lt = LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path, name="lt-seed")
    await asyncio.to_thread(lt.start)
    try:
        async with Session(state_dir=tmp_path / "s") as s:
            await s.listen("127.0.0.1", 0)
            t = await s.add(meta, tmp_path / "dl", peers=[("127.0.0.1", lt.port)])
            await asyncio.wait_for(t.complete.wait(), 120)
            assert t.error is None
    finally:
        await asyncio.to_thread(lt.stop)
    compare_trees(data, tmp_path / "dl" / data.name)
    assert seen.ends
    v2 = meta.info_hash_v2
    for info_hash, their_bit, our_bit, upgrade, speaks_v1 in seen.ends:
        if v2 is None:
            assert (info_hash, their_bit, our_bit, upgrade) == (meta.info_hash, False, False,
                                                                False)
        else:  # the v1 hash and the bit (2.1.1), or the v2 hash (libtorrent's source)
            assert our_bit
            assert (info_hash, their_bit, upgrade) in {(meta.info_hash, True, True),
                                                       (v2[:20], False, False)}
            assert not speaks_v1


@pytest.mark.parametrize("version", [TorrentVersion.HYBRID, TorrentVersion.V1],
                         ids=lambda v: v.value)
async def test_libtorrent_dials_us(tmp_path: Path, version: TorrentVersion,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """libtorrent's handshake on a hybrid torrent carries the bit on the v1 hash; we
    answer the v2 hash, and libtorrent downloads over that upgraded connection."""
    meta, data, tfile = _torrent(tmp_path, version)
    seen = _Seen(monkeypatch)
    async with Session(state_dir=tmp_path / "s") as s:
        port = await s.listen("127.0.0.1", 0)
        await s.add(meta, data.parent)
        lt = LtPeer(tfile, tmp_path / "dl", peers=[("127.0.0.1", port)], log_dir=tmp_path,
                    name="lt-leech")
        await asyncio.to_thread(lt.start)
        try:
            await asyncio.to_thread(lt.wait_finished, 120)
        finally:
            await asyncio.to_thread(lt.stop)
    compare_trees(data, tmp_path / "dl" / data.name)
    assert seen.ends
    v2 = meta.info_hash_v2 is not None
    for info_hash, their_bit, our_bit, upgrade, speaks_v1 in seen.ends:
        assert (info_hash, their_bit, our_bit, upgrade) == (meta.info_hash, v2, v2, v2)
        assert speaks_v1 is not v2
