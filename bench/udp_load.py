"""The UDP (BEP 15) half of ``bench/tracker.py``'s load: many announces in flight on one socket.

Why this shape: a generator that waits for each answer before sending the next would
measure its own round trips, and one asyncio datagram endpoint per request costs more
CPU than the tracker spends answering. So one connected, blocking socket keeps
``inflight`` announces outstanding: each answer is timed by its transaction id and
replaced by a new request at once (closed loop: the load is bounded by ``inflight``, the
server sets the pace). An answer that does not come within ``timeout`` counts as lost
and its slot is refilled. The connection id is asked for once per run (a run is shorter
than the two minutes trackers accept an id for); an "expired" error gets a new one.

Plain sockets, no event loop: about 5 us of generator CPU per announce, far below the
server's cost, so one generator process is enough.
"""

from __future__ import annotations

import array
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["UdpLoad", "UdpTally", "announce_tails", "udp_probe"]

PROTOCOL_ID = 0x41727101980
_CONNECT = struct.Struct("!QII")
_TAIL = struct.Struct("!20s20sQQQIIIiH")  # announce after connection id, action, tid
EVENTS = (0, 2, 1)  # regular, started, completed: the HTTP bench's order


@dataclass
class UdpTally:
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array.array[float] = field(default_factory=lambda: array.array("d"))
    last_done: float = 0.0


def announce_tails(hashes: Sequence[bytes], peer: int) -> tuple[bytes, bytes, bytes]:
    """Announce bytes after the transaction id (regular, started, completed) of a peer.

    Same peers as the HTTP load: peer ids, ports, byte counts and seeders (every fifth).
    """
    rng = random.Random(peer)
    peer_id = b"-SB0001-" + f"{peer:012d}".encode()
    left = 0 if peer % 5 == 0 else rng.randrange(1, 1 << 30)
    uploaded, downloaded = rng.randrange(1 << 32), rng.randrange(1 << 32)
    key = rng.getrandbits(32)
    ih = hashes[peer % len(hashes)]
    out = [
        _TAIL.pack(ih, peer_id, downloaded, 0 if ev == 1 else left, uploaded, ev, 0, key, 50,
                   10000 + peer)
        for ev in EVENTS
    ]
    return out[0], out[1], out[2]


def udp_probe(port: int, tail: bytes, timeout: float = 1.0) -> bool:
    """One connect + announce (readiness check): whether an announce answer came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        try:
            s.send(_CONNECT.pack(PROTOCOL_ID, 0, 1))
            reply = s.recv(64)
            if len(reply) < 16 or reply[:8] != b"\0\0\0\0\0\0\0\x01":
                return False
            s.send(reply[8:16] + struct.pack("!II", 1, 2) + tail)
            answer = s.recv(4096)
        except OSError:
            return False
        return len(answer) >= 20 and answer[:8] == b"\0\0\0\x01\0\0\0\x02"


class UdpLoad:
    """Closed-loop announce load on one socket with ``inflight`` requests outstanding."""

    def __init__(self, port: int, inflight: int, timeout: float = 1.0) -> None:
        self.inflight = inflight
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.connect(("127.0.0.1", port))
        self.head = b""
        self.tid = random.Random(port).getrandbits(31)

    def connect(self) -> None:
        """Get a connection id (bounded tries)."""
        self.sock.settimeout(self.timeout)
        for _ in range(10):
            self.sock.send(_CONNECT.pack(PROTOCOL_ID, 0, 7))
            try:
                while True:
                    reply = self.sock.recv(64)
                    if len(reply) >= 16 and reply[:8] == b"\0\0\0\0\0\0\0\x07":
                        self.head = reply[8:16] + b"\0\0\0\x01"
                        return
            except TimeoutError:
                continue
        raise SystemExit("the tracker gave no connection id")

    def run(self, pick: Callable[[], bytes], tally: UdpTally, *, until: float | None = None,
            total: int | None = None) -> None:
        """Announce ``pick()`` tails until the time ``until`` or ``total`` answers."""
        sock, timeout, perf = self.sock, self.timeout, time.perf_counter
        sock.settimeout(min(0.25, timeout))
        sent: dict[int, float] = {}
        lats = tally.latencies
        budget = total if total is not None else -1

        def send() -> None:
            nonlocal budget
            self.tid = tid = (self.tid + 1) & 0xFFFFFFFF
            sock.send(self.head + tid.to_bytes(4, "big") + pick())
            sent[tid] = perf()
            budget -= 1

        for _ in range(self.inflight if total is None else min(self.inflight, total)):
            send()
        sweep = perf() + timeout
        while sent:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = b""
            now = perf()
            more = (until is None or now < until) and budget != 0
            if data:
                t0 = sent.pop(int.from_bytes(data[4:8], "big"), None)
                if t0 is not None:
                    lats.append(now - t0)
                    tally.last_done = now
                    action = data[3]
                    if action == 1 and len(data) >= 20:
                        tally.ok += 1
                    elif action == 3:
                        message = data[8:60].decode("latin-1", "replace")
                        tally.errors["error: " + message] += 1
                        if "connect" in message:
                            self.connect()
                            sock.settimeout(min(0.25, timeout))
                    else:
                        tally.errors[f"action {action}"] += 1
                    if more:
                        send()
            if now >= sweep:  # answers that never came: count them, refill their slots
                sweep = now + timeout / 4
                for tid in [t for t, t0 in sent.items() if now - t0 > timeout]:
                    del sent[tid]
                    tally.errors["lost (no answer within 1 s)"] += 1
                    if more:
                        send()

    def close(self) -> None:
        self.sock.close()
