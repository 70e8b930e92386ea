"""The lenient bencode decoder for extension payloads: canonical input decodes as the strict
decoder does, non-canonical key order is accepted, and any bytes parse or raise
RemoteProtocolError (nothing else)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError, RemoteProtocolError
from swarmhub.wire.lenient import decode_lenient

bencodable = st.recursive(
    st.integers(-(2**70), 2**70) | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def shuffled_encoding(value: Any, rng: random.Random) -> bytes:
    """``value`` bencoded with every dict's keys in a random order (non-canonical)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        inner = b"".join(bencode(k) + shuffled_encoding(v, rng) for k, v in items)
        return b"d" + inner + b"e"
    if isinstance(value, list):
        return b"l" + b"".join(shuffled_encoding(v, rng) for v in value) + b"e"
    return bencode(value)


@given(bencodable, st.binary(max_size=10))
def test_canonical_input_decodes_like_the_strict_decoder(value: Any, tail: bytes) -> None:
    raw = bencode(value)
    assert decode_lenient(raw + tail) == (bdecode(raw), len(raw))


@given(bencodable, st.randoms(use_true_random=False))
def test_any_key_order_decodes_to_the_same_value(value: Any, rng: random.Random) -> None:
    raw = shuffled_encoding(value, rng)
    assert decode_lenient(raw) == (value, len(raw))


@settings(max_examples=500)
@given(st.binary(max_size=200) | bencodable.map(bencode).map(lambda b: b[: len(b) // 2]))
def test_any_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    try:
        value, end = decode_lenient(data)
    except RemoteProtocolError:
        return
    assert 0 < end <= len(data)
    # Whatever it accepts, it accepts consistently: re-decoding the prefix gives the same.
    assert decode_lenient(data[:end]) == (value, end)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"d1:bi1e1:ai2ee", {b"a": 2, b"b": 1}),  # unsorted
        (b"d1:ai1e1:ai2ee", {b"a": 1}),  # duplicate: the first wins, as in libtorrent
        (b"i007e", 7),  # leading zeros
        (b"i-0e", 0),
        (b"03:abc", b"abc"),
    ],
)
def test_non_canonical_forms_that_peers_send(raw: bytes, value: Any) -> None:
    assert decode_lenient(raw) == (value, len(raw))
    with pytest.raises(BencodeError):
        bdecode(raw)  # the strict decoder (info dicts) still refuses them


@pytest.mark.parametrize(
    "raw",
    [b"", b"e", b"ie", b"i-e", b"i1.5e", b"i 1e", b"di1ei1ee", b"d1:ae", b"5:ab", b"x",
     b"l" * 40 + b"e" * 40, b"l" + b"i0e" * 5000 + b"e"],
)  # fmt: skip
def test_malformed_or_too_big_raises(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_lenient(raw)
