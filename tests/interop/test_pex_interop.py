"""BEP 11 peer exchange between our sessions (in this process) and libtorrent, on loopback.

Both directions: libtorrent learns a peer from our PEX (we send the first message ~2 s
after the extension handshake), and we learn one from libtorrent's (its first message
came within seconds here; the test allows 100 s in case a build waits its full minute).
State-based: poll, bounded, until the peer nobody was told about is connected.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from interop.harness import LtPeer, make_test_data
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent
from swarmhub.metainfo import create_torrent, torrent_bytes
from swarmhub.settings import Settings

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

SLOW = Settings().replace(upload_rate_limit=50_000)  # nobody finishes before PEX matters


def _ids(t: Torrent) -> list[bytes]:
    return [p.remote_id for p in t.swarm.peers]  # type: ignore[attr-defined]


async def _until(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return False


async def test_libtorrent_learns_a_peer_from_our_pex(tmp_path: Path) -> None:
    """Our seeder S knows our peer B; libtorrent is told only S and ends up connected to B."""
    data = make_test_data(tmp_path / "src", [3_000_000], seed=11)
    meta = create_torrent(data, piece_length=64 * 1024)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    async with Session(SLOW, state_dir=tmp_path / "ss") as s, \
            Session(SLOW, state_dir=tmp_path / "sb") as b:
        bport = await b.listen("127.0.0.1", 0)
        bt = await b.add(meta, tmp_path / "b")
        sport = await s.listen("127.0.0.1", 0)
        st = await s.add(meta, data.parent, peers=[("127.0.0.1", bport)])
        lt = LtPeer(tfile, tmp_path / "lt", peers=[("127.0.0.1", sport)], log_dir=tmp_path,
                    name="lt-leech", download_limit=100_000)
        await asyncio.to_thread(lt.start)
        try:
            assert await _until(lambda: any(i.startswith(b"-LT") for i in _ids(st)), 20), \
                "libtorrent never connected to our seeder"
            assert await _until(lambda: any(i.startswith(b"-LT") for i in _ids(bt)), 30), \
                f"libtorrent did not reach B from our PEX; B's peers: {_ids(bt)}"
        finally:
            await asyncio.to_thread(lt.stop)


async def test_we_learn_a_peer_from_libtorrent_pex(tmp_path: Path) -> None:
    """libtorrent seeds and knows our peer B; our leecher L is told only libtorrent and
    ends up connected to B (nobody but libtorrent's PEX told either of them)."""
    data = make_test_data(tmp_path / "src", [3_000_000], seed=12)
    meta = create_torrent(data, piece_length=64 * 1024)
    tfile = tmp_path / "t.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    async with Session(SLOW, state_dir=tmp_path / "sb") as b, \
            Session(state_dir=tmp_path / "sl") as lee:
        bport = await b.listen("127.0.0.1", 0)
        await b.add(meta, tmp_path / "b")
        await lee.listen("127.0.0.1", 0)
        lt = LtPeer(tfile, data.parent, seed=True, peers=[("127.0.0.1", bport)],
                    log_dir=tmp_path, name="lt-seed", upload_limit=20_000)
        await asyncio.to_thread(lt.start)
        try:
            lt_t = await lee.add(meta, tmp_path / "l", peers=[("127.0.0.1", lt.port)])
            assert await _until(lambda: any(i.startswith(b"-LT") for i in _ids(lt_t)), 20)
            assert await _until(lambda: b.peer_id in _ids(lt_t), 100), \
                f"no PEX from libtorrent led us to B; our peers: {_ids(lt_t)}"
            # Either L dialled B or B dialled L: one of ours acted on libtorrent's PEX.
        finally:
            await asyncio.to_thread(lt.stop)
