"""Strict bencode, backed by the Rust-accelerated ``fastbencode``.

fastbencode rejects everything that is not canonical (unsorted or duplicate keys, leading
zeros, ``-0``, trailing junk), so a value that decodes re-encodes to the very same bytes.
That is what lets :mod:`swarmhub.metainfo` take an info hash over ``bencode(info)``: it
equals the hash over the original slice of the file.
"""

from __future__ import annotations

from typing import Any

import fastbencode

from swarmhub.errors import BencodeError

__all__ = ["bdecode", "bencode"]


def bdecode(data: bytes) -> Any:
    """Decode one complete bencoded value; raise :class:`BencodeError` on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BencodeError(f"bencoded input must be bytes, not {type(data).__name__}")
    try:
        return fastbencode.bdecode(bytes(data))  # type: ignore[attr-defined]
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise BencodeError(f"malformed bencode: {exc}") from None


def bencode(value: Any) -> bytes:
    """Encode ``value`` (bytes, str, int, list, dict with bytes/str keys) canonically."""
    try:
        result: bytes = fastbencode.bencode(value)  # type: ignore[attr-defined]
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise BencodeError(f"cannot bencode {type(value).__name__}: {exc}") from None
    return result
