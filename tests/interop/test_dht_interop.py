"""Magnet links with no tracker and no --peer: the Mainline DHT alone, on loopback.

Every node is local: a bootstrap node of ours (``dhtrouter.py``) on its own 127.0.6.x, our
``swarmhub`` processes and libtorrent sessions each on their own address, libtorrent with
``dht_restrict_routing_ips``/``dht_restrict_search_ips`` off (all nodes share 127/8) and
the bootstrap list pointing at our node only. Each test asserts its bootstrap list is
loopback before anything starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.harness import (
    VENV_PYTHON,
    LtPeer,
    Proc,
    compare_trees,
    lt_make_torrent,
    make_test_data,
)
from swarmhub.metainfo import create_torrent, load_torrent, make_magnet, torrent_bytes
from swarmhub.metainfo.model import TorrentVersion

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]

SWARMHUB = [str(VENV_PYTHON), "-m", "swarmhub"]
ROUTER = Path(__file__).parent.parent / "discovery" / "dht" / "dhtrouter.py"
PIECE = 64 * 1024


def _local(bootstrap: str) -> str:
    for part in bootstrap.split(","):
        assert ipaddress.ip_address(part.rsplit(":", 1)[0]).is_loopback, part
    return bootstrap


@pytest.fixture
def router(tmp_path: Path) -> Iterator[str]:
    """25 DHT nodes of ours, the first on 127.0.6.1; yields its ``host:port``."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    hosts = ["127.0.6.1"] + [f"127.0.6.{100 + i}" for i in range(24)]
    with Proc([str(VENV_PYTHON), "-u", str(ROUTER), *hosts], env=env, name="router",
              log=tmp_path / "router.log") as proc:
        line = proc.wait_for_line(lambda s: '"listening"' in s, 30)
        yield _local(f"127.0.6.1:{json.loads(line)['port']}")


def lt_dht(router: str, host: str) -> dict[str, int | bool | str]:
    """libtorrent's DHT on ``host``, joining through ``router`` only, announcing every 2 s."""
    return {"enable_dht": True, "dht_bootstrap_nodes": _local(router),
            "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
            "dht_ignore_dark_internet": False, "dht_enforce_node_id": False,
            "listen_interfaces": f"{host}:0", "outgoing_interfaces": host,
            "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "dht_announce_interval": 2}


def ours(args: list[str], tmp: Path, name: str) -> Proc:
    env = dict(os.environ, SWARMHUB_STATE_DIR=str(tmp / f"state-{name}"))
    return Proc([*SWARMHUB, *args], env=env, cwd=tmp, name=name, log=tmp / f"{name}.log")


@pytest.mark.parametrize("version", ["v1", "hybrid"])
def test_ours_seeds_and_ours_downloads_a_magnet_by_dht_only(
        tmp_path: Path, router: str, version: str) -> None:
    """`swarmhub seed ./dataset` prints a magnet link that works alone."""
    data = make_test_data(tmp_path / "src", [700_001, 65_536, 123], seed=21, name="dataset")
    flag = ["--v1"] if version == "v1" else []
    seed = ours(["seed", str(data), *flag, "--listen", "127.0.6.2:0",
                 "--dht-bootstrap", router], tmp_path, "seed")
    with seed:
        printed = seed.wait_for_line(lambda s: s.startswith("magnet:"), 60).strip()
        # seed's link also names its own address (x.pe); drop it so only the DHT can find
        # the seeder.
        magnet = "&".join(p for p in printed.split("&") if not p.startswith("x.pe="))
        assert "tr=" not in magnet and "x.pe" not in magnet and "x.pe=" in printed
        get = ours(["get", magnet, "-o", str(tmp_path / "dl"), "--json", "--listen",
                    "127.0.6.3:0", "--dht-bootstrap", router, "--timeout", "90"],
                   tmp_path, "get")
        with get:
            assert get.wait(120) == 0, get.describe()
    compare_trees(data, tmp_path / "dl" / data.name)
    status = json.loads((tmp_path / "state-get" / "dht.json").read_text())
    assert status["lookups"]["done"] >= 1 and status["traffic"]["dropped_nonlocal"] == 0


@pytest.mark.parametrize("version", ["v1", "hybrid"])
def test_ours_downloads_a_magnet_that_libtorrent_announced_on_the_dht(
        tmp_path: Path, router: str, version: str) -> None:
    data = make_test_data(tmp_path / "src", [1_000_000, 300_000], seed=22)
    tfile = tmp_path / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, version, PIECE))  # type: ignore[arg-type]
    magnet = make_magnet(load_torrent(tfile.read_bytes()))
    with LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path, name="lt-seed",
                listen="127.0.6.4:0", settings=lt_dht(router, "127.0.6.4")):
        get = ours(["get", magnet, "-o", str(tmp_path / "dl"), "--json", "--listen",
                    "127.0.6.5:0", "--dht-bootstrap", router, "--timeout", "120"],
                   tmp_path, "get")
        with get:
            assert get.wait(150) == 0, get.describe()
    compare_trees(data, tmp_path / "dl" / data.name)


@pytest.mark.parametrize("version", ["v1", "hybrid"])
def test_libtorrent_downloads_a_magnet_that_ours_announced_on_the_dht(
        tmp_path: Path, router: str, version: str) -> None:
    data = make_test_data(tmp_path / "src", [900_000, 70_000], seed=23)
    meta = create_torrent(data, version=TorrentVersion(version), piece_length=PIECE)
    tfile = tmp_path / "ours.torrent"
    tfile.write_bytes(torrent_bytes(meta))
    seed = ours(["seed", str(tfile), str(data), "--listen", "127.0.6.7:0",
                 "--dht-bootstrap", router], tmp_path, "seed")
    with seed:
        seed.wait_for_line(lambda s: '"listening"' in s, 60)
        with LtPeer(make_magnet(meta), tmp_path / "dl", log_dir=tmp_path, name="lt-magnet",
                    listen="127.0.6.8:0", settings=lt_dht(router, "127.0.6.8")) as leech:
            leech.wait_finished(120)
    compare_trees(data, tmp_path / "dl" / data.name)


def test_our_lookup_finds_the_address_libtorrent_announced(tmp_path: Path, router: str) -> None:
    """At the protocol level: a get_peers of ours returns libtorrent's own listen address."""
    import asyncio

    from swarmhub.discovery.dht import Config, DhtNode, parse_bootstrap

    data = make_test_data(tmp_path / "src", [200_000], seed=24)
    tfile = tmp_path / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "v1", PIECE))  # type: ignore[arg-type]
    info_hash = load_torrent(tfile.read_bytes()).info_hash

    async def lookup(lt_port: int) -> tuple[tuple[str, int], ...]:
        async with DhtNode("127.0.6.9", 0, bootstrap=parse_bootstrap(router),
                           config=Config(query_timeout=1.0)) as node:
            await node.wait_bootstrapped(2, timeout=10)
            async with asyncio.timeout(30):
                while True:
                    done = await node.get_peers(info_hash, timeout=10)
                    if ("127.0.6.10", lt_port) in done.peers:
                        return done.peers
                    await asyncio.sleep(0.5)

    with LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path, name="lt-seed",
                listen="127.0.6.10:0", settings=lt_dht(router, "127.0.6.10")) as seeder:
        peers = asyncio.run(lookup(seeder.port))
    assert ("127.0.6.10", seeder.port) in peers


def test_mixed_dht_of_ours_and_libtorrent_serves_a_swarm_from_a_magnet_alone(
        tmp_path: Path, router: str) -> None:
    """A DHT of 30 nodes on loopback, each on its own address: 25 of ours, 4 libtorrent
    sessions and our `get`. One libtorrent seed, three libtorrent leechers and ours all
    start from the magnet link and the DHT alone."""
    data = make_test_data(tmp_path / "src", [800_000, 90_000], seed=25)
    tfile = tmp_path / "lt.torrent"
    tfile.write_bytes(lt_make_torrent(data, "hybrid", PIECE))  # type: ignore[arg-type]
    magnet = make_magnet(load_torrent(tfile.read_bytes()))
    with contextlib.ExitStack() as stack:
        stack.enter_context(LtPeer(tfile, data.parent, seed=True, log_dir=tmp_path,
                                   name="lt-seed", listen="127.0.6.11:0",
                                   settings=lt_dht(router, "127.0.6.11")))
        leeches = [stack.enter_context(LtPeer(
            magnet, tmp_path / f"lt{i}", log_dir=tmp_path, name=f"lt-leech{i}",
            listen=f"127.0.6.{12 + i}:0", settings=lt_dht(router, f"127.0.6.{12 + i}")))
            for i in range(3)]
        get = stack.enter_context(ours(
            ["get", magnet, "-o", str(tmp_path / "dl"), "--json", "--listen",
             "127.0.6.16:0", "--dht-bootstrap", router, "--timeout", "120"], tmp_path, "get"))
        assert get.wait(150) == 0, get.describe()
        for leech in leeches:
            leech.wait_finished(120)
    compare_trees(data, tmp_path / "dl" / data.name)
    for i in range(3):
        compare_trees(data, tmp_path / f"lt{i}" / data.name)
