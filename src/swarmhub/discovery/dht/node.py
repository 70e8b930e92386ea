"""The asyncio driver of a DHT node: one UDP socket, one timer, around :class:`DhtCore`.

All protocol decisions live in the sans-IO core; this module only moves datagrams, runs
``tick`` four times a second, resolves bootstrap host names, turns finished lookups into
awaitable results and saves the state file every minute and on close. ``clock`` and
``rng`` are injectable like everywhere else in swarmhub.

Safety valve for tests and the lab: with ``SWARMHUB_DHT_LOCAL_ONLY=1`` in the environment
(tests/conftest.py sets it) datagrams to anything outside 127.0.0.0/8 are dropped and
counted, whatever the bootstrap list says; a CIDR list (``127.0.0.0/8,10.9.0.0/16``)
allows a lab's own subnet instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from swarmhub.discovery.dht.core import Config, DhtCore, LookupDone
from swarmhub.discovery.dht.krpc import NodeInfo
from swarmhub.discovery.dht.nodeid import is_local, node_id_for_ip, random_id
from swarmhub.discovery.dht.state import load_state, save_state, snapshot
from swarmhub.errors import SwarmhubError

__all__ = ["PUBLIC_ROUTERS", "DhtNode", "parse_bootstrap"]

log = logging.getLogger(__name__)

Addr = tuple[str, int]

#: The routers mainstream clients bootstrap from; only ever the default of a user's run.
PUBLIC_ROUTERS = ("router.bittorrent.com:6881,dht.transmissionbt.com:6881,"
                  "router.utorrent.com:6881")
TICK = 0.25
SAVE_EVERY = 15.0  # also what `dht status` shows: keep it fresh


def parse_bootstrap(text: str) -> list[Addr]:
    """``host:port,host:port`` into pairs (names are resolved later, when the node starts)."""
    out: list[Addr] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SwarmhubError(f"DHT bootstrap entry {part!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks() -> list[Net] | None:
    """``SWARMHUB_DHT_LOCAL_ONLY``: ``1`` allows 127.0.0.0/8 only; a comma-separated CIDR
    list allows those (a lab's own subnet); unset or empty: no restriction."""
    raw = os.environ.get("SWARMHUB_DHT_LOCAL_ONLY", "").strip()
    if not raw or raw == "0":
        return None
    if raw == "1":
        return [ipaddress.ip_network("127.0.0.0/8")]
    try:
        return [ipaddress.ip_network(p.strip()) for p in raw.split(",") if p.strip()]
    except ValueError:
        return [ipaddress.ip_network("127.0.0.0/8")]  # unreadable: the strictest choice


def _allowed(ip: str, nets: list[Net]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, node: DhtNode) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.node._received(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("DHT socket error: %s", exc)  # ICMP unreachable: the query times out


class DhtNode:
    """A Mainline DHT node on ``host:port`` (port 0: any free port).

    ``bootstrap``: routers or nodes to join through; ``state_file``: where the routing
    table is saved and read back; ``load_from``: read the table from this file instead
    and keep a fresh id (a second process sharing a state folder: two nodes must never
    share an id); ``state_file`` is then removed on close.
    table is saved and read back. Use as ``async with DhtNode(...) as node``.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 0, *,
                 bootstrap: list[Addr] | None = None, state_file: Path | None = None,
                 load_from: Path | None = None,
                 config: Config | None = None, node_id: bytes | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.requested_port = port
        self.bootstrap = list(bootstrap or [])
        self.state_file = state_file
        self.load_from = load_from
        self.config = config or Config()
        self.rng = rng or random.Random()
        self.clock = clock
        self._node_id = node_id
        self.core: DhtCore | None = None
        self.addr: Addr = (host, port)
        self.dropped_nonlocal = 0
        self.lookup_ms: list[float] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._waiters: dict[int, tuple[asyncio.Future[LookupDone], float]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> DhtNode:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self.addr[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        saved_id: bytes | None = None
        saved_nodes: list[NodeInfo] = []
        if self.load_from is not None:
            _, saved_nodes, _ = load_state(self.load_from)
        elif self.state_file is not None:
            saved_id, saved_nodes, _ = load_state(self.state_file)
        node_id = self._node_id or saved_id or (
            random_id(self.rng) if is_local(self.host) or self.host in ("0.0.0.0", "::")
            else node_id_for_ip(self.host, self.rng))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.requested_port))
        self._transport = transport
        sock = transport.get_extra_info("sockname")
        self.addr = (self.host, int(sock[1]))
        routers = await self._resolve(self.bootstrap)
        self.core = DhtCore(node_id, self.rng, self.clock(), config=self.config,
                            bootstrap=routers, own_addr=self.addr)
        self.core.known_nodes = saved_nodes
        log.info("DHT node %s on %s:%d, %d saved nodes, bootstrap %s", node_id.hex(),
                 *self.addr, len(saved_nodes), routers)
        if routers or saved_nodes:
            self.core.bootstrap(self.clock())
        self._flush()
        self._task = asyncio.create_task(self._ticker(), name="dht-tick")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut, _ in self._waiters.values():
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        self.save()
        if self.load_from is not None and self.state_file is not None:
            with contextlib.suppress(OSError):
                self.state_file.unlink()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # -- work ---------------------------------------------------------------------------

    async def get_peers(self, info_hash: bytes, *, announce_port: int | None = None,
                        timeout: float = 30.0) -> LookupDone:
        """Look ``info_hash`` up; with ``announce_port`` also announce us (0: implied
        port, i.e. this UDP port). Raises TimeoutError after ``timeout`` seconds."""
        core = self._core()
        return await self._wait(core.get_peers(info_hash, self.clock(),
                                               announce_port=announce_port), timeout)

    async def find_node(self, target: bytes, *, timeout: float = 30.0) -> LookupDone:
        return await self._wait(self._core().find_node(target, self.clock()), timeout)

    async def wait_bootstrapped(self, min_nodes: int = 1, timeout: float = 10.0) -> int:
        """Poll (bounded) until the table holds ``min_nodes``; returns its size."""
        deadline = self.clock() + timeout
        while len(self._core().table) < min_nodes:
            if self.clock() >= deadline:
                raise TimeoutError(f"DHT: fewer than {min_nodes} nodes after {timeout:g} s")
            await asyncio.sleep(0.05)
        return len(self._core().table)

    def status(self) -> dict[str, Any]:
        data = snapshot(self._core(), addr=self.addr, wall_time=time.time(),
                        lookup_ms=self.lookup_ms)
        data["traffic"]["dropped_nonlocal"] = self.dropped_nonlocal
        return data

    def save(self) -> None:
        if self.state_file is None or self.core is None:
            return
        try:
            save_state(self.state_file, self.status())
        except OSError as exc:
            log.warning("could not save DHT state to %s: %s", self.state_file, exc)

    # -- plumbing -----------------------------------------------------------------------

    def _core(self) -> DhtCore:
        if self.core is None:
            raise SwarmhubError("the DHT node is not started")
        return self.core

    async def _wait(self, lid: int, timeout: float) -> LookupDone:
        fut: asyncio.Future[LookupDone] = asyncio.get_running_loop().create_future()
        self._waiters[lid] = (fut, self.clock())
        self._flush()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self._waiters.pop(lid, None)

    def _received(self, data: bytes, addr: Addr) -> None:
        if self.core is None:
            return
        self.core.receive(data, addr, self.clock())
        self._flush()

    def _flush(self) -> None:
        core = self.core
        if core is None:
            return
        if self._transport is not None:
            nets = allowed_networks()
            for data, addr in core.take_datagrams():
                if nets is not None and not _allowed(addr[0], nets):
                    self.dropped_nonlocal += 1
                    continue
                self._transport.sendto(data, addr)
        for ev in core.take_events():
            waiter = self._waiters.get(ev.lookup_id)
            if waiter is not None:
                fut, started = waiter
                self.lookup_ms.append((self.clock() - started) * 1000)
                del self.lookup_ms[:-1000]
                if not fut.done():
                    fut.set_result(ev)

    async def _ticker(self) -> None:
        next_save = self.clock() + SAVE_EVERY
        while True:
            await asyncio.sleep(TICK)
            try:
                now = self.clock()
                self._core().tick(now)
                self._flush()
                if now >= next_save:
                    next_save = now + SAVE_EVERY
                    if self._core().adopt_external_id():
                        log.info("DHT: our address is %s; new BEP 42 node id %s",
                                 self._core().external_ip, self._core().node_id.hex())
                    self.save()
            except Exception:  # a bug must not stop the node silently
                log.exception("DHT tick failed")

    async def _resolve(self, addrs: list[Addr]) -> list[Addr]:
        loop = asyncio.get_running_loop()
        out: list[Addr] = []
        nets = allowed_networks()
        for host, port in addrs:
            if nets is not None and not _allowed(host, nets):
                log.warning("SWARMHUB_DHT_LOCAL_ONLY: not resolving bootstrap %s", host)
                continue
            try:
                ipaddress.IPv4Address(host)
                out.append((host, port))
                continue
            except ValueError:
                pass
            try:
                async with asyncio.timeout(5):
                    infos = await loop.getaddrinfo(host, port, family=2, type=2)
            except (OSError, TimeoutError) as exc:
                log.warning("DHT bootstrap %s:%d: %s", host, port, exc)
                continue
            out.extend((str(i[4][0]), int(i[4][1])) for i in infos[:2])
        return out
