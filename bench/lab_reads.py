"""A netns lab peer's reads in-process: CPU per read of ``PeerProtocol.buffer_updated`` on the
mix of reads a lab peer gets (N=32, 32 MiB, 20 mbit up, 10 ms; counted per read in such a
run, median peer: 1,736 reads, 68 % without a block: 21 % only Haves, the rest requests,
Haves and control messages; blocks came ~3.7 per read, 29 % of reads ended in a partial
block; ~16 Haves per read that has any).

    PYTHONPATH=src .venv/bin/python bench/lab_reads.py [--reads 20000] [--rounds 5]

The torrent is a stub that only counts (no swarm core, no copy): the figure is the read
path's own dispatch. Point ``PYTHONPATH`` at another tree's ``src`` for an A/B (the stub
comes from this tree's tests).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))

from test_peer_receive import BLOCK, INFO_HASH, NUM_PIECES, PIECE_LENGTH, connected

import receive_path  # this folder: the script's own (sys.path[0])
from swarmhub.wire import messages as m


class CountingTorrent(receive_path.CountingTorrent):
    """Counts Haves too (the stub's own list of them would grow with every round)."""

    def on_haves(self, peer: Any, indices: list[int]) -> None:
        self.count += len(indices)


def _haves(rng: random.Random, k: int) -> list[bytes]:
    return [m.encode(m.Have(rng.randrange(NUM_PIECES))) for _ in range(k)]


def _requests(rng: random.Random, k: int) -> list[bytes]:
    return [m.encode(m.Request(rng.randrange(NUM_PIECES), BLOCK * rng.randrange(4), BLOCK))
            for _ in range(k)]


def lab_reads(rng: random.Random, count: int) -> list[bytes]:
    """``count`` reads in the lab's mix (a block cut by one read ends the next)."""
    block = m.encode(m.Piece(1, 0, bytes(BLOCK)))
    control = [m.encode(x) for x in (m.Choke(), m.Unchoke(), m.Interested(),
                                      m.NotInterested(), m.KeepAlive())]
    reads: list[bytes] = []
    carry = b""
    for _ in range(count):
        kind = rng.random()
        frames: list[bytes] = [carry]
        carry = b""
        if kind < 0.25:  # only Haves
            frames += _haves(rng, rng.randrange(4, 30))
        elif kind < 0.45:  # requests of a peer we upload to, with Haves
            frames += _haves(rng, rng.randrange(0, 12)) + _requests(rng, rng.randrange(1, 9))
        elif kind < 0.55:  # a control message
            frames.append(rng.choice(control))
        else:  # blocks, Haves and requests in between, maybe a partial block at the end
            for _ in range(rng.randrange(1, 7)):
                frames.append(block)
                if rng.random() < 0.3:
                    frames += _haves(rng, rng.randrange(1, 20))
                if rng.random() < 0.2:
                    frames += _requests(rng, rng.randrange(1, 6))
            if rng.random() < 0.3:
                cut = rng.randrange(1, len(block))
                frames.append(block[:cut])
                carry = block[cut:]
        reads.append(b"".join(frames))
    return reads


def _read(proto: Any, data: bytes) -> None:
    """One read as the loop does it (two if the buffer offered is shorter)."""
    pos = 0
    while pos < len(data):
        buf = proto.get_buffer(-1)
        n = min(len(buf), len(data) - pos)
        buf[:n] = data[pos : pos + n]
        proto.buffer_updated(n)
        pos += n


async def one_round(reads: list[bytes]) -> tuple[float, int]:
    torrent = CountingTorrent()
    proto, _ = await connected(torrent)
    hello = m.encode(m.Handshake(m.make_reserved(), INFO_HASH, b"R" * 20)) + m.encode(m.HaveAll())
    for data in (hello, *reads):
        _read(proto, data)
    assert torrent.disconnected == [], torrent.disconnected
    t0 = time.process_time()
    for data in reads:
        _read(proto, data)
    cpu = time.process_time() - t0
    assert torrent.disconnected == [], torrent.disconnected
    proto.close("done")
    return cpu, torrent.count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    assert PIECE_LENGTH >= 4 * BLOCK
    reads = lab_reads(random.Random(1), args.reads)
    cpus = []
    count = 0
    for _ in range(args.rounds):
        cpu, count = asyncio.run(one_round(reads))
        cpus.append(cpu)
    med = statistics.median(cpus)
    print(f"reads {len(reads)}, items handed on {count}: "
          f"{1e6 * med / len(reads):.1f} us/read (median of {args.rounds}; "
          f"min {1e6 * min(cpus) / len(reads):.1f}, max {1e6 * max(cpus) / len(reads):.1f})")


if __name__ == "__main__":
    main()
