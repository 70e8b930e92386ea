"""Mainline DHT on loopback: lookup latency, messages per lookup, memory per node, and the
incoming query capacity of one node on one core.

    .venv/bin/python bench/dht.py [--nodes 150] [--lookups 60] [--seconds 5] [--window 1024]
        [--only network|capacity] [--no-anchor]

Network: ``--nodes`` DhtNodes of ours in one process (one asyncio loop, so lookups share
the CPU with every other node's answers), each on its own 127.0.8.x / 127.0.9.x address,
all bootstrapping from the first. A tenth of them announce random info hashes; then
``--lookups`` get_peers lookups from random nodes for those hashes report latency (median,
p95), queries sent per lookup and whether the announced peer was found. Memory per node is
the process RSS growth divided by the node count.

Capacity: one node in its own process (pinned to CPU 0 when there are several), with the
per-address rate limit lifted; a load generator in this process keeps ``--window`` queries
outstanding (a mix of ping, find_node and get_peers, from 8 source addresses) for
``--seconds`` and counts the answers. The node's CPU time is read from /proc: a node below
~0.9 core means the generator was the bottleneck and the figure is a lower bound.

Only 127.0.0.0/8 is used; every loop is bounded. The anchor, a libtorrent-only network
of the same size (``--no-anchor`` skips it) runs after ours: libtorrent reports peers as
replies arrive, so its latency is "to the first peer", the same column ours prints next
to the whole lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.bencode import bencode
from swarmhub.discovery.dht import Config, DhtNode

CAPACITY_HOST = "127.0.10.1"


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _addr(i: int) -> str:
    return f"127.0.{8 + i // 250}.{i % 250 + 1}"


async def network(n: int, lookups: int, seed: int) -> None:
    rng = random.Random(seed)
    rss0 = _rss_kib()
    cfg = Config(query_timeout=2.0)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(DhtNode(_addr(0), 0, config=cfg,
                                                        rng=random.Random(seed)))
        nodes = [first]
        for i in range(1, n):
            nodes.append(await stack.enter_async_context(DhtNode(
                _addr(i), 0, bootstrap=[first.addr], config=cfg, rng=random.Random(seed + i))))
        t0 = time.perf_counter()
        for node in nodes[1:]:
            await node.wait_bootstrapped(1, timeout=30)
        for node in nodes:  # a second pass, so early joiners learn the late ones
            await node.find_node(node._core().node_id, timeout=30)
        boot = time.perf_counter() - t0
        sizes = [len(nd._core().table) for nd in nodes]
        hashes = {}
        for i, node in enumerate(rng.sample(nodes, max(1, n // 10))):
            h = rng.randbytes(20)
            await node.get_peers(h, announce_port=20000 + i, timeout=30)
            hashes[h] = (node.addr[0], 20000 + i)
        rss = _rss_kib()
        lat, first, msgs, found = [], [], [], 0
        for _ in range(lookups):
            h = rng.choice(list(hashes))
            node = rng.choice(nodes)
            done = await node.get_peers(h, timeout=30)
            lat.append((done.finished - done.started) * 1000)
            if done.first_peers is not None:
                first.append((done.first_peers - done.started) * 1000)
            msgs.append(done.queries)
            found += hashes[h] in done.peers
    lat.sort()
    print(f"network: {n} nodes bootstrapped in {boot:.1f} s; routing table size median "
          f"{statistics.median(sizes):.0f} (min {min(sizes)}, max {max(sizes)})")
    print(f"  get_peers lookups: {lookups}, found the announced peer in {found} "
          f"({100 * found / lookups:.0f} %)")
    first.sort()
    print(f"  whole lookup: median {statistics.median(lat):.1f} ms, p95 {_p95(lat):.1f} ms; "
          f"to the first peer: median {statistics.median(first or [0]):.1f} ms, p95 "
          f"{_p95(first or [0]):.1f} ms")
    print(f"  queries per lookup median {statistics.median(msgs):.0f}, max {max(msgs)}")
    print(f"  memory: {(rss - rss0) / n:.0f} KiB RSS per node (process grew "
          f"{(rss - rss0) / 1024:.1f} MiB for {n} nodes)")


def _p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def lt_network(n: int, lookups: int, seed: int) -> None:
    """The anchor: ``n`` libtorrent sessions, DHT only, in this process (its own threads).
    libtorrent reports peers as replies arrive (dht_get_peers_reply_alert), so its figure
    is the time to the first peer; memory is RSS growth per session."""
    try:
        import libtorrent as lt
    except ImportError:
        print("libtorrent anchor: skipped (pip install libtorrent)")
        return
    rng = random.Random(seed)
    rss0 = _rss_kib()
    mask = (lt.alert.category_t.dht_notification | lt.alert.category_t.status_notification
            | lt.alert.category_t.dht_operation_notification)

    def make(i: int, boot: str) -> lt.session:
        host = f"127.0.12.{i % 250 + 1}" if i < 250 else f"127.0.13.{i % 250 + 1}"
        return lt.session({
            "enable_dht": True, "listen_interfaces": f"{host}:0", "outgoing_interfaces": host,
            "dht_bootstrap_nodes": boot, "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False, "dht_ignore_dark_internet": False,
            "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
            "enable_incoming_utp": False, "enable_outgoing_utp": False, "aio_threads": 1,
            "hashing_threads": 1, "alert_mask": mask})

    first = make(0, "")
    port, deadline = None, time.monotonic() + 10
    while port is None and time.monotonic() < deadline:
        first.wait_for_alert(100)
        for a in first.pop_alerts():
            if isinstance(a, lt.listen_succeeded_alert):
                port = a.port
    if port is None:
        print("libtorrent anchor: the first session did not listen")
        return
    sessions = [first] + [make(i, f"127.0.12.1:{port}") for i in range(1, n)]
    time.sleep(5.0)  # libtorrent has no cheap "bootstrapped" signal per session
    hashes: dict[str, int] = {}
    for i, ses in enumerate(rng.sample(sessions, max(1, n // 10))):
        h = rng.randbytes(20)
        ses.dht_announce(lt.sha1_hash(h), 20000 + i, 0)
        hashes[h.hex()] = 20000 + i
    time.sleep(3.0)
    for ses in sessions:
        ses.pop_alerts()
    rss = _rss_kib()
    lat, found = [], 0
    for _ in range(lookups):
        h = rng.choice(list(hashes))
        ses = rng.choice(sessions)
        t = time.perf_counter()
        ses.dht_get_peers(lt.sha1_hash(bytes.fromhex(h)))
        got = None
        while got is None and time.perf_counter() - t < 10:
            ses.wait_for_alert(20)
            for a in ses.pop_alerts():
                if isinstance(a, lt.dht_get_peers_reply_alert) and str(a.info_hash) == h:
                    got = a
        lat.append((time.perf_counter() - t) * 1000)
        found += got is not None and any(p[1] == hashes[h] for p in got.peers())
    print(f"libtorrent: {n} sessions; to the first peer: median "
          f"{statistics.median(lat):.1f} ms, p95 {_p95(lat):.1f} ms; found in "
          f"{100 * found / lookups:.0f} %; {(rss - rss0) / n:.0f} KiB RSS per session")
    del sessions, first


def _serve(port_q: mp.Queue[int], stop: mp.Event) -> None:  # type: ignore[type-arg]
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})

    async def run() -> None:
        cfg = Config(query_rate=1e9, query_burst=1e9)
        async with DhtNode(CAPACITY_HOST, 0, config=cfg) as node:
            core = node._core()
            rng = random.Random(1)
            for i in range(300):  # a table and a store to answer from
                core.table.heard_from(rng.randbytes(20), (f"127.0.11.{i % 250 + 1}",
                                                          6000 + i), 0.0, response=True)
            port_q.put(node.port)
            while not stop.is_set():
                await asyncio.sleep(0.1)

    asyncio.run(run())


class _Gen(asyncio.DatagramProtocol):
    """Keeps ``window`` queries outstanding; a query unanswered for 0.5 s (the kernel drops
    datagrams when a socket buffer is full) is counted lost and replaced, so the window
    does not shrink over the run."""

    def __init__(self, target: tuple[str, int], window: int, rng: random.Random) -> None:
        self.target = target
        self.window = window
        self.answered = 0
        self.lost = 0
        self.counting = False
        ids = [rng.randbytes(20) for _ in range(3)]
        self.templates = [
            bencode({b"a": {b"id": ids[0]}, b"q": b"ping", b"t": b"\x00\x00", b"y": b"q"}),
            bencode({b"a": {b"id": ids[1], b"target": rng.randbytes(20)}, b"q": b"find_node",
                     b"t": b"\x00\x00", b"y": b"q"}),
            bencode({b"a": {b"id": ids[2], b"info_hash": rng.randbytes(20)},
                     b"q": b"get_peers", b"t": b"\x00\x00", b"y": b"q"}),
        ]
        self.offsets = [t.index(b"1:t2:") + 5 for t in self.templates]
        self.i = 0
        self.sent_at: dict[bytes, float] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.top_up()

    def top_up(self) -> None:
        now = time.monotonic()
        for tid in [t for t, at in self.sent_at.items() if now - at > 0.5]:
            del self.sent_at[tid]
            self.lost += 1
        while len(self.sent_at) < self.window:
            self.send(now)

    def send(self, now: float) -> None:
        self.i = (self.i + 1) & 0xFFFF
        tid = self.i.to_bytes(2, "big")
        k = self.i % 3
        tpl, off = self.templates[k], self.offsets[k]
        self.sent_at[tid] = now
        assert self.transport is not None
        self.transport.sendto(tpl[:off] + tid + tpl[off + 2:], self.target)

    def datagram_received(self, data: bytes, addr: object) -> None:
        i = data.find(b"1:t2:")
        if i < 0 or self.sent_at.pop(data[i + 5:i + 7], None) is None:
            return
        if self.counting:
            self.answered += 1
        self.send(time.monotonic())


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        parts = fh.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def capacity(seconds: float, window: int) -> None:
    ctx = mp.get_context("spawn")
    port_q: mp.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(port_q, stop), daemon=True)
    proc.start()
    try:
        port = port_q.get(timeout=30)
        loop = asyncio.get_running_loop()
        gens = []
        for i in range(8):
            _, gen = await loop.create_datagram_endpoint(
                lambda i=i: _Gen((CAPACITY_HOST, port), max(1, window // 8),
                                 random.Random(i)),
                local_addr=(f"127.0.10.{20 + i}", 0))
            gens.append(gen)
        async def top_up() -> None:
            while True:
                await asyncio.sleep(0.1)
                for g in gens:
                    g.top_up()

        refill = asyncio.create_task(top_up())
        await asyncio.sleep(1.0)  # warm up
        assert proc.pid is not None
        cpu0, gcpu0, t0 = _cpu_s(proc.pid), time.process_time(), time.perf_counter()
        for g in gens:
            g.counting = True
        await asyncio.sleep(seconds)
        for g in gens:
            g.counting = False
        elapsed = time.perf_counter() - t0
        node_cpu = (_cpu_s(proc.pid) - cpu0) / elapsed
        gen_cpu = (time.process_time() - gcpu0) / elapsed
        answered = sum(g.answered for g in gens)
        refill.cancel()
        for g in gens:
            assert g.transport is not None
            g.transport.close()
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    print(f"capacity: {answered / elapsed:,.0f} queries/s answered by one node "
          f"(window {window}, {seconds:g} s; node CPU {node_cpu:.2f} core, generator "
          f"{gen_cpu:.2f} core){'  [lower bound: node not saturated]' if node_cpu < 0.9 else ''}")
    print(f"  aim >= 5,000 queries/s: {'met' if answered / elapsed >= 5000 else 'NOT met'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=150)
    p.add_argument("--lookups", type=int, default=60)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=["network", "capacity"])
    p.add_argument("--no-anchor", action="store_true", help="skip the libtorrent network")
    args = p.parse_args()
    if not 2 <= args.nodes <= 1000:
        p.error("--nodes must be between 2 and 1000")
    if args.only != "capacity":
        asyncio.run(network(args.nodes, args.lookups, args.seed))
        if not args.no_anchor:
            lt_network(args.nodes, args.lookups, args.seed)
    if args.only != "network":
        asyncio.run(capacity(args.seconds, args.window))


if __name__ == "__main__":
    main()
