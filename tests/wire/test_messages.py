"""The message codec: exact bytes, round trips, reserved bits and bitfield helpers."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.errors import LocalProtocolError, RemoteProtocolError
from swarmhub.wire.messages import (
    HANDSHAKE_LENGTH,
    RESERVED_DHT,
    RESERVED_EXTENSION,
    RESERVED_FAST,
    RESERVED_V2_UPGRADE,
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
    bitfield_count,
    bitfield_from_bools,
    bitfield_from_indices,
    bools_from_bitfield,
    decode,
    decode_payload,
    encode,
    has_bit,
    indices_from_bitfield,
    make_reserved,
    validate_bitfield,
)

ROOT = bytes(range(32))
SAMPLES: list[Message] = [
    Handshake(make_reserved(), b"I" * 20, b"-SH0100-abcdefghijkl"),
    KeepAlive(),
    Choke(),
    Unchoke(),
    Interested(),
    NotInterested(),
    Have(7),
    Bitfield(b"\xff\x80"),
    Request(1, 16384, 16384),
    Piece(1, 16384, b"x" * 100),
    Cancel(1, 16384, 16384),
    Port(6881),
    SuggestPiece(3),
    HaveAll(),
    HaveNone(),
    RejectRequest(1, 0, 16384),
    AllowedFast(9),
    Extended(0, b"d1:md11:ut_metadatai3eee"),
    HashRequest(ROOT, 0, 0, 512, 3),
    Hashes(ROOT, 0, 0, 2, 1, b"h" * 96),
    HashReject(ROOT, 0, 0, 512, 3),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


# Exact wire bytes as BEP 3 / 6 / 10 / 52 spell them out.
@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (KeepAlive(), b"\0\0\0\0"),
        (Choke(), b"\0\0\0\x01\x00"),
        (Unchoke(), b"\0\0\0\x01\x01"),
        (Interested(), b"\0\0\0\x01\x02"),
        (NotInterested(), b"\0\0\0\x01\x03"),
        (Have(0x01020304), b"\0\0\0\x05\x04\x01\x02\x03\x04"),
        (Bitfield(b"\xa0"), b"\0\0\0\x02\x05\xa0"),
        (Request(1, 2, 3), b"\0\0\0\x0d\x06" + struct.pack(">III", 1, 2, 3)),
        (Piece(1, 2, b"ab"), b"\0\0\0\x0b\x07" + struct.pack(">II", 1, 2) + b"ab"),
        (Cancel(1, 2, 3), b"\0\0\0\x0d\x08" + struct.pack(">III", 1, 2, 3)),
        (Port(0x1AE1), b"\0\0\0\x03\x09\x1a\xe1"),
        (SuggestPiece(5), b"\0\0\0\x05\x0d\0\0\0\x05"),
        (HaveAll(), b"\0\0\0\x01\x0e"),
        (HaveNone(), b"\0\0\0\x01\x0f"),
        (RejectRequest(1, 2, 3), b"\0\0\0\x0d\x10" + struct.pack(">III", 1, 2, 3)),
        (AllowedFast(5), b"\0\0\0\x05\x11\0\0\0\x05"),
        (Extended(3, b"xy"), b"\0\0\0\x04\x14\x03xy"),
        (
            HashRequest(ROOT, 1, 2, 3, 4),
            b"\0\0\0\x31\x15" + ROOT + struct.pack(">IIII", 1, 2, 3, 4),
        ),
        (HashReject(ROOT, 1, 2, 3, 4), b"\0\0\0\x31\x17" + ROOT + struct.pack(">IIII", 1, 2, 3, 4)),
        (
            Hashes(ROOT, 1, 2, 3, 4, b"z" * 32),
            b"\0\0\0\x51\x16" + ROOT + struct.pack(">IIII", 1, 2, 3, 4) + b"z" * 32,
        ),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_wire_bytes_match_the_beps(msg: Message, wire: bytes) -> None:
    assert encode(msg) == wire
    assert decode(wire) == msg


def test_handshake_layout() -> None:
    hs = Handshake(b"\x01" * 8, b"H" * 20, b"P" * 20)
    wire = encode(hs)
    assert len(wire) == HANDSHAKE_LENGTH == 68
    assert wire == b"\x13BitTorrent protocol" + b"\x01" * 8 + b"H" * 20 + b"P" * 20


def test_reserved_bits() -> None:
    default = make_reserved()
    assert default == b"\0\0\0\0\0\x10\0\x04"
    assert has_bit(default, RESERVED_EXTENSION) and has_bit(default, RESERVED_FAST)
    assert not has_bit(default, RESERVED_V2_UPGRADE) and not has_bit(default, RESERVED_DHT)
    everything = make_reserved(v2=True, dht=True)
    assert everything == b"\0\0\0\0\0\x10\0\x15"
    assert make_reserved(extension=False, fast=False) == bytes(8)
    assert not has_bit(b"\xff" * 7, RESERVED_FAST)  # wrong size never claims a bit


@pytest.mark.parametrize(
    "msg",
    [
        Handshake(bytes(7), b"I" * 20, b"P" * 20),
        Handshake(bytes(8), b"I" * 19, b"P" * 20),
        Handshake(bytes(8), b"I" * 20, b"P" * 21),
        Have(-1),
        Have(1 << 32),
        Request(0, 0, 1 << 32),
        Port(65536),
        Extended(256, b""),
        HashRequest(b"short", 0, 0, 1, 0),
        Hashes(ROOT, 0, 0, 1, 0, b"x" * 31),
    ],
)
def test_encode_refuses_what_cannot_go_on_the_wire(msg: Message) -> None:
    with pytest.raises(LocalProtocolError):
        encode(msg)


@pytest.mark.parametrize(
    "frame",
    [
        b"\0\0\0\x02\x00\x00",  # Choke with a payload byte
        b"\0\0\0\x04\x04\0\0\0",  # Have with 3 bytes
        b"\0\0\0\x0c\x06" + bytes(11),  # Request with 11 bytes
        b"\0\0\0\x08\x07" + bytes(7),  # Piece without its header
        b"\0\0\0\x02\x09\x01",  # Port with one byte
        b"\0\0\0\x01\x14",  # Extended without its id
        b"\0\0\0\x31\x16" + bytes(48) + b"\x01",  # Hashes not a multiple of 32
        b"\0\0\0\x05\x04\0\0",  # length prefix bigger than the frame
        b"\0\0\0\x01\x63",  # unknown id cannot be decoded standalone
        b"\0\0",
    ],
)
def test_decode_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(frame)


def test_decode_payload_skips_unknown_ids() -> None:
    assert decode_payload(99, b"whatever", 0, 8) is None


# ------------------------------------------------------------------ hypothesis round trips

u32 = st.integers(0, 2**32 - 1)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Handshake, st.binary(min_size=8, max_size=8), st.binary(min_size=20, max_size=20),
              st.binary(min_size=20, max_size=20)),
    st.sampled_from([KeepAlive(), Choke(), Unchoke(), Interested(), NotInterested(), HaveAll(),
                     HaveNone()]),
    st.builds(Have, u32), st.builds(SuggestPiece, u32), st.builds(AllowedFast, u32),
    st.builds(Bitfield, st.binary(max_size=64)),
    st.builds(Request, u32, u32, u32), st.builds(Cancel, u32, u32, u32),
    st.builds(RejectRequest, u32, u32, u32),
    st.builds(Piece, u32, u32, st.binary(max_size=256)),
    st.builds(Port, st.integers(0, 65535)),
    st.builds(Extended, st.integers(0, 255), st.binary(max_size=64)),
    st.builds(HashRequest, st.binary(min_size=32, max_size=32), u32, u32, u32, u32),
    st.builds(HashReject, st.binary(min_size=32, max_size=32), u32, u32, u32, u32),
    st.builds(Hashes, st.binary(min_size=32, max_size=32), u32, u32, u32, u32,
              st.integers(0, 4).map(lambda n: b"\xee" * (32 * n))),
)  # fmt: skip


@given(messages)
def test_any_message_round_trips(msg: Message) -> None:
    assert decode(encode(msg)) == msg


# ------------------------------------------------------------------ bitfields


def naive_bits(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, on in enumerate(flags):
        if on:
            out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


@given(st.lists(st.booleans(), max_size=300))
def test_bitfield_helpers_agree_with_the_bit_by_bit_definition(flags: list[bool]) -> None:
    bits = bitfield_from_bools(flags)
    assert bits == naive_bits(flags)
    assert bitfield_from_bools(bytes(flags)) == bits
    assert bitfield_from_bools(bytearray(flags)) == bits
    assert bools_from_bitfield(bits, len(flags)) == flags
    indices = [i for i, on in enumerate(flags) if on]
    assert indices_from_bitfield(bits, len(flags)) == indices
    assert bitfield_from_indices(indices, len(flags)) == bits
    assert bitfield_count(bits) == len(indices)
    validate_bitfield(bits, len(flags))


def test_bitfield_piece_zero_is_the_high_bit() -> None:
    assert bitfield_from_indices([0, 9], 10) == b"\x80\x40"
    assert indices_from_bitfield(b"\x80\x40", 10) == [0, 9]


def test_short_bitfield_reads_missing_pieces_as_absent() -> None:
    assert bools_from_bitfield(b"\xff", 10) == [True] * 8 + [False, False]
    assert bools_from_bitfield(b"", 3) == [False] * 3


def test_large_bitfield_conversion() -> None:
    n = 1_000_003
    bits = bitfield_from_indices(range(0, n, 3), n)
    assert bitfield_count(bits) == len(range(0, n, 3))
    assert indices_from_bitfield(bits, n) == list(range(0, n, 3))
    validate_bitfield(bits, n)


def test_validate_bitfield_rejects_wrong_length_and_spare_bits() -> None:
    with pytest.raises(RemoteProtocolError, match="need 2 bytes"):
        validate_bitfield(b"\xff", 10)
    with pytest.raises(RemoteProtocolError, match="spare bits"):
        validate_bitfield(b"\xff\xe0", 10)
    with pytest.raises(LocalProtocolError):
        validate_bitfield(b"\xff\xff\xff", 10, LocalProtocolError)
    validate_bitfield(b"\xff\xc0", 10)


def test_bitfield_from_indices_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        bitfield_from_indices([10], 10)


def test_package_exports_exactly_what_it_declares() -> None:
    import swarmhub.wire as wire
    from swarmhub.wire import connection, extensions, messages

    for mod in (wire, connection, extensions, messages):
        missing = [name for name in mod.__all__ if not hasattr(mod, name)]
        assert not missing, (mod.__name__, missing)
    public = set(connection.__all__) | set(extensions.__all__) | set(messages.__all__)
    assert public - {"Buffer"} <= set(wire.__all__)
