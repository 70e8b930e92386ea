"""Where the hub's tracker keeps its swarms: this process's memory, or Redis.

:class:`SwarmState` is what the hub's handlers call (async, because a shared store is a
network hop away). :class:`LocalSwarmState` wraps today's in-memory, sans-IO
:class:`~swarmhub.hub.tracker.TrackerState` (one process, the embedded default);
:class:`RedisSwarmState` keeps every swarm in Redis, so announces that reach different
hub processes see one swarm (``--swarm-state redis://host:port/db``).

Redis layout, per swarm (``P`` = prefix + hex info hash), each key expiring
``2 x peer_ttl`` after the swarm's last announce:

- ``P:peers`` hash: ``ip|port`` -> ``peer-id-hex ip port`` (who to hand out),
- ``P:seen`` sorted set: ``ip|port`` by last announce (wall-clock seconds), which is how
  peers expire: every announce first drops the swarm's entries older than ``peer_ttl``,
- ``P:seeds`` set: the seeders among them; ``P:dl``: completed downloads (scrape),
- ``P:src:<address key>`` sorted set: one source address's entries, for the
  per-address cap (the stalest is evicted first, as in memory).

One Lua script does an announce's bookkeeping and picks the peers to hand out, in one
round trip and atomically; the peers are a random sample (``HRANDFIELD``, twice the
size for a seeder, which gets no seeders), so a seeder in a swarm of mostly seeders may
get fewer than ``numwant`` leechers. Times are wall-clock (``time.time()``):
processes' monotonic clocks differ, so the ``now`` the handlers pass is not used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from swarmhub.bencode import bencode
from swarmhub.hub.limits import address_key
from swarmhub.hub.tracker import AnnounceParams, TrackerState, default_peer_ttl, failure_body

__all__ = ["LocalSwarmState", "RedisSwarmState", "SwarmState", "open_swarm_state"]

log = logging.getLogger(__name__)


class SwarmState(Protocol):
    """The tracker's swarms as the hub's handlers use them."""

    interval: int
    min_interval: int

    async def announce(self, params: AnnounceParams, now: float) -> bytes:
        """Record one announce; the bencoded answer (or a failure body)."""
        ...

    async def stats(self, info_hash: bytes) -> tuple[int, int, int]:
        """``(complete, downloaded, incomplete)`` of one torrent (zeros when unknown)."""
        ...

    async def stats_many(self, info_hashes: Sequence[bytes]) -> list[tuple[int, int, int]]:
        """:meth:`stats` of many torrents at once (one round trip for a shared store)."""
        ...

    async def file_stats_many(
        self, files: Sequence[Sequence[bytes]]
    ) -> list[tuple[int, int]]:
        """``(seeders, leechers)`` of each file, given as the info hashes of its swarms:
        a peer (its address) counts once across them, and as a seeder if it is one in any
        (a hybrid client announces under two hashes; the hub's seeder sits in the v1-only
        swarm too). One round trip for a shared store."""
        ...

    async def purge(self, now: float) -> int:
        """Drop peers silent for longer than the peer TTL; how many went."""
        ...

    async def drop(self, info_hash: bytes, ip: str, port: int, peer_id: bytes) -> bool:
        """Remove one peer now (its access was revoked), only if it is still that peer."""
        ...

    async def share_access(self, event: dict[str, Any]) -> None:
        """Tell the hub's other processes about a seeder admission proof or revocation
        (``hub.access``): the seeder may run in another process than the tracker."""
        ...

    def access_events(self) -> AsyncIterator[dict[str, Any]]:
        """The other processes' :meth:`share_access` events, for as long as the hub runs."""
        ...

    async def close(self) -> None: ...


class LocalSwarmState:
    """The in-memory swarms of this process (:class:`TrackerState`, unchanged)."""

    def __init__(self, state: TrackerState) -> None:
        self.state = state
        self.interval = state.interval
        self.min_interval = state.min_interval

    async def announce(self, params: AnnounceParams, now: float) -> bytes:
        return self.state.announce(params, now)

    async def stats(self, info_hash: bytes) -> tuple[int, int, int]:
        return self.state.stats(info_hash)

    async def stats_many(self, info_hashes: Sequence[bytes]) -> list[tuple[int, int, int]]:
        return [self.state.stats(h) for h in info_hashes]

    async def file_stats_many(
        self, files: Sequence[Sequence[bytes]]
    ) -> list[tuple[int, int]]:
        return [self.state.file_stats(hashes) for hashes in files]

    async def purge(self, now: float) -> int:
        return self.state.purge(now)

    async def drop(self, info_hash: bytes, ip: str, port: int, peer_id: bytes) -> bool:
        return self.state.drop(info_hash, ip, port, peer_id)

    async def share_access(self, event: dict[str, Any]) -> None:
        return None  # one process: nobody else to tell

    async def access_events(self) -> AsyncIterator[dict[str, Any]]:
        return
        yield  # an async generator that ends at once

    async def close(self) -> None:
        return None


# KEYS: peers, seen, seeds, dl, src. ARGV: addr, value, peer id hex, seeder (0/1), event,
# now, peer ttl, per-source cap, key ttl (s), numwant.
# Returns {peers, seeders, downloaded, value...}: the counts, then up to numwant peers to
# hand out (a random sample; not the announcer, and for a seeder no other seeder).
_ANNOUNCE = """
local peers, seen, seeds, dl, src = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local addr, value, pid, event = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local seeder = ARGV[4] == '1'
local now, ttl, cap, keyttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
  tonumber(ARGV[9])
local function forget(a)
  redis.call('HDEL', peers, a)
  redis.call('ZREM', seen, a)
  redis.call('SREM', seeds, a)
end
local stale = redis.call('ZRANGEBYSCORE', seen, '-inf', now - ttl)
for _, a in ipairs(stale) do forget(a) end
redis.call('ZREMRANGEBYSCORE', src, '-inf', now - ttl)
local old = redis.call('HGET', peers, addr)
if event == 'stopped' and old and string.sub(old, 1, 40) ~= pid then old = false end
local was = old and redis.call('SISMEMBER', seeds, addr) == 1
if seeder and not was and (event == 'completed' or old) then redis.call('INCR', dl) end
if event == 'stopped' then
  if old then forget(addr); redis.call('ZREM', src, addr) end
else
  redis.call('HSET', peers, addr, value)
  redis.call('ZADD', seen, now, addr)
  if seeder then redis.call('SADD', seeds, addr) else redis.call('SREM', seeds, addr) end
  redis.call('ZADD', src, now, addr)
  local n = redis.call('ZCARD', src)
  if cap > 0 and n > cap then
    for _, a in ipairs(redis.call('ZRANGE', src, 0, n - cap - 1)) do
      forget(a)
      redis.call('ZREM', src, a)
    end
  end
end
for _, k in ipairs(KEYS) do redis.call('EXPIRE', k, keyttl) end
local out = {redis.call('HLEN', peers), redis.call('SCARD', seeds),
  tonumber(redis.call('GET', dl) or '0')}
local numwant = tonumber(ARGV[10])
if numwant > 0 then
  local extra = 1
  if seeder then extra = numwant + 1 end
  local sample = redis.call('HRANDFIELD', peers, numwant + extra, 'WITHVALUES')
  for i = 1, #sample, 2 do
    local a, v = sample[i], sample[i + 1]
    if string.sub(v, 1, 40) ~= pid and
        not (seeder and redis.call('SISMEMBER', seeds, a) == 1) then
      out[#out + 1] = v
      if #out - 3 >= numwant then break end
    end
  end
end
return out
"""

# KEYS: peers, seen, seeds. ARGV: addr, peer id hex. Returns 1 when removed.
_DROP = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old or string.sub(old, 1, 40) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""


# KEYS: the seen sets of a file's swarms, then their seeds sets. ARGV: the deadline (peers
# seen at or before it have expired). Returns {seeders, leechers}, each address once.
_FILE_STATS = """
local n = #KEYS / 2
local live, total, seeders = {}, 0, 0
for i = 1, n do
  for _, a in ipairs(redis.call('ZRANGEBYSCORE', KEYS[i], '(' .. ARGV[1], '+inf')) do
    if not live[a] then live[a] = 1; total = total + 1 end
  end
end
for i = n + 1, #KEYS do
  for _, a in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if live[a] == 1 then live[a] = 2; seeders = seeders + 1 end
  end
end
return {seeders, total - seeders}
"""


def _compact(ip: str, port: int) -> bytes:
    return ipaddress.ip_address(ip).packed + port.to_bytes(2, "big")


class RedisSwarmState:
    """Swarms in Redis at ``url`` (``redis://host:port/db``), shared by hub processes."""

    def __init__(
        self,
        url: str,
        *,
        interval: int = 1800,
        min_interval: int = 60,
        peer_ttl: float | None = None,
        max_numwant: int = 200,
        allowed: Callable[[bytes], bool] | None = None,
        max_peers_per_ip: int = 0,
        prefix: str = "swarmhub:swarm:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis.asyncio

        self.interval = interval
        self.min_interval = min_interval
        self.peer_ttl = default_peer_ttl(interval) if peer_ttl is None else peer_ttl
        self.max_numwant = max_numwant
        self.allowed = allowed
        self.max_peers_per_ip = max_peers_per_ip
        self.prefix = prefix
        self._clock = clock
        self._redis: Any = redis.asyncio.Redis.from_url(
            url, socket_timeout=10, socket_connect_timeout=10)
        self._announce = self._redis.register_script(_ANNOUNCE)
        self._drop = self._redis.register_script(_DROP)
        self._file_stats = self._redis.register_script(_FILE_STATS)
        #: This process, so that it skips its own access events.
        self._origin = secrets.token_hex(8)
        self._access_channel = prefix + "access"

    def _key(self, info_hash: bytes) -> str:
        return self.prefix + info_hash.hex()

    async def ping(self) -> None:
        """Fail early (at start-up) when Redis cannot be reached."""
        await self._redis.ping()

    async def announce(self, params: AnnounceParams, now: float) -> bytes:
        if self.allowed is not None and not self.allowed(params.info_hash):
            return failure_body("unregistered torrent")
        del now
        k = self._key(params.info_hash)
        addr = f"{params.ip}|{params.port}"
        seeder = params.left == 0 or (params.event == "completed" and params.left is None)
        numwant = 0 if params.event == "stopped" else min(params.numwant, self.max_numwant)
        keys = [f"{k}:peers", f"{k}:seen", f"{k}:seeds", f"{k}:dl",
                f"{k}:src:{address_key(params.ip)}"]
        pid = params.peer_id.hex()
        args: list[str | int | float] = [
            addr, f"{pid} {params.ip} {params.port}", pid, int(seeder), params.event or "",
            self._clock(), self.peer_ttl, self.max_peers_per_ip, int(2 * self.peer_ttl) + 1,
            numwant]
        total, seeders, _, *sample = await self._announce(keys=keys, args=args)
        peers: list[tuple[bytes, str, int]] = []
        for value in sample:
            pid_hex, ip, port = value.decode().split(" ")
            peers.append((bytes.fromhex(pid_hex), ip, int(port)))
        body: dict[bytes, object] = {
            b"interval": self.interval,
            b"min interval": self.min_interval,
            b"complete": int(seeders),
            b"incomplete": int(total) - int(seeders),
        }
        if params.compact:
            packed = [_compact(ip, port) for _, ip, port in peers]
            body[b"peers"] = b"".join(p for p in packed if len(p) == 6)
            v6 = b"".join(p for p in packed if len(p) != 6)
            if v6:
                body[b"peers6"] = v6
        else:
            body[b"peers"] = [
                {b"ip": ip.encode(), b"port": port}
                | ({} if params.no_peer_id else {b"peer id": pid})
                for pid, ip, port in peers
            ]
        return bencode(body)

    async def stats(self, info_hash: bytes) -> tuple[int, int, int]:
        return (await self.stats_many([info_hash]))[0]

    async def stats_many(self, info_hashes: Sequence[bytes]) -> list[tuple[int, int, int]]:
        """Stats of many torrents in one round trip (scrape, /metrics). Peers past their
        TTL are not counted even before the next announce or purge removes them."""
        deadline = self._clock() - self.peer_ttl
        pipe = self._redis.pipeline(transaction=False)
        for ih in info_hashes:
            k = self._key(ih)
            pipe.zcount(f"{k}:seen", f"({deadline}", "+inf")
            pipe.scard(f"{k}:seeds")
            pipe.get(f"{k}:dl")
        out = await pipe.execute()
        result = []
        for i in range(len(info_hashes)):
            live, seeds, dl = out[3 * i: 3 * i + 3]
            seeds = min(int(seeds), int(live))
            result.append((seeds, int(dl or 0), int(live) - seeds))
        return result

    async def file_stats_many(
        self, files: Sequence[Sequence[bytes]]
    ) -> list[tuple[int, int]]:
        """Counted in Redis (addresses never leave it), one script call per file, all
        in one pipeline."""
        deadline = self._clock() - self.peer_ttl
        pipe = self._redis.pipeline(transaction=False)
        for hashes in files:
            keys = [self._key(h) for h in hashes]
            await self._file_stats(
                keys=[f"{k}:seen" for k in keys] + [f"{k}:seeds" for k in keys],
                args=[deadline], client=pipe)
        out = await pipe.execute()
        return [(int(s), int(leechers)) for s, leechers in out]

    async def purge(self, now: float) -> int:
        """Drop expired entries of every swarm (announces do it per swarm, too)."""
        del now
        deadline = self._clock() - self.peer_ttl
        gone = 0
        async for key in self._redis.scan_iter(match=f"{self.prefix}*:seen", count=500):
            base = key.decode().removesuffix(":seen")
            stale = await self._redis.zrangebyscore(key, "-inf", deadline)
            if not stale:
                continue
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(f"{base}:peers", *stale)
            pipe.srem(f"{base}:seeds", *stale)
            pipe.zrem(key, *stale)
            await pipe.execute()
            gone += len(stale)
        return gone

    async def drop(self, info_hash: bytes, ip: str, port: int, peer_id: bytes) -> bool:
        k = self._key(info_hash)
        done = await self._drop(keys=[f"{k}:peers", f"{k}:seen", f"{k}:seeds"],
                                args=[f"{ip}|{port}", peer_id.hex()])
        return bool(done)

    async def share_access(self, event: dict[str, Any]) -> None:
        message = json.dumps({**event, "from": self._origin})
        await self._redis.publish(self._access_channel, message)

    async def access_events(self) -> AsyncIterator[dict[str, Any]]:
        """Pub/sub on one channel; resubscribes after a lost connection (events sent
        meanwhile are lost: their peers are admitted at their next announce)."""
        from redis import exceptions as redis_errors

        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._access_channel)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    event = json.loads(msg["data"])
                    if event.get("from") != self._origin:
                        yield event
            except (OSError, ValueError, redis_errors.RedisError) as exc:
                log.warning("access events from Redis lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        await self._redis.aclose()


def open_swarm_state(spec: str | None, state: TrackerState) -> SwarmState:
    """``spec`` None: ``state`` itself, in memory; ``redis://...``: Redis, with ``state``'s
    settings (interval, TTL, caps, whitelist)."""
    if spec is None or spec == "memory":
        return LocalSwarmState(state)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisSwarmState(
            spec, interval=state.interval, min_interval=state.min_interval,
            peer_ttl=state.peer_ttl, max_numwant=state.max_numwant, allowed=state.allowed,
            max_peers_per_ip=state.max_peers_per_ip)
    raise ValueError(f"--swarm-state: expected 'memory' or redis://HOST:PORT/DB, got {spec!r}")
