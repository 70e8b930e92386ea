"""The engine glue: which hashes a torrent lives under, private torrents stay off the DHT,
found peers go through torrent.add_peers; the CLI switches; `dht status`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from swarmhub.cli import app
from swarmhub.discovery.dht import PUBLIC_ROUTERS, Config, DhtNode
from swarmhub.discovery.dht.core import LookupDone
from swarmhub.discovery.dht.lookup import LookupKind
from swarmhub.discovery.dht.source import DhtSource, dht_for, dht_hashes
from swarmhub.settings import Settings

V1 = b"\x01" * 20
V2 = b"\x02" * 32


@dataclass
class Meta:
    private: bool = False
    info_hash_v1: bytes | None = V1
    info_hash_v2: bytes | None = V2


@dataclass
class Torrent:
    meta: Meta
    added: list[tuple[str, int]] = field(default_factory=list)

    def add_peers(self, addrs: list[tuple[str, int]]) -> None:
        self.added += addrs


@dataclass
class Session:
    torrents: dict[bytes, Torrent]
    listen_port: int = 7000


class FakeNode:
    """Answers every lookup with one peer per hash and records what was asked."""

    addr = ("127.0.0.1", 7000)

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, int | None]] = []

    async def get_peers(self, info_hash: bytes, *, announce_port: int | None = None,
                        timeout: float = 30.0) -> LookupDone:
        self.asked.append((info_hash, announce_port))
        return LookupDone(1, info_hash, LookupKind.GET_PEERS,
                          ((f"127.0.7.{info_hash[0]}", 6881),), (), 1, 1, 1)


def test_hybrid_lives_under_v1_and_truncated_v2_and_private_under_nothing() -> None:
    assert dht_hashes(Meta()) == [V1, V2[:20]]
    assert dht_hashes(Meta(info_hash_v1=None)) == [V2[:20]]
    assert dht_hashes(Meta(private=True)) == []


async def test_source_announces_public_torrents_and_feeds_their_peers() -> None:
    public, private = Torrent(Meta()), Torrent(Meta(private=True, info_hash_v1=b"\x03" * 20))
    session = Session({b"a": public, b"b": private})
    node = FakeNode()
    source = DhtSource(session, node)  # type: ignore[arg-type]
    task = asyncio.create_task(source.run())
    try:
        async with asyncio.timeout(5):
            while not public.added:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert node.asked == [(V1, 7000), (V2[:20], 7000)]  # never the private torrent's hash
    assert sorted(public.added) == [("127.0.7.1", 6881), ("127.0.7.2", 6881)]
    assert private.added == []


def test_public_routers_are_only_the_default_and_tests_run_with_the_dht_off() -> None:
    assert Settings().dht and Settings().dht_bootstrap == PUBLIC_ROUTERS
    assert os.environ["SWARMHUB_DHT"] == "0" and not Settings.from_env().dht


async def test_no_dht_and_the_env_switch_start_no_node() -> None:
    on = Settings().replace(dht_bootstrap="127.0.0.1:1")
    async with dht_for(Session({}), on, host="127.0.7.50", listen_port=0,
                       no_dht=True) as node:
        assert node is None
    async with dht_for(Session({}), Settings.from_env(), host="127.0.7.50",
                       listen_port=0) as node:
        assert node is None  # SWARMHUB_DHT=0
    async with dht_for(Session({}), Settings.from_env(), host="127.0.7.50", listen_port=0,
                       bootstrap="") as node:
        assert node is not None  # an explicit (local) bootstrap list turns it on


async def test_local_only_guard_never_resolves_or_contacts_public_routers() -> None:
    async with DhtNode("127.0.7.51", 0, bootstrap=[("router.bittorrent.com", 6881),
                                                   ("8.8.8.8", 6881)],
                       config=Config()) as node:
        assert node._core().bootstrap_addrs == []  # dropped before DNS or any datagram
        node._core().call_ping(("8.8.8.8", 6881), 0.0)
        node._flush()
        assert node.dropped_nonlocal == 1


def test_magnet_without_peers_and_with_no_dht_says_how_to_find_peers(tmp_path: Path) -> None:
    magnet = "magnet:?xt=urn:btih:" + "ab" * 20
    result = CliRunner().invoke(app, ["get", magnet, "-o", str(tmp_path), "--no-dht"])
    assert result.exit_code == 2 and "no way to find peers" in result.output


def test_dht_status_reads_the_state_file(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["dht", "status", "--state-dir", str(tmp_path)])
    assert missing.exit_code == 1 and "no DHT state" in missing.output

    async def make() -> None:
        async with DhtNode("127.0.7.52", 0, state_file=tmp_path / "dht.json"):
            pass

    asyncio.run(make())
    shown = runner.invoke(app, ["dht", "status", "--state-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    assert "node id" in shown.output and f"{os.getpid()} running" in shown.output
    raw = runner.invoke(app, ["dht", "status", "--state-dir", str(tmp_path), "--json"])
    assert json.loads(raw.output)["address"].startswith("127.0.7.52:")


async def test_a_second_process_on_the_same_state_folder_gets_its_own_id(
        tmp_path: Path) -> None:
    """The lock is per process (flock), so simulate the second process with a held lock."""
    import fcntl

    state = tmp_path / "dht.json"
    on = Settings().replace(dht_bootstrap="")
    async with dht_for(Session({}), on, host="127.0.7.53", listen_port=0,
                       state_file=state) as first:
        assert first is not None
    saved = json.loads(state.read_text())["node_id"]
    with open(state.with_suffix(".lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with open(state.with_suffix(".lock"), "a+b") as other:
            try:  # flock locks are per open file: a second open file sees it taken
                fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_elsewhere = False
            except OSError:
                held_elsewhere = True
        assert held_elsewhere
        async with dht_for(Session({}), on, host="127.0.7.53", listen_port=0,
                           state_file=state) as second:
            assert second is not None and second.state_file != state
            assert second._core().node_id.hex() != saved
            second.save()
            shown = CliRunner().invoke(app, ["dht", "status", "--state-dir", str(tmp_path)])
            assert shown.output.count("node id") == 2
        assert not second.state_file.exists()  # removed on exit
    assert json.loads(state.read_text())["node_id"] == saved


async def test_lonely_downloads_back_off_and_seeds_announce_every_fifteen_minutes() -> None:
    class Empty(FakeNode):
        async def get_peers(self, info_hash: bytes, *, announce_port: int | None = None,
                            timeout: float = 30.0) -> LookupDone:
            self.asked.append((info_hash, announce_port))
            return LookupDone(1, info_hash, LookupKind.GET_PEERS, (), (), 1, 1, 1)

    now = [0.0]
    seeding = Torrent(Meta(info_hash_v2=None))
    seeding.complete = asyncio.Event()  # type: ignore[attr-defined]
    seeding.complete.set()  # type: ignore[attr-defined]
    lonely = Torrent(Meta(info_hash_v1=b"\x05" * 20, info_hash_v2=None))
    source = DhtSource(Session({b"s": seeding, b"l": lonely}), Empty(),  # type: ignore[arg-type]
                       clock=lambda: now[0])
    waits = []
    for _ in range(6):
        await source._one(b"l", lonely)
        waits.append(source._due[b"l"] - now[0])
    assert waits == [15.0, 30.0, 60.0, 120.0, 240.0, 300.0]
    await source._one(b"s", seeding)
    assert source._due[b"s"] - now[0] == 900.0


async def test_a_seed_whose_announce_reached_nobody_tries_again_soon() -> None:
    class Alone(FakeNode):
        """An empty routing table: no peers, no node to announce to (announced == 0)."""

        alone = True

        async def get_peers(self, info_hash: bytes, *, announce_port: int | None = None,
                            timeout: float = 30.0) -> LookupDone:
            self.asked.append((info_hash, announce_port))
            return LookupDone(1, info_hash, LookupKind.GET_PEERS, (), (), 0, 0,
                              0 if self.alone else 3)

    now = [0.0]
    seeding = Torrent(Meta(info_hash_v2=None))
    seeding.complete = asyncio.Event()  # type: ignore[attr-defined]
    seeding.complete.set()  # type: ignore[attr-defined]
    node = Alone()
    source = DhtSource(Session({b"s": seeding}), node, clock=lambda: now[0])  # type: ignore[arg-type]
    waits = []
    for _ in range(3):
        await source._one(b"s", seeding)
        waits.append(source._due[b"s"] - now[0])
    assert waits == [15.0, 30.0, 60.0]
    node.alone = False  # other nodes joined: the announce lands, then every 15 min
    await source._one(b"s", seeding)
    assert source._due[b"s"] - now[0] == 900.0


def test_local_only_accepts_a_lab_subnet_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from swarmhub.discovery.dht.node import allowed_networks

    assert allowed_networks() == [ipaddress.ip_network("127.0.0.0/8")]
    monkeypatch.setenv("SWARMHUB_DHT_LOCAL_ONLY", "127.0.0.0/8, 10.9.0.0/16")
    nets = allowed_networks()
    assert nets is not None and ipaddress.ip_address("10.9.1.2") in nets[1]
    monkeypatch.setenv("SWARMHUB_DHT_LOCAL_ONLY", "not a network")
    assert allowed_networks() == [ipaddress.ip_network("127.0.0.0/8")]
