"""BEP 52 upgrade bit: our handshakes set it for torrents with a v2 info hash, so two
swarmhub peers on a hybrid torrent know each other checks SHA-256 and hash no SHA-1
beyond the verifier's sample; on a v1-only torrent the bit stays clear."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_transfer import make_data

from swarmhub.engine.peer import Peer
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent, TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings
from swarmhub.storage import verify
from swarmhub.wire import messages as m

PIECE = 16 * 1024
PIECES = 64


async def _swarm_of_three(tmp_path: Path, meta: Metainfo, src: Path,
                          monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A seed (upload limited, so the two leechers overlap and trade pieces) and two
    leechers that know each other, every connection checked for the bit; the piece
    indices whose SHA-1 was hashed after the seed checked its data."""
    hashed: list[int] = []
    sha1_ok = verify._sha1_ok

    def counting(pieces: bytes, index: int, view: Any, fed: Any = None) -> bool:
        hashed.append(index)
        return sha1_ok(pieces, index, view, fed)

    ends: list[tuple[bool, bool]] = []  # (our bit, negotiated) of each connection end
    connected = Torrent.on_peer_connected

    def seen(t: Torrent, peer: Peer) -> None:
        ends.append((m.has_bit(peer.conn.our_reserved, m.RESERVED_V2_UPGRADE),
                     peer.conn.v2_upgrade))
        connected(t, peer)

    monkeypatch.setattr(Torrent, "on_peer_connected", seen)

    quiet = Settings(super_seeding=False)
    async with Session(quiet.replace(upload_rate_limit=256 * 1024),
                       state_dir=tmp_path / "s0") as seeder, \
            Session(quiet, state_dir=tmp_path / "s1") as a, \
            Session(quiet, state_dir=tmp_path / "s2") as b:
        seed_port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, src)
        assert st.state is TorrentState.SEEDING
        monkeypatch.setattr(verify, "_sha1_ok", counting)
        a_port = await a.listen("127.0.0.1", 0)
        await b.listen("127.0.0.1", 0)
        ta = await a.add(meta, tmp_path / "a", peers=[("127.0.0.1", seed_port)])
        tb = await b.add(meta, tmp_path / "b",
                         peers=[("127.0.0.1", seed_port), ("127.0.0.1", a_port)])
        await asyncio.wait_for(asyncio.gather(ta.complete.wait(), tb.complete.wait()), 120)
        assert ta.error is None and tb.error is None
        assert ta.uploaded + tb.uploaded > 0  # the leechers traded pieces
    v2 = meta.info_hash_v2 is not None
    assert len(ends) >= 6  # seed-a, seed-b, a-b: each seen from both ends
    assert set(ends) == {(v2, v2)}
    return hashed


async def test_our_peers_on_a_hybrid_torrent_upgrade_and_hash_sha1_only_on_the_sample(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_data(tmp_path / "src", [PIECES * PIECE])
    meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID, piece_length=PIECE)
    hashed = await _swarm_of_three(tmp_path, meta, src, monkeypatch)
    sample = verify.PieceVerifier(meta)
    assert [i for i in hashed if not sample.v1_due(i)] == []
    assert len(hashed) <= 2 * sum(map(sample.v1_due, range(PIECES)))  # each leecher's own


async def test_our_peers_on_a_v1_torrent_leave_the_bit_clear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_data(tmp_path / "src", [PIECES * PIECE])
    meta = create_torrent(src / "file0.bin", version=TorrentVersion.V1, piece_length=PIECE)
    hashed = await _swarm_of_three(tmp_path, meta, src, monkeypatch)
    assert len(hashed) >= 2 * PIECES  # a v1 torrent: SHA-1 decides every piece
