"""The node's saved state: a small JSON file (never pickle), written atomically.

It holds what a restart needs (our id and the nodes we knew, so the next start does not
depend on the bootstrap routers) and what ``swarmhub dht status`` shows (routing table per
bucket, lookups, traffic, the process that wrote it and when).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from swarmhub.discovery.dht.core import DhtCore
from swarmhub.discovery.dht.krpc import NodeInfo

__all__ = ["MAX_SAVED_NODES", "load_state", "save_state", "snapshot"]

FORMAT = 1
MAX_SAVED_NODES = 200


def snapshot(core: DhtCore, *, addr: tuple[str, int], wall_time: float,
             lookup_ms: list[float]) -> dict[str, Any]:
    s = core.stats
    lat = sorted(lookup_ms)
    return {
        "format": FORMAT,
        "node_id": core.node_id.hex(),
        "pid": os.getpid(),
        "address": f"{addr[0]}:{addr[1]}",
        "saved_at": wall_time,
        "external_ip": core.external_ip,
        "nodes": [[e.id.hex(), e.addr[0], e.addr[1]] for e in core.table
                  if e.fails == 0 and e.last_response is not None][:MAX_SAVED_NODES],
        "buckets": [list(b) for b in core.table.sizes()],
        "peers_stored": len(core.store),
        "torrents_stored": core.store.num_hashes,
        "lookups": {"started": s.lookups_started, "done": s.lookups_done,
                    "median_ms": round(lat[len(lat) // 2], 1) if lat else None},
        "traffic": {"packets_in": s.packets_in, "packets_out": s.packets_out,
                    "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
                    "queries_in": dict(s.queries_in), "queries_out": dict(s.queries_out),
                    "responses_in": s.responses_in, "errors_in": s.errors_in,
                    "timeouts": s.timeouts, "malformed": s.malformed,
                    "rate_limited": s.rate_limited, "unsolicited": s.unsolicited,
                    "bad_tokens": s.bad_tokens},
    }


def save_state(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: Path) -> tuple[bytes | None, list[NodeInfo], dict[str, Any]]:
    """``(node id, nodes, raw dict)`` from ``path``; a missing or broken file gives
    ``(None, [], {})`` (the state is a cache: losing it only costs a slower start)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, [], {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None, [], {}
    node_id: bytes | None = None
    try:
        raw = bytes.fromhex(str(data.get("node_id", "")))
        node_id = raw if len(raw) == 20 else None
    except ValueError:
        pass
    nodes = []
    for item in data.get("nodes", [])[:MAX_SAVED_NODES]:
        try:
            nid, ip, port = bytes.fromhex(item[0]), str(item[1]), int(item[2])
        except (ValueError, TypeError, IndexError):
            continue
        if len(nid) == 20 and 0 < port < 65536:
            nodes.append(NodeInfo(nid, (ip, port)))
    return node_id, nodes, data
