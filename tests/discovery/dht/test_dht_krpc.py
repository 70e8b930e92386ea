"""KRPC codec: round trips, BEP 42 vectors, and "any bytes parse or raise KrpcError"."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.bencode import bencode
from swarmhub.discovery.dht import krpc
from swarmhub.discovery.dht.krpc import (
    AnnouncePeer,
    Error,
    FindNode,
    GetPeers,
    KrpcError,
    NodeInfo,
    Ping,
    Response,
    decode,
    encode,
)
from swarmhub.discovery.dht.nodeid import node_id_for_ip, node_id_matches_ip

SRC = ("127.0.0.9", 7000)
ME = b"M" * 20


@pytest.mark.parametrize("msg", [
    Ping(b"aa", ME),
    FindNode(b"ab", ME, b"T" * 20),
    GetPeers(b"ac", ME, b"H" * 20),
    AnnouncePeer(b"ad", ME, b"H" * 20, 6881, b"tok"),
    Response(b"ae", ME, nodes=(NodeInfo(b"N" * 20, ("127.0.0.3", 6881)),),
             values=(("127.0.0.4", 51413),), token=b"tk", ip=("127.0.0.9", 7000)),
    Error(b"af", 203, "bad token"),
])
def test_every_message_round_trips(msg: krpc.Message) -> None:
    assert decode(encode(msg, our_id=ME), SRC) == msg


def test_implied_port_takes_the_udp_source_port() -> None:
    data = encode(AnnouncePeer(b"t1", ME, b"H" * 20, 1, b"tok", implied_port=True), our_id=ME)
    q = decode(data, SRC)
    assert isinstance(q, AnnouncePeer) and q.port == SRC[1]


def test_unknown_method_owes_a_204() -> None:
    data = bencode({b"t": b"xy", b"y": b"q", b"q": b"vote", b"a": {b"id": ME}})
    with pytest.raises(KrpcError) as err:
        decode(data, SRC)
    assert err.value.code == krpc.ERROR_METHOD and err.value.reply and err.value.tid == b"xy"


def test_malformed_query_owes_a_203_but_a_malformed_response_owes_nothing() -> None:
    bad_q = bencode({b"t": b"xy", b"y": b"q", b"q": b"get_peers",
                     b"a": {b"id": ME, b"info_hash": b"short"}})
    with pytest.raises(KrpcError) as err:
        decode(bad_q, SRC)
    assert err.value.code == krpc.ERROR_PROTOCOL and err.value.reply
    bad_r = bencode({b"t": b"xy", b"y": b"r", b"r": {b"id": ME, b"nodes": b"x" * 27}})
    with pytest.raises(KrpcError) as err:
        decode(bad_r, SRC)
    assert not err.value.reply


def test_oversized_datagram_is_refused_unread() -> None:
    with pytest.raises(KrpcError, match="limit"):
        decode(b"d" + b"x" * krpc.MAX_DATAGRAM, SRC)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_krpc_error(data: bytes) -> None:
    try:
        msg = decode(data, SRC)
    except KrpcError as exc:
        assert exc.code in (krpc.ERROR_PROTOCOL, krpc.ERROR_METHOD)
        return
    assert isinstance(msg, krpc.Query | Response | Error)


_leaf = st.one_of(st.binary(max_size=30), st.integers(-5, 70000))
_values = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from([b"t", b"y", b"q", b"a", b"r", b"e", b"id", b"nodes",
                                     b"values", b"token", b"port", b"info_hash", b"target",
                                     b"implied_port", b"ip", b"ro"]), inner, max_size=6)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_any_bencoded_structure_parses_or_raises_krpc_error(value: object) -> None:
    try:
        msg = decode(bencode(value), SRC)
    except KrpcError as exc:
        assert exc.code in (krpc.ERROR_PROTOCOL, krpc.ERROR_METHOD)
        return
    assert isinstance(msg, krpc.Query | Response | Error)


# BEP 42's table: IP, rand, and the first three bytes / last byte of a valid id.
BEP42 = [
    ("124.31.75.21", 1, "5fbfbf", "01"),
    ("21.75.31.124", 86, "5a3ce9", "56"),
    ("65.23.51.170", 22, "a5d432", "16"),
    ("84.124.73.14", 65, "1b0321", "41"),
    ("43.213.53.83", 90, "e56f6c", "5a"),
]


@pytest.mark.parametrize(("ip", "r", "prefix", "last"), BEP42)
def test_bep42_ids_match_the_specification_table(ip: str, r: int, prefix: str,
                                                 last: str) -> None:
    nid = node_id_for_ip(ip, random.Random(1), r)
    assert nid[:2].hex() == prefix[:4]
    assert nid[2] & 0xF8 == int(prefix[4:], 16) & 0xF8
    assert nid[19:].hex() == last
    assert node_id_matches_ip(nid, ip)
    assert not node_id_matches_ip(nid, "8.8.8.8")


def test_local_addresses_are_exempt_from_bep42() -> None:
    assert node_id_matches_ip(b"\x00" * 20, "127.0.0.5")
    assert node_id_matches_ip(b"\x00" * 20, "192.168.1.2")
