"""Hostile input: like h11's AFL harness, any bytes either parse or raise
RemoteProtocolError — never another exception — whether fed whole or one byte at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.bencode import bencode
from swarmhub.errors import RemoteProtocolError
from swarmhub.wire.connection import CLOSED, NEED_DATA, PeerConnection
from swarmhub.wire.extensions import (
    decode_ext_handshake,
    decode_metadata_message,
    decode_pex,
    encode_ext_handshake,
    encode_metadata_message,
    encode_pex,
)
from swarmhub.wire.messages import Handshake, decode, encode, make_reserved

INFO_HASH = b"\x22" * 20

config = st.fixed_dictionaries(
    {
        "ours": st.sampled_from([make_reserved(), bytes(8), make_reserved(v2=True)]),
        "theirs": st.sampled_from([make_reserved(), bytes(8), make_reserved(fast=False)]),
        "num_pieces": st.sampled_from([None, 1, 8, 13, 1000]),
    }
)


def handshaken(cfg: dict[str, Any]) -> PeerConnection:
    conn = PeerConnection(our_reserved=cfg["ours"], num_pieces=cfg["num_pieces"])
    conn.send(Handshake(cfg["ours"], INFO_HASH, b"A" * 20))
    conn.receive_data(encode(Handshake(cfg["theirs"], INFO_HASH, b"B" * 20)))
    assert isinstance(conn.next_event(), Handshake)
    return conn


def run(conn: PeerConnection, data: bytes, bytewise: bool) -> tuple[list[object], bool]:
    """Feed ``data`` then EOF; return the events and whether a RemoteProtocolError ended it."""
    events: list[object] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    chunks.append(b"")
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while (ev := conn.next_event()) is not NEED_DATA:
                events.append(ev)
                if ev is CLOSED:
                    return events, False
    except RemoteProtocolError:
        return events, True
    raise AssertionError("EOF was fed but next_event never said CLOSED or raised")


def check_stream(cfg: dict[str, Any], data: bytes) -> None:
    whole, whole_failed = run(handshaken(cfg), data, bytewise=False)
    split, split_failed = run(handshaken(cfg), data, bytewise=True)
    # Chunking must not change what is parsed, nor whether it fails.
    assert (whole, whole_failed) == (split, split_failed)
    for ev in whole:
        if ev is not CLOSED:
            assert decode(encode(ev)) == ev  # type: ignore[arg-type]


# Frames with a valid length prefix reach deeper than raw bytes do.
frames = st.lists(
    st.tuples(st.integers(0, 30), st.binary(max_size=60)).map(
        lambda t: (1 + len(t[1])).to_bytes(4, "big") + bytes((t[0],)) + t[1]
    )
    | st.just(b"\0\0\0\0"),
    max_size=8,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(config, st.binary(max_size=200))
def test_arbitrary_bytes_after_handshake(cfg: dict[str, Any], data: bytes) -> None:
    check_stream(cfg, data)


@settings(max_examples=500, deadline=None)
@given(config, frames)
def test_arbitrary_frames_after_handshake(cfg: dict[str, Any], data: bytes) -> None:
    check_stream(cfg, data)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=120) | st.binary(max_size=60).map(lambda b: b"\x13BitTorrent protocol" + b)
)
def test_arbitrary_bytes_as_handshake(data: bytes) -> None:
    for bytewise in (False, True):
        run(PeerConnection(our_reserved=make_reserved()), data, bytewise)


def decoders() -> list[Callable[[bytes], object]]:
    return [decode_ext_handshake, decode_metadata_message, decode_pex]


def must_parse_or_refuse(payload: bytes) -> None:
    for dec in decoders():
        with contextlib.suppress(RemoteProtocolError):
            dec(payload)


bencodable = st.recursive(
    st.integers(-(2**40), 2**40) | st.binary(max_size=24),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=14), inner, max_size=5)
    ),
    max_leaves=16,
)
known_keys = st.dictionaries(
    st.sampled_from(
        [b"m", b"v", b"p", b"reqq", b"yourip", b"metadata_size", b"upload_only", b"msg_type",
         b"piece", b"total_size", b"added", b"added.f", b"added6", b"dropped", b"dropped6"]
    ),
    bencodable,
    max_size=6,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_extension_decoders_on_arbitrary_bytes(payload: bytes) -> None:
    must_parse_or_refuse(payload)


@settings(max_examples=500, deadline=None)
@given(known_keys, st.binary(max_size=30))
def test_extension_decoders_on_wrongly_typed_dicts(d: dict[bytes, Any], tail: bytes) -> None:
    raw = bencode(d)
    must_parse_or_refuse(raw)
    must_parse_or_refuse(raw + tail)


@settings(max_examples=300, deadline=None)
@given(known_keys)
def test_whatever_decodes_re_encodes_to_the_same_meaning(d: dict[bytes, Any]) -> None:
    raw = bencode(d)
    try:
        hs = decode_ext_handshake(raw)
    except RemoteProtocolError:
        pass
    else:
        assert decode_ext_handshake(encode_ext_handshake(hs)).m == hs.m
    try:
        meta = decode_metadata_message(raw)
    except RemoteProtocolError:
        pass
    else:
        if meta is not None:
            assert decode_metadata_message(encode_metadata_message(meta)) == meta
    try:
        pex = decode_pex(raw)
    except RemoteProtocolError:
        pass
    else:
        assert decode_pex(encode_pex(pex)) == pex
