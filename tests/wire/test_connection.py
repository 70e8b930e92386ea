"""PeerConnection: two connections back to back (like h11's ConnectionPair), the state
table, remote and local violations, buffering, and a parse-throughput measurement."""

from __future__ import annotations

import time

import pytest

from swarmhub.errors import LocalProtocolError, RemoteProtocolError
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection, Phase
from swarmhub.wire.extensions import (
    ExtensionHandshake,
    decode_ext_handshake,
    encode_ext_handshake,
)
from swarmhub.wire.messages import (
    HANDSHAKE_LENGTH,
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Extended,
    Handshake,
    Hashes,
    HashReject,
    HashRequest,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    KeepAlive,
    Message,
    NotInterested,
    Piece,
    Port,
    RejectRequest,
    Request,
    SuggestPiece,
    Unchoke,
    bitfield_from_indices,
    encode,
    make_reserved,
)

INFO_HASH = b"\x11" * 20


class ConnectionPair:
    """Two PeerConnections wired back to back; ``send`` returns what the other side got."""

    def __init__(
        self,
        *,
        a_reserved: bytes = make_reserved(),
        b_reserved: bytes = make_reserved(),
        num_pieces: int | None = 16,
    ) -> None:
        self.a = PeerConnection(our_reserved=a_reserved, num_pieces=num_pieces)
        self.b = PeerConnection(our_reserved=b_reserved, num_pieces=num_pieces)

    def other(self, conn: PeerConnection) -> PeerConnection:
        return self.b if conn is self.a else self.a

    def send(self, conn: PeerConnection, *msgs: Message, bytewise: bool = False) -> list[object]:
        data = b"".join(conn.send(m) for m in msgs)
        peer = self.other(conn)
        chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
        events: list[object] = []
        for chunk in chunks:
            peer.receive_data(chunk)
            while (ev := peer.next_event()) is not NEED_DATA:
                events.append(ev)
                if ev is CLOSED:
                    break
        return events

    def handshake(self) -> None:
        hs_a = Handshake(self.a.our_reserved, INFO_HASH, b"A" * 20)
        hs_b = Handshake(self.b.our_reserved, INFO_HASH, b"B" * 20)
        assert self.send(self.a, hs_a) == [hs_a]
        assert self.send(self.b, hs_b) == [hs_b]


def open_pair(**kwargs: object) -> ConnectionPair:
    pair = ConnectionPair(**kwargs)  # type: ignore[arg-type]
    pair.handshake()
    return pair


def frame(msg_id: int, payload: bytes = b"") -> bytes:
    return (1 + len(payload)).to_bytes(4, "big") + bytes((msg_id,)) + payload


def remote(
    *,
    our_reserved: bytes = make_reserved(),
    their_reserved: bytes = make_reserved(),
    num_pieces: int | None = None,
    max_message_length: int = 1 << 21,
) -> PeerConnection:
    """A connection that has sent its handshake and received the remote's."""
    conn = PeerConnection(
        our_reserved=our_reserved, num_pieces=num_pieces, max_message_length=max_message_length
    )
    conn.send(Handshake(our_reserved, INFO_HASH, b"A" * 20))
    conn.receive_data(encode(Handshake(their_reserved, INFO_HASH, b"B" * 20)))
    assert isinstance(conn.next_event(), Handshake)
    return conn


def feed(conn: PeerConnection, data: bytes) -> list[object]:
    conn.receive_data(data)
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
        if ev is CLOSED:
            break
    return out


# ------------------------------------------------------------------ happy paths


def test_handshake_negotiates_the_bits_both_sides_set() -> None:
    pair = open_pair(
        a_reserved=make_reserved(v2=True, dht=True), b_reserved=make_reserved(fast=False)
    )
    for c in (pair.a, pair.b):
        assert c.handshake_sent and c.handshake_received
        assert c.extension and not c.fast and not c.v2_upgrade
        assert c.our_phase is Phase.FIRST and c.their_phase is Phase.FIRST
    assert pair.b.remote_reserved == make_reserved(v2=True, dht=True)
    assert pair.b.remote_dht and not pair.a.remote_dht
    both_v2 = open_pair(a_reserved=make_reserved(v2=True), b_reserved=make_reserved(v2=True))
    assert both_v2.a.v2_upgrade and both_v2.b.v2_upgrade and both_v2.a.fast


def test_a_responder_sets_its_bits_after_the_peer_handshake_and_not_after_its_own() -> None:
    """An incoming connection learns its torrent (v2 or not) from the peer's handshake."""
    c = PeerConnection(our_reserved=make_reserved())
    c.receive_data(encode(Handshake(make_reserved(v2=True), INFO_HASH, b"B" * 20)))
    assert isinstance(c.next_event(), Handshake) and not c.v2_upgrade
    c.set_our_reserved(make_reserved(v2=True))
    assert c.v2_upgrade  # negotiated again with the new bits
    with pytest.raises(LocalProtocolError, match="8 bytes"):
        c.set_our_reserved(b"\0")
    c.send(Handshake(make_reserved(v2=True), INFO_HASH, b"A" * 20))
    with pytest.raises(LocalProtocolError, match="fixed"):
        c.set_our_reserved(make_reserved())
    assert c.v2_upgrade and c.our_reserved == make_reserved(v2=True)


def test_initial_choke_and_interest_state() -> None:
    c = PeerConnection(our_reserved=make_reserved())
    assert (c.am_choking, c.am_interested, c.peer_choking, c.peer_interested) == (
        True, False, True, False,
    )  # fmt: skip


@pytest.mark.parametrize("bytewise", [False, True])
def test_download_conversation(bytewise: bool) -> None:
    pair = open_pair(num_pieces=10)
    a, b = pair.a, pair.b
    bits = bitfield_from_indices(range(10), 10)
    assert pair.send(b, Bitfield(bits), bytewise=bytewise) == [Bitfield(bits)]
    assert pair.send(a, HaveNone(), Interested(), bytewise=bytewise) == [HaveNone(), Interested()]
    assert a.am_interested and b.peer_interested and a.our_phase is Phase.OPEN
    assert pair.send(b, Unchoke(), bytewise=bytewise) == [Unchoke()]
    assert not b.am_choking and not a.peer_choking
    reqs = [Request(3, 0, 16384), Request(3, 16384, 16384)]
    assert pair.send(a, *reqs, bytewise=bytewise) == reqs
    blocks = [Piece(3, 0, b"\x01" * 16384), Piece(3, 16384, b"\x02" * 16384)]
    assert pair.send(b, *blocks, bytewise=bytewise) == blocks
    assert pair.send(a, Have(3), Cancel(4, 0, 16384), KeepAlive(), bytewise=bytewise) == [
        Have(3), Cancel(4, 0, 16384), KeepAlive(),
    ]  # fmt: skip
    assert pair.send(b, Choke(), bytewise=bytewise) == [Choke()]
    assert a.peer_choking and b.am_choking
    assert pair.send(a, NotInterested()) == [NotInterested()]
    assert not b.peer_interested


def test_fast_extension_messages() -> None:
    pair = open_pair(num_pieces=10)
    a, b = pair.a, pair.b
    assert a.fast and b.fast
    fast: list[Message] = [HaveAll(), AllowedFast(2), SuggestPiece(5), RejectRequest(2, 0, 16384)]
    assert pair.send(b, *fast) == fast
    assert pair.send(a, Request(2, 0, 16384)) == [Request(2, 0, 16384)]  # allowed while choked


def test_extension_handshake_and_port_leave_the_bitfield_slot_open() -> None:
    # libtorrent 2.1.1 really sends its extension handshake before HaveAll.
    pair = open_pair()
    ext = Extended(0, encode_ext_handshake(m={"ut_metadata": 3}, v="swarmhub 0.1", reqq=250))
    events = pair.send(pair.b, ext, Port(6881), KeepAlive(), HaveAll())
    assert events[:3] == [ext, Port(6881), KeepAlive()] and events[3] == HaveAll()
    assert isinstance(events[0], Extended)
    hs = decode_ext_handshake(events[0].payload)
    assert hs == ExtensionHandshake(m={"ut_metadata": 3}, v="swarmhub 0.1", reqq=250, raw=hs.raw)


def test_v2_hash_messages() -> None:
    pair = open_pair()
    root = b"r" * 32
    msgs: list[Message] = [
        HashRequest(root, 0, 0, 2, 1),
        Hashes(root, 0, 0, 2, 1, b"h" * 96),
        HashReject(root, 0, 0, 2, 1),
    ]
    assert pair.send(pair.a, *msgs) == msgs


def test_unknown_message_ids_are_skipped() -> None:
    conn = remote()
    events = feed(conn, frame(99, b"future") + frame(6, b"\0" * 4 + b"\0" * 4 + b"\0\0\x40\0"))
    assert events == [Request(0, 0, 16384)]
    assert conn.ignored_messages == 1


def test_unknown_id_does_not_use_up_the_bitfield_slot() -> None:
    conn = remote(num_pieces=8)
    assert feed(conn, frame(42) + encode(Bitfield(b"\xff"))) == [Bitfield(b"\xff")]


def test_clean_eof_between_messages_is_closed() -> None:
    conn = remote()
    conn.receive_data(encode(Have(1)))
    conn.receive_data(b"")
    assert conn.next_event() == Have(1)
    assert conn.next_event() is CLOSED
    assert conn.next_event() is CLOSED
    assert conn.their_phase is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"more")


def test_messages_may_arrive_before_we_send_our_handshake() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    wire = encode(Handshake(make_reserved(), INFO_HASH, b"B" * 20)) + encode(HaveAll())
    events = feed(conn, wire)
    assert events[1] == HaveAll() and conn.fast and not conn.handshake_sent


def test_buffer_is_compacted_while_streaming() -> None:
    conn = remote(num_pieces=10_000)
    wire = b"".join(encode(Piece(i, 0, bytes(16384))) for i in range(600))  # ~9.6 MiB
    for off in range(0, len(wire), 65536):
        feed(conn, wire[off : off + 65536])
        assert len(conn._buf) < 512 * 1024
    assert conn.trailing_data == (b"", False)


# ------------------------------------------------------------------ remote violations


def expect_remote_error(conn: PeerConnection, data: bytes, match: str) -> None:
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match=match):
        while conn.next_event() is not NEED_DATA:
            pass
    assert conn.their_phase is Phase.ERROR
    with pytest.raises(RemoteProtocolError, match="ERROR"):
        conn.next_event()


def test_message_before_handshake() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    expect_remote_error(conn, encode(Unchoke()), "did not open with the BitTorrent handshake")


def test_bad_protocol_string_fails_on_the_first_bytes() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    expect_remote_error(conn, b"\x13BitTorrent protocoX", "handshake")
    conn2 = PeerConnection(our_reserved=make_reserved())
    expect_remote_error(conn2, b"GET / HTTP/1.1\r\n", "handshake")


def test_eof_during_handshake() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    conn.receive_data(encode(Handshake(bytes(8), INFO_HASH, b"B" * 20))[:30])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="during the handshake"):
        conn.next_event()


def test_oversized_length_is_refused_before_buffering() -> None:
    conn = remote(max_message_length=1 << 16)
    expect_remote_error(conn, b"\x00\x10\x00\x00\x07", "over the 65536-byte limit")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(4, b"\0\0\0"), "Have message has a 3-byte payload"),
        (frame(0, b"x"), "Choke message has a 1-byte payload"),
        (frame(7, b"\0" * 5), "Piece"),
        (frame(5, b"\xff\xff"), "Bitfield is 2 bytes but 8 pieces need 1"),
        (frame(20), "Extended message has no extension id byte"),
        (frame(22, bytes(50)), "Hashes message has a 50-byte payload"),
    ],
)
def test_truncated_or_malformed_payloads(data: bytes, match: str) -> None:
    expect_remote_error(remote(num_pieces=8), data, match)


def test_fast_messages_need_the_fast_bit() -> None:
    for msg in (HaveAll(), HaveNone(), AllowedFast(1), SuggestPiece(1), RejectRequest(1, 0, 1)):
        conn = remote(their_reserved=make_reserved(fast=False))
        expect_remote_error(conn, encode(msg), f"{type(msg).__name__}.*fast extension")


def test_extended_needs_the_extension_bit() -> None:
    conn = remote(our_reserved=make_reserved(extension=False))
    expect_remote_error(conn, encode(Extended(0, b"de")), "extension protocol")


def test_late_bitfield_is_accepted_and_counted() -> None:
    # aria2 1.36 sends HaveNone and then a Bitfield; dropping it would lose a real client.
    conn = remote(num_pieces=8)
    got = feed(conn, encode(Have(1)) + encode(Bitfield(b"\xff")))
    assert got == [Have(1), Bitfield(b"\xff")]
    assert conn.late_bitfields == 1
    conn = remote(num_pieces=8)
    assert feed(conn, encode(HaveAll()) + encode(HaveNone())) == [HaveAll(), HaveNone()]
    assert conn.late_bitfields == 1


def test_bitfield_spare_bits_and_length() -> None:
    expect_remote_error(remote(num_pieces=10), encode(Bitfield(b"\xff\xff")), "spare bits")
    expect_remote_error(remote(num_pieces=10), encode(Bitfield(b"\xff")), "need 2 bytes")
    # Unknown piece count: any length is taken (the engine checks once metadata is in).
    assert feed(remote(), encode(Bitfield(b"\xff\xff\xff"))) == [Bitfield(b"\xff\xff\xff")]


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (Have(8), "Have for piece 8, but the torrent has 8 pieces"),
        (AllowedFast(8), "AllowedFast for piece 8"),
        (Request(8, 0, 16384), "Request for piece 8"),
        (Request(0, 0, 128 * 1024 + 1), "blocks must be 1..131072 bytes"),
        (Request(0, 0, 0), "blocks must be"),
        (Cancel(9, 0, 1), "Cancel for piece 9"),
        (RejectRequest(9, 0, 1), "RejectRequest for piece 9"),
    ],
)
def test_out_of_range_indices_and_blocks(msg: Message, match: str) -> None:
    expect_remote_error(remote(num_pieces=8), encode(msg), match)


@pytest.mark.parametrize("first", [True, False])
def test_piece_out_of_range_on_both_parse_paths(first: bool) -> None:
    conn = remote(num_pieces=8)
    prefix = b"" if first else encode(Unchoke())
    expect_remote_error(conn, prefix + encode(Piece(8, 0, b"x")), "Piece for piece 8")
    conn = remote(num_pieces=8)
    expect_remote_error(conn, prefix + encode(Piece(0, 0, bytes(128 * 1024 + 1))), "blocks must be")


def test_block_ranges_checked_against_piece_geometry() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    assert feed(conn, encode(Request(2, 0, 100)) + encode(Piece(1, 16384, bytes(16384)))) == [
        Request(2, 0, 100), Piece(1, 16384, bytes(16384)),
    ]  # fmt: skip
    expect_remote_error(conn, encode(Request(2, 0, 101)), "piece 2, which is only 100 bytes")
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    expect_remote_error(
        conn, encode(Unchoke()) + encode(Piece(0, 16385, bytes(16384))), "only 32768"
    )


def test_fast_path_checks_the_short_last_piece() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    assert feed(conn, encode(Unchoke()) + encode(Piece(2, 0, bytes(100)))) == [
        Unchoke(), Piece(2, 0, bytes(100)),
    ]  # fmt: skip
    expect_remote_error(conn, encode(Piece(2, 0, bytes(101))), "only 100 bytes")


def test_piece_at_parses_a_block_in_the_callers_buffer_with_the_same_rules() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    data = encode(Piece(1, 16384, b"a" * 16384)) + encode(Have(0))
    assert conn.piece_at(data, 0, len(data)) is None  # FIRST phase: the core parses it
    assert feed(conn, encode(Unchoke())) == [Unchoke()]
    view = memoryview(data)
    assert conn.piece_at(view, 0, len(data)) == (1, 16384, 16384 + 13)
    assert conn.piece_at(view, 0, 16384 + 12) is None  # incomplete
    assert conn.piece_at(view, 16384 + 13, len(data)) is None  # a Have
    conn.receive_data(b"\0")  # our own bytes come first
    assert conn.piece_at(view, 0, len(data)) is None
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    feed(conn, encode(Unchoke()))
    bad = encode(Piece(2, 0, bytes(101)))  # past the short last piece
    with pytest.raises(RemoteProtocolError, match="only 100 bytes"):
        conn.piece_at(bad, 0, len(bad))
    assert conn.their_phase is Phase.ERROR


def test_pieces_at_parses_a_run_of_blocks_with_the_same_rules_as_piece_at() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    blocks = [Piece(0, 0, b"a" * 16384), Piece(0, 16384, b"b" * 16384),
              Piece(2, 0, b"c" * 100)]  # the short last piece: checked in full
    data = b"".join(encode(p) for p in blocks) + encode(Have(1))
    assert conn.pieces_at(data, 0, len(data), 8, tuple) == ([], [], 0, None)  # FIRST
    assert feed(conn, encode(Unchoke())) == [Unchoke()]
    view = memoryview(data)
    got, starts, pos, error = conn.pieces_at(view, 0, len(data), 8, tuple)
    assert got == [(0, 0, 16384), (0, 16384, 16384), (2, 0, 100)] and error is None
    assert [bytes(view[s:s + b[2]]) for s, b in zip(starts, got, strict=True)] == [
        p.data for p in blocks]
    assert pos == len(data) - len(encode(Have(1)))  # stops at the Have
    assert conn.pieces_at(view, 0, len(data), 2, tuple)[2] == 2 * (16384 + 13)  # at most 2
    assert conn.pieces_at(view, 0, 16384 + 13 + 20, 8, tuple)[:3] == (
        [(0, 0, 16384)], [13], 16384 + 13)  # the second is incomplete
    # a bad Piece after good ones: they come back with the error, which breaks the conn
    bad = encode(blocks[0]) + encode(Piece(2, 0, bytes(101)))
    got, starts, pos, error = conn.pieces_at(bad, 0, len(bad), 8, tuple)
    assert got == [(0, 0, 16384)] and pos == 16384 + 13
    assert isinstance(error, RemoteProtocolError) and "only 100 bytes" in str(error)
    assert conn.their_phase is Phase.ERROR


def test_missing_counts_the_bytes_to_the_next_frame_boundary() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    assert conn.missing() == HANDSHAKE_LENGTH
    hs = encode(Handshake(make_reserved(), INFO_HASH, b"B" * 20))
    conn.receive_data(hs[:10])
    assert conn.missing() == HANDSHAKE_LENGTH - 10
    conn.receive_data(hs[10:])
    assert conn.missing() == 0
    assert isinstance(conn.next_event(), Handshake)
    assert conn.missing() == 0  # on a boundary, nothing buffered
    frames = encode(HaveAll()) + encode(Have(3))
    conn.receive_data(frames[:2])
    assert conn.missing() == 2
    conn.receive_data(frames[2:7])
    assert conn.missing() == 2  # HaveAll whole, 2 of Have's 4 prefix bytes in
    conn.receive_data(frames[7:9])
    assert conn.missing() == 5  # Have's prefix whole: its 5-byte body to come
    conn.receive_data(frames[9:])
    assert conn.missing() == 0
    assert [conn.next_event(), conn.next_event()] == [HaveAll(), Have(3)]


def test_request_fast_path_sends_what_encode_would_and_refuses_the_same() -> None:
    conn = remote(num_pieces=4)
    assert conn.send(Unchoke()) == encode(Unchoke())  # OPEN: Requests take the fast path
    for req in (Request(0, 0, 16384), Request(3, 2**31, 1), Request(2, 16384, 128 * 1024)):
        assert conn.send(req) == encode(req)
    with pytest.raises(LocalProtocolError, match="torrent has 4 pieces"):
        conn.send(Request(4, 0, 16384))
    with pytest.raises(LocalProtocolError, match="blocks must be"):
        conn.send(Request(0, 0, 0))
    with pytest.raises(LocalProtocolError):
        conn.send(Request(0, -1, 16384))  # not a u32
    assert conn.send(Have(1)) == encode(Have(1))  # a refused send changed nothing


def test_send_all_packs_haves_inline_and_refuses_the_same_as_send() -> None:
    conn = remote(num_pieces=4)
    assert conn.send(Unchoke()) == encode(Unchoke())  # OPEN: send_all's inline paths
    msgs = (Have(0), Request(1, 0, 16384), Have(3), Interested())
    assert conn.send_all(msgs) == b"".join(encode(x) for x in msgs)
    for bad in (Have(4), Have(-1)):
        with pytest.raises(LocalProtocolError):
            conn.send_all((Have(1), bad))
    unknown = remote()  # no piece count yet: any u32
    unknown.send(Unchoke())
    assert unknown.send_all((Have(2**32 - 1),)) == encode(Have(2**32 - 1))
    with pytest.raises(LocalProtocolError):
        unknown.send_all((Have(2**32),))


def test_send_piece_returns_header_and_the_same_buffer() -> None:
    pair = open_pair(num_pieces=None)
    pair.a.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    data = bytearray(range(256)) * 64
    view = memoryview(data)[:16384]
    head, body = pair.a.send_piece(1, 16384, view)
    assert body is view  # no copy of the block
    assert head + bytes(body) == encode(Piece(1, 16384, bytes(view)))
    pair.b.receive_data(head + bytes(body))
    assert pair.b.next_event() == Piece(1, 16384, bytes(view))
    with pytest.raises(LocalProtocolError, match="only 100 bytes"):
        pair.a.send_piece(2, 0, view)
    fresh = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError, match="HANDSHAKE"):
        fresh.send_piece(0, 0, b"x")


def test_send_pieces_gives_each_blocks_header_and_a_view_of_its_piece() -> None:
    pair = open_pair(num_pieces=None)
    pair.a.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    pieces = {0: bytes(range(256)) * 128, 1: bytearray(b"x" * 32768), 2: b"y" * 100}
    blocks = [Request(0, 16384, 16384), Request(1, 0, 16384), Request(1, 16384, 16384),
              Request(2, 0, 100)]
    parts = pair.a.send_pieces(blocks, pieces)
    want = [Piece(r.index, r.begin, bytes(pieces[r.index][r.begin:r.begin + r.length]))
            for r in blocks]
    assert b"".join(parts) == b"".join(encode(p) for p in want)
    bodies = parts[1::2]
    assert all(isinstance(b, memoryview) and b.obj is pieces[r.index]  # no copy
               for b, r in zip(bodies, blocks, strict=True))
    pair.b.receive_data(b"".join(parts))
    assert [pair.b.next_event() for _ in want] == want
    with pytest.raises(LocalProtocolError, match="only 100 bytes"):
        pair.a.send_pieces([Request(1, 0, 16384), Request(2, 0, 16384)], pieces)
    with pytest.raises(LocalProtocolError, match="3 pieces"):
        pair.a.send_pieces([Request(3, 0, 16384)], pieces)
    fresh = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError, match="HANDSHAKE"):
        fresh.send_pieces([Request(0, 0, 1)], pieces)


def test_set_num_pieces_rejects_inconsistent_geometry() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError):
        conn.set_num_pieces(2, piece_length=10, total_length=30)
    with pytest.raises(LocalProtocolError):
        conn.set_num_pieces(2, piece_length=10)


def test_eof_in_the_middle_of_a_message() -> None:
    conn = remote()
    conn.receive_data(encode(Have(1))[:6])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a message"):
        conn.next_event()


# ------------------------------------------------------------------ local misuse


def test_send_before_handshake() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError, match="send the Handshake first"):
        conn.send(Interested())


def test_handshake_must_carry_our_reserved_bits_and_only_once() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError, match="our_reserved"):
        conn.send(Handshake(bytes(8), INFO_HASH, b"A" * 20))
    conn.send(Handshake(make_reserved(), INFO_HASH, b"A" * 20))
    with pytest.raises(LocalProtocolError, match="Handshake in state FIRST"):
        conn.send(Handshake(make_reserved(), INFO_HASH, b"A" * 20))


def test_local_bitfield_only_first_and_rejected_send_changes_nothing() -> None:
    conn = remote(num_pieces=8)
    conn.send(Unchoke())
    with pytest.raises(LocalProtocolError, match="only be the first message"):
        conn.send(Bitfield(b"\xff"))
    assert conn.our_phase is Phase.OPEN and not conn.am_choking
    conn2 = remote(num_pieces=7)
    with pytest.raises(LocalProtocolError, match="spare bits"):
        conn2.send(Bitfield(b"\x01"))
    assert conn2.our_phase is Phase.FIRST


def test_local_fast_and_extended_need_negotiation() -> None:
    conn = remote(their_reserved=bytes(8))
    with pytest.raises(LocalProtocolError, match="fast extension"):
        conn.send(HaveAll())
    with pytest.raises(LocalProtocolError, match="extension protocol"):
        conn.send(Extended(0, b"de"))
    early = PeerConnection(our_reserved=make_reserved())
    early.send(Handshake(make_reserved(), INFO_HASH, b"A" * 20))
    with pytest.raises(LocalProtocolError, match="has not arrived"):
        early.send(HaveAll())


def test_local_index_checks() -> None:
    conn = remote(num_pieces=4)
    with pytest.raises(LocalProtocolError, match="piece 4"):
        conn.send(Have(4))
    with pytest.raises(LocalProtocolError, match="blocks must be"):
        conn.send(Request(0, 0, 1 << 20))
    with pytest.raises(LocalProtocolError, match="piece 9"):
        conn.send(Piece(9, 0, b"x"))


# ------------------------------------------------------------------ throughput


def test_parse_throughput_of_piece_messages() -> None:
    """Parse a 64 MiB stream of 16 KiB Piece messages fed in 64 KiB chunks.

    Not a timing assertion; it prints the figure. Measured on the 2-core dev machine:
    ~410,000 messages/s (~6.7 GB/s of stream), 20x the ~20,000/s the hot path needs.
    """
    block = 16384
    count = (64 << 20) // block
    wire = b"".join(
        encode(Piece(i % 4096, 0, i.to_bytes(4, "big") * (block // 4))) for i in range(count)
    )
    conn = remote(num_pieces=4096)
    feed(conn, encode(Unchoke()))
    parsed = 0
    checksum = 0
    start = time.perf_counter()
    for off in range(0, len(wire), 65536):
        conn.receive_data(wire[off : off + 65536])
        while (ev := conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Piece)
            checksum ^= int.from_bytes(ev.data[:4], "big")
            parsed += 1
    elapsed = time.perf_counter() - start
    assert parsed == count
    expected = 0
    for i in range(count):
        expected ^= i
    assert checksum == expected
    print(
        f"\nparsed {parsed} Piece messages in {elapsed * 1e3:.1f} ms: {parsed / elapsed:,.0f} msg/s"
    )


def test_requests_at_parses_a_run_of_requests_in_the_callers_buffer_with_the_same_rules() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    run = encode(Request(0, 0, 16384)) + encode(Request(0, 16384, 16384))
    data = run + encode(Request(2, 0, 100)) + encode(Have(1)) + encode(Request(1, 0, 16384))
    assert conn.requests_at(data, 0, len(data)) == ([], 0)  # FIRST phase: the core parses it
    assert feed(conn, encode(Interested())) == [Interested()]
    view = memoryview(data)
    reqs, stop = conn.requests_at(view, 0, len(data))
    assert reqs == [Request(0, 0, 16384), Request(0, 16384, 16384), Request(2, 0, 100)]
    assert stop == 3 * 17  # the Have ends the run
    assert conn.requests_at(view, stop, len(data)) == ([], stop)
    assert conn.requests_at(view, 0, 17 + 16) == ([Request(0, 0, 16384)], 17)  # partial 2nd
    conn.receive_data(b"\0")  # our own bytes come first
    assert conn.requests_at(view, 0, len(data)) == ([], 0)


def test_haves_at_parses_a_run_of_haves_and_leaves_a_bad_one_to_next_event() -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    data = encode(Have(0)) + encode(Have(2)) + encode(Request(1, 0, 16384)) + encode(Have(1))
    assert conn.haves_at(data, 0, len(data)) == ([], 0)  # FIRST phase: the core parses it
    assert feed(conn, encode(Interested())) == [Interested()]
    view = memoryview(data)
    assert conn.haves_at(view, 0, len(data)) == ([0, 2], 18)  # the Request ends the run
    assert conn.haves_at(view, 18, len(data)) == ([], 18)
    assert conn.haves_at(view, 35, len(data)) == ([1], len(data))
    assert conn.haves_at(view, 0, 9 + 8) == ([0], 9)  # partial 2nd
    bad = encode(Have(1)) + encode(Have(3)) + encode(Have(0))
    assert conn.haves_at(bad, 0, len(bad)) == ([1], 9)  # no such piece: ends the run
    assert conn.haves_at(bad, 9, len(bad)) == ([], 9)
    expect_remote_error(conn, bad[9:], "torrent has 3 pieces")  # the core refuses it
    assert conn.haves_at(bad, 18, len(bad)) == ([], 18)  # nor after an error


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (Request(3, 0, 16384), "torrent has 3 pieces"),
        (Request(2, 0, 101), "only 100 bytes"),
        (Request(0, 16384, 16385), "only 32768 bytes"),
        (Request(0, 0, 128 * 1024 + 1), "blocks must be"),
        (Request(0, 0, 0), "blocks must be"),
    ],
)
def test_requests_at_refuses_a_bad_request_like_next_event(req: Request, match: str) -> None:
    conn = remote()
    conn.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    feed(conn, encode(Interested()))
    bad = encode(Request(0, 0, 16384)) + encode(req)
    assert conn.requests_at(bad, 0, len(bad)) == ([Request(0, 0, 16384)], 17)
    with pytest.raises(RemoteProtocolError, match=match):
        conn.requests_at(bad, 17, len(bad))
    assert conn.their_phase is Phase.ERROR
    other = remote()
    other.set_num_pieces(3, piece_length=32768, total_length=32768 * 2 + 100)
    expect_remote_error(other, encode(Interested()) + bad, match)
