"""BEP 14 codec and limits (sans-IO, injected clock) and the driver's hand-off to torrents.

No socket here: multicast is only ever sent inside lab namespaces
(tests/lab/test_lsd_netns.py runs the real thing).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.discovery.lsd import (
    MAX_DATAGRAM,
    Announce,
    LsdSource,
    LsdState,
    decode_announce,
    encode_announces,
    lsd_hashes,
)

H1, H2 = b"\x01" * 20, b"\xab" * 20
SRC = ("198.18.0.7", 6771)


def _announce(port: int = 6881, *hashes: bytes, cookie: str | None = "x") -> bytes:
    return encode_announces(hashes or (H1,), port, cookie)[0]


def test_round_trip_and_the_wire_format() -> None:
    (d,) = encode_announces([H1, H2], 6881, "c00k1e")
    assert d.startswith(b"BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\n")
    assert d.endswith(b"cookie: c00k1e\r\n\r\n\r\n")
    assert decode_announce(d) == Announce(6881, (H1, H2), "c00k1e")
    # what other clients send: lower-case names, extra headers, upper-case hex, no cookie
    other = (b"BT-SEARCH * HTTP/1.1\r\nhost: 239.192.152.143:6771\r\nport: 51413\r\n"
             b"infohash: " + H2.hex().upper().encode() + b"\r\nX-Thing: y\r\n\r\n\r\n")
    assert decode_announce(other) == Announce(51413, (H2,), None)


def test_many_hashes_pack_into_datagrams_of_at_most_1400_bytes() -> None:
    hashes = [os.urandom(20) for _ in range(100)]
    datagrams = encode_announces(hashes, 6881, "c")
    assert len(datagrams) > 1
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    got = [h for d in datagrams for h in (decode_announce(d) or Announce(0, ())).info_hashes]
    assert got == hashes


def test_malformed_and_oversized_announces_are_dropped() -> None:
    good = _announce()
    bad = [
        b"",
        b"M-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: " + H1.hex().encode() + b"\r\n\r\n",
        good.replace(b"Port: 6881", b"Port: 0"),
        good.replace(b"Port: 6881", b"Port: 70000"),
        good.replace(b"Port: 6881", b"Port: -1"),
        good.replace(b"Port: 6881", b"Port: 0x1a"),
        good.replace(b"Port: 6881\r\n", b""),
        good.replace(H1.hex().encode(), b"zz" * 20),  # no valid hash left
        good.replace(H1.hex().encode(), H1.hex().encode()[:-2]),
        good.replace(b"Port: 6881\r\n", b"Port 6881\r\n"),  # no colon
        good.replace(b"cookie: x", b"cookie: " + b"c" * 65),
        good + b"X-Pad: " + b"a" * 2100 + b"\r\n",  # oversized
        b"BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n" + b"".join(
            b"Infohash: " + os.urandom(20).hex().encode() + b"\r\n" for _ in range(65)),
        b"\xff\xfe" * 40,
    ]
    for d in bad:
        assert decode_announce(d) is None, d[:80]
    state = LsdState(cookie="me")
    for i, d in enumerate(bad):
        assert state.received(d, (f"198.18.0.{i + 10}", 6771), 0.0) == []
    assert state.dropped == len(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_decoding_arbitrary_bytes_never_raises(data: bytes) -> None:
    ann = decode_announce(data)
    assert ann is None or (0 < ann.port < 65536 and ann.info_hashes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=40, unique=True),
       st.integers(1, 65535), st.text("0123456789abcdef", min_size=1, max_size=16))
def test_every_encoded_announce_decodes_to_what_was_sent(hashes: list[bytes], port: int,
                                                         cookie: str) -> None:
    out = [decode_announce(d) for d in encode_announces(hashes, port, cookie)]
    assert [h for a in out if a for h in a.info_hashes] == hashes
    assert {(a.port, a.cookie) for a in out if a} == {(port, cookie)}


def test_our_own_announce_is_ignored_by_its_cookie() -> None:
    state = LsdState(cookie="mine")
    (d,) = state.due([H1], 6881, 0.0)
    assert state.received(d, SRC, 0.0) == []
    assert state.own == 1
    other = LsdState(cookie="theirs")
    assert other.received(d, SRC, 0.0) == [(H1, ("198.18.0.7", 6881))]


def test_a_burst_then_at_most_one_announce_a_minute_and_each_torrent_every_5_min() -> None:
    state = LsdState(cookie="c", burst=3, refill=60.0, interval=300.0)
    # three torrents added one after the other: the burst covers them at once
    assert len(state.due([H1], 6881, 0.0)) == 1
    assert len(state.due([H1, H2], 6881, 1.0)) == 1  # only H2 was due
    h3 = b"\x03" * 20
    assert len(state.due([H1, H2, h3], 6881, 2.0)) == 1
    h4 = b"\x04" * 20
    assert state.due([H1, H2, h3, h4], 6881, 3.0) == []  # budget spent: h4 waits
    assert state.due([H1, H2, h3, h4], 6881, 40.0) == []
    (d,) = state.due([H1, H2, h3, h4], 6881, 63.0)  # one token a minute
    assert decode_announce(d) == Announce(6881, (h4,), "c")
    assert state.due([H1, H2, h3, h4], 6881, 200.0) == []  # nothing due before 5 min
    (d,) = state.due([H1, H2, h3, h4], 6881, 303.0)  # the first three again, in one
    assert set((decode_announce(d) or Announce(0, ())).info_hashes) == {H1, H2, h3}
    assert state.sent == 5


def test_a_flood_from_one_source_is_rate_limited_and_others_still_heard() -> None:
    state = LsdState(cookie="c", per_source=(5, 10.0), total=(50, 0.1))
    heard = []
    for i in range(1000):  # the same instant: only the per-source burst gets through
        heard += state.received(_announce(1000 + i), SRC, 5.0)
    assert len(heard) == 5
    assert state.limited == 995
    assert state.received(_announce(7000), ("198.18.0.8", 6771), 5.0) == [
        (H1, ("198.18.0.8", 7000))]
    # one more from the flooder once its budget refills
    assert len(state.received(_announce(9999), SRC, 15.1)) == 1


def test_total_budget_caps_spoofed_sources_and_memory_stays_bounded() -> None:
    state = LsdState(cookie="c", total=(50, 0.1), max_sources=100, max_recent=200)
    heard = sum(len(state.received(_announce(1000 + i % 60000), (f"10.{i >> 16 & 255}."
                                   f"{i >> 8 & 255}.{i & 255}", 6771), 1.0))
                for i in range(5000))
    assert heard == 50
    assert len(state._sources) <= 100
    for i in range(1000):
        state.received(_announce(1000 + i), (f"10.9.{i >> 8}.{i & 255}", 6771), 100.0 + i)
    assert len(state._recent) <= 200


def test_a_replayed_announce_is_handed_out_once_a_minute() -> None:
    state = LsdState(cookie="c", repeat=60.0)
    d = _announce(6881, H1, H2)
    assert state.received(d, SRC, 0.0) == [(H1, (SRC[0], 6881)), (H2, (SRC[0], 6881))]
    assert state.received(d, SRC, 10.0) == []
    assert state.received(d, SRC, 59.0) == []
    assert len(state.received(d, SRC, 61.0)) == 2


@dataclass
class _Meta:
    name: str
    info_hash_v1: bytes | None
    info_hash_v2: bytes | None = None
    private: bool = False


@dataclass
class _Torrent:
    meta: _Meta
    added: list[tuple[str, int]] = field(default_factory=list)

    def add_peers(self, addrs: list[tuple[str, int]]) -> None:
        self.added += addrs


@dataclass
class _Session:
    torrents: dict[bytes, _Torrent]
    listen_port: int = 6881


def test_hybrid_torrents_use_both_hashes_and_private_ones_none() -> None:
    v2 = b"\x22" * 32
    assert lsd_hashes(_Meta("a", H1, v2)) == [H1, v2[:20]]
    assert lsd_hashes(_Meta("b", None, v2)) == [v2[:20]]
    assert lsd_hashes(_Meta("c", H1, private=True)) == []


def test_the_driver_feeds_heard_peers_to_public_torrents_only() -> None:
    now = [0.0]
    public = _Torrent(_Meta("pub", H1, b"\x22" * 32))
    private = _Torrent(_Meta("priv", H2, private=True))
    session = _Session({H1: public, H2: private})
    source = LsdSource(session, clock=lambda: now[0])
    # announced under the truncated v2 hash (another client's view of the same torrent)
    source._on_datagram(_announce(7001, b"\x22" * 20, H1, cookie="other"), ("198.18.0.9", 6771))
    source._on_datagram(_announce(7002, H2, cookie="other"), ("198.18.0.9", 6771))
    source._on_datagram(_announce(7003, b"\x99" * 20, cookie="other"), ("198.18.0.9", 6771))
    assert public.added == [("198.18.0.9", 7001)]
    assert private.added == []
    # what we would announce: the public torrent's two hashes, never the private one's
    (d,) = source.state.due(list(source._targets()), 6881, now[0])
    assert set((decode_announce(d) or Announce(0, ())).info_hashes) == {H1, b"\x22" * 20}


def test_a_newcomer_makes_our_swarm_due_again_at_most_every_10_s() -> None:
    state = LsdState(cookie="c", answer_gap=10.0, interval=300.0, burst=10)
    assert len(state.due([H1], 6881, 0.0)) == 1
    assert state.answer(H1, 1.0)  # the newcomer was not there for our first announce
    assert len(state.due([H1], 6881, 1.0)) == 1  # out again at once, not at 300 s
    assert not state.answer(H1, 5.0)  # a second newcomer soon after: heard that one
    assert state.due([H1], 6881, 5.0) == []
    assert state.answer(H1, 11.5)
    assert not state.answer(H2, 12.0)  # not a swarm we announce
    # a flood of "newcomers" costs at most the send budget: 10, then one a minute
    sent = 0
    for i in range(100):
        state.answer(H1, 20.0 + 10 * i)
        sent += len(state.due([H1], 6881, 20.0 + 10 * i))
    assert sent <= 8 + 1000 / 60 + 1


async def test_a_magnet_link_hears_its_swarm_and_a_seed_answers_a_newcomer() -> None:
    now = [100.0]
    seed = _Torrent(_Meta("pub", H1))
    source = LsdSource(_Session({H1: seed}), clock=lambda: now[0])
    source.state.due([H1], 6881, now[0])  # the seed announced at start
    now[0] = 101.0
    # a newcomer with a magnet link announces: the seed dials it and answers at once
    source._on_datagram(_announce(7001, H1, cookie="newcomer"), ("198.18.0.5", 6771))
    assert seed.added == [("198.18.0.5", 7001)]
    assert [decode_announce(d) for d in source.state.due([H1], 6881, now[0])] == [
        Announce(6881, (H1,), source.state.cookie)]
    # our own magnet link: its hashes are announced and the first peer heard is returned
    magnet = LsdSource(_Session({}), clock=lambda: now[0])
    waiter = asyncio.ensure_future(magnet.peers_for([H2], timeout=30.0))
    await asyncio.sleep(0)
    assert H2 in magnet._watched
    magnet._on_datagram(_announce(6881, H2, cookie="seed"), ("198.18.0.1", 6771))
    assert await waiter == [("198.18.0.1", 6881)]
    assert magnet._watched == {}
    assert await magnet.peers_for([H2], timeout=0.01) == []  # nobody: [] when time is up


def test_a_loopback_listener_announces_on_no_interface() -> None:
    from swarmhub.discovery.lsd import _interfaces

    assert _interfaces("127.0.0.1") == []
    assert _interfaces("::1") == []
    assert all(name != "lo" for name, _ in _interfaces("0.0.0.0"))
