"""PeerProtocol's receive path: blocks are handed on as views of its read buffer, one batch
per read, whatever the read sizes; everything else goes through the wire core in order;
the read gate and protocol errors still hold on the fast path. Driven through the
BufferedProtocol callbacks with a stub transport, session and torrent (no sockets)."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from swarmhub.engine.peer import _READ_MAX, _READ_SIZE, PIECE_BATCH, PeerProtocol
from swarmhub.engine.picker import Block, BlockTable
from swarmhub.wire import messages as m

INFO_HASH = bytes(range(20))
PIECE_LENGTH = 64 * 1024
NUM_PIECES = 16
BLOCK = 16 * 1024


class StubTransport:
    """What PeerProtocol uses of a transport; ``buffered`` plays the unread replies."""

    def __init__(self) -> None:
        self.buffered = 0
        self.reading = True
        self.closed = False
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close


class StubTorrent:
    """Records what the peer hands on; copies each block at once (as Torrent does)."""

    def __init__(self) -> None:
        self.meta = SimpleNamespace(
            num_pieces=NUM_PIECES,
            piece_length=PIECE_LENGTH,
            total_length=NUM_PIECES * PIECE_LENGTH,
        )
        #: where the receive path looks its blocks up (a piece without a row: made anew)
        self.table = BlockTable(NUM_PIECES, PIECE_LENGTH, NUM_PIECES * PIECE_LENGTH)
        self.swarm = SimpleNamespace(picker=SimpleNamespace(blocks=self.table))
        #: the Block objects on_blocks got
        self.block_objects: list[Any] = []
        self.events: list[tuple[Any, ...]] = []
        self.on_each_block: Any = None
        self.disconnected: list[str] = []
        self.copied = 0
        #: blocks per call (on_block: 1)
        self.batches: list[int] = []
        #: Haves per on_haves call
        self.have_runs: list[int] = []
        #: Requests per on_requests call
        self.request_runs: list[int] = []

    def can_accept(self, addr: tuple[str, int], peer_id: bytes, outgoing: bool) -> str | None:
        return None

    def on_peer_connected(self, peer: Any) -> None:
        self.events.append(("connected",))

    def on_peer_disconnected(self, peer: Any, reason: str) -> None:
        self.disconnected.append(reason)

    def on_block(self, peer: Any, msg: m.Piece) -> None:
        self.copied += not isinstance(msg.data, memoryview)  # a bytes object of its own
        self.events.append(("block", msg.index, msg.begin, bytes(msg.data)))
        self.batches.append(1)
        if self.on_each_block is not None:
            self.on_each_block()

    def on_blocks(self, peer: Any, view: memoryview, blocks: list[Any],
                  starts: list[int]) -> None:
        self.block_objects.extend(blocks)
        for b, start in zip(blocks, starts, strict=True):
            self.events.append(("block", b.index, b.begin, bytes(view[start:start + b.length])))
            if self.on_each_block is not None:
                self.on_each_block()
        self.batches.append(len(blocks))

    def on_message(self, peer: Any, msg: m.Message) -> None:
        self.events.append(("msg", msg))

    def on_haves(self, peer: Any, indices: list[int]) -> None:
        self.events.extend(("msg", m.Have(i)) for i in indices)
        self.have_runs.append(len(indices))

    def on_requests(self, peer: Any, reqs: list[m.Request]) -> None:
        self.request_runs.append(len(reqs))
        for req in reqs:
            self.on_message(peer, req)


def stub_session(torrent: StubTorrent) -> Any:
    reserved = m.make_reserved()
    return SimpleNamespace(
        settings=SimpleNamespace(send_buffer_bytes=1 << 20, handshake_timeout=60.0),
        pending=set(),
        reserved=reserved,
        peer_id=b"L" * 20,
        torrent_for_hash=lambda h: torrent if h == INFO_HASH else None,
        handshake_for=lambda t, theirs=None: m.Handshake(reserved, INFO_HASH, b"L" * 20),
    )


def block_bytes(index: int, begin: int) -> bytes:
    return bytes((index * 7 + begin // BLOCK + k) % 251 for k in range(BLOCK))


def stream(rng: random.Random) -> tuple[bytes, list[tuple[Any, ...]]]:
    """The remote's bytes (handshake, bitfield, unchoke, blocks with other messages in
    between) and the events the torrent should see, in order."""
    out = [m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20))]
    want: list[tuple[Any, ...]] = [("connected",)]
    first: list[m.Message] = [m.HaveAll(), m.Unchoke()]
    for msg in first:
        out.append(m.encode(msg))
        want.append(("msg", msg))
    for index in range(NUM_PIECES):
        for begin in range(0, PIECE_LENGTH, BLOCK):
            data = block_bytes(index, begin)
            out.append(m.encode(m.Piece(index, begin, data)))
            want.append(("block", index, begin, data))
            if rng.random() < 0.2:
                other = rng.choice([m.Have(index), m.KeepAlive(), m.Choke(), m.Unchoke()])
                out.append(m.encode(other))
                want.append(("msg", other))
            if rng.random() < 0.2:  # a run of requests (we seed to it as well)
                for _ in range(rng.randrange(1, 40)):
                    req = m.Request(rng.randrange(NUM_PIECES), BLOCK * rng.randrange(4), BLOCK)
                    out.append(m.encode(req))
                    want.append(("msg", req))
    return b"".join(out), want


def feed(proto: PeerProtocol, data: bytes, sizes: list[int]) -> None:
    """Deliver ``data`` as the loop would: get_buffer, fill at most that much, updated."""
    pos = 0
    k = 0
    while pos < len(data) and proto.transport is not None:
        buf = proto.get_buffer(-1)
        n = min(len(buf), len(data) - pos, sizes[k % len(sizes)])
        k += 1
        buf[:n] = data[pos : pos + n]
        proto.buffer_updated(n)
        pos += n


async def connected(torrent: StubTorrent) -> tuple[PeerProtocol, StubTransport]:
    proto = PeerProtocol(stub_session(torrent), torrent)  # type: ignore[arg-type]
    transport = StubTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    return proto, transport


@pytest.mark.parametrize("sizes", [[1], [7, 13, 4096], [16 * 1024 + 13], [65536], [1 << 20]])
async def test_every_block_and_message_arrives_once_in_order_whatever_the_read_sizes(
    sizes: list[int],
) -> None:
    rng = random.Random(sum(sizes))
    data, want = stream(rng)
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    feed(proto, data, sizes)
    assert torrent.disconnected == []
    assert torrent.events == want
    # Every block was handed on as a view of the read buffer (no copy before the torrent's).
    assert torrent.copied == 0
    # Nothing is left behind, in our buffer or the wire core's.
    assert proto.conn.buffered == 0 and proto._read_start == proto._read_end
    proto.close("done")


async def test_random_read_sizes_after_a_slow_path_leftover() -> None:
    """Reads that end mid-frame while the wire core holds bytes (right after the
    handshake) must not leave the connection on the copying path for good."""
    rng = random.Random(7)
    data, want = stream(rng)
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    sizes = [rng.randrange(1, 40_000) for _ in range(200)]
    feed(proto, data, sizes)
    assert torrent.events == want
    assert proto.conn.buffered == 0
    assert torrent.copied == 0


async def test_a_peer_that_leaves_replies_unread_stops_the_batch_until_they_drain() -> None:
    rng = random.Random(3)
    data, want = stream(rng)
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    blocks = 0

    def count() -> None:
        nonlocal blocks
        blocks += 1
        if blocks == 3:
            transport.buffered = 64 << 20  # our replies pile up unread

    torrent.on_each_block = count
    feed(proto, data, [len(data)])
    got = [e for e in torrent.events if e[0] == "block"]
    # The batch with the third block ends, then the rest of the read waits, unparsed.
    assert len(got) == sum(torrent.batches) and 3 <= len(got) <= 3 + PIECE_BATCH
    assert len(got) < len([e for e in want if e[0] == "block"])
    assert not transport.reading
    transport.buffered = 0
    proto.resume_writing()
    assert torrent.events == want
    assert transport.reading


async def test_a_bad_block_on_the_fast_path_closes_the_connection() -> None:
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    head = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveAll())
    good = m.encode(m.Piece(0, 0, block_bytes(0, 0)))
    bad = m.encode(m.Piece(NUM_PIECES, 0, block_bytes(0, 0)))  # no such piece
    feed(proto, head + good + bad + good, [1 << 20])
    assert [e[0] for e in torrent.events] == ["connected", "msg", "block"]
    assert transport.closed
    assert torrent.disconnected and "protocol error" in torrent.disconnected[0]


def requests_stream(n: int) -> tuple[bytes, list[m.Request]]:
    head = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveNone())
    reqs = [m.Request(i % NUM_PIECES, BLOCK * (i % 4), BLOCK) for i in range(n)]
    return head + m.encode(m.Interested()) + b"".join(m.encode(r) for r in reqs), reqs


def count_core_bytes(proto: PeerProtocol) -> list[int]:
    """The sizes of what ``proto`` hands its wire core from now on (the slow path)."""
    fed: list[int] = []
    receive = proto.conn.receive_data
    proto.conn.receive_data = (  # type: ignore[method-assign]
        lambda data: (fed.append(len(data)), receive(data))[1]
    )
    return fed


async def test_requests_go_the_fast_way_not_through_the_wire_cores_buffer() -> None:
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    fed = count_core_bytes(proto)
    data, reqs = requests_stream(500)
    feed(proto, data, [1 << 20])
    assert [e[1] for e in torrent.events[3:]] == reqs
    # The handshake, HaveNone and Interested went through the wire core; no Request did.
    assert sum(fed) == len(data) - 17 * len(reqs)


async def test_a_run_of_haves_goes_over_in_one_call_not_through_the_wire_core() -> None:
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    fed = count_core_bytes(proto)
    head = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveNone())
    haves = [m.Have(i) for i in range(NUM_PIECES)]
    tail = [m.Unchoke(), m.Have(3)]
    data = head + b"".join(m.encode(x) for x in haves + tail)
    feed(proto, data, [1 << 20])
    assert [e[1] for e in torrent.events[1:]] == [m.HaveNone(), *haves, *tail]
    assert torrent.have_runs == [NUM_PIECES, 1]
    # The handshake, HaveNone and Unchoke went through the wire core; no Have did.
    assert sum(fed) == len(head) + 5
    bad = m.encode(m.Have(NUM_PIECES)) + m.encode(m.Have(0))  # no such piece
    feed(proto, bad, [1 << 20])
    assert transport.closed and torrent.events[-1] == ("msg", m.Have(3))
    assert torrent.disconnected and "protocol error" in torrent.disconnected[0]


async def test_a_read_asks_only_the_fast_path_its_first_frame_names() -> None:
    """A seed's reads are Haves and Requests: neither asks the blocks' parser (nor a
    Have run the Requests'), each such probe was two calls and a flush per read."""
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    feed(proto, requests_stream(0)[0], [1 << 20])
    asked: list[str] = []
    conn = proto.conn
    for name in ("pieces_at", "requests_at", "haves_at"):
        real = getattr(conn, name)
        setattr(conn, name, lambda *a, _n=name, _f=real: (asked.append(_n), _f(*a))[1])
    reqs = [m.Request(i, 0, BLOCK) for i in range(4)]
    haves = [m.Have(i) for i in range(NUM_PIECES)]
    feed(proto, b"".join(m.encode(x) for x in reqs + haves), [1 << 20])
    assert asked == ["requests_at", "haves_at"]
    assert torrent.request_runs == [4] and torrent.have_runs == [NUM_PIECES]


async def test_a_run_of_requests_goes_to_the_torrent_in_one_call() -> None:
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    data, reqs = requests_stream(100)
    feed(proto, data, [len(data)])
    assert torrent.request_runs == [100]
    assert [e[1] for e in torrent.events if e[0] == "msg"][2:] == reqs


async def test_a_peer_that_leaves_replies_unread_stops_a_run_of_requests() -> None:
    """The run goes over in parts the gate has room for (17 bytes a reject each); once
    the peer leaves replies unread, the rest waits unparsed until they drain."""
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    assert proto._gate is not None
    data, reqs = requests_stream(100)
    seen = 0
    on_message = torrent.on_message

    def count(peer: Any, msg: m.Message) -> None:
        nonlocal seen
        on_message(peer, msg)
        if isinstance(msg, m.Request):
            seen += 1
            if seen == 5:
                transport.buffered = 64 << 20  # the replies pile up unread

    torrent.on_message = count  # type: ignore[method-assign]
    transport.buffered = proto._gate.limit - 5 * 17 - 3  # room for 5 rejects
    feed(proto, data, [len(data)])
    assert seen == 5 and torrent.request_runs == [5]
    assert not transport.reading  # the rest waits, unparsed
    transport.buffered = 0
    proto.resume_writing()
    assert [e[1] for e in torrent.events if e[0] == "msg"][2:] == reqs
    assert torrent.request_runs == [5] and transport.reading  # the rest: the wire core's


async def test_a_bad_request_on_the_fast_path_closes_the_connection() -> None:
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    data, _ = requests_stream(3)
    bad = m.encode(m.Request(NUM_PIECES, 0, BLOCK))  # no such piece
    feed(proto, data + bad + m.encode(m.Request(0, 0, BLOCK)), [1 << 20])
    assert len([e for e in torrent.events if e[0] == "msg"]) == 2 + 3
    assert transport.closed
    assert torrent.disconnected and "protocol error" in torrent.disconnected[0]


async def test_replies_to_a_run_of_requests_are_corked_only_up_to_the_gates_limit() -> None:
    """Replies (a 17-byte reject each at most) corked while a run is handled count
    against the gate: one read of requests never queues more than its limit."""
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    assert proto._gate is not None
    limit = proto._gate.limit
    reject = m.encode(m.RejectRequest(0, 0, BLOCK))
    assert len(reject) == 17

    def answer(peer: Any, msg: m.Message) -> None:
        torrent.events.append(("msg", msg))
        if isinstance(msg, m.Request):
            proto.write(reject)

    def unread(data: bytes) -> None:  # the peer reads nothing: every write stays queued
        transport.written.append(bytes(data))
        transport.buffered += len(data)

    torrent.on_message = answer  # type: ignore[method-assign]
    transport.write = unread  # type: ignore[method-assign]
    ours = len(transport.written)  # our handshake
    data, reqs = requests_stream(2000)
    transport.buffered = limit - 40 * 17  # room for 40 rejects
    feed(proto, data, [len(data)])
    # 40 fill the room exactly; the one after them goes over it, and the rest wait.
    assert torrent.request_runs == [40, 1] and not transport.reading
    assert transport.buffered == limit + len(reject)
    transport.buffered = 0
    proto.resume_writing()
    assert [e[1] for e in torrent.events if e[0] == "msg"][2:] == reqs
    assert sum(map(len, transport.written[ours:])) == len(reqs) * len(reject)


async def test_replies_the_socket_took_at_once_are_not_piled_up_in_one_callback() -> None:
    """uvloop reports a write the socket took at once as sent (a write-buffer size of 0)
    but holds its buffer until the write callback, in the next loop iteration. Handling
    a flood in one callback then held a gate's worth of replies per round (a seeder's
    peak +66 to +108 MB under 40,000 ``ut_metadata`` requests); each round must wait for
    a later callback, so at most one gate's worth is held at once, and all are answered
    in order."""
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    assert proto._gate is not None
    limit = proto._gate.limit
    reply = bytes(16 * 1024)
    held = most = 0
    loop = asyncio.get_running_loop()

    def release(n: int) -> None:
        nonlocal held
        held -= n

    def taken_at_once(data: bytes) -> None:  # the buffer stays ours until the callback
        nonlocal held, most
        transport.written.append(bytes(data))
        held += len(data)
        most = max(most, held)
        loop.call_soon(release, len(data))

    def answer(peer: Any, msg: m.Message) -> None:
        torrent.events.append(("msg", msg))
        if isinstance(msg, m.Interested):
            proto.write(reply)

    torrent.on_message = answer  # type: ignore[method-assign]
    transport.write = taken_at_once  # type: ignore[method-assign]
    ours = len(transport.written)  # our handshake
    n = 1000  # 16 MiB of replies, over five times the limit
    head = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveNone())
    feed(proto, head + m.encode(m.Interested()) * n, [1 << 20])
    assert most <= limit + len(reply)
    assert not transport.reading  # the rest waits for a later callback, unread
    for _ in range(4 * n * len(reply) // limit):  # bounded: a few rounds per limit's worth
        if sum(map(len, transport.written[ours:])) == n * len(reply) and transport.reading:
            break
        await asyncio.sleep(0)
    assert sum(map(len, transport.written[ours:])) == n * len(reply)
    assert transport.reading and proto._pump_soon is None
    assert [e[1] for e in torrent.events if e[0] == "msg"][1:] == [m.Interested()] * n
    assert most <= limit + len(reply)
    proto.close("done")


async def test_the_blocks_of_one_read_go_over_in_batches() -> None:
    torrent = StubTorrent()
    proto, transport = await connected(torrent)
    head = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveAll())
    n = 2 * PIECE_BATCH + 5
    blocks = [((i // 4) % NUM_PIECES, BLOCK * (i % 4)) for i in range(n)]
    body = b"".join(m.encode(m.Piece(i, b, block_bytes(i, b))) for i, b in blocks)
    feed(proto, head + body, [1 << 20])
    # One call per read buffer's worth (at most PIECE_BATCH), not one per block.
    assert sum(torrent.batches) == n and max(torrent.batches) <= PIECE_BATCH
    assert len(torrent.batches) <= n // 4
    assert [e[1:3] for e in torrent.events if e[0] == "block"] == blocks
    assert not transport.closed


async def test_reads_that_fill_the_buffer_grow_it_keeping_the_partial_frame() -> None:
    """Each read fills what it is offered and ends mid-frame: the buffer doubles up to its
    cap, the partial frame moving along, and every event still arrives once, in order."""
    rng = random.Random(11)
    data, want = stream(rng)
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    sizes: list[int] = []
    pos = 0
    while pos < len(data) and proto.transport is not None:
        buf = proto.get_buffer(-1)
        n = min(len(buf), len(data) - pos)  # all it offers
        sizes.append(len(proto._read_view or b""))
        buf[:n] = data[pos : pos + n]
        proto.buffer_updated(n)
        pos += n
    assert torrent.events == want and torrent.copied == 0
    assert sizes[0] == _READ_SIZE and max(sizes) == _READ_MAX  # grew, then no further
    assert proto.conn.buffered == 0 and proto._read_start == proto._read_end


async def test_reads_that_never_fill_the_buffer_keep_it_small() -> None:
    rng = random.Random(12)
    data, want = stream(rng)
    torrent = StubTorrent()
    proto, _ = await connected(torrent)
    feed(proto, data, [4096, 20_000])
    assert torrent.events == want
    assert proto._read_view is not None and len(proto._read_view) == _READ_SIZE


async def test_blocks_of_pieces_in_progress_are_handed_on_as_the_requests_own_objects() -> None:
    """The receive loop finds each block in the picker's table (the object its request was
    recorded by: the core's look-ups end on identity) instead of making one; a piece the
    table has no row for gets new blocks, and no row."""
    torrent = StubTorrent()
    requested = torrent.table.row(2)  # piece 2 is being requested, piece 3 is not
    proto, _ = await connected(torrent)
    frames = [m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)),
              m.encode(m.Unchoke())]
    keys = [(index, begin, BLOCK) for index in (2, 3) for begin in range(0, PIECE_LENGTH, BLOCK)]
    frames += [m.encode(m.Piece(i, b, block_bytes(i, b))) for i, b, _ in keys]
    feed(proto, b"".join(frames), [1 << 20])
    got = torrent.block_objects
    assert [tuple(b) for b in got] == keys and torrent.disconnected == []
    assert all(b is r for b, r in zip(got[:4], requested, strict=True))
    assert all(type(b) is Block for b in got[4:])
    assert torrent.table.find(keys[4]) is not got[4]  # still no row for piece 3
    proto.close("done")
