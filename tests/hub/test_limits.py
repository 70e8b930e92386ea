"""Per-address limits: announce rate, failed-login backoff, and the tracker's use of them."""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_api import Live, live_hub

from swarmhub.bencode import bdecode
from swarmhub.hub.limits import LIMITS_KEY, AnnounceRate, LoginThrottle, address_key

# ------------------------------------------------------------------------ pure policies


def test_address_key_groups_ipv6_by_slash_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_announce_rate_allows_a_burst_then_the_rate() -> None:
    rate = AnnounceRate(2.0, burst=4)
    assert [rate.take("10.0.0.1", 0.0) for _ in range(4)] == [0.0] * 4
    assert rate.take("10.0.0.1", 0.0) == pytest.approx(0.5)
    assert rate.take("10.0.0.2", 0.0) == 0.0  # another address has its own bucket
    assert rate.take("10.0.0.1", 0.5) == 0.0  # one token back after 1/rate seconds
    assert rate.take("10.0.0.1", 0.5) > 0


def test_announce_rate_zero_means_no_limit() -> None:
    rate = AnnounceRate(0)
    assert all(rate.take("10.0.0.1", 0.0) == 0.0 for _ in range(10_000))
    assert len(rate) == 0


def test_limiter_memory_is_bounded_by_max_entries() -> None:
    rate = AnnounceRate(1.0, burst=1, max_entries=100)
    throttle = LoginThrottle(max_entries=100)
    for n in range(10_000):
        ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        rate.take(ip, 0.0)
        throttle.failed(ip, 0.0)
    assert len(rate) == 100 and len(throttle) == 100


def test_login_throttle_spaces_attempts_after_the_free_failures() -> None:
    t = LoginThrottle(free_failures=2, base_delay=1.0, max_delay=4.0, max_wait=10.0)
    ip = "10.0.0.1"
    assert t.wait(ip, 0.0) == 0.0
    t.failed(ip, 0.0)
    t.failed(ip, 0.0)
    assert t.wait(ip, 0.0) == 0.0  # typos are free
    t.failed(ip, 0.0)  # third failure: 1 s between attempts from now on
    assert t.wait(ip, 0.0) == pytest.approx(1.0)
    assert t.wait(ip, 0.0) == pytest.approx(2.0)  # parallel attempts queue up
    assert t.wait("10.0.0.2", 0.0) == 0.0  # other addresses are not affected
    for _ in range(5):
        t.failed(ip, 0.0)
    assert t._delay(8) == 4.0  # capped
    waits = [t.wait(ip, 0.0) for _ in range(6)]
    assert waits[-1] is None  # a slot more than max_wait away: refused at once
    assert t.retry_after(ip, 0.0) >= 1


def test_login_throttle_forgets_an_address_after_a_quiet_period() -> None:
    t = LoginThrottle(free_failures=0, base_delay=1.0, forget_after=60.0)
    t.failed("10.0.0.1", 0.0)
    assert (t.wait("10.0.0.1", 0.5) or 0) > 0
    assert t.wait("10.0.0.1", 61.0) == 0.0


# ------------------------------------------------------------------------ through the hub


@pytest.fixture
async def live(tmp_path: Path, hub_backend: dict[str, str]) -> AsyncIterator[Live]:
    async for x in live_hub(tmp_path, tracker_announce_rate=1.0, tracker_peers_per_ip=3,
                            **hub_backend):
        yield x


async def _publish(live: Live) -> bytes:
    pub, _ = await live.token("publisher")
    status, body = await live.publish(os.urandom(20_000), "x.bin", pub)
    assert status == 201, body
    return bytes.fromhex(body["info_hash_v1"])


async def _announce(
    http: aiohttp.ClientSession, live: Live, ih: bytes, port: int, **extra: str | bytes
) -> dict[bytes, Any]:
    query = {
        "info_hash": ih,
        "peer_id": extra.pop("peer_id", os.urandom(20)),
        "port": str(port),
        "left": "5",
        **extra,
    }
    url = live.url + "/announce?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    async with http.get(url) as r:
        assert r.status == 200
        out: dict[bytes, Any] = bdecode(await r.read())
        return out


def _from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any 127.x.y.z works on Linux)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


class _FrozenRate:
    """The hub's announce allowance seen at one instant: however slowly a loaded machine
    sends the announces below, no token refills between them."""

    def __init__(self, real: AnnounceRate, at: float) -> None:
        self.real, self.at = real, at
        self.rate = real.rate

    def take(self, ip: str, now: float) -> float:
        return self.real.take(ip, self.at)


async def test_hub_tracker_ignores_ip_and_limits_each_address(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    ih = await _publish(live)
    limits = live.app[LIMITS_KEY]
    frozen = _FrozenRate(limits.announces, asyncio.get_running_loop().time())
    monkeypatch.setattr(limits, "announces", frozen)
    async with _from("127.0.0.2") as a, _from("127.0.0.3") as b:
        spoofed = await _announce(a, live, ih, 53, ip="8.8.8.8")
        assert b"failure reason" not in spoofed
        seen = await _announce(b, live, ih, 7000)
        assert seen[b"peers"] == bytes([127, 0, 0, 2]) + (53).to_bytes(2, "big")
        # The burst is 5 s worth of 1 announce/s: the sixth in a row is refused.
        for port in range(7001, 7005):
            assert b"failure reason" not in await _announce(a, live, ih, port)
        refused = await _announce(a, live, ih, 7005)
        assert b"too many announces from 127.0.0.2" in refused[b"failure reason"]
        # Another address is still served, and sees only 3 entries of 127.0.0.2.
        last = await _announce(b, live, ih, 7006)
        peers = last[b"peers"]
        hosts = [peers[i : i + 4] for i in range(0, len(peers), 6)]
        assert hosts.count(bytes([127, 0, 0, 2])) == 3


async def test_stopped_cannot_remove_another_addresss_entry(live: Live) -> None:
    ih = await _publish(live)
    peer_id = os.urandom(20)
    async with _from("127.0.0.2") as victim, _from("127.0.0.3") as attacker:
        await _announce(victim, live, ih, 6000, peer_id=peer_id)
        # Same peer id and port, the victim's address in ip=, event=stopped: ignored.
        await _announce(attacker, live, ih, 6000, peer_id=peer_id, ip="127.0.0.2",
                        event="stopped")
        assert await live.hub.tracker.stats(ih) == (0, 0, 1)
        seen = await _announce(attacker, live, ih, 6001)
        assert seen[b"peers"] == bytes([127, 0, 0, 2]) + (6000).to_bytes(2, "big")


async def test_trusted_proxy_supplies_the_address(tmp_path: Path) -> None:
    async for live in live_hub(tmp_path, trust_proxy=True):
        ih = await _publish(live)
        headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.4"}
        async with aiohttp.ClientSession(headers=headers) as http:
            await _announce(http, live, ih, 6000)
            await _announce(http, live, ih, 6001, ip="192.0.2.55")
        seen = await _announce(live.http, live, ih, 6002)
        peers = seen[b"peers"]
        got = {(bytes(peers[i : i + 4]), int.from_bytes(peers[i + 4 : i + 6], "big"))
               for i in range(0, len(peers), 6)}
        assert got == {(bytes([198, 51, 100, 4]), 6000), (bytes([192, 0, 2, 55]), 6001)}


async def test_announces_from_one_address_do_not_block_the_loop(live: Live) -> None:
    """The limiter answers at once (a bencoded failure), it never sleeps."""
    ih = await _publish(live)
    async with _from("127.0.0.4") as a:
        answers = await asyncio.gather(*(_announce(a, live, ih, 8000 + n) for n in range(20)))
    refused = [x for x in answers if b"failure reason" in x]
    assert len(refused) == 15


async def test_the_embedded_seeder_is_not_rate_limited(tmp_path: Path) -> None:
    """It announces every swarm at once; with 1 announce/s (bursts of 5) 12 swarms pass."""
    async for live in live_hub(
        tmp_path, tracker_announce_rate=1.0, peer_listen=("127.0.0.1", 0)
    ):
        pub, _ = await live.token("publisher")
        hashes = []
        for n in range(6):  # a hybrid and a v1 swarm each: 12+ announces in a burst
            status, body = await live.publish(os.urandom(20_000), f"f{n}.bin", pub)
            assert status == 201
            hashes += [bytes.fromhex(body["info_hash_v1"]),
                       bytes.fromhex(body["info_hash_v1_torrent"])]
        deadline = asyncio.get_running_loop().time() + 30
        while not all(s[0] == 1 for s in [await live.hub.tracker.stats(h) for h in hashes]):
            assert asyncio.get_running_loop().time() < deadline, [
                await live.hub.tracker.stats(h) for h in hashes
            ]
            await asyncio.sleep(0.05)
        assert live.hub.announce_failures == 0
