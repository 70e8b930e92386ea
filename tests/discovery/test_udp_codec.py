"""BEP 15/41 codec: byte-exact packets, round trips, and "parse or UdpPacketError" fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.discovery import udp_codec as u
from swarmhub.discovery.udp_codec import (
    Announce,
    AnnounceReply,
    Connect,
    ConnectReply,
    ErrorReply,
    Scrape,
    ScrapeReply,
    UdpPacketError,
    encode,
    parse_request,
    parse_response,
    parse_url_data,
)
from swarmhub.errors import TrackerError

IH = bytes(range(20))
PID = b"-SH0100-abcdefghijkl"


def announce(**kw: object) -> Announce:
    base: dict[str, object] = dict(
        connection_id=0x1122334455667788, transaction_id=7, info_hash=IH, peer_id=PID,
        downloaded=1, left=2, uploaded=3, event=2, ip=0, key=9, num_want=-1, port=6881,
    )
    base.update(kw)
    return Announce(**base)  # type: ignore[arg-type]


def test_connect_request_is_the_bep15_layout() -> None:
    assert encode(Connect(0xDEADBEEF)) == bytes.fromhex("0000041727101980" "00000000" "deadbeef")
    assert parse_request(encode(Connect(5))) == Connect(5)


def test_connect_without_the_magic_is_refused() -> None:
    with pytest.raises(UdpPacketError, match="protocol id"):
        parse_request(struct.pack("!QII", 1, 0, 5))


def test_announce_request_is_98_bytes_at_the_bep15_offsets() -> None:
    raw = encode(announce())
    assert len(raw) == u.ANNOUNCE_SIZE == 98
    assert raw[16:36] == IH and raw[36:56] == PID
    assert raw[80:84] == b"\0\0\0\x02"  # started
    assert raw[92:96] == b"\xff\xff\xff\xff"  # num_want -1
    assert raw[96:98] == (6881).to_bytes(2, "big")
    assert parse_request(raw) == announce()


def test_bep41_url_data_round_trips_in_255_byte_chunks() -> None:
    url = b"/announce?passkey=" + b"a" * 600
    raw = encode(announce(url_data=url))
    assert raw[98:100] == b"\x02\xff"
    parsed = parse_request(raw)
    assert isinstance(parsed, Announce) and parsed.url_data == url


def test_bep41_example_with_nops_and_end() -> None:
    opts = bytes([2, 12]) + b"/dir?a=b&c=d" + bytes([1, 1, 0]) + b"ignored after end"
    assert parse_url_data(opts) == b"/dir?a=b&c=d"
    # Unknown option types carry a length and are skipped; an empty URL data is b"".
    assert parse_url_data(bytes([9, 2, 0, 0, 2, 0])) == b""
    assert parse_url_data(b"") is None


@pytest.mark.parametrize("opts", [b"\x02", b"\x02\x05abc", b"\x07\x09"])
def test_truncated_bep41_options_are_errors(opts: bytes) -> None:
    with pytest.raises(UdpPacketError, match="BEP 41"):
        parse_url_data(opts)


def test_url_data_is_bounded() -> None:
    with pytest.raises(UdpPacketError, match="longer than"):
        parse_url_data(u.encode_url_data(b"x" * (u.MAX_URL_DATA + 1)))


def test_scrape_request_and_its_cap() -> None:
    req = Scrape(1, 2, (IH, bytes(20)))
    assert parse_request(encode(req)) == req
    too_many = Scrape(1, 2, (IH,) * (u.MAX_SCRAPE + 1))
    with pytest.raises(UdpPacketError, match="at most 74"):
        parse_request(encode(too_many))
    with pytest.raises(UdpPacketError, match="without an info hash"):
        parse_request(struct.pack("!QII", 1, 2, 3))


def test_short_and_unknown_requests_are_errors() -> None:
    with pytest.raises(UdpPacketError, match="at least 16"):
        parse_request(b"\0" * 15)
    with pytest.raises(UdpPacketError, match="at least 98"):
        parse_request(encode(announce())[:97])
    with pytest.raises(UdpPacketError, match="unknown request action"):
        parse_request(struct.pack("!QII", 1, 9, 3))
    with pytest.raises(UdpPacketError, match="unknown announce event"):
        parse_request(encode(announce(event=4)))


def test_responses_round_trip() -> None:
    peers4 = bytes([127, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0, 0])  # the second has port 0
    reply = AnnounceReply(3, 1800, 4, 5, peers4)
    parsed = parse_response(encode(reply))
    assert parsed == reply
    assert isinstance(parsed, AnnounceReply) and parsed.addresses() == [("127.0.0.1", 6881)]
    peers6 = bytes(15) + b"\x01" + b"\x00\x50"
    v6 = parse_response(encode(AnnounceReply(3, 60, 0, 1, peers6, True)), ipv6=True)
    assert isinstance(v6, AnnounceReply) and v6.addresses() == [("::1", 80)]
    for packet in (ConnectReply(1, 2**64 - 1), ScrapeReply(4, ((1, 2, 3), (0, 0, 0))),
                   ErrorReply(5, "unregistered torrent")):
        assert parse_response(encode(packet)) == packet


def test_trailing_partial_peer_is_ignored_and_counts_saturate() -> None:
    raw = encode(AnnounceReply(1, 2**40, 2**33, 1, bytes(6))) + b"\x01\x02"
    parsed = parse_response(raw)
    assert isinstance(parsed, AnnounceReply)
    assert parsed.peers == bytes(6) and parsed.interval == 0xFFFFFFFF


def test_encoding_a_bad_packet_is_a_clear_error() -> None:
    with pytest.raises(UdpPacketError, match="info_hash must be 20 bytes"):
        encode(announce(info_hash=b"short"))
    with pytest.raises(UdpPacketError, match="cannot encode Announce"):
        encode(announce(port=70000))
    assert issubclass(UdpPacketError, TrackerError)


@given(st.binary(max_size=2000))
def test_any_bytes_parse_as_request_or_raise_our_error(data: bytes) -> None:
    try:
        packet = parse_request(data)
    except UdpPacketError:
        return
    # What parses re-encodes to the same leading bytes (options may be normalised).
    assert encode(packet)[:16] == data[:16]


@given(st.binary(max_size=2000), st.booleans())
def test_any_bytes_parse_as_response_or_raise_our_error(data: bytes, ipv6: bool) -> None:
    try:
        packet = parse_response(data, ipv6=ipv6)
    except UdpPacketError:
        return
    assert encode(packet)[:8] == data[:8]
    if isinstance(packet, AnnounceReply):
        assert all(0 < port < 65536 for _, port in packet.addresses())


@given(st.sampled_from([0, 1, 2]), st.binary(max_size=1200))
def test_valid_heads_with_random_tails(action: int, tail: bytes) -> None:
    head = struct.pack("!QII", u.PROTOCOL_ID if action == 0 else 42, action, 1)
    for data in (head + tail, head + IH + PID + tail):
        try:
            packet = parse_request(data)
        except UdpPacketError:
            continue
        assert packet.transaction_id == 1 and type(packet) is (Connect, Announce, Scrape)[action]


@given(
    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 3), st.integers(-(2**31), 2**31 - 1), st.integers(0, 65535),
    st.one_of(st.none(), st.binary(max_size=u.MAX_URL_DATA)),
)
def test_announce_round_trips(
    cid: int, tid: int, count: int, event: int, num_want: int, port: int, url: bytes | None
) -> None:
    req = announce(connection_id=cid, transaction_id=tid, downloaded=count, left=count,
                   uploaded=count, event=event, num_want=num_want, port=port, url_data=url)
    assert parse_request(encode(req)) == req
