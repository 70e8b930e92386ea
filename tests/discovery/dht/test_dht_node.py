"""Real UDP on loopback: twenty of our nodes, each on its own 127.0.0.x, find each other's
announces; the routing table survives a restart; hostile datagrams leave a node healthy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
from pathlib import Path

from swarmhub.bencode import bdecode, bencode
from swarmhub.discovery.dht import Config, DhtNode
from swarmhub.discovery.dht.storage import QueryLimiter

H = bytes(range(100, 120))
FAST = Config(query_timeout=1.0)


def _ip(i: int) -> str:
    return f"127.0.3.{i + 1}"


async def _swarm(n: int, stack: contextlib.AsyncExitStack) -> list[DhtNode]:
    first = await stack.enter_async_context(
        DhtNode(_ip(0), 0, config=FAST, rng=random.Random(0)))
    nodes = [first]
    for i in range(1, n):
        node = DhtNode(_ip(i), 0, bootstrap=[first.addr], config=FAST,
                       rng=random.Random(i))
        assert all(h.startswith("127.") for h, _ in node.bootstrap)  # never a public router
        nodes.append(await stack.enter_async_context(node))
    for node in nodes[1:]:
        await node.wait_bootstrapped(1, timeout=10)
    for node in nodes:  # a second round: late joiners are known to early ones
        await node.find_node(node._core().node_id, timeout=10)
    return nodes


async def test_twenty_nodes_find_an_announced_peer() -> None:
    assert os.environ.get("SWARMHUB_DHT_LOCAL_ONLY") == "1"
    async with contextlib.AsyncExitStack() as stack:
        nodes = await _swarm(20, stack)
        assert all(len(n._core().table) >= 5 for n in nodes)
        done = await nodes[5].get_peers(H, announce_port=40000, timeout=10)
        assert done.announced >= 1
        found = await nodes[17].get_peers(H, timeout=10)
        assert (_ip(5), 40000) in found.peers
        status = nodes[17].status()
        assert status["lookups"]["done"] >= 2 and status["traffic"]["packets_in"] > 0
        assert all(n.dropped_nonlocal == 0 for n in nodes)


async def test_routing_table_is_saved_as_json_and_reloaded(tmp_path: Path) -> None:
    state = tmp_path / "dht.json"
    async with contextlib.AsyncExitStack() as stack:
        nodes = await _swarm(6, stack)
        async with DhtNode("127.0.3.50", 0, bootstrap=[nodes[0].addr], state_file=state,
                           config=FAST) as node:
            await node.wait_bootstrapped(3, timeout=10)
            first_id = node._core().node_id
        saved = json.loads(state.read_text())
        assert saved["node_id"] == first_id.hex() and len(saved["nodes"]) >= 3
        # no bootstrap list the second time: the saved nodes are enough
        async with DhtNode("127.0.3.50", 0, state_file=state, config=FAST) as again:
            assert again._core().node_id == first_id
            await again.wait_bootstrapped(3, timeout=10)


async def test_a_broken_state_file_costs_only_a_fresh_start(tmp_path: Path) -> None:
    state = tmp_path / "dht.json"
    state.write_text("{not json")
    async with DhtNode("127.0.3.60", 0, state_file=state, config=FAST) as node:
        assert len(node._core().table) == 0
    assert json.loads(state.read_text())["format"] == 1


class _FrozenLimiter:
    """A node's query allowance seen at one instant (see the hostile-datagram test)."""

    def __init__(self, real: QueryLimiter, at: float) -> None:
        self.real, self.at = real, at

    def allow(self, ip: str, now: float) -> bool:
        return self.real.allow(ip, self.at)


async def test_hostile_datagrams_leave_the_node_healthy() -> None:
    async with contextlib.AsyncExitStack() as stack:
        nodes = await _swarm(5, stack)
        target = nodes[0]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.3.99", 0))
        sock.setblocking(False)
        try:
            rng = random.Random(7)
            junk = [rng.randbytes(rng.randrange(1, 200)) for _ in range(200)]
            junk += [b"d" + b"1:x" * 3000 + b"e", b"x" * 9000]
            junk += [bencode({b"t": b"aa", b"y": b"q", b"q": b"announce_peer",
                              b"a": {b"id": b"\x01" * 20, b"info_hash": H, b"port": 1,
                                     b"token": b"forged"}})] * 50
            junk += [bencode({b"t": b"ab", b"y": b"q", b"q": b"ping",
                              b"a": {b"id": b"\x02" * 20}})] * 2000
            core = target._core()
            loop = asyncio.get_running_loop()
            # The flood meets the per-address allowance at one instant: it spends one burst
            # and not a query more, however long a loaded machine takes to deliver it.
            limiter = core.limiter
            core.limiter = _FrozenLimiter(limiter, loop.time())  # type: ignore[assignment]
            deadline = loop.time() + 60  # only guards against a node that stops reading
            start = core.stats.packets_in
            for i in range(0, len(junk), 32):  # paced: the kernel drops a burst past its buffer
                for data in junk[i:i + 32]:
                    sock.sendto(data, target.addr)
                while core.stats.packets_in - start < min(len(junk), i + 32) * 0.9 \
                        and loop.time() < deadline:
                    await asyncio.sleep(0.005)
            core.limiter = limiter
            assert core.stats.malformed >= 150
            assert core.stats.rate_limited >= 1500
            assert len(core.store) == 0
            replies = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    # answers only (the node may also ping the "node" the flood claims to be)
                    replies += bdecode(sock.recv(65536)).get(b"y") in (b"r", b"e")
            # no amplification towards the flooder: every answer spent one of its burst
            print(f"\n{core.stats.rate_limited} queries rate-limited, {replies} answered")
            assert replies <= limiter.burst
            # still serving everyone else
            await target.get_peers(H, announce_port=1234, timeout=10)
            found = await nodes[3].get_peers(H, timeout=10)
            assert (target.addr[0], 1234) in found.peers
        finally:
            sock.close()
