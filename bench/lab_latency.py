"""The netns lab's latency: measured RTT per asked latency, and shaped rates with and without it.

    .venv/bin/python bench/lab_latency.py [--latencies 0,5,10,25] [--rate 20mbit] [--mib 5]

Needs root (network namespaces) and what `make setup` installs (iptables, gcc,
libnetfilter-queue-dev). For each latency L it builds a 2-host lab (bridge namespace with
the NFQUEUE delay line, htb on both sides), and prints the RTT the lab measured before use
(TCP connects to a closed port; target 2 L), then the goodput of one TCP stream from host 0
(upload shaped at --rate) to host 1 (download shaped 10x higher), as a fraction of the
shaped rate: over the whole transfer (TCP slow start included, which costs more as the
RTT grows) and over its second half (steady state: what the shaper holds). Goodput
excludes the ~4.4 % of TCP/IP headers htb counts, so ~0.956 is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swarmhub.lab.bounds import parse_rate
from swarmhub.lab.topology import Lab, netns_available

__all__ = ["main"]

_RECEIVER = r"""
import json, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 5001)); srv.listen(1); srv.settimeout(30)
print(json.dumps({"event": "listening"}), flush=True)
conn, _ = srv.accept(); conn.settimeout(30)
n = 0; first = None; half = None; buf = bytearray(1 << 16); total = int(sys.argv[2])
while True:
    k = conn.recv_into(buf)
    if not k: break
    if first is None: first = time.monotonic(); n0 = k
    n += k; last = time.monotonic()
    if half is None and n >= total // 2: half, nh = last, n
print(json.dumps({"event": "finished", "bytes": n, "rate": 8 * (n - n0) / (last - first),
                  "tail_rate": 8 * (n - nh) / (last - half)}), flush=True)
"""
_SENDER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 5001), timeout=30)
left = int(sys.argv[2]); chunk = b"x" * (1 << 16)
while left > 0:
    s.sendall(chunk[: min(left, len(chunk))]); left -= min(left, len(chunk))
s.close()
"""


def goodput(lab: Lab, nbytes: int) -> tuple[float, float]:
    """Bit/s of one TCP stream host 0 -> host 1 at the receiver: first to last byte (slow
    start included), and over the second half of the bytes (steady state)."""
    rx = lab.run(1, [sys.executable, "-c", _RECEIVER, lab.addr(1), str(nbytes)], name="rx")
    rx.wait_json("listening", 10)
    tx = lab.run(0, [sys.executable, "-c", _SENDER, lab.addr(1), str(nbytes)], name="tx")
    tx.wait(120)
    done = rx.wait_json("finished", 60)
    return float(done["rate"]), float(done["tail_rate"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latencies", default="0,5,10,25", help="one-way ms, comma-separated")
    ap.add_argument("--rate", default="20mbit", help="host 0's shaped upload")
    ap.add_argument("--mib", type=float, default=5.0, help="MiB per throughput run")
    ap.add_argument("--prefix", default="shlatb", help="namespace prefix (a lab already "
                    "using it is torn down: pick one no other run uses)")
    args = ap.parse_args(argv)
    ok, why = netns_available()
    if not ok:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    rate = parse_rate(args.rate)
    nbytes = int(args.mib * (1 << 20))
    rows = []
    print(f"{'latency ms':>10} {'RTT min':>8} {'RTT med':>8} {'target':>7} "
          f"{'goodput Mbit/s':>15} {'/shaped':>8} {'2nd half /shaped':>17}")  # fmt: skip
    for text in args.latencies.split(","):
        latency = float(text)
        with Lab(args.prefix, 2, [rate, 10 * rate], [10 * rate, 10 * rate], latency) as lab:
            assert lab.rtt is not None
            bps, tail = goodput(lab, nbytes)
        if lab.delayline is not None:  # its counters: packets, wakes, verdict batches
            print("  delay line:", lab.delayline.tail(1).splitlines()[-1])
        rows.append({"latency_ms": latency, "rtt_min_ms": lab.rtt.min_ms,
                     "rtt_median_ms": lab.rtt.median_ms, "goodput_bps": bps,
                     "tail_bps": tail, "shaped_bps": rate})  # fmt: skip
        print(f"{latency:>10g} {lab.rtt.min_ms:>8.2f} {lab.rtt.median_ms:>8.2f} "
              f"{2 * latency:>7g} {bps / 1e6:>15.2f} {bps / rate:>8.3f} "
              f"{tail / rate:>17.3f}")  # fmt: skip
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
