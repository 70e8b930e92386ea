"""A leecher's receive path on paced connections, lab-free: CPU-s and wake-ups per MiB.

    .venv/bin/python bench/peer_reads.py [--conns 8] [--mib 8] [--rate 10mbit]
        [--rounds 3] [--baseline OTHER_TREE/src]

Why: in the netns lab a peer's CPU follows its connection count and run time, not its
bytes: a shaped link hands over a 16 KiB block in ~11 TCP segments, and each segment can
be a wake-up, a read and a pass through the receive path. This reproduces that on
loopback without a lab: a feeder (this process, plain sockets in one thread) writes a
stream of Piece frames to ``--conns`` connections, one 1448-byte segment per connection
per tick (TCP_NODELAY: one segment per write), paced to ``--rate`` each; the receiver (a
child process on uvloop) runs the real ``PeerProtocol`` with a stub torrent that only
counts blocks. Figures are the child's CPU seconds (user + system, from the first block
to the last) and its voluntary context switches (wake-ups), per MiB received, medians of
``--rounds``. Each round runs this tree and then, with ``--baseline``, another tree's
``src`` on the same machine: the ratio ours / baseline is the figure to quote (the
feeder's pacing and the machine's load are the same for both).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SEGMENT = 1448  # the payload of one Ethernet-sized TCP segment
BLOCK = 16 * 1024
PIECE_LENGTH = 64 * 1024


def _rate(text: str) -> float:
    """``10mbit`` -> bytes per second."""
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for suffix, mult in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult / 8
    return float(text)


def _stream(mib: int) -> bytes:
    """Handshake, HaveAll, then ``mib`` MiB of Piece frames (what one connection sends)."""
    from swarmhub.wire import messages as m

    info_hash = bytes(range(20))
    out = [m.encode(m.Handshake(m.make_reserved(), info_hash, b"R" * 20)),
           m.encode(m.HaveAll())]
    payload = bytes(BLOCK)
    blocks = mib * 1024 * 1024 // BLOCK
    pieces = blocks * BLOCK // PIECE_LENGTH
    for i in range(blocks):
        out.append(m.encode(m.Piece((i * BLOCK // PIECE_LENGTH) % pieces,
                                    (i * BLOCK) % PIECE_LENGTH, payload)))
    return b"".join(out)


def feeder(listener: socket.socket, conns: int, data: bytes, rate: float,
           stop: threading.Event) -> None:
    """Accept ``conns`` connections, then write ``data`` to each, one segment per
    connection per tick, paced to ``rate`` bytes per second each (bounded: ``stop``)."""
    socks = []
    listener.settimeout(60)
    for _ in range(conns):
        s, _addr = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    tick = SEGMENT / rate
    pos = 0
    t = time.monotonic()
    while pos < len(data) and not stop.is_set():
        chunk = data[pos : pos + SEGMENT]
        for s in socks:
            s.sendall(chunk)
        pos += len(chunk)
        t += tick
        delay = t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    stop.wait(60)  # until the receiver is done: closing early would cut its reads
    for s in socks:
        s.close()


def receiver(port: int, conns: int, mib: int) -> dict[str, Any]:
    """The child: ``conns`` real PeerProtocols dialled to the feeder; returns its figures."""
    import asyncio
    import resource

    import uvloop

    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    from test_peer_receive import StubTorrent, stub_session

    from swarmhub.engine.peer import PeerProtocol

    blocks_each = mib * 1024 * 1024 // BLOCK

    class Counting(StubTorrent):
        def __init__(self) -> None:
            super().__init__()
            self.meta.num_pieces = blocks_each * BLOCK // PIECE_LENGTH
            self.meta.total_length = self.meta.num_pieces * PIECE_LENGTH
            self.blocks = 0

        def on_message(self, peer: Any, msg: Any) -> None:
            pass

        def on_blocks(self, peer: Any, view: memoryview, blocks: list[Any],
                      starts: list[int]) -> None:
            if self.blocks == 0:
                first.set_result(None) if not first.done() else None
            self.blocks += len(blocks)
            if self.blocks >= conns * blocks_each and not done.done():
                done.set_result(None)

    def switches() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
        return 0

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def main() -> dict[str, Any]:
        nonlocal first, done
        loop = asyncio.get_running_loop()
        first, done = loop.create_future(), loop.create_future()
        torrent = Counting()
        protos = []
        for _ in range(conns):
            _, proto = await loop.create_connection(
                lambda: PeerProtocol(stub_session(torrent), torrent), "127.0.0.1", port)
            protos.append(proto)
        await asyncio.wait_for(first, 60)
        c0, s0, t0 = cpu(), switches(), time.monotonic()
        await asyncio.wait_for(done, 600)
        c1, s1, t1 = cpu(), switches(), time.monotonic()
        for p in protos:
            p.close("done")
        return {"cpu_s": c1 - c0, "wakeups": s1 - s0, "wall_s": t1 - t0,
                "mib": torrent.blocks * BLOCK / 2**20}

    first: Any = None
    done: Any = None
    return uvloop.run(main())


def one_run(src: Path, conns: int, mib: int, rate: float, data: bytes) -> dict[str, Any]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()
    feed = threading.Thread(target=feeder, args=(listener, conns, data, rate, stop),
                            daemon=True)
    feed.start()
    env = dict(os.environ, PYTHONPATH=str(src))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(port), "--conns", str(conns),
             "--mib", str(mib)], env=env, capture_output=True, text=True, timeout=900,
            check=False)
    finally:
        stop.set()
        feed.join(70)
        listener.close()
    if proc.returncode != 0:
        raise SystemExit(f"receiver failed ({src}):\n{proc.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=8)
    p.add_argument("--mib", type=int, default=8, help="MiB per connection")
    p.add_argument("--rate", default="10mbit", help="per connection")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another tree's src to compare against")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(receiver(a.child, a.conns, a.mib)))
        return
    sys.path.insert(0, str(ROOT / "src"))
    data = _stream(a.mib)
    trees = [("ours", ROOT / "src")] + ([("baseline", a.baseline)] if a.baseline else [])
    print(f"bench/peer_reads.py: {a.conns} connections x {a.mib} MiB at {a.rate} each, "
          f"{SEGMENT}-byte segments; load average {os.getloadavg()[0]:.1f}", flush=True)
    got: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for k in range(a.rounds):
        for name, src in trees:
            r = one_run(src, a.conns, a.mib, _rate(a.rate), data)
            got[name].append(r)
            print(f"  round {k + 1} {name:8}: {r['cpu_s'] / r['mib'] * 1000:6.1f} CPU-ms/MiB, "
                  f"{r['wakeups'] / r['mib']:7.1f} wake-ups/MiB, {r['wall_s']:.1f} s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    med = {name: (statistics.median(r["cpu_s"] / r["mib"] for r in rs),
                  statistics.median(r["wakeups"] / r["mib"] for r in rs))
           for name, rs in got.items()}
    for name, (c, w) in med.items():
        print(f"{name:8} median {c * 1000:6.1f} CPU-ms/MiB, {w:7.1f} wake-ups/MiB")
    if "baseline" in med:
        (c0, w0), (c1, w1) = med["baseline"], med["ours"]
        print(f"ours / baseline: CPU {c1 / c0:.2f}, wake-ups {w1 / w0:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
