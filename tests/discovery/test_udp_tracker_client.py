"""UDP tracker client: BEP 15 retries and backoff, connection id reuse and expiry, BEP 41.

A scripted tracker (a datagram endpoint on 127.0.0.1 whose answers the test decides)
drops, delays or garbles datagrams; our own server (``hub.udp_tracker``) checks the
happy path. Lost datagrams time out through an injected timer once the tracker dropped
them, so the test asserts the bounds asked for double, as BEP 15's 15 * 2^n does,
without waiting for them; a tracker that never answers runs the real timers, scaled down.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from conftest import free_port
from swarmhub.discovery import udp_codec as u
from swarmhub.discovery.tracker import AnnounceRequest
from swarmhub.discovery.udp_tracker import UdpTrackerClient, parse_udp_url
from swarmhub.errors import TrackerError
from swarmhub.hub.tracker import TrackerState
from swarmhub.hub.udp_tracker import ConnectionIds, UdpTrackerCore, start_udp_tracker

IH = bytes(range(20))
REQ = AnnounceRequest(IH, b"-SH0100-aaaaaaaaaaaa", 6881, 0, 0, 5, "started")

Script = Callable[[u.Connect | u.Announce | u.Scrape, int], list[bytes]]


class Scripted(asyncio.DatagramProtocol):
    """A tracker that answers what ``script(request, n)`` returns (n: datagrams so far)."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.seen: list[tuple[float, u.Connect | u.Announce | u.Scrape]] = []
        self.transport: Any = None
        self.arrived = asyncio.Event()  #: set at each datagram (tests clear it to wait)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        req = u.parse_request(data)
        self.seen.append((asyncio.get_running_loop().time(), req))
        self.arrived.set()
        for reply in self.script(req, len(self.seen)):
            self.transport.sendto(reply, addr)


def answer(req: u.Connect | u.Announce | u.Scrape, peers: bytes = b"") -> bytes:
    if isinstance(req, u.Connect):
        return u.encode(u.ConnectReply(req.transaction_id, 42))
    if isinstance(req, u.Announce):
        return u.encode(u.AnnounceReply(req.transaction_id, 900, 1, 2, peers))
    return u.encode(u.ScrapeReply(req.transaction_id, tuple((1, 2, 3) for _ in req.info_hashes)))


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Any]]:
    transports = []

    async def start(script: Script) -> tuple[str, Scripted]:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: Scripted(script), local_addr=("127.0.0.1", 0)
        )
        transports.append(transport)
        port = transport.get_extra_info("sockname")[1]
        return f"udp://127.0.0.1:{port}/announce?passkey=x", proto

    yield start
    for t in transports:
        t.close()


def test_udp_urls() -> None:
    assert parse_udp_url("udp://t.example:6969/announce?pk=1") == (
        "t.example", 6969, b"/announce?pk=1")
    assert parse_udp_url("udp://[::1]:80") == ("::1", 80, b"")
    for bad in ("udp://host/announce", "http://host:1/", "udp://host:99999/"):
        with pytest.raises(TrackerError):
            parse_udp_url(bad)


async def test_lost_datagrams_are_resent_with_doubling_timeouts(scripted: Any) -> None:
    # The first three datagrams (two connects, then one announce) are lost.
    lost = {1, 2, 4}

    def script(req: Any, n: int) -> list[bytes]:
        return [] if n in lost else [answer(req, bytes([10, 0, 0, 1, 0, 80]))]

    url, proto = await scripted(script)
    asked: list[float] = []

    async def wait(fut: asyncio.Future[Any], seconds: float) -> Any:
        """The client's timer: it runs out once the tracker has dropped this datagram
        (state), never on the clock; the bound the client asked for is recorded."""
        asked.append(seconds)
        n = len(asked)  # each wait follows one datagram sent
        async with asyncio.timeout(30):  # a hang guard
            if n not in lost:
                return await fut
            while len(proto.seen) < n:  # the tracker drops datagram n once it has it
                proto.arrived.clear()
                await proto.arrived.wait()
            raise TimeoutError

    client = UdpTrackerClient(base_timeout=15, max_retries=4, wait=wait)  # BEP 15's 15 s
    resp = await client.announce(url, REQ)
    assert resp.peers == [("10.0.0.1", 80)] and (resp.complete, resp.incomplete) == (2, 1)
    kinds = [type(r).__name__ for _, r in proto.seen]
    assert kinds == ["Connect", "Connect", "Connect", "Announce", "Announce"]
    # 15 * 2^n, n counting the lost tries of the whole exchange: lost connect, lost
    # connect, answer; lost announce, answer.
    assert asked == [15, 30, 60, 60, 120]
    last = proto.seen[-1][1]
    assert isinstance(last, u.Announce) and last.connection_id == 42
    assert last.url_data == b"/announce?passkey=x" and last.event == 2 and last.port == 6881


async def test_a_silent_tracker_fails_after_the_bounded_tries(scripted: Any) -> None:
    url, proto = await scripted(lambda req, n: [])
    client = UdpTrackerClient(base_timeout=0.02, max_retries=2)
    with pytest.raises(TrackerError, match=r"did not answer \(3 tries, 0.14 s\)"):
        await client.announce(url, REQ)
    assert len(proto.seen) == 3


async def test_answers_with_another_transaction_id_are_ignored(scripted: Any) -> None:
    def script(req: Any, n: int) -> list[bytes]:
        wrong = u.encode(u.ConnectReply(req.transaction_id ^ 1, 7))
        return [wrong, b"\x00" * 3, answer(req)]

    url, proto = await scripted(script)
    resp = await UdpTrackerClient(base_timeout=1, max_retries=0).announce(url, REQ)
    assert resp.complete == 2
    last = proto.seen[-1][1]
    assert isinstance(last, u.Announce) and last.connection_id == 42


async def test_malformed_and_error_answers_are_tracker_errors(scripted: Any) -> None:
    url, _ = await scripted(lambda req, n: [u.encode(u.ErrorReply(req.transaction_id, "nope"))])
    with pytest.raises(TrackerError, match="refused to connect: nope"):
        await UdpTrackerClient(base_timeout=1, max_retries=0).announce(url, REQ)

    def garble(req: Any, n: int) -> list[bytes]:
        return [answer(req) if n == 1 else (9).to_bytes(4, "big") + answer(req)[4:8]]

    url, _ = await scripted(garble)
    with pytest.raises(TrackerError, match="malformed answer"):
        await UdpTrackerClient(base_timeout=1, max_retries=0).announce(url, REQ)


async def test_nobody_listening_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """ICMP port unreachable ends the first attempt: no retry, no timeout (those would take
    75 s here; the outer deadline only guards against that hang)."""
    attempts: list[int] = []
    send = UdpTrackerClient._send

    async def recording_send(self: UdpTrackerClient, *args: Any) -> Any:
        attempts.append(args[-1])
        return await send(self, *args)

    monkeypatch.setattr(UdpTrackerClient, "_send", recording_send)
    with pytest.raises(TrackerError, match="cannot reach tracker"):
        await asyncio.wait_for(UdpTrackerClient(base_timeout=5, max_retries=3).announce(
            f"udp://127.0.0.1:{free_port()}/announce", REQ), 30)
    assert attempts == [0]


async def test_connection_ids_are_reused_for_a_minute_and_survive_a_tracker_restart() -> None:
    core = UdpTrackerCore(TrackerState())
    server = await start_udp_tracker(core, "127.0.0.1", 0)
    now = [1000.0]
    client = UdpTrackerClient(base_timeout=1, max_retries=0, clock=lambda: now[0],
                              rng=random.Random(3))
    url = f"udp://127.0.0.1:{server.address[1]}"
    try:
        await client.announce(url, REQ)
        now[0] += 59
        await client.announce(url, REQ)
        assert await client.scrape(url, [IH, IH]) == {IH: (0, 0, 1)}
        assert core.counts["connect"] == 1
        now[0] += 1  # 60 s after the id came: BEP 15 says get a new one
        await client.announce(url, REQ)
        assert core.counts["connect"] == 2
        core.ids = ConnectionIds()  # a restart: new secret, every id given out is void
        await client.announce(url, REQ)
        assert core.counts["connect"] == 3 and core.counts["bad_connection_id"] == 1
    finally:
        server.close()


async def test_scrape_takes_one_to_74_hashes() -> None:
    client = UdpTrackerClient(base_timeout=1, max_retries=0)
    for hashes in ([], [IH] * 1 + [bytes([i]) * 20 for i in range(74)], [b"short"]):
        with pytest.raises(TrackerError, match=r"1\.\.74 info hashes"):
            await client.scrape("udp://127.0.0.1:1", hashes)


async def test_ipv6_tracker_answers_with_18_byte_peers() -> None:
    """BEP 15: the address family of the datagram decides the peer format."""
    core = UdpTrackerCore(TrackerState())
    try:
        server = await start_udp_tracker(core, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    url = f"udp://[::1]:{server.address[1]}/announce"
    client = UdpTrackerClient(base_timeout=1, max_retries=0)
    try:
        await client.announce(url, REQ)
        other = AnnounceRequest(IH, b"-SH0100-bbbbbbbbbbbb", 7000, 0, 0, 0, "started")
        resp = await client.announce(url, other)
    finally:
        server.close()
    assert resp.peers == [("::1", 6881)] and (resp.complete, resp.incomplete) == (1, 1)
