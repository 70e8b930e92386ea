"""UDP tracker client (BEP 15): connect, announce and scrape over ``udp://`` URLs.

:class:`UdpTrackerClient` keeps the connection ids it was given (per tracker address, for
:data:`CONNECTION_ID_LIFETIME` seconds, as BEP 15 allows) so a torrent's periodic
announces skip the connect round trip. Each transaction uses its own connected socket, so
the kernel drops datagrams from anyone but the tracker; replies are matched by
transaction id as well.

Lost datagrams are sent again after ``base_timeout * 2**n`` seconds (BEP 15: 15 s, 30 s,
60 s ...), ``max_retries`` times: the defaults (15 s, 2 retries: 105 s before giving up)
can be changed with ``SWARMHUB_UDP_TRACKER_TIMEOUT`` and ``SWARMHUB_UDP_TRACKER_RETRIES``.
The path and query of the URL (a passkey) travel as BEP 41 URL data. A tracker's error
packet becomes a :class:`~swarmhub.errors.TrackerError` with its message; when it answers
a request made with a remembered connection id, the id is dropped and the request made
once more with a fresh one (a tracker that restarted forgets the ids it gave out).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from swarmhub.discovery.tracker import AnnounceRequest, AnnounceResponse
from swarmhub.discovery.udp_codec import (
    EVENTS,
    MAX_SCRAPE,
    Announce,
    AnnounceReply,
    Connect,
    ConnectReply,
    ErrorReply,
    Scrape,
    ScrapeReply,
    UdpPacketError,
    encode,
    parse_response,
)
from swarmhub.errors import TrackerError

__all__ = ["CONNECTION_ID_LIFETIME", "UdpTrackerClient", "parse_udp_url"]

#: Seconds a client may use a connection id after receiving it (BEP 15).
CONNECTION_ID_LIFETIME = 60.0
_ENV_TIMEOUT = "SWARMHUB_UDP_TRACKER_TIMEOUT"
_ENV_RETRIES = "SWARMHUB_UDP_TRACKER_RETRIES"
_Reply = ConnectReply | AnnounceReply | ScrapeReply | ErrorReply


def parse_udp_url(url: str) -> tuple[str, int, bytes]:
    """``udp://host:port/path?query`` -> ``(host, port, b"/path?query")``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "udp":
        raise TrackerError(f"{url}: not a udp:// tracker URL")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise TrackerError(f"{url}: a UDP tracker URL needs a host and a port")
    tail = parts.path + ("?" + parts.query if parts.query else "")
    return parts.hostname, port, tail.encode("latin-1", "replace")


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TrackerError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise TrackerError(f"{name} must not be negative")
    return value


class _Endpoint(asyncio.DatagramProtocol):
    """One transaction's socket: hands the reply with the awaited transaction id over."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.waiting: tuple[int, asyncio.Future[_Reply]] | None = None
        self.error: Exception | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.waiting is None or len(data) < 8:
            return
        tid, fut = self.waiting
        if int.from_bytes(data[4:8], "big") != tid or fut.done():
            return  # a late answer to an earlier attempt, or junk
        try:
            fut.set_result(parse_response(data, ipv6=self.ipv6))
        except UdpPacketError as exc:
            fut.set_exception(exc)

    def error_received(self, exc: Exception) -> None:
        # ICMP "port unreachable": nobody listens there. Fail now instead of at timeout.
        if self.waiting is not None and not self.waiting[1].done():
            self.waiting[1].set_exception(exc)


class UdpTrackerClient:
    """Announces and scrapes over BEP 15, remembering connection ids per tracker."""

    def __init__(
        self,
        *,
        base_timeout: float | None = None,
        max_retries: int | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[asyncio.Future[Any], float], Awaitable[Any]] = asyncio.wait_for,
    ) -> None:
        """``wait(future, seconds)``: how one answer is awaited (TimeoutError: lost), so
        tests can time out on what the tracker did rather than on the clock."""
        self.base_timeout = (
            _env_number(_ENV_TIMEOUT, 15.0) if base_timeout is None else base_timeout
        )
        self.max_retries = int(
            _env_number(_ENV_RETRIES, 2) if max_retries is None else max_retries
        )
        if self.base_timeout <= 0 or self.max_retries < 0:
            raise TrackerError("the UDP tracker timeout must be positive, retries >= 0")
        self._rng = rng or random.Random()
        self._clock = clock
        self._wait = wait
        self._key = self._rng.getrandbits(32)
        #: (host, port) -> (connection id, when it was received).
        self._ids: dict[tuple[str, int], tuple[int, float]] = {}

    # -- public API --------------------------------------------------------------------

    async def announce(self, url: str, req: AnnounceRequest) -> AnnounceResponse:
        """Announce ``req`` to ``url``; every failure is a ``TrackerError`` naming ``url``."""
        host, port, url_data = parse_udp_url(url)
        key = self._key if req.key is None else zlib.crc32(req.key.encode()) & 0xFFFFFFFF

        def build(cid: int, tid: int) -> bytes:
            return encode(
                Announce(
                    cid, tid, req.info_hash, req.peer_id, req.downloaded, req.left,
                    req.uploaded, EVENTS.index(req.event), 0, key, req.numwant, req.port,
                    url_data or None,
                )
            )

        reply = await self._transact(url, host, port, build)
        if not isinstance(reply, AnnounceReply):
            raise TrackerError(f"{url}: tracker answered an announce with {type(reply).__name__}")
        return AnnounceResponse(
            interval=reply.interval,
            min_interval=None,
            peers=reply.addresses(),
            complete=reply.seeders,
            incomplete=reply.leechers,
            warning=None,
            tracker_id=None,
        )

    async def scrape(
        self, url: str, info_hashes: Sequence[bytes]
    ) -> dict[bytes, tuple[int, int, int]]:
        """``{info_hash: (complete, downloaded, incomplete)}`` for up to 74 hashes."""
        host, port, _ = parse_udp_url(url)
        hashes = tuple(dict.fromkeys(info_hashes))
        if not hashes or len(hashes) > MAX_SCRAPE or any(len(h) != 20 for h in hashes):
            raise TrackerError(f"a UDP scrape takes 1..{MAX_SCRAPE} info hashes of 20 bytes")
        reply = await self._transact(
            url, host, port, lambda cid, tid: encode(Scrape(cid, tid, hashes))
        )
        if not isinstance(reply, ScrapeReply) or len(reply.stats) < len(hashes):
            raise TrackerError(f"{url}: tracker sent no scrape answer for every hash")
        return {ih: (s, c, lc) for ih, (s, c, lc) in zip(hashes, reply.stats, strict=False)}

    def forget(self) -> None:
        """Drop every remembered connection id."""
        self._ids.clear()

    # -- transactions ------------------------------------------------------------------

    async def _transact(
        self, url: str, host: str, port: int, build: Callable[[int, int], bytes]
    ) -> _Reply:
        loop = asyncio.get_running_loop()
        try:
            transport, proto = await loop.create_datagram_endpoint(
                lambda: _Endpoint(ipv6=False), remote_addr=(host, port)
            )
        except OSError as exc:
            raise TrackerError(f"{url}: cannot reach tracker ({exc})") from None
        try:
            peer = transport.get_extra_info("peername")
            proto.ipv6 = peer is not None and ":" in str(peer[0])
            addr = (str(peer[0]) if peer else host, port)
            return await self._exchange(url, addr, transport, proto, build)
        finally:
            transport.close()

    async def _exchange(
        self,
        url: str,
        addr: tuple[str, int],
        transport: asyncio.DatagramTransport,
        proto: _Endpoint,
        build: Callable[[int, int], bytes],
    ) -> _Reply:
        attempt = 0
        retried_stale = False
        while True:
            cached = self._ids.get(addr)
            fresh = cached is None or self._clock() - cached[1] >= CONNECTION_ID_LIFETIME
            if fresh:
                self._ids.pop(addr, None)
                tid = self._rng.getrandbits(32)
                reply = await self._send(url, transport, proto, encode(Connect(tid)), tid, attempt)
                if reply is None:
                    attempt += 1
                    continue
                if isinstance(reply, ErrorReply):
                    raise TrackerError(f"{url}: tracker refused to connect: {reply.message}")
                if not isinstance(reply, ConnectReply):
                    raise TrackerError(f"{url}: tracker answered connect with "
                                       f"{type(reply).__name__}")
                self._ids[addr] = (reply.connection_id, self._clock())
                cached = self._ids[addr]
            assert cached is not None
            tid = self._rng.getrandbits(32)
            reply = await self._send(url, transport, proto, build(cached[0], tid), tid, attempt)
            if reply is None:
                attempt += 1
                continue
            if isinstance(reply, ErrorReply):
                if not fresh and not retried_stale:
                    # Maybe the tracker restarted and forgot our id: connect once more.
                    self._ids.pop(addr, None)
                    retried_stale = True
                    continue
                raise TrackerError(f"{url}: tracker refused the request: {reply.message}")
            return reply

    async def _send(
        self,
        url: str,
        transport: asyncio.DatagramTransport,
        proto: _Endpoint,
        packet: bytes,
        tid: int,
        attempt: int,
    ) -> _Reply | None:
        """One request and its answer; ``None`` on timeout (the caller retries)."""
        if attempt > self.max_retries:
            total = sum(self.base_timeout * 2**n for n in range(self.max_retries + 1))
            raise TrackerError(
                f"{url}: tracker did not answer ({self.max_retries + 1} tries, {total:g} s)"
            )
        fut: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        proto.waiting = (tid, fut)
        transport.sendto(packet)
        try:
            reply: _Reply = await self._wait(fut, self.base_timeout * 2**attempt)
            return reply
        except TimeoutError:
            return None
        except UdpPacketError as exc:
            raise TrackerError(f"{url}: tracker sent a malformed answer ({exc})") from None
        except OSError as exc:
            raise TrackerError(f"{url}: cannot reach tracker ({exc})") from None
        finally:
            proto.waiting = None
