"""BEP 5 Mainline DHT: a sans-IO core (codec, routing table, storage, lookups) and an
asyncio driver (:class:`DhtNode`); BEP 42 node ids, BEP 43 read-only flag honoured."""

from __future__ import annotations

from swarmhub.discovery.dht.core import Config, DhtCore, LookupDone, Stats
from swarmhub.discovery.dht.krpc import KrpcError, NodeInfo
from swarmhub.discovery.dht.lookup import Lookup, LookupKind
from swarmhub.discovery.dht.node import PUBLIC_ROUTERS, DhtNode, parse_bootstrap
from swarmhub.discovery.dht.routing import RoutingTable

__all__ = [
    "PUBLIC_ROUTERS",
    "Config",
    "DhtCore",
    "DhtNode",
    "KrpcError",
    "Lookup",
    "LookupDone",
    "LookupKind",
    "NodeInfo",
    "RoutingTable",
    "Stats",
    "parse_bootstrap",
]
