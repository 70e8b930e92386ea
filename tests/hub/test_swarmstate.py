"""Swarm state: the same tracker rules in memory and in a real Redis, and one swarm shared
by two hub processes' states."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from swarmhub.bencode import bdecode
from swarmhub.hub.swarmstate import LocalSwarmState, RedisSwarmState, SwarmState
from swarmhub.hub.tracker import AnnounceParams, TrackerState

IH = bytes(range(200, 220))


def params(n: int, *, left: int | None = 10, event: str | None = None, ip: str = "10.0.0.1",
           **kw: Any) -> AnnounceParams:
    base: dict[str, Any] = {"info_hash": IH, "peer_id": n.to_bytes(20, "big"), "ip": ip,
                            "port": 1000 + n, "left": left, "event": event}
    base.update(kw)
    return AnnounceParams(**base)


class Clock:
    """Wall time for Redis and the ``now`` argument for memory, stepped by hand."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


Factory = Callable[..., SwarmState]


@pytest.fixture(params=["memory", "redis"])
async def make(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Factory]:
    """Builds states sharing one backing store (one Redis db for the ``redis`` case)."""
    made: list[SwarmState] = []
    url = request.getfixturevalue("redis_server").new_url() if request.param == "redis" else ""
    shared = TrackerState(interval=60, min_interval=10, peer_ttl=100)

    def factory(**kw: Any) -> SwarmState:
        state: SwarmState
        if request.param == "memory":
            if kw:
                return LocalSwarmState(TrackerState(interval=60, min_interval=10,
                                                    peer_ttl=100, **kw))
            state = LocalSwarmState(shared)
        else:
            state = RedisSwarmState(url, interval=60, min_interval=10, peer_ttl=100,
                                    clock=clock, **kw)
        made.append(state)
        return state

    yield factory
    for state in made:
        await state.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def announce(state: SwarmState, p: AnnounceParams, clock: Clock) -> dict[bytes, Any]:
    out: dict[bytes, Any] = bdecode(await state.announce(p, clock.t))
    return out


def ports(blob: bytes) -> set[int]:
    return {int.from_bytes(blob[i + 4: i + 6], "big") for i in range(0, len(blob), 6)}


async def test_peers_see_each_other_and_counts_follow_events(make: Factory,
                                                             clock: Clock) -> None:
    state = make()
    first = await announce(state, params(1, event="started"), clock)
    assert first[b"peers"] == b"" and first[b"interval"] == 60
    second = await announce(state, params(2, left=0), clock)
    assert ports(second[b"peers"]) == {1001}
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    assert await state.stats(IH) == (1, 0, 1)
    await announce(state, params(1, left=0, event="completed"), clock)
    assert await state.stats(IH) == (2, 1, 0)
    seeder_view = await announce(state, params(1, left=0), clock)
    assert seeder_view[b"peers"] == b""  # a seeder is not sent other seeders


async def test_stopped_removes_only_the_senders_entry(make: Factory, clock: Clock) -> None:
    state = make()
    await announce(state, params(1), clock)
    impostor = params(1, event="stopped", peer_id=b"x" * 20)
    await announce(state, impostor, clock)
    assert await state.stats(IH) == (0, 0, 1)
    await announce(state, params(1, event="stopped"), clock)
    assert await state.stats(IH) == (0, 0, 0)


async def test_silent_peers_expire(make: Factory, clock: Clock) -> None:
    state = make()
    await announce(state, params(1), clock)
    clock.t += 50
    await announce(state, params(2), clock)
    clock.t += 60  # peer 1 silent for 110 s > ttl 100, peer 2 for 60 s
    assert await state.purge(clock.t) == 1
    assert await state.stats(IH) == (0, 0, 1)


async def test_one_address_holds_at_most_its_cap(make: Factory, clock: Clock) -> None:
    state = make(max_peers_per_ip=2)
    for n in range(5):
        clock.t += 1
        await announce(state, params(n, ip="10.9.9.9"), clock)
    await announce(state, params(9, ip="10.0.0.2"), clock)
    view = await announce(state, params(9, ip="10.0.0.2"), clock)
    assert ports(view[b"peers"]) == {1003, 1004}  # the stalest entries were evicted


async def test_drop_removes_a_revoked_peer(make: Factory, clock: Clock) -> None:
    state = make()
    await announce(state, params(1), clock)
    assert not await state.drop(IH, "10.0.0.1", 1001, b"y" * 20)
    assert await state.drop(IH, "10.0.0.1", 1001, (1).to_bytes(20, "big"))
    assert await state.stats(IH) == (0, 0, 0)


async def test_two_processes_states_see_one_swarm(make: Factory, clock: Clock) -> None:
    a, b = make(), make()  # with Redis: two clients, as two hub processes have
    await announce(a, params(1), clock)
    view = await announce(b, params(2), clock)
    assert ports(view[b"peers"]) == {1001}
    assert await a.stats(IH) == await b.stats(IH) == (0, 0, 2)


def test_redis_and_memory_keep_a_silent_peer_equally_long_by_default() -> None:
    """Redis had its own default TTL (twice the interval, no grace): with the same
    settings a hub on Redis dropped a late re-announcer that one in memory kept."""
    redis_state = RedisSwarmState("redis://127.0.0.1:9/0", interval=100)  # never connects
    assert redis_state.peer_ttl == TrackerState(interval=100).peer_ttl == 260
