"""A lenient, bounded bencode decoder for what peers put in ``Extended`` messages.

Why a second decoder: :mod:`swarmhub.bencode` is strict on purpose (an info dict must be
canonical so that its hash is well defined), but extension payloads are never hashed,
and mainstream clients accept them non-canonical: libtorrent's ``bdecode`` takes dict
keys in any order, duplicate keys (the first one wins on lookup) and integers with
leading zeros. Refusing such a peer's BEP 10 handshake drops a working peer for nothing.

Accepted beyond canonical bencode: dict keys in any order, duplicate keys (the first
wins, as in libtorrent), leading zeros and ``-0`` in integers, leading zeros in string
lengths. Still refused: non-string dict keys, a key without a value, truncation, unknown
type bytes, empty or non-decimal integers. Every refusal is a
:class:`~swarmhub.errors.RemoteProtocolError`, and the work is bounded by ``max_items``
tokens and ``max_depth`` nesting, so a hostile payload costs little and never recurses.

Use it for peer payloads only; torrent files and info dicts stay strict.
"""

from __future__ import annotations

from typing import Any

from swarmhub.errors import RemoteProtocolError

__all__ = ["decode_lenient"]

_D, _L, _E, _I, _COLON, _MINUS = 0x64, 0x6C, 0x65, 0x69, b":", b"-"
_MAX_INT_DIGITS = 64  # plenty for any real field; bounds int() on hostile input
_MAX_LEN_DIGITS = 10  # string lengths below 10 GB: more than any frame can carry


def _fail(what: str, pos: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"malformed bencode in extension payload: {what} at byte {pos}")


def decode_lenient(
    data: bytes, start: int = 0, *, max_depth: int = 32, max_items: int = 4096
) -> tuple[Any, int]:
    """Decode the bencoded value at ``data[start:]``; return it and the offset just past it.

    Bytes after the value are left to the caller (ut_metadata puts piece data there).
    Strings decode to ``bytes``, dicts to ``dict[bytes, Any]``.
    """
    data = bytes(data)
    n = len(data)
    pos = start
    stack: list[list[Any] | dict[bytes, Any]] = []
    keys: list[bytes | None] = []  # the pending key of each open dict (None: want a key)
    for _ in range(max_items):
        if pos >= n:
            raise _fail("value is cut short", pos)
        c = data[pos]
        value: Any
        if c in (_D, _L):
            if len(stack) >= max_depth:
                raise _fail(f"nesting deeper than {max_depth}", pos)
            stack.append({} if c == _D else [])
            keys.append(None)
            pos += 1
            continue
        if c == _E:
            if not stack:
                raise _fail("unexpected 'e'", pos)
            if keys.pop() is not None:
                raise _fail("dict key without a value", pos)
            value = stack.pop()
            pos += 1
        elif c == _I:
            end = data.find(b"e", pos + 1, pos + 2 + _MAX_INT_DIGITS)
            if end < 0:
                raise _fail("unterminated integer", pos)
            text = data[pos + 1 : end]
            digits = text[1:] if text[:1] == _MINUS else text
            if not digits.isdigit():  # bytes.isdigit() is ASCII-only
                raise _fail(f"bad integer {text!r}", pos)
            value = int(text)
            pos = end + 1
        elif 0x30 <= c <= 0x39:
            colon = data.find(_COLON, pos, pos + _MAX_LEN_DIGITS + 1)
            if colon < 0 or not data[pos:colon].isdigit():
                raise _fail("bad string length", pos)
            end = colon + 1 + int(data[pos:colon])
            if end > n:
                raise _fail("string runs past the end", n)
            value = data[colon + 1 : end]
            pos = end
        else:
            raise _fail(f"unexpected byte {c:#04x}", pos)
        if not stack:
            return value, pos
        top = stack[-1]
        if isinstance(top, list):
            top.append(value)
        elif keys[-1] is None:
            if not isinstance(value, bytes):
                raise _fail(f"dict key is a {type(value).__name__}, not a string", pos)
            keys[-1] = value
        else:
            key = keys[-1]
            assert key is not None
            top.setdefault(key, value)  # duplicate keys: the first one wins
            keys[-1] = None
    raise _fail(f"more than {max_items} items", pos)
