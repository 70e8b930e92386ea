"""The hub's embedded seeder on the DHT (``--dht``): public files are announced there, so a
magnet link finds the seeder with no tracker; private files never are (BEP 27).

A local DHT only: a bootstrap node on 127.0.0.1 in this process, and tests/conftest.py's
SWARMHUB_DHT_LOCAL_ONLY=1 drops anything else.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from test_api import live_hub
from test_app import publish
from typer.testing import CliRunner

from swarmhub.cli import app
from swarmhub.discovery.dht import Config, DhtNode


async def _peers_for(client: DhtNode, info_hash: bytes) -> set[tuple[str, int]]:
    done = await client.get_peers(info_hash, timeout=10.0)
    return set(done.peers)


async def test_public_files_are_announced_on_the_dht_and_private_ones_never(
        tmp_path: Path) -> None:
    cfg = Config(query_timeout=1.0)
    async with DhtNode("127.0.0.1", 0, config=cfg) as router:
        boot = f"127.0.0.1:{router.port}"
        async for live in live_hub(tmp_path, peer_listen=("127.0.0.1", 0), dht_bootstrap=boot,
                                   max_upload_size=1 << 20):
            async with live.http.post(f"{live.url}/api/collections",
                                      json={"name": "team", "private": True},
                                      headers=live.auth(live.admin)) as r:
                assert r.status == 201
            private = await publish(live, os.urandom(40_000), "secret.bin", collection="team")
            public = await publish(live, os.urandom(60_000), "open.bin")
            seeder = live.hub.seeder
            assert seeder is not None and seeder.dht is not None  # type: ignore[attr-defined]
            port = seeder.port  # type: ignore[attr-defined]
            async with DhtNode("127.0.0.2", 0, bootstrap=[router.addr], config=cfg) as client:
                await client.wait_bootstrapped(1, timeout=10.0)
                want = ("127.0.0.1", port)
                hashes = [bytes.fromhex(public[k]) for k in ("info_hash_v1",
                                                             "info_hash_v1_torrent")]
                deadline = asyncio.get_running_loop().time() + 30.0
                found: set[tuple[str, int]] = set()
                while want not in found:  # the seeder announces within its first seconds
                    assert asyncio.get_running_loop().time() < deadline, found
                    found = await _peers_for(client, hashes[0])
                    if want not in found:
                        await asyncio.sleep(0.2)
                # the v1-only torrent of the same file, and the hybrid's truncated v2 hash
                assert want in await _peers_for(client, hashes[1])
                assert want in await _peers_for(client, bytes.fromhex(public["info_hash_v2"])[:20])
                # the private file, already seeded when the public one went out: never
                for key in ("info_hash_v1", "info_hash_v1_torrent"):
                    assert await _peers_for(client, bytes.fromhex(private[key])) == set()
                core, now = router._core(), router.clock()
                assert want in core.store.get(hashes[0], now, core.rng)  # what it was told
                assert core.store.get(bytes.fromhex(private["info_hash_v1"]), now,
                                      core.rng) == []


def test_dht_needs_the_embedded_seeder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["hub", "--data", str(tmp_path / "hub"), "--listen",
                                      "127.0.0.1:0", "--peer-listen", "off", "--dht"])
    assert result.exit_code == 2, result.output
    assert "--peer-listen off" in result.output
