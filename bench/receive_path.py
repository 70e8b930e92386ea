"""A seeder's receive path in-process: 65,536 Requests (what 1 GiB of 16 KiB blocks costs the
seeder to read) through ``PeerProtocol.buffer_updated`` in 128 KiB reads, against the wire
core's generic path (``receive_data`` + ``next_event``) on the same bytes in the same run;
then a leecher's: 65,536 Piece frames (1 GiB) in 512 KiB reads, the same two ways; then the
leecher's swarm core for 1 GiB (``--core``).

    PYTHONPATH=src .venv/bin/python bench/receive_path.py [--rounds 5] [--core-only]

CPU seconds (process time), medians of ``--rounds``; the torrent is a stub that only counts,
so the first figures are the parsing and dispatch alone (no sockets, no swarm core, no copy of
the blocks into piece buffers). The core stage is what the leecher's main thread does per
block besides parsing and copying: :meth:`Swarm.blocks_received` in the batches one read
brings (32 blocks), the request refills it causes (picked, and encoded as the driver does),
each piece's :class:`Verify` answered at once with ``piece_verified``, and the Haves; one
peer that has everything, 1 MiB pieces. It also counts Python-level calls per block.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))

from test_peer_receive import (
    BLOCK,
    INFO_HASH,
    NUM_PIECES,
    PIECE_LENGTH,
    StubTorrent,
    connected,
)

from swarmhub.engine import actions as act
from swarmhub.engine.picker import Block
from swarmhub.engine.swarm import Swarm
from swarmhub.settings import Settings
from swarmhub.wire import messages as m
from swarmhub.wire.connection import NEED_DATA, PeerConnection

READ = 128 * 1024
#: a fast peer's reads (PeerProtocol grows its buffer to this while reads fill it)
PIECE_READ = 512 * 1024
N = 65536


class CountingTorrent(StubTorrent):
    """Counts messages (no list of events: the bench measures the peer, not the stub)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_message(self, peer: Any, msg: m.Message) -> None:
        self.count += 1

    def on_requests(self, peer: Any, reqs: list[m.Request]) -> None:
        self.count += len(reqs)

    def on_blocks(self, peer: Any, view: memoryview, blocks: list[Any],
                  starts: list[int]) -> None:
        self.count += len(blocks)


def _requests() -> bytes:
    return b"".join(m.encode(m.Request(i % NUM_PIECES, BLOCK * (i % 4), BLOCK))
                    for i in range(4096))


async def _fast(stream: bytes, frames: int, head: tuple[m.Message, ...], read: int,
                what: str) -> float:
    """CPU seconds for PeerProtocol to take N frames (``stream`` holds ``frames`` of
    them, fed ``read`` bytes per read) after a handshake and ``head``."""
    torrent = CountingTorrent()
    proto, _ = await connected(torrent)

    def feed(data: bytes) -> None:
        pos = 0
        while pos < len(data):
            buf = proto.get_buffer(-1)
            n = min(len(buf), len(data) - pos, read)
            buf[:n] = data[pos : pos + n]
            proto.buffer_updated(n)
            pos += n

    feed(m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20))
         + b"".join(m.encode(msg) for msg in head))
    per = torrent.count
    t0 = time.process_time()
    for _ in range(N // frames):
        feed(stream)
    spent = time.process_time() - t0
    if torrent.count != per + N:
        raise SystemExit(f"fast path handed on {torrent.count - per} of {N} {what}")
    proto.close("done")
    return spent


def _generic(stream: bytes, frames: int, head: tuple[m.Message, ...], read: int,
             kind: type, piece_length: int, what: str) -> float:
    """The same through the wire core's generic ``receive_data``/``next_event`` path."""
    conn = PeerConnection(our_reserved=m.make_reserved())
    conn.receive_data(m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20))
                      + b"".join(m.encode(msg) for msg in head))
    conn.set_num_pieces(NUM_PIECES, piece_length=piece_length,
                        total_length=NUM_PIECES * piece_length)
    while conn.next_event() is not NEED_DATA:
        pass
    got = 0
    view = memoryview(stream)
    t0 = time.process_time()
    for _ in range(N // frames):
        for pos in range(0, len(stream), read):
            conn.receive_data(view[pos : pos + read])
            while (ev := conn.next_event()) is not NEED_DATA:
                got += type(ev) is kind
    spent = time.process_time() - t0
    if got != N:
        raise SystemExit(f"generic path parsed {got} of {N} {what}")
    return spent


def _pieces() -> bytes:
    per = PIECE_LENGTH // BLOCK
    return b"".join(m.encode(m.Piece(i // per % NUM_PIECES, BLOCK * (i % per), bytes(BLOCK)))
                    for i in range(256))


def _table(what: str, rounds: int, fast: list[float], generic: list[float]) -> None:
    f, g = statistics.median(fast), statistics.median(generic)
    print(f"{N} {what}, {rounds} rounds, medians of CPU seconds")
    print(f"  PeerProtocol fast path : {f:.3f} s ({f / N * 1e6:.2f} us each)")
    print(f"  wire core generic path : {g:.3f} s ({g / N * 1e6:.2f} us each)")
    print(f"  ratio fast / generic   : {f / g:.2f}")


#: The core stage: 1 GiB in 1 MiB pieces, 32 blocks per read (512 KiB).
CORE_PIECES = 1024
CORE_PIECE = 1 << 20
CORE_BATCH = 32


def _core(count_calls: bool = False) -> tuple[float, float]:
    """(CPU seconds, Python calls per block) of the leecher's core for 1 GiB from one peer
    that answers requests in order (see the module docstring)."""
    import random
    import sys

    swarm = Swarm(CORE_PIECES, CORE_PIECE, CORE_PIECES * CORE_PIECE, Settings(),
                  rng=random.Random(1), now=0.0)
    peer = "seeder"
    conn = PeerConnection(our_reserved=m.make_reserved())
    conn.receive_data(m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)))
    conn.send(m.Handshake(m.make_reserved(), INFO_HASH, b"L" * 20))
    conn.next_event()
    conn.set_num_pieces(CORE_PIECES, piece_length=CORE_PIECE,
                        total_length=CORE_PIECES * CORE_PIECE)
    swarm.connected(peer, ("127.0.0.1", 1), b"R" * 20, fast=True, now=0.0)
    swarm.extension_handshake(peer, reqq=500)
    now = 0.0
    swarm.message(peer, m.HaveAll(), now)
    swarm.message(peer, m.Unchoke(), now)
    asked: list[Block] = []  # the seeder's queue: requests it has not answered yet
    sent = 0
    send_all = getattr(conn, "send_all", None)  # older trees (A/B): one send() each
    if send_all is None:
        send_all = lambda msgs: b"".join([conn.send(msg) for msg in msgs])  # noqa: E731

    def drain() -> None:
        nonlocal sent
        for a in swarm.take():
            kind = type(a)
            if kind is act.Send:
                msgs = a.messages  # type: ignore[attr-defined]
                sent += len(send_all(msgs))  # as Peer.send_many encodes them
                asked.extend(Block(r.index, r.begin, r.length) for r in msgs
                             if type(r) is m.Request)
            elif kind is act.Verify:
                swarm.piece_verified(a.index, True, now)  # type: ignore[attr-defined]

    calls = 0

    def prof(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    drain()
    got = 0
    t0 = time.process_time()
    if count_calls:
        sys.setprofile(prof)
    while asked:
        batch, asked[:CORE_BATCH] = asked[:CORE_BATCH], []
        now += 0.002
        swarm.blocks_received(peer, batch, now)
        got += len(batch)
        drain()
    sys.setprofile(None)
    spent = time.process_time() - t0
    if not swarm.complete or got != CORE_PIECES * CORE_PIECE // BLOCK:
        raise SystemExit(f"core stage: {got} blocks, complete={swarm.complete}")
    return spent, calls / got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--core-only", action="store_true", help="only the leecher's core stage")
    args = p.parse_args()
    if args.core_only:
        _core_table(args.rounds)
        return
    reqs, seeder = _requests(), (m.HaveNone(), m.Interested())
    fast = [asyncio.run(_fast(reqs, 4096, seeder, READ, "requests")) for _ in range(args.rounds)]
    generic = [_generic(reqs, 4096, seeder, READ, m.Request, 4 * BLOCK, "requests")
               for _ in range(args.rounds)]
    _table("requests (seeder)", args.rounds, fast, generic)
    frames, leecher = _pieces(), (m.HaveAll(), m.Unchoke())
    fast = [asyncio.run(_fast(frames, 256, leecher, PIECE_READ, "blocks"))
            for _ in range(args.rounds)]
    generic = [_generic(frames, 256, leecher, PIECE_READ, m.Piece, PIECE_LENGTH, "blocks")
               for _ in range(args.rounds)]
    _table("16 KiB blocks (leecher)", args.rounds, fast, generic)
    _core_table(args.rounds)


def _core_table(rounds: int) -> None:
    spent = statistics.median(_core()[0] for _ in range(rounds))
    _, calls = _core(count_calls=True)
    print(f"leecher core, 1 GiB of 16 KiB blocks from one peer, {rounds} rounds")
    print(f"  CPU s per GiB         : {spent:.3f} s ({spent / 65536 * 1e6:.2f} us per block)")
    print(f"  Python calls per block: {calls:.1f} (function and C calls, sys.setprofile)")


if __name__ == "__main__":
    main()
