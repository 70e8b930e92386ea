"""HTTP tracker server: query validation, swarm bookkeeping, answers, and the aiohttp app."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port, until
from swarmhub.bencode import bdecode
from swarmhub.discovery.tracker import AnnounceRequest, build_announce_url
from swarmhub.errors import TrackerError
from swarmhub.hub.tracker import (
    AnnounceParams,
    TrackerState,
    failure_body,
    make_tracker_app,
    parse_announce_query,
    parse_scrape_query,
)

IH = bytes(range(200, 220))
IH2 = b"\x00" * 19 + b"\x01"


def q(info_hash: bytes = IH, peer_id: bytes = b"P" * 20, **kw: object) -> str:
    parts = [
        "info_hash=" + urllib.parse.quote_from_bytes(info_hash, safe=""),
        "peer_id=" + urllib.parse.quote_from_bytes(peer_id, safe=""),
    ]
    kw.setdefault("port", 6881)
    parts += [f"{k}={v}" for k, v in kw.items()]
    return "&".join(parts)


def params(n: int, *, left: int = 10, event: str | None = None, **kw: Any) -> AnnounceParams:
    """Peer number ``n``: its own peer id and port on 10.0.0.1."""
    base: dict[str, Any] = {
        "info_hash": IH,
        "peer_id": n.to_bytes(20, "big"),
        "ip": "10.0.0.1",
        "port": 1000 + n,
        "left": left,
        "event": event,
    }
    base.update(kw)
    return AnnounceParams(**base)


def announce(state: TrackerState, p: AnnounceParams, now: float = 0.0) -> dict[bytes, Any]:
    out: dict[bytes, Any] = bdecode(state.announce(p, now))
    return out


def compact_ports(blob: bytes) -> set[int]:
    return {int.from_bytes(blob[i + 4 : i + 6], "big") for i in range(0, len(blob), 6)}


# ------------------------------------------------------------------------ query parsing


def test_parse_full_query() -> None:
    p = parse_announce_query(
        q(
            uploaded=5,
            downloaded=6,
            left=0,
            event="completed",
            numwant=3,
            compact=0,
            no_peer_id=1,
            key="abc",
        ),
        "192.0.2.7",
    )
    assert p == AnnounceParams(
        info_hash=IH,
        peer_id=b"P" * 20,
        ip="192.0.2.7",
        port=6881,
        uploaded=5,
        downloaded=6,
        left=0,
        event="completed",
        numwant=3,
        compact=False,
        no_peer_id=True,
        key=b"abc",
    )


def test_defaults_compact_and_ipv4_mapped_addresses() -> None:
    p = parse_announce_query(q().encode(), "::ffff:192.0.2.9")
    assert p.compact and p.ip == "192.0.2.9" and p.left is None and p.event is None
    assert p.numwant == 50


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_binary_hashes_survive_our_client_encoding(info_hash: bytes, peer_id: bytes) -> None:
    req = AnnounceRequest(info_hash, peer_id, 6881, 0, 0, 1, "started")
    url = build_announce_url("http://t/announce?passkey=x", req)
    p = parse_announce_query(url.partition("?")[2], "127.0.0.1")
    assert (p.info_hash, p.peer_id, p.event) == (info_hash, peer_id, "started")


_query_text = st.lists(
    st.tuples(
        st.sampled_from(["info_hash", "peer_id", "port", "left", "event", "numwant", "ip", "x"]),
        st.text(max_size=30) | st.binary(max_size=24).map(urllib.parse.quote_from_bytes),
    ),
    max_size=8,
).map(lambda kv: "&".join(f"{k}={v}" for k, v in kv))


@given(_query_text | st.binary(max_size=300) | st.text(max_size=300))
def test_any_query_parses_or_raises_tracker_error(query: bytes | str) -> None:
    try:
        p = parse_announce_query(query, "127.0.0.1")
    except TrackerError:
        return
    assert len(p.info_hash) == 20 and len(p.peer_id) == 20 and 0 < p.port < 65536
    state = TrackerState()
    assert b"interval" in bdecode(state.announce(p, 0.0))


def test_plus_is_a_literal_byte_not_a_space() -> None:
    p = parse_announce_query(q().replace("info_hash=%C8", "info_hash=+"), "127.0.0.1")
    assert p.info_hash == b"+" + IH[1:]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (q(info_hash=b"x" * 19), "invalid info_hash"),
        ("peer_id=" + "P" * 20 + "&port=1", "invalid info_hash"),
        (q(peer_id=b"short"), "invalid peer_id"),
        (q().replace("&port=6881", ""), "missing port"),
        (q(port=0), "invalid port"),
        (q(port=65536), "invalid port"),
        (q(port="x1"), "invalid port"),
        (q(left=-1), "invalid left"),
        (q(uploaded="1e3"), "invalid uploaded"),
        (q(numwant=-5), "invalid numwant"),
        (q(event="bogus"), "unknown event"),
    ],
)
def test_malformed_queries_get_a_failure_reason(query: str, reason: str) -> None:
    with pytest.raises(TrackerError, match=reason):
        parse_announce_query(query, "127.0.0.1")


def test_ip_parameter_is_ignored_unless_a_proxy_is_trusted() -> None:
    # Any client could otherwise put 8.8.8.8:53 or a LAN host's ssh port into a swarm.
    assert parse_announce_query(q(ip="8.8.8.8", port=53), "192.0.2.1").ip == "192.0.2.1"
    assert parse_announce_query(q(ip="2001:db8::5"), "192.0.2.1").ip == "192.0.2.1"


def test_ip_parameter_behind_a_trusted_proxy_only_when_it_is_an_address() -> None:
    def ip(query: str) -> str:
        return parse_announce_query(query, "192.0.2.1", trust_ip=True).ip

    assert ip(q(ip="10.1.1.1")) == "10.1.1.1"
    assert ip(q(ip="2001:db8::5")) == "2001:db8::5"
    assert ip(q(ip="evil.example")) == "192.0.2.1"


def test_scrape_query() -> None:
    enc = urllib.parse.quote_from_bytes
    assert parse_scrape_query(f"info_hash={enc(IH)}&info_hash={enc(IH2)}&x=1") == [IH, IH2]
    assert parse_scrape_query("") == []
    with pytest.raises(TrackerError, match="invalid info_hash"):
        parse_scrape_query("info_hash=abc")


# ---------------------------------------------------------------------- swarm behaviour


def test_peers_never_get_themselves_and_stats_count() -> None:
    state = TrackerState(interval=900, min_interval=30)
    first = announce(state, params(1, left=0, event="started"))
    assert first[b"peers"] == b"" and first[b"complete"] == 1 and first[b"incomplete"] == 0
    assert first[b"interval"] == 900 and first[b"min interval"] == 30
    second = announce(state, params(2, event="started"))
    assert second[b"peers"] == bytes([10, 0, 0, 1]) + (1001).to_bytes(2, "big")
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    # The seeder's next announce gets the leecher, never itself.
    assert compact_ports(announce(state, params(1, left=0))[b"peers"]) == {1002}
    assert state.stats(IH) == (1, 0, 1)


def test_seeders_are_not_sent_to_seeders() -> None:
    state = TrackerState()
    announce(state, params(1, left=0))
    announce(state, params(2, left=0))
    assert announce(state, params(3, left=0))[b"peers"] == b""
    assert compact_ports(announce(state, params(4))[b"peers"]) == {1001, 1002, 1003}


def test_stopped_removes_the_peer() -> None:
    state = TrackerState()
    announce(state, params(1, left=0))
    announce(state, params(2))
    answer = announce(state, params(1, left=0, event="stopped"))
    assert answer[b"peers"] == b"" and answer[b"complete"] == 0
    assert announce(state, params(3))[b"peers"] == bytes([10, 0, 0, 1]) + (1002).to_bytes(2, "big")
    assert state.stats(IH) == (0, 0, 2)


def test_stopped_with_another_peer_id_leaves_the_entry_alone() -> None:
    state = TrackerState()
    announce(state, params(1, left=0))
    # Same address and port, another peer id: not the sender's own entry.
    intruder = params(1, left=0, event="stopped", peer_id=b"X" * 20)
    announce(state, intruder)
    assert state.stats(IH) == (1, 0, 0)
    announce(state, params(1, left=0, event="stopped"))
    assert state.stats(IH) == (0, 0, 0)


def test_one_address_holds_at_most_the_cap_and_displaces_only_its_own_entries() -> None:
    state = TrackerState(max_peers_per_ip=3)
    other = params(99, ip="10.9.9.9")
    announce(state, other)
    for n in range(1, 1001):  # a flood of ports from one address
        announce(state, params(n))
    seen = announce(state, params(5000, ip="10.7.7.7"))[b"peers"]
    ports = compact_ports(seen)
    assert ports == {1099, 1998, 1999, 2000}  # the other address, and the 3 newest
    assert state.stats(IH) == (0, 0, 5)


def test_the_per_address_cap_evicts_the_least_recently_announced_entry() -> None:
    state = TrackerState(max_peers_per_ip=2)
    announce(state, params(1))
    announce(state, params(2))
    announce(state, params(1))  # 1 is fresh again; 2 is now the stalest
    announce(state, params(3))
    assert compact_ports(announce(state, params(9, ip="10.8.8.8"))[b"peers"]) == {1001, 1003}


def test_ipv6_sources_share_the_cap_per_slash_64() -> None:
    state = TrackerState(max_peers_per_ip=2)
    for n in range(1, 6):
        announce(state, params(n, ip=f"2001:db8:0:1::{n}"))
    announce(state, params(9, ip="2001:db8:0:2::1"))
    assert state.stats(IH) == (0, 0, 3)


def test_completed_is_counted_once_and_turns_a_leecher_into_a_seeder() -> None:
    state = TrackerState()
    announce(state, params(1, left=100, event="started"))
    announce(state, params(1, left=0, event="completed"))
    announce(state, params(1, left=0, event="completed"))  # a repeat is not a new download
    announce(state, params(2, left=0, event="completed"))
    assert state.stats(IH) == (2, 2, 0)
    # A known leecher that stops with nothing left also finished (aria2 --seed-time=0);
    # an unknown peer that starts as a seeder did not download here.
    announce(state, params(3, left=5))
    announce(state, params(3, left=0, event="stopped"))
    announce(state, params(4, left=0, event="started"))
    assert state.stats(IH) == (3, 3, 0)
    announce(state, params(4, left=0, event="stopped"))
    # The count survives the peers leaving.
    announce(state, params(1, left=0, event="stopped"))
    announce(state, params(2, left=0, event="stopped"))
    assert state.stats(IH) == (0, 3, 0)


def test_purge_drops_stale_peers_with_a_fake_clock() -> None:
    state = TrackerState(interval=100, grace=30)  # peer_ttl: 2 x interval + grace
    assert state.peer_ttl == 230
    announce(state, params(1), now=0.0)
    announce(state, params(2), now=150.0)
    assert state.purge(229.0) == 0  # one missed announce (and a late one) is forgiven
    assert state.purge(231.0) == 1  # peer 1 silent for 231 s: left without ``stopped``
    assert state.stats(IH) == (0, 0, 1)
    assert state.purge(381.0) == 1 and len(state) == 0  # empty swarm with no history is gone


def test_a_peer_that_re_announces_within_the_ttl_is_kept() -> None:
    state = TrackerState(interval=100)  # default grace: 60 s
    assert state.peer_ttl == 260
    announce(state, params(1), now=0.0)
    announce(state, params(1), now=200.0)  # a late re-announce
    assert state.purge(400.0) == 0 and state.stats(IH) == (0, 0, 1)
    assert state.purge(461.0) == 1


def test_file_stats_count_a_hybrid_client_once() -> None:
    state = TrackerState()
    announce(state, params(1, left=0), now=0.0)  # a hybrid seeder: v1 hash...
    announce(state, params(1, left=0, info_hash=IH2), now=0.0)  # ...and truncated v2 hash
    announce(state, params(2), now=0.0)  # a leecher in one swarm only
    announce(state, params(3), now=0.0)
    announce(state, params(3, left=0, info_hash=IH2), now=1.0)  # done: a seeder in one
    assert state.stats(IH)[0] + state.stats(IH2)[0] == 3  # the per-swarm sum overcounts
    assert state.file_stats([IH, IH2]) == (2, 1)
    assert state.file_stats([IH2]) == (2, 0)
    assert state.file_stats([b"\x07" * 20]) == (0, 0)


IH3 = b"\x00" * 19 + b"\x03"


@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from([IH, IH2, IH3]), st.booleans()),
                max_size=40))
def test_file_stats_match_a_plain_union_of_the_swarms(
        announces: list[tuple[int, bytes, bool]]) -> None:
    """The largest swarm counts by its totals, the others peer by peer: the same numbers
    as the union of every swarm's peers (one per address, a seeder if one anywhere)."""
    state = TrackerState()
    for n, ih, seeding in announces:
        announce(state, params(n, info_hash=ih, left=0 if seeding else 10))
    union: dict[tuple[str, int], bool] = {}
    for ih in (IH, IH2, IH3):
        for addr, peer in state._swarms[ih].peers.items() if ih in state._swarms else ():
            union[addr] = union.get(addr, False) or peer.seeder
    seeders = sum(union.values())
    assert state.file_stats([IH, IH2, IH3, IH]) == (seeders, len(union) - seeders)


def test_numwant_is_capped_and_a_random_subset() -> None:
    state = TrackerState(max_numwant=5, rng=random.Random(3))
    for n in range(1, 31):
        announce(state, params(n))
    seen: set[int] = set()
    for _ in range(10):
        ports = compact_ports(announce(state, params(99, numwant=1000))[b"peers"])
        assert len(ports) == 5 and 1099 not in ports
        seen |= ports
    assert len(seen) > 10  # different subsets, not always the same five
    assert len(compact_ports(announce(state, params(99, numwant=2))[b"peers"])) == 2
    assert announce(state, params(99, numwant=0))[b"peers"] == b""


def test_non_compact_form_with_and_without_peer_ids() -> None:
    state = TrackerState()
    announce(state, params(1, left=0))
    full = announce(state, params(2, compact=False))
    assert full[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 1001, b"peer id": (1).to_bytes(20)}]
    bare = announce(state, params(2, compact=False, no_peer_id=True))
    assert bare[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 1001}]


def test_ipv6_peers_go_to_peers6() -> None:
    state = TrackerState()
    announce(state, params(1, left=0, ip="2001:db8::1"))
    announce(state, params(2, left=0, ip="10.0.0.2"))
    answer = announce(state, params(3, ip="10.0.0.3"))
    assert answer[b"peers"] == bytes([10, 0, 0, 2]) + (1002).to_bytes(2, "big")
    assert answer[b"peers6"] == ipaddress.IPv6Address("2001:db8::1").packed + (1001).to_bytes(
        2, "big"
    )
    as_dicts = announce(state, params(3, ip="10.0.0.3", compact=False))[b"peers"]
    assert {d[b"ip"] for d in as_dicts} == {b"2001:db8::1", b"10.0.0.2"}


def test_whitelist_hook_refuses_unknown_torrents() -> None:
    state = TrackerState(allowed=lambda ih: ih == IH)
    assert announce(state, params(1, info_hash=IH2)) == {b"failure reason": b"unregistered torrent"}
    assert b"peers" in announce(state, params(1))
    files = bdecode(state.scrape([IH, IH2], 0.0))[b"files"]
    assert list(files) == [IH]


def test_scrape_counts_and_scrape_all() -> None:
    state = TrackerState()
    announce(state, params(1, left=0, event="completed"))
    announce(state, params(2))
    announce(state, params(3, info_hash=IH2))
    one = bdecode(state.scrape([IH], 0.0))
    assert one == {b"files": {IH: {b"complete": 1, b"downloaded": 1, b"incomplete": 1}}}
    everything = bdecode(state.scrape([], 0.0))[b"files"]
    assert set(everything) == {IH, IH2}
    assert everything[IH2] == {b"complete": 0, b"downloaded": 0, b"incomplete": 1}
    unknown = bdecode(state.scrape([b"\x07" * 20], 0.0))[b"files"]
    assert unknown == {b"\x07" * 20: {b"complete": 0, b"downloaded": 0, b"incomplete": 0}}


def test_failure_body_is_bencoded() -> None:
    assert bdecode(failure_body("nope")) == {b"failure reason": b"nope"}


# ------------------------------------------------------------------------ the aiohttp app


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    runner = web.AppRunner(make_tracker_app(TrackerState()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[bytes, Any]]:
    async with session.get(url) as resp:
        return resp.status, bdecode(await resp.read())


async def test_app_takes_binary_hashes_from_the_raw_query(base_url: str) -> None:
    # \xc8.. is not UTF-8: request.query would mangle it; the raw query keeps it.
    async with aiohttp.ClientSession() as session:
        status, body = await get(session, f"{base_url}/announce?{q(left=0)}")
        assert status == 200 and body[b"complete"] == 1
        enc = urllib.parse.quote_from_bytes(IH, safe="")
        status, body = await get(session, f"{base_url}/scrape?info_hash={enc}")
    assert status == 200
    assert body[b"files"][IH] == {b"complete": 1, b"downloaded": 0, b"incomplete": 0}


async def test_app_errors_are_failure_reasons_with_http_200(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, body = await get(session, f"{base_url}/announce?info_hash=short&port=1")
        assert status == 200 and body[b"failure reason"].startswith(b"invalid info_hash")
        status, body = await get(session, f"{base_url}/scrape?info_hash=short")
        assert status == 200 and b"failure reason" in body


async def test_app_purges_stale_peers_while_running() -> None:
    state = TrackerState(interval=1, min_interval=1, peer_ttl=0.1)
    runner = web.AppRunner(make_tracker_app(state, purge_every=0.05))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/announce?{q()}"
            await get(session, url)
        assert state.stats(IH) == (0, 0, 1)
        await until(lambda: state.stats(IH) == (0, 0, 0), "the running purge")
    finally:
        await runner.cleanup()


async def test_module_entry_point_serves_until_killed() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmhub.hub.tracker", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        body: dict[bytes, Any] = {}
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    _, body = await get(session, f"http://127.0.0.1:{port}/announce?{q()}")
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        died = proc.poll() is not None and proc.stderr is not None
        assert body.get(b"incomplete") == 1, proc.stderr.read() if died and proc.stderr else ""
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()
