"""A stand-alone DHT node of ours, as a process: the local bootstrap node for CLI and
libtorrent tests (never a public router).

Usage: python dhtrouter.py HOST [BOOTSTRAP_HOST:PORT,...] -- prints
``{"event": "listening", "port": P, "node_id": HEX}`` and runs until SIGTERM; every second
it prints ``{"event": "status", "nodes": N, "peers_stored": M}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import sys

from swarmhub.discovery.dht import Config, DhtNode, parse_bootstrap


async def main(host: str, bootstrap: str) -> None:
    assert ipaddress.ip_address(host).is_loopback, "tests only use 127.0.0.0/8"
    routers = parse_bootstrap(bootstrap)
    assert all(ipaddress.ip_address(h).is_loopback for h, _ in routers)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with DhtNode(host, 0, bootstrap=routers, config=Config(query_timeout=1.0)) as node:
        core = node._core()
        print(json.dumps({"event": "listening", "port": node.port,
                          "node_id": core.node_id.hex()}), flush=True)
        while not stop.is_set():
            print(json.dumps({"event": "status", "nodes": len(core.table),
                              "peers_stored": len(core.store),
                              "queries_in": dict(core.stats.queries_in)}), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""))
