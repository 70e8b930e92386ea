"""``PeerConnection.send_all``: a run of messages (a request refill) encoded in one call,
byte for byte what ``send`` gives each, with the same refusals."""

from __future__ import annotations

import pytest

from swarmhub.errors import LocalProtocolError
from swarmhub.wire.connection import PeerConnection
from swarmhub.wire.messages import (
    Handshake,
    Have,
    Interested,
    Message,
    Request,
    encode,
    make_reserved,
    pack_requests,
)

INFO_HASH = bytes(range(20))


def opened(**geometry: int) -> PeerConnection:
    conn = PeerConnection(our_reserved=make_reserved())
    conn.send(Handshake(make_reserved(), INFO_HASH, b"A" * 20))
    conn.receive_data(encode(Handshake(make_reserved(), INFO_HASH, b"B" * 20)))
    assert isinstance(conn.next_event(), Handshake)
    if geometry:
        conn.set_num_pieces(geometry["num"], piece_length=geometry["pl"],
                            total_length=geometry["total"])
    return conn


def test_a_mixed_run_is_the_bytes_of_each_message_in_order() -> None:
    conn = opened(num=3, pl=32768, total=32768 * 2 + 100)
    msgs: list[Message] = [Interested(), Request(0, 0, 16384), Request(0, 16384, 16384),
                           Have(1), Request(2, 0, 100)]
    want = b"".join(encode(msg) for msg in msgs)
    assert conn.send_all(tuple(msgs)) == want
    assert conn.send_all(msgs) == want


@pytest.mark.parametrize("req", [
    Request(3, 0, 16384),          # no such piece
    Request(2, 0, 16384),          # past the short last piece
    Request(0, 16384 + 1, 16384),  # past the piece's end
    Request(0, 0, 0),              # empty
    Request(0, 0, 1 << 20),        # longer than a block may be
    Request(-1, 0, 16384),         # does not fit the wire's u32
])
def test_a_request_send_refuses_is_refused_in_a_run_too(req: Request) -> None:
    conn = opened(num=3, pl=32768, total=32768 * 2 + 100)
    with pytest.raises(LocalProtocolError) as single:
        conn.send(req)
    with pytest.raises(LocalProtocolError) as run:
        conn.send_all((Request(0, 0, 16384), req))
    assert str(run.value) == str(single.value)


def test_before_the_handshake_a_run_is_refused_as_send_refuses_it() -> None:
    conn = PeerConnection(our_reserved=make_reserved())
    with pytest.raises(LocalProtocolError, match="Handshake first"):
        conn.send_all((Request(0, 0, 16384),))


def test_a_run_of_requests_packs_in_one_call_exactly_when_send_takes_each() -> None:
    """The compiled refill encoder (``pack_requests``) answers for a run only when every
    Request in it passes ``send``'s checks, and then with the same bytes; otherwise None,
    and ``send_all``'s loop gives the error. Every Request below alone, then in a run."""
    conn = opened(num=3, pl=32768, total=32768 * 2 + 100)
    geometry = (conn.max_block_length, 3, 32768, 32768 * 2 + 100)
    cases = [Request(i, b, n) for i in (-1, 0, 1, 2, 3, 1 << 32)
             for b in (-1, 0, 16384, 16385, 32768, 1 << 32)
             for n in (-1, 0, 100, 101, 16384, 16385, 1 << 20)]
    good: list[Request] = []
    for req in cases:
        try:
            want: bytes | None = conn.send(req)
        except LocalProtocolError:
            want = None
        assert pack_requests((req,), *geometry) == want, req
        if want is not None:
            good.append(req)
    assert len(good) == 19 and Request(2, 0, 100) in good  # (the short last piece: 100 B)
    assert pack_requests(good, *geometry) == b"".join(encode(r) for r in good)
    assert conn.send_all(good) == b"".join(encode(r) for r in good)
    assert pack_requests([*good, Request(3, 0, 16384)], *geometry) is None
    assert pack_requests([*good, Have(1)], *geometry) is None
    # geometry not known yet (-1): only the block length and the u32 fields are checked
    assert pack_requests((Request(7, 1 << 20, 16384),), 16384, -1, -1, -1) == encode(
        Request(7, 1 << 20, 16384))
