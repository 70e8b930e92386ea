"""Stand-alone DHT nodes of ours in one process: the local DHT for CLI and libtorrent tests
(never a public router).

Usage: ``python dhtrouter.py HOST [HOST ...]`` starts one node per loopback HOST, every
one after the first bootstrapping from the first. It prints
``{"event": "listening", "port": P, "node_id": HEX}`` for the first node (the bootstrap
address to give everyone else), then every second
``{"event": "status", "nodes": [...], "peers_stored": [...]}``, until SIGTERM.

More than one node matters with libtorrent: it never puts its bootstrap ("router") nodes in
its routing table, so in a network of router + two peers an announce stored only at the
router would be missed by libtorrent's later lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import sys

from swarmhub.discovery.dht import Config, DhtNode


async def main(hosts: list[str]) -> None:
    assert all(ipaddress.ip_address(h).is_loopback for h in hosts), "only 127.0.0.0/8"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            DhtNode(hosts[0], 0, config=Config(query_timeout=1.0)))
        nodes = [first]
        for h in hosts[1:]:
            nodes.append(await stack.enter_async_context(
                DhtNode(h, 0, bootstrap=[first.addr], config=Config(query_timeout=1.0))))
        print(json.dumps({"event": "listening", "port": first.port,
                          "node_id": first._core().node_id.hex()}), flush=True)
        while not stop.is_set():
            cores = [n._core() for n in nodes]
            print(json.dumps({"event": "status", "nodes": [len(c.table) for c in cores],
                              "peers_stored": [len(c.store) for c in cores]}), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
