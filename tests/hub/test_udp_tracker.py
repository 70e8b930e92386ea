"""The UDP tracker (BEP 15): sans-IO core rules, then the hub's server with our client.

Rules under test: connection ids are bound to the source address and expire; nothing goes
to an address that has not proved itself that is larger than what it sent (no
amplification); scrapes are capped; a flood from one address is dropped while others are
served; the hub's whitelist and passkeys apply over UDP as over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hubproc import catalog_rows, cli
from hypothesis import given
from hypothesis import strategies as st
from test_api import Live, live_hub
from test_app import fetch, publish

from conftest import free_port
from interop.harness import VENV_PYTHON, Proc
from swarmhub.discovery import udp_codec as u
from swarmhub.discovery.tracker import AnnounceRequest, TrackerTiers
from swarmhub.discovery.tracker import announce as http_announce
from swarmhub.discovery.udp_tracker import UdpTrackerClient
from swarmhub.errors import TrackerError
from swarmhub.hub.limits import AnnounceRate
from swarmhub.hub.tracker import TrackerState
from swarmhub.hub.udp_tracker import (
    ConnectionIds,
    UdpTrackerCore,
    hub_connection_ids,
    passkey_of,
)
from swarmhub.metainfo import load_torrent

IH = bytes(range(20))
T = TypeVar("T")


def core(**kw: object) -> UdpTrackerCore:
    return UdpTrackerCore(TrackerState(interval=900), ids=ConnectionIds(b"k" * 32), **kw)  # type: ignore[arg-type]


def connect(c: UdpTrackerCore, ip: str, now: float = 0.0) -> int:
    reply = c.handle(u.encode(u.Connect(7)), ip, now)
    assert reply is not None and len(reply) == 16  # as large as the request, no more
    parsed = u.parse_response(reply)
    assert isinstance(parsed, u.ConnectReply) and parsed.transaction_id == 7
    return parsed.connection_id


def announce_packet(cid: int, **kw: object) -> bytes:
    base: dict[str, object] = dict(
        connection_id=cid, transaction_id=9, info_hash=IH, peer_id=b"P" * 20, downloaded=0,
        left=10, uploaded=0, event=2, ip=0, key=1, num_want=-1, port=6881,
    )
    base.update(kw)
    packet = u.Announce(**base)  # type: ignore[arg-type]
    return u.encode(packet)


def reply_of(
    c: UdpTrackerCore, data: bytes, ip: str, now: float = 0.0, ipv6: bool = False
) -> object:
    raw = c.handle(data, ip, now)
    assert raw is not None
    return u.parse_response(raw, ipv6=ipv6)


# ------------------------------------------------------------------------ sans-IO core


def test_announce_after_connect_lists_other_peers_compactly() -> None:
    c = core()
    first = reply_of(c, announce_packet(connect(c, "10.0.0.1"), left=0), "10.0.0.1")
    assert isinstance(first, u.AnnounceReply)
    assert (first.interval, first.seeders, first.leechers, first.peers) == (900, 1, 0, b"")
    cid = connect(c, "10.0.0.2")
    second = reply_of(c, announce_packet(cid, peer_id=b"Q" * 20, port=7000), "10.0.0.2")
    assert isinstance(second, u.AnnounceReply) and second.transaction_id == 9
    assert second.addresses() == [("10.0.0.1", 6881)]
    assert (second.seeders, second.leechers) == (1, 1)
    stop = announce_packet(cid, peer_id=b"Q" * 20, port=7000, event=3)
    stopped = reply_of(c, stop, "10.0.0.2")
    assert isinstance(stopped, u.AnnounceReply) and stopped.peers == b""
    assert c.state.stats(IH) == (1, 0, 0)


def test_connection_id_is_bound_to_the_source_address() -> None:
    c = core()
    cid = connect(c, "10.0.0.1")
    packet = announce_packet(cid)
    spoofed = reply_of(c, packet, "10.0.0.66")
    assert isinstance(spoofed, u.ErrorReply) and "connect again" in spoofed.message
    assert c.state.stats(IH) == (0, 0, 0) and c.counts["bad_connection_id"] == 1
    assert isinstance(reply_of(c, packet, "10.0.0.1"), u.AnnounceReply)


def test_connection_ids_live_two_to_three_minutes() -> None:
    ids = ConnectionIds(b"s" * 32)
    late = ids.issue("1.2.3.4", 59.9)  # issued at the very end of a window
    assert ids.check(late, "1.2.3.4", 59.9 + 120) and not ids.check(late, "1.2.3.4", 180.0)
    early = ids.issue("1.2.3.4", 0.0)
    assert ids.check(early, "1.2.3.4", 179.9) and not ids.check(early, "1.2.3.4", 180.0)
    assert ConnectionIds(b"t" * 32).issue("1.2.3.4", 0.0) != early  # the secret matters


def test_scrape_reports_counts_in_order_and_is_capped() -> None:
    c = core()
    cid = connect(c, "10.0.0.1")
    c.handle(announce_packet(cid, left=0), "10.0.0.1", 0.0)
    got = reply_of(c, u.encode(u.Scrape(cid, 3, (bytes(20), IH))), "10.0.0.1")
    assert isinstance(got, u.ScrapeReply) and got.stats == ((0, 0, 0), (1, 0, 0))
    too_many = u.encode(u.Scrape(cid, 3, (IH,) * 75))
    refused = reply_of(c, too_many, "10.0.0.1")
    assert isinstance(refused, u.ErrorReply) and "at most 74" in refused.message


def test_ipv6_sources_get_18_byte_peers_and_mapped_ipv4_stays_ipv4() -> None:
    c = core()
    for ip, port in (("2001:db8::1", 1000), ("::ffff:10.0.0.9", 2000), ("2001:db8::2", 3000)):
        c.handle(announce_packet(connect(c, ip), port=port, peer_id=os.urandom(20)), ip, 0.0)
    v6 = reply_of(c, announce_packet(connect(c, "2001:db8::3"), peer_id=b"Z" * 20),
                  "2001:db8::3", ipv6=True)
    assert isinstance(v6, u.AnnounceReply)
    assert sorted(v6.addresses()) == [("2001:db8::1", 1000), ("2001:db8::2", 3000)]
    v4 = reply_of(c, announce_packet(connect(c, "::ffff:10.0.0.8"), peer_id=b"Y" * 20),
                  "::ffff:10.0.0.8")
    assert isinstance(v4, u.AnnounceReply) and v4.addresses() == [("10.0.0.9", 2000)]


def test_port_zero_and_junk_get_short_errors_or_nothing() -> None:
    c = core()
    cid = connect(c, "10.0.0.1")
    bad_port = reply_of(c, announce_packet(cid, port=0), "10.0.0.1")
    assert isinstance(bad_port, u.ErrorReply) and "port" in bad_port.message
    assert c.handle(b"\x00" * 15, "10.0.0.1", 0.0) is None
    assert c.handle(os.urandom(u.ANNOUNCE_SIZE) + b"x" * 3000, "10.0.0.1", 0.0) is None
    assert c.counts["oversized"] == 1


def test_a_flood_from_one_address_is_dropped_and_others_are_served() -> None:
    c = core(rate=AnnounceRate(10, burst=20))
    packet = u.encode(u.Connect(1))
    answered = sum(c.handle(packet, "10.0.0.66", 0.0) is not None for _ in range(10_000))
    assert answered == 20 and c.counts["rate_limited"] == 10_000 - 20
    assert connect(c, "10.0.0.1") != 0  # another address is untouched
    assert c.handle(packet, "10.0.0.66", 1.0) is not None  # the flooder's allowance refills


@given(st.binary(min_size=0, max_size=3000), st.booleans())
def test_no_amplification_toward_an_unproven_address(data: bytes, valid_head: bool) -> None:
    """Whatever a spoofer sends, what goes back is no larger than what came in."""
    c = core()
    if valid_head and len(data) >= 16:
        data = struct.pack("!QII", 123, data[8] % 3, 5) + data[16:]
    reply = c.handle(data, "10.9.9.9", 0.0)
    assert reply is None or len(reply) <= len(data)


def test_the_hub_accepts_its_ids_after_a_restart(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    before, after = hub_connection_ids(tmp_path / "hub"), hub_connection_ids(tmp_path / "hub")
    cid = before.issue("10.0.0.1", 1000.0)
    assert after.check(cid, "10.0.0.1", 1030.0)
    (tmp_path / "other").mkdir()
    assert not hub_connection_ids(tmp_path / "other").check(cid, "10.0.0.1", 1030.0)


def test_passkey_comes_from_bep41_url_data() -> None:
    assert passkey_of(b"/announce?passkey=abc&x=1") == "abc"
    assert passkey_of(b"/announce") is None and passkey_of(None) is None


# ------------------------------------------------------------------ the hub over sockets


@pytest.fixture(params=["memory", "redis"])
async def live(tmp_path: object, request: pytest.FixtureRequest) -> AsyncIterator[Live]:
    """A hub with a UDP tracker, its swarms in memory or in a real Redis (shared state:
    announces and scrapes are answered once the store replied)."""
    shared = {}
    if request.param == "redis":
        shared["swarm_state"] = request.getfixturevalue("redis_server").new_url()
    async for x in live_hub(tmp_path, max_upload_size=16 << 20,  # type: ignore[arg-type]
                            udp_tracker=("127.0.0.1", 0), **shared):
        async with x.http.post(f"{x.url}/api/collections", json={"name": "team", "private": True},
                               headers=x.auth(x.admin)) as r:
            assert r.status == 201
        yield x


def udp_url(live: Live) -> str:
    assert live.hub.udp_tracker is not None
    return f"udp://127.0.0.1:{live.hub.udp_tracker.address[1]}/announce"


def request(ih: bytes, port: int = 7000, **kw: object) -> AnnounceRequest:
    base: dict[str, object] = dict(info_hash=ih, peer_id=os.urandom(20), port=port, uploaded=0,
                                   downloaded=0, left=100, event="started")
    base.update(kw)
    return AnnounceRequest(**base)  # type: ignore[arg-type]


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def test_hub_torrents_list_udp_as_the_second_tier(live: Live) -> None:
    f = await publish(live, os.urandom(50_000), "a.bin")
    status, raw, _ = await fetch(live, f"/t/{f['id']}.torrent")
    assert status == 200
    assert load_torrent(raw).trackers == ((live.url + "/announce",), (udp_url(live),))
    # The info dict is untouched: same swarm as without the UDP tier.
    assert load_torrent(raw).info_hash_v1 is not None
    assert load_torrent(raw).info_hash_v1.hex() == f["info_hash_v1"]  # type: ignore[union-attr]


async def test_public_announce_and_scrape_over_udp(live: Live) -> None:
    f = await publish(live, os.urandom(50_000), "pub.bin")
    ih = bytes.fromhex(f["info_hash_v1"])
    client = UdpTrackerClient(base_timeout=2, max_retries=1)
    url = udp_url(live)
    seed = await client.announce(url, request(ih, port=7001, left=0))
    leech = await client.announce(url, request(ih, port=7002))
    assert ("127.0.0.1", 7001) in leech.peers and leech.complete == seed.complete == 1
    assert (await client.scrape(url, [ih]))[ih] == (1, 0, 1)
    counts = live.hub.udp_tracker.core.counts
    assert counts["connect"] == 1  # the id was reused
    # An error to a request with a remembered id: maybe the tracker restarted, so the
    # client connects once more before it believes the error.
    with pytest.raises(TrackerError, match="unregistered torrent"):
        await client.announce(url, request(b"\x01" * 20))
    assert counts["connect"] == 2 and counts["refused"] == 2


async def test_a_udp_announce_ends_a_pending_get_as_an_http_one_does(live: Live) -> None:
    """A get that read the file's info (``?peer_id=``) counts as pending until it
    announces, over UDP as over HTTP; the gets still on their way count as leechers in
    the UDP answer too (hub.pending)."""
    f = await publish(live, os.urandom(50_000), "pending.bin")
    first, second = b"-SH0100-" + b"a" * 12, b"-SH0100-" + b"b" * 12

    async def pending(peer_id: bytes) -> tuple[int, int]:
        status, body, _ = await fetch(live, f"/api/files/{f['id']}?peer_id={peer_id.hex()}")
        assert status == 200
        one = json.loads(body)
        return one["leechers"], one["pending"]

    assert await pending(first) == (0, 0)
    assert await pending(second) == (0, 1)
    client = UdpTrackerClient(base_timeout=2, max_retries=1)
    ih = bytes.fromhex(f["info_hash_v1"])
    answer = await client.announce(udp_url(live), request(ih, port=7031, peer_id=first))
    assert answer.incomplete == 2  # itself, and the second get on its way
    assert await pending(second) == (1, 0)  # the first is the tracker's now, not pending


async def test_private_torrent_over_udp_needs_a_live_passkey(live: Live) -> None:
    f = await publish(live, os.urandom(50_000), "secret.bin", collection="team")
    ih = bytes.fromhex(f["info_hash_v1"])
    client = UdpTrackerClient(base_timeout=2, max_retries=1)
    with pytest.raises(TrackerError, match="private torrent: announce with your passkey"):
        await client.announce(udp_url(live), request(ih))
    with pytest.raises(TrackerError, match="unknown or revoked passkey"):
        await client.announce(udp_url(live) + "?passkey=0123", request(ih))
    reader, info = await live.token("reader")
    status, raw, _ = await fetch(live, f"/t/{f['id']}.torrent", token=reader)
    assert status == 200
    tiers = load_torrent(raw).trackers
    assert tiers[1] == (udp_url(live) + f"?passkey={info['passkey']}",)
    ok = await client.announce(tiers[1][0], request(ih, port=7005))
    assert ok.incomplete == 1
    assert [k[:2] for k in live.hub.access._grants] == [(f["id"], "127.0.0.1")]
    # A scrape carries no passkey: private counts stay hidden.
    assert (await client.scrape(udp_url(live), [ih]))[ih] == (0, 0, 0)


class _FrozenRate:
    """The hub's per-address allowance seen at one instant: the flood below spends its
    burst and not a token more, however long a loaded machine takes to send it."""

    def __init__(self, real: AnnounceRate, at: float) -> None:
        self.real, self.at = real, at

    def take(self, ip: str, now: float) -> float:
        return self.real.take(ip, self.at)


async def test_hostile_datagrams_leave_the_hub_healthy(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = await publish(live, os.urandom(50_000), "h.bin")
    ih = bytes.fromhex(f["info_hash_v1"])
    server = live.hub.udp_tracker
    assert server is not None
    rate = server.core.rate
    assert rate is not None and rate.rate > 0
    monkeypatch.setattr(server.core, "rate", _FrozenRate(rate, asyncio.get_running_loop().time()))
    addr = ("127.0.0.1", server.address[1])
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.3", 0))  # its own address: its limit does not touch the client's
        s.setblocking(False)
        junk = [b"", b"\x00" * 15, os.urandom(100), b"\xff" * 5000,
                announce_packet(0xDEADBEEF, info_hash=ih),  # made-up connection id
                u.encode(u.Connect(1))[:12]]
        counts = server.core.counts
        seen = sum(counts.values())
        for data in junk:
            s.sendto(data, addr)
        await until(lambda: sum(counts.values()) >= seen + len(junk), "the junk to arrive")
        for _ in range(40):  # a flood of connects from this one address, in batches that
            for _ in range(50):  # fit the socket's receive buffer
                s.sendto(u.encode(u.Connect(2)), addr)
            target = sum(counts.values()) + 50
            await until(lambda t=target: sum(counts.values()) >= t, "a batch of the flood")
        replies = []
        while True:
            try:
                replies.append(await asyncio.wait_for(loop.sock_recv(s, 4096), 0.5))
            except TimeoutError:
                break
    assert counts["oversized"] == 1 and counts["bad_connection_id"] == 1
    # every datagram but the oversized one spends a token: 5 junk + 2000 connects against
    # one burst (100 at the hub's default 20/s)
    burst = int(rate.burst)
    assert counts["rate_limited"] == 5 + 2000 - burst
    assert counts["connect"] == burst - 5
    assert all(len(r) <= 98 for r in replies) and len(replies) <= burst
    # Meanwhile everyone else is served.
    tiers = TrackerTiers([[udp_url(live)]], random.Random(0),
                         udp=UdpTrackerClient(base_timeout=2, max_retries=1))
    answer = await tiers.announce(request(ih))
    assert answer.incomplete == 1
    assert counts["internal_error"] == 0
    async with live.http.get(f"{live.url}/metrics") as r:
        text = await r.text()
    assert 'swarmhub_udp_tracker_datagrams_total{outcome="rate_limited"}' in text


def test_busy_udp_port_is_one_line_error_and_creates_no_token(tmp_path: Path) -> None:
    """``swarmhub hub --udp-tracker HOST:PORT`` on a taken port: the operator's one line."""
    data = tmp_path / "data"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        taken = blocker.getsockname()[1]
        proc = cli(tmp_path, "hub", "hub", "--data", str(data), "--listen",
                   f"127.0.0.1:{free_port()}", "--peer-listen", "off",
                   "--udp-tracker", f"127.0.0.1:{taken}")
    out = proc.output()
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in out, out
    assert f"UDP tracker on 127.0.0.1:{taken}" in lines[0] and "--udp-tracker" in lines[0], out
    assert catalog_rows(data, "SELECT COUNT(*) FROM tokens") == [(0,)]


async def test_standalone_tracker_speaks_udp_too(tmp_path: Path) -> None:
    """``python -m swarmhub.hub.tracker --listen H:P --udp H:P``: one swarm, two protocols."""
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "swarmhub.hub.tracker", "--listen", f"127.0.0.1:{port}",
            "--udp", f"127.0.0.1:{port}"]
    with Proc(argv, name="tracker", log=tmp_path / "tracker.log") as proc:
        url = f"udp://127.0.0.1:{port}/announce"
        client = UdpTrackerClient(base_timeout=0.2, max_retries=0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20

        async def until_it_answers(send: Callable[[], Awaitable[T]], what: str) -> T:
            """Retry (bounded) until the port listens: refused or unanswered tries fail
            fast. The UDP socket opens in the app's start-up, before the HTTP site binds."""
            while True:
                try:
                    return await send()
                except TrackerError:
                    assert proc.poll() is None, proc.output()
                    assert loop.time() < deadline, f"the standalone tracker never answered {what}"
                    await asyncio.sleep(0.1)

        first = await until_it_answers(
            lambda: client.announce(url, request(IH, port=7001, left=0)), "over UDP")
        assert first.complete == 1
        over_http = await until_it_answers(
            lambda: http_announce(f"http://127.0.0.1:{port}/announce", request(IH)),
            "over HTTP")
        assert over_http.peers == [("127.0.0.1", 7001)]


async def test_two_hubs_on_one_redis_share_their_udp_swarms(
        tmp_path: Path, redis_server: Any) -> None:
    """``--udp-tracker`` with ``--swarm-state redis://``: an announce over UDP to hub A is
    in the swarm hub B's UDP tracker answers from (one swarm, whichever process)."""
    url = redis_server.new_url()
    data = os.urandom(50_000)
    client = UdpTrackerClient(base_timeout=2, max_retries=1)
    async for a in live_hub(tmp_path / "a", udp_tracker=("127.0.0.1", 0), swarm_state=url):
        async for b in live_hub(tmp_path / "b", udp_tracker=("127.0.0.1", 0), swarm_state=url):
            fa, fb = await publish(a, data, "same.bin"), await publish(b, data, "same.bin")
            assert fa["info_hash_v1"] == fb["info_hash_v1"]
            ih = bytes.fromhex(fa["info_hash_v1"])
            await client.announce(udp_url(a), request(ih, port=7101, left=0))
            got = await client.announce(udp_url(b), request(ih, port=7102))
            assert ("127.0.0.1", 7101) in got.peers and (got.complete, got.incomplete) == (1, 1)
            assert (await client.scrape(udp_url(a), [ih]))[ih] == (1, 0, 1)
            assert b.hub.udp_tracker is not None
            assert b.hub.udp_tracker.core.counts["internal_error"] == 0
