"""Iterative lookups and the node core, on an in-memory network with a stepped clock."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.bencode import bencode
from swarmhub.discovery.dht import krpc
from swarmhub.discovery.dht.core import Config, DhtCore
from swarmhub.discovery.dht.krpc import AnnouncePeer, GetPeers, NodeInfo, Ping, Response
from swarmhub.discovery.dht.lookup import Lookup, LookupKind, State

sys.path.insert(0, str(Path(__file__).parent))
from simnet import SimNet, addr_of

H = bytes(range(20))


def test_lookup_keeps_at_most_alpha_queries_in_flight() -> None:
    lk = Lookup(b"\x00" * 20, LookupKind.FIND_NODE, alpha=3)
    lk.add([NodeInfo(bytes([i + 1]) * 20, addr_of(i)) for i in range(10)])
    first = lk.next_queries()
    assert len(first) == 3 and lk.next_queries() == []
    lk.on_failure(first[0].addr)
    again = lk.next_queries()
    assert len(again) == 1 and again[0].state is State.WAITING


def test_lookup_ends_when_the_k_nearest_have_answered() -> None:
    lk = Lookup(b"\x00" * 20, LookupKind.GET_PEERS, k=2, alpha=2)
    lk.add([NodeInfo(bytes([i + 1]) * 20, addr_of(i)) for i in range(5)])
    for c in lk.next_queries():
        assert c.id is not None
        lk.on_response(c.addr, c.id, (), (("127.0.0.9", 1),), b"tok")
    assert lk.done and lk.queries == 2 and list(lk.peers) == [("127.0.0.9", 1)]
    assert [c.token for c in lk.closest_answered()] == [b"tok", b"tok"]


def test_lookup_with_only_failures_ends() -> None:
    lk = Lookup(b"\x00" * 20, LookupKind.FIND_NODE)
    lk.add_seeds([addr_of(1), addr_of(2)])
    for c in lk.next_queries():
        lk.on_failure(c.addr)
    assert lk.done and lk.closest_answered() == []


def test_fifty_nodes_bootstrap_and_find_an_announced_peer() -> None:
    net = SimNet(50)
    net.bootstrap_all()
    assert all(len(c.table) >= 8 for c in net.cores.values())
    announcer = net.cores[addr_of(7)]
    announcer.get_peers(H, net.now, announce_port=5000)
    net.deliver()
    done = net.events[addr_of(7)][-1]
    assert done.announced > 0
    seeker = net.cores[addr_of(33)]
    before = net.sent
    seeker.get_peers(H, net.now)
    net.deliver()
    found = net.events[addr_of(33)][-1]
    assert (addr_of(7)[0], 5000) in found.peers
    assert found.first_peers is not None
    assert found.started <= found.first_peers <= found.finished
    assert net.sent - before < 60  # a handful of round trips, not a flood


def test_lookup_survives_dead_nodes_through_timeouts() -> None:
    net = SimNet(40, config=Config(query_timeout=2.0))
    net.bootstrap_all()
    net.cores[addr_of(5)].get_peers(H, net.now, announce_port=0)
    net.deliver()
    for i in range(10, 25):
        net.dead.add(addr_of(i))
    seeker = net.cores[addr_of(30)]
    seeker.get_peers(H, net.now)
    net.advance(20.0)
    found = [e for e in net.events[addr_of(30)] if e.target == H]
    assert found and (addr_of(5)[0], addr_of(5)[1]) in found[-1].peers  # implied port
    assert seeker.stats.timeouts > 0


def test_dead_nodes_are_evicted_after_failed_queries() -> None:
    net = SimNet(60, config=Config(query_timeout=1.0))
    net.bootstrap_all()
    victim = addr_of(3)
    holders = [c for c in net.cores.values() if c.table.id_at(victim) is not None]
    assert holders
    net.dead.add(victim)
    for i in range(6):  # lookups towards the victim's id query it and time out
        for c in holders:
            vid = c.table.id_at(victim)
            if vid is not None:
                c.find_node(vid, net.now)
        net.advance(3.0)
        del i
    assert all(c.table.get(n) is None or c.table.get(n).fails >= 2  # type: ignore[union-attr]
               for c in holders for n in [net.cores[victim].node_id])


def _core() -> DhtCore:
    import random

    return DhtCore(b"\x11" * 20, random.Random(5), 0.0, own_addr=addr_of(0))


def _replies(core: DhtCore) -> list[krpc.Message]:
    """Responses and errors sent (the pings that verify new nodes left out)."""
    msgs = [krpc.decode(d, addr_of(0)) for d, _ in core.take_datagrams()]
    return [m for m in msgs if not isinstance(m, krpc.Query)]


def test_announce_with_a_wrong_token_is_refused_and_not_stored() -> None:
    core = _core()
    src = addr_of(1)
    q = AnnouncePeer(b"t1", b"\x22" * 20, H, 7000, b"forged")
    core.receive(krpc.encode(q, our_id=b"\x22" * 20), src, 1.0)
    (reply,) = _replies(core)
    assert isinstance(reply, krpc.Error) and reply.code == krpc.ERROR_PROTOCOL
    assert len(core.store) == 0 and core.stats.bad_tokens == 1
    core.receive(krpc.encode(GetPeers(b"t2", b"\x22" * 20, H), our_id=b"\x22" * 20), src, 2.0)
    (resp,) = _replies(core)
    assert isinstance(resp, Response) and resp.token
    good = AnnouncePeer(b"t3", b"\x22" * 20, H, 7000, resp.token)
    core.receive(krpc.encode(good, our_id=b"\x22" * 20), src, 3.0)
    assert isinstance(_replies(core)[0], Response) and len(core.store) == 1
    stolen = AnnouncePeer(b"t4", b"\x33" * 20, H, 7000, resp.token)  # token of another IP
    core.receive(krpc.encode(stolen, our_id=b"\x33" * 20), addr_of(2), 3.0)
    assert isinstance(_replies(core)[0], krpc.Error) and len(core.store) == 1


def test_garbage_is_dropped_silently_and_malformed_queries_get_203() -> None:
    core = _core()
    core.receive(b"\xff" * 100, addr_of(1), 0.0)
    core.receive(b"x" * 5000, addr_of(1), 0.0)
    assert core.take_datagrams() == [] and core.stats.malformed == 2
    core.receive(bencode({b"t": b"ab", b"y": b"q", b"q": b"find_node",
                          b"a": {b"id": b"\x22" * 20}}), addr_of(1), 0.0)
    (err,) = _replies(core)
    assert isinstance(err, krpc.Error) and err.code == 203 and err.tid == b"ab"


def test_flood_from_one_address_is_rate_limited_while_others_are_served() -> None:
    core = _core()
    ping = krpc.encode(Ping(b"pp", b"\x22" * 20), our_id=b"\x22" * 20)
    for _ in range(1000):
        core.receive(ping, addr_of(1), 0.0)
    flooded = len(_replies(core))
    assert flooded <= Config().query_burst and core.stats.rate_limited >= 900
    other = krpc.encode(Ping(b"pq", b"\x33" * 20), our_id=b"\x33" * 20)
    core.receive(other, addr_of(2), 0.0)
    assert len(_replies(core)) == 1
    assert len(core.table) == 2


def test_a_node_that_only_queried_us_is_pinged_and_not_advertised_until_it_answers() -> None:
    core = _core()
    q = krpc.encode(Ping(b"p1", b"\x22" * 20), our_id=b"\x22" * 20)
    core.receive(q, addr_of(1), 0.0)
    sent = [krpc.decode(d, addr_of(0)) for d, _ in core.take_datagrams()]
    pings = [m for m in sent if isinstance(m, Ping)]
    assert len(pings) == 1 and core.table.get(b"\x22" * 20) is not None
    assert core.table.closest(b"\x00" * 20, verified=True) == []
    core.receive(krpc.encode(Response(pings[0].tid, b"\x22" * 20), our_id=b"\x22" * 20),
                 addr_of(1), 0.1)
    assert [e.id for e in core.table.closest(b"\x00" * 20, verified=True)] == [b"\x22" * 20]


def test_unsolicited_and_spoofed_responses_are_ignored() -> None:
    core = _core()
    core.call_ping(addr_of(1), 0.0)
    (data, _), = core.take_datagrams()
    tid = krpc.decode(data, addr_of(0)).tid
    fake = krpc.encode(Response(tid, b"\x44" * 20), our_id=b"\x44" * 20)
    core.receive(fake, addr_of(2), 0.1)  # right tid, wrong address
    core.receive(krpc.encode(Response(b"zz", b"\x44" * 20), our_id=b"\x44" * 20),
                 addr_of(1), 0.1)
    assert core.stats.unsolicited == 2 and len(core.table) == 0
    core.receive(fake, addr_of(1), 0.2)
    assert len(core.table) == 1


def test_bep42_id_is_adopted_once_three_responders_agree_on_a_public_address() -> None:
    from swarmhub.discovery.dht.nodeid import node_id_matches_ip

    core = _core()
    for i in range(1, 4):
        core.table.heard_from(bytes([i]) * 20, addr_of(i), 0.0, response=True)
    assert not core.adopt_external_id()  # no votes yet
    core.ip_votes["127.0.0.1"] += 5
    assert not core.adopt_external_id()  # a local address never changes the id
    core.ip_votes.clear()
    core.ip_votes["84.124.73.14"] += 3
    old = core.node_id
    assert core.adopt_external_id()
    assert core.node_id != old and node_id_matches_ip(core.node_id, "84.124.73.14")
    assert core.table.own_id == core.node_id and len(core.table) == 3
    core.table.check_invariant()
    assert not core.adopt_external_id()  # matches now: stable


_krpc_like = st.builds(
    lambda t, y, q, a: bencode({b"t": t, b"y": y, b"q": q, b"a": a, b"r": a}),
    st.binary(min_size=1, max_size=3), st.sampled_from([b"q", b"r", b"e"]),
    st.sampled_from([b"ping", b"find_node", b"get_peers", b"announce_peer", b"x"]),
    st.fixed_dictionaries({b"id": st.binary(min_size=20, max_size=20)}, optional={
        b"target": st.binary(max_size=21), b"info_hash": st.binary(max_size=21),
        b"token": st.binary(max_size=9), b"port": st.integers(-1, 70000),
        b"nodes": st.binary(max_size=60), b"values": st.lists(st.binary(max_size=7)),
        b"implied_port": st.integers(0, 1)}))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=300), _krpc_like), max_size=5))
def test_the_node_core_survives_any_datagrams(datagrams: list[bytes]) -> None:
    core = _core()
    core.call_ping(addr_of(1), 0.0)  # something pending for replies to match
    for d in datagrams:
        core.receive(d, addr_of(1), 0.0)
    core.tick(10.0)
    sent = core.take_datagrams()
    assert all(len(d) <= krpc.MAX_DATAGRAM for d, _ in sent)
    core.table.check_invariant()
