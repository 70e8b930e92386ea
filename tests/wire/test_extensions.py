"""Extension payloads: BEP 10 handshake, BEP 9 ut_metadata, BEP 11 ut_pex."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.bencode import bencode
from swarmhub.errors import LocalProtocolError, RemoteProtocolError
from swarmhub.wire.extensions import (
    MAX_PEX_PEERS,
    ExtensionHandshake,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    PexMessage,
    bencoded_end,
    decode_ext_handshake,
    decode_metadata_message,
    decode_pex,
    encode_ext_handshake,
    encode_metadata_message,
    encode_pex,
)

# ------------------------------------------------------------------ BEP 10


def test_ext_handshake_round_trip_keeps_unknown_keys() -> None:
    payload = bencode(
        {
            b"m": {b"ut_metadata": 3, b"ut_pex": 1, b"lt_donthave": 7},
            b"v": b"libtorrent/2.1.1",
            b"p": 6881,
            b"reqq": 500,
            b"yourip": b"\x7f\x00\x00\x01",
            b"metadata_size": 31337,
            b"upload_only": 1,
            b"complete_ago": 12,
        }
    )
    hs = decode_ext_handshake(payload)
    assert hs.m == {"ut_metadata": 3, "ut_pex": 1, "lt_donthave": 7}
    assert (hs.v, hs.p, hs.reqq, hs.yourip) == ("libtorrent/2.1.1", 6881, 500, b"\x7f\0\0\x01")
    assert hs.metadata_size == 31337 and hs.upload_only
    assert hs.raw[b"complete_ago"] == 12
    assert encode_ext_handshake(hs) == payload


def test_ext_handshake_from_keywords() -> None:
    payload = encode_ext_handshake(m={"ut_metadata": 2}, v="swarmhub", metadata_size=10)
    assert payload == b"d1:md11:ut_metadatai2ee13:metadata_sizei10e1:v8:swarmhube"
    hs = decode_ext_handshake(payload)
    assert hs == ExtensionHandshake(
        m={"ut_metadata": 2}, v="swarmhub", metadata_size=10, raw=hs.raw
    )
    assert not hs.upload_only and hs.p is None


def test_ext_handshake_minimal_and_tolerant() -> None:
    hs = decode_ext_handshake(b"de")
    assert hs.m == {} and hs.v is None and hs.metadata_size is None
    # A wrong-sized yourip is advisory junk: ignored. A Latin-1 client name is replaced.
    hs = decode_ext_handshake(bencode({b"yourip": b"abc", b"v": b"\xe9t\xe9"}))
    assert hs.yourip is None and hs.v == "\ufffdt\ufffd"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"le",
        b"i1e",
        b"d1:m",
        bencode({b"m": [b"x"]}),
        bencode({b"m": {b"ut_pex": b"1"}}),
        bencode({b"m": {b"ut_pex": 256}}),
        bencode({b"m": {b"\xff": 1}}),
        bencode({b"reqq": -1}),
        bencode({b"metadata_size": b"big"}),
        bencode({b"v": 1}),
        bencode({b"yourip": 1}),
        b"di1ei1ee",  # an integer key
        b"d1:ae",  # a key without a value
        b"dex",  # junk after the dict
    ],
)
def test_ext_handshake_junk_raises_remote_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_ext_handshake(payload)


@pytest.mark.parametrize("p", [b"6881", 70000, -1, 0, [6881]])
def test_ext_handshake_ignores_a_wrong_listen_port(p: object) -> None:
    # 'p' is advisory: a bad one costs the listen address, not the connection.
    hs = decode_ext_handshake(bencode({b"m": {b"ut_pex": 1}, b"p": p, b"reqq": 250}))
    assert hs.p is None
    assert hs.m == {"ut_pex": 1} and hs.reqq == 250


def test_ext_handshake_accepts_non_canonical_bencode() -> None:
    # Keys out of order (top level and inside "m"), a duplicate key, a leading zero:
    # libtorrent accepts all of these, so we do too (the first duplicate wins, as there).
    payload = b"d1:v3:abc1:md6:ut_pexi1e11:ut_metadatai03ee4:reqqi5e4:reqqi9e1:pi6881ee"
    hs = decode_ext_handshake(payload)
    assert hs.m == {"ut_pex": 1, "ut_metadata": 3}
    assert (hs.v, hs.reqq, hs.p) == ("abc", 5, 6881)


def test_metadata_message_accepts_unsorted_keys_before_the_data() -> None:
    msg = decode_metadata_message(b"d10:total_sizei3e5:piecei0e8:msg_typei1ee" + b"xyz")
    assert msg == MetadataData(0, 3, b"xyz")


def test_pex_accepts_unsorted_keys() -> None:
    payload = b"d7:dropped0:5:added6:\x01\x02\x03\x04\x1a\xe1e"
    assert decode_pex(payload) == PexMessage(added=[("1.2.3.4", 6881)])


def test_ext_handshake_encode_refuses_bad_fields() -> None:
    with pytest.raises(LocalProtocolError):
        encode_ext_handshake(m={"x": 300})
    with pytest.raises(LocalProtocolError):
        encode_ext_handshake(yourip=b"123")
    with pytest.raises(LocalProtocolError):
        encode_ext_handshake(p=0)


# ------------------------------------------------------------------ bencoded_end

bencodable = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(bencodable, st.binary(max_size=20))
def test_bencoded_end_finds_the_end_of_any_value(value: Any, tail: bytes) -> None:
    raw = bencode(value)
    assert bencoded_end(raw + tail) == len(raw)
    assert bencoded_end(b"xx" + raw + tail, 2) == len(raw) + 2


@pytest.mark.parametrize(
    "data", [b"", b"d", b"l1:a", b"5:abc", b"i12", b"x", b"e", b"-1:a", b"99999999999:"]
)
def test_bencoded_end_rejects_truncated_or_junk(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        bencoded_end(data)


def test_bencoded_end_is_bounded() -> None:
    with pytest.raises(RemoteProtocolError, match="nesting deeper"):
        bencoded_end(b"l" * 1000 + b"e" * 1000)
    with pytest.raises(RemoteProtocolError, match="more than 100 items"):
        bencoded_end(b"l" + b"i0e" * 200 + b"e", max_items=100)


# ------------------------------------------------------------------ BEP 9


@pytest.mark.parametrize(
    "msg",
    [
        MetadataRequest(0),
        MetadataReject(3),
        MetadataData(1, 40000, b"d4:name3:abce" + b"\x00" * 100),  # data that looks like bencode
        MetadataData(2, 32769, b"e"),
        MetadataData(0, 0, b""),
    ],
)
def test_metadata_messages_round_trip(msg: MetadataRequest | MetadataData | MetadataReject) -> None:
    assert decode_metadata_message(encode_metadata_message(msg)) == msg


def test_metadata_wire_format_matches_bep9() -> None:
    assert encode_metadata_message(MetadataRequest(0)) == b"d8:msg_typei0e5:piecei0ee"
    assert (
        encode_metadata_message(MetadataData(0, 3425, b"DATA"))
        == b"d8:msg_typei1e5:piecei0e10:total_sizei3425eeDATA"
    )
    assert encode_metadata_message(MetadataReject(0)) == b"d8:msg_typei2e5:piecei0ee"


def test_metadata_unknown_msg_type_is_ignored() -> None:
    assert decode_metadata_message(b"d8:msg_typei7e5:piecei0ee") is None


@pytest.mark.parametrize(
    "payload",
    [
        b"d8:msg_typei0ee",  # no piece
        b"d5:piecei0ee",  # no msg_type
        b"d8:msg_typei1e5:piecei0ee",  # data without total_size
        b"d8:msg_typei0e5:piecei-1ee",
        b"d8:msg_typei0e5:piecei0eeTRAILING",
        b"d8:msg_typei1e5:piecei0e10:total_sizei1ee" + bytes(16385),
        b"li0ee",
        b"d8:msg_type",
    ],
)
def test_metadata_junk_raises_remote_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_metadata_message(payload)


def test_metadata_encode_refuses_oversized_piece() -> None:
    with pytest.raises(LocalProtocolError):
        encode_metadata_message(MetadataData(0, 1 << 20, bytes(16385)))


# ------------------------------------------------------------------ BEP 11


def test_pex_round_trip_ipv4_and_ipv6_with_flags() -> None:
    msg = PexMessage(
        added=[("10.0.0.1", 6881), ("192.168.1.2", 1), ("::1", 51413), ("2001:db8::7", 65535)],
        dropped=[("1.2.3.4", 80), ("fe80::1", 443)],
        added_flags=[0x02, 0x00, 0x10, 0x01],
    )
    payload = encode_pex(msg)
    assert decode_pex(payload) == msg


def test_pex_compact_layout() -> None:
    payload = encode_pex(PexMessage(added=[("1.2.3.4", 0x1AE1)], dropped=[("::1", 1)]))
    assert payload == bencode(
        {
            b"added": b"\x01\x02\x03\x04\x1a\xe1",
            b"dropped": b"",
            b"dropped6": bytes(15) + b"\x01\x00\x01",
        }
    )
    assert decode_pex(payload) == PexMessage(added=[("1.2.3.4", 6881)], dropped=[("::1", 1)])


def test_pex_ignores_misaligned_flags_and_caps_peer_count() -> None:
    peers = b"".join(
        bytes((10, 0, i // 256, i % 256)) + b"\x1a\xe1" for i in range(MAX_PEX_PEERS + 50)
    )
    msg = decode_pex(bencode({b"added": peers, b"added.f": b"\x01", b"x": 1}))
    assert len(msg.added) == MAX_PEX_PEERS and msg.added_flags == []
    assert msg.added[0] == ("10.0.0.0", 6881)


@pytest.mark.parametrize(
    "payload",
    [
        bencode({b"added": b"\x01\x02\x03\x04\x05"}),
        bencode({b"added6": bytes(17)}),
        bencode({b"dropped": 5}),
        b"le",
        b"",
    ],
)
def test_pex_junk_raises_remote_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_pex(payload)


def test_pex_encode_refuses_bad_peers() -> None:
    with pytest.raises(LocalProtocolError):
        encode_pex(PexMessage(added=[("not-an-ip", 1)]))
    with pytest.raises(LocalProtocolError):
        encode_pex(PexMessage(added=[("1.2.3.4", 70000)]))
    with pytest.raises(LocalProtocolError):
        encode_pex(PexMessage(added=[("1.2.3.4", 1)], added_flags=[1, 2]))
