"""Super-seeding in whole swarms of our own sessions over loopback.

A capped seed facing several leechers is the case super-seeding exists for: the seed's
upload is the bottleneck, so each piece should leave it about once. And a hub-like torrent
(tracker + web seed + a super-seeding seed) must not send every client to the web seed for
the pieces the seed has not shown yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from swarmhub.engine import swarm as swarm_module
from swarmhub.engine.session import Session
from swarmhub.engine.torrent import Torrent, TorrentState
from swarmhub.hub.origin import make_static_app
from swarmhub.hub.tracker import TrackerState, make_tracker_app
from swarmhub.metainfo import create_torrent
from swarmhub.metainfo.model import Metainfo, TorrentVersion
from swarmhub.settings import Settings

KIB = 1024
PIECE = 64 * KIB


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def payload(root: Path, size: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "payload.bin"
    path.write_bytes(random.Random(7).randbytes(size))
    return path


async def swarm(
    meta: Metainfo,
    data: Path,
    tmp: Path,
    *,
    leechers: int,
    seed_settings: Settings,
    trackers: list[list[str]] | None = None,
) -> tuple[Torrent, list[Torrent]]:
    """One seed and ``leechers`` leechers that all know each other; returns the torrents
    once every leecher is complete."""
    async with contextlib.AsyncExitStack() as stack:
        seeder = await stack.enter_async_context(Session(seed_settings, state_dir=tmp / "s0"))
        seed_port = await seeder.listen("127.0.0.1", 0)
        seed = await seeder.add(meta, data.parent, trackers=trackers)
        assert seed.state is TorrentState.SEEDING
        sessions = []
        ports = []
        for i in range(leechers):
            s = await stack.enter_async_context(Session(state_dir=tmp / f"s{i + 1}"))
            ports.append(await s.listen("127.0.0.1", 0))
            sessions.append(s)
        torrents = []
        for i, s in enumerate(sessions):
            peers = [("127.0.0.1", seed_port)] + [("127.0.0.1", p) for p in ports[:i]]
            torrents.append(
                await s.add(
                    meta, tmp / f"dl{i}", peers=None if trackers else peers, trackers=trackers
                )
            )
        await asyncio.wait_for(asyncio.gather(*(t.complete.wait() for t in torrents)), 90)
        for t in torrents:
            assert t.error is None and t.state is TorrentState.SEEDING
    return seed, torrents


@pytest.mark.timeout(120)
async def test_a_capped_super_seed_sends_each_piece_about_once(tmp_path: Path) -> None:
    data = payload(tmp_path / "src", 48 * PIECE)
    meta = create_torrent(data, version=TorrentVersion.V1, piece_length=PIECE)
    capped = Settings(upload_rate_limit=1024 * KIB, super_seeding=True)
    seed, leechers = await swarm(meta, data, tmp_path, leechers=4, seed_settings=capped)
    # Leechers are unlimited on loopback, the seed is not: the swarm spreads what the seed
    # sends. Every byte beyond F from the seed is a duplicate super-seeding should avoid.
    assert meta.data_length <= seed.uploaded <= 1.2 * meta.data_length, seed.uploaded
    assert sum(t.uploaded for t in leechers) >= 2 * meta.data_length
    for i in range(4):
        assert (tmp_path / f"dl{i}" / meta.name).read_bytes() == data.read_bytes()


@pytest.mark.timeout(120)
async def test_a_hidden_seed_keeps_clients_off_the_web_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rule under test is the hidden seed's (pieces no peer shows yet are not the web
    # seed's while the tracker counts a seed). The stall fallback is a clock rule (2 s
    # without a block): a loaded CI machine met it between the seed's offers and sent
    # a whole copy over HTTP, so it is pushed past the test's length here.
    monkeypatch.setattr(swarm_module, "_PEERS_STALLED", 60.0)
    monkeypatch.setattr(swarm_module, "_PEERS_STARVED", 60.0)
    data = payload(tmp_path / "www", 32 * PIECE)
    state = TrackerState(interval=10, min_interval=1)
    # The web server is another host than the seed (127.0.0.2): one on the seed's own
    # address would be its origin, whose peer a lone client rightly leaves idle
    # (Swarm.webseed_origin) — the same uplink either way.
    async with (
        serve(make_static_app(data.parent), "127.0.0.2") as www,
        serve(make_tracker_app(state)) as tracker,
    ):
        meta = create_torrent(
            data, version=TorrentVersion.V1, piece_length=PIECE, url_list=[f"{www}/payload.bin"]
        )
        seed_settings = Settings(upload_rate_limit=512 * KIB, super_seeding=True)
        seed, leechers = await swarm(
            meta,
            data,
            tmp_path,
            leechers=3,
            seed_settings=seed_settings,
            trackers=[[f"{tracker}/announce"]],
        )
    # The seed shows each client only a few pieces at a time; the tracker counts it as a
    # seed, so the clients waited for it instead of fetching the rest over HTTP each.
    web_bytes = sum(t.webseed_bytes for t in leechers)
    assert web_bytes <= meta.data_length // 2, web_bytes
    assert seed.uploaded >= meta.data_length // 2
