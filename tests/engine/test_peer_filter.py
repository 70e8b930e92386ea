"""``Session(peer_filter=...)``: an embedder's admission rule, for incoming and outgoing peers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

from swarmhub.engine.session import Session
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import TorrentVersion


async def _until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a predicate (bounded): tests trigger on state, not on sleeps."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_filter_refuses_then_admits_incoming_and_outgoing(tmp_path: Path) -> None:
    src = tmp_path / "src" / "data.bin"
    src.parent.mkdir(parents=True)
    src.write_bytes(random.Random(7).randbytes(600_000))
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=32 * 1024)
    admitted: set[bytes] = set()
    asked: list[tuple[bytes, tuple[str, int], bytes, bool]] = []

    def admit(info_hash: bytes, addr: tuple[str, int], peer_id: bytes,
              outgoing: bool) -> str | None:
        asked.append((info_hash, addr, peer_id, outgoing))
        return None if peer_id in admitted else "not on the list"

    async with Session(state_dir=tmp_path / "sa", peer_filter=admit) as seeder, \
            Session(state_dir=tmp_path / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        seed = await seeder.add(meta, src.parent, seed_mode=True)
        lport = await leecher.listen("127.0.0.1", 0)
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        # Incoming: the leecher dials, the filter says no, nothing is transferred.
        await _until(lambda: any(pid == leecher.peer_id for _, _, pid, _ in asked))
        assert asked[0][0] == meta.info_hash and asked[0][1][0] == "127.0.0.1"
        assert asked[0][3] is False
        assert not seed.peers and t.num_have == 0
        # Outgoing: the seeder dials the leecher itself; refused the same way.
        asked.clear()
        seed.add_peers([("127.0.0.1", lport)])
        await _until(lambda: (("127.0.0.1", lport), True) in [(a, o) for _, a, _, o in asked])
        assert not seed.peers and t.num_have == 0
        admitted.add(leecher.peer_id)
        await asyncio.wait_for(t.complete.wait(), 60)
    assert (tmp_path / "dl" / "data.bin").read_bytes() == src.read_bytes()

