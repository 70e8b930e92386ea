"""Whole transfers between our own sessions in one process, over real loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import until
from swarmhub.engine.session import Session
from swarmhub.engine.swarm import Swarm
from swarmhub.engine.torrent import TorrentState
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings

VERSIONS = [TorrentVersion.V1, TorrentVersion.V2, TorrentVersion.HYBRID]


def make_data(root: Path, sizes: list[int], seed: int = 1) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (root / f"file{i}.bin").write_bytes(rng.randbytes(size))
    return root


def same_tree(meta: Metainfo, a: Path, b: Path) -> None:
    for f in meta.data_files:
        pa = a.joinpath(*f.path)
        pb = b.joinpath(*f.path)
        assert pa.read_bytes() == pb.read_bytes(), "/".join(f.path)


async def transfer(meta: Metainfo, src_parent: Path, dest: Path, tmp: Path,
                   settings: Settings | None = None) -> Session:
    async with Session(settings, state_dir=tmp / "sa") as seeder, \
            Session(settings, state_dir=tmp / "sb") as leecher:
        port = await seeder.listen("127.0.0.1", 0)
        st = await seeder.add(meta, src_parent)
        assert st.state is TorrentState.SEEDING
        await leecher.listen("127.0.0.1", 0)
        t = await leecher.add(meta, dest, peers=[("127.0.0.1", port)])
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.error is None
        assert t.state is TorrentState.SEEDING
        assert st.uploaded >= meta.data_length
    return leecher


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.value)
@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
async def test_ours_to_ours(tmp_path: Path, version: TorrentVersion, multi: bool) -> None:
    sizes = [300_000, 0, 1_000_003, 65_536] if multi else [2_500_001]
    src = make_data(tmp_path / "src" / "payload", sizes)
    target = src if multi else src / "file0.bin"
    meta = create_torrent(target, version=version, piece_length=64 * 1024)
    await transfer(meta, target.parent, tmp_path / "dl", tmp_path)
    if multi:
        same_tree(meta, src.parent / meta.name, tmp_path / "dl" / meta.name)
    else:
        assert (tmp_path / "dl" / meta.name).read_bytes() == target.read_bytes()


async def test_corrupt_peer_is_banned_and_download_completes(tmp_path: Path) -> None:
    src = make_data(tmp_path / "good" / "payload", [3_000_000, 500_000])
    meta = create_torrent(src, version=TorrentVersion.HYBRID, piece_length=32 * 1024)
    # A second copy whose first file is garbage from 100 KB on; its owner seeds it without
    # checking (seed_mode), so it sends blocks that fail the hash check.
    bad_root = tmp_path / "bad" / "payload"
    make_data(bad_root, [3_000_000, 500_000])
    with open(bad_root / "file0.bin", "r+b") as f:
        f.seek(100_000)
        f.write(os.urandom(2_000_000))
    async with Session(state_dir=tmp_path / "s1") as good, \
            Session(state_dir=tmp_path / "s2") as bad, \
            Session(state_dir=tmp_path / "s3") as leecher:
        gp = await good.listen("127.0.0.1", 0)
        bp = await bad.listen("127.0.0.1", 0)
        await good.add(meta, src.parent)
        await bad.add(meta, bad_root.parent, seed_mode=True)
        await leecher.listen("127.0.0.1", 0)
        t = await leecher.add(meta, tmp_path / "dl",
                              peers=[("127.0.0.1", bp), ("127.0.0.1", gp)])
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.error is None
        assert t.hash_failures >= 1
        assert ("127.0.0.1", bad.peer_id) in t.banned
        assert ("127.0.0.1", good.peer_id) not in t.banned
    same_tree(meta, src, tmp_path / "dl" / meta.name)


async def test_restart_keeps_verified_pieces(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    src = make_data(tmp_path / "src" / "payload", [4_000_000])
    meta = create_torrent(src, version=TorrentVersion.V1, piece_length=64 * 1024)
    slow = Settings().replace(download_rate_limit=2_000_000)
    async with Session(state_dir=tmp_path / "sa") as seeder:
        port = await seeder.listen("127.0.0.1", 0)
        await seeder.add(meta, src.parent)
        async with Session(slow, state_dir=tmp_path / "sb") as leecher:
            t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
            # The restart triggers on pieces held (half), not after some polling time.
            half = asyncio.Event()
            real_verified = Swarm.piece_verified

            def verified(swarm: Swarm, *args: Any, **kwargs: Any) -> None:
                real_verified(swarm, *args, **kwargs)
                if swarm is t.swarm and t.num_have >= meta.num_pieces // 2:
                    half.set()

            # on the class: a mypyc-compiled Swarm (`make setup`) has no per-instance methods
            monkeypatch.setattr(Swarm, "piece_verified", verified)
            await asyncio.wait_for(half.wait(), 60)
            first = t.num_have
            assert 0 < first < meta.num_pieces
        async with Session(state_dir=tmp_path / "sb") as leecher:
            t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
            assert t.num_have >= first
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.downloaded <= meta.total_length - first * meta.piece_length + \
                64 * meta.piece_length
    same_tree(meta, src, tmp_path / "dl" / meta.name)


async def serve_folder(root: Path) -> tuple[object, str]:
    from aiohttp import web

    from swarmhub.hub.origin import make_static_app

    runner = web.AppRunner(make_static_app(root))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: v.value)
async def test_web_seed_alone_completes_a_download(tmp_path: Path,
                                                   version: TorrentVersion) -> None:
    src = make_data(tmp_path / "www" / "payload", [1_500_000, 0, 700_001])
    runner, base = await serve_folder(tmp_path / "www")
    try:
        meta = create_torrent(src, version=version, piece_length=64 * 1024, url_list=[base])
        fast = Settings().replace(web_seed_grace=0.0)
        async with Session(fast, state_dir=tmp_path / "s") as leecher:
            t = await leecher.add(meta, tmp_path / "dl")
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.error is None
            assert t.webseed_bytes >= meta.data_length
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    same_tree(meta, src, tmp_path / "dl" / meta.name)


async def test_peers_come_first_and_the_web_seed_fills_what_the_swarm_lacks(
        tmp_path: Path) -> None:
    """The web seed's grace is passed by stepping the leecher's clock once the partial seed
    has delivered a block (so its bitfield is known), not waited out in real time."""
    src = make_data(tmp_path / "www" / "payload", [3_000_000])
    runner, base = await serve_folder(tmp_path / "www")
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    try:
        meta = create_torrent(src / "file0.bin", version=TorrentVersion.V1,
                              piece_length=64 * 1024, url_list=[base + "payload/file0.bin"])
        # A partial seed holding the first half only: the web seed must supply the rest,
        # and the half the peer has must come from the peer.
        half = meta.num_pieces // 2
        part = tmp_path / "partial"
        part.mkdir()
        data = (src / "file0.bin").read_bytes()
        (part / meta.name).write_bytes(data[:half * meta.piece_length])
        async with Session(state_dir=tmp_path / "s1") as partial, \
                Session(Settings().replace(web_seed_grace=3600.0),
                        state_dir=tmp_path / "s2") as leecher:
            port = await partial.listen("127.0.0.1", 0)
            p = await partial.add(meta, part)
            assert p.num_have == half
            await leecher.listen("127.0.0.1", 0)
            t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)],
                                  clock=clock)
            await until(lambda: t.downloaded > 0, "the partial seed delivered a block")
            assert t.webseed_bytes == 0  # peers first, during the grace
            offset += 3600.0 + 1
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.error is None
            peer_bytes = t.downloaded - t.webseed_bytes
            assert peer_bytes >= half * meta.piece_length * 0.9
            assert t.webseed_bytes <= (meta.num_pieces - half + 2) * meta.piece_length
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    assert (tmp_path / "dl" / meta.name).read_bytes() == data


async def test_a_web_seed_faster_than_the_only_peer_takes_over(tmp_path: Path) -> None:
    """The only peer is a seed capped at 100 kB/s, counted by the tracker (like a hub's own
    peer): once the web seed's grace is over it is found faster and takes any missing
    piece, not just those the swarm lacks (it used to sit unused while the peer trickled:
    0 bytes from the web seed, the 3 MB over 30 s from the peer).

    The grace is passed by stepping the leecher's clock once the peer has delivered a
    piece, not waited out: on a loaded machine the peer could miss a real 2 s window."""
    src = make_data(tmp_path / "www" / "payload", [3_000_000])
    runner, base = await serve_folder(tmp_path / "www")
    offset = 0.0

    def clock() -> float:
        return time.monotonic() + offset

    try:
        meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                              piece_length=64 * 1024, url_list=[base + "payload/file0.bin"])
        slow = Settings(upload_rate_limit=100_000)
        grace = 3600.0
        async with Session(slow, state_dir=tmp_path / "s1") as seed, \
                Session(Settings().replace(web_seed_grace=grace,
                                           web_seed_request_size=256 * 1024),
                        state_dir=tmp_path / "s2") as leecher:
            port = await seed.listen("127.0.0.1", 0)
            await seed.add(meta, src)
            t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)],
                                  clock=clock)
            t.swarm.tracker_seeds = 1  # as a hub's tracker would count its own peer
            await until(lambda: t.downloaded > 0, "the peer delivered a piece")
            assert t.webseed_bytes == 0  # peers first, during the grace
            offset += grace + 1
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.error is None
            assert t.downloaded - t.webseed_bytes > 0
            assert t.webseed_bytes >= meta.data_length // 2
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    assert (tmp_path / "dl" / meta.name).read_bytes() == (src / "file0.bin").read_bytes()


async def test_a_bad_piece_in_a_web_seed_run_costs_that_piece_only(tmp_path: Path) -> None:
    """The web seed's copy has one corrupt piece in the middle of a run (pieces are hashed
    and written a run at a time): the good pieces around it are kept, only the bad one is
    struck (three strikes disable the web seed), and a slow honest seed supplies it."""
    src = make_data(tmp_path / "src", [3_000_000])
    meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                          piece_length=64 * 1024)
    pl, bad = meta.piece_length, 20
    data = bytearray((src / "file0.bin").read_bytes())
    data[bad * pl + 100] ^= 0xFF
    make_data(tmp_path / "www" / "payload", [])
    (tmp_path / "www" / "payload" / "file0.bin").write_bytes(data)
    runner, base = await serve_folder(tmp_path / "www")
    try:
        meta = dataclasses.replace(meta, url_list=(base + "payload/file0.bin",))
        slow, fast = Settings(upload_rate_limit=50_000), Settings().replace(web_seed_grace=0.0)
        async with Session(slow, state_dir=tmp_path / "s1") as seed, \
                Session(fast, state_dir=tmp_path / "s2") as leecher:
            port = await seed.listen("127.0.0.1", 0)
            await seed.add(meta, src)
            t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
            t.swarm.tracker_seeds = 1  # alone with a seed: the web seed may take anything
            await asyncio.wait_for(t.complete.wait(), 60)
            assert t.error is None and t.hash_failures >= 1
            # the peer trickles at 50 kB/s: the web seed brought all but a few pieces, so
            # the good pieces of the corrupt one's run were not thrown away with it
            assert t.webseed_bytes >= meta.data_length - 6 * pl
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    assert (tmp_path / "dl" / meta.name).read_bytes() == (src / "file0.bin").read_bytes()


async def test_a_dead_web_seed_holds_no_pieces_from_the_peers(tmp_path: Path) -> None:
    """The hub dies (kill-hub in the lab): its web seed's batches fail and back off, and
    the pieces they had reserved must go back to the peers at once, not after the pause
    (the late joiners of the lab stalled at 124 of 128 pieces)."""
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    src = make_data(tmp_path / "src", [3_000_000])
    meta = create_torrent(src / "file0.bin", version=TorrentVersion.HYBRID,
                          piece_length=64 * 1024,
                          url_list=[f"http://127.0.0.1:{dead}/payload/file0.bin"])
    async with Session(Settings(upload_rate_limit=1_000_000), state_dir=tmp_path / "s1") as seed, \
            Session(Settings().replace(web_seed_grace=0.1), state_dir=tmp_path / "s2") as leecher:
        port = await seed.listen("127.0.0.1", 0)
        await seed.add(meta, src)
        t = await leecher.add(meta, tmp_path / "dl", peers=[("127.0.0.1", port)])
        t.swarm.tracker_seeds = 1  # alone with a seed: the web seed may take anything
        await asyncio.wait_for(t.complete.wait(), 60)
        assert t.error is None and t.webseed_bytes == 0
    assert (tmp_path / "dl" / meta.name).read_bytes() == (src / "file0.bin").read_bytes()


# The tracker retry (a tracker that starts after us is found within 5 s) is tested on the
# swarm core with a stepped clock: tests/engine/test_swarm.py, no real sleeps.
