from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmhub.bencode import bdecode, bencode
from swarmhub.errors import BencodeError

values = st.recursive(
    st.integers() | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.binary(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(values)
def test_roundtrip_is_exact(value: object) -> None:
    data = bencode(value)
    assert bencode(bdecode(data)) == data


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_bencode_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):
        bdecode(data)


@pytest.mark.parametrize(
    "bad",
    [b"", b"i01e", b"i-0e", b"d1:bi1e1:ai1ee", b"d1:ai1e1:ai2ee", b"4:abc", b"i1ex", b"l"],
)
def test_non_canonical_input_is_refused(bad: bytes) -> None:
    with pytest.raises(BencodeError, match="malformed bencode"):
        bdecode(bad)


def test_str_values_are_a_clear_error() -> None:
    with pytest.raises(BencodeError, match="cannot bencode"):
        bencode({b"a": "text"})
